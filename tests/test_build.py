"""What each build compiles: the local stack (`make build`, `make run`) links no AWS SDK; the `aws`
feature (`make build-aws`: run-aws-emulated, deploy, test, bench) brings the adapters in."""

import subprocess

from conftest import ROOT


def crates(*features: str) -> set[str]:
    binaries = ["-p", "web-tier", "-p", "app-tier", "-p", "scaler", "-p", "loadgen"]
    out = subprocess.run(["cargo", "tree", *binaries, "-e", "normal", "--prefix", "none", *features],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return {line.split(" ")[0] for line in out.stdout.splitlines() if line.strip()}


def test_the_local_build_compiles_no_aws_sdk_and_the_aws_feature_does():
    local = crates()
    assert {"web-tier", "app-tier", "scaler", "imgrec-domain", "imgrec-classifier", "imgrec-local",
            "imgrec-runtime"} <= local
    assert not {"imgrec-aws", "imgrec-testkit"} & local
    aws = sorted(c for c in local if c.startswith(("aws-", "aws_")))
    assert aws == [], f"the local build links {aws}"
    with_aws = crates("--features", "aws")
    assert {"imgrec-aws", "aws-sdk-s3", "aws-sdk-sqs", "aws-sdk-autoscaling", "aws-sdk-ec2",
            "aws-sdk-cloudwatch"} <= with_aws
    # The contract suites and the moto launcher are for tests only.
    assert "imgrec-testkit" not in with_aws


CRATES = ROOT / "services"


def rust_lines(folder) -> int:
    return sum(len(p.read_text().splitlines()) for p in folder.rglob("*.rs"))


def test_no_crate_holds_more_than_about_a_third_of_the_code():
    lines = {c.name: rust_lines(c) for c in CRATES.iterdir() if (c / "Cargo.toml").exists()}
    total = sum(lines.values())
    biggest = max(lines, key=lines.get)
    assert lines[biggest] <= 0.35 * total, f"{biggest}: {lines[biggest]} of {total} lines"


def test_adapters_know_the_ports_but_not_the_policy_or_each_other():
    for adapter, other in (("local", "imgrec_aws"), ("aws", "imgrec_local")):
        for path in (CRATES / adapter / "src").rglob("*.rs"):
            text = path.read_text()
            assert "imgrec_domain::policy" not in text, path
            assert other not in text, path
        manifest = (CRATES / adapter / "Cargo.toml").read_text()
        deps = manifest.split("[dependencies]")[1].split("[dev-dependencies]")[0]
        assert "imgrec-domain" in deps and "imgrec-runtime" not in deps and "scaler" not in deps


def test_the_readme_crate_table_matches_the_manifests():
    import json
    import re
    meta = json.loads(subprocess.run(["cargo", "metadata", "--no-deps", "--format-version", "1"], cwd=ROOT,
                                     capture_output=True, text=True, timeout=120, check=True).stdout)
    members = {p["name"] for p in meta["packages"]}
    short = {name: name.removeprefix("imgrec-") for name in members}
    actual = {p["name"]: {short[d["name"]] for d in p["dependencies"]
                          if d["name"] in members and d["kind"] is None}
              for p in meta["packages"]}
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| crate | folder |"):].split("\n\n")[0].splitlines()[2:]
    documented = {}
    for row in table:
        cells = [c.strip() for c in row.strip("|").split("|")]
        words = re.findall(r"[a-z-]+", re.sub(r"\(.*?\)", "", cells[3]))  # (notes) aside
        documented[cells[0].strip("`")] = {w for w in words if w in short.values()}
    assert documented == actual


def test_every_name_the_readme_gives_in_code_is_in_the_code():
    """The README's tables name the tests that show each promise (and settings, metrics, outputs);
    a test renamed or moved (three were, into Rust) must take its name there along."""
    import re
    readme = (ROOT / "README.md").read_text()
    # Long snake_case words (four parts or more), as `a_worker_killed_mid_burst_loses_nothing`.
    named = set(re.findall(r"`((?:test_)?[a-z][a-z0-9]*(?:_[a-z0-9]+){3,})(?:\[[^\]`]*\])?`", readme))
    sources = [p for pattern in ("services/**/*.rs", "tests/*.py", "tools/**/*.py", "terraform/**/*.tf",
                                 "terraform/**/*.tftpl", "packer/**/*", "config/*.toml")
               for p in ROOT.glob(pattern) if p.is_file() and "node_modules" not in p.parts]
    text = "\n".join(p.read_text(errors="replace") for p in sources)
    assert len(named) > 50, "the pattern no longer finds the README's names"
    assert sorted(n for n in named if n not in text) == []

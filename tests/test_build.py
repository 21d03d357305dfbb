"""What each build compiles: the local stack (`make build`, `make run`) links no AWS SDK; the `aws`
feature (`make build-aws`: run-aws-emulated, deploy, test, bench) brings the adapters in."""

import subprocess

from conftest import ROOT


def crates(*features: str) -> set[str]:
    out = subprocess.run(["cargo", "tree", "--workspace", "-e", "normal", "--prefix", "none", *features],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return {line.split(" ")[0] for line in out.stdout.splitlines() if line.strip()}


def test_the_local_build_compiles_no_aws_sdk_and_the_aws_feature_does():
    local = crates()
    assert {"web-tier", "app-tier", "scaler", "imgrec-core"} <= local
    aws = sorted(c for c in local if c.startswith(("aws-", "aws_")))
    assert aws == [], f"the local build links {aws}"
    with_aws = crates("--features", "aws")
    assert {"aws-sdk-s3", "aws-sdk-sqs", "aws-sdk-autoscaling", "aws-sdk-ec2", "aws-sdk-cloudwatch"} <= with_aws

"""`make destroy` after real use (tools/destroy.sh): the AMI and its snapshot go even when `terraform
destroy` fails, buckets kept by choice leave Terraform's state first, and the run ends with what is
left and why. Terraform is a stub here (no provider can be fetched); EC2 is a moto server."""

import json
import os
import shutil
import subprocess
import sys

import boto3
import pytest

from conftest import ROOT
from local_stack import MotoServer


def stub_terraform(bin_dir, log, *, destroy_ok: bool, kept: dict):
    """A `terraform` that logs its arguments, answers `output buckets_kept_on_destroy` with `kept`
    and fails or passes `destroy`."""
    script = f"""#!/bin/sh
echo "$@" >> {log}
case "$*" in
  *"output -json buckets_kept_on_destroy"*) echo '{json.dumps(kept)}' ;;
  *destroy*) {'exit 0' if destroy_ok else 'echo "Error: deleting S3 Bucket: BucketNotEmpty" >&2; exit 1'} ;;
esac
exit 0
"""
    path = bin_dir / "terraform"
    path.write_text(script)
    path.chmod(0o755)


@pytest.fixture()
def checkout(tmp_path):
    (tmp_path / "tools").mkdir()
    shutil.copy(ROOT / "tools" / "destroy.sh", tmp_path / "tools" / "destroy.sh")
    (tmp_path / "terraform").mkdir()
    (tmp_path / "terraform" / "terraform.tfstate").write_text("{}")
    (tmp_path / "terraform" / "deploy.auto.tfvars").write_text('ami_id = "ami-x"\n')
    (tmp_path / "target").mkdir()
    (tmp_path / "bin").mkdir()
    return tmp_path


def register_ami(ec2) -> tuple[str, str]:
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=8)["VolumeId"]
    snapshot = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    ami = ec2.register_image(Name="imgrec-test", RootDeviceName="/dev/sda1", BlockDeviceMappings=[
        {"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": snapshot}}])["ImageId"]
    # The snapshot the AMI names (moto makes its own of the one given).
    (image,) = ec2.describe_images(ImageIds=[ami])["Images"]
    return ami, image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]


def destroy(checkout, moto):
    env = {**os.environ, "PATH": f"{checkout / 'bin'}:{os.environ['PATH']}", "PY": sys.executable,
           "AWS_ENDPOINT_URL": moto.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AUTO_APPROVE": "1"}
    return subprocess.run(["bash", str(checkout / "tools" / "destroy.sh")], env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_ami_goes_even_when_terraform_destroy_fails(checkout):
    log = checkout / "terraform.log"
    stub_terraform(checkout / "bin", log, destroy_ok=False, kept={})
    with MotoServer() as moto:
        ec2 = boto3.client("ec2", endpoint_url=moto.endpoint, region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        ami, snapshot = register_ami(ec2)
        (checkout / "target" / "packer-manifest.json").write_text(json.dumps(
            {"builds": [{"artifact_id": f"us-east-1:{ami}"}], "last_run_uuid": "x"}))
        out = destroy(checkout, moto)
        assert out.returncode == 1, out.stdout + out.stderr
        assert _exists(ec2, ami) is None
        assert snapshot not in {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}, out.stdout
    assert f"removed {ami}" in out.stdout
    assert "left:" in out.stdout and "terraform destroy did not remove" in out.stdout
    # The AMI is gone, so the manifest is too; the tfvars stay for the next try of the destroy.
    assert not (checkout / "target" / "packer-manifest.json").exists()
    assert (checkout / "terraform" / "deploy.auto.tfvars").exists()
    assert "destroy -input=false -auto-approve" in log.read_text()


def _exists(ec2, ami):
    """None when the AMI is gone (moto answers an unknown id with an empty list or NotFound)."""
    try:
        return ec2.describe_images(ImageIds=[ami])["Images"] or None
    except ec2.exceptions.ClientError:
        return None


def test_buckets_kept_by_choice_leave_the_state_and_are_listed(checkout):
    log = checkout / "terraform.log"
    kept = {"module.input_bucket": "imgrec-1-input", "module.output_bucket": "imgrec-1-output"}
    stub_terraform(checkout / "bin", log, destroy_ok=True, kept=kept)
    with MotoServer() as moto:
        out = destroy(checkout, moto)
    assert out.returncode == 0, out.stdout + out.stderr
    calls = log.read_text().splitlines()
    state_rm = [c for c in calls if c.startswith("-chdir=terraform state rm")]
    assert state_rm == ["-chdir=terraform state rm module.input_bucket", "-chdir=terraform state rm module.output_bucket"]
    # Taken out of the state before the destroy, which then leaves them alone.
    assert calls.index(state_rm[-1]) < next(i for i, c in enumerate(calls) if " destroy " in f" {c} ")
    assert "bucket imgrec-1-input: kept as chosen" in out.stdout
    assert not (checkout / "terraform" / "deploy.auto.tfvars").exists()

#!/usr/bin/env bash
# `make destroy`: `terraform destroy`, then the AMIs (and their snapshots) `make deploy` registered,
# whatever happened before; ends with a list of anything left and why. Exits 1 if anything is left
# that the user did not choose to keep.
#
# Buckets kept by choice (force_destroy = false): they leave Terraform's state first, so destroy
# removes everything else and they stay, with their images and results.
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PY:-.venv/bin/python}
left=()
status=0

if ! command -v terraform >/dev/null; then
    left+=("everything Terraform created: 'terraform' is not on PATH (install it, then run make destroy again)")
    status=1
elif [[ ! -e terraform/terraform.tfstate ]] && ! terraform -chdir=terraform state list >/dev/null 2>&1; then
    echo "destroy: no Terraform state here: nothing Terraform created is known to this checkout"
else
    terraform -chdir=terraform init -input=false >/dev/null || true
    kept=$(terraform -chdir=terraform output -json buckets_kept_on_destroy 2>/dev/null || echo '{}')
    mapfile -t keep < <("$py" -c 'import json, sys; [print(k, v) for k, v in (json.loads(sys.argv[1]) or {}).items()]' "$kept" 2>/dev/null)
    for entry in "${keep[@]}"; do
        address=${entry%% *} bucket=${entry#* }
        if terraform -chdir=terraform state rm "$address" >/dev/null; then
            left+=("bucket $bucket: kept as chosen (force_destroy = false), with its images and results")
        fi
    done
    if ! terraform -chdir=terraform destroy -input=false ${AUTO_APPROVE:+-auto-approve}; then
        left+=("what terraform destroy did not remove (its errors are above; run make destroy again)")
        status=1
    fi
fi

# Packer's AMIs are not Terraform's: deregister each and delete its snapshots, even if the
# destroy above failed (they cost money whatever else is left).
if [[ -f target/packer-manifest.json ]]; then
    if ! "$py" -c 'import boto3' 2>/dev/null; then
        left+=("the AMIs in target/packer-manifest.json: no Python with boto3 ($py) to remove them (make venv)")
        status=1
    else
        mapfile -t amis < <("$py" - <<'PY'
import json
import boto3
import botocore.exceptions

for build in json.load(open("target/packer-manifest.json"))["builds"]:
    region, ami = build["artifact_id"].split(":")
    ec2 = boto3.client("ec2", region_name=region)
    try:
        images = ec2.describe_images(ImageIds=[ami])["Images"]
        snapshots = [m["Ebs"]["SnapshotId"] for i in images for m in i.get("BlockDeviceMappings", []) if "Ebs" in m]
        if images:
            ec2.deregister_image(ImageId=ami)
        for s in snapshots:
            ec2.delete_snapshot(SnapshotId=s)
        print(f"removed {ami} ({region}) and its snapshots {' '.join(snapshots) or '(none)'}")
    except botocore.exceptions.ClientError as e:
        if e.response["Error"]["Code"] == "InvalidAMIID.NotFound":
            print(f"removed {ami} ({region}): already gone")
            continue
        print(f"LEFT AMI {ami} ({region}) and its snapshots: {e} (aws ec2 deregister-image --region {region} --image-id {ami})")
PY
        )
        ami_left=0
        for line in "${amis[@]}"; do
            echo "$line"
            if [[ $line == LEFT* ]]; then
                left+=("${line#LEFT }")
                ami_left=1
                status=1
            fi
        done
        # Kept while an AMI is left, so that the next make destroy tries again.
        [[ $ami_left -eq 0 ]] && rm -f target/packer-manifest.json
    fi
fi
if [[ $status -eq 0 ]]; then
    rm -f terraform/deploy.auto.tfvars
fi

if [[ ${#left[@]} -eq 0 ]]; then
    echo "destroy: nothing of the deployment is left."
else
    echo "destroy: left:"
    printf '  - %s\n' "${left[@]}"
fi
exit $status

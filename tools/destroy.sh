#!/usr/bin/env bash
# `make destroy`: `terraform destroy`, then the AMI and snapshot `make deploy` registered.
# Buckets that still hold objects survive unless force_destroy = true (see README).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v terraform >/dev/null || { echo "destroy: 'terraform' is not on PATH" >&2; exit 1; }
terraform -chdir=terraform init -input=false >/dev/null
terraform -chdir=terraform destroy -input=false ${AUTO_APPROVE:+-auto-approve}

# Packer's AMIs are not Terraform's: deregister them here, or say how.
if [[ -f target/packer-manifest.json ]]; then
    python3 - <<'PY' | while read -r region ami; do
import json
for b in json.load(open("target/packer-manifest.json"))["builds"]:
    region, ami = b["artifact_id"].split(":")
    print(region, ami)
PY
        if command -v aws >/dev/null; then
            snapshots=$(aws ec2 describe-images --region "$region" --image-ids "$ami" \
                --query 'Images[].BlockDeviceMappings[].Ebs.SnapshotId' --output text 2>/dev/null || true)
            aws ec2 deregister-image --region "$region" --image-id "$ami" && echo "deregistered $ami"
            for s in $snapshots; do aws ec2 delete-snapshot --region "$region" --snapshot-id "$s" && echo "deleted $s"; done
        else
            echo "AMI $ami ($region) is left: aws ec2 deregister-image --region $region --image-id $ami (and its snapshot)"
        fi
    done
    command -v aws >/dev/null && rm -f target/packer-manifest.json
fi
rm -f terraform/deploy.auto.tfvars

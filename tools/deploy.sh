#!/usr/bin/env bash
# `make deploy`: release binaries -> AMI (Packer) -> infrastructure (Terraform) -> URL and buckets.
# Needs AWS credentials (any the AWS SDKs read), packer >= 1.7 and terraform >= 1.6 on PATH.
# MODEL (default resnet18) picks the model baked into the AMI; REGION (default us-east-1).
set -euo pipefail
cd "$(dirname "$0")/.."

model=${MODEL:-resnet18}
region=${REGION:-us-east-1}
smoke_image=${SMOKE_IMAGE:?SMOKE_IMAGE: an image the AMI build classifies as a smoke test}
stage=target/packer-stage

for tool in packer terraform; do
    command -v "$tool" >/dev/null || {
        echo "deploy: '$tool' is not on PATH; install it from https://developer.hashicorp.com/$tool/install" >&2
        exit 1
    }
done
if [[ "$(uname -sm)" != "Linux x86_64" ]]; then
    echo "deploy: the AMI runs x86_64 Linux binaries; build on Linux x86_64 (found $(uname -sm))" >&2
    exit 1
fi

# Before anything is built or spent: credentials, region, vCPU quota, instance type offerings, cost.
echo "== checking the account (tools/preflight.py)"
.venv/bin/python tools/preflight.py --region "$region" || {
    echo "deploy: refused before creating anything (see above)" >&2
    exit 1
}

echo "== staging binaries, ONNX Runtime and models/$model for the AMI"
rm -rf "$stage"
mkdir -p "$stage"/bin "$stage"/lib "$stage"/model "$stage"/systemd
cp target/release/web-tier target/release/app-tier target/release/scaler "$stage"/bin/
cp .ort/libonnxruntime.so.* "$stage"/lib/
cp models/"$model"/model.onnx models/"$model"/labels.json models/"$model"/manifest.json "$stage"/model/
cp packer/files/*.service "$stage"/systemd/
cp "$smoke_image" "$stage"/smoke.jpg

echo "== building the AMI (packer build, ~10 min)"
packer init packer
packer build -var "region=$region" -var "model=$model" -var "stage_dir=$PWD/$stage" packer
ami=$(python3 - <<'PY'
import json
manifest = json.load(open("target/packer-manifest.json"))
build = next(b for b in reversed(manifest["builds"]) if b["packer_run_uuid"] == manifest["last_run_uuid"])
print(build["artifact_id"].split(":")[1])
PY
)
echo "AMI: $ami"
# destroy (and later applies) read these, so `terraform destroy` alone works too.
cat > terraform/deploy.auto.tfvars <<TFVARS
region = "$region"
ami_id = "$ami"
TFVARS

echo "== creating the infrastructure (terraform apply)"
terraform -chdir=terraform init -input=false
terraform -chdir=terraform apply -input=false ${AUTO_APPROVE:+-auto-approve}

url=$(terraform -chdir=terraform output -raw web_url)
cat <<DONE

Deployed. Upload an image:   curl -F myfile=@test_0.JPEG $url
Send the 100 test images:    target/release/loadgen --url $url --concurrency 100 <folder of images>
Input bucket:  $(terraform -chdir=terraform output -raw input_bucket)
Output bucket: $(terraform -chdir=terraform output -raw output_bucket)
Dashboard:     $(terraform -chdir=terraform output -raw dashboard_url)
The web tier takes about a minute after boot to answer. Remove everything with: make destroy

Expected cost per hour (list prices; the price variables in terraform/variables.tf):
$(terraform -chdir=terraform output -json expected_cost_per_hour | python3 -c '
import json, sys
cost = json.load(sys.stdin)
for key, what in [("at_minimum", "idle, at the minimum with the warm pool"),
                  ("at_cap_on_demand", "at the cap, On-Demand only"),
                  ("at_cap_with_spot", "at the cap, with Spot"),
                  ("at_cap_as_deployed", "at the cap, as deployed")]:
    print(f"  {what:<40} {cost[key]}")')
DONE

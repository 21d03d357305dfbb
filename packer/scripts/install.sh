#!/usr/bin/env bash
# Runs on the Packer build instance (as root): installs what /tmp/imgrec holds and checks that the
# app tier classifies an image with it before the AMI is registered.
set -euo pipefail
stage=/tmp/imgrec

id imgrec >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin imgrec
install -d -m 0755 /opt/imgrec/bin /opt/imgrec/lib /opt/imgrec/model /etc/imgrec
install -m 0755 "$stage"/bin/web-tier "$stage"/bin/app-tier "$stage"/bin/scaler /opt/imgrec/bin/
install -m 0644 "$stage"/lib/libonnxruntime.so.* /opt/imgrec/lib/
install -m 0644 "$stage"/model/* /opt/imgrec/model/
install -m 0644 "$stage"/systemd/*.service /etc/systemd/system/
systemctl daemon-reload

# A Hibernated warm pool saves each instance's RAM to a swap file that EC2's hibernation agent makes
# on the instance's first boot where hibernation is configured (not on this build instance):
# Canonical's AWS images carry the agent, and this makes sure this one does.
if ! dpkg-query -W -f='${Status}' ec2-hibinit-agent 2>/dev/null | grep -q "install ok installed"; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q ec2-hibinit-agent
fi

# The image must classify before it is worth registering.
label=$(ORT_DYLIB_PATH=/opt/imgrec/lib/libonnxruntime.so.1.31.1 \
    /opt/imgrec/bin/app-tier classify --model /opt/imgrec/model "$stage"/smoke.jpg)
echo "smoke test: $label"
[[ "$label" == smoke.jpg,* ]]

rm -rf "$stage"

#!/usr/bin/env bash
# The system programs `make test` needs, installed from Debian's packages when missing, before
# anything is built: a test that needs one must run, not skip. Prints what it could not install
# (and how to) and exits 1, so a missing program fails the run at its start, not an hour in.
#
#   nasm             libjpeg-turbo's SIMD code (bundled by the mozjpeg crate), as Pillow's has
#   packer           validates the AMI template offline (Debian's 1.6.6)
#   systemd-analyze  checks the AMI's units offline (verify, security)
#   chromium, chromedriver  the browser tests (Selenium drives the system browser; no downloads)
#   node, npm        the deployment rehearsal's IAM policy evaluator (tools/rehearsal/)
set -euo pipefail

declare -A package=(
    [nasm]=nasm
    [packer]=packer
    [systemd-analyze]=systemd
    [chromium]=chromium
    [chromedriver]=chromium-driver
    [node]=nodejs
    [npm]=npm
)

missing=()
for command in "${!package[@]}"; do
    command -v "$command" >/dev/null || missing+=("${package[$command]}")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
# One order whatever the hash's: the messages below read the same each run.
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)

as_root=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    else
        as_root=(none)
    fi
fi

if ! command -v apt-get >/dev/null || [[ "${as_root[*]}" == none ]]; then
    echo "make test needs these system packages, which are not installed: ${missing[*]}" >&2
    echo "install them (Debian/Ubuntu: sudo apt-get install ${missing[*]}) and run make test again" >&2
    exit 1
fi

echo "== installing system packages the tests need: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! { "${as_root[@]}" apt-get update -qq && "${as_root[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
    echo "could not install ${missing[*]} with apt-get; install them by hand and run make test again" >&2
    exit 1
fi
for command in "${!package[@]}"; do
    command -v "$command" >/dev/null || {
        echo "apt-get installed ${package[$command]}, but '$command' is still not on PATH" >&2
        exit 1
    }
done

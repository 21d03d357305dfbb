#!/usr/bin/env bash
# The local stack with its buckets and queues on S3 + SQS in a moto server on 127.0.0.1:$MOTO_PORT,
# created by the same bootstrap code as the tests; workers are local processes. Every AWS code
# path of the web and app tiers, without an AWS account. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
MOTO_PORT=${MOTO_PORT:-5000}
DATA_DIR=${DATA_DIR:-data}
mkdir -p "$DATA_DIR"

.venv/bin/python tools/moto_server.py -H 127.0.0.1 -p "$MOTO_PORT" >"$DATA_DIR/moto.log" 2>&1 &
moto=$!
trap 'kill "$moto" 2>/dev/null || true; wait "$moto" 2>/dev/null || true' EXIT
.venv/bin/python - "$MOTO_PORT" <<'PY'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/moto-api/"
for _ in range(300):
    try:
        urllib.request.urlopen(url, timeout=1)
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(f"moto server did not answer on {url}")
PY

export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
export IMGREC__BACKEND=aws IMGREC__AWS__ENDPOINT_URL="http://127.0.0.1:$MOTO_PORT"
target/release/scaler bootstrap
echo "moto server on http://127.0.0.1:$MOTO_PORT (buckets input-bucket, output-bucket; queues requests, responses-web-instance1, requests-dlq)"
target/release/web-tier

"""The web and app tiers on S3 + SQS (a moto server), workers as local processes: the hybrid
end-to-end test of the AWS adapters, with the SDK calls it took per image."""

import json
import re
import subprocess
import sys
import urllib.request
from collections import Counter

import boto3

from conftest import ROOT
from local_stack import MotoServer, Stack, loadgen, stack_processes

SCALER = ROOT / "target" / "release" / "scaler"
MODEL = ROOT / "models" / "efficientnet-lite0"


def test_100_images_over_s3_and_sqs(tmp_path, datasets, aws_binaries):
    thumbs = sorted((datasets / "imagenet-100").glob("*.JPEG"))
    ref = subprocess.run([sys.executable, "tools/reference.py", "--model", str(MODEL), *map(str, thumbs)],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    expected = tmp_path / "expected.csv"
    expected.write_text(ref.stdout)
    want = dict(line.split(",", 1) for line in ref.stdout.splitlines())

    with MotoServer() as moto:
        env = {**moto.env(), "IMGREC__BACKEND": "aws", "IMGREC__FLEET__BACKEND": "local"}
        boot = subprocess.run([str(SCALER), "bootstrap"], env={**__import__("os").environ, **env},
                              capture_output=True, text=True, timeout=60)
        assert boot.returncode == 0, boot.stderr
        data = tmp_path / "data"
        stack = Stack(data, extra_env=env, scaler__scale_in_after_s="2", scaler__tick_ms="200", app_tier__batch_size="10")
        with stack:
            summary, run = loadgen(stack.url, thumbs, concurrency=100, expected=expected)
            assert (summary["ok"], summary["errors"], summary["wrong"]) == (100, 0, 0), summary["error_samples"]
            metrics = urllib.request.urlopen(stack.url + "metrics").read().decode()
        assert stack.proc.returncode == 0
        assert stack_processes(data) == []
        assert not (data / "s3").exists(), "the AWS backend wrote local buckets"

        s3 = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        outputs = {o["Key"]: s3.get_object(Bucket="output-bucket", Key=o["Key"])["Body"].read().decode()
                   for o in s3.list_objects_v2(Bucket="output-bucket")["Contents"]}
        assert outputs == {f.stem: f"({f.stem}, {want[f.name]})" for f in thumbs}
        inputs = {o["Key"] for o in s3.list_objects_v2(Bucket="input-bucket")["Contents"]}
        assert inputs == {f.name for f in thumbs}
        for f in thumbs[:10]:
            assert s3.get_object(Bucket="input-bucket", Key=f.name)["Body"].read() == f.read_bytes()

    # SDK calls per image: the web tier's from /metrics, the workers' from their exit log lines.
    web = Counter({m[0]: int(m[1]) for m in re.findall(r'imgrec_api_calls_total\{operation="(\w+)"\} (\d+)', metrics)})
    workers = Counter()
    for line in stack.logs().splitlines():
        if "api_calls=" in line:
            workers.update(json.loads(line.split("api_calls=", 1)[1].split(" ")[0].strip()))
    per_image = {op: round(n / 100, 2) for op, n in sorted((web + workers).items())}
    print(f"\nweb tier calls: {dict(web)}\nworker calls: {dict(workers)}\nper image: {per_image}")
    assert web["PutObject"] == 100 and web["SendMessage"] == 100
    assert workers["GetObject"] == 100 and workers["PutObject"] == 100
    # Batching: a handful of receive/send/delete calls per ten images, not one each.
    batched = workers["SendMessageBatch"] + workers["DeleteMessageBatch"] + web["DeleteMessageBatch"]
    assert batched < 100, (web, workers)


def test_endpoint_down_gives_503_and_no_crash(tmp_path, datasets, aws_binaries):
    image = datasets / "imagenet-100" / "test_0.JPEG"
    with MotoServer() as moto:
        env = {**moto.env(), "IMGREC__BACKEND": "aws", "IMGREC__AWS__MAX_ATTEMPTS": "2"}
        boot = subprocess.run([str(SCALER), "bootstrap"], env={**__import__("os").environ, **env},
                              capture_output=True, text=True, timeout=60)
        assert boot.returncode == 0, boot.stderr
        stack = Stack(tmp_path / "data", extra_env=env, scaler__min="1", scaler__tick_ms="200")
        with stack:
            summary, _ = loadgen(stack.url, [image], concurrency=1)
            assert summary["ok"] == 1
            moto.proc.terminate()
            moto.proc.wait(10)
            summary, run = loadgen(stack.url, [image], concurrency=1, timeout=120)
            assert summary["errors"] == 1
            assert summary["error_samples"][0].startswith(f"{image.name}: 503"), summary["error_samples"]
            # The web tier and its worker keep running, retrying with backoff.
            assert stack.proc.poll() is None
            assert urllib.request.urlopen(stack.url + "healthz", timeout=5).status == 200
        assert stack.proc.returncode == 0, stack.logs()[-2000:]


def test_two_web_tiers_on_sqs_each_get_their_own_answers(tmp_path, datasets, aws_binaries):
    """web-instance1 (with the scaler) and web-instance2 share the request queue, the buckets and
    the workers; each reads only its own response queue. 100 uploads split between them."""
    import os
    import threading

    thumbs = sorted((datasets / "imagenet-100").glob("*.JPEG"))
    ref = subprocess.run([sys.executable, "tools/reference.py", "--model", str(MODEL), *map(str, thumbs)],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    want = dict(line.split(",", 1) for line in ref.stdout.splitlines())
    halves = [thumbs[0::2], thumbs[1::2]]
    expected = []
    for k, half in enumerate(halves):
        path = tmp_path / f"expected-{k}.csv"
        path.write_text("".join(f"{f.name},{want[f.name]}\n" for f in half))
        expected.append(path)

    with MotoServer() as moto:
        env = {**moto.env(), "IMGREC__BACKEND": "aws", "IMGREC__FLEET__BACKEND": "local"}
        boot = subprocess.run([str(SCALER), "bootstrap", "--web-tiers", "2"], env={**os.environ, **env},
                              capture_output=True, text=True, timeout=60)
        assert boot.returncode == 0, boot.stderr
        fast = {"scaler__scale_in_after_s": "2", "scaler__tick_ms": "200", "app_tier__batch_size": "10"}
        data = tmp_path / "data"
        stacks = [
            Stack(data, extra_env={**env, "IMGREC__WEB__NAME": "web-instance1"}, log_name="web1", **fast),
            Stack(data, extra_env={**env, "IMGREC__WEB__NAME": "web-instance2"}, log_name="web2",
                  web__run_scaler="false", **fast),
        ]
        results = [None, None]
        try:
            for s in stacks:
                s.start()
            assert [s.status()["web_tier"]["name"] for s in stacks] == ["web-instance1", "web-instance2"]

            def burst(k):
                results[k] = loadgen(stacks[k].url, halves[k], concurrency=50, expected=expected[k])

            threads = [threading.Thread(target=burst, args=(k,)) for k in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(300)
            for summary, run in results:
                assert (summary["ok"], summary["errors"], summary["wrong"]) == (50, 0, 0), (summary, run.stderr[-1000:])
            metrics = [urllib.request.urlopen(s.url + "metrics").read().decode() for s in stacks]
        finally:
            for s in stacks:
                if s.proc and s.proc.poll() is None:
                    s.stop()
        for s in stacks:
            assert s.proc.returncode == 0, s.logs()[-2000:]
        assert stack_processes(data) == []
        # Each web tier answered its own 50, from its own queue.
        for m in metrics:
            assert 'imgrec_requests_total{outcome="ok"} 50' in m

        sqs = boto3.client("sqs", endpoint_url=moto.endpoint, region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        names = {url.rsplit("/", 1)[1] for url in sqs.list_queues()["QueueUrls"]}
        assert {"responses-web-instance1", "responses-web-instance2"} <= names and "responses" not in names
        for name in ("responses-web-instance1", "responses-web-instance2"):
            url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
            attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
            assert attrs["ApproximateNumberOfMessages"] == attrs["ApproximateNumberOfMessagesNotVisible"] == "0"
        s3 = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        outputs = {o["Key"]: s3.get_object(Bucket="output-bucket", Key=o["Key"])["Body"].read().decode()
                   for o in s3.list_objects_v2(Bucket="output-bucket")["Contents"]}
        assert outputs == {f.stem: f"({f.stem}, {want[f.name]})" for f in thumbs}

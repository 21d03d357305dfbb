"""The deployment rehearsal (tools/rehearsal/, `make rehearsal`): the gateway answers as AWS does where
moto does not, and the whole deployment, each tier under its own role as Terraform renders it, serves
a burst with every label right and no call denied."""

import subprocess
import sys
import threading
import time

import boto3
import botocore
import pytest
import requests

from conftest import ROOT
from local_stack import Callbacks, MotoServer, loadgen, submit_job, wait_job, wait_until
from rehearsal.aws_rules import s3_call
from rehearsal.gateway import Gateway, Principal
from rehearsal.stack import NAMES, Rehearsal, burst_outcome, rendered, report

MODEL = ROOT / "models" / "efficientnet-lite0"
ACCOUNT = "123456789012"
ROLE = f"arn:aws:sts::{ACCOUNT}:assumed-role/test-role/session"


@pytest.fixture()
def gateway():
    with MotoServer() as moto:
        gw = Gateway(moto.endpoint).start()
        gw.add_principal("OWNER", Principal("owner", f"arn:aws:iam::{ACCOUNT}:root", None))
        try:
            yield gw
        finally:
            gw.stop()


def client(gw, service, key):
    return boto3.client(service, endpoint_url=gw.endpoint, region_name="us-east-1", aws_access_key_id=key,
                        aws_secret_access_key="x")


def error(call) -> tuple[str, int]:
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    return e.value.response["Error"]["Code"], e.value.response["ResponseMetadata"]["HTTPStatusCode"]


def allow(*statements) -> list[dict]:
    return [{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", **s} for s in statements]}]


def test_a_missing_key_reads_as_403_without_list_bucket_and_404_with_it(gateway):
    client(gateway, "s3", "OWNER").create_bucket(Bucket="state")
    gateway.add_principal("NOLIST", Principal("nolist", ROLE, allow({"Action": "s3:GetObject", "Resource": "arn:aws:s3:::state/*"})))
    gateway.add_principal("LIST", Principal("list", ROLE, allow({"Action": "s3:GetObject", "Resource": "arn:aws:s3:::state/*"},
                                                                 {"Action": "s3:ListBucket", "Resource": "arn:aws:s3:::state"})))
    assert error(lambda: client(gateway, "s3", "NOLIST").get_object(Bucket="state", Key="lease")) == ("AccessDenied", 403)
    assert error(lambda: client(gateway, "s3", "LIST").get_object(Bucket="state", Key="lease")) == ("NoSuchKey", 404)
    stats = gateway.stats.snapshot()
    assert stats["denied"] == {"nolist GetObject": 1}


def test_deletes_map_to_their_permissions_as_the_sdks_send_them():
    """The Rust SDK names the operation in the query (`?x-id=DeleteObject`): such a delete was a
    request the rehearsal could not map, and so denied, once the web tier deleted callbacks' leases."""
    for path, action in [("/out/_imgrec/callbacks/a?x-id=DeleteObject", "s3:DeleteObject"),
                         ("/out/_imgrec/callbacks/a", "s3:DeleteObject"),
                         ("/out/key?versionId=3&x-id=DeleteObject", "s3:DeleteObjectVersion")]:
        call = s3_call("DELETE", path, {}, "WEB", "us-east-1")
        assert call.operation == "DeleteObject", path
        assert [check[0] for check in call.checks] == [action], path
    assert s3_call("DELETE", "/out/key?tagging", {}, "WEB", "us-east-1").operation == "?"


def test_calls_outside_the_policy_are_denied_and_counted(gateway):
    s3 = client(gateway, "s3", "OWNER")
    s3.create_bucket(Bucket="input")
    gateway.add_principal("WEB", Principal("web", ROLE, allow({"Action": "s3:PutObject", "Resource": "arn:aws:s3:::input/uploads/*"})))
    web = client(gateway, "s3", "WEB")
    web.put_object(Bucket="input", Key="uploads/a", Body=b"1")
    assert error(lambda: web.put_object(Bucket="input", Key="elsewhere", Body=b"1")) == ("AccessDenied", 403)
    assert error(lambda: web.list_objects_v2(Bucket="input")) == ("AccessDenied", 403)
    assert error(lambda: client(gateway, "sqs", "WEB").list_queues()) == ("AccessDenied", 403)
    assert error(lambda: client(gateway, "s3", "STRANGER").list_buckets())[1] == 403
    stats = gateway.stats.snapshot()
    assert stats["total_denied"] == 3 and stats["calls"]["web PutObject"] == 2
    assert any("s3:ListBucket on arn:aws:s3:::input" in d["missing"] for d in stats["denials"])


def test_conditions_are_evaluated(gateway):
    """The scaler's policy: metrics only in its namespace; Name tags only, only on its group's instances."""
    ec2, autoscaling = client(gateway, "ec2", "OWNER"), client(gateway, "autoscaling", "OWNER")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ec2.create_launch_template(LaunchTemplateName="app-template", LaunchTemplateData={"ImageId": image, "InstanceType": "t3.micro"})
    autoscaling.create_auto_scaling_group(AutoScalingGroupName="app", MinSize=0, MaxSize=3, DesiredCapacity=1,
                                          LaunchTemplate={"LaunchTemplateName": "app-template"}, AvailabilityZones=["us-east-1a"])
    instance = autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"][0]["Instances"][0]["InstanceId"]
    gateway.add_principal("SCALER", Principal("scaler", ROLE, allow(
        {"Action": "cloudwatch:PutMetricData", "Resource": "*", "Condition": {"StringEquals": {"cloudwatch:namespace": "imgrec"}}},
        {"Action": "ec2:CreateTags", "Resource": f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/*",
         "Condition": {"StringEquals": {"aws:ResourceTag/aws:autoscaling:groupName": "app"},
                       "ForAllValues:StringEquals": {"aws:TagKeys": ["Name"]}}},
        {"Action": "autoscaling:SetDesiredCapacity", "Resource": "*"})))
    cloudwatch, scaler_ec2 = client(gateway, "cloudwatch", "SCALER"), client(gateway, "ec2", "SCALER")
    cloudwatch.put_metric_data(Namespace="imgrec", MetricData=[{"MetricName": "Backlog", "Value": 1}])
    assert error(lambda: cloudwatch.put_metric_data(Namespace="other", MetricData=[{"MetricName": "B", "Value": 1}]))[0] == "AccessDenied"
    scaler_ec2.create_tags(Resources=[instance], Tags=[{"Key": "Name", "Value": "app-instance1"}])
    assert error(lambda: scaler_ec2.create_tags(Resources=[instance], Tags=[{"Key": "Owner", "Value": "x"}]))[0] == "UnauthorizedOperation"
    # AWS's bounds on the group hold for everyone, the owner included.
    scaling = client(gateway, "autoscaling", "SCALER")
    assert error(lambda: scaling.set_desired_capacity(AutoScalingGroupName="app", DesiredCapacity=4)) == ("ValidationError", 400)
    scaling.set_desired_capacity(AutoScalingGroupName="app", DesiredCapacity=3)


def test_sqs_limits_hold_as_on_aws(gateway):
    sqs = client(gateway, "sqs", "OWNER")
    url = sqs.create_queue(QueueName="requests")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="hello")
    handle = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"][0]["ReceiptHandle"]
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=600)
    assert error(lambda: sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=86_400))[0] == "InvalidParameterValue"
    assert error(lambda: sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=11))[0] == "InvalidParameterValue"
    assert error(lambda: sqs.receive_message(QueueUrl=url, WaitTimeSeconds=21))[0] == "InvalidParameterValue"
    assert error(lambda: sqs.receive_message(QueueUrl=url, VisibilityTimeout=86_400))[0] == "InvalidParameterValue"
    entries = [{"Id": str(i), "MessageBody": "x"} for i in range(11)]
    assert error(lambda: sqs.send_message_batch(QueueUrl=url, Entries=entries))[0] == "TooManyEntriesInBatchRequest"


def test_the_app_tiers_role_may_put_requests_back_as_new_messages(gateway):
    """Found by reading the policy against the code: a worker puts requests back on the request
    queue as new messages (poison isolation, and a stopping worker's give-back, whose receive must
    not count), but the app tier's role allowed SendMessage on the response queues only: on AWS
    both fell back to counting the receive. Every call a worker makes on the request queue, under
    the role as Terraform renders it."""
    sqs = client(gateway, "sqs", "OWNER")
    url = sqs.create_queue(QueueName=NAMES["request_queue"])["QueueUrl"]
    gateway.add_principal("APP", Principal("app", ROLE, [rendered()["app_tier"]]))
    app = client(gateway, "sqs", "APP")
    sqs.send_message(QueueUrl=url, MessageBody="first")
    handle = app.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"][0]["ReceiptHandle"]
    app.change_message_visibility(QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=30)
    app.send_message_batch(QueueUrl=url, Entries=[{"Id": "0", "MessageBody": "again"}])
    app.delete_message_batch(QueueUrl=url, Entries=[{"Id": "0", "ReceiptHandle": handle}])
    stats = gateway.stats.snapshot()
    assert stats["total_denied"] == 0, stats["denials"]
    assert stats["calls"]["app SendMessageBatch"] == 1, stats["calls"]


def test_the_deployment_serves_a_burst_under_its_own_roles(datasets, tmp_path, aws_binaries):
    """web-instance1's web tier and scaler under the web role, the group's instances under the app
    role, both as Terraform renders them: every label right, the group grows and shrinks back to
    its minimum through the S3 lease, and not one call is denied."""
    images = sorted((datasets / "imagenet-100").glob("*.JPEG"))
    ref = subprocess.run([sys.executable, "tools/reference.py", "--model", str(MODEL), *map(str, images)],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    expected = tmp_path / "expected.csv"
    expected.write_text(ref.stdout)
    with Rehearsal(tmp_path / "rehearsal") as rehearsal:
        assert rehearsal.status()["web_tier"]["name"] == "web-instance1"
        # The web tier's /status (and so /dashboard) shows the group, though the scaler that acts
        # on it is another process, as on AWS.
        shown, purchases, done = [], set(), threading.Event()

        def watch():
            while not done.wait(0.2):
                instances = rehearsal.status()["instances"]
                shown.append(len(instances))
                purchases.update(i.get("purchase") for i in instances)

        watcher = threading.Thread(target=watch)
        watcher.start()
        callbacks = Callbacks()
        try:
            summary, run = loadgen(rehearsal.url, images, concurrency=100, expected=expected)
            # A job with a callback and a retried upload, under the same roles: their records and
            # the callback's lease in the output bucket.
            job = submit_job(rehearsal.url, images[:10], token="rehearsal-job", callback_url=callbacks.url)
            job = wait_job([rehearsal.url], job["job_id"], timeout=120)
            wait_until("the job's callback", lambda: callbacks.received, 30)
            retried = [requests.post(rehearsal.url, files={"myfile": (images[0].name, images[0].read_bytes())},
                                     headers={"Idempotency-Key": "rehearsal-1"}, timeout=120) for _ in range(2)]
            outcome = burst_outcome(rehearsal, summary)
            instances = len(rehearsal.player.seen)
        finally:
            done.set()
            watcher.join()
            callbacks.close()
        print("\n" + report(outcome))
        logs = rehearsal.log("scaler")
    assert outcome.denied == 0, report(outcome)
    # Nor refused for breaking one of AWS's limits (a visibility over 12 hours, say).
    assert outcome.stats["faults"] == {}, report(outcome)
    assert (outcome.ok, outcome.wrong, outcome.errors) == (100, 0, 0), (summary["error_samples"], logs[-3000:])
    assert job["counts"] == {"total": 10, "done": 10, "failed": 0, "pending": 0}, job
    assert [c["job_id"] for c in callbacks.received] == [job["job_id"]], callbacks.received
    assert [(r.status_code, r.text) for r in retried] == [(200, retried[0].text)] * 2
    assert outcome.peak_instances >= 1 and outcome.final_instances == 0
    # The On-Demand group took the first instance, the Spot group the rest, each named once.
    assert outcome.group_peaks[NAMES["auto_scaling_group"]] == 1, report(outcome)
    assert outcome.group_peaks[NAMES["spot_group"]] >= 1, report(outcome)
    assert max(shown) >= 1, "/status never showed an instance"
    assert {"on-demand", "spot"} <= purchases, purchases
    calls = outcome.stats["calls"]
    # The scaler acted through the lease and named its instances; workers marked themselves busy.
    # Each instance named once, by the acting scaler only (the web tier's watcher names none).
    assert calls["web_tier CreateTags"] == instances, (calls, instances)
    for op in ("web_tier PutObject", "web_tier SetDesiredCapacity", "web_tier CreateTags",
               "app_tier SetInstanceProtection", "app_tier GetObject", "app_tier SendMessageBatch"):
        assert calls.get(op, 0) > 0, (op, calls)


def test_a_worker_that_cannot_start_says_so_in_status_under_the_deployed_roles(tmp_path):
    """Auto Scaling sees an instance whose worker cannot load its model as a healthy launch: it
    stayed in service, idle, with nothing in /status saying why. Each worker now records its start
    in the output bucket, which the scaler reads, both under the roles Terraform renders."""
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for name in ("manifest.json", "labels.json"):
        (broken / name).write_bytes((MODEL / name).read_bytes())
    (broken / "model.onnx").write_bytes(b"not a model")
    image = ROOT / "services/classifier/tests/fixtures/small.jpg"
    with Rehearsal(tmp_path / "rehearsal", app_env={"IMGREC__INFERENCE__MODEL_DIR": str(broken)}) as rehearsal:
        # One upload: the scaler launches an instance for it, whose worker cannot start.
        upload = threading.Thread(target=lambda: requests.post(
            rehearsal.url, files={"myfile": ("small.jpg", image.read_bytes())}, timeout=120), daemon=True)
        upload.start()
        failure, deadline = None, time.monotonic() + 120
        while failure is None and time.monotonic() < deadline:
            failure = rehearsal.status()["capacity"]["launch_failure"]
            time.sleep(0.5)
        seen = sorted(rehearsal.player.seen)
        stats = rehearsal.stats()
    print(f"\n/status launch_failure: {failure}")
    assert failure is not None, ("/status never said why no worker serves", seen, stats["calls"])
    assert "cannot start" in failure["reason"] and any(i in failure["reason"] for i in seen), (failure, seen)
    assert stats["total_denied"] == 0, stats["denials"]
    calls = stats["calls"]
    assert calls.get("web_tier ListObjectsV2", 0) > 0, calls

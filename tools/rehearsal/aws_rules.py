"""How AWS reads the calls the services make: the IAM actions, resources and condition keys each needs
(the Service Authorization Reference), the limits AWS enforces and moto does not, and the error each
answers with. Only what the services and the rehearsal call is mapped; anything else is refused, so
a new call shows up as a denial to map here, not as a silent pass.

AWS behaviours emulated, with AWS's documentation for each:
- S3 GetObject/HeadObject of a missing key without s3:ListBucket on the bucket: 403 AccessDenied, not
  404 NoSuchKey (S3 API Reference, GetObject, "Permissions").
- SQS ReceiveMessage: MaxNumberOfMessages 1-10, WaitTimeSeconds 0-20, VisibilityTimeout 0-43,200;
  ChangeMessageVisibility(Batch): VisibilityTimeout 0-43,200 s, 12 hours (SQS API Reference); batch
  requests hold 1-10 entries with distinct ids (TooManyEntriesInBatchRequest, EmptyBatchRequest,
  BatchEntryIdsNotDistinct); a message or a batch is at most 1 MiB (SendMessage, SendMessageBatch).
- Auto Scaling SetDesiredCapacity outside the group's MinSize..MaxSize: ValidationError (Auto Scaling
  API Reference, SetDesiredCapacity); SetInstanceProtection: at most 50 instances, each in the group
  (a terminating instance stays in it while it shuts down, as on AWS; moto drops it at once);
  TerminateInstanceInAutoScalingGroup of an instance in no group: ValidationError.
- CloudWatch PutMetricData: at most 1,000 metric data, 30 dimensions each, 150 values each, a 1 MB
  request, no namespace starting "AWS/" (CloudWatch API Reference, PutMetricData).
- EC2 CreateTags: keys up to 127 characters, values up to 255, no key starting "aws:" (EC2 API
  Reference, Tag)."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import uuid
import xml.sax.saxutils
from dataclasses import dataclass, field

import boto3

ACCOUNT = "123456789012"
PARTITION = "aws"
MAX_VISIBILITY_S = 43_200
MAX_MESSAGE_BYTES = 1_048_576


class AwsFault(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message

    def response(self, service: str, protocol: str, method: str) -> tuple[int, list, bytes]:
        request_id = str(uuid.uuid4())
        msg = xml.sax.saxutils.escape(self.message)
        if service == "s3":
            body = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{self.code}</Code>"
                    f"<Message>{msg}</Message><RequestId>{request_id}</RequestId></Error>")
            return self.status, [("Content-Type", "application/xml"), ("x-amz-request-id", request_id)], body.encode()
        if protocol == "json":
            body = json.dumps({"__type": f"com.amazonaws.{service}#{self.code}", "message": self.message})
            return self.status, [("Content-Type", "application/x-amz-json-1.0"), ("x-amzn-RequestId", request_id),
                                 ("x-amzn-query-error", f"{self.code};Sender")], body.encode()
        if service == "ec2":
            body = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{self.code}</Code>"
                    f"<Message>{msg}</Message></Error></Errors><RequestID>{request_id}</RequestID></Response>")
            return self.status, [("Content-Type", "text/xml")], body.encode()
        body = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{self.code}</Code><Message>{msg}</Message>"
                f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>")
        return self.status, [("Content-Type", "text/xml")], body.encode()


def validation(message: str) -> AwsFault:
    return AwsFault(400, "ValidationError", message)


@dataclass
class Call:
    service: str
    operation: str
    access_key: str
    region: str
    # "rest" (S3), "json" (SQS), "query" (Auto Scaling, EC2, CloudWatch)
    protocol: str
    params: dict = field(default_factory=dict)
    # (IAM action, resource ARN or "*", condition context): every one must be allowed. None: a
    # request this module does not know, refused.
    checks: list[tuple[str, str, dict]] | None = None
    # Auto Scaling: the group the call acts on, as moto describes it.
    group: dict | None = None
    # S3: the bucket and key the call is on.
    bucket: str = ""
    key: str | None = None


class MotoView:
    """What the gateway reads of the emulated account to authorize a call (a group's ARN and bounds,
    an instance's group and tags), straight from moto."""

    def __init__(self, endpoint: str):
        kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="gateway",
                  aws_secret_access_key="gateway")
        self.autoscaling = boto3.client("autoscaling", **kw)
        self.ec2 = boto3.client("ec2", **kw)
        # Instances told to terminate, and when: on AWS still in their group a while.
        self.terminating: dict[str, float] = {}

    def still_terminating(self) -> set[str]:
        now = time.monotonic()
        return {i for i, at in list(self.terminating.items()) if now - at < TERMINATING_S}

    def group(self, name: str) -> dict | None:
        groups = self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
        return groups[0] if groups else None

    def group_of(self, instance_id: str) -> str | None:
        found = self.autoscaling.describe_auto_scaling_instances(InstanceIds=[instance_id])["AutoScalingInstances"]
        return found[0]["AutoScalingGroupName"] if found else None

    def tags(self, resource_id: str) -> dict[str, str]:
        tags = self.ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [resource_id]}])["Tags"]
        return {t["Key"]: t["Value"] for t in tags}


def credential(headers) -> tuple[str, str, str]:
    """(access key id, region, service) from a SigV4 Authorization header."""
    m = re.search(r"Credential=([^/,\s]+)/\d{8}/([^/]+)/([^/]+)/aws4_request", headers.get("Authorization", ""))
    if not m:
        raise AwsFault(403, "MissingAuthenticationToken", "Request is missing Authentication Token")
    return m.group(1), m.group(2), m.group(3)


def arn(service: str, region: str, resource: str, account: str = ACCOUNT) -> str:
    return f"arn:{PARTITION}:{service}:{region}:{account}:{resource}"


def parse(method: str, path: str, headers, body: bytes, moto: MotoView) -> Call:
    access_key, region, service = credential(headers)
    if service == "s3":
        return s3_call(method, path, headers, access_key, region)
    target = headers.get("X-Amz-Target", "")
    if target:
        params = json.loads(body or b"{}")
        call = Call(service, target.split(".")[-1], access_key, region, "json", params)
    else:
        form = urllib.parse.parse_qs(body.decode(), keep_blank_values=True) if body else {}
        form |= urllib.parse.parse_qs(urllib.parse.urlsplit(path).query, keep_blank_values=True)
        params = {k: v[0] for k, v in form.items()}
        call = Call(service, params.get("Action", "?"), access_key, region, "query", params)
    mapper = {"sqs": sqs_checks, "autoscaling": autoscaling_checks, "ec2": ec2_checks,
              "monitoring": cloudwatch_checks, "sts": sts_checks}.get(service)
    if mapper:
        mapper(call, moto)
    return call


def s3_call(method: str, path: str, headers, access_key: str, region: str) -> Call:
    url = urllib.parse.urlsplit(path)
    query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
    bucket, _, key = url.path.lstrip("/").partition("/")
    key = urllib.parse.unquote(key) if key else None
    call = Call("s3", "?", access_key, region, "rest", {k: v[0] for k, v in query.items()}, bucket=bucket, key=key)
    bucket_arn = f"arn:{PARTITION}:s3:::{bucket}"
    if key is not None:
        object_arn = f"{bucket_arn}/{key}"
        version = "versionId" in query
        if method in ("GET", "HEAD") and not ({"uploadId", "tagging", "acl"} & set(query)):
            call.operation = "GetObject" if method == "GET" else "HeadObject"
            call.checks = [("s3:GetObjectVersion" if version else "s3:GetObject", object_arn, {})]
        elif method == "PUT" and not ({"tagging", "acl", "retention"} & set(query)):
            call.operation = "UploadPart" if "uploadId" in query else "PutObject"
            call.checks = [("s3:PutObject", object_arn, {})]
            if "x-amz-copy-source" in headers:
                call.operation = "CopyObject"
                source = urllib.parse.unquote(headers["x-amz-copy-source"]).lstrip("/").split("?")[0]
                call.checks.append(("s3:GetObject", f"arn:{PARTITION}:s3:::{source}", {}))
        elif method == "DELETE" and not set(query) - {"x-id", "versionId"}:
            # The SDKs name the operation in the query (`x-id=DeleteObject`); deleting a given
            # version takes a permission of its own.
            call.operation = "DeleteObject"
            call.checks = [("s3:DeleteObjectVersion" if version else "s3:DeleteObject", object_arn, {})]
        return call
    if method == "HEAD":
        call.operation, call.checks = "HeadBucket", [("s3:ListBucket", bucket_arn, {})]
    elif method == "GET" and "versioning" in query:
        call.operation, call.checks = "GetBucketVersioning", [("s3:GetBucketVersioning", bucket_arn, {})]
    elif method == "GET" and "versions" in query:
        call.operation = "ListObjectVersions"
        call.checks = [("s3:ListBucketVersions", bucket_arn, {"s3:prefix": query.get("prefix", [""])[0]})]
    elif method == "GET" and not ({"location", "policy", "acl", "lifecycle", "tagging", "uploads"} & set(query)):
        call.operation = "ListObjectsV2" if "list-type" in query else "ListObjects"
        call.checks = [("s3:ListBucket", bucket_arn, {"s3:prefix": query.get("prefix", [""])[0]})]
    elif method == "PUT" and "versioning" in query:
        call.operation, call.checks = "PutBucketVersioning", [("s3:PutBucketVersioning", bucket_arn, {})]
    elif method == "PUT" and not query:
        call.operation, call.checks = "CreateBucket", [("s3:CreateBucket", bucket_arn, {})]
    return call


def check_answer(call: Call, status: int, may) -> None:
    """AWS's answer where it differs from moto's, given moto's status and `may(action, resource)`."""
    if call.service == "s3" and call.operation in ("GetObject", "HeadObject") and status == 404:
        if not may("s3:ListBucket", f"arn:{PARTITION}:s3:::{call.bucket}"):
            # Without ListBucket, S3 does not tell a missing key from a forbidden one.
            raise AwsFault(403, "AccessDenied", "Access Denied")


def access_denied(call: Call, principal: str, missing: str) -> AwsFault:
    if call.service == "s3":
        return AwsFault(403, "AccessDenied", "Access Denied")
    if call.service == "ec2":
        return AwsFault(403, "UnauthorizedOperation", f"You are not authorized to perform this operation. "
                                                       f"User: {principal} is not authorized to perform: {missing}")
    return AwsFault(403, "AccessDenied", f"User: {principal} is not authorized to perform: {missing}")


def queue_arn(call: Call, url: str) -> str:
    parts = urllib.parse.urlsplit(url).path.strip("/").split("/")
    account, name = (parts[-2], parts[-1]) if len(parts) >= 2 else (ACCOUNT, parts[-1])
    return arn("sqs", call.region, name, account)


def entries(call: Call, name: str) -> list[dict]:
    """A batch request's entries in either protocol."""
    if call.protocol == "json":
        return call.params.get(name, [])
    found: dict[int, dict] = {}
    for k, v in call.params.items():
        m = re.fullmatch(rf"{name}\.(\d+)\.(\w+)", k) or re.fullmatch(rf"{name}\.member\.(\d+)\.(\w+)", k)
        if m:
            found.setdefault(int(m.group(1)), {})[m.group(2)] = v
    return [found[i] for i in sorted(found)]


def in_range(value, low: int, high: int, name: str, code: str = "InvalidParameterValue") -> None:
    if value is None:
        return
    if not low <= int(value) <= high:
        raise AwsFault(400, code, f"Value {value} for parameter {name} is invalid. Reason: must be between "
                                  f"{low} and {high}.")


def sqs_checks(call: Call, moto: MotoView) -> None:
    op, p = call.operation, call.params
    action = {"SendMessageBatch": "SendMessage", "DeleteMessageBatch": "DeleteMessage",
              "ChangeMessageVisibilityBatch": "ChangeMessageVisibility"}.get(op, op)
    if op == "GetQueueUrl":
        resource = arn("sqs", call.region, p.get("QueueName", ""), p.get("QueueOwnerAWSAccountId", ACCOUNT))
    elif op == "CreateQueue":
        resource = arn("sqs", call.region, p.get("QueueName", ""))
    elif op == "ListQueues":
        resource = "*"
    elif "QueueUrl" in p:
        resource = queue_arn(call, p["QueueUrl"])
    else:
        return
    call.checks = [(f"sqs:{action}", resource, {})]


def check_limits(call: Call, moto: MotoView) -> None:
    """AWS's limits on the call's parameters (and on the group it resizes)."""
    check = {"sqs": sqs_limits, "autoscaling": autoscaling_limits, "monitoring": cloudwatch_limits,
             "ec2": ec2_limits}.get(call.service)
    if check:
        check(call, moto)


def sqs_limits(call: Call, moto: MotoView) -> None:
    op, p = call.operation, call.params
    if op == "ReceiveMessage":
        in_range(p.get("MaxNumberOfMessages"), 1, 10, "MaxNumberOfMessages")
        in_range(p.get("WaitTimeSeconds"), 0, 20, "WaitTimeSeconds")
        in_range(p.get("VisibilityTimeout"), 0, MAX_VISIBILITY_S, "VisibilityTimeout")
    elif op == "ChangeMessageVisibility":
        in_range(p.get("VisibilityTimeout"), 0, MAX_VISIBILITY_S, "VisibilityTimeout")
    elif op == "SendMessage" and len(p.get("MessageBody", "").encode()) > MAX_MESSAGE_BYTES:
        raise AwsFault(400, "InvalidParameterValue", "One or more parameters are invalid. Reason: Message must be "
                                                     "shorter than 1048576 bytes.")
    if op.endswith("Batch"):
        batch = entries(call, "Entries" if call.protocol == "json" else f"{op}RequestEntry")
        if not batch:
            raise AwsFault(400, "EmptyBatchRequest", "There should be at least one entry in the request.")
        if len(batch) > 10:
            raise AwsFault(400, "TooManyEntriesInBatchRequest", f"Maximum number of entries per request are 10. "
                                                                f"You have sent {len(batch)}.")
        if len({e.get("Id") for e in batch}) != len(batch):
            raise AwsFault(400, "BatchEntryIdsNotDistinct", "Two or more batch entries in the request have the same Id.")
        if op == "SendMessageBatch" and sum(len(e.get("MessageBody", "").encode()) for e in batch) > MAX_MESSAGE_BYTES:
            raise AwsFault(400, "BatchRequestTooLong", "Batch requests cannot be longer than 1048576 bytes.")
        if op == "ChangeMessageVisibilityBatch":
            for e in batch:
                in_range(e.get("VisibilityTimeout"), 0, MAX_VISIBILITY_S, "VisibilityTimeout")


def members(params: dict, name: str) -> list[str]:
    found = [(int(m.group(1)), v) for k, v in params.items() if (m := re.fullmatch(rf"{name}\.member\.(\d+)", k))]
    return [v for _, v in sorted(found)]


# How long an instance stays in its group after TerminateInstanceInAutoScalingGroup on AWS
# (Terminating, while it shuts down and its units stop); moto drops it at once.
TERMINATING_S = 120.0


def autoscaling_checks(call: Call, moto: MotoView) -> None:
    op, p = call.operation, call.params
    if op.startswith("Describe"):
        call.checks = [(f"autoscaling:{op}", "*", {})]
        return
    group_name = p.get("AutoScalingGroupName")
    if op == "TerminateInstanceInAutoScalingGroup":
        group_name = moto.group_of(p.get("InstanceId", ""))
        if group_name is not None:
            moto.terminating[p["InstanceId"]] = time.monotonic()
        if group_name is None:
            raise validation(f"Instance Id not found - No managed instance found for instance ID: {p.get('InstanceId')}")
    group = moto.group(group_name) if group_name else None
    resource = group["AutoScalingGroupARN"] if group else arn("autoscaling", call.region, "autoScalingGroup:*")
    call.checks = [(f"autoscaling:{op}", resource, {})]
    call.group = group


def autoscaling_limits(call: Call, moto: MotoView) -> None:
    op, p, group = call.operation, call.params, call.group
    if op == "SetDesiredCapacity" and group:
        desired = int(p["DesiredCapacity"])
        if desired > group["MaxSize"]:
            raise validation(f"New SetDesiredCapacity value {desired} is above max value {group['MaxSize']} "
                             f"for the AutoScalingGroup.")
        if desired < group["MinSize"]:
            raise validation(f"New SetDesiredCapacity value {desired} is below min value {group['MinSize']} "
                             f"for the AutoScalingGroup.")
    if op == "SetInstanceProtection" and group:
        ids = members(p, "InstanceIds")
        if len(ids) > 50:
            raise validation("The number of instances in the request exceeds the maximum of 50.")
        in_group = {i["InstanceId"] for i in group["Instances"]} | moto.still_terminating()
        for i in ids:
            if i not in in_group:
                raise validation(f"The instance {i} is not part of Auto Scaling group {group['AutoScalingGroupName']}.")


def tag_pairs(params: dict) -> list[tuple[str, str]]:
    keys = {int(m.group(1)): v for k, v in params.items() if (m := re.fullmatch(r"Tag\.(\d+)\.Key", k))}
    return [(keys[i], params.get(f"Tag.{i}.Value", "")) for i in sorted(keys)]


def ec2_checks(call: Call, moto: MotoView) -> None:
    op, p = call.operation, call.params
    if op.startswith("Describe") or op in ("CreateLaunchTemplate", "RunInstances"):
        call.checks = [(f"ec2:{op}", "*", {})]
        return
    if op == "CreateTags":
        call.checks = []
        tags = tag_pairs(p)
        ids = [v for k, v in sorted(p.items()) if re.fullmatch(r"ResourceId\.\d+", k)]
        for resource_id in ids:
            kind = "instance" if resource_id.startswith("i-") else "unknown"
            context = {"aws:TagKeys": [k for k, _ in tags], **{f"aws:RequestTag/{k}": v for k, v in tags}}
            context |= {f"aws:ResourceTag/{k}": v for k, v in moto.tags(resource_id).items()}
            call.checks.append(("ec2:CreateTags", arn("ec2", call.region, f"{kind}/{resource_id}"), context))


def ec2_limits(call: Call, moto: MotoView) -> None:
    if call.operation == "CreateTags":
        for k, v in tag_pairs(call.params):
            if len(k) > 127 or len(v) > 255 or k.lower().startswith("aws:"):
                raise AwsFault(400, "InvalidParameterValue", f"Tag {k!r}: keys are at most 127 characters and may not "
                                                             f"start with aws:, values at most 255")


def cloudwatch_checks(call: Call, moto: MotoView) -> None:
    op, p = call.operation, call.params
    context = {"cloudwatch:namespace": p["Namespace"]} if "Namespace" in p else {}
    call.checks = [(f"cloudwatch:{op}", "*", context)]


def cloudwatch_limits(call: Call, moto: MotoView) -> None:
    if call.operation != "PutMetricData":
        return
    p = call.params
    if p.get("Namespace", "").startswith("AWS/"):
        raise AwsFault(400, "InvalidParameterValue", "The value AWS/ for parameter Namespace is invalid.")
    data = {int(m.group(1)) for k in p if (m := re.match(r"MetricData\.member\.(\d+)\.", k))}
    if len(data) > 1000:
        raise AwsFault(400, "InvalidParameterValue", f"The collection MetricData must not have a size greater "
                                                     f"than 1000 (got {len(data)}).")
    for i in data:
        dims = {m.group(1) for k in p if (m := re.match(rf"MetricData\.member\.{i}\.Dimensions\.member\.(\d+)\.", k))}
        if len(dims) > 30:
            raise AwsFault(400, "InvalidParameterValue", "The collection Dimensions must not have a size greater than 30.")
        values = [k for k in p if re.fullmatch(rf"MetricData\.member\.{i}\.Values\.member\.\d+", k)]
        if len(values) > 150:
            raise AwsFault(400, "InvalidParameterValue", "The collection Values must not have a size greater than 150.")
    if len(urllib.parse.urlencode(p)) > 1_000_000:
        raise AwsFault(413, "RequestEntityTooLarge", "Request size exceeded 1000000 bytes")


def sts_checks(call: Call, moto: MotoView) -> None:
    # GetCallerIdentity needs no permission (STS API Reference); nothing else of STS is mapped.
    if call.operation == "GetCallerIdentity":
        call.checks = []

# One role per tier, each allowed exactly what its code calls, on exactly this deployment's
# buckets, queues, Auto Scaling group and metric namespace. The web tier's role also serves the
# scaler, which runs beside every web tier.

locals {
  group_arn      = "arn:${var.partition}:autoscaling:${var.region}:${var.account_id}:autoScalingGroup:*:autoScalingGroupName/${var.app_group_name}"
  all_queue_arns = concat([var.request_queue_arn, var.dead_letter_arn], var.response_queue_arns)
  roles = {
    web_tier = data.aws_iam_policy_document.web_tier.json
    app_tier = data.aws_iam_policy_document.app_tier.json
  }
}

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

# Every tier checks at startup that its buckets and queues exist (HeadBucket needs ListBucket),
# and that the input bucket keeps versions (uploads that share a file name rely on it).
data "aws_iam_policy_document" "find_resources" {
  statement {
    sid       = "FindBuckets"
    actions   = ["s3:ListBucket"]
    resources = [var.input_bucket_arn, var.output_bucket_arn]
  }

  statement {
    sid       = "CheckVersioning"
    actions   = ["s3:GetBucketVersioning"]
    resources = [var.input_bucket_arn]
  }

  statement {
    sid       = "FindQueues"
    actions   = ["sqs:GetQueueUrl", "sqs:GetQueueAttributes"]
    resources = local.all_queue_arns
  }
}

data "aws_iam_policy_document" "web_tier" {
  source_policy_documents = [data.aws_iam_policy_document.find_resources.json]

  statement {
    sid       = "StoreUploads"
    actions   = ["s3:PutObject"]
    resources = ["${var.input_bucket_arn}/*"]
  }

  statement {
    sid       = "QueueRequests"
    actions   = ["sqs:SendMessage"]
    resources = [var.request_queue_arn]
  }

  statement {
    sid       = "ReadResponsesAndDeadLetters"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"]
    resources = concat(var.response_queue_arns, [var.dead_letter_arn])
  }

  # Whichever web instance reads a dead letter tells the web instance its client waits on.
  statement {
    sid       = "PassOnDeadLetters"
    actions   = ["sqs:SendMessage"]
    resources = var.response_queue_arns
  }

  # The scaler (on every web instance): its lease object, read and written with conditional puts.
  statement {
    sid       = "ScalerLease"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = ["${var.lease_bucket_arn}/_imgrec/leases/*"]
  }

  # The scaler. Describe* calls of Auto Scaling and EC2 support no resource-level permissions:
  # AWS requires "*" for them.
  statement {
    sid       = "ObserveFleet"
    actions   = ["autoscaling:DescribeAutoScalingGroups", "ec2:DescribeTags"]
    resources = ["*"]
  }

  statement {
    sid       = "SizeFleet"
    actions   = ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"]
    resources = [local.group_arn]
  }

  # Names (Name tags) only, and only on the app tier group's instances.
  statement {
    sid       = "NameInstances"
    actions   = ["ec2:CreateTags"]
    resources = ["arn:${var.partition}:ec2:${var.region}:${var.account_id}:instance/*"]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/aws:autoscaling:groupName"
      values   = [var.app_group_name]
    }

    condition {
      test     = "ForAllValues:StringEquals"
      variable = "aws:TagKeys"
      values   = ["Name"]
    }
  }

  # PutMetricData has no resource-level permissions (AWS requires "*"); the namespace condition
  # is the limit.
  statement {
    sid       = "PublishScalingMetrics"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"]

    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = [var.metric_namespace]
    }
  }
}

data "aws_iam_policy_document" "app_tier" {
  source_policy_documents = [data.aws_iam_policy_document.find_resources.json]

  statement {
    sid       = "FetchImages"
    actions   = ["s3:GetObject", "s3:GetObjectVersion"]
    resources = ["${var.input_bucket_arn}/*"]
  }

  statement {
    sid       = "StoreResults"
    actions   = ["s3:PutObject"]
    resources = ["${var.output_bucket_arn}/*"]
  }

  statement {
    sid       = "TakeRequests"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"]
    resources = [var.request_queue_arn]
  }

  statement {
    sid       = "SendResponses"
    actions   = ["sqs:SendMessage"]
    resources = var.response_queue_arns
  }

  # A busy worker protects itself from scale-in; the scaler reads protection as "busy".
  statement {
    sid       = "MarkBusy"
    actions   = ["autoscaling:SetInstanceProtection"]
    resources = [local.group_arn]
  }
}

resource "aws_iam_role" "this" {
  for_each = local.roles

  name               = "${var.name_prefix}-${replace(each.key, "_", "-")}"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

resource "aws_iam_role_policy" "this" {
  for_each = local.roles

  name   = "${var.name_prefix}-${replace(each.key, "_", "-")}"
  role   = aws_iam_role.this[each.key].id
  policy = each.value
}

resource "aws_iam_role_policy_attachment" "ssm" {
  for_each = var.enable_ssm ? local.roles : {}

  role       = aws_iam_role.this[each.key].name
  policy_arn = "arn:${var.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "this" {
  for_each = local.roles

  name = "${var.name_prefix}-${replace(each.key, "_", "-")}"
  role = aws_iam_role.this[each.key].name
}

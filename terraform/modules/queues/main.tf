# Requests (with a dead-letter queue) and one response queue per web instance. Server-side encryption with SQS-owned keys;
# long polling by default so that no client pays for empty receives.

resource "aws_sqs_queue" "dead_letter" {
  name                      = "${var.name_prefix}-requests-dlq"
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue" "requests" {
  name                       = "${var.name_prefix}-requests"
  visibility_timeout_seconds = var.visibility_timeout_s
  receive_wait_time_seconds  = 20
  message_retention_seconds  = var.request_retention_s
  sqs_managed_sse_enabled    = true

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dead_letter.arn
    maxReceiveCount     = var.max_receives
  })
}

# Only the request queue may move messages into the dead-letter queue.
resource "aws_sqs_queue_redrive_allow_policy" "dead_letter" {
  queue_url = aws_sqs_queue.dead_letter.id

  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.requests.arn]
  })
}

# Each web instance reads only its own answers: a request names its web instance's queue.
resource "aws_sqs_queue" "responses" {
  for_each = toset(var.web_instances)

  name                      = "${var.name_prefix}-responses-${each.key}"
  receive_wait_time_seconds = 20
  # A response outlives a restart of its web instance, not much more: its client has gone by then.
  message_retention_seconds = 3600
  sqs_managed_sse_enabled   = true
}

locals {
  queues = merge(
    {
      requests    = aws_sqs_queue.requests
      dead_letter = aws_sqs_queue.dead_letter
    },
    { for name, queue in aws_sqs_queue.responses : "responses-${name}" => queue },
  )
}

data "aws_iam_policy_document" "tls_only" {
  for_each = local.queues

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["sqs:*"]
    resources = [each.value.arn]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_sqs_queue_policy" "tls_only" {
  for_each = local.queues

  queue_url = each.value.id
  policy    = data.aws_iam_policy_document.tls_only[each.key].json
}

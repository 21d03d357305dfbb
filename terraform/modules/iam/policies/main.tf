# The two roles' policy documents as plain JSON (no provider data source), so that anything can
# render them offline: the deployment rehearsal (tools/rehearsal/) runs each tier with exactly
# these documents, rendered by Terraform itself. Each role may do exactly what its code calls, on
# exactly this deployment's buckets, queues, Auto Scaling group and metric namespace. The web tier's
# role also serves the scaler, which runs beside every web tier.

locals {
  app_groups     = compact([var.app_group_name, var.spot_group_name])
  group_arns     = [for g in local.app_groups : "arn:${var.partition}:autoscaling:${var.region}:${var.account_id}:autoScalingGroup:*:autoScalingGroupName/${g}"]
  all_queue_arns = concat([var.request_queue_arn, var.dead_letter_arn], var.response_queue_arns)

  # Every tier checks at startup that its buckets and queues exist (HeadBucket needs ListBucket),
  # and that the input bucket keeps versions (uploads that share a file name rely on it).
  find_resources = [
    {
      Sid      = "FindBuckets"
      Effect   = "Allow"
      Action   = ["s3:ListBucket"]
      Resource = [var.input_bucket_arn, var.output_bucket_arn]
    },
    {
      Sid      = "CheckVersioning"
      Effect   = "Allow"
      Action   = ["s3:GetBucketVersioning"]
      Resource = [var.input_bucket_arn]
    },
    {
      Sid      = "FindQueues"
      Effect   = "Allow"
      Action   = ["sqs:GetQueueUrl", "sqs:GetQueueAttributes"]
      Resource = local.all_queue_arns
    },
  ]

  web_tier = [
    {
      Sid      = "StoreUploads"
      Effect   = "Allow"
      Action   = ["s3:PutObject"]
      Resource = ["${var.input_bucket_arn}/*"]
    },
    {
      Sid      = "QueueRequests"
      Effect   = "Allow"
      Action   = ["sqs:SendMessage"]
      Resource = [var.request_queue_arn]
    },
    {
      Sid      = "ReadResponsesAndDeadLetters"
      Effect   = "Allow"
      Action   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"]
      Resource = concat(var.response_queue_arns, [var.dead_letter_arn])
    },
    # Whichever web instance reads a dead letter tells the web instance its client waits on.
    {
      Sid      = "PassOnDeadLetters"
      Effect   = "Allow"
      Action   = ["sqs:SendMessage"]
      Resource = var.response_queue_arns
    },
    # Jobs and idempotency keys: records under _imgrec/ in the output bucket, created once
    # (PutObject with If-None-Match), read (a missing one is 404, not 403, thanks to FindBuckets'
    # ListBucket, which also lists a job's answers), and an idempotency key freed when its upload
    # could not be queued (DeleteObject).
    {
      Sid      = "KeepJobRecords"
      Effect   = "Allow"
      Action   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
      Resource = ["${var.output_bucket_arn}/_imgrec/*"]
    },
    # The scaler (on every web instance): its lease object, read and written with conditional puts.
    {
      Sid      = "ScalerLease"
      Effect   = "Allow"
      Action   = ["s3:GetObject", "s3:PutObject"]
      Resource = ["${var.lease_bucket_arn}/_imgrec/leases/*"]
    },
    # Without ListBucket, S3 answers a GET of a lease not yet written with 403 AccessDenied, not
    # 404 NoSuchKey (S3 GetObject, "Permissions"): the scaler could never take its first lease. The
    # bucket holds nothing but leases.
    {
      Sid      = "FindScalerLease"
      Effect   = "Allow"
      Action   = ["s3:ListBucket"]
      Resource = [var.lease_bucket_arn]
    },
    # The scaler. Describe* calls of Auto Scaling and EC2 support no resource-level permissions:
    # AWS requires "*" for them.
    {
      Sid      = "ObserveFleet"
      Effect   = "Allow"
      Action   = ["autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeScalingActivities", "autoscaling:DescribeWarmPool", "ec2:DescribeTags"]
      Resource = ["*"]
    },
    {
      Sid      = "SizeFleet"
      Effect   = "Allow"
      Action   = ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"]
      Resource = local.group_arns
    },
    # Names (Name tags) only, and only on the app tier group's instances.
    {
      Sid      = "NameInstances"
      Effect   = "Allow"
      Action   = ["ec2:CreateTags"]
      Resource = ["arn:${var.partition}:ec2:${var.region}:${var.account_id}:instance/*"]
      Condition = {
        StringEquals = {
          "aws:ResourceTag/aws:autoscaling:groupName" = local.app_groups
        }
        "ForAllValues:StringEquals" = {
          "aws:TagKeys" = ["Name"]
        }
      }
    },
    # PutMetricData has no resource-level permissions (AWS requires "*"); the namespace condition
    # is the limit.
    {
      Sid      = "PublishScalingMetrics"
      Effect   = "Allow"
      Action   = ["cloudwatch:PutMetricData"]
      Resource = ["*"]
      Condition = {
        StringEquals = {
          "cloudwatch:namespace" = [var.metric_namespace]
        }
      }
    },
  ]

  # The web tier reads its API keys once at start (GetParameter, WithDecryption): that one
  # parameter, and the customer managed key behind it only through SSM.
  api_keys = concat(
    var.api_keys_parameter == "" ? [] : [{
      Sid      = "ReadApiKeys"
      Effect   = "Allow"
      Action   = ["ssm:GetParameter"]
      Resource = ["arn:${var.partition}:ssm:${var.region}:${var.account_id}:parameter/${trimprefix(var.api_keys_parameter, "/")}"]
    }],
    var.api_keys_parameter == "" || var.api_keys_kms_key_arn == "" ? [] : [{
      Sid      = "DecryptApiKeys"
      Effect   = "Allow"
      Action   = ["kms:Decrypt"]
      Resource = [var.api_keys_kms_key_arn]
      Condition = {
        StringEquals = {
          "kms:ViaService" = ["ssm.${var.region}.amazonaws.com"]
        }
      }
    }],
  )

  # With a Spot group as well, a worker looks up which group launched it (Describe* calls of Auto
  # Scaling have no resource-level permissions: AWS requires "*").
  find_own_group = var.spot_group_name == "" ? [] : [{
    Sid      = "FindOwnGroup"
    Effect   = "Allow"
    Action   = ["autoscaling:DescribeAutoScalingInstances"]
    Resource = ["*"]
  }]

  app_tier = [
    {
      Sid      = "FetchImages"
      Effect   = "Allow"
      Action   = ["s3:GetObject", "s3:GetObjectVersion"]
      Resource = ["${var.input_bucket_arn}/*"]
    },
    # A result is written only over an older upload's: HeadObject (s3:GetObject) reads the stored
    # result's order and ETag, a conditional PutObject writes (a missing key reads as 404, not 403,
    # thanks to FindBuckets' ListBucket on the output bucket). Each worker also records there
    # whether it could start (_imgrec/starts/<instance id>), which the scaler lists and reads
    # through FindBuckets and KeepJobRecords.
    {
      Sid      = "StoreResults"
      Effect   = "Allow"
      Action   = ["s3:GetObject", "s3:PutObject"]
      Resource = ["${var.output_bucket_arn}/*"]
    },
    {
      Sid      = "TakeRequests"
      Effect   = "Allow"
      Action   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"]
      Resource = [var.request_queue_arn]
    },
    # A worker puts requests back as new messages, their receive count starting over: a suspect
    # beside the one it holds (poison isolation), and what it gives back unfinished when stopped
    # (an interruption is not the request's failure). SendMessageBatch is authorized as SendMessage.
    {
      Sid      = "PutRequestsBack"
      Effect   = "Allow"
      Action   = ["sqs:SendMessage"]
      Resource = [var.request_queue_arn]
    },
    {
      Sid      = "SendResponses"
      Effect   = "Allow"
      Action   = ["sqs:SendMessage"]
      Resource = var.response_queue_arns
    },
    # A busy worker protects itself from scale-in; the scaler reads protection as "busy". A
    # worker with its model loaded completes its group's launch lifecycle hook (warm pool).
    {
      Sid      = "MarkBusy"
      Effect   = "Allow"
      Action   = ["autoscaling:SetInstanceProtection", "autoscaling:CompleteLifecycleAction"]
      Resource = local.group_arns
    },
  ]
}

# One bucket of the service (the root module makes the input and the output bucket): private,
# encrypted, versioned (two uploads with one file name each keep their own bytes), TLS only.

resource "aws_s3_bucket" "this" {
  #checkov:skip=CKV_AWS_18:Access logs would need a third bucket; object-level auditing is CloudTrail data events, enabled per account when wanted.
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles storage cost; images and results can be re-created by uploading again.
  #checkov:skip=CKV_AWS_145:SSE-S3 (AES-256) encrypts at rest with no per-request KMS cost or key policy to manage; a CMK adds nothing for this data.
  #checkov:skip=CKV2_AWS_62:Nothing consumes S3 events: the web tier queues each request itself after the upload.
  bucket        = var.name
  force_destroy = var.force_destroy

  tags = {
    Name = var.name
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket                  = aws_s3_bucket.this.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_versioning" "this" {
  bucket = aws_s3_bucket.this.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    id     = "retention"
    status = "Enabled"

    filter {}

    # Images and results are kept retention_days, so that what the public endpoint takes in
    # does not pile up forever.
    dynamic "expiration" {
      for_each = var.retention_days > 0 ? [var.retention_days] : []

      content {
        days = expiration.value
      }
    }

    # A replaced image only matters while its request is in flight.
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  # Jobs' and idempotency keys' records go sooner (where rules overlap, S3 honours the shorter
  # expiration).
  dynamic "rule" {
    for_each = var.record_retention_days > 0 ? ["jobs/", "idempotency/", "callbacks/", "starts/"] : []

    content {
      id     = "records-${trimsuffix(rule.value, "/")}"
      status = "Enabled"

      filter {
        prefix = "_imgrec/${rule.value}"
      }

      expiration {
        days = var.record_retention_days
      }

      noncurrent_version_expiration {
        noncurrent_days = 1
      }

      abort_incomplete_multipart_upload {
        days_after_initiation = 1
      }
    }
  }

  depends_on = [aws_s3_bucket_versioning.this]
}

data "aws_iam_policy_document" "tls_only" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.this.arn,
      "${aws_s3_bucket.this.arn}/*",
    ]

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

resource "aws_s3_bucket_policy" "tls_only" {
  bucket = aws_s3_bucket.this.id
  policy = data.aws_iam_policy_document.tls_only.json

  depends_on = [aws_s3_bucket_public_access_block.this]
}

variable "name" {
  description = "Bucket name (globally unique)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.name))
    error_message = "name must be a valid S3 bucket name: 3-63 lowercase letters, digits, dots and hyphens."
  }
}

variable "force_destroy" {
  description = "Let destroy delete the bucket with every object version in it."
  type        = bool
}

variable "retention_days" {
  description = "Days an object is kept after it was written (0: forever)."
  type        = number

  validation {
    condition     = var.retention_days >= 0
    error_message = "retention_days must be 0 (forever) or more."
  }
}

variable "noncurrent_version_days" {
  description = "Days a replaced object version is kept."
  type        = number
  default     = 7

  validation {
    condition     = var.noncurrent_version_days >= 1
    error_message = "noncurrent_version_days must be at least 1."
  }
}

variable "record_retention_days" {
  description = "Days the service's records under _imgrec/jobs/, _imgrec/idempotency/, _imgrec/callbacks/ and _imgrec/starts/ are kept (0: no rule of their own)."
  type        = number
  default     = 0

  validation {
    condition     = var.record_retention_days >= 0 && floor(var.record_retention_days) == var.record_retention_days
    error_message = "record_retention_days must be a whole number, 0 for no rule."
  }
}

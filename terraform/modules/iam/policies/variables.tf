variable "partition" {
  description = "AWS partition (aws, aws-cn, aws-us-gov) for ARNs."
  type        = string
}

variable "region" {
  description = "Region of the Auto Scaling group and instances."
  type        = string
}

variable "account_id" {
  description = "Account of the Auto Scaling group and instances."
  type        = string
}

variable "input_bucket_arn" {
  description = "ARN of the input bucket."
  type        = string
}

variable "output_bucket_arn" {
  description = "ARN of the output bucket."
  type        = string
}

variable "request_queue_arn" {
  description = "ARN of the request queue."
  type        = string
}

variable "response_queue_arns" {
  description = "ARNs of the web instances' response queues."
  type        = list(string)
}

variable "dead_letter_arn" {
  description = "ARN of the dead-letter queue."
  type        = string
}

variable "app_group_name" {
  description = "Name of the app tier's Auto Scaling group."
  type        = string
}

variable "spot_group_name" {
  description = "Name of the app tier's Spot Auto Scaling group (empty: none)."
  type        = string
  default     = ""
}

variable "metric_namespace" {
  description = "CloudWatch namespace the scaler publishes to."
  type        = string
}

variable "lease_bucket_arn" {
  description = "ARN of the bucket holding the scaler lease."
  type        = string
}

variable "api_keys_parameter" {
  description = "Name of the SSM parameter (SecureString) holding the web tier's API keys; empty for none."
  type        = string
  default     = ""
}

variable "api_keys_kms_key_arn" {
  description = "ARN of the customer managed KMS key encrypting api_keys_parameter; empty for the AWS managed key aws/ssm (whose key policy already lets the account's principals decrypt through SSM)."
  type        = string
  default     = ""
}

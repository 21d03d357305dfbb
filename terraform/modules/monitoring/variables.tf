variable "name_prefix" {
  description = "Name of the dashboard and prefix of the alarm."
  type        = string
}

variable "region" {
  description = "Region of the metrics."
  type        = string
}

variable "app_group_name" {
  description = "Auto Scaling group of the app tier."
  type        = string
}

variable "metric_namespace" {
  description = "Namespace of the scaler's metrics."
  type        = string
}

variable "request_queue" {
  description = "Name of the request queue."
  type        = string
}

variable "response_queues" {
  description = "Names of the web instances' response queues."
  type        = list(string)
}

variable "dead_letter_queue" {
  description = "Name of the dead-letter queue."
  type        = string
}

variable "alarm_actions" {
  description = "ARNs notified when requests dead-letter (e.g. an SNS topic); none by default."
  type        = list(string)
  default     = []
}

variable "name_prefix" {
  description = "Prefix of the queue names."
  type        = string
}

variable "visibility_timeout_s" {
  description = "Seconds a received request stays hidden from other workers."
  type        = number
}

variable "max_receives" {
  description = "Receives of one request before it moves to the dead-letter queue."
  type        = number
}

variable "request_retention_s" {
  description = "Seconds an unprocessed request is kept."
  type        = number
  default     = 345600

  validation {
    condition     = var.request_retention_s >= 60 && var.request_retention_s <= 1209600
    error_message = "request_retention_s must be from 60 to 1209600 seconds (SQS limits)."
  }
}

variable "web_instances" {
  description = "Names of the web instances (web-instance1, ...): each gets its own response queue."
  type        = list(string)

  validation {
    condition     = length(var.web_instances) >= 1 && alltrue([for n in var.web_instances : can(regex("^web-instance[0-9]+$", n))])
    error_message = "web_instances must name at least one web instance, each web-instanceK."
  }
}

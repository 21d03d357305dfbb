variable "name_prefix" {
  description = "Prefix of the load balancer's and target group's names."
  type        = string
}

variable "vpc_id" {
  description = "The service's VPC."
  type        = string
}

variable "subnet_ids" {
  description = "Public subnets in two or more zones."
  type        = list(string)
}

variable "security_group_id" {
  description = "Security group of the load balancer."
  type        = string
}

variable "instance_ids" {
  description = "EC2 ids of the web instances, by name."
  type        = map(string)
}

variable "idle_timeout_s" {
  description = "Seconds a connection may be idle: longer than the web tier's response timeout, as an upload waits for its label."
  type        = number

  validation {
    condition     = var.idle_timeout_s >= 1 && var.idle_timeout_s <= 4000
    error_message = "idle_timeout_s must be from 1 to 4000 seconds (ALB limits)."
  }
}

variable "deregistration_delay_s" {
  description = "Seconds a leaving web instance keeps its connections: its drain."
  type        = number
}

variable "domain_name" {
  description = "The name clients use, which the certificate must cover (required with certificate_arn)."
  type        = string
  default     = ""
}

variable "certificate_arn" {
  description = "ACM certificate for HTTPS; empty for HTTP only."
  type        = string
  default     = ""
}

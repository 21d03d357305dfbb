variable "group_name" {
  description = "Name of the Auto Scaling group (the services' aws.auto_scaling_group)."
  type        = string
}

variable "ami_id" {
  description = "AMI built by Packer."
  type        = string
}

variable "instance_type" {
  description = "EC2 instance type of a worker."
  type        = string
}

variable "instance_profile" {
  description = "Instance profile of the app tier."
  type        = string
}

variable "security_group_id" {
  description = "Security group of the app tier."
  type        = string
}

variable "subnet_ids" {
  description = "Subnets the group launches into."
  type        = list(string)
}

variable "min_size" {
  description = "Instances kept when idle."
  type        = number
}

variable "max_size" {
  description = "Most instances (the instance budget less the web tier)."
  type        = number

  validation {
    condition     = var.max_size >= 1 && var.max_size <= 19
    error_message = "max_size must be from 1 to 19: 20 instances in all, web-instance1 included."
  }
}


variable "user_data" {
  description = "User data script (writes /etc/imgrec/imgrec.toml and starts the worker)."
  type        = string
}

variable "volume_size_gb" {
  description = "Root volume size."
  type        = number
  default     = 16
}

variable "names" {
  description = "The web instances: web-instance1 (web tier and scaler), web-instance2, ..."
  type        = list(string)

  validation {
    condition     = length(var.names) >= 1 && var.names[0] == "web-instance1"
    error_message = "names must start with web-instance1."
  }
}

variable "ami_id" {
  description = "AMI built by Packer."
  type        = string
}

variable "instance_type" {
  description = "EC2 instance type of the web instances."
  type        = string
}

variable "instance_profile" {
  description = "Instance profile of the web tier (and scaler)."
  type        = string
}

variable "security_group_id" {
  description = "Security group of the web tier."
  type        = string
}

variable "subnet_ids" {
  description = "Public subnets; web instances go to them in turn."
  type        = list(string)
}

variable "user_data" {
  description = "User data script of each web instance, by name (writes /etc/imgrec/imgrec.toml and the instance's name, starts its services)."
  type        = map(string)
}

variable "volume_size_gb" {
  description = "Root volume size."
  type        = number
  default     = 16
}

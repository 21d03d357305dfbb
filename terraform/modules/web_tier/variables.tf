variable "ami_id" {
  description = "AMI built by Packer."
  type        = string
}

variable "instance_type" {
  description = "EC2 instance type of web-instance1."
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

variable "subnet_id" {
  description = "Public subnet of web-instance1."
  type        = string
}

variable "user_data" {
  description = "User data script (writes /etc/imgrec/imgrec.toml and starts the web tier and scaler)."
  type        = string
}

variable "volume_size_gb" {
  description = "Root volume size."
  type        = number
  default     = 16
}

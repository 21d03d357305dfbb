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
  description = "Most instances of the On-Demand group (with the Spot group: its base, min_size + warm_pool_size; without: the instance budget less the web tier)."
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

variable "saved_ram_gib" {
  description = "RAM a hibernating instance saves to its root volume, in GiB: added to the On-Demand template's volume when the warm pool waits Hibernated."
  type        = number
  default     = 0
}

variable "warm_pool_size" {
  description = "Instances kept initialised in the On-Demand group's warm pool; 0: none."
  type        = number
  default     = 0
}

variable "warm_pool_state" {
  description = "Stopped or Hibernated."
  type        = string
  default     = "Stopped"
}

variable "spot_group_name" {
  description = "Name of the Spot group (the services' aws.spot_auto_scaling_group)."
  type        = string
  default     = ""
}

variable "spot_instance_types" {
  description = "Instance types of the Spot group; empty: no Spot group."
  type        = list(string)
  default     = []
}

variable "spot_max_size" {
  description = "Most instances of the Spot group."
  type        = number
  default     = 0
}

variable "launch_hook" {
  description = "Name of the launch lifecycle hook the workers complete once ready (the services' aws.launch_hook); used with a warm pool."
  type        = string
  default     = ""
}

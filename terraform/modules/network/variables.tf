variable "name_prefix" {
  description = "Prefix of network resource names."
  type        = string
}

variable "vpc_cidr" {
  description = "Address range of the VPC."
  type        = string
}

variable "http_ingress_cidrs" {
  description = "Client networks allowed to reach the web tier on port 80."
  type        = list(string)
}

variable "load_balancer" {
  description = "Whether a load balancer takes the uploads (more than one web instance)."
  type        = bool
  default     = false
}

variable "https" {
  description = "Whether the load balancer also listens for HTTPS (a certificate is given)."
  type        = bool
  default     = false
}

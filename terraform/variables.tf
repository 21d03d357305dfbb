variable "region" {
  description = "AWS region of every resource (and of the Packer AMI)."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region must look like us-east-1."
  }
}

variable "name_prefix" {
  description = "Prefix of every resource name; bucket names add the account id to be globally unique."
  type        = string
  default     = "imgrec"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,19}$", var.name_prefix))
    error_message = "name_prefix must be 2-20 characters: lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "ami_id" {
  description = "The AMI built by Packer (packer/); `make deploy` sets it."
  type        = string

  validation {
    condition     = can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "ami_id must be an AMI id such as ami-0123456789abcdef0."
  }
}

variable "web_instances" {
  description = "Web instances (web-instance1, ...). With more than one, an Application Load Balancer takes the uploads; they count against instance_budget."
  type        = number
  default     = 1

  validation {
    condition     = var.web_instances >= 1 && var.web_instances <= 10 && floor(var.web_instances) == var.web_instances
    error_message = "web_instances must be a whole number from 1 to 10 (the app tier needs part of the budget of 20)."
  }
}

variable "certificate_arn" {
  description = "ACM certificate for HTTPS on the load balancer (HTTP then redirects to it); empty for HTTP only. Used when web_instances > 1."
  type        = string
  default     = ""

  validation {
    condition     = var.certificate_arn == "" || can(regex("^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/", var.certificate_arn))
    error_message = "certificate_arn must be empty or an ACM certificate ARN."
  }
}

variable "domain_name" {
  description = "The name clients use (e.g. images.example.com): web_url becomes https://<it>/ with certificate_arn, which must cover it (an ACM certificate cannot cover the load balancer's own *.elb.amazonaws.com name). Empty: the AWS-given name."
  type        = string
  default     = ""

  validation {
    condition     = var.domain_name == "" || can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]{2,63}$", var.domain_name))
    error_message = "domain_name must be empty or a lowercase DNS name such as images.example.com."
  }
}

variable "route53_zone_id" {
  description = "A Route 53 hosted zone holding domain_name: Terraform then points domain_name at the load balancer (alias) or, with one web instance, at web-instance1 (CNAME). Empty: point it yourself."
  type        = string
  default     = ""

  validation {
    condition     = var.route53_zone_id == "" || can(regex("^Z[A-Z0-9]{1,31}$", var.route53_zone_id))
    error_message = "route53_zone_id must be empty or a hosted zone id such as Z0123456789ABCDEFGHIJ."
  }
}

variable "instance_budget" {
  description = "Instances the whole service may run at once, web instances included: the app tier gets the rest."
  type        = number
  default     = 20

  validation {
    condition     = var.instance_budget >= 2 && var.instance_budget <= 20 && floor(var.instance_budget) == var.instance_budget
    error_message = "instance_budget must be a whole number from 2 to 20 (one web instance plus at least one app instance)."
  }
}

variable "app_min_size" {
  description = "App-tier instances kept in service when idle. 1 (what `make sim` picks): a burst from idle is answered in ~1.5 s (p99, 100 uploads) for one c7i.large running (~$0.09/h). 0: nothing runs when idle; the first request waits for a start from the warm pool (~15 s hibernated, ~20 s stopped) or a boot (~30 s)."
  type        = number
  default     = 1

  validation {
    condition     = var.app_min_size >= 0 && floor(var.app_min_size) == var.app_min_size
    error_message = "app_min_size must be a whole number, 0 or more."
  }
}

variable "app_instance_type" {
  description = "EC2 instance type of the app tier (CPU inference)."
  type        = string
  default     = "c7i.large"
}

variable "warm_pool_size" {
  description = "App-tier instances kept initialised in the On-Demand group's warm pool (model loaded, then stopped or hibernated: only their volumes are billed); 0: no warm pool. 1 is what `make sim` picks."
  type        = number
  default     = 1

  validation {
    condition     = var.warm_pool_size >= 0 && var.warm_pool_size <= 8 && floor(var.warm_pool_size) == var.warm_pool_size
    error_message = "warm_pool_size must be a whole number from 0 to 8."
  }
}

variable "warm_pool_state" {
  description = "State the warm pool's instances wait in: Hibernated (resume with the worker running and the model loaded, ~15 s; the volume also keeps the RAM) or Stopped (boot and start the service, ~20 s)."
  type        = string
  default     = "Hibernated"

  validation {
    condition     = contains(["Hibernated", "Stopped"], var.warm_pool_state)
    error_message = "warm_pool_state must be Hibernated or Stopped."
  }
}

variable "spot_instance_types" {
  description = "Instance types of the Spot group, which takes the app-tier instances beyond app_min_size + warm_pool_size (capacity-optimized across them, capacity rebalancing on). All of app_instance_type's vCPU and memory class: the workers run one inference thread per vCPU. Empty: On-Demand only, in one group."
  type        = list(string)
  default     = ["c7i.large", "c6i.large", "c6a.large", "c7a.large", "c5.large", "c5a.large"]
}

variable "on_demand_price_per_hour" {
  description = "On-Demand price of app_instance_type in USD per hour (default: c7i.large, Linux, us-east-1), for the cost `make deploy` prints."
  type        = number
  default     = 0.08925
}

variable "web_price_per_hour" {
  description = "On-Demand price of web_instance_type in USD per hour (default: t3.small, Linux, us-east-1), for the cost `make deploy` prints."
  type        = number
  default     = 0.0208
}

variable "spot_discount" {
  description = "Expected Spot discount against On-Demand (0.6: Spot at 40% of the price; AWS advertises up to 90%), for the cost `make deploy` prints."
  type        = number
  default     = 0.6

  validation {
    condition     = var.spot_discount >= 0 && var.spot_discount < 1
    error_message = "spot_discount must be from 0 to below 1."
  }
}

variable "web_instance_type" {
  description = "EC2 instance type of the web instances (web-instance1 also runs the scaler)."
  type        = string
  default     = "t3.small"
}

variable "http_ingress_cidrs" {
  description = "Client networks allowed to reach the web tier on port 80."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = length(var.http_ingress_cidrs) > 0 && alltrue([for c in var.http_ingress_cidrs : can(cidrnetmask(c))])
    error_message = "http_ingress_cidrs must be a non-empty list of IPv4 CIDR blocks."
  }
}

variable "vpc_cidr" {
  description = "Address range of the service's VPC (two public subnets are carved from it)."
  type        = string
  default     = "10.42.0.0/16"

  validation {
    condition     = can(cidrnetmask(var.vpc_cidr))
    error_message = "vpc_cidr must be an IPv4 CIDR block."
  }
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete the input and output buckets with every image and result in them (all versions). false keeps them: `make destroy` then leaves the two buckets (and their contents) behind and says so; a plain `terraform destroy` stops at them. Takes effect on apply, not at destroy time."
  type        = bool
  default     = true
}

variable "retention_days" {
  description = "Days an uploaded image and its result are kept in the buckets (0: forever). Replaced versions go after noncurrent_version_days."
  type        = number
  default     = 30

  validation {
    condition     = var.retention_days >= 0 && var.retention_days <= 3650 && floor(var.retention_days) == var.retention_days
    error_message = "retention_days must be a whole number from 0 (keep forever) to 3650."
  }
}

variable "job_retention_days" {
  description = "Days jobs (POST /jobs), their answers and idempotency keys are kept: the services' jobs.retention_s, and the output bucket's lifecycle rule for its _imgrec/ records."
  type        = number
  default     = 1

  validation {
    condition     = var.job_retention_days >= 1 && var.job_retention_days <= 365 && floor(var.job_retention_days) == var.job_retention_days
    error_message = "job_retention_days must be a whole number from 1 to 365."
  }
}

variable "batch_size" {
  description = "Requests an app-tier worker receives and classifies in one model run (SQS allows at most 10 per receive)."
  type        = number
  default     = 8

  validation {
    condition     = var.batch_size >= 1 && var.batch_size <= 10
    error_message = "batch_size must be from 1 to 10."
  }
}

variable "visibility_timeout_s" {
  description = "Seconds a received request stays hidden. Workers extend it every third of it while they make progress, so this bounds how long a dead or hung worker's requests wait before another takes them. max_receives x this must stay below the web tier's 120 s response timeout (checked at startup)."
  type        = number
  default     = 15

  validation {
    condition     = var.visibility_timeout_s >= 5 && var.visibility_timeout_s <= 36
    error_message = "visibility_timeout_s must be from 5 to 36 seconds (3 receives x 36 s + 10 s < the 120 s response timeout)."
  }
}

variable "max_receives" {
  description = "Receives of one request before it moves to the dead-letter queue."
  type        = number
  default     = 3

  validation {
    condition     = var.max_receives >= 1 && var.max_receives <= 1000
    error_message = "max_receives must be from 1 to 1000."
  }
}


variable "enable_ssm" {
  description = "Let instances be reached with Session Manager (no SSH, no key pair): a policy with only the calls the SSM agent makes for sessions, not AmazonSSMManagedInstanceCore (which also reads every SSM parameter of the account)."
  type        = bool
  default     = false
}

variable "api_keys_parameter" {
  description = "Name of an SSM parameter (SecureString, created outside Terraform so the secret stays out of its state) holding the web tier's API keys, one a line: `name sha256-hex rate_per_s burst`. Empty: no keys, uploads are open."
  type        = string
  default     = ""

  validation {
    condition     = var.api_keys_parameter == "" || can(regex("^/?[a-zA-Z0-9_.\\-/]{1,1011}$", var.api_keys_parameter))
    error_message = "api_keys_parameter must be an SSM parameter name (letters, digits, _ . - /)."
  }
}

variable "api_keys_kms_key_arn" {
  description = "ARN of the customer managed KMS key encrypting api_keys_parameter; empty when it uses the AWS managed key aws/ssm."
  type        = string
  default     = ""
}

# The whole AWS deployment. The Rust services read one configuration file, rendered here from the
# resources themselves (templates/imgrec.toml.tftpl) and delivered by user data: Terraform is the
# single source of truth for names, URLs, the group and the region.

locals {
  account_id = data.aws_caller_identity.current.account_id

  # The web instances take their share of the budget; the app tier may use the rest.
  web_instances  = [for k in range(1, var.web_instances + 1) : "web-instance${k}"]
  app_max_size   = var.instance_budget - length(local.web_instances)
  load_balanced  = length(local.web_instances) > 1
  app_group_name = "${var.name_prefix}-app-tier"
  spot           = length(var.spot_instance_types) > 0
  # With Spot, the On-Demand group holds the instances kept in service and the warm pool's (at
  # least one), the Spot group the rest; without, the On-Demand group holds them all.
  spot_group_name = local.spot ? "${var.name_prefix}-app-tier-spot" : ""
  # Completed by each worker once its model is loaded (with a warm pool only).
  launch_hook        = var.warm_pool_size > 0 ? "${local.app_group_name}-ready" : ""
  on_demand_max_size = local.spot ? max(1, min(var.app_min_size + var.warm_pool_size, local.app_max_size)) : local.app_max_size
  spot_max_size      = local.app_max_size - local.on_demand_max_size
  # CloudWatch namespace of the scaler's metrics (its IAM policy is limited to it).
  metric_namespace = var.name_prefix
  # How long an upload waits for its label (the services' web.response_timeout_s): the load
  # balancer keeps an idle connection longer.
  response_timeout_s = 120
  # What clients use: a certificate covers domain_name, never the AWS-given names.
  aws_given_url = local.load_balanced ? module.load_balancer[0].url : "http://${module.web_tier.public_dns["web-instance1"]}/"
  web_scheme    = var.certificate_arn != "" && local.load_balanced ? "https" : "http"
  web_url       = var.domain_name != "" ? "${local.web_scheme}://${var.domain_name}/" : local.aws_given_url

  service_config = templatefile("${path.module}/templates/imgrec.toml.tftpl", {
    region               = var.region
    input_bucket         = module.input_bucket.name
    output_bucket        = module.output_bucket.name
    lease_bucket         = module.state_bucket.name
    request_queue        = module.queues.request_queue_name
    response_queue       = module.queues.response_queue_prefix
    response_timeout_s   = local.response_timeout_s
    dead_letter_queue    = module.queues.dead_letter_queue_name
    max_receives         = var.max_receives
    visibility_timeout_s = var.visibility_timeout_s
    batch_size           = var.batch_size
    job_retention_s      = var.job_retention_days * 86400
    api_keys_parameter   = var.api_keys_parameter
    app_min_size         = var.app_min_size
    app_max_size         = local.app_max_size
    auto_scaling_group   = local.app_group_name
    spot_group           = local.spot_group_name
    launch_hook          = local.launch_hook
    metric_namespace     = local.metric_namespace
    # One inference thread per vCPU (the Spot types are checked to have as many).
    inference_threads = data.aws_ec2_instance_type.app.default_vcpus
  })

  # A Hibernated warm pool: the On-Demand group's root volumes also hold the RAM they save.
  hibernates    = var.warm_pool_size > 0 && var.warm_pool_state == "Hibernated"
  app_ram_gib   = ceil(data.aws_ec2_instance_type.app.memory_size / 1024)
  saved_ram_gib = local.hibernates ? local.app_ram_gib : 0

  # What `make deploy` prints: USD per hour, at AWS's list prices given as variables. Instances
  # with their 16 GiB gp3 volumes (the On-Demand group's larger by the RAM they save).
  volume_per_hour = 16 * 0.08 / 730
  pool_per_hour   = var.warm_pool_size * (16 + local.saved_ram_gib) * 0.08 / 730
  web_per_hour    = length(local.web_instances) * (var.web_price_per_hour + local.volume_per_hour) + (local.load_balanced ? 0.0225 : 0)
  app_per_hour    = var.on_demand_price_per_hour + (16 + local.saved_ram_gib) * 0.08 / 730
  spot_per_hour   = var.on_demand_price_per_hour * (1 - var.spot_discount) + local.volume_per_hour
  cost_per_hour = {
    at_minimum         = local.web_per_hour + var.app_min_size * local.app_per_hour + local.pool_per_hour
    at_cap_on_demand   = local.web_per_hour + local.app_max_size * local.app_per_hour
    at_cap_with_spot   = local.web_per_hour + local.on_demand_max_size * local.app_per_hour + local.spot_max_size * local.spot_per_hour + local.pool_per_hour
    at_cap_as_deployed = local.web_per_hour + local.on_demand_max_size * local.app_per_hour + local.spot_max_size * (local.spot ? local.spot_per_hour : local.app_per_hour) + local.pool_per_hour
  }
}

# The workers run one inference thread per vCPU of their type.
data "aws_ec2_instance_type" "app" {
  instance_type = var.app_instance_type

  lifecycle {
    # EC2 refuses to launch a hibernation-enabled template of a type that cannot hibernate, or of
    # more than 150 GiB of RAM: every launch of the group would fail.
    postcondition {
      condition     = !local.hibernates || (self.hibernation_supported && self.memory_size <= 150 * 1024)
      error_message = "app_instance_type cannot hibernate (or has more than 150 GiB of RAM), and the warm pool waits Hibernated: set warm_pool_state = \"Stopped\" or warm_pool_size = 0, or choose a type that hibernates."
    }
  }
}

data "aws_ec2_instance_type" "spot" {
  for_each      = toset(var.spot_instance_types)
  instance_type = each.value

  lifecycle {
    postcondition {
      condition     = self.default_vcpus == data.aws_ec2_instance_type.app.default_vcpus && self.memory_size == data.aws_ec2_instance_type.app.memory_size
      error_message = "Every spot_instance_types entry must have app_instance_type's vCPUs and memory (the workers' threads and limits are set for it)."
    }
  }
}

module "input_bucket" {
  source = "./modules/storage"

  name           = "${var.name_prefix}-${local.account_id}-input"
  force_destroy  = var.force_destroy
  retention_days = var.retention_days
}

module "output_bucket" {
  source = "./modules/storage"

  name           = "${var.name_prefix}-${local.account_id}-output"
  force_destroy  = var.force_destroy
  retention_days = var.retention_days

  # Jobs' and idempotency keys' records (see services/domain/src/records.rs).
  record_retention_days = var.job_retention_days
}

# The scaler lease (one small object, rewritten with conditional puts): of the scalers on the web
# instances, the one holding it acts.
module "state_bucket" {
  source = "./modules/storage"

  name           = "${var.name_prefix}-${local.account_id}-state"
  force_destroy  = true
  retention_days = 0
}

module "queues" {
  source = "./modules/queues"

  name_prefix          = var.name_prefix
  web_instances        = local.web_instances
  visibility_timeout_s = var.visibility_timeout_s
  max_receives         = var.max_receives
}

module "network" {
  source = "./modules/network"

  name_prefix        = var.name_prefix
  vpc_cidr           = var.vpc_cidr
  http_ingress_cidrs = var.http_ingress_cidrs
  load_balancer      = local.load_balanced
  https              = var.certificate_arn != ""
}

module "iam" {
  source = "./modules/iam"

  name_prefix         = var.name_prefix
  partition           = data.aws_partition.current.partition
  region              = var.region
  account_id          = local.account_id
  input_bucket_arn    = module.input_bucket.arn
  output_bucket_arn   = module.output_bucket.arn
  lease_bucket_arn    = module.state_bucket.arn
  request_queue_arn   = module.queues.request_queue_arn
  response_queue_arns = module.queues.response_queue_arns
  dead_letter_arn     = module.queues.dead_letter_queue_arn
  app_group_name      = local.app_group_name
  spot_group_name     = local.spot_group_name
  metric_namespace    = local.metric_namespace

  api_keys_parameter   = var.api_keys_parameter
  api_keys_kms_key_arn = var.api_keys_kms_key_arn
  enable_ssm           = var.enable_ssm
}

module "app_tier" {
  source = "./modules/app_tier"

  group_name        = local.app_group_name
  ami_id            = var.ami_id
  instance_type     = var.app_instance_type
  instance_profile  = module.iam.app_tier_instance_profile
  security_group_id = module.network.app_tier_security_group_id
  subnet_ids        = module.network.subnet_ids
  min_size          = var.app_min_size
  max_size          = local.on_demand_max_size
  warm_pool_size    = var.warm_pool_size
  warm_pool_state   = var.warm_pool_state
  saved_ram_gib     = local.saved_ram_gib
  launch_hook       = local.launch_hook

  spot_group_name     = local.spot_group_name
  spot_instance_types = var.spot_instance_types
  spot_max_size       = local.spot_max_size
  user_data           = templatefile("${path.module}/templates/user-data.sh.tftpl", { config = local.service_config, environment = "", units = "imgrec-app-tier.service" })

  # An instance's first boot calls AWS at once: its role's policies must be attached and its
  # subnet routed to the internet gateway before any instance exists.
  depends_on = [module.iam, module.network]
}

# Every web instance runs the web tier under its own name (its own response queue) and a scaler;
# the scaler holding the lease acts, another takes over if its instance dies.
module "web_tier" {
  source = "./modules/web_tier"

  names             = local.web_instances
  ami_id            = var.ami_id
  instance_type     = var.web_instance_type
  instance_profile  = module.iam.web_tier_instance_profile
  security_group_id = module.network.web_tier_security_group_id
  subnet_ids        = module.network.subnet_ids
  user_data = { for name in local.web_instances : name => templatefile("${path.module}/templates/user-data.sh.tftpl", {
    config      = local.service_config
    environment = "IMGREC__WEB__NAME=${name}"
    units       = "imgrec-web-tier.service imgrec-scaler.service"
  }) }

  # As for the app tier: policies attached and the route out in place before the first boot.
  depends_on = [module.iam, module.network]
}

module "load_balancer" {
  source = "./modules/load_balancer"
  count  = local.load_balanced ? 1 : 0

  name_prefix       = var.name_prefix
  vpc_id            = module.network.vpc_id
  subnet_ids        = module.network.subnet_ids
  security_group_id = module.network.load_balancer_security_group_id
  instance_ids      = module.web_tier.instance_ids
  idle_timeout_s    = local.response_timeout_s + 10
  # web.drain_timeout_s (15 s) and 3 s to close.
  deregistration_delay_s = 20
  certificate_arn        = var.certificate_arn
  domain_name            = var.domain_name
}

module "monitoring" {
  source = "./modules/monitoring"

  name_prefix       = var.name_prefix
  region            = var.region
  app_group_name    = module.app_tier.group_name
  metric_namespace  = local.metric_namespace
  request_queue     = module.queues.request_queue_name
  response_queues   = values(module.queues.response_queue_names)
  dead_letter_queue = module.queues.dead_letter_queue_name
}

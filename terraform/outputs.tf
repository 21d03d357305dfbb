output "web_url" {
  description = "Where to upload images (POST / with the file in field myfile): domain_name when set (HTTPS with certificate_arn), else the load balancer with several web instances, else web-instance1."
  value       = local.web_url
}

output "load_balancer_url" {
  description = "URL of the load balancer in front of the web instances (null with one web instance)."
  value       = local.load_balanced ? module.load_balancer[0].url : null
}

output "region" {
  description = "Region of the deployment."
  value       = var.region
}

output "input_bucket" {
  description = "Bucket of the uploaded images (key = file name)."
  value       = module.input_bucket.name
}

output "output_bucket" {
  description = "Bucket of the results (key = file name without extension, value = \"(name, label)\")."
  value       = module.output_bucket.name
}

output "state_bucket" {
  description = "Bucket of the scaler lease (the scaler that holds it acts)."
  value       = module.state_bucket.name
}

output "request_queue_url" {
  description = "SQS queue of classification requests."
  value       = module.queues.request_queue_url
}

output "response_queue_urls" {
  description = "SQS queue of results on their way back to each web instance, by web instance."
  value       = module.queues.response_queue_urls
}

output "dead_letter_queue_url" {
  description = "Requests that failed max_receives times."
  value       = module.queues.dead_letter_queue_url
}

output "app_tier_group_name" {
  description = "Auto Scaling group of the app tier (the scaler owns its desired capacity)."
  value       = module.app_tier.group_name
}

output "app_tier_max_size" {
  description = "Most app-tier instances: the instance budget less the web instances."
  value       = local.app_max_size
}

output "web_instance_ids" {
  description = "EC2 id of each web instance, by name (aws ssm start-session --target <id>)."
  value       = module.web_tier.instance_ids
}

output "dashboard_url" {
  description = "CloudWatch dashboard of queues, backlog and instances."
  value       = module.monitoring.dashboard_url
}

output "service_config" {
  description = "The configuration file the services run with (user data writes it to /etc/imgrec/imgrec.toml)."
  value       = local.service_config
}

output "buckets_kept_on_destroy" {
  description = "Buckets `make destroy` leaves, with their contents, because force_destroy = false (by Terraform address)."
  value       = var.force_destroy ? {} : { "module.input_bucket" = module.input_bucket.name, "module.output_bucket" = module.output_bucket.name }
}

output "app_tier_spot_group_name" {
  description = "Auto Scaling group of the app tier's Spot instances, beyond the On-Demand group's (empty: none)."
  value       = module.app_tier.spot_group_name
}

output "expected_cost_per_hour" {
  description = "Expected USD per hour (list prices from the price variables; data transfer, requests and load balancer capacity units not included): idle at the minimum with the warm pool, and at the cap On-Demand only, with Spot, and as deployed."
  value       = { for k, v in local.cost_per_hour : k => format("$%.3f", v) }
}

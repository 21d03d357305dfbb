output "web_url" {
  description = "Where to upload images (POST / with the file in field myfile)."
  value       = "http://${module.web_tier.public_dns}/"
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

output "request_queue_url" {
  description = "SQS queue of classification requests."
  value       = module.queues.request_queue_url
}

output "response_queue_url" {
  description = "SQS queue of results on their way back to the web tier."
  value       = module.queues.response_queue_url
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
  description = "Most app-tier instances: the instance budget less web-instance1."
  value       = local.app_max_size
}

output "web_instance_id" {
  description = "EC2 id of web-instance1 (aws ssm start-session --target <id>)."
  value       = module.web_tier.instance_id
}

output "dashboard_url" {
  description = "CloudWatch dashboard of queues, backlog and instances."
  value       = module.monitoring.dashboard_url
}

output "service_config" {
  description = "The configuration file the services run with (user data writes it to /etc/imgrec/imgrec.toml)."
  value       = local.service_config
}

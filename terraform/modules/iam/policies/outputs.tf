output "web_tier" {
  description = "Policy document (JSON) of the web tier's role, which the scaler shares."
  value       = jsonencode({ Version = "2012-10-17", Statement = concat(local.find_resources, local.web_tier) })
}

output "app_tier" {
  description = "Policy document (JSON) of the app tier's role."
  value       = jsonencode({ Version = "2012-10-17", Statement = concat(local.find_resources, local.app_tier) })
}

output "web_tier_instance_profile" {
  description = "Instance profile of web-instance1 (web tier and scaler)."
  value       = aws_iam_instance_profile.this["web_tier"].name
}

output "app_tier_instance_profile" {
  description = "Instance profile of the app-tier instances."
  value       = aws_iam_instance_profile.this["app_tier"].name
}

output "web_tier_role_arn" {
  description = "Role of web-instance1."
  value       = aws_iam_role.this["web_tier"].arn
}

output "app_tier_role_arn" {
  description = "Role of the app-tier instances."
  value       = aws_iam_role.this["app_tier"].arn
}

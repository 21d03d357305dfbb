output "group_name" {
  description = "Name of the Auto Scaling group."
  value       = aws_autoscaling_group.this.name
}

output "group_arn" {
  description = "ARN of the Auto Scaling group."
  value       = aws_autoscaling_group.this.arn
}

output "max_size" {
  description = "Most app-tier instances, both groups together."
  value       = aws_autoscaling_group.this.max_size + sum([for g in aws_autoscaling_group.spot : g.max_size])
}

output "spot_group_name" {
  description = "Name of the Spot group (empty: none)."
  value       = local.spot ? aws_autoscaling_group.spot[0].name : ""
}

output "launch_template_id" {
  description = "Launch template of the On-Demand group's workers."
  value       = aws_launch_template.this["on_demand"].id
}

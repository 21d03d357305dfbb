output "group_name" {
  description = "Name of the Auto Scaling group."
  value       = aws_autoscaling_group.this.name
}

output "group_arn" {
  description = "ARN of the Auto Scaling group."
  value       = aws_autoscaling_group.this.arn
}

output "max_size" {
  description = "Most app-tier instances."
  value       = aws_autoscaling_group.this.max_size
}

output "launch_template_id" {
  description = "Launch template of the workers."
  value       = aws_launch_template.this.id
}

output "vpc_id" {
  description = "The service's VPC."
  value       = aws_vpc.this.id
}

output "subnet_ids" {
  description = "Public subnets, one per availability zone."
  value       = aws_subnet.public[*].id
}

output "web_tier_security_group_id" {
  description = "Security group of the web instances."
  value       = aws_security_group.web_tier.id
}

output "app_tier_security_group_id" {
  description = "Security group of the app-tier instances."
  value       = aws_security_group.app_tier.id
}

output "load_balancer_security_group_id" {
  description = "Security group of the load balancer (null without one)."
  value       = var.load_balancer ? aws_security_group.load_balancer[0].id : null
}

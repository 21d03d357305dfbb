output "instance_ids" {
  description = "EC2 id of each web instance, by name."
  value       = { for name, instance in aws_instance.this : name => instance.id }
}

output "public_dns" {
  description = "Public DNS name of each web instance, by name."
  value       = { for name, instance in aws_instance.this : name => instance.public_dns }
}

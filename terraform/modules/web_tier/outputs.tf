output "instance_id" {
  description = "EC2 id of web-instance1."
  value       = aws_instance.this.id
}

output "public_dns" {
  description = "Public DNS name of web-instance1."
  value       = aws_instance.this.public_dns
}

output "url" {
  description = "Where clients upload: HTTPS when a certificate is given, else HTTP."
  value       = "${local.https ? "https" : "http"}://${aws_lb.this.dns_name}/"
}

output "zone_id" {
  description = "Route 53 hosted zone of the load balancer's DNS name (for an alias record)."
  value       = aws_lb.this.zone_id
}

output "dns_name" {
  description = "DNS name of the load balancer (point a CNAME at it)."
  value       = aws_lb.this.dns_name
}

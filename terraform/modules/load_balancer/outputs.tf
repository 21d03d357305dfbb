output "url" {
  description = "Where clients upload: HTTPS when a certificate is given, else HTTP."
  value       = "${local.https ? "https" : "http"}://${aws_lb.this.dns_name}/"
}

output "dns_name" {
  description = "DNS name of the load balancer (point a CNAME at it)."
  value       = aws_lb.this.dns_name
}

output "dashboard_url" {
  description = "CloudWatch console link of the dashboard."
  value       = "https://${var.region}.console.aws.amazon.com/cloudwatch/home?region=${var.region}#dashboards:name=${aws_cloudwatch_dashboard.this.dashboard_name}"
}

output "dead_letter_alarm_arn" {
  description = "Alarm raised when a request reaches the dead-letter queue."
  value       = aws_cloudwatch_metric_alarm.dead_letters.arn
}

output "launches_failing_alarm_arn" {
  description = "Alarm raised when the app tier's group stays below its desired capacity with nothing pending."
  value       = aws_cloudwatch_metric_alarm.launches_failing.arn
}

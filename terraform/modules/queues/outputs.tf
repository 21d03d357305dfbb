output "request_queue_name" {
  description = "Name of the request queue."
  value       = aws_sqs_queue.requests.name
}

output "request_queue_url" {
  description = "URL of the request queue."
  value       = aws_sqs_queue.requests.id
}

output "request_queue_arn" {
  description = "ARN of the request queue."
  value       = aws_sqs_queue.requests.arn
}

output "response_queue_prefix" {
  description = "The services' queues.responses: web instance K reads <prefix>-web-instanceK."
  value       = "${var.name_prefix}-responses"
}

output "response_queue_names" {
  description = "Name of each web instance's response queue, by web instance."
  value       = { for name, queue in aws_sqs_queue.responses : name => queue.name }
}

output "response_queue_urls" {
  description = "URL of each web instance's response queue, by web instance."
  value       = { for name, queue in aws_sqs_queue.responses : name => queue.id }
}

output "response_queue_arns" {
  description = "ARNs of the response queues."
  value       = [for queue in aws_sqs_queue.responses : queue.arn]
}

output "dead_letter_queue_name" {
  description = "Name of the dead-letter queue."
  value       = aws_sqs_queue.dead_letter.name
}

output "dead_letter_queue_url" {
  description = "URL of the dead-letter queue."
  value       = aws_sqs_queue.dead_letter.id
}

output "dead_letter_queue_arn" {
  description = "ARN of the dead-letter queue."
  value       = aws_sqs_queue.dead_letter.arn
}

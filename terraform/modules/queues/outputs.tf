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

output "response_queue_name" {
  description = "Name of the response queue."
  value       = aws_sqs_queue.responses.name
}

output "response_queue_url" {
  description = "URL of the response queue."
  value       = aws_sqs_queue.responses.id
}

output "response_queue_arn" {
  description = "ARN of the response queue."
  value       = aws_sqs_queue.responses.arn
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

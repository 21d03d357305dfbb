# One dashboard for the whole service, and an alarm when requests start to dead-letter.

locals {
  group = var.app_group_name

  widgets = [
    {
      title = "Request queue"
      metrics = concat(
        [
          ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", var.request_queue, { label = "waiting" }],
          ["AWS/SQS", "ApproximateNumberOfMessagesNotVisible", "QueueName", var.request_queue, { label = "in flight" }],
          ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", var.dead_letter_queue, { label = "dead letters" }],
        ],
        [for q in var.response_queues : ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", q, { label = q }]],
      )
    },
    {
      title = "Backlog per instance (scaler)"
      metrics = [
        [var.metric_namespace, "BacklogPerInstance", "AutoScalingGroupName", local.group],
        [var.metric_namespace, "Backlog", "AutoScalingGroupName", local.group],
      ]
    },
    {
      title = "App-tier instances"
      metrics = [
        [var.metric_namespace, "DesiredCapacity", "AutoScalingGroupName", local.group, { label = "desired (scaler)" }],
        [var.metric_namespace, "InServiceInstances", "AutoScalingGroupName", local.group, { label = "in service (scaler)" }],
        ["AWS/AutoScaling", "GroupInServiceInstances", "AutoScalingGroupName", local.group, { label = "in service (group)" }],
        ["AWS/AutoScaling", "GroupPendingInstances", "AutoScalingGroupName", local.group, { label = "pending (group)" }],
      ]
    },
  ]
}

resource "aws_cloudwatch_dashboard" "this" {
  dashboard_name = var.name_prefix

  dashboard_body = jsonencode({
    widgets = [for i, w in local.widgets : {
      type   = "metric"
      x      = (i % 2) * 12
      y      = floor(i / 2) * 6
      width  = 12
      height = 6
      properties = {
        title   = w.title
        region  = var.region
        view    = "timeSeries"
        stat    = "Maximum"
        period  = 60
        metrics = w.metrics
      }
    }]
  })
}

resource "aws_cloudwatch_metric_alarm" "dead_letters" {
  alarm_name        = "${var.name_prefix}-dead-letters"
  alarm_description = "Requests moved to ${var.dead_letter_queue} after failing again and again: their clients got an error."
  # The web tier reads each dead letter once (to answer its client) and leaves it in flight for a
  # while (12 hours, the longest SQS allows), so visible messages alone drop back to 0: count
  # visible + in flight.
  metric_query {
    id          = "dead"
    expression  = "visible + in_flight"
    label       = "dead letters"
    return_data = true
  }
  metric_query {
    id = "visible"
    metric {
      namespace   = "AWS/SQS"
      metric_name = "ApproximateNumberOfMessagesVisible"
      dimensions  = { QueueName = var.dead_letter_queue }
      stat        = "Maximum"
      period      = 300
    }
  }
  metric_query {
    id = "in_flight"
    metric {
      namespace   = "AWS/SQS"
      metric_name = "ApproximateNumberOfMessagesNotVisible"
      dimensions  = { QueueName = var.dead_letter_queue }
      stat        = "Maximum"
      period      = 300
    }
  }
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
}

# Launches the group cannot make (the vCPU quota, no capacity of the type, a broken launch
# template) show only in its activity history: the group stays below its desired capacity with
# nothing pending. The scaler also shows the reason on /status and in its log.
resource "aws_cloudwatch_metric_alarm" "launches_failing" {
  alarm_name        = "${var.name_prefix}-app-tier-launches-failing"
  alarm_description = "${var.app_group_name} has stayed below its desired capacity with no launch pending: launches are failing (see its activity history, or /status)."
  metric_query {
    id          = "short"
    expression  = "desired - in_service - pending"
    label       = "instances missing"
    return_data = true
  }
  dynamic "metric_query" {
    for_each = {
      desired    = "GroupDesiredCapacity"
      in_service = "GroupInServiceInstances"
      pending    = "GroupPendingInstances"
    }

    content {
      id = metric_query.key
      metric {
        namespace   = "AWS/AutoScaling"
        metric_name = metric_query.value
        dimensions  = { AutoScalingGroupName = var.app_group_name }
        stat        = "Minimum"
        period      = 60
      }
    }
  }
  # Ten minutes in a row: a boot takes about a minute, a failed launch is retried for longer.
  evaluation_periods  = 10
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
}

# The app-tier workers: an Auto Scaling group of instances from the Packer AMI. The scaler on
# web-instance1 owns the desired capacity and the Name tags (app-instance1, app-instance2, ...).
# No termination lifecycle hook: a terminating instance's worker gets SIGTERM from systemd, finishes
# its batch and stops; what it held comes back to the queue after its visibility timeout.

resource "aws_launch_template" "this" {
  #checkov:skip=CKV_AWS_88:Public IPs reach the AWS APIs without a NAT gateway; the security group admits no inbound traffic.
  name_prefix            = "${var.group_name}-"
  description            = "imgrec app-tier worker"
  image_id               = var.ami_id
  instance_type          = var.instance_type
  ebs_optimized          = true
  update_default_version = true
  user_data              = base64encode(var.user_data)

  iam_instance_profile {
    name = var.instance_profile
  }

  network_interfaces {
    associate_public_ip_address = true
    delete_on_termination       = true
    security_groups             = [var.security_group_id]
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  block_device_mappings {
    device_name = "/dev/sda1"

    ebs {
      volume_size           = var.volume_size_gb
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  monitoring {
    enabled = false
  }

  tag_specifications {
    resource_type = "volume"

    tags = {
      Tier = "app"
    }
  }
}

resource "aws_autoscaling_group" "this" {
  name                = var.group_name
  min_size            = var.min_size
  max_size            = var.max_size
  desired_capacity    = var.min_size
  vpc_zone_identifier = var.subnet_ids
  health_check_type   = "EC2"
  # Instances stop by the scaler's choice (idle first), never by the group's own.
  termination_policies = ["NewestInstance"]
  metrics_granularity  = "1Minute"
  enabled_metrics = [
    "GroupDesiredCapacity",
    "GroupInServiceInstances",
    "GroupPendingInstances",
    "GroupTerminatingInstances",
  ]

  launch_template {
    id      = aws_launch_template.this.id
    version = aws_launch_template.this.latest_version
  }

  # No Name tag here: the scaler names each newcomer app-instanceK (lowest free K).
  tag {
    key                 = "Tier"
    value               = "app"
    propagate_at_launch = true
  }


  lifecycle {
    # The scaler sets the desired capacity at run time; Terraform must not reset it on apply.
    ignore_changes = [desired_capacity]

    precondition {
      condition     = var.min_size <= var.max_size
      error_message = "app_min_size must not exceed the app tier's maximum (instance_budget - 1)."
    }
  }
}

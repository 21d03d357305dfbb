# The app-tier workers: Auto Scaling groups of instances from the Packer AMI. The scaler owns
# their desired capacities and the Name tags (app-instance1, app-instance2, ...), unique across
# both. The On-Demand group takes the first instances (min_size in service, the warm pool's when
# it has one); the Spot group the rest. AWS allows a warm pool only on a group without Spot, hence
# two groups.
# No termination lifecycle hook (a launch hook only, with the warm pool, which the worker completes):
# a terminating instance's worker gets SIGTERM from systemd, stops
# receiving, answers what it holds or gives it back to the queue at once (app_tier.drain_deadline_ms);
# a Spot worker starts that drain itself before its interruption notice ends.

locals {
  spot = length(var.spot_instance_types) > 0
  # Hibernation is configured on the On-Demand template only (the warm pool's instances).
  templates = merge(
    { on_demand = var.warm_pool_size > 0 && var.warm_pool_state == "Hibernated" },
    local.spot ? { spot = false } : {},
  )
}

moved {
  from = aws_launch_template.this
  to   = aws_launch_template.this["on_demand"]
}

resource "aws_launch_template" "this" {
  for_each = local.templates

  #checkov:skip=CKV_AWS_88:Public IPs reach the AWS APIs without a NAT gateway; the security group admits no inbound traffic.
  name_prefix            = "${var.group_name}-${each.key}-"
  description            = "imgrec app-tier worker (${each.key})"
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
      volume_size           = var.volume_size_gb + (each.value ? var.saved_ram_gib : 0)
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  monitoring {
    enabled = false
  }

  # A hibernated instance keeps its RAM on its root volume, which is encrypted (as AWS requires)
  # and larger by the RAM (the swap file the AMI's hibernation agent makes on first boot).
  hibernation_options {
    configured = each.value
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
  # The scaler's TerminateInstanceInAutoScalingGroup can leave the group unbalanced between
  # Availability Zones, and AZRebalance would then launch past MaxSize (the instance budget) and
  # terminate instances the scaler kept. Launches still go to the zone with the fewest.
  suspended_processes = ["AZRebalance"]
  # terraform destroy does not wait for the warm pool's stopped instances one by one.
  force_delete_warm_pool = true
  metrics_granularity    = "1Minute"
  enabled_metrics = [
    "GroupDesiredCapacity",
    "GroupInServiceInstances",
    "GroupPendingInstances",
    "GroupTerminatingInstances",
  ]

  launch_template {
    id      = aws_launch_template.this["on_demand"].id
    version = aws_launch_template.this["on_demand"].latest_version
  }

  # With the warm pool, a launch waits until the worker has loaded its model and completed this
  # hook (AsgInstanceStatus::until_in_service): an instance for the pool is stopped or hibernated
  # only then, and one leaving the pool serves as soon as it is in service. CONTINUE if nobody
  # completes it in time: the instance goes on, unready, rather than being lost.
  dynamic "initial_lifecycle_hook" {
    for_each = var.warm_pool_size > 0 ? [var.launch_hook] : []

    content {
      name                 = initial_lifecycle_hook.value
      lifecycle_transition = "autoscaling:EC2_INSTANCE_LAUNCHING"
      default_result       = "CONTINUE"
      heartbeat_timeout    = 300
    }
  }

  # Initialised once (model loaded), then stopped or hibernated until scale-out draws on it; its
  # worker waits for InService before it takes any request. The pool stays warm_pool_size
  # (min_size) whatever the group's size, and scaled-in instances go back to it.
  dynamic "warm_pool" {
    for_each = var.warm_pool_size > 0 ? [var.warm_pool_size] : []

    content {
      pool_state                  = var.warm_pool_state
      min_size                    = warm_pool.value
      max_group_prepared_capacity = var.min_size + warm_pool.value

      instance_reuse_policy {
        reuse_on_scale_in = true
      }
    }
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

resource "aws_autoscaling_group" "spot" {
  count = local.spot ? 1 : 0

  name                 = var.spot_group_name
  min_size             = 0
  max_size             = var.spot_max_size
  desired_capacity     = 0
  vpc_zone_identifier  = var.subnet_ids
  health_check_type    = "EC2"
  termination_policies = ["NewestInstance"]
  suspended_processes  = ["AZRebalance"]
  # A rebalance recommendation (an elevated risk of interruption) launches a replacement before
  # the instance at risk goes.
  capacity_rebalance  = true
  metrics_granularity = "1Minute"
  enabled_metrics = [
    "GroupDesiredCapacity",
    "GroupInServiceInstances",
    "GroupPendingInstances",
    "GroupTerminatingInstances",
  ]

  mixed_instances_policy {
    instances_distribution {
      on_demand_base_capacity                  = 0
      on_demand_percentage_above_base_capacity = 0
      spot_allocation_strategy                 = "capacity-optimized"
    }

    launch_template {
      launch_template_specification {
        launch_template_id = aws_launch_template.this["spot"].id
        version            = aws_launch_template.this["spot"].latest_version
      }

      dynamic "override" {
        for_each = var.spot_instance_types

        content {
          instance_type = override.value
        }
      }
    }
  }

  tag {
    key                 = "Tier"
    value               = "app"
    propagate_at_launch = true
  }

  lifecycle {
    ignore_changes = [desired_capacity]
  }
}

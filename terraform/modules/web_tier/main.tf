# The web instances: web-instance1 runs the web tier (port 80) and the scaler; web-instance2.. run
# the web tier only. Same AMI, spread over the subnets.

resource "aws_instance" "this" {
  #checkov:skip=CKV_AWS_88:The web tier is the service's public endpoint (or the load balancer's target, in a public subnet without a NAT gateway).
  #checkov:skip=CKV_AWS_126:Detailed (1-minute) monitoring is billed per instance; the scaler publishes its own metrics.
  for_each = toset(var.names)

  ami                         = var.ami_id
  instance_type               = var.instance_type
  subnet_id                   = var.subnet_ids[index(var.names, each.key) % length(var.subnet_ids)]
  vpc_security_group_ids      = [var.security_group_id]
  iam_instance_profile        = var.instance_profile
  associate_public_ip_address = true
  ebs_optimized               = true
  monitoring                  = false
  user_data_base64            = base64encode(var.user_data[each.key])
  user_data_replace_on_change = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  root_block_device {
    volume_size           = var.volume_size_gb
    volume_type           = "gp3"
    encrypted             = true
    delete_on_termination = true
  }

  tags = {
    Name = each.key
    Tier = "web"
  }

  volume_tags = {
    Name = each.key
    Tier = "web"
  }
}

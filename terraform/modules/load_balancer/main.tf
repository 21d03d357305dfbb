# With more than one web instance: an Application Load Balancer in front of them. Each upload
# waits for its label on one connection, so the idle timeout covers the web tier's response
# timeout. HTTPS (with HTTP redirected to it) when a certificate is given.

locals {
  https = var.certificate_arn != ""
}

resource "aws_lb" "this" {
  #checkov:skip=CKV_AWS_91:Access logs need a log bucket and its policy; the web tier logs every request itself.
  #checkov:skip=CKV_AWS_150:Deletion protection would make `terraform destroy` (make destroy) fail; the service is torn down with it.
  #checkov:skip=CKV2_AWS_28:A WAF web ACL is billed per rule and request; the web tier bounds uploads, connections and timeouts itself.
  name                       = "${var.name_prefix}-web"
  load_balancer_type         = "application"
  internal                   = false
  security_groups            = [var.security_group_id]
  subnets                    = var.subnet_ids
  idle_timeout               = var.idle_timeout_s
  drop_invalid_header_fields = true
  enable_deletion_protection = false

  lifecycle {
    precondition {
      condition     = var.certificate_arn == "" || var.domain_name != ""
      error_message = "certificate_arn needs domain_name: no certificate can cover the load balancer's own *.elb.amazonaws.com name, so clients would see a name mismatch."
    }
  }
}

resource "aws_lb_target_group" "web" {
  #checkov:skip=CKV_AWS_378:Traffic from the load balancer to the web instances stays inside the VPC; TLS ends at the load balancer.
  name     = "${var.name_prefix}-web"
  port     = 80
  protocol = "HTTP"
  vpc_id   = var.vpc_id
  # A web instance leaving answers what it holds first (web.drain_timeout_s, then 3 s to close).
  deregistration_delay = var.deregistration_delay_s

  health_check {
    path                = "/healthz"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
}

resource "aws_lb_target_group_attachment" "web" {
  for_each = var.instance_ids

  target_group_arn = aws_lb_target_group.web.arn
  target_id        = each.value
  port             = 80
}

resource "aws_lb_listener" "http" {
  #checkov:skip=CKV_AWS_2:Plain HTTP is the service's contract when no certificate is given; with one, this listener only redirects to HTTPS.
  #checkov:skip=CKV_AWS_103:This listener speaks no TLS; the HTTPS listener sets a TLS 1.2+ policy.
  #checkov:skip=CKV2_AWS_20:It redirects to HTTPS whenever a certificate is given (certificate_arn).
  load_balancer_arn = aws_lb.this.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type             = local.https ? "redirect" : "forward"
    target_group_arn = local.https ? null : aws_lb_target_group.web.arn

    dynamic "redirect" {
      for_each = local.https ? [1] : []

      content {
        protocol    = "HTTPS"
        port        = "443"
        status_code = "HTTP_301"
      }
    }
  }
}

resource "aws_lb_listener" "https" {
  count = local.https ? 1 : 0

  load_balancer_arn = aws_lb.this.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.web.arn
  }
}

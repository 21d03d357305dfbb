# domain_name in the user's Route 53 zone, when route53_zone_id is given: an alias of the load
# balancer, or with one web instance a CNAME of web-instance1's public name.

resource "aws_route53_record" "load_balancer" {
  count = var.route53_zone_id != "" && var.domain_name != "" && local.load_balanced ? 1 : 0

  zone_id = var.route53_zone_id
  name    = var.domain_name
  type    = "A"

  alias {
    name                   = module.load_balancer[0].dns_name
    zone_id                = module.load_balancer[0].zone_id
    evaluate_target_health = true
  }
}

resource "aws_route53_record" "web_instance" {
  count = var.route53_zone_id != "" && var.domain_name != "" && !local.load_balanced ? 1 : 0

  zone_id = var.route53_zone_id
  name    = var.domain_name
  type    = "CNAME"
  ttl     = 60
  records = [module.web_tier.public_dns["web-instance1"]]
}

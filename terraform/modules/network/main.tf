# A small VPC of two public subnets. Instances reach S3, SQS, Auto Scaling and CloudWatch over
# HTTPS through the internet gateway (no NAT gateway to pay for); the app tier accepts no inbound
# traffic at all, the web tier only HTTP from the configured networks (or, with several web
# instances, from their load balancer).

data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:Only the first two zones (in name order) are used; a zone AWS adds later changes nothing deployed.
  state = "available"
}

resource "aws_vpc" "this" {
  #checkov:skip=CKV2_AWS_11:VPC flow logs cost per GB and need a log group and role; enable them per account when auditing is wanted.
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = {
    Name = var.name_prefix
  }
}

# The default security group of the VPC allows nothing.
resource "aws_default_security_group" "this" {
  vpc_id = aws_vpc.this.id
}

resource "aws_internet_gateway" "this" {
  vpc_id = aws_vpc.this.id

  tags = {
    Name = var.name_prefix
  }
}

resource "aws_subnet" "public" {
  count = 2

  vpc_id            = aws_vpc.this.id
  availability_zone = data.aws_availability_zones.available.names[count.index]
  cidr_block        = cidrsubnet(var.vpc_cidr, 8, count.index)

  tags = {
    Name = "${var.name_prefix}-public-${count.index + 1}"
  }
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.this.id

  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.this.id
  }

  tags = {
    Name = "${var.name_prefix}-public"
  }
}

resource "aws_route_table_association" "public" {
  count = length(aws_subnet.public)

  subnet_id      = aws_subnet.public[count.index].id
  route_table_id = aws_route_table.public.id
}

# S3 traffic stays on the AWS network through a gateway endpoint (free).
resource "aws_vpc_endpoint" "s3" {
  vpc_id            = aws_vpc.this.id
  service_name      = "com.amazonaws.${data.aws_region.current.name}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = [aws_route_table.public.id]
}

data "aws_region" "current" {}

resource "aws_security_group" "web_tier" {
  #checkov:skip=CKV2_AWS_5:Attached to the web instances in modules/web_tier (checkov does not follow module outputs).
  name        = "${var.name_prefix}-web-tier"
  description = "web instances: HTTP from clients or the load balancer, HTTPS out to AWS APIs"
  vpc_id      = aws_vpc.this.id

  tags = {
    Name = "${var.name_prefix}-web-tier"
  }
}

# One web instance takes uploads straight from clients; several sit behind the load balancer,
# which alone takes them from clients.
resource "aws_vpc_security_group_ingress_rule" "web_http" {
  #checkov:skip=CKV_AWS_260:The web tier is a public upload service by default; narrow http_ingress_cidrs to restrict it.
  for_each = var.load_balancer ? toset([]) : toset(var.http_ingress_cidrs)

  security_group_id = aws_security_group.web_tier.id
  description       = "HTTP uploads from clients"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = each.value
}

resource "aws_security_group" "load_balancer" {
  #checkov:skip=CKV2_AWS_5:Attached to the load balancer in modules/load_balancer (checkov does not follow module outputs).
  count = var.load_balancer ? 1 : 0

  name        = "${var.name_prefix}-load-balancer"
  description = "Load balancer: HTTP(S) from clients, HTTP to the web instances"
  vpc_id      = aws_vpc.this.id

  tags = {
    Name = "${var.name_prefix}-load-balancer"
  }
}

resource "aws_vpc_security_group_ingress_rule" "load_balancer" {
  #checkov:skip=CKV_AWS_260:The service is a public upload service by default; narrow http_ingress_cidrs to restrict it.
  for_each = var.load_balancer ? {
    for pair in setproduct(var.https ? [80, 443] : [80], var.http_ingress_cidrs) : "${pair[0]} ${pair[1]}" => pair
  } : {}

  security_group_id = aws_security_group.load_balancer[0].id
  description       = "Uploads from clients"
  ip_protocol       = "tcp"
  from_port         = each.value[0]
  to_port           = each.value[0]
  cidr_ipv4         = each.value[1]
}

resource "aws_vpc_security_group_egress_rule" "load_balancer_to_web" {
  count = var.load_balancer ? 1 : 0

  security_group_id            = aws_security_group.load_balancer[0].id
  description                  = "HTTP to the web instances"
  ip_protocol                  = "tcp"
  from_port                    = 80
  to_port                      = 80
  referenced_security_group_id = aws_security_group.web_tier.id
}

resource "aws_vpc_security_group_ingress_rule" "web_from_load_balancer" {
  #checkov:skip=CKV_AWS_260:The source is the load balancer's security group, not 0.0.0.0/0 (checkov reads no CIDR as any).
  count = var.load_balancer ? 1 : 0

  security_group_id            = aws_security_group.web_tier.id
  description                  = "HTTP from the load balancer"
  ip_protocol                  = "tcp"
  from_port                    = 80
  to_port                      = 80
  referenced_security_group_id = aws_security_group.load_balancer[0].id
}

resource "aws_security_group" "app_tier" {
  #checkov:skip=CKV2_AWS_5:Attached to the launch template in modules/app_tier (checkov does not follow module outputs).
  name        = "${var.name_prefix}-app-tier"
  description = "app-tier workers: no inbound, HTTPS out to AWS APIs"
  vpc_id      = aws_vpc.this.id

  tags = {
    Name = "${var.name_prefix}-app-tier"
  }
}

# Both tiers talk only to AWS API endpoints, all HTTPS.
# Ubuntu's EC2 apt mirrors (unattended security updates) serve plain HTTP; packages are signed.
resource "aws_vpc_security_group_egress_rule" "http" {
  for_each = {
    web_tier = aws_security_group.web_tier.id
    app_tier = aws_security_group.app_tier.id
  }

  security_group_id = each.value
  description       = "HTTP to Ubuntu's package mirrors (signed packages)"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "https" {
  for_each = {
    web_tier = aws_security_group.web_tier.id
    app_tier = aws_security_group.app_tier.id
  }

  security_group_id = each.value
  description       = "HTTPS to AWS APIs (S3, SQS, Auto Scaling, EC2, CloudWatch, SSM)"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

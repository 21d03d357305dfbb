# One role per tier, each allowed exactly what its code calls (the documents are in ./policies,
# plain JSON that the deployment rehearsal renders and enforces offline).

module "policies" {
  source = "./policies"

  partition           = var.partition
  region              = var.region
  account_id          = var.account_id
  input_bucket_arn    = var.input_bucket_arn
  output_bucket_arn   = var.output_bucket_arn
  lease_bucket_arn    = var.lease_bucket_arn
  request_queue_arn   = var.request_queue_arn
  response_queue_arns = var.response_queue_arns
  dead_letter_arn     = var.dead_letter_arn
  app_group_name      = var.app_group_name
  spot_group_name     = var.spot_group_name
  metric_namespace    = var.metric_namespace

  api_keys_parameter   = var.api_keys_parameter
  api_keys_kms_key_arn = var.api_keys_kms_key_arn
}

locals {
  roles = {
    web_tier = module.policies.web_tier
    app_tier = module.policies.app_tier
  }
}

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "this" {
  for_each = local.roles

  name               = "${var.name_prefix}-${replace(each.key, "_", "-")}"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

resource "aws_iam_role_policy" "this" {
  for_each = local.roles

  name   = "${var.name_prefix}-${replace(each.key, "_", "-")}"
  role   = aws_iam_role.this[each.key].id
  policy = each.value
}

resource "aws_iam_role_policy" "session_manager" {
  #checkov:skip=CKV_AWS_290:ssm:UpdateInstanceInformation and ssmmessages:*Channel support no resource-level permissions (AWS requires "*"); the policy holds only what the SSM agent calls for sessions.
  #checkov:skip=CKV_AWS_355:These five actions support no resource-level permissions: AWS requires "*" for them (Service Authorization Reference, Systems Manager and Session Manager Message Gateway Service).
  for_each = var.enable_ssm ? local.roles : {}

  name   = "${var.name_prefix}-${replace(each.key, "_", "-")}-session-manager"
  role   = aws_iam_role.this[each.key].id
  policy = module.policies.session_manager
}

resource "aws_iam_instance_profile" "this" {
  for_each = local.roles

  name = "${var.name_prefix}-${replace(each.key, "_", "-")}"
  role = aws_iam_role.this[each.key].name
}

output "web_tier" {
  description = "Policy document (JSON) of the web tier's role, which the scaler shares."
  value       = jsonencode({ Version = "2012-10-17", Statement = concat(local.find_resources, local.web_tier, local.api_keys) })
}

# Session Manager only (AWS Systems Manager User Guide, "Create a custom IAM role for Session
# Manager"): the agent registers the instance and opens its session channels. Unlike
# AmazonSSMManagedInstanceCore, no ssm:GetParameter* on every parameter of the account. These
# actions have no resource-level permissions: AWS requires "*" for them.
output "session_manager" {
  description = "Policy document (JSON) letting an instance's SSM agent serve Session Manager sessions."
  value = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid    = "SessionManagerOnly"
      Effect = "Allow"
      Action = [
        "ssm:UpdateInstanceInformation",
        "ssmmessages:CreateControlChannel",
        "ssmmessages:CreateDataChannel",
        "ssmmessages:OpenControlChannel",
        "ssmmessages:OpenDataChannel",
      ]
      Resource = "*"
    }]
  })
}

output "app_tier" {
  description = "Policy document (JSON) of the app tier's role."
  value       = jsonencode({ Version = "2012-10-17", Statement = concat(local.find_resources, local.app_tier, local.find_own_group) })
}

"""The deployment rehearsal: the AWS deployment's tiers, roles and Auto Scaling group played on this
machine, with what moto does not enforce enforced (IAM, and the AWS behaviours the code relies on).
See tools/rehearsal/README.md."""

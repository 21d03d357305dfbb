//! Secrets from SSM Parameter Store (the web tier's API keys), read once at startup.

use aws_sdk_ssm::Client;

use crate::Aws;

/// The decrypted value of the SecureString (or String) parameter `name`: a clear error naming it
/// when it is missing or access is denied.
pub async fn secure_parameter(aws: &Aws, name: &str) -> anyhow::Result<String> {
    let client = Client::new(&aws.sdk);
    let request = client.get_parameter().name(name).with_decryption(true);
    let out = aws
        .call("GetParameter", request.send())
        .await
        .map_err(|e| e.on(format_args!("(SSM parameter {name:?})")))?;
    out.parameter()
        .and_then(|p| p.value())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("SSM parameter {name:?} has no value"))
}

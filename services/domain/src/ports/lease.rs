//! `Lease`: one holder at a time, until it stops renewing; the scaler's and the local web tiers'
//! names.

use std::time::Duration;

use async_trait::async_trait;

/// A named lease that one holder at a time has until it stops renewing it: the scaler acts on
/// the fleet only while it holds its lease, so several hosts can run one without two acting.
#[async_trait]
pub trait Lease: Send + Sync + 'static {
    /// Takes the lease for `ttl` from now (or renews it); false while another holder has it.
    async fn hold(&self, ttl: Duration) -> anyhow::Result<bool>;
    /// Gives it up at once (on shutdown), so another holder need not wait for it to expire.
    async fn release(&self) -> anyhow::Result<()>;
    /// What is leased (`scaler`, `web-instance2`).
    fn name(&self) -> &str;
    /// Who this side is, for logs and `/status`.
    fn holder(&self) -> &str;
}

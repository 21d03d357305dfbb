//! `WorkQueue`: the request, response and dead-letter queues, with SQS's semantics.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::error::PortResult;

/// Proof of one receipt of a message, needed to delete it or change its visibility. A message
/// received again gets a new receipt; the old one no longer deletes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Receipt(pub String);

#[derive(Debug, Clone)]
pub struct Received {
    pub receipt: Receipt,
    pub body: Vec<u8>,
    /// How many times this message has been received, this time included.
    pub receive_count: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueDepth {
    /// Waiting to be received.
    pub visible: u64,
    /// Received and not yet deleted, invisible until their visibility timeout.
    pub in_flight: u64,
}

impl QueueDepth {
    pub fn total(&self) -> u64 {
        self.visible + self.in_flight
    }
}

/// A queue with SQS semantics: at-least-once delivery, visibility timeouts, receive counts and a
/// dead-letter queue after too many receives.
#[async_trait]
pub trait WorkQueue: Send + Sync + 'static {
    async fn send(&self, body: &[u8]) -> PortResult<()>;
    /// Sends several messages in as few round trips as the backend allows.
    async fn send_batch(&self, bodies: &[Vec<u8>]) -> PortResult<()> {
        for body in bodies {
            self.send(body).await?;
        }
        Ok(())
    }
    /// Up to `max` messages, each hidden from other receivers for `visibility`; waits up to `wait`
    /// for the first one (long polling).
    async fn receive(&self, max: usize, visibility: Duration, wait: Duration) -> PortResult<Vec<Received>>;
    async fn delete(&self, receipt: &Receipt) -> PortResult<()>;
    /// Deletes several received messages in as few round trips as the backend allows.
    async fn delete_batch(&self, receipts: &[Receipt]) -> PortResult<()> {
        for receipt in receipts {
            self.delete(receipt).await?;
        }
        Ok(())
    }
    /// Hides a received message for `visibility` from now (zero makes it visible at once).
    async fn change_visibility(&self, receipt: &Receipt, visibility: Duration) -> PortResult<()>;
    async fn depth(&self) -> PortResult<QueueDepth>;
}

/// The web tiers' response queues by name: each web tier has its own, and each request names the
/// one its answer goes to. Opened once per name and kept.
#[async_trait]
pub trait ResponseQueues: Send + Sync + 'static {
    async fn open(&self, name: &str) -> PortResult<Arc<dyn WorkQueue>>;
}

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;

use super::describe;
use imgrec_domain::ports::{QueueDepth, Receipt, Received, ResponseQueues, WorkQueue};

/// SQS's limit on messages per batch call.
const BATCH: usize = 10;
/// SQS's longest long poll.
const MAX_WAIT_S: u64 = 20;

/// One SQS queue. Its dead-letter queue is the queue's redrive policy (set by Terraform, or by the
/// bootstrap for emulated runs); SQS counts receives and moves the message itself.
#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    url: String,
}

/// SQS counts visibility in whole seconds; round up so a message is never released early.
fn whole_seconds(d: Duration) -> i32 {
    d.as_secs_f64().ceil().min(43_200.0) as i32
}

impl SqsQueue {
    /// Resolves the queue by name: a clear startup error when it does not exist or access is denied.
    pub async fn open(sdk: &SdkConfig, name: &str) -> anyhow::Result<Self> {
        let client = Client::new(sdk);
        let url = client
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .map_err(|e| anyhow!("SQS queue {name:?} is not usable: {}", describe(&e)))?
            .queue_url()
            .with_context(|| format!("SQS returned no URL for queue {name:?}"))?
            .to_owned();
        Ok(Self { client, url })
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

#[async_trait]
impl WorkQueue for SqsQueue {
    async fn send(&self, body: &[u8]) -> anyhow::Result<()> {
        let body = std::str::from_utf8(body).context("SQS message bodies must be UTF-8")?;
        super::count("SendMessage");
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| anyhow!("SQS SendMessage: {}", describe(&e)))?;
        Ok(())
    }

    async fn send_batch(&self, bodies: &[Vec<u8>]) -> anyhow::Result<()> {
        for chunk in bodies.chunks(BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, body)| {
                    let body = std::str::from_utf8(body).context("SQS message bodies must be UTF-8")?;
                    Ok(SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .build()?)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            super::count("SendMessageBatch");
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| anyhow!("SQS SendMessageBatch: {}", describe(&e)))?;
            if let Some(failed) = out.failed().first() {
                bail!(
                    "SQS SendMessageBatch: {} of {} failed, e.g. {}",
                    out.failed().len(),
                    chunk.len(),
                    failed.code()
                );
            }
        }
        Ok(())
    }

    async fn receive(&self, max: usize, visibility: Duration, wait: Duration) -> anyhow::Result<Vec<Received>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        super::count("ReceiveMessage");
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.min(BATCH) as i32)
            .visibility_timeout(whole_seconds(visibility))
            .wait_time_seconds(wait.as_secs_f64().ceil().min(MAX_WAIT_S as f64) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| anyhow!("SQS ReceiveMessage: {}", describe(&e)))?;
        out.messages()
            .iter()
            .map(|m| {
                let receipt = m.receipt_handle().context("SQS message without receipt handle")?;
                let receive_count = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1);
                Ok(Received {
                    receipt: Receipt(receipt.to_owned()),
                    body: m.body().unwrap_or_default().as_bytes().to_vec(),
                    receive_count,
                })
            })
            .collect()
    }

    async fn delete(&self, receipt: &Receipt) -> anyhow::Result<()> {
        super::count("DeleteMessage");
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(&receipt.0)
            .send()
            .await
            .map_err(|e| anyhow!("SQS DeleteMessage: {}", describe(&e)))?;
        Ok(())
    }

    async fn delete_batch(&self, receipts: &[Receipt]) -> anyhow::Result<()> {
        for chunk in receipts.chunks(BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(&r.0)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()?;
            super::count("DeleteMessageBatch");
            let out = self
                .client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| anyhow!("SQS DeleteMessageBatch: {}", describe(&e)))?;
            if let Some(failed) = out.failed().first() {
                bail!(
                    "SQS DeleteMessageBatch: {} of {} failed, e.g. {}",
                    out.failed().len(),
                    chunk.len(),
                    failed.code()
                );
            }
        }
        Ok(())
    }

    async fn change_visibility(&self, receipt: &Receipt, visibility: Duration) -> anyhow::Result<()> {
        super::count("ChangeMessageVisibility");
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(&receipt.0)
            .visibility_timeout(whole_seconds(visibility))
            .send()
            .await
            .map_err(|e| anyhow!("SQS ChangeMessageVisibility: {}", describe(&e)))?;
        Ok(())
    }

    async fn depth(&self) -> anyhow::Result<QueueDepth> {
        super::count("GetQueueAttributes");
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| anyhow!("SQS GetQueueAttributes: {}", describe(&e)))?;
        let attribute = |name: QueueAttributeName| {
            out.attributes()
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(QueueDepth {
            visible: attribute(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: attribute(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        })
    }
}

/// The web tiers' response queues, resolved by name once (GetQueueUrl) and kept.
pub struct SqsResponseQueues {
    sdk: SdkConfig,
    opened: tokio::sync::Mutex<HashMap<String, Arc<dyn WorkQueue>>>,
}

impl SqsResponseQueues {
    pub fn new(sdk: &SdkConfig) -> Self {
        Self {
            sdk: sdk.clone(),
            opened: tokio::sync::Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl ResponseQueues for SqsResponseQueues {
    async fn open(&self, name: &str) -> anyhow::Result<Arc<dyn WorkQueue>> {
        let mut opened = self.opened.lock().await;
        if let Some(queue) = opened.get(name) {
            return Ok(queue.clone());
        }
        let queue: Arc<dyn WorkQueue> = Arc::new(SqsQueue::open(&self.sdk, name).await?);
        opened.insert(name.to_owned(), queue.clone());
        Ok(queue)
    }
}

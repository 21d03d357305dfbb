//! The `WorkQueue` and `ResponseQueues` ports on SQS: long polling, batches of ten, and the
//! redrive policy's dead-letter queue.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use async_trait::async_trait;
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;

use crate::Aws;
use imgrec_domain::ports::{PortError, PortResult, QueueDepth, Receipt, Received, ResponseQueues, WorkQueue};

/// SQS's limit on messages per batch call.
const BATCH: usize = 10;
/// SQS's longest long poll.
const MAX_WAIT_S: u64 = 20;

/// One SQS queue. Its dead-letter queue is the queue's redrive policy (set by Terraform, or by the
/// bootstrap for emulated runs); SQS counts receives and moves the message itself.
#[derive(Clone)]
pub struct SqsQueue {
    aws: Aws,
    client: Client,
    url: String,
}

/// A body as SQS carries it: text of XML's characters only (SendMessage, "MessageBody"). SQS
/// refuses the others or puts U+FFFD in their place; either way the message would not arrive as
/// sent, so it is refused here, saying why.
fn sqs_text(body: &[u8]) -> PortResult<&str> {
    let text = std::str::from_utf8(body)
        .context("SQS message bodies must be UTF-8")
        .map_err(PortError::Permanent)?;
    let allowed =
        |c: char| matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..);
    match text.chars().find(|&c| !allowed(c)) {
        None => Ok(text),
        Some(c) => Err(PortError::Permanent(anyhow!(
            "SQS message bodies cannot carry U+{:04X}",
            u32::from(c)
        ))),
    }
}

/// A batch call succeeds as a whole while single entries may fail: SQS says whose fault each is.
fn batch_failures(operation: &str, failed: &[BatchResultErrorEntry], of: usize) -> PortResult<()> {
    let Some(first) = failed.first() else {
        return Ok(());
    };
    let e = anyhow!(
        "SQS {operation}: {} of {of} failed, e.g. {}: {}",
        failed.len(),
        first.code(),
        first.message().unwrap_or("no message")
    );
    Err(if failed.iter().all(|f| f.sender_fault()) {
        PortError::Permanent(e)
    } else {
        PortError::Transient(e)
    })
}

/// SQS counts visibility in whole seconds; round up so a message is never released early.
fn whole_seconds(d: Duration) -> i32 {
    d.as_secs_f64().ceil().min(43_200.0) as i32
}

impl SqsQueue {
    /// Resolves the queue by name: a clear startup error when it does not exist or access is denied.
    pub async fn open(aws: &Aws, name: &str) -> PortResult<Self> {
        let client = Client::new(&aws.sdk);
        let url = aws
            .call("GetQueueUrl", client.get_queue_url().queue_name(name).send())
            .await
            .map_err(|e| e.on(format_args!("(SQS queue {name:?} is not usable)")))?
            .queue_url()
            .map(str::to_owned)
            .ok_or_else(|| PortError::Permanent(anyhow!("SQS returned no URL for queue {name:?}")))?;
        Ok(Self {
            aws: aws.clone(),
            client,
            url,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

#[async_trait]
impl WorkQueue for SqsQueue {
    async fn send(&self, body: &[u8]) -> PortResult<()> {
        let body = sqs_text(body)?;
        let request = self.client.send_message().queue_url(&self.url).message_body(body);
        self.aws.call("SendMessage", request.send()).await?;
        Ok(())
    }

    async fn send_batch(&self, bodies: &[Vec<u8>]) -> PortResult<()> {
        for chunk in bodies.chunks(BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, body)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(sqs_text(body)?)
                        .build()
                        .map_err(|e| PortError::Permanent(e.into()))
                })
                .collect::<PortResult<Vec<_>>>()?;
            let request = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries));
            let out = self.aws.call("SendMessageBatch", request.send()).await?;
            batch_failures("SendMessageBatch", out.failed(), chunk.len())?;
        }
        Ok(())
    }

    async fn receive(&self, max: usize, visibility: Duration, wait: Duration) -> PortResult<Vec<Received>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let request = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.min(BATCH) as i32)
            .visibility_timeout(whole_seconds(visibility))
            .wait_time_seconds(wait.as_secs_f64().ceil().min(MAX_WAIT_S as f64) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount);
        let out = self.aws.call("ReceiveMessage", request.send()).await?;
        out.messages()
            .iter()
            .map(|m| {
                let receipt = m
                    .receipt_handle()
                    .ok_or_else(|| PortError::Transient(anyhow!("SQS message without receipt handle")))?;
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

    async fn delete(&self, receipt: &Receipt) -> PortResult<()> {
        let request = self
            .client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(&receipt.0);
        self.aws.call("DeleteMessage", request.send()).await?;
        Ok(())
    }

    async fn delete_batch(&self, receipts: &[Receipt]) -> PortResult<()> {
        for chunk in receipts.chunks(BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(&r.0)
                        .build()
                        .map_err(|e| PortError::Permanent(e.into()))
                })
                .collect::<PortResult<Vec<_>>>()?;
            let request = self
                .client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries));
            let out = self.aws.call("DeleteMessageBatch", request.send()).await?;
            batch_failures("DeleteMessageBatch", out.failed(), chunk.len())?;
        }
        Ok(())
    }

    async fn change_visibility(&self, receipt: &Receipt, visibility: Duration) -> PortResult<()> {
        let request = self
            .client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(&receipt.0)
            .visibility_timeout(whole_seconds(visibility));
        self.aws.call("ChangeMessageVisibility", request.send()).await?;
        Ok(())
    }

    async fn depth(&self) -> PortResult<QueueDepth> {
        let request = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible);
        let out = self.aws.call("GetQueueAttributes", request.send()).await?;
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
    aws: Aws,
    opened: tokio::sync::Mutex<HashMap<String, Arc<dyn WorkQueue>>>,
}

impl SqsResponseQueues {
    pub fn new(aws: &Aws) -> Self {
        Self {
            aws: aws.clone(),
            opened: tokio::sync::Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl ResponseQueues for SqsResponseQueues {
    async fn open(&self, name: &str) -> PortResult<Arc<dyn WorkQueue>> {
        let mut opened = self.opened.lock().await;
        if let Some(queue) = opened.get(name) {
            return Ok(queue.clone());
        }
        let queue: Arc<dyn WorkQueue> = Arc::new(SqsQueue::open(&self.aws, name).await?);
        opened.insert(name.to_owned(), queue.clone());
        Ok(queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_that_sqs_would_alter_are_refused_saying_why() {
        let fine = "{\"key\":\"é\u{FFFD}\t\u{10000}\\uffff\"}";
        assert_eq!(sqs_text(fine.as_bytes()).unwrap(), fine);
        for (bad, named) in [
            ("a\u{FFFF}", "U+FFFF"),
            ("a\u{FFFE}", "U+FFFE"),
            ("a\u{0}", "U+0000"),
            ("\u{1F}", "U+001F"),
        ] {
            let e = sqs_text(bad.as_bytes()).unwrap_err();
            assert!(
                format!("{e:#}").contains(&format!("cannot carry {named}")),
                "{bad:?}: {e:#}"
            );
        }
        assert!(sqs_text(&[b'a', 0xFF]).is_err());
    }
}

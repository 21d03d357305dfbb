//! Responses back to the HTTP requests waiting for them: one background consumer of this web
//! tier's own response queue hands each response to the request with its id; a second watches the
//! dead-letter queue so that a request that failed again and again gets a clear error instead of
//! a timeout, whichever web tier it waits on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imgrec_domain::messages::{ClassifyRequest, ClassifyResponse, Message, Outcome, VERSION};
use imgrec_domain::ports::WorkQueue;
use imgrec_domain::records;
use imgrec_runtime::consumer::Consumer;
use imgrec_runtime::shutdown::Shutdown;
use tokio::sync::oneshot;
use tracing::{debug, error, warn};
use uuid::Uuid;

use crate::state::WebTier;

#[derive(Debug)]
pub enum Answer {
    Response(Box<ClassifyResponse>),
    /// The web tier stopped before the answer came (the result still lands in the bucket).
    ShuttingDown,
}

/// Requests waiting for their answer, by request id.
#[derive(Default, Clone)]
pub struct Waiters {
    inner: Arc<Mutex<Table>>,
}

#[derive(Default)]
struct Table {
    /// Each waiting request's answer channel, and since when it waits.
    waiting: HashMap<Uuid, (Instant, oneshot::Sender<Answer>)>,
    /// Set on shutdown: later registrations are answered `ShuttingDown` at once.
    closed: bool,
}

/// Removes its entry when dropped, so a timed-out or cancelled request leaves nothing behind.
pub struct Waiting {
    id: Uuid,
    waiters: Waiters,
    pub answer: oneshot::Receiver<Answer>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.waiters.lock().waiting.remove(&self.id);
    }
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `id` before its request is sent, so that no answer can arrive unclaimed.
    pub fn register(&self, id: Uuid) -> Waiting {
        let (tx, rx) = oneshot::channel();
        let mut table = self.lock();
        if table.closed {
            let _ = tx.send(Answer::ShuttingDown);
        } else {
            table.waiting.insert(id, (Instant::now(), tx));
        }
        drop(table);
        Waiting {
            id,
            waiters: self.clone(),
            answer: rx,
        }
    }

    fn deliver(&self, id: Uuid, answer: Answer) -> bool {
        match self.lock().waiting.remove(&id) {
            Some((_, tx)) => tx.send(answer).is_ok(),
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().waiting.len()
    }

    /// How long the longest-waiting request has waited.
    pub fn oldest(&self) -> Option<Duration> {
        self.lock().waiting.values().map(|(since, _)| since.elapsed()).max()
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Answers every request still waiting, and any registered later, with `ShuttingDown`.
    pub fn shut_down_all(&self) -> usize {
        let waiting: Vec<_> = {
            let mut table = self.lock();
            table.closed = true;
            table.waiting.drain().collect()
        };
        let n = waiting.len();
        for (_, (_, tx)) in waiting {
            let _ = tx.send(Answer::ShuttingDown);
        }
        n
    }
}

/// Consumes the response queue until a stop, counting the responses in `completed`.
pub async fn responses(queue: Arc<dyn WorkQueue>, waiters: Waiters, completed: Arc<AtomicU64>, mut shutdown: Shutdown) {
    // Interruptible: a response taken and not delivered comes back after its visibility, and is
    // in the bucket anyway.
    let mut consumer = Consumer::new(
        queue.clone(),
        "responses",
        10,
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
    .interruptible();
    while let Some(messages) = consumer.next(&mut shutdown).await {
        let mut receipts = Vec::with_capacity(messages.len());
        for m in messages {
            match ClassifyResponse::decode(&m.body) {
                Ok(response) => {
                    completed.fetch_add(1, Ordering::Relaxed);
                    let id = response.request_id;
                    if !waiters.deliver(id, Answer::Response(Box::new(response))) {
                        // Its client gave up, or it was sent to an earlier web tier of this name;
                        // the result is in the bucket.
                        debug!(%id, "response with nobody waiting");
                    }
                }
                Err(e) => {
                    // Left in the queue: it comes back after its visibility for a release of this
                    // web tier that can read it (the message format stays readable by the
                    // previous release, so this is a bug or a skipped upgrade step; say so).
                    error!(error = %e, "cannot read a response message; leaving it in the queue");
                    continue;
                }
            }
            receipts.push(m.receipt);
        }
        if !receipts.is_empty() {
            if let Err(e) = queue.delete_batch(&receipts).await {
                warn!(error = %format!("{e:#}"), "cannot delete responses");
            }
        }
    }
}

/// How long a dead letter stays hidden once read: the longest visibility SQS accepts (12 hours;
/// a longer one is refused, and the reader would then never read one).
pub const DEAD_LETTER_HIDE: Duration = Duration::from_secs(12 * 3600);

/// Tells waiting clients about their requests that landed in the dead-letter queue: whichever web
/// tier reads one sends a `DeadLettered` answer to the response queue the request names (its own
/// included). The messages stay there for an operator; each is read once in `DEAD_LETTER_HIDE`.
pub async fn dead_letters(tier: Arc<WebTier>, mut shutdown: Shutdown) {
    let queue = tier.adapters.dead_letter.clone();
    let queues = &tier.settings.queues;
    const RETRY: Duration = Duration::from_secs(5);
    let mut consumer = Consumer::new(
        queue.clone(),
        "dead letters",
        10,
        DEAD_LETTER_HIDE,
        Duration::from_secs(2),
    )
    .interruptible();
    while let Some(messages) = consumer.next(&mut shutdown).await {
        for m in messages {
            let Ok(request) = ClassifyRequest::decode(&m.body) else {
                continue;
            };
            warn!(request_id = %request.request_id, key = %request.key, "request dead-lettered");
            let reply_to = (request.reply_to.clone())
                .filter(|q| queues.is_response_queue(q))
                .unwrap_or_else(|| queues.responses.clone());
            let answer = ClassifyResponse {
                version: VERSION,
                request_id: request.request_id,
                key: request.key.clone(),
                outcome: Outcome::DeadLettered {
                    receives: queues.max_receives,
                },
                instance: tier.name.borrow().clone(),
                timings: None,
            };
            let kept = match &request.answer_record {
                Some(record) => {
                    let output = &tier.settings.buckets.output;
                    records::store_answer(tier.adapters.store.as_ref(), output, record, &answer).await
                }
                None => Ok(()),
            };
            let sent = match kept {
                Ok(()) => match tier.adapters.response_queues.open(&reply_to).await {
                    Ok(q) => q.send(&answer.encode()).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                warn!(error = %format!("{e:#}"), %reply_to, "cannot pass on a dead letter; retrying");
                let _ = queue.change_visibility(&m.receipt, RETRY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_are_hidden_no_longer_than_sqs_allows() {
        // SQS ReceiveMessage/ChangeMessageVisibility: VisibilityTimeout 0 to 43,200 seconds.
        assert!(DEAD_LETTER_HIDE <= Duration::from_secs(43_200));
    }
}

//! The one receive loop: the app tier's workers consume requests with it, the web tier's
//! dispatchers responses and dead letters. A failing receive is logged and retried after a back-off
//! that a stop request cuts short, so no consumer spins and none holds up a stop.

use std::sync::Arc;
use std::time::Duration;

use imgrec_domain::ports::{Received, WorkQueue};
use tracing::{error, warn};

use crate::shutdown::Shutdown;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Long-polls one queue until a stop is asked.
pub struct Consumer {
    queue: Arc<dyn WorkQueue>,
    /// What is received, for the logs ("requests", "responses").
    what: &'static str,
    max: usize,
    visibility: Duration,
    wait: Duration,
    backoff: Duration,
    max_backoff: Duration,
    interruptible: bool,
}

impl Consumer {
    /// Receives up to `max` messages at a time, each hidden for `visibility`, waiting up to `wait`
    /// for the first one.
    pub fn new(
        queue: Arc<dyn WorkQueue>,
        what: &'static str,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Self {
        Self {
            queue,
            what,
            max,
            visibility,
            wait,
            backoff: FIRST_BACKOFF,
            max_backoff: Duration::from_secs(5),
            interruptible: false,
        }
    }

    /// The longest pause between two tries of a failing receive; a failure that retrying cannot
    /// fix (a missing or forbidden queue) waits this long at once. Default 5 s.
    pub fn max_backoff(mut self, max_backoff: Duration) -> Self {
        self.max_backoff = max_backoff.max(FIRST_BACKOFF);
        self
    }

    /// Lets a stop cut a waiting receive short. Only for queues where that strands nothing: a
    /// receive cut short may have taken messages that then stay hidden for their visibility.
    pub fn interruptible(mut self) -> Self {
        self.interruptible = true;
        self
    }

    /// The next messages (none when the wait ran out), or `None` once a stop is asked.
    pub async fn next(&mut self, shutdown: &mut Shutdown) -> Option<Vec<Received>> {
        loop {
            if shutdown.is_requested() {
                return None;
            }
            let receive = self.queue.receive(self.max, self.visibility, self.wait);
            let got = if self.interruptible {
                tokio::select! {
                    got = receive => got,
                    _ = shutdown.requested() => return None,
                }
            } else {
                receive.await
            };
            let pause = match got {
                Ok(messages) => {
                    self.backoff = FIRST_BACKOFF;
                    return Some(messages);
                }
                Err(e) if e.is_transient() => {
                    warn!(error = %e, "cannot receive {}; retrying", self.what);
                    let pause = self.backoff;
                    self.backoff = (self.backoff * 2).min(self.max_backoff);
                    pause
                }
                Err(e) => {
                    // The queue is gone or forbidden: only an operator can fix that. Say so loudly
                    // and slowly, and stay alive so that this resumes by itself once it is fixed.
                    error!(
                        error = %e,
                        "cannot receive {}, and retrying will not help; next try in {}s",
                        self.what,
                        self.max_backoff.as_secs_f64()
                    );
                    self.max_backoff
                }
            };
            if shutdown.pause(pause).await {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use async_trait::async_trait;
    use imgrec_domain::ports::{PortError, PortResult, QueueDepth, Receipt};

    use super::*;

    /// Fails its first `failures` receives (transiently), then returns one message each time.
    struct Flaky {
        failures: u32,
        receives: AtomicU32,
    }

    #[async_trait]
    impl WorkQueue for Flaky {
        async fn send(&self, _: &[u8]) -> PortResult<()> {
            Ok(())
        }
        async fn receive(&self, _: usize, _: Duration, _: Duration) -> PortResult<Vec<Received>> {
            let n = self.receives.fetch_add(1, Ordering::SeqCst);
            if n < self.failures {
                return Err(PortError::Transient(anyhow::anyhow!("throttled")));
            }
            Ok(vec![Received {
                receipt: Receipt(n.to_string()),
                body: Vec::new(),
                receive_count: 1,
            }])
        }
        async fn delete(&self, _: &Receipt) -> PortResult<()> {
            Ok(())
        }
        async fn change_visibility(&self, _: &Receipt, _: Duration) -> PortResult<()> {
            Ok(())
        }
        async fn depth(&self) -> PortResult<QueueDepth> {
            Ok(QueueDepth::default())
        }
    }

    fn consumer(failures: u32) -> (Arc<Flaky>, Consumer) {
        let queue = Arc::new(Flaky {
            failures,
            receives: AtomicU32::new(0),
        });
        let consumer = Consumer::new(queue.clone(), "tests", 1, Duration::ZERO, Duration::ZERO);
        (queue, consumer)
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_retried_with_a_growing_pause_then_the_messages_come() {
        let (queue, mut consumer) = consumer(4);
        let (_stopper, mut shutdown) = Shutdown::new();
        let started = tokio::time::Instant::now();
        let got = consumer.next(&mut shutdown).await.expect("not stopped");
        assert_eq!(got.len(), 1);
        assert_eq!(queue.receives.load(Ordering::SeqCst), 5);
        // 100 + 200 + 400 + 800 ms of back-off.
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_back_off_at_once() {
        let (_, mut consumer) = consumer(u32::MAX);
        let (stopper, mut shutdown) = Shutdown::new();
        let asked = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            stopper.stop();
            stopper
        });
        let started = tokio::time::Instant::now();
        assert!(consumer.next(&mut shutdown).await.is_none());
        assert!(started.elapsed() < Duration::from_secs(66), "{:?}", started.elapsed());
        drop(asked.await.unwrap());
        assert!(consumer.next(&mut shutdown).await.is_none(), "stays stopped");
    }
}

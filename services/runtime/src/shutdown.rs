//! How every task of a process learns that it should stop: one `Shutdown`, as in mini-redis.
//!
//! Stop requests are counted. The first asks to stop taking work and finish what is in hand; a
//! second (a second Ctrl-C) to stop waiting for it. SIGTERM (systemd, the scaler retiring a worker)
//! and SIGINT (Ctrl-C) count the same. SIGHUP (a closed terminal; a local worker whose web tier
//! died) asks once, however often it comes: the kernel sends a parent-death signal again each time
//! the orphan passes from one exiting thread of its parent to the next, and that is one event, not
//! an operator insisting. A dropped `Stopper` counts as every request at once: a task never
//! outlives the handle that was meant to stop it.

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Watches the stop requests; clone it into each task that must stop.
#[derive(Debug, Clone)]
pub struct Shutdown {
    requests: watch::Receiver<u32>,
}

/// Asks the tasks holding its `Shutdown`s to stop.
#[derive(Debug)]
pub struct Stopper {
    requests: watch::Sender<u32>,
}

impl Stopper {
    /// One more stop request: the first stops, the second stops the waiting.
    pub fn stop(&self) {
        self.requests.send_modify(|n| *n += 1);
    }

    /// The first stop request, if none was made yet; nothing after it.
    pub fn stop_once(&self) {
        self.requests.send_if_modified(|n| {
            let first = *n == 0;
            if first {
                *n = 1;
            }
            first
        });
    }
}

impl Shutdown {
    /// A `Shutdown` and the `Stopper` that triggers it.
    pub fn new() -> (Stopper, Shutdown) {
        let (requests, rx) = watch::channel(0);
        (Stopper { requests }, Shutdown { requests: rx })
    }

    /// Counts this process's SIGTERMs and SIGINTs, and its first SIGHUP. Call inside a tokio
    /// runtime.
    pub fn on_signals() -> anyhow::Result<Shutdown> {
        let (stopper, shutdown) = Shutdown::new();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hangup = signal(SignalKind::hangup())?;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => stopper.stop(),
                    _ = int.recv() => stopper.stop(),
                    _ = hangup.recv() => stopper.stop_once(),
                }
            }
        });
        Ok(shutdown)
    }

    fn asked(&self, times: u32) -> bool {
        *self.requests.borrow() >= times || self.requests.has_changed().is_err()
    }

    /// Whether a stop has been asked.
    pub fn is_requested(&self) -> bool {
        self.asked(1)
    }

    /// Waits for the first stop request.
    pub async fn requested(&mut self) {
        let _ = self.requests.wait_for(|n| *n >= 1).await;
    }

    /// Waits for the second stop request: stop waiting for the work in hand.
    pub async fn insisted(&mut self) {
        let _ = self.requests.wait_for(|n| *n >= 2).await;
    }

    /// Waits `how_long`, or less if a stop is asked meanwhile: a back-off must never hold up a
    /// stop (the local fleet kills a worker 5 s after SIGTERM, systemd after `TimeoutStopSec`).
    /// Returns whether to stop.
    pub async fn pause(&mut self, how_long: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(how_long) => {}
            _ = self.requested() => {}
        }
        self.is_requested()
    }
}

/// A service (a web tier, a worker) running as a task of this process, for tests and in-process
/// stacks: stopping it is what a first signal does to its process.
pub struct Spawned {
    stopper: Stopper,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Spawned {
    /// Runs `service` on a task with a `Shutdown` of its own.
    pub fn spawn<F>(service: impl FnOnce(Shutdown) -> F) -> Self
    where
        F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (stopper, shutdown) = Shutdown::new();
        let task = tokio::spawn(service(shutdown));
        Self { stopper, task }
    }

    /// Asks it to stop, and waits until it has.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stopper.stop();
        self.task.await?
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[tokio::test]
    async fn a_pause_ends_when_a_stop_is_asked() {
        let (stopper, mut shutdown) = Shutdown::new();
        let started = Instant::now();
        let asked = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            stopper.stop();
            stopper
        });
        assert!(shutdown.pause(Duration::from_secs(10)).await);
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        drop(asked.await.unwrap());
    }

    #[tokio::test]
    async fn a_pause_runs_out_when_nobody_asks() {
        let (_stopper, mut shutdown) = Shutdown::new();
        assert!(!shutdown.pause(Duration::from_millis(20)).await);
        assert!(!shutdown.is_requested());
    }

    /// A first request, made by `stop` or by `stop_once` however often, is told apart from a
    /// second one.
    #[tokio::test]
    async fn the_second_request_is_told_apart_from_the_first() {
        let firsts: [fn(&Stopper); 2] = [Stopper::stop, |s| (0..3).for_each(|_| s.stop_once())];
        for first in firsts {
            let (stopper, mut shutdown) = Shutdown::new();
            first(&stopper);
            shutdown.requested().await;
            assert!(tokio::time::timeout(Duration::from_millis(50), shutdown.insisted())
                .await
                .is_err());
            stopper.stop();
            shutdown.insisted().await;
        }
    }

    #[tokio::test]
    async fn a_dropped_stopper_stops_everything() {
        let (stopper, mut shutdown) = Shutdown::new();
        drop(stopper);
        assert!(shutdown.is_requested());
        shutdown.requested().await;
        shutdown.insisted().await;
        assert!(shutdown.pause(Duration::from_secs(10)).await);
    }
}

//! How every task of a process learns that it should stop: one `Shutdown`, as in mini-redis.
//!
//! Stop requests are counted. The first asks to stop taking work and finish what is in hand; a
//! second (a second Ctrl-C) to stop waiting for it. SIGTERM (systemd, the scaler retiring a worker)
//! and SIGINT (Ctrl-C) count the same. A dropped `Stopper` counts as every request at once: a task
//! never outlives the handle that was meant to stop it.

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
}

impl Shutdown {
    /// A `Shutdown` and the `Stopper` that triggers it.
    pub fn new() -> (Stopper, Shutdown) {
        let (requests, rx) = watch::channel(0);
        (Stopper { requests }, Shutdown { requests: rx })
    }

    /// Counts this process's SIGTERMs and SIGINTs. Call inside a tokio runtime.
    pub fn on_signals() -> anyhow::Result<Shutdown> {
        let (stopper, shutdown) = Shutdown::new();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::spawn(async move {
            loop {
                tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
                stopper.stop();
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

    #[tokio::test]
    async fn the_second_request_is_told_apart_from_the_first() {
        let (stopper, mut shutdown) = Shutdown::new();
        stopper.stop();
        shutdown.requested().await;
        assert!(tokio::time::timeout(Duration::from_millis(50), shutdown.insisted())
            .await
            .is_err());
        stopper.stop();
        shutdown.insisted().await;
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

//! SIGTERM (systemd, the scaler retiring a worker) and SIGINT (Ctrl-C) mean the same: stop taking
//! work, finish what is in hand, exit.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// A receiver that turns true on the first SIGTERM or SIGINT. Call inside a tokio runtime.
pub fn on_signal() -> anyhow::Result<watch::Receiver<bool>> {
    let (tx, rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        let _ = tx.send(true);
    });
    Ok(rx)
}

/// Waits `how_long`, or less if `shutdown` turns true meanwhile: a back-off must never hold up a
/// stop (the local fleet kills a worker 5 s after SIGTERM, systemd after `TimeoutStopSec`).
/// Returns whether to stop.
pub async fn pause(how_long: std::time::Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(how_long) => *shutdown.borrow(),
        // A dropped sender means nobody can ask to stop any more: wait out the pause.
        changed = shutdown.changed() => match changed {
            Ok(()) => *shutdown.borrow(),
            Err(_) => {
                tokio::time::sleep(how_long).await;
                false
            }
        },
    }
}

/// Counts SIGTERMs and SIGINTs: the first asks to stop, the second to stop waiting.
pub fn signals() -> anyhow::Result<watch::Receiver<u32>> {
    let (tx, rx) = watch::channel(0);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        loop {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            tx.send_modify(|n| *n += 1);
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[tokio::test]
    async fn a_pause_ends_when_a_stop_is_asked() {
        let (stop, mut shutdown) = watch::channel(false);
        let started = Instant::now();
        let asked = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            stop.send(true).unwrap();
            stop
        });
        assert!(pause(Duration::from_secs(10), &mut shutdown).await);
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        drop(asked.await.unwrap());
    }

    #[tokio::test]
    async fn a_pause_runs_out_when_nobody_asks() {
        let (_stop, mut shutdown) = watch::channel(false);
        assert!(!pause(Duration::from_millis(20), &mut shutdown).await);
    }
}

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

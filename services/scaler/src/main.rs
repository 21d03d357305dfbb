//! `scaler`: the scaler as its own process (the web instance runs it beside the web tier on AWS;
//! locally the web tier hosts it unless `web.run_scaler = false`).

use std::process::ExitCode;

use imgrec_core::backend::{self, Ports};
use imgrec_core::config::Settings;
use scaler::Scaler;
use tokio::sync::watch;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let ports = Ports::connect(&settings).await?;
    let worker = std::env::current_exe()?.with_file_name("app-tier");
    let fleet = backend::fleet(&settings, worker).await?;
    let scaler = Scaler::new(settings.scaler.policy()?, ports.requests, fleet);
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        }
        let _ = tx.send(true);
    });
    scaler.run(settings.scaler.tick(), rx).await
}

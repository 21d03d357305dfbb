//! Log setup shared by the binaries: `RUST_LOG` filter (default info), stderr, colour only on a terminal.

use std::io::{IsTerminal, Write};

pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // A log line that cannot be written (stderr a file on a full disk, a closed pipe) is
        // dropped. By default tracing-subscriber reports it with `eprintln!`, which panics on the
        // same failure, in whichever task logged: a full disk closed HTTP connections without an
        // answer and ended the scaler.
        .log_internal_errors(false)
        .init();
}

/// Says why a binary is exiting with a failure, on stderr if it can be written.
pub fn report_exit(e: &anyhow::Error) {
    let _ = writeln!(std::io::stderr(), "error: {e:#}");
}

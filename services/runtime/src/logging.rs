//! Log setup shared by the binaries: `RUST_LOG` filter (default info), stderr, colour only on a
//! terminal, and never a task waiting on its log.
//!
//! Lines go to stderr from a thread of their own through a bounded buffer: a reader that stops
//! reading (`make run | less`, paused) or a disk that is full costs log lines, never answers.
//! Written inline, a stalled pipe stalled every task that logged once its 64 KiB filled (seen: a
//! stack at `RUST_LOG=trace` stopped answering after 97 uploads).

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};

/// Lines held while stderr is not keeping up; past this they are dropped (and counted).
const BUFFERED_LINES: usize = 10_000;
/// How long an exit waits for a write to stderr that is under way before it gives up on the rest.
const STALLED_AFTER: Duration = Duration::from_secs(1);

/// The process's log writer. Keep it for the life of `main`: dropping it writes out what is still
/// buffered, unless stderr has stopped taking lines.
pub struct Logs {
    lines: NonBlocking,
    writer: Option<WorkerGuard>,
    writing: Arc<AtomicBool>,
}

pub fn init() -> Logs {
    let writing = Arc::new(AtomicBool::new(false));
    let stderr = Watched {
        inner: io::stderr(),
        writing: writing.clone(),
    };
    // Buffered: the writer thread flushes after each batch it takes from the channel.
    let (lines, writer) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("log-writer")
        .finish(io::BufWriter::new(stderr));
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(lines.clone())
        .with_ansi(io::stderr().is_terminal())
        // A line that cannot be formatted or sent is dropped rather than reported with
        // `eprintln!`, which panics when stderr cannot be written (a full disk).
        .log_internal_errors(false)
        .init();
    Logs {
        lines,
        writer: Some(writer),
        writing,
    }
}

impl Logs {
    /// The process's exit code for `result`; a failure is said on stderr after every line logged
    /// before it.
    pub fn exit(mut self, result: anyhow::Result<ExitCode>) -> ExitCode {
        match result {
            Ok(code) => code,
            Err(e) => {
                self.say(&format!("error: {e:#}\n"));
                ExitCode::FAILURE
            }
        }
    }

    fn say(&mut self, line: &str) {
        let _ = self.lines.write_all(line.as_bytes());
    }

    /// Whether a write to stderr has been under way for `STALLED_AFTER`: its reader has stopped.
    fn stalled(&self) -> bool {
        let since = Instant::now();
        while self.writing.load(Ordering::Acquire) {
            if since.elapsed() >= STALLED_AFTER {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        let dropped = self.lines.error_counter().dropped_lines();
        if dropped > 0 {
            self.say(&format!("{dropped} log lines were dropped: stderr did not keep up\n"));
        }
        let Some(writer) = self.writer.take() else { return };
        if self.stalled() {
            // The guard would wait for the writer thread, and says so with `println!`, which can
            // block on the same stalled pipe: leave the thread and its lines behind instead.
            std::mem::forget(writer);
        }
        // Dropped here: waits (at most ~1 s) for the writer thread to write out the buffer.
    }
}

/// stderr, marking when a write is under way, so that an exit can tell a slow reader from a
/// stopped one.
struct Watched {
    inner: io::Stderr,
    writing: Arc<AtomicBool>,
}

impl Write for Watched {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writing.store(true, Ordering::Release);
        let written = self.inner.write(buf);
        self.writing.store(false, Ordering::Release);
        written
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

//! Logging where stderr does not take lines: a file on a full disk (`/dev/full` fails every write
//! with ENOSPC) and a pipe whose reader never reads. Each case is this binary run again as a child
//! that logs and exits as the tiers do (the log subscriber is process-wide, and the test harness
//! would capture what the child writes to stderr), so no harness.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const CHILD: &str = "IMGREC_LOGGING_TEST_LINES";
/// Far past a pipe's 64 KiB and the writer's buffer of lines.
const MANY: usize = 20_000;

fn main() -> std::process::ExitCode {
    if let Ok(lines) = std::env::var(CHILD) {
        return child(lines.parse().expect("a line count"));
    }
    let tests: [(&str, fn()); 3] = [
        ("every_line_is_written_in_order_and_the_exit_reason_last", in_order),
        ("a_full_disk_drops_lines_and_panics_nothing", full_disk),
        (
            "a_reader_that_never_reads_stalls_no_logging_task_nor_the_exit",
            stalled_reader,
        ),
    ];
    println!("\nrunning {} tests", tests.len());
    for (name, test) in tests {
        test();
        println!("test {name} ... ok");
    }
    println!(
        "\ntest result: ok. {} passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n",
        tests.len()
    );
    std::process::ExitCode::SUCCESS
}

/// A tier's life in short: lines logged from another thread, then an exit with an error.
fn child(lines: usize) -> std::process::ExitCode {
    let logs = imgrec_runtime::logging::init();
    let logged = std::thread::spawn(move || {
        for i in 0..lines {
            tracing::warn!("line {i}");
        }
    })
    .join();
    let result = match logged {
        Ok(()) => Err(anyhow::anyhow!("the reason")),
        Err(_) => Err(anyhow::anyhow!("the logging thread panicked")),
    };
    logs.exit(result)
}

fn spawn(lines: usize, stdout: Stdio, stderr: Stdio) -> Child {
    Command::new(std::env::current_exe().expect("this test's path"))
        .env(CHILD, lines.to_string())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("run the child")
}

/// The child's exit; a child still running after a minute has hung, which is the failure.
fn exit_of(mut child: Child) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the child hung: logging blocked it");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn in_order() {
    let mut child = spawn(1_000, Stdio::null(), Stdio::piped());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert_eq!(exit_of(child).code(), Some(1));
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1_001, "{stderr}");
    for (i, line) in lines[..1_000].iter().enumerate() {
        assert!(line.ends_with(&format!(" line {i}")), "line {i}: {line}");
    }
    assert_eq!(lines[1_000], "error: the reason");
}

fn full_disk() {
    let full = std::fs::File::options()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let status = exit_of(spawn(100, Stdio::null(), full.into()));
    // 101 would be a panic: tracing-subscriber's own `eprintln!` on a line it could not write.
    assert_eq!(status.code(), Some(1), "{status}");
}

fn stalled_reader() {
    // stdout too, as in `make run 2>&1 | less`, paused.
    let (reader, mut writer) = io::pipe().expect("a pipe");
    fill(&mut writer);
    let stdout = writer.try_clone().expect("a second end");
    let status = exit_of(spawn(MANY, stdout.into(), writer.into()));
    assert_eq!(status.code(), Some(1), "{status}");
    drop(reader);
}

/// Fills the pipe to its last byte, so that the child's first write blocks (a write that fits in
/// the pipe's last page would not, and whether one does depends on the timing of the writes).
fn fill(pipe: &mut io::PipeWriter) {
    let fd = pipe.as_raw_fd();
    // SAFETY: fcntl on a descriptor this process owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    assert!(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } == 0);
    for chunk in [&[0u8; 4096][..], &[0u8; 1][..]] {
        loop {
            match pipe.write(chunk) {
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("fill the pipe: {e}"),
            }
        }
    }
    assert!(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } == 0);
}

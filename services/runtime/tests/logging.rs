//! Logging where stderr cannot be written (a file on a full disk: `/dev/full` fails every write
//! with ENOSPC). Its own binary without the test harness: the harness captures `eprintln!`, which
//! would hide the panic this checks for, and the log subscriber is process-wide.

use std::fs::File;
use std::os::fd::AsRawFd;

fn main() {
    let full = File::options().write(true).open("/dev/full").expect("/dev/full");
    // SAFETY: plain fd calls on descriptors this process owns; fd 2 is restored below.
    let saved = unsafe { libc::dup(2) };
    assert!(saved >= 0 && unsafe { libc::dup2(full.as_raw_fd(), 2) } == 2);

    imgrec_runtime::logging::init();
    let logged = std::thread::spawn(|| {
        for i in 0..100 {
            tracing::warn!(i, "a log line on a full disk");
        }
        imgrec_runtime::logging::report_exit(&anyhow::anyhow!("an exit on a full disk"));
    })
    .join();

    unsafe { libc::dup2(saved, 2) };
    assert!(
        logged.is_ok(),
        "a log line that cannot be written panicked the thread that logged it"
    );
    println!("\nrunning 1 test\ntest logging_on_a_full_disk_drops_lines_and_panics_nothing ... ok\n");
    println!("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n");
}

//! The stop signals as a process hears them (its own test binary: signals are process-wide).

use std::time::Duration;

use imgrec_runtime::shutdown::Shutdown;

fn send(signal: &str) {
    let sent = std::process::Command::new("kill")
        .args([signal, &std::process::id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
}

/// A local worker hears of its web tier's death by SIGHUP, sent again each time the kernel hands
/// the orphan from one exiting thread of its parent to the next: one stop request (drain), never
/// the second one that abandons the work in hand. A SIGTERM after it is a second request.
#[tokio::test]
async fn a_hangup_asks_to_stop_once_however_often_it_comes() {
    let mut shutdown = Shutdown::on_signals().unwrap();
    send("-HUP");
    tokio::time::timeout(Duration::from_secs(5), shutdown.requested())
        .await
        .expect("SIGHUP asks to stop");
    for _ in 0..3 {
        send("-HUP");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), shutdown.insisted())
            .await
            .is_err(),
        "repeated SIGHUPs counted as a second stop request"
    );
    send("-TERM");
    tokio::time::timeout(Duration::from_secs(5), shutdown.insisted())
        .await
        .expect("a SIGTERM after it is a second request");
}

//! systemd's service watchdog (`WatchdogSec=`): a worker that stops making progress stops
//! notifying, and systemd kills and restarts it. Without `NOTIFY_SOCKET` (not under systemd, or no
//! watchdog configured) this does nothing.

use std::os::unix::net::UnixDatagram;

/// Sends `WATCHDOG=1` to systemd's notification socket, if there is one.
pub fn notify() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = match bytes.strip_prefix(b"@") {
        // An abstract socket: '@' stands for the leading NUL byte.
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|addr| socket.send_to_addr(b"WATCHDOG=1", &addr))
        }
        None => socket.send_to(b"WATCHDOG=1", &path),
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "cannot notify the systemd watchdog");
    }
}

//! The HTTP server: warp's routes on hyper connections with the limits a public server needs and
//! warp's own `serve` does not set (it runs hyper without a timer, so no timeout applies).
//!
//! - headers must arrive within `header_timeout` of connecting or of the previous response, which
//!   also closes idle keep-alive connections (bodies have their own deadline in the upload handler);
//! - at most `max_connections` connections are open, kept below the process's file limit: past
//!   that, new connections wait in the kernel's accept backlog instead of failing with EMFILE;
//! - on shutdown the listener closes at once and each connection finishes the request it is
//!   serving, then closes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use imgrec_runtime::shutdown::Shutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};
use warp::reply::Response;
use warp::Filter;

/// Descriptors kept free for everything that is not a client connection (queues, buckets, logs,
/// worker pipes).
const RESERVED_FDS: u64 = 128;

#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// Raises the soft open-file limit to the hard one and returns how many connections fit below it.
pub fn connection_limit(configured: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write to and read from a valid rlimit struct.
    let fds = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return configured.min(1024 - RESERVED_FDS as usize);
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
        limit.rlim_cur
    };
    let fit = fds.saturating_sub(RESERVED_FDS).max(1);
    configured.min(usize::try_from(fit).unwrap_or(usize::MAX))
}

/// Serves `routes` on `listener` until a stop is asked, then lets open connections finish their
/// current request; returns when every connection is closed.
pub async fn serve<F>(listener: TcpListener, routes: F, limits: ServerLimits, mut shutdown: Shutdown)
where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = shutdown.requested() => break,
        };
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the backlog holds the client.
                    warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.requested() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(warp::service(routes.clone()));
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    info!(open = graceful.count(), "stopped accepting; finishing open connections");
    graceful.shutdown().await;
}

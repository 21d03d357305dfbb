//! A web tier's name (`web-instanceK`) and what it owns.
//!
//! Locally the name is a lease in the shared database, renewed in the background, so that web
//! tiers on one data folder get distinct names and a new one can reuse a gone one's name. A web
//! tier can lose its name without knowing it is gone: paused past the lease (SIGSTOP, a VM pause, a
//! swap storm), it finds another web tier under its name when it resumes. So nothing this web tier
//! must own alone hangs on the name: its response queue and its workers belong to this process
//! (`holder`), and a web tier that finds its name taken claims another and carries on; answers
//! to the requests it queued before the pause still reach it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use imgrec_domain::ports::Lease;
use tokio::sync::watch;

use crate::settings::{Backend, Settings};

/// How long a local name is held without renewal; renewed every fifth of it.
const WEB_NAME_TTL: Duration = Duration::from_secs(5);
/// Web tiers are `web-instance1`, `web-instance2`, ...
const PREFIX: &str = "web-instance";

pub struct WebTierName {
    /// The name held now: it changes if this web tier loses it and claims another.
    pub name: watch::Receiver<String>,
    /// This process, uniquely: locally, owner of its workers and holder of its leases (its name,
    /// the scaler's).
    pub holder: String,
    /// Where this web tier's answers come back: locally one queue per process, named after the
    /// name it started with and the process.
    pub response_queue: String,
    /// Locally: the task renewing the name's lease, and the lease it holds now.
    keeper: Option<(tokio::task::JoinHandle<()>, Held)>,
}

/// The lease of the name held now (another one's after a lost name).
type Held = Arc<Mutex<Arc<dyn Lease>>>;

impl WebTierName {
    pub fn current(&self) -> String {
        self.name.borrow().clone()
    }

    /// Gives the name back at once, so that a web tier started next may take it.
    pub async fn release(mut self) {
        let Some((keeper, held)) = self.keeper.take() else {
            return;
        };
        keeper.abort();
        let lease = held.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Err(e) = lease.release().await {
            tracing::warn!(error = %format!("{e:#}"), "cannot give this web tier's name back");
        }
    }
}

impl Drop for WebTierName {
    fn drop(&mut self) {
        // Not released: the name expires after its lease.
        if let Some((keeper, _)) = self.keeper.take() {
            keeper.abort();
        }
    }
}

/// Opens the lease of one name for this process.
type OpenLease = Arc<dyn Fn(&str) -> anyhow::Result<Arc<dyn Lease>> + Send + Sync>;

pub async fn web_tier_name(settings: &Settings) -> anyhow::Result<WebTierName> {
    let configured = settings.web.name.clone().filter(|n| !n.is_empty());
    if settings.backend == Backend::Aws {
        // One web tier per configured name (one per instance): the queue Terraform made for it.
        let name = configured.unwrap_or_else(|| format!("{PREFIX}1"));
        let holder = super::unique_holder(&name);
        let response_queue = settings.queues.response_queue_of(&name);
        return Ok(WebTierName {
            name: watch::channel(name).1,
            holder,
            response_queue,
            keeper: None,
        });
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let holder = format!("pid {} {id}", std::process::id());
    let open: OpenLease = {
        let (settings, holder) = (settings.clone(), holder.clone());
        Arc::new(move |name: &str| super::lease(&settings, name, &holder))
    };
    let lease = match &configured {
        Some(name) => {
            let lease = open(name)?;
            anyhow::ensure!(
                hold_at_start(&lease).await?,
                "a web tier named {name} is already running on {}",
                settings.data_dir.display()
            );
            lease
        }
        None => claim_lowest(&open).await?,
    };
    let name = lease.name().to_owned();
    let response_queue = settings.queues.response_queue_of(&format!("{name}-{}", &id[..8]));
    let (name_tx, name_rx) = watch::channel(name);
    let held = Arc::new(Mutex::new(lease));
    let keeper = tokio::spawn(keep(held.clone(), open, configured.is_some(), name_tx));
    Ok(WebTierName {
        name: name_rx,
        holder,
        response_queue,
        keeper: Some((keeper, held)),
    })
}

/// The lowest `web-instanceK` nobody holds, held.
async fn claim_lowest(open: &OpenLease) -> anyhow::Result<Arc<dyn Lease>> {
    for k in 1.. {
        let lease = open(&format!("{PREFIX}{k}"))?;
        if hold_at_start(&lease).await? {
            return Ok(lease);
        }
    }
    unreachable!("one of infinitely many names is free")
}

/// How long a starting web tier keeps trying to claim a name while the shared database stays
/// locked (another process stopped in the middle of a write holds its lock until it resumes).
const CLAIM_PATIENCE: Duration = Duration::from_secs(30);

/// `lease.hold`, tried again while it fails (a locked database) for up to `CLAIM_PATIENCE`.
async fn hold_at_start(lease: &Arc<dyn Lease>) -> anyhow::Result<bool> {
    let deadline = tokio::time::Instant::now() + CLAIM_PATIENCE;
    let mut pause = Duration::from_millis(100);
    loop {
        match lease.hold(WEB_NAME_TTL).await {
            Ok(held) => return Ok(held),
            Err(e) if tokio::time::Instant::now() + pause < deadline => {
                tracing::warn!(error = %format!("{e:#}"), name = lease.name(), "cannot claim a web tier name yet; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Renews the name; if another web tier holds it (this one was paused past its lease), claims the
/// lowest free one instead (a configured name is waited for: it is the operator's to give).
async fn keep(held: Held, open: OpenLease, configured: bool, name: watch::Sender<String>) {
    let mut tick = tokio::time::interval(WEB_NAME_TTL / 5);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let lease = held.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match lease.hold(WEB_NAME_TTL).await {
            Ok(true) => {}
            Ok(false) if configured => {
                tracing::error!(
                    name = lease.name(),
                    "another web tier holds this web tier's configured name"
                );
            }
            Ok(false) => match claim_lowest(&open).await {
                Ok(new) => {
                    tracing::warn!(
                        lost = lease.name(),
                        name = new.name(),
                        "another web tier took this web tier's name (paused past its lease?); going on as {}",
                        new.name()
                    );
                    name.send_replace(new.name().to_owned());
                    *held.lock().unwrap_or_else(|p| p.into_inner()) = new;
                }
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot claim a new name for this web tier"),
            },
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot renew this web tier's name"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Fails (as a locked database does) its first `failures` holds.
    struct Locked {
        failures: u32,
        tries: AtomicU32,
    }

    #[async_trait::async_trait]
    impl Lease for Locked {
        async fn hold(&self, _: Duration) -> anyhow::Result<bool> {
            let n = self.tries.fetch_add(1, Ordering::SeqCst);
            anyhow::ensure!(n >= self.failures, "database is locked");
            Ok(true)
        }
        async fn release(&self) -> anyhow::Result<()> {
            Ok(())
        }
        fn name(&self) -> &str {
            "web-instance1"
        }
        fn holder(&self) -> &str {
            "test"
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_starting_web_tier_waits_out_a_locked_database_then_gives_up() {
        let briefly: Arc<dyn Lease> = Arc::new(Locked {
            failures: 5,
            tries: AtomicU32::new(0),
        });
        assert!(hold_at_start(&briefly).await.unwrap());
        let started = tokio::time::Instant::now();
        let for_good: Arc<dyn Lease> = Arc::new(Locked {
            failures: u32::MAX,
            tries: AtomicU32::new(0),
        });
        let e = hold_at_start(&for_good).await.unwrap_err();
        assert!(e.to_string().contains("locked"), "{e}");
        let waited = started.elapsed();
        assert!(waited <= CLAIM_PATIENCE && waited > CLAIM_PATIENCE / 2, "{waited:?}");
    }
}

//! A web tier's name (`web-instanceK`) and what it owns.
//!
//! Locally the name is a lease in the shared database, renewed in the background, so that web
//! tiers on one data folder get distinct names and a new one can reuse a gone one's name. A web
//! tier can lose its name without knowing it is gone: paused past the lease (SIGSTOP, a VM pause, a
//! swap storm), it finds another web tier under its name when it resumes. So nothing this web tier
//! must own alone hangs on the name: its response queue and its workers belong to this process
//! (`holder`), and a web tier that finds its name taken claims another and carries on; answers
//! to the requests it queued before the pause still reach it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use imgrec_domain::config::{Backend, Settings};
use imgrec_domain::ports::Lease;
use imgrec_local::SqliteLease;
use tokio::sync::watch;

/// How long a local name is held without renewal; renewed every fifth of it.
const WEB_NAME_TTL: Duration = Duration::from_secs(5);

pub struct WebTierName {
    /// The name held now: it changes if this web tier loses it and claims another.
    pub name: watch::Receiver<String>,
    /// This process, uniquely: locally, owner of its workers and holder of its leases (its name,
    /// the scaler's).
    pub holder: String,
    /// Where this web tier's answers come back: locally one queue per process, named after the
    /// name it started with and the process.
    pub response_queue: String,
    /// Locally: the renewing task, and the database to give the name back in.
    keeper: Option<(tokio::task::JoinHandle<()>, PathBuf)>,
}

impl WebTierName {
    pub fn current(&self) -> String {
        self.name.borrow().clone()
    }
}

impl Drop for WebTierName {
    fn drop(&mut self) {
        if let Some((keeper, db)) = self.keeper.take() {
            keeper.abort();
            // A web tier started next may take the name at once.
            let name = self.current();
            let released = imgrec_local::open_db(&db)
                .and_then(|conn| Ok(imgrec_local::lease::release(&conn, &name, &self.holder)?));
            if let Err(e) = released {
                tracing::warn!(error = %format!("{e:#}"), "cannot give this web tier's name back");
            }
        }
    }
}

pub async fn web_tier_name(settings: &Settings) -> anyhow::Result<WebTierName> {
    let configured = settings.web.name.clone().filter(|n| !n.is_empty());
    if settings.backend == Backend::Aws {
        // One web tier per configured name (one per instance): the queue Terraform made for it.
        let name = configured.unwrap_or_else(|| "web-instance1".into());
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
    let db = settings.queue_db();
    let mut conn = imgrec_local::open_db(&db)?;
    let name = match &configured {
        Some(name) => {
            anyhow::ensure!(
                imgrec_local::lease::try_hold(&conn, name, &holder, WEB_NAME_TTL)?,
                "a web tier named {name} is already running on {}",
                settings.data_dir.display()
            );
            name.clone()
        }
        None => imgrec_local::lease::claim_lowest(&mut conn, "web-instance", &holder, WEB_NAME_TTL)?,
    };
    let response_queue = settings.queues.response_queue_of(&format!("{name}-{}", &id[..8]));
    let (name_tx, name_rx) = watch::channel(name);
    let keeper = tokio::spawn(keep(db.clone(), holder.clone(), configured, name_tx));
    Ok(WebTierName {
        name: name_rx,
        holder,
        response_queue,
        keeper: Some((keeper, db)),
    })
}

/// Renews the name; if another web tier holds it (this one was paused past its lease), claims the
/// lowest free one instead (a configured name is waited for: it is the operator's to give).
async fn keep(db: PathBuf, holder: String, configured: Option<String>, name: watch::Sender<String>) {
    let mut tick = tokio::time::interval(WEB_NAME_TTL / 5);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lease: Option<SqliteLease> = None;
    loop {
        tick.tick().await;
        let current = name.borrow().clone();
        if lease.as_ref().is_none_or(|l| l.name() != current) {
            match SqliteLease::open(&db, &current, &holder) {
                Ok(opened) => lease = Some(opened),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot open this web tier's name lease");
                    continue;
                }
            }
        }
        let Some(held) = &lease else { continue };
        match held.hold(WEB_NAME_TTL).await {
            Ok(true) => {}
            Ok(false) if configured.is_some() => {
                tracing::error!(name = current, "another web tier holds this web tier's configured name");
            }
            Ok(false) => match claim(&db, &holder).await {
                Ok(new) => {
                    tracing::warn!(
                        lost = current,
                        name = new,
                        "another web tier took this web tier's name (paused past its lease?); going on as {new}"
                    );
                    name.send_replace(new);
                }
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot claim a new name for this web tier"),
            },
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot renew this web tier's name"),
        }
    }
}

async fn claim(db: &std::path::Path, holder: &str) -> anyhow::Result<String> {
    let (db, holder) = (db.to_path_buf(), holder.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut conn = imgrec_local::open_db(&db)?;
        Ok(imgrec_local::lease::claim_lowest(
            &mut conn,
            "web-instance",
            &holder,
            WEB_NAME_TTL,
        )?)
    })
    .await
    .context("claiming a name")?
}

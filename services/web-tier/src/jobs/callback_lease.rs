//! Who delivers a job's callback: a lease kept beside the job in the output bucket
//! (`records::pending_callback`), so that the callback outlives the web tier that took the job.
//! That web tier holds it from the job's `202`, renewing it while it waits for the job to finish,
//! and deletes it once the callback is delivered (or given up on). Every web tier looks at the
//! pending callbacks once a lease and takes over one whose lease lapsed (its holder died or was
//! stopped): of several looking at once, the one that creates the takeover's claim for the next
//! generation first. A callback is thus delivered once by the web tiers that live, and at least
//! once if a holder dies: again only when it died between a delivery and the lease's deletion.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use imgrec_domain::messages::now_ms;
use imgrec_domain::ports::PortResult;
use imgrec_domain::records::{self, CallbackLease, JobId};
use imgrec_runtime::shutdown::Shutdown;

use crate::state::WebTier;

/// Leases given up at once on a stop.
const RELEASES: usize = 16;

/// The generation of each callback this web tier holds.
#[derive(Default)]
pub struct CallbacksHeld(Mutex<HashMap<JobId, u64>>);

impl CallbacksHeld {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, u64>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl WebTier {
    /// Writes this web tier's lease on `id`'s callback as `generation`, until `until_ms`.
    async fn put_lease(&self, id: &JobId, generation: u64, until_ms: u64) -> PortResult<()> {
        let lease = CallbackLease {
            holder: self.holder.clone(),
            generation,
            until_ms,
        };
        let bytes = Bytes::from(serde_json::to_vec(&lease).expect("leases serialize"));
        let output = &self.settings.buckets.output;
        self.adapters
            .store
            .put(output, &records::pending_callback(id), bytes)
            .await?;
        Ok(())
    }

    /// Writes this web tier's lease on `id`'s callback as `generation`, for a lease from now.
    pub(super) async fn hold_callback(&self, id: &JobId, generation: u64) -> PortResult<()> {
        let until_ms = now_ms().saturating_add(self.settings.jobs.callback_lease().as_millis() as u64);
        self.put_lease(id, generation, until_ms).await?;
        self.callbacks.lock().insert(id.clone(), generation);
        Ok(())
    }

    /// The lease on `id`'s callback as it is kept, if any.
    pub(super) async fn callback_lease(&self, id: &JobId) -> PortResult<Option<CallbackLease>> {
        let output = &self.settings.buckets.output;
        let bytes = self
            .adapters
            .store
            .get(output, &records::pending_callback(id), None)
            .await?;
        // One this release cannot read is treated as lapsed: it is taken over, not left forever.
        Ok(bytes.map(|b| {
            serde_json::from_slice(&b).unwrap_or(CallbackLease {
                holder: String::new(),
                generation: 0,
                until_ms: 0,
            })
        }))
    }

    /// Renews this web tier's lease on `id`'s callback as `generation`, unless another web tier
    /// took it over meanwhile (this one was too slow to renew) or is done with it: then false, and
    /// this one lets go.
    pub(super) async fn renew_callback(&self, id: &JobId, generation: u64) -> PortResult<bool> {
        let lease = self.callback_lease(id).await?;
        if lease.is_none_or(|l| l.generation != generation || l.holder != self.holder) {
            tracing::info!(job = %id, "another web tier took over the job's callback (or delivered it)");
            self.forget_callback(id);
            return Ok(false);
        }
        self.hold_callback(id, generation).await?;
        Ok(true)
    }

    /// Renews the lease on `id`'s callback every third of a lease until another web tier holds it
    /// or this one stops (its leases are then given up at once, `release_callbacks`).
    pub(super) async fn keep_callback(&self, id: &JobId, generation: u64) {
        let every = self.settings.jobs.callback_lease() / 3;
        loop {
            tokio::time::sleep(every).await;
            if self.waiters.is_closed() {
                return;
            }
            match self.renew_callback(id, generation).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(job = %id, error = %format!("{e:#}"), "cannot renew the lease on a job's callback")
                }
            }
        }
    }

    /// The callback is delivered or given up on: nobody holds it any more.
    pub(super) async fn drop_callback(&self, id: &JobId) {
        self.callbacks.lock().remove(id);
        let output = &self.settings.buckets.output;
        if let Err(e) = self.adapters.store.delete(output, &records::pending_callback(id)).await {
            tracing::warn!(job = %id, error = %format!("{e:#}"), "cannot delete a job's callback lease; another web tier may deliver it again");
        }
    }

    /// Stops holding `id`'s callback without a word to the lease (another holds it, or this web
    /// tier stops and gives every callback up at once: `release_callbacks`).
    pub(super) fn forget_callback(&self, id: &JobId) {
        self.callbacks.lock().remove(id);
    }

    /// On a stop: gives up every callback held, so that another web tier takes them over at its
    /// next look rather than once their leases lapse.
    pub async fn release_callbacks(&self) {
        let held: Vec<(JobId, u64)> = self.callbacks.lock().drain().collect();
        // Several at once: a stop is bounded (systemd's 90 s on EC2), and a web tier may hold many.
        futures::stream::iter(held)
            .for_each_concurrent(RELEASES, |(id, generation)| async move {
                if let Err(e) = self.put_lease(&id, generation, 0).await {
                    tracing::warn!(job = %id, error = %format!("{e:#}"), "cannot give up a job's callback; another web tier takes it once its lease lapses");
                }
            })
            .await;
    }

    /// Takes over the pending callbacks whose leases lapsed, and watches their jobs; how many.
    /// One that cannot be read or taken is skipped (and logged), not in the way of the others.
    pub async fn adopt_callbacks(self: &Arc<Self>) -> anyhow::Result<usize> {
        let output = &self.settings.buckets.output;
        let mut adopted = 0;
        for key in self.adapters.store.list(output, records::CALLBACKS).await? {
            let Some(id) = records::pending_callback_id(&key) else {
                continue;
            };
            match self.adopt_callback(&id).await {
                Ok(true) => adopted += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(job = %id, error = %format!("{e:#}"), "cannot take over a job's callback"),
            }
        }
        Ok(adopted)
    }

    /// Takes over `id`'s callback if its lease lapsed and this web tier is the first to claim the
    /// next generation.
    async fn adopt_callback(self: &Arc<Self>, id: &JobId) -> anyhow::Result<bool> {
        let output = &self.settings.buckets.output;
        let store = &self.adapters.store;
        if self.callbacks.lock().contains_key(id) {
            return Ok(false);
        }
        let Some(lease) = self.callback_lease(id).await? else {
            return Ok(false);
        };
        if lease.until_ms > now_ms() {
            return Ok(false);
        }
        let Some(job) = self.job(id).await? else {
            // Its job is gone (past its retention, or never recorded): nothing to call back.
            store.delete(output, &records::pending_callback(id)).await?;
            return Ok(false);
        };
        let generation = lease.generation + 1;
        let claim = records::callback_takeover(id, generation);
        if !store
            .put_if_absent(output, &claim, Bytes::from(self.holder.clone()))
            .await?
        {
            return Ok(false);
        }
        self.hold_callback(id, generation).await?;
        tracing::info!(job = %id, generation, from = %lease.holder, "took over a job's callback whose lease lapsed");
        self.metrics.callbacks.with_label_values(&["taken_over"]).inc();
        tokio::spawn(self.clone().call_back_when_done(job, generation));
        Ok(true)
    }
}

/// Looks for lapsed callbacks once a lease until a stop, starting at once (a web tier started
/// after another stopped takes over what that one gave up).
pub async fn adopt_callbacks(tier: Arc<WebTier>, mut shutdown: Shutdown) {
    let every = tier.settings.jobs.callback_lease();
    loop {
        if let Err(e) = tier.adopt_callbacks().await {
            tracing::warn!(error = %format!("{e:#}"), "cannot look for jobs' callbacks to take over");
        }
        if shutdown.pause(every.max(Duration::from_secs(1))).await {
            break;
        }
    }
}

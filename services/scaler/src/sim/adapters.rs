//! The ports the real `Scaler` runs against inside a simulation: at each tick the engine writes
//! what a scaler would observe into `Observed`, the scaler reads it through these adapters, and
//! the fleet's `plan` decides names and retirements, which the engine then carries out.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use imgrec_domain::ports::fleet::plan;
use imgrec_domain::ports::{Fleet, FleetChange, Instance, PortResult, QueueDepth};

use crate::{Backlog, Clock, Completions};

/// One tick's observation, and what the scaler asked of the fleet in it.
#[derive(Default)]
pub struct Observed {
    pub now: Option<SystemTime>,
    pub backlog: QueueDepth,
    pub instances: Vec<Instance>,
    pub completion_rate: Option<f64>,
    pub change: FleetChange,
}

/// The simulated world as every adapter sees it.
#[derive(Clone, Default)]
pub struct World(Arc<Mutex<Observed>>);

impl World {
    pub fn lock(&self) -> MutexGuard<'_, Observed> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Backlog for World {
    async fn backlog(&self) -> PortResult<QueueDepth> {
        Ok(self.lock().backlog)
    }
}

impl Clock for World {
    fn now(&self) -> SystemTime {
        self.lock().now.unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

impl Completions for World {
    fn rate(&mut self, _now: SystemTime) -> Option<f64> {
        self.lock().completion_rate
    }
}

#[async_trait]
impl Fleet for World {
    async fn instances(&self) -> PortResult<Vec<Instance>> {
        Ok(self.lock().instances.clone())
    }

    async fn scale_to(&self, desired: usize, max: usize) -> PortResult<FleetChange> {
        let mut observed = self.lock();
        let change = plan(desired, max, &observed.instances);
        observed.change = change.clone();
        Ok(change)
    }
}

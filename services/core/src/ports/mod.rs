//! The ports the web tier, app tier and scaler talk to. Adapters (`crate::local`, later AWS)
//! implement them and pass the same contract tests (`crate::contract`).

mod fleet;
mod metrics;
mod object_store;
mod work_queue;

pub use fleet::{Fleet, Instance, InstanceState, InstanceStatus};
pub use metrics::{MetricsSink, ScalingMetrics};
pub use object_store::{KeyError, ObjectKey, ObjectStore, StoreError, StoreResult, StoredObject};
pub use work_queue::{QueueDepth, Receipt, Received, WorkQueue};

//! The ports the web tier, app tier and scaler talk to. Adapters (`crate::local`, later AWS)
//! implement them and pass the same contract tests (`crate::contract`).

pub mod fleet;
mod lease;
mod metrics;
mod object_store;
mod work_queue;

pub use fleet::{Fleet, Instance, InstanceState, InstanceStatus, Resize};
pub use lease::Lease;
pub use metrics::{MetricsSink, ScalingMetrics};
pub use object_store::{KeyError, ObjectKey, ObjectStore, StoreError, StoreResult, StoredObject};
pub use work_queue::{QueueDepth, Receipt, Received, ResponseQueues, WorkQueue};

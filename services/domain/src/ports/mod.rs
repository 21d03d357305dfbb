//! The ports the web tier, app tier and scaler talk to. Adapters (`imgrec-local`, `imgrec-aws`)
//! implement them and pass the same contract tests (`imgrec-testkit`).

pub mod fleet;
mod lease;
mod metrics;
mod object_store;
mod work_queue;

pub use fleet::{Fleet, FleetError, FleetResult, Instance, InstanceState, InstanceStatus, LaunchFailure, Resize};
pub use lease::Lease;
pub use metrics::{ApiCalls, MetricsSink, ScalingMetrics};
pub use object_store::{Kept, KeyError, ObjectKey, ObjectStore, StoreError, StoreResult, StoredObject, UploadOrder};
pub use work_queue::{QueueDepth, QueueError, QueueResult, Receipt, Received, ResponseQueues, WorkQueue};

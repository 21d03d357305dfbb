//! The ports the web tier, app tier and scaler talk to. Adapters (`imgrec-local`, `imgrec-aws`)
//! implement them and pass the same contract tests (`imgrec-testkit`).

mod error;
pub mod fleet;
mod inference_slots;
mod lease;
mod metrics;
mod object_store;
mod work_queue;

pub use error::{PortError, PortResult};
pub use fleet::{Fleet, FleetChange, Instance, InstanceState, InstanceStatus, LaunchFailure, Purchase, WarmPool};
pub use inference_slots::{InferenceSlots, SlotGuard, Unlimited};
pub use lease::Lease;
pub use metrics::{ApiCalls, MetricsSink, ScalingMetrics};
pub use object_store::{
    metadata_problem, Kept, KeyError, Metadata, ObjectKey, ObjectStore, StoredObject, UploadOrder, ORDER_METADATA,
};
pub use work_queue::{QueueDepth, Receipt, Received, ResponseQueues, WorkQueue};

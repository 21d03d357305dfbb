//! Shared core of the image recognition service: configuration, messages, the classifier, the
//! ports the tiers talk to, their local adapters, and the scaling policy.

#[cfg(feature = "aws")]
pub mod aws;
pub mod backend;
pub mod classifier;
pub mod config;
pub mod contract;
pub mod local;
pub mod logging;
pub mod messages;
pub mod policy;
pub mod ports;
pub mod shutdown;
pub mod watchdog;

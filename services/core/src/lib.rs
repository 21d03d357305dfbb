//! Shared core of the image recognition service: configuration, the classifier, and (as the
//! service grows) the ports the tiers talk to and their adapters.

pub mod classifier;
pub mod config;

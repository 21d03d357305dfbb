//! The domain of the image recognition service: settings, the messages between the tiers, the
//! ports (traits) the tiers talk to, and the scaling policy. Pure code: the adapters that do I/O
//! live in `imgrec-local` and `imgrec-aws`.

pub mod config;
pub mod messages;
pub mod policy;
pub mod ports;
pub mod public;
pub mod records;

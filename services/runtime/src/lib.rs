//! What every tier's process needs around the domain: its settings (`settings`), the adapters
//! wired from them (`backend`), the one receive loop (`consumer`), logging, shutdown and the systemd watchdog.

pub mod backend;
pub mod consumer;
pub mod logging;
pub mod settings;
pub mod shutdown;
pub mod watchdog;

//! What every tier's process needs around the domain: the adapters wired from settings
//! (`backend`), the one receive loop (`consumer`), logging, shutdown and the systemd watchdog.

pub mod backend;
pub mod consumer;
pub mod logging;
pub mod shutdown;
pub mod watchdog;

//! What every tier's process needs around the domain: the adapters wired from settings
//! (`backend`), logging, shutdown signals and the systemd watchdog.

pub mod backend;
pub mod logging;
pub mod shutdown;
pub mod watchdog;

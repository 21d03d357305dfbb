//! The app tier: workers that classify queued requests (`worker`), and the `classify` and `bench`
//! commands of the `app-tier` binary. `worker::spawn` runs a worker in-process, for tests.

pub mod bench;
pub mod classify;
mod inference;
mod poison;
pub mod worker;

//! Embedded adapters for one machine: folders as buckets, SQLite as the queues (shared by
//! processes, durable across restarts), OS processes as the app-tier fleet.

// The fleet and the store use Linux's own interfaces: elsewhere, one clear error at once rather
// than missing functions (`prctl`, `/proc`) deep in the build.
#[cfg(not(target_os = "linux"))]
compile_error!(
    "imgrec runs on Linux: its local fleet and store use PR_SET_PDEATHSIG, /proc and extended \
     attributes. On macOS or Windows, build and run it in a Linux VM or container."
);

mod bells;
mod core_slots;
mod db;
mod errors;
mod file_names;
mod fs_store;
mod group_commit;
mod instance_status;
pub mod lease;
mod process_fleet;
mod sqlite_queue;
mod start_failures;

pub use core_slots::FileSlots;
pub use db::open as open_db;
pub use fs_store::FsObjectStore;
pub use instance_status::SqliteInstanceStatus;
pub use lease::SqliteLease;
pub use process_fleet::{ProcessFleet, WorkerCommand};
pub use sqlite_queue::{expire_messages, release_held_by, DeadLetter, SqliteQueue, SqliteResponseQueues};

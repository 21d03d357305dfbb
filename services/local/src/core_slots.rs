//! `InferenceSlots` for the local fleet: its workers are processes of one machine, so a slot is
//! an exclusive `flock` on one of N files in the data folder. The kernel frees a dead process's
//! locks, so a killed worker never keeps a core.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context;
use imgrec_domain::ports::{InferenceSlots, SlotGuard};

pub struct FileSlots {
    slots: Vec<Arc<SlotFile>>,
    /// Where a worker that found every slot taken waits next, in turn.
    next: AtomicUsize,
}

/// One slot's file, opened once per process. `flock` locks belong to the open file: locking it
/// again through this process's own descriptor would succeed, so the process also notes which
/// slots it holds.
struct SlotFile {
    file: File,
    held_here: AtomicBool,
}

/// A held slot, freed when dropped.
struct Slot(Arc<SlotFile>);

impl Drop for Slot {
    fn drop(&mut self) {
        // SAFETY: flock(2) on a descriptor this process owns.
        unsafe { libc::flock(self.0.file.as_raw_fd(), libc::LOCK_UN) };
        self.0.held_here.store(false, Ordering::Release);
    }
}

impl SlotFile {
    /// Locks the file (`how`: blocking or not) unless this process holds it already.
    fn lock(self: &Arc<Self>, how: libc::c_int) -> Option<SlotGuard> {
        if self.held_here.swap(true, Ordering::AcqRel) {
            return None;
        }
        loop {
            // SAFETY: flock(2) on a descriptor this process owns.
            if unsafe { libc::flock(self.file.as_raw_fd(), how) } == 0 {
                return Some(Box::new(Slot(self.clone())));
            }
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                self.held_here.store(false, Ordering::Release);
                return None;
            }
        }
    }
}

impl FileSlots {
    /// `slots` slots under `dir` (created if missing).
    pub fn open(dir: &Path, slots: usize) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let slots = (0..slots.max(1))
            .map(|k| {
                let path = dir.join(format!("inference-{k}.lock"));
                let file = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                Ok(Arc::new(SlotFile {
                    file,
                    held_here: AtomicBool::new(false),
                }))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            slots,
            next: AtomicUsize::new(std::process::id() as usize),
        })
    }
}

impl InferenceSlots for FileSlots {
    fn try_hold(&self) -> Option<SlotGuard> {
        self.slots.iter().find_map(|s| s.lock(libc::LOCK_EX | libc::LOCK_NB))
    }

    /// A free slot if there is one, else the next in turn once it frees.
    fn hold(&self) -> SlotGuard {
        if let Some(free) = self.try_hold() {
            return free;
        }
        for _ in 0..self.slots.len() {
            let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
            if let Some(slot) = self.slots[turn].lock(libc::LOCK_EX) {
                return slot;
            }
        }
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lock an inference slot; running without one");
        Box::new(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn no_more_holders_at_once_than_slots_across_handles() {
        let dir = tempfile::tempdir().unwrap();
        // Each handle opens its own files, as each worker process does.
        let busy = Arc::new(Mutex::new((0usize, 0usize)));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let slots = FileSlots::open(dir.path(), 2).unwrap();
                let busy = busy.clone();
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let _slot = slots.hold();
                        {
                            let mut b = busy.lock().unwrap();
                            b.0 += 1;
                            b.1 = b.1.max(b.0);
                        }
                        std::thread::sleep(Duration::from_millis(1));
                        busy.lock().unwrap().0 -= 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            busy.lock().unwrap().1,
            2,
            "at most and at some point exactly two at once"
        );
    }

    #[test]
    fn a_slot_frees_when_its_guard_drops() {
        let dir = tempfile::tempdir().unwrap();
        let a = FileSlots::open(dir.path(), 1).unwrap();
        let b = FileSlots::open(dir.path(), 1).unwrap();
        let held = a.hold();
        let waiter = std::thread::spawn(move || {
            let started = Instant::now();
            let _slot = b.hold();
            started.elapsed()
        });
        std::thread::sleep(Duration::from_millis(100));
        drop(held);
        assert!(waiter.join().unwrap() >= Duration::from_millis(90));
    }

    #[test]
    fn try_hold_takes_only_a_free_slot() {
        let dir = tempfile::tempdir().unwrap();
        let a = FileSlots::open(dir.path(), 2).unwrap();
        let b = FileSlots::open(dir.path(), 2).unwrap();
        let first = a.try_hold().expect("both slots free");
        let second = b.try_hold().expect("one slot free");
        assert!(b.try_hold().is_none() && FileSlots::open(dir.path(), 2).unwrap().try_hold().is_none());
        drop(first);
        assert!(b.try_hold().is_some(), "the freed slot");
        drop(second);
    }
}

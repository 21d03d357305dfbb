//! `InferenceSlots` for the local fleet: its workers are processes of one machine, so a slot is
//! an exclusive `flock` on one of N files in the data folder. The kernel frees a dead process's
//! locks, so a killed worker never keeps a core.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use imgrec_domain::ports::{InferenceSlots, SlotGuard};

pub struct FileSlots {
    files: Vec<File>,
    /// Where a worker that found every slot taken waits next, in turn.
    next: AtomicUsize,
}

/// A held slot: a duplicate of the slot file's descriptor. The lock belongs to the open file
/// description both share, so unlocking through the duplicate frees the slot.
struct Slot(File);

impl Drop for Slot {
    fn drop(&mut self) {
        unlock(&self.0);
    }
}

fn unlock(file: &File) {
    // SAFETY: flock(2) on a descriptor this process owns.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
}

impl FileSlots {
    /// `slots` slots under `dir` (created if missing).
    pub fn open(dir: &Path, slots: usize) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let files = (0..slots.max(1))
            .map(|k| {
                let path = dir.join(format!("inference-{k}.lock"));
                OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .with_context(|| format!("cannot open {}", path.display()))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            files,
            next: AtomicUsize::new(std::process::id() as usize),
        })
    }

    fn lock(file: &File, how: libc::c_int) -> bool {
        loop {
            // SAFETY: flock(2) on a descriptor this process owns.
            if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
                return true;
            }
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return false;
            }
        }
    }

    /// A free slot if there is one, else the next in turn once it frees.
    fn hold_file(&self) -> Option<&File> {
        if let Some(free) = self.files.iter().find(|f| Self::lock(f, libc::LOCK_EX | libc::LOCK_NB)) {
            return Some(free);
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.files.len();
        let file = &self.files[turn];
        Self::lock(file, libc::LOCK_EX).then_some(file)
    }
}

impl InferenceSlots for FileSlots {
    fn hold(&self) -> SlotGuard {
        let Some(file) = self.hold_file() else {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lock an inference slot; running without one");
            return Box::new(());
        };
        match file.try_clone() {
            Ok(dup) => Box::new(Slot(dup)),
            Err(e) => {
                unlock(file);
                tracing::warn!(error = %e, "cannot keep an inference slot; running without one");
                Box::new(())
            }
        }
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
}

//! Doorbells between the local stack's processes. A queue's messages are rows in the shared SQLite
//! database, where nothing wakes a receiver in another process: so a sender, once its messages are
//! committed, rings the queue's bell (touches `bells/<queue>` beside the database), and the
//! receivers of that queue, each process watching the bells it waits on through one inotify
//! instance, try again at once instead of polling every few milliseconds (what an idle web tier
//! and its workers spent most of their CPU on).
//!
//! A bell is a hint, never the only way a message is found: receivers still try every
//! `QUIET_POLL` (a message whose visibility timeout ran out rings nothing), and where inotify is
//! not available (its per-user limit reached) they poll as they did before bells.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use inotify::{EventMask, Inotify, WatchMask, Watches};
use tokio::sync::Notify;
use tracing::{debug, warn};

/// How often a receiver with a bell still tries while nothing rings.
pub const QUIET_POLL: Duration = Duration::from_millis(100);

/// The bells of one database's queues, as this process rings and listens to them.
pub struct Bells {
    dir: PathBuf,
    /// Bell files open for ringing, by queue.
    ringing: Mutex<HashMap<String, File>>,
    /// What wakes this process's receivers of a queue; `None` where it cannot listen.
    listening: Mutex<HashMap<String, Option<Arc<Notify>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Bells {
    /// The bells of the database at `db`: files in `bells/` beside it.
    pub fn beside(db: &Path) -> Self {
        Self {
            dir: db.parent().unwrap_or(Path::new(".")).join("bells"),
            ringing: Mutex::default(),
            listening: Mutex::default(),
        }
    }

    fn path(&self, queue: &str) -> PathBuf {
        // Queue names are SQS names (letters, digits, `-`, `_`); anything else gets a stable name.
        let plain = !queue.is_empty()
            && queue.len() <= 200
            && queue
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if plain {
            self.dir.join(queue)
        } else {
            let hash = queue.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
            self.dir.join(format!("q-{hash:016x}"))
        }
    }

    fn open(&self, queue: &str) -> std::io::Result<(PathBuf, File)> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(queue);
        let file = File::options().create(true).truncate(false).write(true).open(&path)?;
        Ok((path, file))
    }

    /// Wakes the receivers of `queue` in every process: call once its messages are committed.
    /// Blocking (a file's times set); a bell that cannot ring only leaves them to their next try.
    pub fn ring(&self, queue: &str) {
        let mut ringing = lock(&self.ringing);
        if !ringing.contains_key(queue) {
            match self.open(queue) {
                Ok((_, file)) => {
                    ringing.insert(queue.to_owned(), file);
                }
                Err(e) => return debug!(error = %e, queue, "cannot ring a queue's bell"),
            }
        }
        if let Err(e) = ringing[queue].set_modified(SystemTime::now()) {
            debug!(error = %e, queue, "cannot ring a queue's bell");
            ringing.remove(queue);
        }
    }

    /// `ring` for each queue named, once each.
    pub fn ring_each<'a>(&self, queues: impl IntoIterator<Item = &'a str>) {
        let queues: std::collections::BTreeSet<&str> = queues.into_iter().collect();
        queues.into_iter().for_each(|q| self.ring(q));
    }

    /// What wakes this process's receivers of `queue` when its bell rings; `None` where this
    /// process cannot listen (then receivers poll).
    pub fn listen(&self, queue: &str) -> Option<Arc<Notify>> {
        let mut listening = lock(&self.listening);
        if let Some(known) = listening.get(queue) {
            return known.clone();
        }
        let rung = Watcher::get().and_then(|watcher| match self.open(queue) {
            Ok((path, _)) => watcher.watch(&path),
            Err(e) => {
                warn!(error = %e, queue, "cannot open a queue's bell; its receivers poll");
                None
            }
        });
        listening.insert(queue.to_owned(), rung.clone());
        rung
    }
}

/// This process's one inotify instance and the thread that reads it (the per-user limit on
/// instances is small: 128 by default).
struct Watcher {
    watches: Mutex<Watches>,
    /// What each watch wakes, by watch descriptor.
    rung: Arc<Mutex<HashMap<i32, Arc<Notify>>>>,
    alive: Arc<AtomicBool>,
}

impl Watcher {
    fn get() -> Option<&'static Watcher> {
        static WATCHER: OnceLock<Option<Watcher>> = OnceLock::new();
        let watcher = WATCHER.get_or_init(|| match Self::start() {
            Ok(watcher) => Some(watcher),
            Err(e) => {
                warn!(error = %e, "cannot watch the queues' bells; receivers poll");
                None
            }
        });
        watcher.as_ref().filter(|w| w.alive.load(Ordering::Acquire))
    }

    fn start() -> std::io::Result<Self> {
        let inotify = Inotify::init()?;
        let watches = inotify.watches();
        let rung: Arc<Mutex<HashMap<i32, Arc<Notify>>>> = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let (rung_here, alive_here) = (rung.clone(), alive.clone());
        std::thread::Builder::new()
            .name("bells".into())
            .spawn(move || listen(inotify, &rung_here, &alive_here))?;
        Ok(Self {
            watches: Mutex::new(watches),
            rung,
            alive,
        })
    }

    fn watch(&self, bell: &Path) -> Option<Arc<Notify>> {
        // Setting only the modification time is reported as MODIFY, both times as ATTRIB.
        let wd = match lock(&self.watches).add(bell, WatchMask::MODIFY | WatchMask::ATTRIB) {
            Ok(wd) => wd,
            Err(e) => {
                warn!(error = %e, bell = %bell.display(), "cannot watch a queue's bell; its receivers poll");
                return None;
            }
        };
        let mut rung = lock(&self.rung);
        Some(rung.entry(wd.get_watch_descriptor_id()).or_default().clone())
    }
}

/// Reads the watches' events until inotify fails, waking each rung bell's receivers.
fn listen(mut inotify: Inotify, rung: &Mutex<HashMap<i32, Arc<Notify>>>, alive: &AtomicBool) {
    let mut buffer = [0u8; 4096];
    loop {
        match inotify.read_events_blocking(&mut buffer) {
            Ok(events) => {
                let rung = lock(rung);
                for event in events {
                    if event.mask.contains(EventMask::Q_OVERFLOW) {
                        // Events were dropped: any bell may have rung.
                        rung.values().for_each(|n| n.notify_waiters());
                    } else if let Some(n) = rung.get(&event.wd.get_watch_descriptor_id()) {
                        n.notify_waiters();
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                warn!(error = %e, "stopped watching the queues' bells; receivers poll");
                alive.store(false, Ordering::Release);
                lock(rung).values().for_each(|n| n.notify_waiters());
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_ring_wakes_a_listener_of_that_queue_only() {
        let dir = tempfile::tempdir().unwrap();
        let (here, there) = (
            Bells::beside(&dir.path().join("db")),
            Bells::beside(&dir.path().join("db")),
        );
        let requests = here.listen("requests").expect("inotify on a temp folder");
        let other = here.listen("responses-web-1").expect("inotify on a temp folder");
        let (woken, quiet) = (requests.notified(), other.notified());
        tokio::pin!(woken, quiet);
        woken.as_mut().enable();
        quiet.as_mut().enable();
        there.ring("requests");
        tokio::time::timeout(Duration::from_secs(10), woken)
            .await
            .expect("the ring woke the listener");
        assert!(
            tokio::time::timeout(Duration::from_millis(200), quiet).await.is_err(),
            "another queue's listener woke"
        );
    }

    #[test]
    fn odd_queue_names_get_bells_of_their_own_inside_the_folder() {
        let bells = Bells::beside(Path::new("/data/queues.db"));
        assert_eq!(bells.path("requests"), Path::new("/data/bells/requests"));
        let odd = [bells.path("../x"), bells.path("a/b"), bells.path("")];
        assert!(
            odd.iter().all(|p| p.parent() == Some(Path::new("/data/bells"))),
            "{odd:?}"
        );
        assert!(odd[0] != odd[1] && odd[1] != odd[2]);
    }
}

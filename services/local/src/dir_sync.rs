//! Group commit of directory syncs: a new name is durable only once its directory is synced, and
//! concurrent puts into one folder need one sync between them, not one each.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::sync::oneshot;

/// While one group's syncs run, the puts that arrive wait for the next group, which syncs each of
/// their folders once. A put is answered only after a sync of its folders that started after its
/// names were made, so it is as durable as with a sync of its own.
#[derive(Debug, Clone, Default)]
pub struct DirSyncs {
    group: Arc<Mutex<Group>>,
}

#[derive(Debug, Default)]
struct Group {
    dirs: BTreeSet<PathBuf>,
    waiting: Vec<oneshot::Sender<Result<(), String>>>,
    syncing: bool,
}

impl DirSyncs {
    /// Returns once every folder in `dirs` has been synced after this call began.
    pub async fn sync(&self, dirs: impl IntoIterator<Item = PathBuf>) -> anyhow::Result<()> {
        let (done, synced) = oneshot::channel();
        let start = {
            let mut group = self.group.lock().unwrap_or_else(|p| p.into_inner());
            group.dirs.extend(dirs);
            group.waiting.push(done);
            !std::mem::replace(&mut group.syncing, true)
        };
        if start {
            // A task of its own, so that a caller that goes away cannot strand the others.
            tokio::spawn(Self::run(self.group.clone()));
        }
        synced
            .await
            .context("the directory sync task ended")?
            .map_err(anyhow::Error::msg)
    }

    async fn run(group: Arc<Mutex<Group>>) {
        loop {
            let (dirs, waiting) = {
                let mut g = group.lock().unwrap_or_else(|p| p.into_inner());
                if g.waiting.is_empty() {
                    g.syncing = false;
                    return;
                }
                (std::mem::take(&mut g.dirs), std::mem::take(&mut g.waiting))
            };
            let result = tokio::task::spawn_blocking(move || dirs.iter().try_for_each(|d| sync_dir(d)))
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| r)
                .map_err(|e| format!("{e:#}"));
            for done in waiting {
                let _ = done.send(result.clone());
            }
        }
    }
}

fn sync_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_syncs_all_return_and_a_missing_folder_fails_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let syncs = DirSyncs::default();
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let (syncs, d) = (syncs.clone(), dir.path().join(format!("d{}", i % 5)));
                tokio::spawn(async move {
                    std::fs::create_dir_all(&d).unwrap();
                    syncs.sync([d]).await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let missing = syncs.sync([dir.path().join("nonexistent")]).await.unwrap_err();
        assert!(format!("{missing:#}").contains("cannot sync"), "{missing:#}");
        // The failure does not stick: the next group syncs again.
        syncs.sync([dir.path().to_path_buf()]).await.unwrap();
    }
}

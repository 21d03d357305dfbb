//! Group commit: while one commit runs, what callers hand in meanwhile waits for the next, which
//! takes it all at once. Each caller is answered only once the commit holding its items is done,
//! so it is as durable as with a commit of its own, for one commit (one fsync) per group. Used by
//! the queue's single sends (SQLite transactions) and the store's folder syncs.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

pub struct GroupCommit<I, E> {
    state: Arc<Mutex<State<I, E>>>,
}

struct State<I, E> {
    items: Vec<I>,
    waiting: Vec<oneshot::Sender<Result<(), E>>>,
    committing: bool,
}

impl<I, E> Default for GroupCommit<I, E> {
    fn default() -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                items: Vec::new(),
                waiting: Vec::new(),
                committing: false,
            })),
        }
    }
}

impl<I, E> Clone for GroupCommit<I, E> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
        }
    }
}

impl<I, E> std::fmt::Debug for GroupCommit<I, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

impl<I: Send + 'static, E: Clone + Send + 'static> GroupCommit<I, E> {
    /// Hands `items` to the next commit and waits for its outcome. When no commit is running,
    /// `commit` runs this group and the ones that gather behind it (every caller's `commit` must
    /// do the same), on a task of its own, so that a caller that goes away cannot strand the
    /// others. `None`: that task ended without an answer (the runtime is shutting down).
    pub async fn submit<F, Fut>(&self, items: impl IntoIterator<Item = I>, commit: F) -> Option<Result<(), E>>
    where
        F: Fn(Vec<I>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
    {
        let (done, outcome) = oneshot::channel();
        let lead = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.items.extend(items);
            state.waiting.push(done);
            !std::mem::replace(&mut state.committing, true)
        };
        if lead {
            tokio::spawn(Self::commit_groups(self.state.clone(), commit));
        }
        outcome.await.ok()
    }

    async fn commit_groups<F, Fut>(state: Arc<Mutex<State<I, E>>>, commit: F)
    where
        F: Fn(Vec<I>) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        loop {
            let (items, waiting) = {
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                if s.waiting.is_empty() {
                    s.committing = false;
                    return;
                }
                (std::mem::take(&mut s.items), std::mem::take(&mut s.waiting))
            };
            let outcome = commit(items).await;
            for done in waiting {
                let _ = done.send(outcome.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_callers_share_commits_and_each_item_is_committed_once() {
        let groups: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
        let commits = GroupCommit::<u32, String>::default();
        let tasks: Vec<_> = (0..50u32)
            .map(|i| {
                let (commits, groups) = (commits.clone(), groups.clone());
                tokio::spawn(async move {
                    commits
                        .submit([i], move |items| {
                            let groups = groups.clone();
                            async move {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                groups.lock().unwrap().push(items);
                                Ok(())
                            }
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Some(Ok(())));
        }
        let groups = groups.lock().unwrap();
        let mut all: Vec<u32> = groups.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..50).collect::<Vec<_>>());
        assert!(groups.len() < 50, "no two callers shared a commit: {groups:?}");
    }

    #[tokio::test]
    async fn a_failed_commit_fails_its_group_and_the_next_one_commits_again() {
        let commits = GroupCommit::<bool, String>::default();
        let commit = |items: Vec<bool>| async move {
            if items.iter().all(|&ok| ok) {
                Ok(())
            } else {
                Err("bad item".to_owned())
            }
        };
        assert_eq!(commits.submit([false], commit).await, Some(Err("bad item".into())));
        assert_eq!(commits.submit([true], commit).await, Some(Ok(())));
    }
}

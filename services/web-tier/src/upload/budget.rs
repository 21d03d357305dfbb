//! Memory budgets for uploads: bounded by configuration, not by what clients send. An upload's
//! share of the body budget grows with the bytes it has actually sent (a slow sender that
//! announces 9 MB and trickles holds what it trickled); the image check reserves the decoder's
//! working memory in a second budget. No wait for either is unbounded: past `MEMORY_WAIT` the
//! client gets 503.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::UploadError;

/// The longest an upload waits for room in a memory budget before it is told to come back: long
/// enough to ride out a burst of large uploads being stored, short enough that a client is never
/// left hanging on memory held by others.
pub const MEMORY_WAIT: Duration = Duration::from_secs(5);

/// A memory budget in bytes, shared by concurrent requests (counted in KiB: a semaphore holds at
/// most `u32::MAX` permits).
#[derive(Clone)]
pub struct Budget {
    permits: Arc<Semaphore>,
    kib: u32,
}

/// Room held in a budget, released on drop; it can grow.
pub struct Share {
    budget: Budget,
    held: OwnedSemaphorePermit,
}

impl Budget {
    pub fn new(bytes: u64) -> Self {
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX).max(1);
        Self {
            permits: Arc::new(Semaphore::new(kib as usize)),
            kib,
        }
    }

    /// A share that holds nothing yet.
    pub fn share(&self) -> Share {
        self.try_reserve(0).expect("the budget's semaphore is never closed")
    }

    /// Waits at most `MEMORY_WAIT` until `bytes` are free (the whole budget at most, so one large
    /// request still runs alone).
    pub async fn reserve(&self, bytes: u64) -> Result<Share, UploadError> {
        let mut share = self.share();
        share.cover(bytes).await?;
        Ok(share)
    }

    /// `bytes` (the whole budget at most) if they are free now, else `None`: callable off the async
    /// threads, as it never waits. It never overtakes a `reserve` that waits: room freed while
    /// one waits goes to it first.
    pub fn try_reserve(&self, bytes: u64) -> Option<Share> {
        let held = self.permits.clone().try_acquire_many_owned(self.kib_of(bytes)).ok()?;
        Some(Share {
            budget: self.clone(),
            held,
        })
    }

    fn kib_of(&self, bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX).min(self.kib)
    }
}

impl Share {
    /// Grows the share to cover `bytes` in all, waiting at most `MEMORY_WAIT` for the rest; past
    /// that, 503: the memory is held by others, not by this client's fault.
    pub async fn cover(&mut self, bytes: u64) -> Result<(), UploadError> {
        let want = self.budget.kib_of(bytes);
        let held = self.held.num_permits() as u32;
        if want <= held {
            return Ok(());
        }
        let more = tokio::time::timeout(MEMORY_WAIT, self.budget.permits.clone().acquire_many_owned(want - held))
            .await
            .map_err(|_| UploadError::Busy)?
            .expect("the budget's semaphore is never closed");
        self.held.merge(more);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_budget_larger_than_the_whole_is_capped_and_others_wait() {
        let budget = Budget::new(10 * 1024);
        let whole = budget.reserve(1 << 40).await.unwrap(); // capped: runs alone
        let waiting = tokio::time::timeout(Duration::from_millis(50), budget.reserve(1024)).await;
        assert!(waiting.is_err(), "a reservation ran while the budget was spent");
        drop(whole);
        let _ = tokio::time::timeout(Duration::from_millis(500), budget.reserve(1024))
            .await
            .expect("the budget was released");
    }

    fn bytes(share: &Share) -> usize {
        share.held.num_permits() * 1024
    }

    #[tokio::test]
    async fn a_share_grows_with_what_it_covers_and_gives_it_all_back() {
        let budget = Budget::new(100 * 1024);
        let mut share = budget.share();
        assert_eq!(bytes(&share), 0);
        share.cover(1).await.unwrap();
        share.cover(30 * 1024).await.unwrap();
        share.cover(10).await.unwrap(); // never shrinks while held
        assert_eq!(bytes(&share), 30 * 1024);
        let other = budget.reserve(70 * 1024).await.unwrap();
        drop(share);
        drop(other);
        assert_eq!(bytes(&budget.reserve(100 * 1024).await.unwrap()), 100 * 1024);
    }

    #[tokio::test]
    async fn trying_takes_free_room_at_once_and_never_what_a_waiter_waits_for() {
        let budget = Budget::new(10 * 1024);
        let held = budget.try_reserve(8 * 1024).expect("the room is free");
        assert!(budget.try_reserve(3 * 1024).is_none(), "more than is free");
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(5 * 1024).await.map(|share| bytes(&share)) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            budget.try_reserve(1024).is_none(),
            "2 KiB are not held, but a reservation waits for them"
        );
        drop(held);
        assert_eq!(waiter.await.unwrap().unwrap(), 5 * 1024);
        let free = budget.try_reserve(10 * 1024).expect("all returned");
        assert_eq!(bytes(&free), 10 * 1024);
    }
}

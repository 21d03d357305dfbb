//! The `WorkQueue` and `ResponseQueues` ports on the local stack's SQLite database, with SQS's
//! semantics: visibility timeouts, receipts, receive counts and a dead-letter queue.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::Notify;

use crate::bells::{Bells, QUIET_POLL};
use crate::errors::queue_error;
use crate::group_commit::GroupCommit;
use imgrec_domain::messages::now_ms;
use imgrec_domain::ports::{PortError, PortResult, QueueDepth, Receipt, Received, ResponseQueues, WorkQueue};

/// Where messages go after too many receives (SQS's redrive policy).
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub queue: String,
    pub max_receives: u32,
}

/// A long-polling receive's pauses between tries while the queue is empty, where its process
/// cannot hear the queue's bell (see `bells`): doubling from the first to the last. At the last,
/// an idle receiver costs ~100 cheap reads a second.
const FIRST_POLL_PAUSE: Duration = Duration::from_millis(1);
const MAX_POLL_PAUSE: Duration = Duration::from_millis(10);

/// One named queue in the shared SQLite database. Every process opens its own connection; WAL
/// lets receivers poll while another process writes.
#[derive(Clone)]
pub struct SqliteQueue {
    conn: Arc<Mutex<QueueDb>>,
    /// Single sends, committed in groups (shared by the handles of one connection): one
    /// transaction and fsync for many concurrent uploads, each answered once its group committed.
    outbox: GroupCommit<(String, Vec<u8>), (bool, String)>,
    name: String,
    dead_letter: Option<DeadLetter>,
    /// The app-tier instance receiving through this handle, recorded on what it receives.
    receiver: Option<String>,
    /// Rung once messages are committed visible; heard by waiting receivers.
    bells: Arc<Bells>,
    /// Whether a send's commit waits for the disk (see `QueueDb::committing`). Requests' do: an
    /// acknowledged upload survives a power cut. Answers' do not: an answer goes to a web tier on
    /// this machine, whose waiting client does not outlive a power cut either, and the worker keeps
    /// it in the output bucket, synced, before it sends it.
    sends_wait_for_disk: bool,
}

impl SqliteQueue {
    pub fn open(db: &Path, name: &str, dead_letter: Option<DeadLetter>) -> anyhow::Result<Self> {
        let conn = super::db::open(db)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(QueueDb {
                conn,
                waits_for_disk: None,
            })),
            outbox: GroupCommit::default(),
            name: name.to_owned(),
            dead_letter,
            receiver: None,
            bells: Arc::new(Bells::beside(db)),
            sends_wait_for_disk: true,
        })
    }

    /// Records `instance` as the holder of every message received through this handle, so that
    /// the local fleet can give them back at once when the instance dies (`release_held_by`).
    pub fn received_by(mut self, instance: &str) -> Self {
        self.receiver = Some(instance.to_owned());
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Another queue of the same database over this handle's connection.
    pub fn named(&self, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            dead_letter: None,
            receiver: None,
            ..self.clone()
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut QueueDb, &Self) -> anyhow::Result<T> + Send + 'static,
    ) -> PortResult<T> {
        let this = self.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut conn = this.conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn, &this)
        })
        .await;
        match done {
            Ok(result) => result.with_context(|| format!("queue {}", self.name)),
            Err(e) => Err(anyhow::Error::new(e).context("queue task failed")),
        }
        .map_err(queue_error)
    }

    fn try_receive(&self, db: &mut QueueDb, max: usize, visibility: Duration) -> anyhow::Result<Vec<Received>> {
        let now = now_ms() as i64;
        // A cheap read first: polling receivers then take no write lock while the queue is empty.
        let ready: bool = db
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM messages WHERE queue = ?1 AND visible_at_ms <= ?2)")?
            .query_row(params![self.name, now], |r| r.get(0))?;
        if !ready {
            return Ok(Vec::new());
        }
        let tx = db
            .committing(false)?
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Read once the write lock is held: taking it may wait (another process's commit), and a
        // time read before would hide the messages for less than `visibility` from now.
        let now = now_ms() as i64;
        let mut dead_lettered = 0;
        if let Some(dl) = &self.dead_letter {
            dead_lettered = tx
                .prepare_cached(
                    "UPDATE messages SET queue = ?1, receive_count = 0, receipt = NULL, visible_at_ms = ?2
                     WHERE queue = ?3 AND visible_at_ms <= ?2 AND receive_count >= ?4",
                )?
                .execute(params![dl.queue, now, self.name, dl.max_receives])?;
        }
        let rows: Vec<(i64, Vec<u8>, u32)> = {
            let mut stmt = tx.prepare_cached(
                "SELECT id, body, receive_count FROM messages
                 WHERE queue = ?1 AND visible_at_ms <= ?2 ORDER BY id LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![self.name, now, max as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let hidden_until = now + visibility.as_millis() as i64;
        let mut received = Vec::with_capacity(rows.len());
        let mut hide = tx.prepare_cached(
            "UPDATE messages SET receive_count = receive_count + 1, visible_at_ms = ?1, receipt = ?2, receiver = ?4
             WHERE id = ?3",
        )?;
        for (id, body, count) in rows {
            let receipt = format!("{id}.{}", uuid::Uuid::new_v4().simple());
            hide.execute(params![hidden_until, receipt, id, self.receiver])?;
            received.push(Received {
                receipt: Receipt(receipt),
                body,
                receive_count: count + 1,
            });
        }
        drop(hide);
        tx.commit()?;
        if dead_lettered > 0 {
            if let Some(dl) = &self.dead_letter {
                self.bells.ring(&dl.queue);
            }
        }
        Ok(received)
    }

    /// Commits `rows` (queue, body) and rings their queues' bells.
    fn send_rows(&self, db: &mut QueueDb, rows: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
        insert(db.committing(self.sends_wait_for_disk)?, rows)?;
        self.bells.ring_each(rows.iter().map(|(q, _)| q.as_str()));
        Ok(())
    }
}

/// Deletes the messages sent longer than `age` ago to `queue` (and, with `with_suffixes`, to every
/// `queue-...`: the web tiers' response queues), as SQS's retention period does. Returns how many.
pub fn expire_messages(conn: &Connection, queue: &str, with_suffixes: bool, age: Duration) -> rusqlite::Result<usize> {
    let before = now_ms() as i64 - age.as_millis() as i64;
    conn.execute(
        "DELETE FROM messages WHERE sent_at_ms < ?3
           AND (queue = ?1 OR (?2 AND substr(queue, 1, length(?1) + 1) = ?1 || '-'))",
        params![queue, with_suffixes, before],
    )
}

/// Makes every message that `instance` holds visible again now (their receive counts stay):
/// called by the local fleet when that instance is gone, instead of waiting for the visibility
/// timeout. Returns the queue of each message released, for their bells.
pub fn release_held_by(conn: &Connection, instance: &str) -> rusqlite::Result<Vec<String>> {
    let now = now_ms() as i64;
    let mut released = conn.prepare_cached(
        "UPDATE messages SET visible_at_ms = ?2, receiver = NULL WHERE receiver = ?1 AND visible_at_ms > ?2
         RETURNING queue",
    )?;
    let queues = released.query_map(params![instance, now], |r| r.get(0))?;
    queues.collect()
}

/// A queue handle's connection, and how its commits reach the disk.
struct QueueDb {
    conn: Connection,
    /// `synchronous` as last set on `conn` (FULL: true), `None` if unknown: a PRAGMA is parsed
    /// and run only when an operation needs the other setting.
    waits_for_disk: Option<bool>,
}

impl QueueDb {
    /// The connection, its next commits waiting for the disk (synchronous FULL) or not (NORMAL,
    /// which in WAL mode survives a crash of the process but not of the machine). Requests' sends
    /// wait: an acknowledged upload must survive anything (answers' need not, see
    /// `SqliteQueue::sends_wait_for_disk`). Receives, deletes and visibility changes do not:
    /// losing one to a power cut only delivers a message again, which at-least-once delivery
    /// allows, and the next synced commit makes them durable too (the log is written in order).
    /// Chosen before every transaction, so that no setting outlives the operation that chose it.
    fn committing(&mut self, wait_for_disk: bool) -> rusqlite::Result<&mut Connection> {
        if self.waits_for_disk != Some(wait_for_disk) {
            self.waits_for_disk = None;
            let level = if wait_for_disk { "FULL" } else { "NORMAL" };
            self.conn.pragma_update(None, "synchronous", level)?;
            self.waits_for_disk = Some(wait_for_disk);
        }
        Ok(&mut self.conn)
    }
}

/// Inserts `(queue, body)` rows in one transaction.
fn insert(conn: &mut Connection, rows: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    let now = now_ms() as i64;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut insert =
            tx.prepare_cached("INSERT INTO messages (queue, body, sent_at_ms, visible_at_ms) VALUES (?1, ?2, ?3, ?3)")?;
        for (queue, body) in rows {
            insert.execute(params![queue, body, now])?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn message_id(receipt: &Receipt) -> PortResult<i64> {
    receipt
        .0
        .split_once('.')
        .and_then(|(id, _)| id.parse().ok())
        .ok_or_else(|| PortError::Permanent(anyhow::anyhow!("malformed receipt {:?}", receipt.0)))
}

#[async_trait]
impl WorkQueue for SqliteQueue {
    async fn send(&self, body: &[u8]) -> PortResult<()> {
        let queue = self.clone();
        let commit = move |rows: Vec<(String, Vec<u8>)>| {
            let queue = queue.clone();
            async move {
                let committed = queue.blocking(move |db, q| q.send_rows(db, &rows)).await;
                committed.map_err(|e| (e.is_transient(), format!("{e:#}")))
            }
        };
        match self.outbox.submit([(self.name.clone(), body.to_vec())], commit).await {
            Some(Ok(())) => Ok(()),
            Some(Err((true, e))) => Err(PortError::Transient(anyhow::anyhow!(e))),
            Some(Err((false, e))) => Err(PortError::Permanent(anyhow::anyhow!(e))),
            None => Err(PortError::Transient(anyhow::anyhow!(
                "queue {}: the commit was abandoned (shutting down)",
                self.name
            ))),
        }
    }

    async fn send_batch(&self, bodies: &[Vec<u8>]) -> PortResult<()> {
        let rows: Vec<(String, Vec<u8>)> = bodies.iter().map(|b| (self.name.clone(), b.clone())).collect();
        self.blocking(move |db, q| q.send_rows(db, &rows)).await
    }

    async fn receive(&self, max: usize, visibility: Duration, wait: Duration) -> PortResult<Vec<Received>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + wait;
        // Other processes send: a waiting receiver wakes when the queue's bell rings, and tries
        // now and then anyway. Without a bell it polls, soon after a receive (a burst's next
        // message is usually a few ms away), then less and less often.
        let bell = self.bells.listen(&self.name);
        let mut pause = FIRST_POLL_PAUSE;
        loop {
            // Listening before the try: a ring during it is not missed.
            let rung = bell.as_deref().map(Notify::notified);
            tokio::pin!(rung);
            if let Some(rung) = rung.as_mut().as_pin_mut() {
                rung.enable();
            }
            let got = self.blocking(move |db, q| q.try_receive(db, max, visibility)).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            if !got.is_empty() || left.is_zero() {
                return Ok(got);
            }
            match rung.as_pin_mut() {
                Some(rung) => {
                    let _ = tokio::time::timeout(QUIET_POLL.min(left), rung).await;
                }
                None => {
                    tokio::time::sleep(pause.min(left)).await;
                    pause = (pause * 2).min(MAX_POLL_PAUSE);
                }
            }
        }
    }

    async fn delete(&self, receipt: &Receipt) -> PortResult<()> {
        self.delete_batch(std::slice::from_ref(receipt)).await
    }

    async fn delete_batch(&self, receipts: &[Receipt]) -> PortResult<()> {
        let receipts: Vec<(i64, String)> = receipts
            .iter()
            .map(|r| Ok((message_id(r)?, r.0.clone())))
            .collect::<PortResult<_>>()?;
        self.blocking(move |db, q| {
            let tx = db
                .committing(false)?
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                // A stale receipt (the message was received again since) deletes nothing, as on SQS.
                let mut delete =
                    tx.prepare_cached("DELETE FROM messages WHERE id = ?1 AND receipt = ?2 AND queue = ?3")?;
                for (id, receipt) in &receipts {
                    delete.execute(params![id, receipt, q.name])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn change_visibility(&self, receipt: &Receipt, visibility: Duration) -> PortResult<()> {
        let id = message_id(receipt)?;
        let receipt = receipt.0.clone();
        self.blocking(move |db, q| {
            let tx = db
                .committing(false)?
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = now_ms() as i64; // with the lock held, as in `try_receive`
            let changed = tx
                .prepare_cached(
                    "UPDATE messages SET visible_at_ms = ?1
                     WHERE id = ?2 AND receipt = ?3 AND queue = ?4 AND visible_at_ms > ?5",
                )?
                .execute(params![now + visibility.as_millis() as i64, id, receipt, q.name, now])?;
            if changed == 0 {
                bail!("receipt {receipt} is no longer valid (deleted, expired or received again)");
            }
            tx.commit()?;
            if visibility.is_zero() {
                q.bells.ring(&q.name); // given back: visible now
            }
            Ok(())
        })
        .await
    }

    async fn depth(&self) -> PortResult<QueueDepth> {
        self.blocking(|db, q| {
            let now = now_ms() as i64;
            let (visible, in_flight): (Option<i64>, Option<i64>) = db
                .conn
                .prepare_cached(
                    "SELECT SUM(visible_at_ms <= ?2), SUM(visible_at_ms > ?2) FROM messages WHERE queue = ?1",
                )?
                .query_row(params![q.name, now], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
                .unwrap_or((None, None));
            Ok(QueueDepth {
                visible: visible.unwrap_or(0) as u64,
                in_flight: in_flight.unwrap_or(0) as u64,
            })
        })
        .await
    }
}

/// The web tiers' response queues in the shared database (a queue there is just a name).
pub struct SqliteResponseQueues {
    base: SqliteQueue,
    opened: Mutex<HashMap<String, Arc<dyn WorkQueue>>>,
}

impl SqliteResponseQueues {
    pub fn open(db: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            base: SqliteQueue {
                sends_wait_for_disk: false,
                ..SqliteQueue::open(db, "", None)?
            },
            opened: Mutex::new(HashMap::new()),
        })
    }
}

#[async_trait]
impl ResponseQueues for SqliteResponseQueues {
    async fn open(&self, name: &str) -> PortResult<Arc<dyn WorkQueue>> {
        let mut opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        Ok(opened
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(self.base.named(name)))
            .clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synchronous(q: &SqliteQueue) -> i64 {
        let db = q.conn.lock().unwrap();
        db.conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap()
    }

    #[tokio::test]
    async fn sends_wait_for_the_disk_even_after_a_receive_that_did_not() {
        const NORMAL: i64 = 1;
        const FULL: i64 = 2;
        let dir = tempfile::tempdir().unwrap();
        let q = SqliteQueue::open(&dir.path().join("q.sqlite3"), "requests", None).unwrap();
        q.send(b"a").await.unwrap();
        let got = q.receive(1, Duration::from_secs(30), Duration::ZERO).await.unwrap();
        assert_eq!(synchronous(&q), NORMAL);
        q.delete(&got[0].receipt).await.unwrap();
        q.send(b"b").await.unwrap();
        assert_eq!(synchronous(&q), FULL);
        q.send_batch(&[b"c".to_vec()]).await.unwrap();
        assert_eq!(synchronous(&q), FULL);
    }

    #[tokio::test]
    async fn answers_are_sent_without_waiting_for_the_disk() {
        const NORMAL: i64 = 1;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.sqlite3");
        let answers = SqliteResponseQueues::open(&db)
            .unwrap()
            .base
            .named("responses-web-instance1");
        answers.send(b"a").await.unwrap();
        answers.send_batch(&[b"b".to_vec()]).await.unwrap();
        assert_eq!(synchronous(&answers), NORMAL);
        let got = answers
            .receive(10, Duration::from_secs(30), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(got.len(), 2);
    }

    /// Each way a message becomes visible to receivers in other processes rings its queue's bell
    /// (`bells` tests that a ring wakes them), and a receiver waiting on it gets the message.
    #[tokio::test]
    async fn sends_gives_back_and_dead_letters_ring_the_queues_bell() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.sqlite3");
        let dead_letter = DeadLetter {
            queue: "dead-letters".into(),
            max_receives: 1,
        };
        let q = SqliteQueue::open(&db, "requests", Some(dead_letter)).unwrap();
        let elsewhere = Bells::beside(&db);
        let (requests, dead) = (
            elsewhere.listen("requests").unwrap(),
            elsewhere.listen("dead-letters").unwrap(),
        );
        let rings = |n: &Arc<Notify>| {
            let n = n.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(10), n.notified())
                    .await
                    .is_ok()
            }
        };
        let wait = tokio::spawn(rings(&requests));
        tokio::task::yield_now().await;
        let waiting = {
            let q = q.clone();
            tokio::spawn(async move { q.receive(1, Duration::from_secs(30), Duration::from_secs(20)).await })
        };
        q.send(b"a").await.unwrap();
        assert!(wait.await.unwrap(), "a send rang");
        let got = waiting.await.unwrap().unwrap();
        assert_eq!(got[0].body, b"a");

        let wait = tokio::spawn(rings(&requests));
        tokio::task::yield_now().await;
        q.change_visibility(&got[0].receipt, Duration::ZERO).await.unwrap();
        assert!(wait.await.unwrap(), "a give-back rang");

        // Received once already: the next receive moves it to the dead-letter queue.
        let wait = tokio::spawn(rings(&dead));
        tokio::task::yield_now().await;
        assert!(q
            .receive(1, Duration::from_secs(30), Duration::ZERO)
            .await
            .unwrap()
            .is_empty());
        assert!(wait.await.unwrap(), "a dead letter rang");
    }
}

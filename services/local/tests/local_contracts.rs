//! The local adapters against the port contracts (`imgrec_testkit`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use imgrec_domain::ports::{Fleet, InstanceState, InstanceStatus, ObjectKey, ObjectStore, WorkQueue};
use imgrec_local::{DeadLetter, FsObjectStore, ProcessFleet, SqliteInstanceStatus, SqliteQueue, WorkerCommand};
use imgrec_testkit::{self as contract, Delivery, QueuePair};

fn queue(dir: &Path, name: &str) -> SqliteQueue {
    SqliteQueue::open(&dir.join("queue.sqlite3"), name, None).unwrap()
}

#[tokio::test]
async fn sqlite_queue_send_receive_delete() {
    let dir = tempfile::tempdir().unwrap();
    contract::queue_send_receive_delete(queue(dir.path(), "requests")).await;
}

#[tokio::test]
async fn sqlite_queue_carries_any_file_name() {
    let dir = tempfile::tempdir().unwrap();
    contract::queue_carries_any_file_name(queue(dir.path(), "requests")).await;
}

#[tokio::test]
async fn sqlite_queue_redelivery() {
    let dir = tempfile::tempdir().unwrap();
    contract::queue_redelivery(queue(dir.path(), "requests")).await;
}

#[tokio::test]
async fn sqlite_queue_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("queue.sqlite3");
    let dl = DeadLetter {
        queue: "requests-dlq".into(),
        max_receives: 2,
    };
    let pair = QueuePair {
        main: SqliteQueue::open(&db, "requests", Some(dl)).unwrap(),
        dead_letter: SqliteQueue::open(&db, "requests-dlq", None).unwrap(),
        max_receives: 2,
    };
    contract::queue_dead_letter(pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_queue_concurrent_receivers_in_separate_connections() {
    let dir = tempfile::tempdir().unwrap();
    // Clones share a connection; separate opens behave like separate processes.
    let sender = queue(dir.path(), "requests");
    contract::queue_concurrent_receivers(sender.clone(), Delivery::ExactlyOnce).await;
    let other = queue(dir.path(), "requests");
    contract::queue_long_poll(other).await;
}

#[tokio::test]
async fn sqlite_queue_ignores_stale_receipts() {
    use imgrec_domain::ports::WorkQueue;
    let dir = tempfile::tempdir().unwrap();
    let q = queue(dir.path(), "requests");
    q.send(b"x").await.unwrap();
    let first = q
        .receive(1, Duration::from_millis(200), Duration::ZERO)
        .await
        .unwrap()
        .remove(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = q
        .receive(1, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap()
        .remove(0);
    q.delete(&first.receipt).await.unwrap();
    assert_eq!(
        q.depth().await.unwrap().total(),
        1,
        "a stale receipt deleted the message"
    );
    assert!(q.change_visibility(&first.receipt, Duration::ZERO).await.is_err());
    q.delete(&second.receipt).await.unwrap();
    assert_eq!(q.depth().await.unwrap().total(), 0);
}

#[tokio::test]
async fn sqlite_queues_are_separate_and_durable() {
    let dir = tempfile::tempdir().unwrap();
    queue(dir.path(), "a").send(b"kept").await.unwrap();
    let reopened = queue(dir.path(), "a");
    use imgrec_domain::ports::WorkQueue;
    assert_eq!(queue(dir.path(), "b").depth().await.unwrap().total(), 0);
    let got = reopened
        .receive(10, Duration::from_secs(5), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, b"kept");
}

/// Single sends are committed in groups: every acknowledged send is there once, in its own queue,
/// read back through another connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_queue_group_commits_lose_and_mix_up_nothing() {
    use imgrec_domain::ports::WorkQueue;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (queue(dir.path(), "a"), queue(dir.path(), "a").named("b"));
    let sends = (0..300).map(|i| {
        let q = if i % 3 == 0 { b.clone() } else { a.clone() };
        tokio::spawn(async move {
            q.send(format!("m{i}").as_bytes()).await.unwrap();
            i
        })
    });
    let _ = futures::future::join_all(sends).await;
    let reader = queue(dir.path(), "a");
    let depth = |q: SqliteQueue| async move { q.depth().await.unwrap().visible };
    assert_eq!(depth(reader.clone()).await, 200);
    assert_eq!(depth(reader.named("b")).await, 100);
    let mut bodies = Vec::new();
    loop {
        let got = reader
            .receive(10, Duration::from_secs(30), Duration::ZERO)
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        bodies.extend(got.into_iter().map(|m| String::from_utf8(m.body).unwrap()));
    }
    bodies.sort();
    let mut want: Vec<String> = (0..300).filter(|i| i % 3 != 0).map(|i| format!("m{i}")).collect();
    want.sort();
    assert_eq!(bodies, want);
}

/// A worker that is a shell running `script` (`w` as its $0).
fn shell_worker(script: &str) -> WorkerCommand {
    WorkerCommand {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into(), "w".into()],
        env: vec![],
        memory_max_bytes: None,
    }
}

/// Another process's writer: holds the database's write lock for `held` from when this returns.
fn hold_write_lock(db: &Path, held: Duration) -> std::thread::JoinHandle<()> {
    let mut other = imgrec_local::open_db(db).unwrap();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let writer = std::thread::spawn(move || {
        let tx = other
            .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
            .unwrap();
        locked_tx.send(()).unwrap();
        std::thread::sleep(held);
        tx.commit().unwrap();
    });
    locked_rx.recv().unwrap();
    writer
}

#[tokio::test]
async fn fs_object_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract::object_store_contract(FsObjectStore::new(dir.path()), "input-bucket").await;
    assert!(dir.path().join("s3/input-bucket/test_0.JPEG").is_file());
    assert!(dir.path().join("s3/input-bucket/dir%2Ftest_1.png").is_file());
    // Nothing left behind: no temp file, one version per put.
    assert_eq!(files_in(&dir.path().join("tmp")), 0);
    assert_eq!(files_in(&dir.path().join("versions/input-bucket")), 9);
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| entries.count())
}

#[test]
fn fs_object_store_sweeps_old_temp_files_only() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let (old, fresh) = (tmp.join("old"), tmp.join("fresh"));
    std::fs::write(&old, b"x").unwrap();
    std::fs::write(&fresh, b"x").unwrap();
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    let store = FsObjectStore::new(dir.path());
    assert_eq!(store.sweep_temp_files(Duration::from_secs(600)).unwrap(), 1);
    assert!(!old.exists() && fresh.exists());
}

/// Records past their retention go; younger ones, and results outside the prefix, stay.
#[tokio::test]
async fn fs_object_store_sweeps_old_records_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsObjectStore::new(dir.path());
    for key in ["_imgrec/jobs/old", "_imgrec/jobs/fresh", "test_0"] {
        let key = ObjectKey::new(key).unwrap();
        store
            .put("output-bucket", &key, bytes::Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    let path = dir.path().join("s3/output-bucket/_imgrec%2Fjobs%2Fold");
    let result = dir.path().join("s3/output-bucket/test_0");
    for old in [&path, &result] {
        let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(old)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
    }
    assert_eq!(
        store
            .sweep_prefix("output-bucket", "_imgrec/", Duration::from_secs(600))
            .unwrap(),
        1
    );
    let left = store.list("output-bucket", "").await.unwrap();
    let left: Vec<&str> = left.iter().map(|k| k.as_str()).collect();
    assert_eq!(left, ["_imgrec/jobs/fresh", "test_0"]);
}

#[tokio::test]
async fn fs_object_store_failed_puts_leave_nothing_and_are_transient() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsObjectStore::new(dir.path());
    let key = ObjectKey::new("target.jpg").unwrap();
    // A folder where the object's file should go: the rename fails after the version was linked.
    std::fs::create_dir_all(dir.path().join("s3/input-bucket/target.jpg/x")).unwrap();
    let err = store
        .put("input-bucket", &key, bytes::Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(files_in(&dir.path().join("tmp")), 0);
    assert_eq!(files_in(&dir.path().join("versions/input-bucket")), 0);
}

#[test]
fn object_keys_are_validated() {
    contract::object_keys_are_validated();
}

#[tokio::test]
async fn fs_object_store_refuses_bad_bucket_names_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsObjectStore::new(dir.path());
    let key = ObjectKey::new("a.jpg").unwrap();
    for bucket in ["..", "../x", "a/b", "UP", ""] {
        let err = store
            .put(bucket, &key, bytes::Bytes::from_static(b"x"))
            .await
            .expect_err(bucket);
        assert!(!err.is_transient(), "bucket {bucket:?}: {err}");
    }
    let err = store
        .get("input-bucket", &key, Some("../../etc/passwd"))
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err}");
    let mut left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.retain(|n| n != "tmp");
    assert!(left.is_empty(), "wrote outside: {left:?}");
}

#[tokio::test]
async fn process_fleet_contract() {
    let dir = tempfile::tempdir().unwrap();
    let command = shell_worker("exec sleep 60");
    // `sleep` sends no heartbeats: a timeout far beyond the test.
    let fleet: Arc<dyn Fleet> = Arc::new(
        ProcessFleet::new(
            command,
            &dir.path().join("queue.sqlite3"),
            Duration::from_secs(3600),
            "web-instance1",
        )
        .unwrap(),
    );
    contract::fleet_contract(fleet, Duration::from_secs(10), true).await;
}

#[tokio::test]
async fn process_fleet_notices_a_crashed_instance() {
    let dir = tempfile::tempdir().unwrap();
    let command = shell_worker("exit 3");
    let fleet = ProcessFleet::new(
        command,
        &dir.path().join("queue.sqlite3"),
        Duration::from_secs(3600),
        "web-instance1",
    )
    .unwrap();
    fleet.launch("app-instance1").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !fleet.instances().await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "crashed instance still listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The name is free again for its replacement.
    fleet.launch("app-instance1").await.unwrap();
    fleet.shutdown().await.unwrap();
}

/// A worker that stops heartbeating (here: one that stops itself, as SIGSTOP does, and one that
/// never beats) is sent SIGTERM, then SIGKILL, and dropped so that the scaler replaces it.
#[tokio::test]
async fn process_fleet_kills_instances_that_miss_their_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    for script in ["kill -STOP $$", "exec sleep 60"] {
        let command = shell_worker(script);
        let fleet = ProcessFleet::new(
            command,
            &dir.path().join("queue.sqlite3"),
            Duration::from_millis(500),
            "web-instance1",
        )
        .unwrap();
        fleet.launch("app-instance1").await.unwrap();
        let start = std::time::Instant::now();
        let mut seen_stopping = false;
        loop {
            let instances = fleet.instances().await.unwrap();
            if instances.is_empty() {
                break;
            }
            seen_stopping |= instances[0].state == InstanceState::Stopping;
            assert!(
                start.elapsed() < Duration::from_secs(6),
                "{script}: silent instance still alive"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(seen_stopping, "{script}: never shown as stopping");
        assert!(
            start.elapsed() >= Duration::from_millis(500),
            "{script}: stopped before its timeout"
        );
    }
}

/// The local fleet gives back a dead instance's requests at once: the ones it received are marked
/// as held by it, and `release_held_by` makes them visible again with their receive counts.
#[tokio::test]
async fn sqlite_queue_releases_what_a_gone_receiver_held() {
    use imgrec_domain::ports::WorkQueue;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("queue.sqlite3");
    let worker = SqliteQueue::open(&db, "requests", None)
        .unwrap()
        .received_by("app-instance1");
    let other = SqliteQueue::open(&db, "requests", None)
        .unwrap()
        .received_by("app-instance2");
    worker
        .send_batch(&[b"a".to_vec(), b"b".to_vec(), b"c".to_vec()])
        .await
        .unwrap();
    let long = Duration::from_secs(600);
    let held = worker.receive(2, long, Duration::ZERO).await.unwrap();
    let kept = other.receive(1, long, Duration::ZERO).await.unwrap();
    assert_eq!((held.len(), kept.len()), (2, 1));
    assert!(other.receive(10, long, Duration::ZERO).await.unwrap().is_empty());

    let conn = imgrec_local::open_db(&db).unwrap();
    assert_eq!(
        imgrec_local::release_held_by(&conn, "app-instance1").unwrap(),
        ["requests", "requests"]
    );
    let again = other.receive(10, long, Duration::ZERO).await.unwrap();
    assert_eq!(again.len(), 2, "only the gone instance's requests come back");
    assert!(again.iter().all(|m| m.receive_count == 2));
    // Nothing of app-instance2's, and nothing twice.
    assert_eq!(
        imgrec_local::release_held_by(&conn, "app-instance1").unwrap(),
        Vec::<String>::new()
    );
    // An old receipt no longer deletes what was given back and received again.
    worker.delete(&held[0].receipt).await.unwrap();
    assert_eq!(worker.depth().await.unwrap().total(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_lease_contract() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("queue.sqlite3");
    let a = imgrec_local::SqliteLease::open(&db, "scaler", "a").unwrap();
    let b = imgrec_local::SqliteLease::open(&db, "scaler", "b").unwrap();
    contract::lease_contract(Arc::new(a), Arc::new(b)).await;
}

/// A fleet fenced by the scaler lease launches only while its owner holds it, checked in the
/// statement that claims the name: a scaler whose lease ran out cannot start a worker however
/// late its launch comes.
#[tokio::test]
async fn a_fenced_fleet_launches_only_under_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("queue.sqlite3");
    let command = shell_worker("exec sleep 60");
    let fleet = ProcessFleet::new(command, &db, Duration::from_secs(3600), "holder-a")
        .unwrap()
        .fenced_by("scaler");
    let refused = fleet.launch("app-instance1").await.unwrap_err();
    assert!(
        format!("{refused:#}").contains("no longer holds the scaler lease"),
        "{refused:#}"
    );
    let conn = imgrec_local::open_db(&db).unwrap();
    assert!(imgrec_local::lease::try_hold(&conn, "scaler", "holder-a", Duration::from_millis(300)).unwrap());
    fleet.launch("app-instance1").await.unwrap();
    std::thread::sleep(Duration::from_millis(350)); // the lease runs out
    assert!(
        fleet.launch("app-instance2").await.is_err(),
        "launched after the lease expired"
    );
    // Another holder's lease does not let this fleet launch either.
    assert!(imgrec_local::lease::try_hold(&conn, "scaler", "holder-b", Duration::from_secs(60)).unwrap());
    assert!(fleet.launch("app-instance2").await.is_err());
    assert_eq!(fleet.instances().await.unwrap().len(), 1);
    fleet.shutdown().await.unwrap();
}

/// The fleet never blocks its caller's runtime: with the database locked by another process's
/// writer, a launch waits for the lock on the fleet's own thread while the (single-threaded)
/// runtime keeps serving its other tasks.
#[test]
fn the_fleet_waits_for_the_database_off_the_callers_runtime() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("queue.sqlite3");
        let command = shell_worker("exec sleep 60");
        let fleet = ProcessFleet::new(command, &db, Duration::from_secs(3600), "web-instance1").unwrap();
        // Another process's writer holds the lock for a second.
        let writer = hold_write_lock(&db, Duration::from_secs(1));
        // A task beside the launch: the longest it waited for its 10 ms timer.
        let ticker = tokio::spawn(async {
            let mut worst = Duration::ZERO;
            for _ in 0..100 {
                let started = std::time::Instant::now();
                tokio::time::sleep(Duration::from_millis(10)).await;
                worst = worst.max(started.elapsed());
            }
            worst
        });
        tokio::time::sleep(Duration::from_millis(30)).await; // the ticker is running
        fleet.launch("app-instance1").await.unwrap();
        let worst = ticker.await.unwrap();
        writer.join().unwrap();
        assert!(
            worst < Duration::from_millis(300),
            "the runtime stalled {worst:?} behind the fleet"
        );
        assert_eq!(fleet.instances().await.unwrap().len(), 1);
        fleet.shutdown().await.unwrap();
    });
}

/// Heartbeats are measured on the monotonic clock: when the wall clock steps (an NTP correction, a
/// laptop resuming from sleep) a worker that beats on time stays, instead of the whole pool looking
/// silent at once. Here every beat's wall time is written an hour in the past.
#[tokio::test]
async fn a_wall_clock_step_does_not_make_beating_workers_look_silent() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("queue.sqlite3");
    let command = shell_worker("exec sleep 60");
    let fleet = ProcessFleet::new(command, &db, Duration::from_millis(500), "web-instance1").unwrap();
    fleet.launch("app-instance1").await.unwrap();
    let status = SqliteInstanceStatus::open(&db, "app-instance1").unwrap();
    let conn = imgrec_local::open_db(&db).unwrap();
    status.report(InstanceState::Running, false).await.unwrap();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        status.heartbeat().await.unwrap();
        conn.execute("UPDATE instances SET updated_at_ms = updated_at_ms - 3600000", [])
            .unwrap();
        let instances = fleet.instances().await.unwrap();
        assert_eq!(instances.len(), 1);
        assert_eq!(
            instances[0].state,
            InstanceState::Running,
            "a beating worker was retired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet.shutdown().await.unwrap();
}

/// A message received while another process holds the database's write lock is hidden for its
/// whole visibility timeout from when it was handed out, not from when the receive began waiting.
#[tokio::test]
async fn visibility_counts_from_the_receive_not_from_the_wait_for_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("queue.sqlite3");
    let queue = SqliteQueue::open(&db, "requests", None).unwrap();
    queue.send(b"once").await.unwrap();
    let writer = hold_write_lock(&db, Duration::from_millis(1500));
    let visibility = Duration::from_secs(2);
    let got = queue.receive(1, visibility, Duration::ZERO).await.unwrap();
    assert_eq!(got.len(), 1);
    writer.join().unwrap();
    // 1 s after it was handed out (2.5 s after the receive began): still hidden.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = queue.receive(1, visibility, Duration::ZERO).await.unwrap();
    assert!(again.is_empty(), "handed out twice within its visibility timeout");
}

/// Retention: version links older than their retention go (the current objects stay), and so do
/// messages older than their queue's, response queues included by prefix.
#[tokio::test]
async fn old_versions_and_messages_expire_and_the_rest_stays() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsObjectStore::new(dir.path());
    let key = ObjectKey::new("cat.jpg").unwrap();
    let put = |body: &'static [u8]| store.put("input-bucket", &key, bytes::Bytes::from_static(body));
    let old = put(b"old").await.unwrap().version.unwrap();
    let new = put(b"new").await.unwrap().version.unwrap();
    let old_link = dir.path().join("versions/input-bucket").join(&old);
    let a_day_ago = std::time::SystemTime::now() - Duration::from_secs(86_400);
    std::fs::File::options()
        .write(true)
        .open(&old_link)
        .unwrap()
        .set_modified(a_day_ago)
        .unwrap();
    assert_eq!(store.sweep_versions(Duration::from_secs(3600)).unwrap(), 1);
    assert_eq!(store.get("input-bucket", &key, Some(&old)).await.unwrap(), None);
    assert_eq!(
        store.get("input-bucket", &key, Some(&new)).await.unwrap().unwrap(),
        &b"new"[..]
    );
    assert_eq!(
        store.get("input-bucket", &key, None).await.unwrap().unwrap(),
        &b"new"[..]
    );

    let db = dir.path().join("queue.sqlite3");
    for name in [
        "requests-dlq",
        "responses-web-instance1-ab12",
        "responses",
        "responsesX",
        "requests",
    ] {
        SqliteQueue::open(&db, name, None).unwrap().send(b"m").await.unwrap();
    }
    let conn = imgrec_local::open_db(&db).unwrap();
    conn.execute("UPDATE messages SET sent_at_ms = sent_at_ms - 86400000", [])
        .unwrap();
    SqliteQueue::open(&db, "requests-dlq", None)
        .unwrap()
        .send(b"young")
        .await
        .unwrap();
    let day = Duration::from_secs(3600);
    assert_eq!(
        imgrec_local::expire_messages(&conn, "requests-dlq", false, day).unwrap(),
        1
    );
    assert_eq!(imgrec_local::expire_messages(&conn, "responses", true, day).unwrap(), 2);
    let left: Vec<String> = conn
        .prepare("SELECT queue FROM messages ORDER BY queue")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(left, ["requests", "requests-dlq", "responsesX"]);
}

/// Two handles on one folder store, as two processes of the stack have: the newest result stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fs_object_store_keeps_the_newest_result() {
    let dir = tempfile::tempdir().unwrap();
    let stores = vec![
        Arc::new(FsObjectStore::new(dir.path())),
        Arc::new(FsObjectStore::new(dir.path())),
    ];
    contract::newest_result_contract(stores, "output-bucket").await;
    // The order lives beside the object, not in the bucket.
    let listed = FsObjectStore::new(dir.path()).list("output-bucket", "").await.unwrap();
    let listed: Vec<&str> = listed.iter().map(|k| k.as_str()).collect();
    assert_eq!(listed, ["cat", "dir/dog", "race"]);
}

/// Two handles on one folder store: of racing creators of a key, exactly one stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fs_object_store_creates_a_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let stores = vec![
        Arc::new(FsObjectStore::new(dir.path())),
        Arc::new(FsObjectStore::new(dir.path())),
    ];
    contract::create_once_contract(stores, "output-bucket").await;
}

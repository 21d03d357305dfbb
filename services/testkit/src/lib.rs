//! Contract tests that every adapter of a port must pass, local and AWS alike. Each function
//! panics (as tests do) on the first broken promise.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use imgrec_domain::messages::{ClassifyRequest, Message};
use imgrec_domain::ports::{
    Fleet, Kept, Lease, Metadata, ObjectKey, ObjectStore, PortError, Receipt, UploadOrder, WorkQueue,
};

/// A request queue with its dead-letter queue, as the adapter under test configures them.
pub struct QueuePair<Q> {
    pub main: Q,
    pub dead_letter: Q,
    pub max_receives: u32,
}

const SHORT: Duration = Duration::from_secs(1);
const NO_WAIT: Duration = Duration::ZERO;

async fn receive_all<Q: WorkQueue>(q: &Q, visibility: Duration) -> Vec<imgrec_domain::ports::Received> {
    let mut all = Vec::new();
    loop {
        let got = q
            .receive(10, visibility, Duration::from_millis(200))
            .await
            .expect("receive");
        if got.is_empty() {
            return all;
        }
        all.extend(got);
    }
}

/// Send, receive, depth, delete.
pub async fn queue_send_receive_delete<Q: WorkQueue>(q: Q) {
    for i in 0..3 {
        q.send(format!("m{i}").as_bytes()).await.expect("send");
    }
    assert_eq!(q.depth().await.expect("depth").visible, 3);
    let got = receive_all(&q, Duration::from_secs(30)).await;
    let bodies: HashSet<Vec<u8>> = got.iter().map(|m| m.body.clone()).collect();
    assert_eq!(
        bodies,
        ["m0", "m1", "m2"].iter().map(|s| s.as_bytes().to_vec()).collect()
    );
    assert!(got.iter().all(|m| m.receive_count == 1));
    let depth = q.depth().await.expect("depth");
    assert_eq!((depth.visible, depth.in_flight), (0, 3));
    for m in &got {
        q.delete(&m.receipt).await.expect("delete");
    }
    assert_eq!(q.depth().await.expect("depth").total(), 0);
    assert!(q.receive(10, SHORT, NO_WAIT).await.expect("receive").is_empty());
    // A receipt the queue never issued fails the same way however often it is tried.
    let forged = Receipt("not-a-receipt".into());
    let refused = q.change_visibility(&forged, SHORT).await.expect_err("a forged receipt");
    assert!(!refused.is_transient(), "{refused:?}");
}

/// A request whose file name holds what SQS would not carry raw (U+FFFE, U+FFFF: it refuses
/// them or puts U+FFFD in their place) goes through the queue as it was sent.
pub async fn queue_carries_any_file_name<Q: WorkQueue>(q: Q) {
    let first = br#"{"version":1,"request_id":"67e55044-10b1-426f-9247-bb680e5fe0c8","key":"","object_version":null,"submitted_at_ms":1}"#;
    let mut request = ClassifyRequest::decode(first).expect("a request");
    request.key = "odd\u{FFFF}\u{FFFE}\u{FFFD}\u{10348}.jpg".into();
    q.send(&request.encode()).await.expect("send");
    let got = receive_all(&q, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(ClassifyRequest::decode(&got[0].body).expect("a request"), request);
    q.delete(&got[0].receipt).await.expect("delete");
}

/// A message not deleted comes back after its visibility timeout, with a new receipt; changing
/// visibility to zero releases it at once. (Whether a stale receipt still deletes is left open, as
/// SQS leaves it: "the message might not be deleted".)
pub async fn queue_redelivery<Q: WorkQueue>(q: Q) {
    q.send(b"again").await.expect("send");
    let first = q
        .receive(1, SHORT, NO_WAIT)
        .await
        .expect("receive")
        .pop()
        .expect("a message");
    assert!(
        q.receive(1, SHORT, NO_WAIT).await.expect("receive").is_empty(),
        "invisible message delivered twice"
    );
    tokio::time::sleep(SHORT + Duration::from_millis(300)).await;
    let second = q
        .receive(1, Duration::from_secs(30), Duration::from_secs(2))
        .await
        .expect("receive")
        .pop()
        .expect("redelivered");
    assert_eq!(second.body, b"again");
    assert_eq!(second.receive_count, 2);
    assert_ne!(second.receipt, first.receipt);
    q.change_visibility(&second.receipt, Duration::ZERO)
        .await
        .expect("change visibility");
    let third = q
        .receive(1, Duration::from_secs(30), Duration::from_secs(2))
        .await
        .expect("receive")
        .pop()
        .expect("released");
    assert_eq!(third.receive_count, 3);
    q.delete(&third.receipt).await.expect("delete");
    assert_eq!(q.depth().await.expect("depth").total(), 0);
}

/// After `max_receives` receives without a delete, the message moves to the dead-letter queue.
pub async fn queue_dead_letter<Q: WorkQueue>(pair: QueuePair<Q>) {
    pair.main.send(b"poison").await.expect("send");
    for i in 1..=pair.max_receives {
        let m = pair
            .main
            .receive(1, SHORT, Duration::from_secs(3))
            .await
            .expect("receive")
            .pop();
        let m = m.unwrap_or_else(|| panic!("receive {i} got nothing"));
        assert_eq!(m.receive_count, i);
        tokio::time::sleep(SHORT + Duration::from_millis(300)).await;
    }
    assert!(pair
        .main
        .receive(1, SHORT, Duration::from_millis(1500))
        .await
        .expect("receive")
        .is_empty());
    let dead = pair
        .dead_letter
        .receive(1, SHORT, Duration::from_secs(3))
        .await
        .expect("receive")
        .pop();
    assert_eq!(dead.expect("message in the dead-letter queue").body, b"poison");
}

/// How often a queue delivers one message under concurrent receivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Never twice while it is invisible (the SQLite queue's receive is one transaction).
    ExactlyOnce,
    /// At least once: SQS standard queues (and moto under concurrent requests) may hand out a
    /// copy twice; nothing may be lost.
    AtLeastOnce,
}

/// Concurrent receivers together get every message; with `ExactlyOnce`, never the same one twice.
pub async fn queue_concurrent_receivers<Q: WorkQueue + Clone>(q: Q, delivery: Delivery) {
    const N: usize = 60;
    for i in 0..N {
        q.send(format!("{i}").as_bytes()).await.expect("send");
    }
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let q = q.clone();
            tokio::spawn(async move {
                let got = receive_all(&q, Duration::from_secs(60)).await;
                for m in &got {
                    q.delete(&m.receipt).await.expect("delete");
                }
                got.into_iter().map(|m| m.body).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("receiver"));
    }
    let unique: HashSet<_> = all.iter().cloned().collect();
    assert_eq!(unique.len(), N, "losses");
    if delivery == Delivery::ExactlyOnce {
        assert_eq!(all.len(), N, "duplicates");
    }
}

/// A receive on an empty queue waits (long poll) and returns as soon as a message arrives.
pub async fn queue_long_poll<Q: WorkQueue + Clone>(q: Q) {
    let sender = q.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        sender.send(b"late").await.expect("send");
    });
    let start = Instant::now();
    let got = q.receive(1, SHORT, Duration::from_secs(5)).await.expect("receive");
    assert_eq!(got.len(), 1, "long poll returned empty");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "long poll did not return on arrival"
    );
    q.delete(&got[0].receipt).await.expect("delete");
}

/// Put, get (latest and by version), list; keys with slashes.
pub async fn object_store_contract<S: ObjectStore>(store: S, bucket: &str) {
    let key = ObjectKey::new("test_0.JPEG").expect("key");
    assert!(store.get(bucket, &key, None).await.expect("get").is_none());
    let v1 = store
        .put(bucket, &key, Bytes::from_static(b"first"))
        .await
        .expect("put");
    let v2 = store
        .put(bucket, &key, Bytes::from_static(b"second"))
        .await
        .expect("put");
    assert_eq!(
        store.get(bucket, &key, None).await.expect("get").as_deref(),
        Some(&b"second"[..])
    );
    if let (Some(a), Some(b)) = (&v1.version, &v2.version) {
        assert_ne!(a, b);
        assert_eq!(
            store.get(bucket, &key, Some(a)).await.expect("get").as_deref(),
            Some(&b"first"[..])
        );
        assert_eq!(
            store.get(bucket, &key, Some(b)).await.expect("get").as_deref(),
            Some(&b"second"[..])
        );
    }
    // Keys a file system would not take as they are: all stored, listed and read back.
    let odd = [
        "dir/test_1.png".to_owned(),
        "dir".to_owned(),
        "100% real.jpg".to_owned(),
        "ünïcode ファイル.png".to_owned(),
        "back\\slash".to_owned(),
        format!("{}.jpg", "é".repeat(510)),
        "x".repeat(ObjectKey::MAX_LEN),
    ];
    for (i, name) in odd.iter().enumerate() {
        let key = ObjectKey::new(name.as_str()).expect("key");
        store
            .put(bucket, &key, Bytes::from(vec![i as u8; 3]))
            .await
            .expect("put");
    }
    for (i, name) in odd.iter().enumerate() {
        let key = ObjectKey::new(name.as_str()).expect("key");
        let got = store.get(bucket, &key, None).await.expect("get");
        assert_eq!(got.as_deref(), Some(&[i as u8; 3][..]), "{name:?}");
    }
    let store = &store;
    let listed = |prefix: &'static str| async move {
        let keys = store.list(bucket, prefix).await.expect("list");
        keys.iter().map(|k| k.to_string()).collect::<Vec<String>>()
    };
    let mut want: Vec<String> = odd.iter().cloned().chain(["test_0.JPEG".to_owned()]).collect();
    want.sort();
    assert_eq!(listed("").await, want);
    assert_eq!(listed("dir").await, ["dir", "dir/test_1.png"]);
    assert_eq!(listed("dir/").await, ["dir/test_1.png"]);
    assert!(listed("nothing/").await.is_empty());
    // Prefixes of keys kept under other names: escaped, and too long for one file name.
    assert_eq!(listed("100%").await, ["100% real.jpg"]);
    assert_eq!(listed("xx").await, ["x".repeat(ObjectKey::MAX_LEN)]);
    assert_eq!(listed("éé").await, [format!("{}.jpg", "é".repeat(510))]);
}

/// Of many writers creating one key at once (through every handle), exactly one stores and the
/// object holds its bytes; a key deleted can be created again; deleting nothing is no error.
pub async fn create_once_contract<S: ObjectStore>(stores: Vec<Arc<S>>, bucket: &str) {
    let key = ObjectKey::new("_claims/job-1").expect("key");
    let writes: Vec<_> = (0..16)
        .map(|i| {
            let (store, key, bucket) = (stores[i % stores.len()].clone(), key.clone(), bucket.to_owned());
            tokio::spawn(async move {
                (
                    i,
                    store
                        .put_if_absent(&bucket, &key, Bytes::from(format!("claim {i}")))
                        .await,
                )
            })
        })
        .collect();
    let mut winners = Vec::new();
    for write in writes {
        let (i, stored) = write.await.expect("task");
        if stored.expect("put_if_absent") {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "writers that stored: {winners:?}");
    let store = &stores[0];
    let held = store.get(bucket, &key, None).await.expect("get");
    assert_eq!(held, Some(Bytes::from(format!("claim {}", winners[0]))));
    assert!(!store
        .put_if_absent(bucket, &key, Bytes::from_static(b"late"))
        .await
        .expect("put_if_absent"));
    store.delete(bucket, &key).await.expect("delete");
    assert!(store.get(bucket, &key, None).await.expect("get").is_none());
    store.delete(bucket, &key).await.expect("deleting nothing");
    assert!(store
        .put_if_absent(bucket, &key, Bytes::from_static(b"again"))
        .await
        .expect("put_if_absent"));
    assert_eq!(
        store.get(bucket, &key, None).await.expect("get").as_deref(),
        Some(&b"again"[..])
    );
}

/// The newest upload's result stays: an older one's write is refused whenever it comes, a newer
/// one's (or the same one's again: a redelivered request) replaces it, and of many writers racing
/// on one key the newest wins. `stores` are handles on one store (one per process, locally).
// Long: the contract's cases in order (older, newer, again, racing), on one key; each needs the last.
pub async fn newest_result_contract<S: ObjectStore>(stores: Vec<Arc<S>>, bucket: &str) {
    let store = &stores[0];
    let order = |ms: u64| UploadOrder::new(ms, &format!("req{ms}"));
    let meta = |ms: u64| Metadata::from([("model-version".to_owned(), format!("v{ms}"))]);
    let key = ObjectKey::new("cat").expect("key");
    let put = |bytes: &'static [u8], ms: u64| {
        let (store, key) = (store.clone(), key.clone());
        async move {
            store
                .put_newest(bucket, &key, Bytes::from_static(bytes), &order(ms), &meta(ms))
                .await
                .expect("put_newest")
        }
    };
    let read = || async { store.get(bucket, &key, None).await.expect("get") };
    assert_eq!(put(b"two", 2_000).await, Kept::Stored);
    assert_eq!(
        put(b"one", 1_000).await,
        Kept::Superseded,
        "an older result replaced a newer one"
    );
    assert_eq!(read().await.as_deref(), Some(&b"two"[..]));
    assert_eq!(put(b"three", 3_000).await, Kept::Stored);
    assert_eq!(
        put(b"three", 3_000).await,
        Kept::Stored,
        "a redelivered request stores again"
    );
    assert_eq!(read().await.as_deref(), Some(&b"three"[..]));
    // The metadata kept is the stored result's, without the order kept for the comparison.
    assert_eq!(store.metadata(bucket, &key).await.expect("metadata"), Some(meta(3_000)));
    assert_eq!(
        store
            .metadata(bucket, &ObjectKey::new("none").expect("key"))
            .await
            .expect("metadata"),
        None
    );
    let bad = Metadata::from([("Model Name".to_owned(), "x".to_owned())]);
    let refused = store
        .put_newest(bucket, &key, Bytes::from_static(b"x"), &order(4_000), &bad)
        .await;
    assert!(matches!(refused, Err(PortError::Refused(_))), "{refused:?}");
    // An object `put` wrote (no order) is replaced by any result.
    let plain = ObjectKey::new("dir/dog").expect("key");
    store
        .put(bucket, &plain, Bytes::from_static(b"old"))
        .await
        .expect("put");
    let kept = store
        .put_newest(bucket, &plain, Bytes::from_static(b"new"), &order(1), &meta(1))
        .await
        .expect("put_newest");
    assert_eq!(kept, Kept::Stored);
    store
        .put(bucket, &plain, Bytes::from_static(b"plain"))
        .await
        .expect("put");
    assert_eq!(
        store.metadata(bucket, &plain).await.expect("metadata"),
        Some(Metadata::new()),
        "a plain put keeps no metadata"
    );

    // Racing writers, through every handle, in a scrambled order: the newest stays.
    let race = ObjectKey::new("race").expect("key");
    let orders: Vec<u64> = (0..16u64).map(|i| (i * 7) % 16).collect();
    let writes: Vec<_> = orders
        .iter()
        .enumerate()
        .map(|(i, &ms)| {
            let (store, race, bucket) = (stores[i % stores.len()].clone(), race.clone(), bucket.to_owned());
            tokio::spawn(async move {
                let bytes = Bytes::from(format!("result {ms}"));
                store
                    .put_newest(
                        &bucket,
                        &race,
                        bytes,
                        &UploadOrder::new(ms, &format!("req{ms}")),
                        &Metadata::new(),
                    )
                    .await
            })
        })
        .collect();
    for write in writes {
        write.await.expect("task").expect("put_newest");
    }
    assert_eq!(
        store.get(bucket, &race, None).await.expect("get").as_deref(),
        Some(&b"result 15"[..])
    );
}

/// Keys S3 would refuse or that its REST API cannot carry unchanged are rejected before any I/O.
pub fn object_keys_are_validated() {
    for bad in ["", "../etc/passwd", "a/../b", "a\0b", ".", "x/..", "./x", "line\nbreak"] {
        assert!(ObjectKey::new(bad).is_err(), "accepted {bad:?}");
    }
    assert!(ObjectKey::new("x".repeat(ObjectKey::MAX_LEN + 1)).is_err());
    for good in [
        "test_0.JPEG",
        "a/b/c.png",
        "with space.jpg",
        "ünïcode.jpg",
        "..hidden",
        "a//b",
        "dir/",
        "a\\b",
        "100%",
    ] {
        assert!(ObjectKey::new(good).is_ok(), "rejected {good:?}");
    }
}

async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Told a count, a fleet launches under names it picks (the lowest free), counts the launches it
/// has asked for so that the same count again launches nothing, never has more than `max` alive,
/// retires the surplus, and (for fleets that own their instances) stops them all on shutdown.
pub async fn fleet_contract(fleet: Arc<dyn Fleet>, timeout: Duration, stops_on_shutdown: bool) {
    let resize = fleet.scale_to(2, 3).await.expect("scale out");
    assert_eq!(resize.launch, ["app-instance1", "app-instance2"]);
    assert!(resize.retire.is_empty());
    assert!(
        fleet.scale_to(2, 3).await.expect("scale_to").is_empty(),
        "launched again for instances not yet started"
    );
    let names = |f: Arc<dyn Fleet>| async move {
        f.instances()
            .await
            .expect("instances")
            .into_iter()
            .filter(|i| i.serves())
            .map(|i| i.name)
            .collect::<Vec<_>>()
    };
    eventually("both instances are listed", timeout, || {
        let f = fleet.clone();
        async move { names(f).await == ["app-instance1", "app-instance2"] }
    })
    .await;
    let resize = fleet.scale_to(10, 3).await.expect("scale out past the cap");
    assert_eq!(resize.launch, ["app-instance3"], "the cap is 3");
    eventually("three instances are listed", timeout, || {
        let f = fleet.clone();
        async move { names(f).await.len() == 3 }
    })
    .await;
    let resize = fleet.scale_to(1, 3).await.expect("scale in");
    assert_eq!(resize.retire.len(), 2);
    let alive = fleet.instances().await.expect("instances").len();
    assert!(alive <= 3, "{alive} alive with a cap of 3");
    eventually("the retired instances are gone", timeout, || {
        let f = fleet.clone();
        async move { f.instances().await.expect("instances").len() == 1 }
    })
    .await;
    if !stops_on_shutdown {
        return;
    }
    fleet.shutdown().await.expect("shutdown");
    eventually("no instance is left", timeout, || {
        let f = fleet.clone();
        async move { f.instances().await.expect("instances").is_empty() }
    })
    .await;
}

/// One holder at a time: a renewal keeps the lease, another holder takes it only once it has
/// expired, a release frees it at once, and of two taking it at the same moment exactly one wins.
pub async fn lease_contract(a: Arc<dyn Lease>, b: Arc<dyn Lease>) {
    let ttl = Duration::from_millis(1500);
    assert!(a.hold(ttl).await.expect("hold"), "a free lease is taken");
    assert!(!b.hold(ttl).await.expect("hold"), "a held lease is taken by another");
    assert!(a.hold(ttl).await.expect("renew"), "the holder cannot renew");
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    assert!(b.hold(ttl).await.expect("hold"), "an expired lease is not taken over");
    assert!(!a.hold(ttl).await.expect("hold"), "the old holder still holds it");
    b.release().await.expect("release");
    assert!(a.hold(ttl).await.expect("hold"), "a released lease is not free");
    a.release().await.expect("release");
    let long = Duration::from_secs(60);
    let (x, y) = tokio::join!(a.hold(long), b.hold(long));
    assert!(
        x.expect("hold") ^ y.expect("hold"),
        "not exactly one of two concurrent holders won"
    );
}

/// A moto server (PyPI `moto[server]`, installed in the project venv) on a free loopback port,
/// stopped when dropped: the local AWS endpoint the AWS adapters are tested against.
pub struct Moto {
    child: std::process::Child,
    pub endpoint: String,
}

impl Moto {
    pub fn start() -> Self {
        // MOTO_SERVER, else the project venv's moto through `tools/moto_server.py` (S3's
        // conditional writes atomic, as on AWS) with the venv's python: a venv's scripts name its
        // absolute path, so they break when the checkout moves, its python does not. The
        // checkout is found from the crate `cargo test` runs (it sets CARGO_MANIFEST_DIR at run
        // time) or the working directory.
        let mut command = match std::env::var_os("MOTO_SERVER") {
            Some(bin) => std::process::Command::new(bin),
            None => {
                let root = std::env::var_os("CARGO_MANIFEST_DIR")
                    .map(|m| std::path::PathBuf::from(m).join("../.."))
                    .unwrap_or_else(|| ".".into());
                let python = root.join(".venv/bin/python");
                assert!(python.exists(), "{} missing: run `make venv`", python.display());
                let mut command = std::process::Command::new(python);
                command.arg(root.join("tools/moto_server.py"));
                command
            }
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the moto server");
        let moto = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !moto.answers(port) {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    fn answers(&self, port: u16) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut head = [0u8; 12];
        s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
    }

    /// SDK configuration for this endpoint with moto's dummy credentials.
    #[cfg(feature = "aws")]
    pub async fn sdk(&self) -> aws_config::SdkConfig {
        let credentials = aws_sdk_s3::config::Credentials::new("testing", "testing", None, None, "moto");
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .credentials_provider(credentials)
            .load()
            .await
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! The web tier's HTTP behaviour in-process (`web_tier::spawn` on a free port, local adapters, no
//! workers): routes, refused uploads, limits, status, and the answer to a request still waiting
//! when it stops. Process-level behaviour (signals, kill -9, restarts) stays in tests/*.py.

use std::path::Path;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use imgrec_domain::ports::{PortError, PortResult, QueueDepth, Receipt, Received, WorkQueue};
use imgrec_runtime::backend::Adapters;
use imgrec_runtime::settings::Settings;
use reqwest::header::HeaderValue;
use reqwest::multipart::{Form, Part};
use reqwest::{Client, StatusCode};

const MAX_UPLOAD: u64 = 64 * 1024;

fn settings(data: &Path) -> Settings {
    let mut s = Settings::defaults().expect("defaults load");
    s.data_dir = data.to_path_buf();
    s.web.host = "127.0.0.1".into();
    s.web.run_scaler = false;
    s.web.max_upload_bytes = MAX_UPLOAD;
    s.web.drain_timeout_s = 0;
    s
}

fn image() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../classifier/tests/fixtures/small.jpg")).unwrap()
}

fn form(field: &str, name: &str, bytes: Vec<u8>) -> Form {
    Form::new().part(field.to_owned(), Part::bytes(bytes).file_name(name.to_owned()))
}

async fn upload(client: &Client, url: &str, form: Form, json: bool) -> (StatusCode, String) {
    let mut request = client.post(url).multipart(form);
    if json {
        request = request.header("accept", "application/json");
    }
    let response = request.send().await.expect("upload");
    (response.status(), response.text().await.expect("body"))
}

async fn get_status(client: &Client, web: &web_tier::SpawnedWebTier) -> serde_json::Value {
    get_json(client, format!("{}status", web.url())).await
}

async fn get_json(client: &Client, url: String) -> serde_json::Value {
    let response = client.get(&url).send().await.expect(&url);
    response.json().await.expect("a JSON answer")
}

async fn get_metrics(client: &Client, web: &web_tier::SpawnedWebTier) -> String {
    let response = client
        .get(format!("{}metrics", web.url()))
        .send()
        .await
        .expect("metrics");
    response.text().await.expect("metrics text")
}

fn stored(data: &Path) -> usize {
    std::fs::read_dir(data.join("s3/input-bucket")).map_or(0, |d| d.count())
}

#[tokio::test]
async fn routes_answer_by_path_then_method() {
    let dir = tempfile::tempdir().unwrap();
    let web = web_tier::spawn(settings(dir.path())).await.unwrap();
    let client = Client::new();
    let get = |path: &str| client.get(format!("{}{path}", web.url())).send();
    let health = get("healthz").await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.text().await.unwrap(), "ok\n");
    for path in ["favicon.ico", "nope", "status/x", "healthz/more", "no/such/page"] {
        assert_eq!(get(path).await.unwrap().status(), StatusCode::NOT_FOUND, "{path}");
    }
    let page = get("").await.unwrap().text().await.unwrap();
    assert!(page.contains("myfile"), "the upload page names the field");
    let metrics = get("metrics").await.unwrap().text().await.unwrap();
    assert!(metrics.contains("imgrec_"), "{metrics}");
    let put = client.put(web.url()).send().await.unwrap();
    assert_eq!(put.status(), StatusCode::METHOD_NOT_ALLOWED);
    let delete = client.delete(format!("{}status", web.url())).send().await.unwrap();
    assert_eq!(delete.status(), StatusCode::METHOD_NOT_ALLOWED);
    // HEAD wherever GET is (monitors probe with it): GET's status and headers, no body.
    let head = |path: String| client.head(format!("{}{path}", web.url())).send();
    for path in ["healthz", "", "status", "status/history", "dashboard", "metrics"] {
        let response = head(path.into()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "HEAD /{path}");
        assert!(response.headers().contains_key("content-type"), "HEAD /{path}");
        assert!(response.bytes().await.unwrap().is_empty(), "HEAD /{path}");
    }
    for path in [format!("jobs/{}", "0".repeat(32)), "nope".into()] {
        assert_eq!(
            head(path.clone()).await.unwrap().status(),
            StatusCode::NOT_FOUND,
            "HEAD /{path}"
        );
    }
    web.stop().await.unwrap();
}

#[tokio::test]
async fn bad_uploads_get_a_one_line_reason_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let web = web_tier::spawn(settings(dir.path())).await.unwrap();
    let client = Client::new();
    let url = web.url();
    let cases = [
        ("no file", form("other", "a.jpg", image()), StatusCode::BAD_REQUEST),
        ("empty", form("myfile", "a.jpg", Vec::new()), StatusCode::BAD_REQUEST),
        (
            "not an image",
            form("myfile", "a.jpg", b"hello world".to_vec()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "truncated",
            form("myfile", "a.jpg", image()[..300].to_vec()),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("bad name", form("myfile", "..", image()), StatusCode::BAD_REQUEST),
        (
            "one byte too many",
            form("myfile", "a.jpg", vec![0xff; MAX_UPLOAD as usize + 1]),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (what, body, want) in cases {
        let (status, reason) = upload(&client, &url, body, false).await;
        assert_eq!(status, want, "{what}: {reason}");
        assert!(
            reason.ends_with('\n') && reason.lines().count() == 1 && reason.len() < 200,
            "{what}: {reason:?}"
        );
    }
    let (status, body) = upload(&client, &url, form("myfile", "a.jpg", Vec::new()), true).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let json: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
    assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()), "{json}");
    assert_eq!(stored(dir.path()), 0, "a refused upload was stored");
    assert_eq!(
        get_status(&client, &web).await["queue"]["pending"],
        0,
        "a refused upload was queued"
    );
    web.stop().await.unwrap();
}

/// A header value past ASCII, or a header read as one value sent twice, gets its own reason:
/// warp's typed headers rejected the upload's route as a whole for the first, and the upload got
/// another route's 405; the second was read as its first line.
#[tokio::test]
async fn odd_headers_get_their_own_reason_not_another_routes() {
    let dir = tempfile::tempdir().unwrap();
    let web = web_tier::spawn(settings(dir.path())).await.unwrap();
    let client = Client::new();
    let past_ascii = || HeaderValue::from_bytes("h\u{e9}llo".as_bytes()).unwrap();
    let send = |request: reqwest::RequestBuilder| async move {
        let response = request.send().await.expect("an answer");
        (response.status(), response.text().await.expect("body"))
    };
    let post = || client.post(web.url()).multipart(form("myfile", "a.jpg", image()));
    let job = || client.get(format!("{}jobs/abc", web.url()));

    let (status, reason) = send(post().header("idempotency-key", past_ascii())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reason}");
    assert!(
        reason.contains("Idempotency-Key must be 1 to 255 printable ASCII"),
        "{reason}"
    );
    let twice = post().header("idempotency-key", "a1").header("idempotency-key", "a2");
    let (status, reason) = send(twice).await;
    assert_eq!(
        (status, reason.as_str()),
        (
            StatusCode::BAD_REQUEST,
            "send one idempotency-key header, not several\n"
        )
    );
    // A job's status: the key that is not one finds no job (no keys are configured here).
    let (status, reason) = send(job().header("authorization", past_ascii())).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{reason}");
    assert!(reason.contains("a job id is 32 lowercase hex digits"), "{reason}");
    let (status, reason) = send(job().header("x-api-key", "a").header("x-api-key", "b")).await;
    assert_eq!(
        (status, reason.as_str()),
        (StatusCode::BAD_REQUEST, "send one x-api-key header, not several\n")
    );
    assert_eq!(stored(dir.path()), 0, "a refused upload was stored");
    web.stop().await.unwrap();
}

#[tokio::test]
async fn an_accepted_upload_is_stored_and_queued_and_answered_when_the_web_tier_stops() {
    let dir = tempfile::tempdir().unwrap();
    let web = web_tier::spawn(settings(dir.path())).await.unwrap();
    let client = Client::new();
    let waiting = tokio::spawn({
        let (client, url) = (client.clone(), web.url());
        async move { upload(&client, &url, form("inputFile", "cat.jpg", image()), false).await }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = get_status(&client, &web).await;
        if status["queue"]["pending"] == 1 {
            break status;
        }
        assert!(Instant::now() < deadline, "never queued: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status["waiting_requests"], 1);
    assert_eq!(status["web_tier"]["name"], "web-instance1");
    assert_eq!(status["capacity"]["max"], 20);
    assert_eq!(
        std::fs::read(dir.path().join("s3/input-bucket/cat.jpg")).unwrap(),
        image(),
        "the input object is the uploaded bytes"
    );
    web.stop().await.unwrap();
    let (code, reason) = waiting.await.unwrap();
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reason.contains("shutting down") && reason.contains("cat"), "{reason}");
}

#[tokio::test]
async fn two_web_tiers_on_one_data_folder_get_distinct_names() {
    let dir = tempfile::tempdir().unwrap();
    let first = web_tier::spawn(settings(dir.path())).await.unwrap();
    let second = web_tier::spawn(settings(dir.path())).await.unwrap();
    let client = Client::new();
    let mut names = Vec::new();
    for web in [&first, &second] {
        names.push(
            get_status(&client, web).await["web_tier"]["name"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    names.sort();
    assert_eq!(names, ["web-instance1", "web-instance2"]);
    first.stop().await.unwrap();
    second.stop().await.unwrap();
}

/// A request queue that refuses every call, as an unreachable (transient) or a deleted or
/// forbidden (permanent) queue does.
struct Refusing {
    transient: bool,
}

impl Refusing {
    fn error(&self) -> PortError {
        let e = anyhow::anyhow!("SendMessage: the queue refuses");
        if self.transient {
            PortError::Transient(e)
        } else {
            PortError::Permanent(e)
        }
    }
}

#[async_trait::async_trait]
impl WorkQueue for Refusing {
    async fn send(&self, _: &[u8]) -> PortResult<()> {
        Err(self.error())
    }
    async fn receive(&self, _: usize, _: Duration, wait: Duration) -> PortResult<Vec<Received>> {
        tokio::time::sleep(wait).await;
        Err(self.error())
    }
    async fn delete(&self, _: &Receipt) -> PortResult<()> {
        Err(self.error())
    }
    async fn change_visibility(&self, _: &Receipt, _: Duration) -> PortResult<()> {
        Err(self.error())
    }
    async fn depth(&self) -> PortResult<QueueDepth> {
        Err(self.error())
    }
}

#[tokio::test]
async fn a_queue_that_may_recover_is_a_503_one_that_will_not_a_500() {
    for (transient, want) in [
        (true, StatusCode::SERVICE_UNAVAILABLE),
        (false, StatusCode::INTERNAL_SERVER_ERROR),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        let mut adapters = Adapters::connect(&settings).await.unwrap();
        adapters.requests = Arc::new(Refusing { transient });
        let web = web_tier::spawn_on(settings, adapters).await.unwrap();
        let (status, body) = upload(&Client::new(), &web.url(), form("myfile", "a.jpg", image()), false).await;
        assert_eq!(status, want, "{body}");
        assert!(body.contains("cannot queue the request"), "{body}");
        // The upload itself was stored before the queue refused.
        assert_eq!(stored(dir.path()), 1);
        web.stop().await.unwrap();
    }
}

/// The request queue, counting the reads of its depth.
struct CountingDepth {
    queue: Arc<dyn WorkQueue>,
    reads: AtomicUsize,
}

#[async_trait::async_trait]
impl WorkQueue for CountingDepth {
    async fn send(&self, body: &[u8]) -> PortResult<()> {
        self.queue.send(body).await
    }
    async fn receive(&self, max: usize, visibility: Duration, wait: Duration) -> PortResult<Vec<Received>> {
        self.queue.receive(max, visibility, wait).await
    }
    async fn delete(&self, receipt: &Receipt) -> PortResult<()> {
        self.queue.delete(receipt).await
    }
    async fn change_visibility(&self, receipt: &Receipt, visibility: Duration) -> PortResult<()> {
        self.queue.change_visibility(receipt, visibility).await
    }
    async fn depth(&self) -> PortResult<QueueDepth> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.queue.depth().await
    }
}

/// 200 GETs, 20 at once, alternately of `/status` (`true`) and `/metrics`: each one's answer,
/// and how long they all took.
async fn poll_open_endpoints(client: &Client, web: &web_tier::SpawnedWebTier) -> (Vec<(bool, StatusCode)>, Duration) {
    use futures::StreamExt;
    let started = Instant::now();
    let answers = futures::stream::iter(0..200)
        .map(|i| {
            let status = i % 2 == 0;
            let url = format!("{}{}", web.url(), if status { "status" } else { "metrics" });
            let client = client.clone();
            async move { (status, client.get(url).send().await.expect("GET").status()) }
        })
        .buffer_unordered(20)
        .collect()
        .await;
    (answers, started.elapsed())
}

/// Depth reads allowed over `elapsed`: one per 100 ms, and the dashboard sampler's one a second.
fn most_depth_reads(elapsed: Duration) -> usize {
    1 + elapsed.as_millis() as usize / 100 + 1 + elapsed.as_secs() as usize
}

/// `/status` and `/metrics` need no key, and on AWS a depth read is a paid SQS call: however
/// many GETs come, the queue is asked at most once per 100 ms (and by the dashboard's sampler
/// once a second).
#[tokio::test]
async fn the_open_endpoints_read_the_queue_depth_at_most_ten_times_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let mut adapters = Adapters::connect(&settings).await.unwrap();
    let queue = adapters.requests.clone();
    let counting = Arc::new(CountingDepth {
        queue: queue.clone(),
        reads: AtomicUsize::new(0),
    });
    adapters.requests = counting.clone();
    let web = web_tier::spawn_on(settings, adapters).await.unwrap();
    let client = Client::new();
    let (answers, elapsed) = poll_open_endpoints(&client, &web).await;
    let reads = counting.reads.load(Ordering::SeqCst);
    assert!(answers.iter().all(|(_, s)| *s == StatusCode::OK), "{answers:?}");
    assert!(
        reads <= most_depth_reads(elapsed),
        "{reads} depth reads in {elapsed:?} for 200 GETs"
    );
    // And the depth is read again: a request queued now shows.
    queue.send(b"{}").await.unwrap();
    let queued = Instant::now();
    let pending = loop {
        let pending = get_status(&client, &web).await["queue"]["pending"].as_u64();
        if pending == Some(1) || queued.elapsed() > Duration::from_secs(5) {
            break pending;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(pending, Some(1), "not shown after {:?}", queued.elapsed());
    web.stop().await.unwrap();
}

/// A queue that cannot say its depth is not asked by every GET either: `/status` is a 503 and
/// `/metrics` leaves the gauges, from one failed read per 100 ms.
#[tokio::test]
async fn a_queue_that_fails_its_depth_reads_is_asked_no_more_often() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let mut adapters = Adapters::connect(&settings).await.unwrap();
    let counting = Arc::new(CountingDepth {
        queue: Arc::new(Refusing { transient: true }),
        reads: AtomicUsize::new(0),
    });
    adapters.requests = counting.clone();
    let web = web_tier::spawn_on(settings, adapters).await.unwrap();
    let (answers, elapsed) = poll_open_endpoints(&Client::new(), &web).await;
    let reads = counting.reads.load(Ordering::SeqCst);
    for (status, code) in answers {
        let want = if status {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        assert_eq!(code, want, "/status: {status}");
    }
    assert!(
        reads <= most_depth_reads(elapsed),
        "{reads} depth reads in {elapsed:?} for 200 GETs"
    );
    web.stop().await.unwrap();
}

#[tokio::test]
async fn a_trickling_body_is_refused_408_at_its_deadline_and_an_unfinished_header_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path());
    settings.web.header_timeout_s = 1;
    settings.web.body_timeout_s = 1;
    let web = web_tier::spawn(settings).await.unwrap();

    let mut trickle = tokio::net::TcpStream::connect(web.addr).await.unwrap();
    trickle
        .write_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\
              Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = vec![0; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), trickle.read(&mut answer))
        .await
        .expect("answered before the client gave up")
        .unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    assert!(started.elapsed() < Duration::from_secs(4));

    let mut half = tokio::net::TcpStream::connect(web.addr).await.unwrap();
    half.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(4), half.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a client that never finished its headers was kept");
    assert_eq!(stored(dir.path()), 0);
    web.stop().await.unwrap();
}

#[tokio::test]
async fn the_dashboard_is_self_contained_and_its_data_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let web = web_tier::spawn(settings(dir.path())).await.unwrap();
    let client = Client::new();
    let page = client.get(format!("{}dashboard", web.url())).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = page.text().await.unwrap();
    assert!(page.contains("<title>imgrec dashboard</title>"));
    // Works offline: nothing fetched from elsewhere, only this web tier's own JSON.
    for external in ["src=\"http", "href=\"http", "src=\"//", "href=\"//", "@import"] {
        assert!(!page.contains(external), "{external}");
    }
    assert!(page.contains("fetch(path") && page.contains("\"/status\"") && page.contains("\"/status/history\""));

    // One upload waiting in the queue shows in the next sample of the history.
    let request = client
        .post(web.url())
        .multipart(form("myfile", "a.jpg", image()))
        .timeout(Duration::from_millis(1500))
        .send();
    let _ = request.await; // no worker: it times out, the request stays queued
    let deadline = Instant::now() + Duration::from_secs(5);
    let samples = loop {
        let history = get_json(&client, format!("{}status/history", web.url())).await;
        let samples = history["samples"].as_array().unwrap().clone();
        if samples.iter().any(|s| s["backlog"] == 1) || Instant::now() > deadline {
            break samples;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(samples.iter().any(|s| s["backlog"] == 1), "{samples:?}");
    let last = samples.last().unwrap();
    assert!(last["t_ms"].as_u64().unwrap() > 1_700_000_000_000);
    assert!(last["desired"].is_null(), "no scaler here");
    let status = get_status(&client, &web).await;
    assert_eq!(status["recent"]["completed"], 0, "nothing was answered");
    assert_eq!(status["recent"]["window_s"], 60.0);
    web.stop().await.unwrap();
}

/// A response this web tier cannot read (from a worker of a later, incompatible release) stays in
/// its queue for a release that can, instead of being deleted unread.
#[tokio::test]
async fn a_response_the_web_tier_cannot_read_stays_in_its_queue() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let web = web_tier::spawn(settings.clone()).await.unwrap();
    let status = get_status(&Client::new(), &web).await;
    let own_queue = status["web_tier"]["response_queue"].as_str().unwrap().to_owned();
    assert!(own_queue.starts_with("responses-web-instance1-"), "{own_queue}");
    let adapters = Adapters::connect(&settings).await.unwrap();
    let queue = adapters.response_queues.open(&own_queue).await.unwrap();
    queue
        .send(br#"{"version":2,"request_id":"67e55044-10b1-426f-9247-bb680e5fe0c8"}"#)
        .await
        .unwrap();
    // The dispatcher polls every second: give it a few rounds.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        assert_eq!(
            queue.depth().await.unwrap().total(),
            1,
            "the response was deleted unread"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(queue.depth().await.unwrap().in_flight == 1, "never read");
    web.stop().await.unwrap();
}

/// Opens a POST that announces `announced` body bytes, sends the multipart head of a file and
/// `sent` bytes of it, then nothing more (until the connection is dropped).
async fn slow_sender(addr: std::net::SocketAddr, announced: usize, sent: usize) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {announced}\r\n\
         Content-Type: multipart/form-data; boundary=b\r\n\r\n\
         --b\r\nContent-Disposition: form-data; name=\"myfile\"; filename=\"slow.jpg\"\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![0xAB; sent]).await.unwrap();
    stream
}

/// Memory held for an upload follows what it has sent: senders that announce nearly the largest
/// file and trickle do not hold the budget, and a normal upload goes straight through. (Before,
/// each reserved its announced size and later uploads queued behind them until the body deadline.)
#[tokio::test]
async fn slow_senders_hold_only_what_they_sent() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path());
    settings.web.upload_buffer_bytes = 4 * MAX_UPLOAD;
    let web = web_tier::spawn(settings).await.unwrap();
    let mut slow = Vec::new();
    for _ in 0..20 {
        slow.push(slow_sender(web.addr, MAX_UPLOAD as usize - 1024, 1024).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = Client::new();
    // A truncated image: refused (422) right after it is read and checked, with no worker needed.
    let started = Instant::now();
    let (status, reason) = upload(
        &client,
        &web.url(),
        form("myfile", "a.jpg", image()[..300].to_vec()),
        false,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reason}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a normal upload waited {:?} behind slow senders",
        started.elapsed()
    );
    drop(slow);
    web.stop().await.unwrap();
}

/// When the body budget is truly held (by bytes that arrived), a newcomer waits a bounded time and
/// is told to come back (503 with Retry-After), instead of waiting for ever.
#[tokio::test]
async fn a_wait_for_upload_memory_ends_in_503() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path());
    settings.web.upload_buffer_bytes = MAX_UPLOAD;
    let web = web_tier::spawn(settings).await.unwrap();
    // Sends 60 KiB of a 64 KiB file, then stalls: it really holds 60 KiB.
    let holder = slow_sender(web.addr, MAX_UPLOAD as usize, 60 * 1024).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let response = Client::new()
        .post(web.url())
        .multipart(form("myfile", "a.jpg", vec![0xFF; 16 * 1024]))
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    assert!(response.text().await.unwrap().contains("busy"));
    assert!(
        waited >= web_tier::MEMORY_WAIT - Duration::from_millis(500) && waited < Duration::from_secs(15),
        "waited {waited:?}"
    );
    drop(holder);
    web.stop().await.unwrap();
}

/// Admission control: with a pool that clears one request a second at its cap and a 3 s
/// timeout, the third upload waiting cannot be answered in time: it is refused at once with 503
/// and `Retry-After`, before anything is stored, and counted; turned off, it is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_the_pool_cannot_answer_in_time_are_refused_at_once_with_retry_after() {
    for enabled in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        s.web.watch_fleet = true;
        s.web.admission_control = enabled;
        s.web.response_timeout_s = 3;
        (s.scaler.max, s.scaler.service_time_s, s.scaler.boot_time_s) = (1, 1.0, 0.5);
        let web = web_tier::spawn(s).await.unwrap();
        let client = Client::new();
        // No workers: the first two wait (0.5 s of boot, then 1 s each, within 3 s) for their 504.
        let waiting: Vec<_> = ["a.jpg", "b.jpg"]
            .into_iter()
            .map(|name| tokio::spawn(upload_owned(client.clone(), web.url(), name)))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while get_status(&client, &web).await["waiting_requests"] != 2 {
            assert!(Instant::now() < deadline, "the first two never waited");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = Instant::now();
        let response = client
            .post(web.url())
            .multipart(form("myfile", "c.jpg", image()))
            .send()
            .await
            .unwrap();
        let took = started.elapsed();
        if enabled {
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()["retry-after"], "1");
            assert!(response.text().await.unwrap().contains("try again in 1s"));
            println!("refused in {took:?}");
            assert!(
                took < Duration::from_secs(2),
                "refused at once, not after the timeout: {took:?}"
            );
            assert!(!dir.path().join("s3/input-bucket/c.jpg").exists(), "nothing stored");
            let status = get_status(&client, &web).await;
            assert_eq!(status["admission"]["refused"], 1, "{status}");
            assert_eq!(status["admission"]["rate_at_cap"], 1.0, "{status}");
            let metrics = get_metrics(&client, &web).await;
            assert!(
                metrics.contains(r#"imgrec_requests_total{outcome="overloaded"} 1"#),
                "{metrics}"
            );
            let oldest: f64 = (metrics.lines())
                .find_map(|l| l.strip_prefix("imgrec_oldest_waiting_seconds ")?.parse().ok())
                .unwrap_or_else(|| panic!("{metrics}"));
            assert!(oldest > 0.0 && oldest < 3.5, "the first two wait: {oldest}");
        } else {
            assert_eq!(
                response.status(),
                StatusCode::GATEWAY_TIMEOUT,
                "accepted, then timed out"
            );
            assert_eq!(get_status(&client, &web).await["admission"]["enabled"], false);
        }
        for w in waiting {
            assert_eq!(w.await.unwrap(), StatusCode::GATEWAY_TIMEOUT);
        }
        web.stop().await.unwrap();
    }
}

async fn upload_owned(client: Client, url: String, name: &'static str) -> StatusCode {
    upload(&client, &url, form("myfile", name, image()), false).await.0
}

/// With API keys configured, an upload needs a valid one (401 and `WWW-Authenticate` otherwise,
/// before anything is read or stored) and comes at most at its key's rate (429 and
/// `Retry-After`); the read-only endpoints stay open, for health checks and dashboards.
#[tokio::test]
async fn uploads_need_a_valid_api_key_within_its_rate_when_keys_are_configured() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    let sha = |key: &str| -> String {
        Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    s.web.api_keys = vec![imgrec_domain::config::ApiKey {
        name: "tests".into(),
        sha256: sha("let-me-in"),
        rate_per_s: 0.2,
        burst: 2,
    }];
    let web = web_tier::spawn(s).await.unwrap();
    let client = Client::new();
    let post = |key: Option<(&'static str, &'static str)>| {
        let mut request = client
            .post(web.url())
            .multipart(form("myfile", "a.jpg", b"not an image".to_vec()));
        if let Some((header, value)) = key {
            request = request.header(header, value);
        }
        request.send()
    };
    for key in [
        None,
        Some(("authorization", "Bearer wrong")),
        Some(("x-api-key", "let-me-out")),
    ] {
        let response = post(key).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
    // Past the key check, the (bad) image is judged: 415, twice, then the bucket is empty.
    let first = post(Some(("authorization", "Bearer let-me-in"))).await.unwrap();
    assert_eq!(first.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let second = post(Some(("x-api-key", "let-me-in"))).await.unwrap();
    assert_eq!(second.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let third = post(Some(("x-api-key", "let-me-in"))).await.unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    let after: u64 = third.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&after), "{after}");
    assert_eq!(stored(dir.path()), 0);
    assert_eq!(
        get_status(&client, &web).await["queue"]["pending"],
        0,
        "status needs no key"
    );
    let metrics = get_metrics(&client, &web).await;
    assert!(
        metrics.contains(r#"imgrec_requests_total{outcome="unauthorized"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"imgrec_requests_total{outcome="rate_limited"} 1"#),
        "{metrics}"
    );
    web.stop().await.unwrap();
}

/// An image no worker could read is answered as refused at once, stored nowhere, while its job is
/// accepted; `POST /jobs` refuses without recording a job what it cannot take: no file, more files
/// than `jobs.max_images`, a parameter after the files, a callback that is no http URL, a job
/// named two ways.
#[tokio::test]
async fn jobs_refuse_what_they_cannot_take_and_answer_unreadable_images_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.jobs.max_images = 2;
    let web = web_tier::spawn(s).await.unwrap();
    let client = Client::new();
    let post = |form: Form, query: &'static str| {
        let (client, url) = (client.clone(), format!("{}jobs{query}", web.url()));
        async move {
            let response = client.post(url).multipart(form).send().await.expect("job");
            (response.status(), response.text().await.expect("body"))
        }
    };
    let file = |form: Form, name: &str| form.part("myfile", Part::bytes(image()).file_name(name.to_owned()));
    let unreadable = Form::new().part("myfile", Part::bytes(b"GIF89a not really".to_vec()).file_name("x.gif"));
    let (code, body) = post(unreadable, "").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let report: serde_json::Value = client
        .get(format!("{}jobs/{id}", web.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["status"], "completed", "{report}");
    assert_eq!(report["images"][0]["status"], "failed");
    assert!(
        report["images"][0]["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{report}"
    );
    assert_eq!(stored(dir.path()), 0, "nothing stored in the input bucket");
    let (code, body) = post(Form::new().text("client_token", "t"), "").await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("no file"), "{body}");
    let (code, body) = post(file(file(file(Form::new(), "a.jpg"), "b.jpg"), "c.jpg"), "").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(body.contains("at most 2"), "{body}");
    let (code, body) = post(file(Form::new(), "a.jpg").text("client_token", "late"), "").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(body.contains("before the files"), "{body}");
    let (code, body) = post(file(Form::new(), "a.jpg"), "?callback_url=file:///etc/passwd").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(body.contains("callback_url"), "{body}");
    // One job named twice (the header and a form field): refused, not the form's name silently,
    // or a retry with the header alone would start a second job.
    let before = stored(dir.path());
    let twice = client
        .post(format!("{}jobs", web.url()))
        .header("idempotency-key", "from-the-header")
        .multipart(file(Form::new().text("client_token", "from-the-form"), "a.jpg"))
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), StatusCode::BAD_REQUEST);
    let body = twice.text().await.unwrap();
    assert!(body.contains("client_token is given twice"), "{body}");
    assert_eq!(stored(dir.path()), before, "refused before its image is stored");

    web.stop().await.unwrap();
}

/// A form's file input left empty (a part with no file name and no bytes, as browsers send one)
/// is no file: `POST /` takes the file of the other input, `POST /jobs` does not count it. A
/// second file in `POST /` is refused, not dropped unseen.
#[tokio::test]
async fn file_inputs_left_empty_are_no_files_and_a_second_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let web = web_tier::spawn(settings(dir.path())).await.unwrap();
    let client = Client::new();
    let left_empty = |form: Form, field: &'static str| form.part(field, Part::bytes(Vec::new()).file_name(""));
    let not_an_image = || Part::bytes(b"hello world".to_vec()).file_name("a.jpg");

    // The empty input first: the other one's file is what is checked (before: 400 "empty file").
    let empty_first = left_empty(Form::new(), "inputFile").part("myfile", not_an_image());
    let (status, reason) = upload(&client, &web.url(), empty_first, false).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{reason}");
    let (status, reason) = upload(&client, &web.url(), left_empty(Form::new(), "myfile"), false).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reason}");
    assert!(reason.starts_with("no file"), "{reason}");

    let two = form("myfile", "a.jpg", image()).part("inputFile", Part::bytes(image()).file_name("b.jpg"));
    let (status, reason) = upload(&client, &web.url(), two, false).await;
    assert_eq!(
        (status, reason.as_str()),
        (
            StatusCode::BAD_REQUEST,
            "send one image per upload (POST /jobs takes several)\n"
        )
    );
    assert_eq!(stored(dir.path()), 0, "a refused upload was stored");

    let submit = |job: Form| async {
        let response = client
            .post(format!("{}jobs", web.url()))
            .multipart(job)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        response.json::<serde_json::Value>().await.unwrap()
    };
    let accepted = submit(left_empty(form("myfile", "a.jpg", image()), "myfile")).await;
    assert_eq!(accepted["images"], 1, "{accepted}");
    // A part of the files' field with no file name is an image all the same, refused as one
    // (before: ignored as an unknown parameter, and the job refused for having no file).
    let accepted = submit(Form::new().text("myfile", "hello")).await;
    let status_url = &accepted["status_url"].as_str().unwrap()[1..];
    let report = get_json(&client, format!("{}{status_url}", web.url())).await;
    assert_eq!(report["images"][0]["status"], "failed", "{report}");
    web.stop().await.unwrap();
}

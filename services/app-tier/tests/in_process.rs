//! The whole request path in one process: a web tier and a worker (`spawn`) on the local adapters,
//! one upload, its label, and the result in the output bucket. Seconds, no child processes.

use std::path::{Path, PathBuf};

use imgrec_classifier::Classifier;
use imgrec_runtime::settings::Settings;
use reqwest::multipart::{Form, Part};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Settings for a web tier without a scaler (the test starts its one worker) on `data`.
fn one_web_tier_and_worker(data: &Path) -> Settings {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let mut settings = Settings::defaults().unwrap();
    settings.data_dir = data.to_path_buf();
    settings.web.host = "127.0.0.1".into();
    settings.web.run_scaler = false;
    settings.inference.model_dir = workspace().join("models/efficientnet-lite0");
    settings
}

fn small_jpg() -> Vec<u8> {
    std::fs::read(workspace().join("services/classifier/tests/fixtures/small.jpg")).unwrap()
}

// Long: the whole path of one upload through both tiers, read top to bottom.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_through_an_in_process_web_tier_and_worker_gets_the_classifiers_label() {
    let dir = tempfile::tempdir().unwrap();
    let settings = one_web_tier_and_worker(dir.path());
    let image = small_jpg();
    let image_again = image.clone();
    let want = {
        let mut classifier = Classifier::load(&settings.inference, settings.image_limits).unwrap();
        classifier.classify(&[&image]).remove(0).unwrap().label
    };

    let web = web_tier::spawn(settings.clone()).await.unwrap();
    let worker = app_tier::worker::spawn(settings, "app-instance1");
    let form = Form::new().part("myfile", Part::bytes(image).file_name("small.jpg"));
    let response = reqwest::Client::new()
        .post(web.url())
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), format!("{want}\n"));
    let stored = std::fs::read_to_string(dir.path().join("s3/output-bucket/small")).unwrap();
    assert_eq!(stored, format!("(small, {want})"));

    // The JSON answer names the result object, the label, and the instance that classified it.
    let form = Form::new().part("myfile", Part::bytes(image_again).file_name("again.jpg"));
    let response = reqwest::Client::new()
        .post(web.url())
        .header("accept", "application/json")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["image"], "again");
    assert_eq!(json["label"], want.as_str());
    assert_eq!(json["instance"], "app-instance1");
    assert!(
        json["probability"].as_f64().is_some_and(|p| p > 0.0 && p <= 1.0),
        "{json}"
    );
    assert!(json["request_id"].as_str().is_some_and(|id| id.len() == 36), "{json}");

    // The dashboard's figures: two answers in the last minute, with their latencies.
    let status = status_json(&web).await;
    assert_eq!(status["recent"]["completed"], 2, "{status}");
    let (p50, p99) = (&status["recent"]["latency_p50_s"], &status["recent"]["latency_p99_s"]);
    assert!(
        p50.as_f64().is_some_and(|p| p > 0.0) && p99.as_f64() >= p50.as_f64(),
        "{status}"
    );
    worker.stop().await.unwrap();
    web.stop().await.unwrap();
}

/// `?k=N`: a JSON answer lists the N most likely classes with their probabilities, most likely
/// first, and names the model; a plain-text answer stays the one label; a bad `k` is a 400 before
/// anything is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn top_k_answers_list_the_most_likely_classes_and_name_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let settings = one_web_tier_and_worker(dir.path());
    let image = small_jpg();
    let web = web_tier::spawn(settings.clone()).await.unwrap();
    let worker = app_tier::worker::spawn(settings, "app-instance1");
    let client = reqwest::Client::new();
    let post = |query: &str, json: bool, name: &str| {
        let form = Form::new().part("myfile", Part::bytes(image.clone()).file_name(name.to_owned()));
        let mut request = client.post(format!("{}{query}", web.url())).multipart(form);
        if json {
            request = request.header("accept", "application/json");
        }
        request.send()
    };

    let answer: serde_json::Value = post("?k=5", true, "a.jpg").await.unwrap().json().await.unwrap();
    let top = answer["top"].as_array().unwrap_or_else(|| panic!("{answer}"));
    assert_eq!(top.len(), 5, "{answer}");
    assert_eq!(top[0]["label"], answer["label"], "{answer}");
    assert_eq!(top[0]["probability"], answer["probability"], "{answer}");
    let p: Vec<f64> = top.iter().map(|t| t["probability"].as_f64().unwrap()).collect();
    assert!(p.windows(2).all(|w| w[0] >= w[1]), "most likely first: {p:?}");
    assert!(p.iter().sum::<f64>() <= 1.0 + 1e-5 && p[4] > 0.0, "{p:?}");
    assert_eq!(answer["model"]["name"], "efficientnet-lite0", "{answer}");
    let version = answer["model"]["version"].as_str().unwrap();
    assert!(
        version.len() == 12 && version.bytes().all(|b| b.is_ascii_hexdigit()),
        "{version}"
    );
    // The result object carries the model too, as metadata (S3's x-amz-meta-model, -model-version),
    // beside its upload's order (x-amz-meta-upload-order).
    let kept = kept_metadata(dir.path(), "a");
    let mut kept = serde_json::to_value(kept).unwrap();
    let order = kept.as_object_mut().unwrap().remove("upload-order");
    assert!(order.is_some_and(|o| o
        .as_str()
        .is_some_and(|o| imgrec_domain::ports::UploadOrder::parse(o).is_some())));
    assert_eq!(
        kept,
        serde_json::json!({"model": "efficientnet-lite0", "model-version": version})
    );

    let plain = post("?k=5", false, "b.jpg").await.unwrap().text().await.unwrap();
    assert_eq!(
        plain.trim(),
        answer["label"].as_str().unwrap(),
        "plain text stays the one label"
    );
    let default: serde_json::Value = post("", true, "c.jpg").await.unwrap().json().await.unwrap();
    assert_eq!(default["top"].as_array().map(Vec::len), Some(1), "{default}");
    let ten: serde_json::Value = post("?k=10&trace=1", true, "d.jpg")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ten["top"].as_array().map(Vec::len), Some(10), "{ten}");

    for bad in ["?k=0", "?k=11", "?k=five", "?k=-1", "?k=1.5"] {
        let response = post(bad, false, "bad.jpg").await.unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::BAD_REQUEST, "{bad}");
        assert!(response.text().await.unwrap().contains("k must be"), "{bad}");
    }
    assert!(
        !dir.path().join("s3/input-bucket/bad.jpg").exists(),
        "refused before storing"
    );

    // Where the four answers' time went: one observation each of queue wait, inference per image
    // and batch size (one image a run here).
    let metrics = metrics_text(&web).await;
    for histogram in [
        "imgrec_queue_wait_seconds",
        "imgrec_inference_seconds",
        "imgrec_batch_size",
    ] {
        assert!(
            metrics.contains(&format!("{histogram}_count 4")),
            "{histogram}: {metrics}"
        );
    }
    assert!(metrics.contains("imgrec_batch_size_bucket{le=\"1\"} 4"), "{metrics}");
    let inference = metric(&metrics, "imgrec_inference_seconds_sum");
    assert!(inference > 0.0 && inference < 4.0 * 5.0, "{inference}");
    assert!(
        metrics.contains("imgrec_oldest_waiting_seconds 0"),
        "nothing waits now: {metrics}"
    );
    worker.stop().await.unwrap();
    web.stop().await.unwrap();
}

/// A request this release cannot read (a newer version from an upgraded web tier, or no request
/// at all) is never deleted: it comes back for other workers and ends in the dead-letter queue
/// after `queues.max_receives`, where an operator finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_a_worker_cannot_read_go_back_and_then_to_the_dead_letter_queue() {
    use std::time::{Duration, Instant};

    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::defaults().unwrap();
    settings.data_dir = dir.path().to_path_buf();
    settings.inference.model_dir = workspace().join("models/efficientnet-lite0");
    settings.queues.visibility_timeout_s = 1;
    settings.queues.max_receives = 2;
    settings.app_tier.poll_wait_ms = 100;
    let adapters = imgrec_runtime::backend::Adapters::connect(&settings).await.unwrap();
    let newer = br#"{"version":2,"request_id":"67e55044-10b1-426f-9247-bb680e5fe0c8","key":"a.png","shape":"new"}"#;
    adapters.requests.send(newer).await.unwrap();
    adapters.requests.send(b"not a request").await.unwrap();

    let worker = app_tier::worker::spawn(settings, "app-instance1");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dead = adapters.dead_letter.depth().await.unwrap().total();
        let waiting = adapters.requests.depth().await.unwrap().total();
        if dead == 2 && waiting == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "dead letters {dead}, still queued {waiting}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    worker.stop().await.unwrap();
    // Both kept, bytes intact.
    let kept = adapters
        .dead_letter
        .receive(10, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    let mut bodies: Vec<Vec<u8>> = kept.into_iter().map(|m| m.body.to_vec()).collect();
    bodies.sort();
    assert_eq!(bodies, vec![b"not a request".to_vec(), newer.to_vec()]);
}

/// Uploads that share an output key (`cat.png`, then `cat.jpg`, both answer as `cat`) whose
/// requests finish out of order: the newest upload's result is the one stored, as the order kept
/// beside it shows, though the older request finished last. Each client still gets its own label.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_newest_uploads_result_stays_whichever_request_finishes_last() {
    use std::time::Duration;

    use imgrec_domain::messages::{ClassifyRequest, ClassifyResponse, Message, Outcome, VERSION};
    use imgrec_domain::ports::{ObjectKey, UploadOrder};

    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::defaults().unwrap();
    settings.data_dir = dir.path().to_path_buf();
    settings.inference.model_dir = workspace().join("models/efficientnet-lite0");
    settings.app_tier.poll_wait_ms = 100;
    let adapters = imgrec_runtime::backend::Adapters::connect(&settings).await.unwrap();
    let responses = adapters.response_queues.open(&settings.queues.responses).await.unwrap();
    let fixtures = workspace().join("services/classifier/tests/fixtures");
    let worker = app_tier::worker::spawn(settings.clone(), "app-instance1");

    // Newer first (submitted at 2 s), then the older (1 s), each to completion.
    let mut orders = Vec::new();
    for (name, fixture, at_ms) in [("cat.png", "small.png", 2_000), ("cat.jpg", "small.jpg", 1_000)] {
        let key = ObjectKey::new(name).unwrap();
        let bytes = std::fs::read(fixtures.join(fixture)).unwrap();
        let stored = adapters
            .store
            .put(&settings.buckets.input, &key, bytes.into())
            .await
            .unwrap();
        let request = ClassifyRequest {
            version: VERSION,
            request_id: uuid::Uuid::new_v4(),
            key: name.into(),
            object_version: stored.version,
            submitted_at_ms: at_ms,
            requeued: 0,
            given_back: 0,
            reply_to: None,
            answer_record: None,
        };
        orders.push(UploadOrder::new(at_ms, &request.request_id.to_string()));
        adapters.requests.send(&request.encode()).await.unwrap();
        let got = responses
            .receive(1, Duration::from_secs(30), Duration::from_secs(20))
            .await
            .unwrap();
        let response = ClassifyResponse::decode(&got[0].body).unwrap();
        assert_eq!(response.request_id, request.request_id);
        assert!(
            matches!(response.outcome, Outcome::Label { .. }),
            "{:?}",
            response.outcome
        );
        responses.delete(&got[0].receipt).await.unwrap();
    }
    worker.stop().await.unwrap();
    let kept = kept_metadata(dir.path(), "cat");
    assert_eq!(
        kept[imgrec_domain::ports::ORDER_METADATA],
        orders[0].as_str(),
        "the older upload's result replaced the newer one's"
    );
    assert!(dir.path().join("s3/output-bucket/cat").is_file());
}

/// The metadata the local store kept with a result in the output bucket, its upload order included.
fn kept_metadata(data_dir: &Path, key: &str) -> imgrec_domain::ports::Metadata {
    let key = imgrec_domain::ports::ObjectKey::new(key).unwrap();
    imgrec_local::FsObjectStore::new(data_dir)
        .kept_metadata("output-bucket", &key)
        .unwrap()
        .expect("the result has metadata")
}

/// The web tier's `/status`.
async fn status_json(web: &web_tier::SpawnedWebTier) -> serde_json::Value {
    let response = reqwest::get(format!("{}status", web.url())).await.unwrap();
    response.json().await.unwrap()
}

/// Uploads the small image as `name` on a task of its own: the label, once answered.
fn upload_small(web: &web_tier::SpawnedWebTier, name: &'static str) -> tokio::task::JoinHandle<String> {
    let request = reqwest::Client::new()
        .post(web.url())
        .multipart(Form::new().part("myfile", Part::bytes(small_jpg()).file_name(name)));
    tokio::spawn(async move {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    })
}

/// Waits until one upload waits in the queue.
async fn until_one_pending(web: &web_tier::SpawnedWebTier) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while status_json(web).await["queue"]["pending"] != 1 {
        assert!(std::time::Instant::now() < deadline, "the upload was never queued");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `/status` once its queue shows `pending` waiting, none in flight and `dead_letter` set aside, or
/// as it last was after 2 s. One read may show the queue as it was up to 100 ms before (`/status`
/// and the web tier's once-a-second dashboard sample share one depth read), so a request given
/// back just now may still read as in flight; one left hidden for its visibility timeout (30 s in
/// these tests) still would after 2 s.
async fn status_once_the_queue_shows(
    web: &web_tier::SpawnedWebTier,
    pending: u64,
    dead_letter: u64,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let status = status_json(web).await;
        let queue = &status["queue"];
        let shown = queue["pending"] == pending && queue["in_flight"] == 0 && queue["dead_letter"] == dead_letter;
        if shown || std::time::Instant::now() >= deadline {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The web tier's `/metrics` text.
async fn metrics_text(web: &web_tier::SpawnedWebTier) -> String {
    let response = reqwest::get(format!("{}metrics", web.url())).await.unwrap();
    response.text().await.unwrap()
}

/// The value of a sample line `name value` in Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// A retry storm with one `Idempotency-Key`: every retry, racing or late, gets the first upload's
/// answer, and only that one is stored, queued and classified; the key with other bytes is a 422.
// Long: the storm, the late retry and the misuse, read top to bottom.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_with_one_idempotency_key_get_one_classification_and_its_answer() {
    const RETRIES: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let settings = one_web_tier_and_worker(dir.path());
    let web = web_tier::spawn(settings.clone()).await.unwrap();
    let client = reqwest::Client::new();
    let send = |key: &'static str, bytes: Vec<u8>| {
        let (client, url) = (client.clone(), web.url());
        async move {
            let form = Form::new().part("myfile", Part::bytes(bytes).file_name("storm.jpg"));
            let response = (client.post(url).header("accept", "application/json"))
                .header("idempotency-key", key)
                .multipart(form)
                .send()
                .await
                .unwrap();
            (response.status(), response.text().await.unwrap())
        }
    };
    // All sent before any worker runs, so that every retry finds the first still waiting.
    let storm: Vec<_> = (0..RETRIES)
        .map(|_| tokio::spawn(send("order-42", small_jpg())))
        .collect();
    let metrics = || async {
        let text = metrics_text(&web).await;
        metric(&text, "imgrec_idempotent_replays_total")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while metrics().await < (RETRIES - 1) as f64 {
        assert!(std::time::Instant::now() < deadline, "the retries never arrived");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The replays count as soon as they find the first upload, which may not be queued yet.
    let status = loop {
        let status = status_json(&web).await;
        if status["queue"]["pending"] != 0 || std::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        status["queue"]["pending"], 1,
        "one request queued for {RETRIES} uploads: {status}"
    );
    let worker = app_tier::worker::spawn(settings, "app-instance1");
    let mut answers = Vec::new();
    for upload in storm {
        let (code, body) = upload.await.unwrap();
        assert_eq!(code, reqwest::StatusCode::OK, "{body}");
        answers.push(serde_json::from_str::<serde_json::Value>(&body).unwrap());
    }
    assert!(answers.iter().all(|a| a == &answers[0]), "answers differ: {answers:?}");
    // A late retry: answered from the kept answer at once.
    let (code, body) = send("order-42", small_jpg()).await;
    assert_eq!(code, reqwest::StatusCode::OK);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap(), answers[0]);
    let versions = std::fs::read_dir(dir.path().join("versions/input-bucket"))
        .unwrap()
        .count();
    assert_eq!(versions, 1, "the image was stored once");
    // The same key with other bytes, and a bad key.
    let mut other = small_jpg();
    other.extend_from_slice(b"trailing bytes");
    let (code, body) = send("order-42", other).await;
    assert_eq!(code, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("Idempotency-Key"), "{body}");
    let (code, _) = send("tab\tkey", small_jpg()).await;
    assert_eq!(code, reqwest::StatusCode::BAD_REQUEST);
    assert_eq!(
        metrics().await,
        RETRIES as f64,
        "replays: the storm's retries and the late one"
    );
    worker.stop().await.unwrap();
    web.stop().await.unwrap();
}

/// Takes one HTTP request on `listener` and answers 200: its body.
async fn one_callback(listener: &tokio::net::TcpListener) -> serde_json::Value {
    one_callback_answered(listener, "200 OK").await
}

/// Takes one HTTP request on `listener` and answers `status`: its body.
async fn one_callback_answered(listener: &tokio::net::TcpListener, status: &str) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut stream, _) = listener.accept().await.unwrap();
    let mut buf = Vec::new();
    let body_at = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the callback ended early");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..at]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap();
            if buf.len() >= at + 4 + len {
                break at + 4;
            }
        }
    };
    let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    stream.write_all(answer.as_bytes()).await.unwrap();
    serde_json::from_slice(&buf[body_at..]).unwrap()
}

fn job_form(names: &[&str], bytes: &[u8]) -> Form {
    names.iter().fold(Form::new(), |form, name| {
        let bytes = if name.starts_with("bad") {
            b"not an image".to_vec()
        } else {
            bytes.to_vec()
        };
        form.part("myfile", Part::bytes(bytes).file_name(name.to_string()))
    })
}

/// A job of many images: 202 with its id and `Location`; every web tier on the deployment
/// reports each image's label (or its refusal); the callback is called once when it completes;
/// a retry with its client token gets the same job, and other files with that token a 422.
// Long: one job's life, from submission through completion, callback and retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_of_many_images_is_answered_per_image_by_any_web_tier_and_calls_back_once() {
    let dir = tempfile::tempdir().unwrap();
    let settings = one_web_tier_and_worker(dir.path());
    let image = small_jpg();
    let want = {
        let mut classifier = Classifier::load(&settings.inference, settings.image_limits).unwrap();
        classifier.classify(&[&image]).remove(0).unwrap().label
    };
    let web = web_tier::spawn(settings.clone()).await.unwrap();
    let other_web = web_tier::spawn(settings.clone()).await.unwrap();
    let worker = app_tier::worker::spawn(settings, "app-instance1");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let callback = format!("http://{}/done", listener.local_addr().unwrap());
    let client = reqwest::Client::new();
    let names = ["a.jpg", "b.jpg", "bad.jpg", "c.jpg", "d.JPEG", "a.jpg"];
    let submit = |names: &'static [&'static str], bytes: Vec<u8>| {
        let (client, url, callback) = (client.clone(), format!("{}jobs", web.url()), callback.clone());
        async move {
            let response = (client.post(url).query(&[("callback_url", callback)]))
                .header("idempotency-key", "batch-1")
                .multipart(job_form(names, &bytes))
                .send()
                .await
                .unwrap();
            let location = response
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap().to_owned());
            (
                response.status(),
                location,
                response.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (code, location, accepted) = submit(
        &["a.jpg", "b.jpg", "bad.jpg", "c.jpg", "d.JPEG", "a.jpg"],
        image.clone(),
    )
    .await;
    assert_eq!(code, reqwest::StatusCode::ACCEPTED, "{accepted}");
    let id = accepted["job_id"].as_str().unwrap().to_owned();
    assert_eq!(location.as_deref(), Some(format!("/jobs/{id}").as_str()));
    assert_eq!(accepted["images"], names.len());

    let called = tokio::time::timeout(std::time::Duration::from_secs(60), one_callback(&listener))
        .await
        .expect("no callback within 60 s");
    assert_eq!(called["status"], "completed", "{called}");
    let report: serde_json::Value = (client
        .get(format!("{}jobs/{id}?k=3", other_web.url()))
        .send()
        .await
        .unwrap())
    .json()
    .await
    .unwrap();
    assert_eq!(report["status"], "completed");
    assert_eq!(
        report["counts"],
        serde_json::json!({"total": 6, "done": 5, "failed": 1, "pending": 0})
    );
    let images = report["images"].as_array().unwrap();
    for (image, name) in images.iter().zip(names) {
        assert_eq!(image["file"], name);
        if name.starts_with("bad") {
            assert_eq!(image["status"], "failed");
            assert!(image["error"].as_str().is_some_and(|e| !e.is_empty()), "{image}");
        } else {
            assert_eq!(image["status"], "done", "{image}");
            assert_eq!(image["label"], want.as_str());
            assert_eq!(image["top"].as_array().unwrap().len(), 3);
            assert_eq!(image["model"]["name"], "efficientnet-lite0");
        }
    }
    assert_eq!(images[4]["image"], "d");

    // The retry with the token: the same job, nothing queued again; other files: 422.
    let (code, _, again) = submit(
        &["a.jpg", "b.jpg", "bad.jpg", "c.jpg", "d.JPEG", "a.jpg"],
        image.clone(),
    )
    .await;
    assert_eq!(
        (code, &again["job_id"]),
        (reqwest::StatusCode::ACCEPTED, &accepted["job_id"])
    );
    let (code, _, other) = submit(&["a.jpg"], image.clone()).await;
    assert_eq!(code, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "{other}");
    let text = metrics_text(&web).await;
    assert_eq!(metric(&text, "imgrec_jobs_total"), 1.0);
    assert_eq!(metric(&text, "imgrec_job_images_total"), 6.0);
    for missing in ["0123456789abcdef0123456789abcdef", "nope", "..%2F..%2Fetc"] {
        let response = client.get(format!("{}jobs/{missing}", web.url())).send().await.unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::NOT_FOUND, "{missing}");
    }
    worker.stop().await.unwrap();
    other_web.stop().await.unwrap();
    web.stop().await.unwrap();
}

/// Settings whose jobs' callback leases last 1 s, and a listener for callbacks with its URL.
async fn short_callback_leases(data: &Path) -> (Settings, tokio::net::TcpListener, String) {
    let mut settings = one_web_tier_and_worker(data);
    settings.jobs.callback_lease_s = 1;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let callback = format!("http://{}/done", listener.local_addr().unwrap());
    (settings, listener, callback)
}

/// A job of one image `name` with `callback`, sent to the web tier at `url`: its id.
async fn job_with_callback(url: String, name: &str, callback: &str) -> String {
    let response = (reqwest::Client::new().post(format!("{url}jobs")))
        .query(&[("callback_url", callback)])
        .multipart(job_form(&[name], &small_jpg()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    let accepted: serde_json::Value = response.json().await.unwrap();
    accepted["job_id"].as_str().unwrap().to_owned()
}

/// A job's callback outlives the web tier that took it: one that stops gives the callback up and
/// the next web tier takes it over at once; one that dies (its lease as it last renewed it, which
/// is what a SIGKILL leaves) has it taken over once the lease lapses. Of two web tiers looking,
/// one takes each; each callback arrives once and its lease is gone after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_jobs_callback_is_delivered_once_by_another_web_tier_when_the_one_that_took_it_is_gone() {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use imgrec_domain::records;

    let dir = tempfile::tempdir().unwrap();
    let (settings, listener, callback) = short_callback_leases(dir.path()).await;
    let store = imgrec_runtime::backend::Adapters::connect(&settings)
        .await
        .unwrap()
        .store;
    let key = |id: &str| records::pending_callback(&records::JobId::parse(id).unwrap());
    let lease = |id: &str| {
        let (store, key) = (store.clone(), key(id));
        async move {
            let bytes = store.get("output-bucket", &key, None).await.unwrap()?;
            Some(serde_json::from_slice::<serde_json::Value>(&bytes).unwrap())
        }
    };
    let now_ms = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;

    // No worker yet: both jobs wait while the web tier that took them goes.
    let first = web_tier::spawn(settings.clone()).await.unwrap();
    let stopped = job_with_callback(first.url(), "stopped.jpg", &callback).await;
    let died = job_with_callback(first.url(), "died.jpg", &callback).await;
    let held = lease(&stopped)
        .await
        .expect("a job with a callback has its lease from its 202");
    assert_eq!(held["generation"], 0);
    assert!(held["until_ms"].as_u64().unwrap() > now_ms(), "{held}");
    first.stop().await.unwrap();
    assert_eq!(
        lease(&stopped).await.unwrap()["until_ms"],
        0,
        "a web tier that stops gives its callbacks up"
    );
    // As if the first had been killed instead: its lease on `died` as it last renewed it.
    let last_renewed = serde_json::json!({"holder": held["holder"], "generation": 0, "until_ms": now_ms() + 6000});
    let last_renewed = serde_json::to_vec(&last_renewed).unwrap().into();
    store.put("output-bucket", &key(&died), last_renewed).await.unwrap();
    // A lapsed callback whose job cannot be read, listed before the others: skipped, not in their way.
    let unreadable = "0".repeat(32);
    let job_key = records::job(&records::JobId::parse(&unreadable).unwrap());
    store.put("output-bucket", &job_key, "not a job".into()).await.unwrap();
    let lapsed = serde_json::json!({"holder": "gone", "generation": 0, "until_ms": 0});
    let lapsed = serde_json::to_vec(&lapsed).unwrap().into();
    store.put("output-bucket", &key(&unreadable), lapsed).await.unwrap();

    let second = web_tier::spawn(settings.clone()).await.unwrap();
    let third = web_tier::spawn(settings.clone()).await.unwrap();
    // A web tier looks at once on its start: the lease given up is taken over; the other not yet.
    let taken_over = |id: String, within: u64| {
        let lease = &lease;
        async move {
            tokio::time::timeout(Duration::from_secs(within), async {
                while lease(&id).await.unwrap()["generation"] == 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await
            .is_ok()
        }
    };
    assert!(
        taken_over(stopped.clone(), 4).await,
        "the lease given up was not taken over at once"
    );
    assert_eq!(
        lease(&died).await.unwrap()["generation"],
        0,
        "taken over before its lease lapsed"
    );
    assert!(
        taken_over(died.clone(), 10).await,
        "the lapsed lease was not taken over"
    );
    assert_ne!(lease(&died).await.unwrap()["holder"], held["holder"]);

    let worker = app_tier::worker::spawn(settings, "app-instance1");
    let mut called = Vec::new();
    for _ in 0..2 {
        let report = tokio::time::timeout(Duration::from_secs(60), one_callback(&listener))
            .await
            .expect("a callback within 60 s");
        assert_eq!(report["status"], "completed", "{report}");
        called.push(report["job_id"].as_str().unwrap().to_owned());
    }
    called.sort();
    let mut want = vec![stopped.clone(), died.clone()];
    want.sort();
    assert_eq!(called, want, "each job called back");
    // Several leases' time: no web tier calls either back again.
    let again = tokio::time::timeout(Duration::from_secs(4), listener.accept()).await;
    assert!(again.is_err(), "a callback was delivered twice");
    for id in [&stopped, &died] {
        assert_eq!(lease(id).await, None, "the lease of a delivered callback is deleted");
    }
    // Counted where it happened: two taken over and two delivered by the other web tiers.
    let (a, b) = (metrics_text(&second).await, metrics_text(&third).await);
    let count = |outcome: &str| {
        let series = format!("imgrec_job_callbacks_total{{outcome=\"{outcome}\"}}");
        let sample = |text: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&series)?.trim().parse::<f64>().ok())
        };
        [&a, &b].iter().filter_map(|text| sample(text)).sum::<f64>()
    };
    assert_eq!((count("taken_over"), count("delivered")), (2.0, 2.0), "{a}\n{b}");
    worker.stop().await.unwrap();
    third.stop().await.unwrap();
    second.stop().await.unwrap();
}

/// A callback retried for longer than its lease (the receiver failing twice: 1 s and 2 s of
/// back-off) is still delivered by its holder alone, which renews the lease while it tries: the
/// other web tiers looking take nothing over, and the receiver sees three tries, then none.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_callback_retried_past_its_lease_is_delivered_by_its_holder_alone() {
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let (settings, listener, callback) = short_callback_leases(dir.path()).await;
    let webs = [
        web_tier::spawn(settings.clone()).await.unwrap(),
        web_tier::spawn(settings.clone()).await.unwrap(),
        web_tier::spawn(settings.clone()).await.unwrap(),
    ];
    let worker = app_tier::worker::spawn(settings, "app-instance1");
    let job = job_with_callback(webs[0].url(), "a.jpg", &callback).await;
    let mut tries = Vec::new();
    for status in ["500 Internal Server Error", "503 Service Unavailable", "200 OK"] {
        let report = tokio::time::timeout(Duration::from_secs(60), one_callback_answered(&listener, status))
            .await
            .expect("a try within 60 s");
        tries.push(report["job_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(tries, vec![job; 3]);
    let again = tokio::time::timeout(Duration::from_secs(4), listener.accept()).await;
    assert!(
        again.is_err(),
        "another web tier took the callback over and delivered it again"
    );
    worker.stop().await.unwrap();
    for web in webs {
        web.stop().await.unwrap();
    }
}

/// A request queue whose sends never return: a web tier stuck (or dead) between storing an
/// upload and queueing its request.
struct NeverSends(std::sync::Arc<dyn imgrec_domain::ports::WorkQueue>);

#[async_trait::async_trait]
impl imgrec_domain::ports::WorkQueue for NeverSends {
    async fn send(&self, _: &[u8]) -> imgrec_domain::ports::PortResult<()> {
        std::future::pending().await
    }
    async fn receive(
        &self,
        max: usize,
        visibility: std::time::Duration,
        wait: std::time::Duration,
    ) -> imgrec_domain::ports::PortResult<Vec<imgrec_domain::ports::Received>> {
        self.0.receive(max, visibility, wait).await
    }
    async fn delete(&self, receipt: &imgrec_domain::ports::Receipt) -> imgrec_domain::ports::PortResult<()> {
        self.0.delete(receipt).await
    }
    async fn change_visibility(
        &self,
        receipt: &imgrec_domain::ports::Receipt,
        visibility: std::time::Duration,
    ) -> imgrec_domain::ports::PortResult<()> {
        self.0.change_visibility(receipt, visibility).await
    }
    async fn depth(&self) -> imgrec_domain::ports::PortResult<imgrec_domain::ports::QueueDepth> {
        self.0.depth().await
    }
}

/// Finding: a web tier that died between an idempotency key's claim and its request's send left
/// the key claimed with nothing queued, and every retry with the key waited
/// `web.response_timeout_s` for a 504 until the key expired (24 h). Now a retry that finds the
/// claim still unqueued half an upload's wait after it was written sends the request itself: the
/// retry sent at once gets the label, and a later one the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_sends_the_request_of_a_first_upload_that_died_before_queueing_it() {
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let mut settings = one_web_tier_and_worker(dir.path());
    settings.web.response_timeout_s = 4;
    let image = small_jpg();
    let want = {
        let mut classifier = Classifier::load(&settings.inference, settings.image_limits).unwrap();
        classifier.classify(&[&image]).remove(0).unwrap().label
    };
    let mut adapters = imgrec_runtime::backend::Adapters::connect(&settings).await.unwrap();
    let store = adapters.store.clone();
    adapters.requests = std::sync::Arc::new(NeverSends(adapters.requests.clone()));
    let stuck = web_tier::spawn_on(settings.clone(), adapters).await.unwrap();
    let web = web_tier::spawn(settings.clone()).await.unwrap();
    let worker = app_tier::worker::spawn(settings, "app-instance1");
    let send = |url: String| {
        let image = image.clone();
        async move {
            let form = Form::new().part("myfile", Part::bytes(image).file_name("small.jpg"));
            let response = (reqwest::Client::new().post(url))
                .header("idempotency-key", "k-1")
                .multipart(form)
                .send()
                .await
                .unwrap();
            (response.status(), response.text().await.unwrap().trim_end().to_owned())
        }
    };
    let first = tokio::spawn(send(stuck.url()));
    let claimed = Instant::now();
    while store
        .list("output-bucket", "_imgrec/idempotency/")
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            claimed.elapsed() < Duration::from_secs(10),
            "the first upload claimed no key"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let retry = tokio::time::timeout(Duration::from_secs(20), send(web.url()))
        .await
        .unwrap();
    assert_eq!(retry, (reqwest::StatusCode::OK, want.clone()), "the retry sent at once");
    assert!(!first.is_finished(), "the first upload's web tier is stuck in its send");
    let kept = store.list("output-bucket", "_imgrec/idempotency/").await.unwrap();
    assert!(kept.iter().any(|k| k.as_str().ends_with("/resent")), "{kept:?}");
    let again = send(web.url()).await;
    assert_eq!(again, (reqwest::StatusCode::OK, want), "a later retry: the same answer");
    first.abort();
    worker.stop().await.unwrap();
    web.stop().await.unwrap();
    stuck.stop().await.unwrap();
}

/// A local worker takes requests only while it holds an inference slot: with the only slot held
/// elsewhere (another worker's model runs), an upload waits in the queue, not in this worker's
/// hands, and is answered once the slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_without_a_free_slot_takes_no_requests() {
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let mut settings = one_web_tier_and_worker(dir.path());
    settings.fleet.inference_slots = Some(1);
    let web = web_tier::spawn(settings.clone()).await.unwrap();
    let worker = app_tier::worker::spawn(settings.clone(), "app-instance1");
    let upload = |name: &'static str| upload_small(&web, name);
    // The worker is up and answering while the slot is free.
    let label = upload("first.jpg").await.unwrap();

    // Another holder takes the slot (between two of the worker's receives).
    let slots = imgrec_runtime::backend::inference_slots(&settings).unwrap();
    let held = tokio::task::spawn_blocking(move || slots.hold()).await.unwrap();
    let waiting = upload("second.jpg");
    until_one_pending(&web).await;
    // Several of the worker's long polls: it takes nothing.
    for _ in 0..15 {
        let status = status_json(&web).await;
        assert_eq!(status["queue"]["pending"], 1, "{status}");
        assert_eq!(status["queue"]["in_flight"], 0, "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);
    let answer = tokio::time::timeout(Duration::from_secs(20), waiting).await;
    assert_eq!(answer.unwrap().unwrap(), label, "the same image, the same label");
    worker.stop().await.unwrap();
}

/// An Auto Scaling group as its instance sees it: the target lifecycle state that the instance
/// metadata gives, and how many of the group's moves the instance let go on (each a completed
/// launch lifecycle action on EC2).
struct Group {
    target: tokio::sync::watch::Receiver<&'static str>,
    moves_completed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait::async_trait]
impl imgrec_domain::ports::InstanceStatus for Group {
    async fn report(&self, _: imgrec_domain::ports::InstanceState, _: bool) -> imgrec_domain::ports::PortResult<()> {
        Ok(())
    }
    async fn until_in_service(&self) -> imgrec_domain::ports::PortResult<()> {
        let mut target = self.target.clone();
        self.moves_completed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = target.wait_for(|t| *t == "InService").await;
        Ok(())
    }
    async fn in_service(&self) -> imgrec_domain::ports::PortResult<bool> {
        Ok(*self.target.borrow() == "InService")
    }
}

/// Finding: an instance the group moved back to its warm pool on scale-in (reuse_on_scale_in)
/// kept taking requests until it was hibernated with them in hand, and once back in service
/// nobody completed the launch action the group waited on. Now it drains, lets the group move
/// it, takes nothing while out of service, and serves again once put back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_the_group_takes_out_of_service_drains_and_serves_again_once_put_back() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let settings = one_web_tier_and_worker(dir.path());
    let web = web_tier::spawn(settings.clone()).await.unwrap();
    let (set_target, target) = tokio::sync::watch::channel("InService");
    let moves = Arc::new(AtomicUsize::new(0));
    let group = Arc::new(Group {
        target,
        moves_completed: moves.clone(),
    });
    let worker = imgrec_runtime::shutdown::Spawned::spawn(|shutdown| {
        app_tier::worker::serve_as(settings, "app-instance1".into(), group, Default::default(), shutdown)
    });
    let upload = |name: &'static str| upload_small(&web, name);
    let label = upload("first.jpg").await.unwrap();
    assert_eq!(moves.load(Ordering::SeqCst), 1, "put in service once");

    // Scale-in back to the warm pool: the worker drains and lets the group move it on.
    set_target.send("Warmed:Hibernated").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while moves.load(Ordering::SeqCst) < 2 {
        assert!(
            Instant::now() < deadline,
            "the worker never let the group move it into the pool"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waiting = upload("second.jpg");
    until_one_pending(&web).await;
    // Longer than its lifecycle checks and long polls: out of service, it takes nothing.
    for _ in 0..30 {
        let status = status_json(&web).await;
        assert_eq!(status["queue"]["in_flight"], 0, "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Back in service (the pool's instance resumed): the waiting upload is answered.
    set_target.send("InService").unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(20), waiting).await;
    assert_eq!(answer.unwrap().unwrap(), label, "the same image, the same label");
    assert_eq!(moves.load(Ordering::SeqCst), 2, "no move is left waiting");
    worker.stop().await.unwrap();
    web.stop().await.unwrap();
}

/// Starts a worker as `name` and, once it is in its receive waiting for the queue's lock (held
/// here by another writer), asks it twice to stop (its drain abandoned at once), then lets the
/// receive go on: what it takes, the worker gives back. Returns once the worker has exited.
async fn stop_a_worker_in_its_receive(settings: &Settings, name: &str) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    // The worker waits for the one slot, so that it starts without taking anything.
    let slots = imgrec_runtime::backend::inference_slots(settings).unwrap();
    let slot = {
        let slots = slots.clone();
        tokio::task::spawn_blocking(move || slots.hold()).await.unwrap()
    };
    let (set_target, target) = tokio::sync::watch::channel("InService");
    let started = Arc::new(AtomicUsize::new(0));
    let group = Arc::new(Group {
        target,
        moves_completed: started.clone(),
    });
    let (stopper, shutdown) = imgrec_runtime::shutdown::Shutdown::new();
    let worker = tokio::spawn(app_tier::worker::serve_as(
        settings.clone(),
        name.into(),
        group,
        Default::default(),
        shutdown,
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while started.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the worker never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lock = imgrec_local::open_db(&settings.data_dir.join("queue.sqlite3")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    drop(slot);
    while let Some(free) = slots.try_hold() {
        drop(free);
        assert!(Instant::now() < deadline, "the worker never took the slot");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // in its receive, waiting for the lock
    stopper.stop();
    stopper.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    lock.execute_batch("COMMIT").unwrap();
    stopped(worker).await;
    drop(set_target);
}

/// Settings with one inference slot and a visibility timeout longer than the tests wait, and the
/// label of the small image, answered by a worker that is then stopped.
async fn one_slot_and_a_label(dir: &Path) -> (Settings, web_tier::SpawnedWebTier, String) {
    let mut settings = one_web_tier_and_worker(dir);
    settings.fleet.inference_slots = Some(1);
    settings.queues.visibility_timeout_s = 30;
    let web = web_tier::spawn(settings.clone()).await.unwrap();
    let worker = app_tier::worker::spawn(settings.clone(), "app-instance1");
    let label = upload_small(&web, "first.jpg").await.unwrap();
    worker.stop().await.unwrap();
    (settings, web, label)
}

/// Finding: a worker asked twice to stop (past its drain) dropped a receive in flight, whose
/// requests then stayed hidden until their visibility timeout. Now the receive is let finish and
/// what it took is given back at once. Here the receive waits for the queue's lock (held by
/// another writer) while the two stop requests come.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receive_in_flight_when_a_drain_runs_out_is_given_back_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (settings, web, label) = one_slot_and_a_label(dir.path()).await;
    let waiting = upload_small(&web, "second.jpg");
    until_one_pending(&web).await;

    stop_a_worker_in_its_receive(&settings, "app-instance2").await;
    let status = status_once_the_queue_shows(&web, 1, 0).await;
    assert_eq!(status["queue"]["pending"], 1, "not given back: {status}");
    assert_eq!(status["queue"]["in_flight"], 0, "{status}");
    // Another worker answers it now, well before its visibility timeout (30 s).
    let other = app_tier::worker::spawn(settings, "app-instance3");
    let answer = tokio::time::timeout(std::time::Duration::from_secs(20), waiting).await;
    assert_eq!(answer.unwrap().unwrap(), label, "the same image, the same label");
    other.stop().await.unwrap();
    web.stop().await.unwrap();
}

/// Finding (a CI run of the interruption test, `tests/test_faults.py`): a request given back by an
/// interrupted worker came back with one receive more, as if it had failed, so three
/// interruptions in a row (each with a drain deadline of 0) sent it to the dead-letter queue and
/// its client got a 500. Now a give-back is a new message, its receive count starting over (up
/// to `max_receives` give-backs, then they count).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_given_back_by_more_interrupted_workers_than_max_receives_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (settings, web, label) = one_slot_and_a_label(dir.path()).await;
    let waiting = upload_small(&web, "second.jpg");
    until_one_pending(&web).await;

    for k in 0..=settings.queues.max_receives {
        stop_a_worker_in_its_receive(&settings, &format!("app-instance{}", k + 2)).await;
        let status = status_once_the_queue_shows(&web, 1, 0).await;
        assert_eq!(
            (&status["queue"]["pending"], &status["queue"]["dead_letter"]),
            (&1.into(), &0.into()),
            "after interruption {}: {status}",
            k + 1
        );
    }
    let other = app_tier::worker::spawn(settings, "app-instance9");
    let answer = tokio::time::timeout(std::time::Duration::from_secs(20), waiting).await;
    assert_eq!(answer.unwrap().unwrap(), label, "the same image, the same label");
    assert_eq!(status_json(&web).await["queue"]["dead_letter"], 0);
    other.stop().await.unwrap();
    web.stop().await.unwrap();
}

/// An instance that keeps what its worker said of its start: `None` for started, the reason
/// for a failed start.
#[derive(Default)]
struct Starts(std::sync::Mutex<Vec<Option<String>>>);

#[async_trait::async_trait]
impl imgrec_domain::ports::InstanceStatus for Starts {
    async fn report(&self, _: imgrec_domain::ports::InstanceState, _: bool) -> imgrec_domain::ports::PortResult<()> {
        Ok(())
    }
    async fn started(&self) -> imgrec_domain::ports::PortResult<()> {
        self.0.lock().unwrap().push(None);
        Ok(())
    }
    async fn failed_to_start(&self, reason: &str) -> imgrec_domain::ports::PortResult<()> {
        self.0.lock().unwrap().push(Some(reason.to_owned()));
        Ok(())
    }
}

/// Finding: on EC2 a worker whose model did not load exited (systemd restarting it every 2 s)
/// and left its instance in service and idle, with nothing in `/status` saying why: Auto
/// Scaling saw a healthy launch. Now the worker tells its fleet why it cannot start, and that it
/// started once it does (which clears the failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_tells_its_fleet_whether_it_could_start() {
    use std::sync::Arc;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let mut settings = one_web_tier_and_worker(dir.path());
    let good_model = settings.inference.model_dir.clone();
    let broken_model = dir.path().join("broken-model");
    std::fs::create_dir(&broken_model).unwrap();
    for file in ["manifest.json", "labels.json"] {
        std::fs::copy(good_model.join(file), broken_model.join(file)).unwrap();
    }
    std::fs::write(broken_model.join("model.onnx"), b"not a model").unwrap();
    settings.inference.model_dir = broken_model;

    let instance = Arc::new(Starts::default());
    let (_stopper, shutdown) = imgrec_runtime::shutdown::Shutdown::new();
    let serve = app_tier::worker::serve_as(
        settings.clone(),
        "app-instance1".into(),
        instance.clone(),
        Default::default(),
        shutdown,
    );
    let err = tokio::time::timeout(Duration::from_secs(30), serve)
        .await
        .expect("a worker that cannot start exits")
        .expect_err("a broken model is a failed start");
    let said = instance.0.lock().unwrap().clone();
    assert_eq!(said, [Some(format!("{err:#}"))], "the whole reason, once");
    assert!(said[0].as_ref().unwrap().contains("model.onnx"), "{said:?}");

    settings.inference.model_dir = good_model;
    let instance = Arc::new(Starts::default());
    let (stopper, shutdown) = imgrec_runtime::shutdown::Shutdown::new();
    let worker = tokio::spawn(app_tier::worker::serve_as(
        settings,
        "app-instance1".into(),
        instance.clone(),
        Default::default(),
        shutdown,
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while instance.0.lock().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the worker never said it started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*instance.0.lock().unwrap(), [None], "started, and nothing else said");
    stopper.stop();
    stopped(worker).await;
}

/// An instance under a Spot interruption notice (or none), as its instance metadata says.
struct Spot(tokio::sync::watch::Receiver<Option<std::time::SystemTime>>);

#[async_trait::async_trait]
impl imgrec_domain::ports::InstanceStatus for Spot {
    async fn report(&self, _: imgrec_domain::ports::InstanceState, _: bool) -> imgrec_domain::ports::PortResult<()> {
        Ok(())
    }
    async fn reclaim_at(&self) -> imgrec_domain::ports::PortResult<Option<std::time::SystemTime>> {
        Ok(*self.0.borrow())
    }
}

/// Asserts for `how_long` that the upload waits in the queue, taken by no worker, and that
/// `worker` still runs.
async fn taken_by_none(web: &web_tier::SpawnedWebTier, worker: &tokio::task::JoinHandle<anyhow::Result<()>>) {
    for _ in 0..20 {
        let status = status_json(web).await;
        assert_eq!(status["queue"]["pending"], 1, "{status}");
        assert_eq!(status["queue"]["in_flight"], 0, "{status}");
        assert!(!worker.is_finished(), "the worker ended its process");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Finding: a worker drained for a Spot interruption notice ended its process, which systemd
/// starts again 2 s later (Restart=always): the new worker took requests in the instance's last
/// seconds, and a receive in flight (a 20 s long poll on EC2, let finish by the drain) could run
/// past the reclaim, leaving what SQS handed it hidden until its visibility timeout. Now the
/// drain starts a long poll earlier, and a worker drained (or started) that near the end takes
/// nothing, keeps its process until the instance goes, and serves again if the notice is
/// withdrawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_drained_for_a_spot_interruption_takes_nothing_more_until_the_instance_goes() {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    let dir = tempfile::tempdir().unwrap();
    let mut settings = one_web_tier_and_worker(dir.path());
    settings.app_tier.drain_deadline_ms = 1_000;
    let web = web_tier::spawn(settings.clone()).await.unwrap();
    // The drain starts this long before the reclaim: the deadline, a long poll and 5 s.
    let lead = Duration::from_millis(1_000 + settings.app_tier.poll_wait_ms + 5_000);
    let serve = |spot| {
        let (stopper, shutdown) = imgrec_runtime::shutdown::Shutdown::new();
        let worker = tokio::spawn(app_tier::worker::serve_as(
            settings.clone(),
            "app-instance1".into(),
            Arc::new(Spot(spot)),
            Default::default(),
            shutdown,
        ));
        (stopper, worker)
    };

    // Serving, then told it is reclaimed just past the drain's lead: it drains (once it has seen
    // the notice, within a poll of 5 s) and waits.
    let (notice, spot) = tokio::sync::watch::channel(None);
    let (stopper, worker) = serve(spot);
    let label = upload_small(&web, "first.jpg").await.unwrap();
    notice
        .send(Some(SystemTime::now() + lead + Duration::from_millis(500)))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(
        5_500 + 1_000 + settings.app_tier.poll_wait_ms + 2_000,
    ))
    .await;
    let waiting = upload_small(&web, "second.jpg");
    until_one_pending(&web).await;
    taken_by_none(&web, &worker).await;
    // The notice withdrawn: it serves again.
    notice.send(None).unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(20), waiting).await;
    assert_eq!(answer.unwrap().unwrap(), label, "the same image, the same label");
    stopper.stop();
    stopped(worker).await;

    // Started again (as systemd would) under a notice nearer its end than the drain's lead.
    let (_notice, spot) = tokio::sync::watch::channel(Some(SystemTime::now() + Duration::from_secs(3)));
    let (stopper, worker) = serve(spot);
    let waiting = upload_small(&web, "third.jpg");
    until_one_pending(&web).await;
    taken_by_none(&web, &worker).await;
    stopper.stop();
    stopped(worker).await;
    // Nothing was lost: the next worker answers it.
    let other = app_tier::worker::spawn(settings, "app-instance2");
    let answer = tokio::time::timeout(Duration::from_secs(20), waiting).await;
    assert_eq!(answer.unwrap().unwrap(), label);
    other.stop().await.unwrap();
    web.stop().await.unwrap();
}

/// Waits for `worker`, asked to stop, to end well.
async fn stopped(worker: tokio::task::JoinHandle<anyhow::Result<()>>) {
    tokio::time::timeout(std::time::Duration::from_secs(30), worker)
        .await
        .expect("the worker stops")
        .unwrap()
        .unwrap();
}

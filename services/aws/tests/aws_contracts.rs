//! The AWS adapters against the same port contracts as the local ones, on a moto server.

use std::sync::Arc;
use std::time::Duration;

use imgrec_aws::bootstrap::{self, Resources};
use imgrec_aws::{AsgFleet, AsgInstanceStatus, Aws, S3ObjectStore, SqsQueue, StartRecords};
use imgrec_domain::ports::{ApiCalls, Fleet, InstanceStatus, ObjectKey, ObjectStore, PortError, WorkQueue};
use imgrec_testkit::{self as contract, Delivery, Moto, QueuePair};

fn resources<'a>(buckets: &'a [&'a str], group: Option<(&'a str, usize)>) -> Resources<'a> {
    Resources {
        buckets,
        requests_queue: "requests",
        dead_letter_queue: "requests-dlq",
        other_queues: &["a", "b", "c", "d", "e"],
        max_receives: 2,
        visibility_timeout_s: 30,
        group,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_object_store_contract() {
    let moto = Moto::start();
    let aws = Aws::new(moto.sdk().await, ApiCalls::default());
    bootstrap::create(&aws, &resources(&["input-bucket"], None))
        .await
        .unwrap();
    let store = S3ObjectStore::new(&aws);
    store.check_bucket("input-bucket").await.unwrap();
    let err = store.check_bucket("no-such-bucket").await.unwrap_err();
    assert!(err.to_string().contains("no-such-bucket"), "{err}");
    contract::object_store_contract(store.clone(), "input-bucket").await;
    bootstrap::create(&aws, &resources(&["output-bucket"], None))
        .await
        .unwrap();
    contract::newest_result_contract(
        vec![Arc::new(store.clone()), Arc::new(S3ObjectStore::new(&aws))],
        "output-bucket",
    )
    .await;
    contract::create_once_contract(
        vec![Arc::new(store.clone()), Arc::new(S3ObjectStore::new(&aws))],
        "output-bucket",
    )
    .await;
    let missing = ObjectKey::new("missing.jpg").unwrap();
    assert!(store.get("input-bucket", &missing, None).await.unwrap().is_none());

    // Same-name uploads rely on versions: a bucket without them is refused at startup.
    store.check_versioning("input-bucket").await.unwrap();
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&aws.sdk)
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket().bucket("plain-bucket").send().await.unwrap();
    let err = store.check_versioning("plain-bucket").await.unwrap_err();
    assert!(err.to_string().contains("does not keep versions"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqs_queue_contracts() {
    let moto = Moto::start();
    let aws = Aws::new(moto.sdk().await, ApiCalls::default());
    bootstrap::create(&aws, &resources(&[], None)).await.unwrap();
    let open = |name: &'static str| {
        let aws = aws.clone();
        async move { SqsQueue::open(&aws, name).await.unwrap() }
    };
    let missing = SqsQueue::open(&aws, "no-such-queue")
        .await
        .err()
        .expect("a missing queue is an error");
    assert!(missing.to_string().contains("no-such-queue"), "{missing}");
    assert!(matches!(missing, PortError::Permanent(_)), "{missing:?}");
    contract::queue_send_receive_delete(open("a").await).await;
    contract::queue_redelivery(open("b").await).await;
    contract::queue_concurrent_receivers(open("c").await, Delivery::AtLeastOnce).await;
    contract::queue_long_poll(open("d").await).await;
    contract::queue_carries_any_file_name(open("e").await).await;
    let pair = QueuePair {
        main: open("requests").await,
        dead_letter: open("requests-dlq").await,
        max_receives: 2,
    };
    contract::queue_dead_letter(pair).await;
    // Every call went through the one helper, counted into this process's `ApiCalls`.
    let calls = aws.calls.snapshot();
    for operation in [
        "GetQueueUrl",
        "SendMessage",
        "ReceiveMessage",
        "DeleteMessage",
        "GetQueueAttributes",
    ] {
        assert!(calls.get(operation).is_some_and(|&n| n > 0), "{operation}: {calls:?}");
    }

    // With the endpoint gone, the same call may work later: transient, not permanent.
    let queue = open("a").await;
    drop(moto);
    let gone = queue.depth().await.unwrap_err();
    assert!(gone.is_transient(), "{gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auto_scaling_fleet_contract() {
    let moto = Moto::start();
    let aws = Aws::new(moto.sdk().await, ApiCalls::default());
    bootstrap::create(&aws, &resources(&[], Some(("app-tier", 20))))
        .await
        .unwrap();
    let missing = AsgFleet::open(&aws, &["no-such-group"])
        .await
        .err()
        .expect("a missing group is an error");
    assert!(matches!(missing, PortError::Permanent(_)), "{missing:?}");
    let fleet = AsgFleet::open(&aws, &["app-tier"]).await.unwrap();
    assert_eq!(fleet.max_size().await.unwrap(), Some(20));
    contract::fleet_contract(Arc::new(fleet), Duration::from_secs(20), false).await;
}

/// Auto Scaling sees an instance whose worker cannot start (its model does not load) as a
/// healthy launch: the worker says why in the output bucket, and the fleet's `launch_failure`
/// shows it until a worker starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_that_cannot_start_show_in_the_fleets_launch_failure() {
    let moto = Moto::start();
    let aws = Aws::new(moto.sdk().await, ApiCalls::default());
    bootstrap::create(&aws, &resources(&["output-bucket"], Some(("app-tier", 20))))
        .await
        .unwrap();
    let starts = StartRecords::new(&aws, "output-bucket");
    let fleet = AsgFleet::open(&aws, &["app-tier"])
        .await
        .unwrap()
        .with_start_records(starts.clone());
    let instance = |id: &str| AsgInstanceStatus::new(&aws, "app-tier", id).with_start_records(starts.clone());
    assert_eq!(fleet.launch_failure().await.unwrap(), None, "nothing said yet");

    instance("i-0aaa").started().await.unwrap();
    assert_eq!(fleet.launch_failure().await.unwrap(), None);
    // S3 keeps times to the second: each start in a second of its own.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let broken = instance("i-0bbb");
    broken
        .failed_to_start("cannot load models/x/model.onnx: not a model")
        .await
        .unwrap();
    let failure = fleet.launch_failure().await.unwrap().expect("shown");
    assert!(failure.reason.contains("i-0bbb"), "{failure:?}");
    assert!(
        failure.reason.ends_with("cannot load models/x/model.onnx: not a model"),
        "{failure:?}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(failure.at_s.abs_diff(now) < 60, "{failure:?} at {now}");

    // Reasons are bounded; a record nobody can read still says whose it is.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    broken.failed_to_start(&"x".repeat(10_000)).await.unwrap();
    let failure = fleet.launch_failure().await.unwrap().expect("shown");
    assert!(failure.reason.len() < 500, "{} bytes", failure.reason.len());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let store = S3ObjectStore::new(&aws);
    let garbled = ObjectKey::new("_imgrec/starts/i-0ddd").unwrap();
    store.put("output-bucket", &garbled, "{".into()).await.unwrap();
    let failure = fleet.launch_failure().await.unwrap().expect("shown");
    assert!(
        failure.reason.contains("i-0ddd") && failure.reason.contains("unreadable"),
        "{failure:?}"
    );

    // Another instance starting clears it, as a local worker that gets ready does.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    instance("i-0ccc").started().await.unwrap();
    assert_eq!(fleet.launch_failure().await.unwrap(), None);
    // The fleet without the records (as before) says nothing of them.
    let plain = AsgFleet::open(&aws, &["app-tier"]).await.unwrap();
    broken.failed_to_start("again").await.unwrap();
    assert_eq!(plain.launch_failure().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_lease_contract() {
    let moto = Moto::start();
    let aws = Aws::new(moto.sdk().await, ApiCalls::default());
    bootstrap::create(&aws, &resources(&["input-bucket"], None))
        .await
        .unwrap();
    let a = imgrec_aws::S3Lease::new(&aws, "input-bucket", "scaler", "a");
    let b = imgrec_aws::S3Lease::new(&aws, "input-bucket", "scaler", "b");
    contract::lease_contract(Arc::new(a), Arc::new(b)).await;
}

/// The web tier's API keys from an SSM SecureString: the decrypted text, or an error naming the
/// parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssm_secure_parameters_are_read_decrypted() {
    let moto = Moto::start();
    let aws = Aws::new(moto.sdk().await, ApiCalls::default());
    let ssm = aws_sdk_ssm::Client::new(&aws.sdk);
    let text = "nightly 0123 10 20\n";
    (ssm.put_parameter().name("/imgrec/api-keys").value(text))
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    assert_eq!(
        imgrec_aws::secure_parameter(&aws, "/imgrec/api-keys").await.unwrap(),
        text
    );
    let err = imgrec_aws::secure_parameter(&aws, "/imgrec/missing").await.unwrap_err();
    assert!(format!("{err:#}").contains("/imgrec/missing"), "{err:#}");
}

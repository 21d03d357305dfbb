//! The AWS adapters against the same port contracts as the local ones, on a moto server.

use std::sync::Arc;
use std::time::Duration;

use imgrec_aws::bootstrap::{self, Resources};
use imgrec_aws::{AsgFleet, Aws, S3ObjectStore, SqsQueue};
use imgrec_domain::ports::{ApiCalls, Fleet, ObjectKey, ObjectStore, PortError, WorkQueue};
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

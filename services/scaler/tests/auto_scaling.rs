//! The scaler driving an Auto Scaling group on moto: up to the cap, names, back to min, metrics.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use imgrec_aws::bootstrap::{self, Resources};
use imgrec_aws::{AsgFleet, Aws, CloudWatchSink, SqsQueue};
use imgrec_domain::policy::{PolicyConfig, PolicyKind};
use imgrec_domain::ports::{ApiCalls, Fleet, InstanceState, Purchase, WorkQueue};
use imgrec_testkit::Moto;
use scaler::Scaler;

/// Instance id -> Name tag, straight from EC2.
async fn name_tags(ec2: &aws_sdk_ec2::Client) -> HashMap<String, String> {
    let out = ec2
        .describe_tags()
        .filters(Filter::builder().name("key").values("Name").build())
        .send()
        .await
        .unwrap();
    out.tags()
        .iter()
        .map(|t| (t.resource_id().unwrap().to_owned(), t.value().unwrap().to_owned()))
        .collect()
}

// Long: one scale-out and scale-in story against moto, read top to bottom; its steps share the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scaler_grows_to_the_cap_names_instances_and_returns_to_min() {
    let moto = Moto::start();
    let sdk = moto.sdk().await;
    let aws = Aws::new(sdk.clone(), ApiCalls::default());
    let queue = group_with_requests(&aws, &[], 200).await;
    assert_eq!(queue.depth().await.unwrap().visible, 200);

    let fleet = Arc::new(AsgFleet::open(&aws, &["app-tier"]).await.unwrap());
    // Configured max 25 above the group's MaxSize 20: the group's bound wins.
    // 200 requests of 1 s within 10 s, on instances that boot in 1 s: 23 wanted.
    let policy = PolicyKind::Default.build(PolicyConfig {
        min: 0,
        max: 25,
        target_latency: Duration::from_secs(10),
        service_time: Duration::from_secs(1),
        boot_time: Duration::from_secs(1),
        scale_in_after: Duration::from_secs(2),
    });
    let sink = CloudWatchSink::new(&aws, "imgrec-test", "app-tier");
    let mut scaler = Scaler::new(policy, Arc::new(queue.clone()), fleet.clone()).with_metrics(Some(Arc::new(sink)));
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let autoscaling = aws_sdk_autoscaling_client(&sdk);

    let mut names_by_id: HashMap<String, String> = HashMap::new();
    // This fleet's own count: the process-wide one also counts the other test's fleets.
    // Every SDK call of the fleet is counted into `aws.calls`.
    let set_desired = || aws.calls.snapshot().get("SetDesiredCapacity").copied().unwrap_or(0);
    let mut first_step = None;
    for _ in 0..25 {
        let before = (set_desired(), group_desired(&autoscaling).await);
        let decision = scaler.tick().await.unwrap();
        // One decision, one SetDesiredCapacity, however many instances it launches.
        let calls = set_desired() - before.0;
        assert!(calls <= 1, "{calls} SetDesiredCapacity calls in one decision");
        assert!(decision.desired <= 20, "desired {} above the cap", decision.desired);
        let desired = group_desired(&autoscaling).await;
        first_step.get_or_insert((calls, desired - before.1));
        assert!(desired <= 20, "group desired capacity {desired} above MaxSize");
        fleet.instances().await.unwrap(); // names newcomers
        let tags = name_tags(&ec2).await;
        for (id, name) in &tags {
            if let Some(before) = names_by_id.insert(id.clone(), name.clone()) {
                assert_eq!(&before, name, "instance {id} was renamed");
            }
        }
        let live: Vec<String> = fleet.instances().await.unwrap().into_iter().map(|i| i.name).collect();
        let unique: HashSet<&String> = live.iter().collect();
        assert_eq!(unique.len(), live.len(), "duplicate names: {live:?}");
        if live.len() == 20 {
            break;
        }
    }
    let live: HashSet<String> = fleet.instances().await.unwrap().into_iter().map(|i| i.name).collect();
    let want: HashSet<String> = (1..=20).map(|k| format!("app-instance{k}")).collect();
    assert_eq!(live, want);
    assert_eq!(
        first_step,
        Some((1, 20)),
        "the first decision asks for all 20 in one call"
    );

    // Backlog gone: back to the minimum (the policy's scale-in window is unit-tested).
    aws_sdk_sqs::Client::new(&sdk)
        .purge_queue()
        .queue_url(queue.url())
        .send()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        scaler.tick().await.unwrap();
        let active = fleet
            .instances()
            .await
            .unwrap()
            .into_iter()
            .filter(|i| i.state != InstanceState::Stopping)
            .count();
        if active == 0 && group_desired(&autoscaling).await == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "did not return to min ({active} left)"
        );
    }

    let cloudwatch = aws_sdk_cloudwatch::Client::new(&sdk);
    let metrics = cloudwatch.list_metrics().namespace("imgrec-test").send().await.unwrap();
    let names: HashSet<&str> = metrics.metrics().iter().filter_map(|m| m.metric_name()).collect();
    for name in ["Backlog", "BacklogPerInstance", "DesiredCapacity", "InServiceInstances"] {
        assert!(names.contains(name), "{name} not published: {names:?}");
    }
    let dims: Vec<_> = metrics.metrics().iter().flat_map(|m| m.dimensions()).collect();
    assert!(dims
        .iter()
        .all(|d| d.name() == Some("AutoScalingGroupName") && d.value() == Some("app-tier")));
}

/// The group `app-tier` (MaxSize 20), the request queue with `requests` messages in it, and
/// `buckets`.
async fn group_with_requests(aws: &Aws, buckets: &[&str], requests: usize) -> SqsQueue {
    let resources = Resources {
        buckets,
        requests_queue: "requests",
        dead_letter_queue: "requests-dlq",
        other_queues: &[],
        max_receives: 3,
        visibility_timeout_s: 30,
        group: Some(("app-tier", 20)),
    };
    bootstrap::create(aws, &resources).await.unwrap();
    let queue = SqsQueue::open(aws, "requests").await.unwrap();
    let bodies: Vec<Vec<u8>> = (0..requests).map(|i| format!("{{\"n\":{i}}}").into_bytes()).collect();
    queue.send_batch(&bodies).await.unwrap();
    queue
}

fn aws_sdk_autoscaling_client(sdk: &aws_config::SdkConfig) -> aws_sdk_autoscaling::Client {
    aws_sdk_autoscaling::Client::new(sdk)
}

async fn group_desired(client: &aws_sdk_autoscaling::Client) -> i32 {
    let out = client
        .describe_auto_scaling_groups()
        .auto_scaling_group_names("app-tier")
        .send()
        .await
        .unwrap();
    out.auto_scaling_groups()[0].desired_capacity().unwrap()
}

/// Two scalers on one group (as on two web instances), each with its own fleet handle and an S3
/// lease: one acts, the other only watches, until the acting one stops; then the other takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_two_scalers_on_one_group_only_the_lease_holder_acts() {
    use imgrec_aws::S3Lease;
    let moto = Moto::start();
    let sdk = moto.sdk().await;
    let aws = Aws::new(sdk.clone(), ApiCalls::default());
    let queue = group_with_requests(&aws, &["state"], 100).await;
    let config = PolicyConfig {
        min: 0,
        max: 6,
        target_latency: Duration::from_secs(10),
        service_time: Duration::from_secs(1),
        boot_time: Duration::from_secs(1),
        scale_in_after: Duration::from_secs(2),
    };
    let ttl = Duration::from_secs(2);
    let mut scalers = Vec::new();
    for host in ["web-instance1", "web-instance2"] {
        let fleet = Arc::new(AsgFleet::open(&aws, &["app-tier"]).await.unwrap());
        let lease = Arc::new(S3Lease::new(&aws, "state", "scaler", host));
        scalers.push(
            Scaler::new(
                PolicyKind::Default.build(config.clone()),
                Arc::new(queue.clone()),
                fleet,
            )
            .with_lease(lease, ttl),
        );
    }
    let autoscaling = aws_sdk_autoscaling_client(&sdk);
    for _ in 0..6 {
        for scaler in &mut scalers {
            scaler.tick().await.unwrap();
        }
        let acting: Vec<bool> = scalers.iter().map(|s| s.status().read().unwrap().acting).collect();
        assert_eq!(acting, [true, false], "exactly the first to take the lease acts");
        assert!(group_desired(&autoscaling).await <= 6);
    }
    assert_eq!(group_desired(&autoscaling).await, 6);
    // The first stops renewing (its host died): the second takes over once the lease expires.
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    scalers[1].tick().await.unwrap();
    assert!(
        scalers[1].status().read().unwrap().acting,
        "the second did not take over"
    );
    assert!(group_desired(&autoscaling).await <= 6);
}

/// Instance id -> (group, Name tag) of every instance of `groups`.
async fn members(
    autoscaling: &aws_sdk_autoscaling::Client,
    ec2: &aws_sdk_ec2::Client,
    groups: &[&str],
) -> HashMap<String, (String, String)> {
    let tags = name_tags(ec2).await;
    let out = autoscaling
        .describe_auto_scaling_groups()
        .set_auto_scaling_group_names(Some(groups.iter().map(|g| g.to_string()).collect()))
        .send()
        .await
        .unwrap();
    out.auto_scaling_groups()
        .iter()
        .flat_map(|g| {
            let group = g.auto_scaling_group_name().unwrap().to_owned();
            let tags = &tags;
            g.instances().iter().map(move |i| {
                let id = i.instance_id().unwrap().to_owned();
                let name = tags.get(&id).cloned().unwrap_or_default();
                (id, (group.clone(), name))
            })
        })
        .collect()
}

/// The On-Demand group (where the warm pool is) takes launches up to its MaxSize, the Spot group
/// the rest; names are unique across both, even when an instance comes back from the warm pool
/// carrying a name another instance holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn launches_fill_the_on_demand_group_then_the_spot_group_with_unique_names() {
    let moto = Moto::start();
    let sdk = moto.sdk().await;
    let aws = Aws::new(sdk.clone(), ApiCalls::default());
    bootstrap::create_group(&aws, "app-tier", 2).await.unwrap();
    bootstrap::create_group(&aws, "app-tier-spot", 4).await.unwrap();
    let groups = ["app-tier", "app-tier-spot"];
    let fleet = AsgFleet::open(&aws, &groups).await.unwrap();
    assert_eq!(fleet.max_size().await.unwrap(), Some(6));
    assert_eq!(fleet.warm_pool().await.unwrap(), None);
    let (autoscaling, ec2) = (aws_sdk_autoscaling_client(&sdk), aws_sdk_ec2::Client::new(&sdk));
    autoscaling
        .put_warm_pool()
        .auto_scaling_group_name("app-tier")
        .pool_state(aws_sdk_autoscaling::types::WarmPoolState::Hibernated)
        .min_size(1)
        .send()
        .await
        .unwrap();
    let pool = fleet
        .warm_pool()
        .await
        .unwrap()
        .expect("the On-Demand group's warm pool");
    assert_eq!((pool.state.as_str(), pool.size), ("Hibernated", 1));

    let change = fleet.scale_to(5, 20).await.unwrap();
    assert_eq!(change.launch.len(), 5);
    let live = fleet.instances().await.unwrap();
    let names: HashSet<String> = live.iter().map(|i| i.name.clone()).collect();
    assert_eq!(names, (1..=5).map(|k| format!("app-instance{k}")).collect());
    let by_id = members(&autoscaling, &ec2, &groups).await;
    let in_group = |g: &str| by_id.values().filter(|(group, _)| group == g).count();
    assert_eq!((in_group("app-tier"), in_group("app-tier-spot")), (2, 3));
    // Each instance says how it is paid for: its group's purchase option.
    let bought = |p| live.iter().filter(|i| i.purchase == Some(p)).count();
    assert_eq!((bought(Purchase::OnDemand), bought(Purchase::Spot)), (2, 3));

    // Asked for more than the groups hold: the cap is their MaxSizes' sum.
    fleet.scale_to(9, 20).await.unwrap();
    assert_eq!(fleet.instances().await.unwrap().len(), 6);

    // A Spot instance turns up carrying the name an On-Demand one holds (as one back from the
    // warm pool may): the one seen first keeps it, the newcomer is named again.
    let by_id = members(&autoscaling, &ec2, &groups).await;
    let (od_id, (_, od_name)) = by_id.iter().find(|(_, (g, _))| g == "app-tier").unwrap();
    let (spot_id, _) = by_id.iter().find(|(_, (g, _))| g == "app-tier-spot").unwrap();
    let tag = aws_sdk_ec2::types::Tag::builder().key("Name").value(od_name).build();
    ec2.create_tags().resources(spot_id).tags(tag).send().await.unwrap();
    let live = fleet.instances().await.unwrap();
    let unique: HashSet<&String> = live.iter().map(|i| &i.name).collect();
    assert_eq!(unique.len(), live.len(), "duplicate names: {live:?}");
    let by_id = members(&autoscaling, &ec2, &groups).await;
    assert_eq!(&by_id[od_id].1, od_name, "the instance seen first keeps its name");
    assert_ne!(&by_id[spot_id].1, od_name);

    fleet.scale_to(0, 20).await.unwrap();
    let desired = autoscaling
        .describe_auto_scaling_groups()
        .set_auto_scaling_group_names(Some(groups.iter().map(|g| g.to_string()).collect()))
        .send()
        .await
        .unwrap();
    assert!(desired
        .auto_scaling_groups()
        .iter()
        .all(|g| g.desired_capacity() == Some(0)));
}

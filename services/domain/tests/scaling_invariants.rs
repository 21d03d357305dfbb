//! Policy + fleet over random scale-out / scale-in / re-burst sequences with instances that boot
//! and stop slowly: whatever the policy asks, the fleet's plan never has more than `max` instances
//! alive in any state, and never two with one name or one named above `app-instance{max}`.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use imgrec_domain::policy::{Observation, PolicyConfig, PolicyKind};
use imgrec_domain::ports::fleet::{instance_name, plan};
use imgrec_domain::ports::{Instance, InstanceState, QueueDepth};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TICK: Duration = Duration::from_millis(500);

/// One simulated instance: the ticks until it runs, and, once retired, until it is gone.
struct Member {
    instance: Instance,
    ready_in: u32,
    gone_in: Option<u32>,
}

fn check(members: &[Member], max: usize, context: &str) {
    assert!(members.len() <= max, "{context}: {} alive, max {max}", members.len());
    let names: HashSet<&str> = members.iter().map(|m| m.instance.name.as_str()).collect();
    assert_eq!(names.len(), members.len(), "{context}: duplicate names");
    let allowed: HashSet<String> = (1..=max).map(instance_name).collect();
    for name in names {
        assert!(allowed.contains(name), "{context}: {name} is out of range");
    }
}

// Long: one randomised run whose every step checks the same invariants; split, the steps would
// only pass the whole state around.
fn run(kind: PolicyKind, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let max = rng.random_range(1..=8);
    let min = rng.random_range(0..=max.min(2));
    let mut policy = kind.build(PolicyConfig {
        min,
        max,
        target_latency: Duration::from_secs(1),
        service_time: Duration::from_millis(rng.random_range(10..200)),
        boot_time: Duration::from_millis(rng.random_range(100..3000)),
        scale_in_after: Duration::from_secs(rng.random_range(0..5)),
    });
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let mut members: Vec<Member> = Vec::new();
    let mut backlog = 0u64;
    for tick in 0..600u32 {
        let now = start + TICK * tick;
        // Bursts, idle stretches and re-bursts while earlier instances are still stopping.
        match rng.random_range(0..10) {
            0 => backlog += rng.random_range(1..200),
            1..=3 => backlog = backlog.saturating_sub(rng.random_range(0..50)),
            4 if rng.random_bool(0.2) => backlog = 0,
            _ => {}
        }
        for m in &mut members {
            if m.ready_in > 0 {
                m.ready_in -= 1;
            } else if m.instance.state == InstanceState::Pending {
                m.instance.state = InstanceState::Running;
            }
            if let Some(n) = m.gone_in.as_mut() {
                *n = n.saturating_sub(1);
            }
            m.instance.busy = m.instance.state != InstanceState::Pending && backlog > 0 && rng.random_bool(0.7);
        }
        members.retain(|m| m.gone_in != Some(0));
        let instances: Vec<Instance> = members.iter().map(|m| m.instance.clone()).collect();
        let decision = policy.decide(&Observation {
            now,
            backlog: QueueDepth {
                visible: backlog / 2,
                in_flight: backlog - backlog / 2,
            },
            instances: &instances,
            completion_rate: rng.random_bool(0.5).then(|| rng.random_range(0.0..100.0)),
        });
        assert!((min..=max).contains(&decision.desired));
        let resize = plan(decision.desired, max, &instances);
        for name in resize.retire {
            let m = members
                .iter_mut()
                .find(|m| m.instance.name == name)
                .expect("retires a member");
            assert_ne!(m.instance.state, InstanceState::Stopping, "retired twice");
            m.instance.state = InstanceState::Stopping;
            // Slow to stop: a busy one finishes its batch, some hang for a while.
            m.gone_in = Some(rng.random_range(0..40));
        }
        for name in resize.launch {
            members.push(Member {
                instance: Instance {
                    name,
                    state: InstanceState::Pending,
                    launched_at: now,
                    busy: false,
                    purchase: None,
                },
                ready_in: rng.random_range(0..10),
                gone_in: None,
            });
        }
        check(&members, max, &format!("{} seed {seed} tick {tick}", kind.name()));
    }
}

#[test]
fn no_policy_makes_the_fleet_exceed_its_cap_or_reuse_a_name() {
    for kind in PolicyKind::ALL {
        for seed in 0..200 {
            run(kind, seed);
        }
    }
}

#[test]
fn a_stopping_pool_delays_a_re_burst_instead_of_exceeding_the_cap() {
    let max = 4;
    let t0 = SystemTime::UNIX_EPOCH;
    let stopping: Vec<Instance> = (1..=4)
        .map(|k| Instance {
            name: instance_name(k),
            state: InstanceState::Stopping,
            launched_at: t0,
            busy: true,
            purchase: None,
        })
        .collect();
    // All four still stopping: nothing may start; one gone: exactly its name comes back.
    assert!(plan(4, max, &stopping).launch.is_empty());
    let resize = plan(4, max, &stopping[..3]);
    assert_eq!(resize.launch, ["app-instance4"]);
}

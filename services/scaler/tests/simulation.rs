//! The scaling simulator on the shipped settings: ours meets the bar on every scenario, the
//! shipped scale-in windows are the ones the simulator picks, runs are deterministic, and the AWS
//! profile is what Terraform deploys.

use std::collections::HashMap;
use std::time::Duration;

use imgrec_domain::policy::PolicyKind;
use imgrec_runtime::settings::Settings;
use scaler::sim::{self, Profile, Row, INSTANCE_CAP};

const SEED: u64 = 7;

fn local() -> Profile {
    let settings = Settings::load().expect("the default configuration loads");
    Profile::local(settings.scaler.policy_config().unwrap(), settings.scaler.tick())
}

fn rows(profile: &Profile, seed: u64) -> Vec<Vec<Row>> {
    sim::run_profile(profile, seed)
        .into_iter()
        .map(|(_, outcomes)| outcomes.into_iter().map(|o| o.row).collect())
        .collect()
}

fn row<'a>(rows: &'a [Vec<Row>], scenario: &str, policy: &str) -> &'a Row {
    rows.iter()
        .flatten()
        .find(|r| r.scenario.ends_with(scenario) && r.policy == policy)
        .unwrap_or_else(|| panic!("no row {scenario} {policy}"))
}

#[test]
fn shipped_defaults_meet_the_bar_on_every_scenario() {
    for (profile, seed) in [local(), sim::aws_profile()]
        .into_iter()
        .flat_map(|p| [(p.clone(), SEED), (p.clone(), 11), (p, 23)])
    {
        let all = rows(&profile, seed);
        assert_eq!(all.len(), 6, "six scenarios");
        for scenario in &all {
            assert_eq!(scenario.len(), PolicyKind::ALL.len());
            assert_eq!(sim::shortfalls(scenario), Vec::<String>::new());
            for r in scenario {
                assert_eq!(r.completed, r.requests, "{} {} lost requests", r.scenario, r.policy);
                assert!(r.peak_instances <= INSTANCE_CAP.min(profile.policy.max));
                assert!(
                    r.back_at_min_s.is_some(),
                    "{} {} never back at min",
                    r.scenario,
                    r.policy
                );
            }
        }
        // Where ours wins: the 1,000 burst finishes sooner than under target tracking, and the
        // sparse requests cost less than the naive pool.
        let burst = |p| row(&all, "/burst-1000", p).completion_s;
        assert!(
            burst("default") < burst("target_tracking"),
            "{} seed {seed}",
            profile.name
        );
        let sparse = |p| row(&all, "/sparse", p).instance_seconds;
        assert!(sparse("default") < sparse("naive"), "{} seed {seed}", profile.name);
    }
}

#[test]
fn shipped_scale_in_windows_are_the_simulators_pick() {
    for profile in [local(), sim::aws_profile()] {
        let runs = sim::run_profile(&profile, SEED);
        let (window, _) = sim::pick_scale_in(&profile, &runs, SEED).expect("a window meets the bar");
        let shipped = profile.policy.scale_in_after.as_secs_f64();
        assert!(
            (window - shipped).abs() < 1e-9,
            "{}: picked {window}, shipped {shipped}",
            profile.name
        );
    }
}

#[test]
fn same_seed_same_report_other_seed_other_arrivals() {
    let profile = sim::aws_profile();
    let json = |seed| serde_json::to_string(&rows(&profile, seed)).unwrap();
    assert_eq!(json(SEED), json(SEED));
    let arrivals = |seed| sim::scenarios(seed).into_iter().map(|s| s.arrivals).collect::<Vec<_>>();
    assert_ne!(arrivals(SEED), arrivals(SEED + 1));
    // The scenarios are what they say.
    let scenarios = sim::scenarios(SEED);
    let sizes: HashMap<&str, usize> = scenarios.iter().map(|s| (s.name, s.arrivals.len())).collect();
    assert_eq!(
        (sizes["burst-100"], sizes["burst-1000"], sizes["sparse"]),
        (100, 1000, 20)
    );
    assert!(
        (55_000..65_000).contains(&sizes["poisson"]),
        "200/s for 300 s: {}",
        sizes["poisson"]
    );
    let sparse = &scenarios.iter().find(|s| s.name == "sparse").unwrap().arrivals;
    let mean_gap = (sparse[19] - sparse[0]) / 19.0;
    assert!(mean_gap > 60.0, "sparse requests minutes apart: {mean_gap}");
}

#[test]
fn every_request_waits_at_the_cap_instead_of_being_dropped() {
    // A pool capped at 2 under the 1,000 burst: requests queue, all complete.
    let mut profile = sim::aws_profile();
    profile.policy.max = 2;
    let scenario = sim::scenarios(SEED)
        .into_iter()
        .find(|s| s.name == "burst-1000")
        .unwrap();
    for kind in PolicyKind::ALL {
        let r = sim::simulate(&profile, &scenario, kind, SEED).row;
        assert_eq!(r.completed, 1000, "{}", r.policy);
        assert!(r.peak_instances <= 2, "{}", r.policy);
    }
    let naive = sim::simulate(&profile, &scenario, PolicyKind::Naive, SEED).row;
    assert!(naive.max_waiting_at_cap > 900, "{naive:?}");
}

#[test]
fn aws_profile_is_what_terraform_ships() {
    let template = include_str!("../../../terraform/templates/imgrec.toml.tftpl");
    let scaler = template
        .split("[scaler]")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .expect("a [scaler] section");
    let value = |key: &str| -> f64 {
        scaler
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("{key} missing from the template"))
            .parse()
            .unwrap()
    };
    let p = sim::aws_profile();
    assert_eq!(
        Duration::from_secs_f64(value("target_latency_s")),
        p.policy.target_latency
    );
    assert_eq!(Duration::from_secs_f64(value("service_time_s")), p.policy.service_time);
    assert_eq!(Duration::from_secs_f64(value("boot_time_s")), p.policy.boot_time);
    assert_eq!(
        Duration::from_secs_f64(value("scale_in_after_s")),
        p.policy.scale_in_after
    );
    assert_eq!(value("tick_ms") / 1000.0, p.tick_s);
}

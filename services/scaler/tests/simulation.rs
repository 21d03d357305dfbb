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

fn by_scenario<'a>(rows: &'a [Vec<Row>], scenario: &str) -> &'a [Row] {
    rows.iter()
        .find(|r| r[0].scenario.ends_with(scenario))
        .unwrap_or_else(|| panic!("no scenario {scenario}"))
}

#[test]
fn the_shipped_capacity_is_the_simulators_pick_and_meets_the_goals() {
    let profile = sim::aws_profile();
    for seed in [SEED, 11, 23] {
        let choice = sim::pick_capacity(&profile, &[seed, seed + 1, seed + 2]);
        assert_eq!(choice.capacity, sim::shipped_capacity(), "seed {seed}");
        assert!(choice.burst_p99_s < sim::BURST_GOAL_S, "{}", choice.burst_p99_s);
        let rows = sim::compare_capacities(&profile, std::slice::from_ref(&choice.capacity), seed);
        for r in rows.iter().flatten() {
            assert_eq!((r.lost, r.visibility_waits), (0, 0), "{r:?}");
            assert!(r.peak_instances <= profile.policy.max);
        }
    }
    let prices = &profile.prices;
    let max = profile.policy.max;
    let ratio = prices.hourly(&sim::shipped_capacity(), max) / prices.hourly(&sim::Capacity::on_demand(), max);
    assert!(ratio <= sim::CAP_COST_GOAL, "at the cap: {ratio:.2} of On-Demand");
}

#[test]
fn a_warm_pool_answers_a_burst_from_zero_sooner_by_about_the_start_it_saves() {
    let profile = sim::aws_profile();
    let pool = |state| sim::Capacity::warm_pool(sim::warm_pool(1, state));
    let capacities = [
        sim::Capacity::on_demand(),
        pool(sim::WarmState::Stopped),
        pool(sim::WarmState::Hibernated),
    ];
    let rows = sim::compare_capacities(&profile, &capacities, SEED);
    let burst = by_scenario(&rows, "/burst-100");
    let (cold, stopped, hibernated) = (&burst[0], &burst[1], &burst[2]);
    let saved = |start: &sim::BootTime| profile.boot.mean_s - start.mean_s;
    for (warm, start) in [
        (stopped, &profile.warm_start.stopped),
        (hibernated, &profile.warm_start.hibernated),
    ] {
        let gain = cold.p99_latency_s - warm.p99_latency_s;
        assert!(
            (gain - saved(start)).abs() < 2.0 * profile.boot.sd_s,
            "{gain} vs {}",
            saved(start)
        );
    }
    // The pool's instance waited (volumes billed) and was refilled (a cold start billed).
    assert!(hibernated.warm_pool_seconds > 0.0);
    assert!(hibernated.cost_usd > cold.cost_usd);
}

#[test]
fn costs_add_up_by_purchase_option() {
    let profile = sim::aws_profile();
    let spot = sim::Capacity::warm_pool_and_spot(0, sim::warm_pool(1, sim::WarmState::Stopped), sim::default_spot());
    let rows = sim::compare_capacities(&profile, &[sim::Capacity::on_demand(), spot], SEED);
    let prices = &profile.prices;
    for scenario in &rows {
        let on_demand = &scenario[0];
        assert_eq!(on_demand.spot_instance_seconds, 0.0);
        let expected = on_demand.instance_seconds / 3600.0 * prices.per_hour(sim::Purchase::OnDemand, None);
        assert!((on_demand.cost_usd - expected).abs() < 1e-9, "{on_demand:?}");
        assert!(
            (on_demand.cost_per_1000_images_usd - 1000.0 * on_demand.cost_usd / on_demand.completed as f64).abs()
                < 1e-12
        );
    }
    // Under the day's load most instances are Spot, at 40% of the price.
    let day = by_scenario(&rows, "/day");
    assert!(
        day[1].spot_instance_seconds > day[1].on_demand_instance_seconds,
        "{:?}",
        day[1]
    );
    assert!(day[1].cost_per_1000_images_usd < 0.7 * day[0].cost_per_1000_images_usd);
}

#[test]
fn interrupted_spot_workers_that_drain_leave_nothing_waiting_for_a_visibility_timeout() {
    let profile = sim::aws_profile();
    let stressed = |drain| {
        let mut capacity = sim::shipped_capacity();
        let spot = capacity.spot.as_mut().unwrap();
        spot.interruptions_per_hour = 60.0;
        spot.drain = drain;
        capacity
    };
    let rows = sim::compare_capacities(&profile, &[stressed(true), stressed(false)], SEED);
    let (mut notices, mut waits_undrained) = (0, 0);
    for scenario in &rows {
        let (drained, undrained) = (&scenario[0], &scenario[1]);
        notices += drained.interruptions;
        waits_undrained += undrained.visibility_waits;
        assert_eq!((drained.lost, drained.visibility_waits), (0, 0), "{drained:?}");
        assert_eq!(
            undrained.lost, 0,
            "requests come back after their timeout: {undrained:?}"
        );
    }
    assert!(notices >= 10, "the stress interrupts: {notices}");
    assert!(
        waits_undrained > 0,
        "without draining, held requests wait out their timeout"
    );
}

#[test]
fn terraform_deploys_the_capacity_the_simulator_picks() {
    let variables = include_str!("../../../terraform/variables.tf");
    let default = |name: &str| -> String {
        let block = variables
            .split(&format!("variable \"{name}\" {{"))
            .nth(1)
            .unwrap_or_else(|| panic!("no variable {name}"));
        block
            .lines()
            .find_map(|l| l.trim().strip_prefix("default"))
            .and_then(|l| l.trim().strip_prefix('='))
            .unwrap_or_else(|| panic!("{name} has no default"))
            .trim()
            .trim_matches('"')
            .to_owned()
    };
    let shipped = sim::shipped_capacity();
    let pool = shipped.warm_pool.as_ref().unwrap();
    assert_eq!(default("app_min_size"), shipped.min.to_string());
    assert_eq!(default("warm_pool_size"), pool.size.to_string());
    assert_eq!(default("warm_pool_state"), pool.state.name());
    assert!(
        default("spot_instance_types").starts_with("[\"c7i.large\""),
        "Spot by default"
    );
    let spot = shipped.spot.as_ref().unwrap();
    assert_eq!(default("spot_discount").parse::<f64>().unwrap(), spot.discount);
    let prices = sim::Prices::c7i_large();
    assert_eq!(
        default("on_demand_price_per_hour").parse::<f64>().unwrap(),
        prices.on_demand_per_hour
    );
}

//! How the simulator chooses the EC2 capacity Terraform ships: the warm pool's size and state,
//! and how many instances stay in service, from simulated runs of ours on every scenario, over
//! several seeds (one seed's discrete luck must not decide).

use super::capacity::{Capacity, WarmState};
use super::{compare_capacities, default_spot, warm_pool, Profile, Row};

/// Warm pool sizes weighed.
pub const WARM_POOL_SIZES: [usize; 6] = [1, 2, 3, 4, 6, 8];
/// A 100-upload burst arriving at an idle service is answered within this (p99).
pub const BURST_GOAL_S: f64 = 12.0;
/// At the cap, cost per image at most this fraction of On-Demand's.
pub const CAP_COST_GOAL: f64 = 0.5;
/// A bigger pool is worth it only if it lowers some scenario's p99 by more than this
/// (or by more than a tenth).
const WORTH_S: f64 = 2.0;

/// What the simulator picked, and the runs it picked from.
pub struct Choice {
    pub capacity: Capacity,
    /// The 100-upload burst's p99 under it.
    pub burst_p99_s: f64,
}

/// Spot beyond the On-Demand base, always (it only lowers the cost); of the pools that keep the
/// cost at the cap within `CAP_COST_GOAL` of On-Demand's (the pool's group is the On-Demand
/// base), the smallest within `WORTH_S` of the biggest on every scenario; the warm state with
/// the lower p99 summed over scenarios from zero instances; and the fewest instances kept in
/// service (from 0) that meet `BURST_GOAL_S`.
pub fn pick_capacity(profile: &Profile, seeds: &[u64]) -> Choice {
    // The state is weighed from zero instances, where every burst waits for the pool's start.
    let state = [WarmState::Hibernated, WarmState::Stopped]
        .into_iter()
        .map(|state| (state, total_p99(&pick_pool(profile, seeds, 0, state).1)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(state, _)| state)
        .expect("two states");
    let mut last = None;
    for min in 0..=2 {
        let (capacity, rows) = pick_pool(profile, seeds, min, state);
        let choice = Choice {
            capacity,
            burst_p99_s: burst_p99(&rows),
        };
        if choice.burst_p99_s < BURST_GOAL_S {
            return choice;
        }
        last = Some(choice);
    }
    last.expect("at least one candidate")
}

fn candidate(min: usize, size: usize, state: WarmState) -> Capacity {
    Capacity::warm_pool_and_spot(min, warm_pool(size, state), default_spot())
}

/// The pool size for `min` and `state`, with its rows (one per scenario and seed).
fn pick_pool(profile: &Profile, seeds: &[u64], min: usize, state: WarmState) -> (Capacity, Vec<Row>) {
    let max = profile.policy.max;
    let on_demand = profile.prices.hourly(&Capacity::on_demand(), max);
    let mut capacities: Vec<Capacity> = WARM_POOL_SIZES
        .iter()
        .map(|&n| candidate(min, n, state))
        .filter(|c| profile.prices.hourly(c, max) <= CAP_COST_GOAL * on_demand)
        .collect();
    if capacities.is_empty() {
        capacities.push(candidate(min, WARM_POOL_SIZES[0], state));
    }
    let by_scenario: Vec<Vec<Row>> = seeds
        .iter()
        .flat_map(|&seed| compare_capacities(profile, &capacities, seed))
        .collect();
    let rows_of = |i: usize| -> Vec<Row> { by_scenario.iter().map(|rows| rows[i].clone()).collect() };
    let biggest = rows_of(capacities.len() - 1);
    for (i, capacity) in capacities.iter().enumerate() {
        let rows = rows_of(i);
        let close = rows
            .iter()
            .zip(&biggest)
            .all(|(r, b)| r.p99_latency_s <= b.p99_latency_s + WORTH_S.max(0.1 * b.p99_latency_s));
        if close {
            return (capacity.clone(), rows);
        }
    }
    (capacities[capacities.len() - 1].clone(), biggest)
}

fn total_p99(rows: &[Row]) -> f64 {
    rows.iter().map(|r| r.p99_latency_s).sum()
}

/// The worst over seeds.
fn burst_p99(rows: &[Row]) -> f64 {
    rows.iter()
        .filter(|r| r.scenario.ends_with("/burst-100"))
        .map(|r| r.p99_latency_s)
        .fold(f64::NEG_INFINITY, f64::max)
}

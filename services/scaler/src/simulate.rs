//! `scaler simulate` (`make sim`): every policy on every scenario, for the local stack (the
//! configured scaler settings) and for AWS (the settings Terraform ships); writes the report and
//! plots, prints the table and the scale-in window the simulator would pick, and fails when ours
//! misses the bar anywhere.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use imgrec_domain::policy::PolicyKind;
use imgrec_runtime::settings::Settings;
use scaler::sim::{self, Profile, Row};

pub fn run(settings: &Settings, out: &Path, seed: u64) -> anyhow::Result<bool> {
    let profiles = [
        Profile::local(settings.scaler.policy_config()?, settings.scaler.tick()),
        sim::aws_profile(),
    ];
    let mut stdout = std::io::stdout().lock();
    let mut results = Vec::new();
    for profile in profiles {
        let started = Instant::now();
        let outcomes = sim::run_profile(&profile, seed);
        let requests: usize = outcomes.iter().map(|(s, _)| s.arrivals.len()).sum();
        let elapsed = started.elapsed();
        writeln!(
            stdout,
            "{}: {} policies x {} requests simulated in {:.2} s",
            profile.name,
            PolicyKind::ALL.len(),
            requests,
            elapsed.as_secs_f64(),
        )?;
        speed(&mut stdout, &profile, &outcomes, seed)?;
        let shipped = profile.policy.scale_in_after.as_secs_f64();
        match sim::pick_scale_in(&profile, &outcomes, seed) {
            Some((window, cost)) => writeln!(
                stdout,
                "{}: picked scale_in_after_s = {window} ({cost:.0} instance-seconds in all); shipped: {shipped}",
                profile.name
            )?,
            None => writeln!(stdout, "{}: no scale-in window meets the bar", profile.name)?,
        }
        results.push((profile, outcomes));
    }
    let mut rows = sim::write_plots(out, &results)?;
    table(&mut stdout, &rows)?;
    rows.extend(capacities(&mut stdout, seed)?);
    sim::write_report(out, &rows)?;
    let mut ok = true;
    for (profile, outcomes) in &results {
        for (scenario, runs) in outcomes {
            let rows: Vec<Row> = runs.iter().map(|o| o.row.clone()).collect();
            for problem in sim::shortfalls(&rows) {
                ok = false;
                writeln!(stdout, "SHORTFALL {}/{}: {problem}", profile.name, scenario.name)?;
            }
        }
    }
    writeln!(stdout, "report: {}", out.join("report.json").display())?;
    Ok(ok)
}

/// The speed of one run of ours on the headline scenarios: median of 5 (the machine is shared and
/// noisy).
fn speed(out: &mut impl Write, profile: &Profile, outcomes: &sim::Runs, seed: u64) -> anyhow::Result<()> {
    for (scenario, _) in outcomes
        .iter()
        .filter(|(s, _)| ["burst-1000", "poisson"].contains(&s.name))
    {
        let mut times: Vec<f64> = (0..5)
            .map(|_| {
                let started = Instant::now();
                sim::simulate(profile, scenario, PolicyKind::Default, seed);
                started.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        writeln!(
            out,
            "{}: {} ({} requests) under ours in {:.1} ms (median of 5)",
            profile.name,
            scenario.name,
            scenario.arrivals.len(),
            times[2]
        )?;
    }
    Ok(())
}

fn table(out: &mut impl Write, rows: &[Row]) -> std::io::Result<()> {
    writeln!(
        out,
        "\n{:<18} {:<16} {:>9} {:>9} {:>11} {:>10} {:>5} {:>8} {:>8}",
        "scenario", "policy", "p50 s", "p99 s", "complete s", "inst-s", "peak", "actions", "at cap"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:<18} {:<16} {:>9.2} {:>9.2} {:>11.1} {:>10.0} {:>5} {:>8} {:>8}",
            r.scenario,
            r.policy,
            r.p50_latency_s,
            r.p99_latency_s,
            r.completion_s,
            r.instance_seconds,
            r.peak_instances,
            r.scaling_actions,
            r.max_waiting_at_cap
        )?;
    }
    Ok(())
}

/// EC2 under ours, provisioned as today, with the warm pool, with the warm pool and Spot, and as
/// shipped (the simulator's pick); what each costs at the minimum and at the cap; then Spot
/// interruptions far above AWS's rates, with and without draining.
fn capacities(out: &mut impl Write, seed: u64) -> anyhow::Result<Vec<Row>> {
    let profile = sim::aws_profile();
    let choice = sim::pick_capacity(&profile, &[seed, seed + 1, seed + 2]);
    let shipped = choice.capacity.clone();
    let pool = shipped.warm_pool.clone().expect("the pick has a warm pool");
    let mut columns = vec![
        sim::Capacity::on_demand(),
        sim::Capacity::warm_pool(pool.clone()),
        sim::Capacity::warm_pool_and_spot(0, pool.clone(), sim::default_spot()),
    ];
    if !columns.contains(&shipped) {
        columns.push(shipped.clone());
    }
    writeln!(
        out,
        "\naws: picked {} (100-upload burst p99 {:.1} s, goal < {} s)",
        shipped.name,
        choice.burst_p99_s,
        sim::BURST_GOAL_S
    )?;
    let grid = sim::compare_capacities(&profile, &columns, seed);
    writeln!(
        out,
        "\nEC2 under ours: p50 / p99 latency (s), cost per 1,000 images ($), visibility-timeout waits, lost"
    )?;
    for (i, c) in columns.iter().enumerate() {
        writeln!(out, "  [{}] {}", i + 1, c.name)?;
    }
    write!(out, "{:<12}", "scenario")?;
    for i in 0..columns.len() {
        write!(
            out,
            " | [{}] {:>5} {:>6} {:>7} {:>3} {:>3}",
            i + 1,
            "p50",
            "p99",
            "$/1000",
            "vis",
            "lst"
        )?;
    }
    writeln!(out)?;
    for rows in &grid {
        write!(out, "{:<12}", rows[0].scenario.trim_start_matches("aws/"))?;
        for r in rows {
            write!(
                out,
                " |     {:>5.1} {:>6.1} {:>7.4} {:>3} {:>3}",
                r.p50_latency_s, r.p99_latency_s, r.cost_per_1000_images_usd, r.visibility_waits, r.lost
            )?;
        }
        writeln!(out)?;
    }
    costs(out, &profile, &columns)?;
    let mut rows: Vec<Row> = grid.into_iter().flatten().collect();
    rows.extend(interruptions(out, &profile, &shipped, seed)?);
    Ok(rows)
}

/// Dollars per hour at the minimum and at the cap, and per 1,000 images with every instance
/// busy at the cap.
fn costs(out: &mut impl Write, profile: &Profile, columns: &[sim::Capacity]) -> anyhow::Result<()> {
    let prices = &profile.prices;
    let max = profile.policy.max;
    let per_hour = max as f64 * 3600.0 / profile.service_time_s;
    let today = prices.hourly(&columns[0], max);
    writeln!(
        out,
        "\n{:<42} {:>10} {:>10} {:>12} {:>8}",
        "capacity", "$/h idle", "$/h at cap", "$/1000 @cap", "vs today"
    )?;
    for c in columns {
        let at_cap = prices.hourly(c, max);
        writeln!(
            out,
            "{:<42} {:>10.4} {:>10.4} {:>12.6} {:>8.2}",
            c.name,
            prices.hourly(c, c.min),
            at_cap,
            1000.0 * at_cap / per_hour,
            at_cap / today
        )?;
    }
    Ok(())
}

/// Spot interruption notices per instance-hour in the stress run: one a minute. AWS's worst
/// band is above 20% of instances a month, about 0.0003 an hour.
const STRESS_INTERRUPTIONS: f64 = 60.0;

/// Spot interruptions far above AWS's rates: what draining at the notice saves.
fn interruptions(
    out: &mut impl Write,
    profile: &Profile,
    shipped: &sim::Capacity,
    seed: u64,
) -> anyhow::Result<Vec<Row>> {
    let stressed = |drain| {
        let mut c = shipped.clone();
        let spot = c.spot.as_mut().expect("the pick has Spot");
        spot.interruptions_per_hour = STRESS_INTERRUPTIONS;
        spot.drain = drain;
        c.name = format!(
            "{} interrupted {}/h{}",
            c.name,
            STRESS_INTERRUPTIONS,
            if drain { " draining" } else { " not draining" }
        );
        c
    };
    let grid = sim::compare_capacities(profile, &[stressed(true), stressed(false)], seed);
    writeln!(
        out,
        "\nSpot interruptions at {STRESS_INTERRUPTIONS} per instance-hour: draining at the notice | not draining"
    )?;
    writeln!(
        out,
        "{:<12} {:>6} {:>6} {:>4} {:>4} | {:>6} {:>6} {:>4} {:>4}",
        "scenario", "notices", "p99 s", "vis", "lost", "notices", "p99 s", "vis", "lost"
    )?;
    for rows in &grid {
        let (d, n) = (&rows[0], &rows[1]);
        writeln!(
            out,
            "{:<12} {:>6} {:>6.1} {:>4} {:>4} | {:>6} {:>6.1} {:>4} {:>4}",
            d.scenario.trim_start_matches("aws/"),
            d.interruptions,
            d.p99_latency_s,
            d.visibility_waits,
            d.lost,
            n.interruptions,
            n.p99_latency_s,
            n.visibility_waits,
            n.lost
        )?;
    }
    Ok(grid.into_iter().flatten().collect())
}

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
    let rows = sim::write_report(out, &results)?;
    table(&mut stdout, &rows)?;
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

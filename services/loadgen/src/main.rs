//! `loadgen`: uploads every image of a folder to the web tier with N concurrent connections (the
//! CSE546 workload generator's form field `myfile`), then prints count, errors, throughput,
//! latency percentiles and, given an expected `file,label` CSV, correctness. `--plot` draws the
//! run's timeline (instances, backlog, each request's latency) as an SVG.

mod plot;
mod timeline;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

#[derive(Parser)]
#[command(name = "loadgen", version, about)]
struct Args {
    /// The web tier.
    #[arg(long, default_value = "http://127.0.0.1:8000/")]
    url: String,
    /// Concurrent connections.
    #[arg(long, short = 'c', default_value_t = 100)]
    concurrency: usize,
    /// Expected answers, `file,label` per line.
    #[arg(long)]
    expected: Option<PathBuf>,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Send each image this many times.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Draw the run's timeline to this SVG file: instances by state and the backlog (sampled from
    /// the web tier's /status) and each request's latency.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// With --plot: how long to keep sampling after the last answer while the pool shrinks back
    /// to its minimum, seconds.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    plot_tail: u64,
    /// A folder of images (or image files).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Summary {
    requests: usize,
    ok: usize,
    errors: usize,
    wrong: usize,
    unchecked: usize,
    seconds: f64,
    throughput_per_s: f64,
    latency_mean_s: f64,
    latency_p50_s: f64,
    latency_p95_s: f64,
    latency_p99_s: f64,
    latency_max_s: f64,
    error_samples: Vec<String>,
}

fn images(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            for entry in std::fs::read_dir(input).with_context(|| input.display().to_string())? {
                let path = entry?.path();
                let ext = path
                    .extension()
                    .and_then(|e| e.to_str())
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                if matches!(ext.as_str(), "jpg" | "jpeg" | "png") {
                    files.push(path);
                }
            }
        } else {
            files.push(input.clone());
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("no images found");
    }
    Ok(files)
}

fn expected(path: &Path) -> anyhow::Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(','))
        .map(|(f, l)| (f.trim().to_string(), l.trim().to_string()))
        .collect())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct RequestResult {
    file: String,
    /// Seconds from the start of the run to sending this request.
    sent: f64,
    latency: f64,
    result: Result<String, String>,
}

async fn upload(client: &reqwest::Client, url: &str, path: &Path, bytes: Vec<u8>) -> Result<String, String> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let part = reqwest::multipart::Part::bytes(bytes).file_name(name);
    let form = reqwest::multipart::Form::new().part("myfile", part);
    let response = client
        .post(url)
        .multipart(form)
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| format!("cannot read the answer: {e}"))?;
    if status.is_success() {
        Ok(body.trim().to_string())
    } else {
        Err(format!("{}: {}", status.as_u16(), body.trim()))
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let files = images(&args.inputs)?;
    let expected = args.expected.as_deref().map(expected).transpose()?;
    let mut payloads = Vec::new();
    for path in &files {
        payloads.push((
            path.clone(),
            std::fs::read(path).with_context(|| path.display().to_string())?,
        ));
    }
    let jobs: Vec<(PathBuf, Vec<u8>)> = (0..args.repeat).flat_map(|_| payloads.iter().cloned()).collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout))
        .pool_max_idle_per_host(args.concurrency)
        .build()?;

    let start = Instant::now();
    let (burst_done, done) = tokio::sync::watch::channel(false);
    let sampler = args.plot.as_ref().map(|_| {
        let tail = Duration::from_secs(args.plot_tail);
        tokio::spawn(timeline::record(client.clone(), args.url.clone(), start, done, tail))
    });
    let outcomes = burst(&client, &args, jobs, start).await;
    let seconds = start.elapsed().as_secs_f64();
    let _ = burst_done.send(true);

    let summary = Summary::of(&outcomes, expected.as_ref(), seconds);
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        summary.print();
    }
    if let (Some(path), Some(sampler)) = (&args.plot, sampler) {
        let samples = sampler.await.context("the /status sampler failed")?;
        let points: Vec<plot::Point> = outcomes
            .iter()
            .map(|o| plot::Point {
                sent: o.sent,
                latency: o.latency,
                ok: o.result.is_ok(),
            })
            .collect();
        let title = format!(
            "{} uploads over {} connections: {:.1} s, p50 {:.2} s, p99 {:.2} s",
            summary.requests, args.concurrency, summary.seconds, summary.latency_p50_s, summary.latency_p99_s
        );
        plot::timeline(path, &title, &samples, &points)?;
        eprintln!("timeline: {} ({} samples of /status)", path.display(), samples.len());
    }
    Ok(summary.errors == 0 && summary.wrong == 0)
}

/// Sends every upload, `args.concurrency` at a time, with a progress bar.
async fn burst(
    client: &reqwest::Client,
    args: &Args,
    jobs: Vec<(PathBuf, Vec<u8>)>,
    start: Instant,
) -> Vec<RequestResult> {
    let bar = ProgressBar::new(jobs.len() as u64);
    bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} {msg}").expect("valid template"));
    let outcomes = futures::stream::iter(jobs)
        .map(|(path, bytes)| {
            let (url, bar) = (args.url.as_str(), &bar);
            async move {
                let t = Instant::now();
                let sent = t.duration_since(start).as_secs_f64();
                let result = upload(client, url, &path, bytes).await;
                bar.inc(1);
                let file = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                RequestResult {
                    file,
                    sent,
                    latency: t.elapsed().as_secs_f64(),
                    result,
                }
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    bar.finish_and_clear();
    outcomes
}

impl Summary {
    /// The burst's counts and latencies, labels checked against `expected` when given.
    fn of(outcomes: &[RequestResult], expected: Option<&HashMap<String, String>>, seconds: f64) -> Self {
        let mut latencies: Vec<f64> = outcomes.iter().map(|o| o.latency).collect();
        latencies.sort_by(f64::total_cmp);
        let (mut ok, mut wrong, mut unchecked, mut samples) = (0, 0, 0, Vec::new());
        for o in outcomes {
            match (&o.result, expected.and_then(|e| e.get(&o.file))) {
                (Ok(label), Some(want)) if label == want => ok += 1,
                (Ok(label), Some(want)) => {
                    wrong += 1;
                    samples.push(format!("{}: got {label:?}, expected {want:?}", o.file));
                }
                (Ok(_), None) => {
                    ok += 1;
                    unchecked += usize::from(expected.is_some());
                }
                (Err(e), _) => samples.push(format!("{}: {e}", o.file)),
            }
        }
        let errors = outcomes.iter().filter(|o| o.result.is_err()).count();
        samples.truncate(10);
        Summary {
            requests: outcomes.len(),
            ok,
            errors,
            wrong,
            unchecked,
            seconds,
            throughput_per_s: outcomes.len() as f64 / seconds,
            latency_mean_s: latencies.iter().sum::<f64>() / latencies.len().max(1) as f64,
            latency_p50_s: percentile(&latencies, 50.0),
            latency_p95_s: percentile(&latencies, 95.0),
            latency_p99_s: percentile(&latencies, 99.0),
            latency_max_s: latencies.last().copied().unwrap_or(f64::NAN),
            error_samples: samples,
        }
    }

    fn print(&self) {
        println!(
            "requests {}  ok {}  errors {}  wrong labels {}",
            self.requests, self.ok, self.errors, self.wrong
        );
        println!("{:.2} s, {:.1} requests/s", self.seconds, self.throughput_per_s);
        println!(
            "latency mean {:.3} s  p50 {:.3} s  p95 {:.3} s  p99 {:.3} s  max {:.3} s",
            self.latency_mean_s, self.latency_p50_s, self.latency_p95_s, self.latency_p99_s, self.latency_max_s
        );
        for sample in &self.error_samples {
            println!("  {sample}");
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

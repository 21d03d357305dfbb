//! `scaler`: the scaler as its own process (every web instance runs it beside the web tier on AWS,
//! and the one holding the scaler lease acts; locally the web tier hosts it unless
//! `web.run_scaler = false`).
//!
//! `scaler bootstrap` creates the configured buckets, queues and group on an emulated AWS endpoint
//! (`make run-aws-emulated`, tests); on AWS, Terraform creates them.

use std::io::Write;
use std::process::ExitCode;

use imgrec_runtime::backend::{self, Adapters};
use imgrec_runtime::settings::Settings;
use scaler::Scaler;

mod simulate;

fn main() -> ExitCode {
    let logs = imgrec_runtime::logging::init();
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run()));
    logs.exit(result.map(|()| ExitCode::SUCCESS))
}

#[derive(clap::Parser)]
#[command(name = "scaler", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Run the scaler until SIGTERM (the default).
    Run,
    /// Create the configured buckets, queues and Auto Scaling group on aws.endpoint_url.
    Bootstrap {
        /// MaxSize of the Auto Scaling group to create (none when the fleet is local).
        #[arg(long, default_value_t = 20)]
        group_max_size: usize,
        /// Web tiers to create response queues for (web-instance1..N).
        #[arg(long, default_value_t = 1)]
        web_tiers: usize,
    },
    /// Load the configuration (defaults, IMGREC_CONFIG file, environment), print it and exit:
    /// errors name the bad key.
    CheckConfig,
    /// Compare the scaling policies on simulated bursts (make sim): report.json and plots.
    Simulate {
        /// Where report.json and the plots go.
        #[arg(long, default_value = "target/sim")]
        out: std::path::PathBuf,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
}

#[cfg(not(feature = "aws"))]
async fn bootstrap(_: &Settings, _: usize, _: usize) -> anyhow::Result<()> {
    anyhow::bail!("this build has no AWS support: build with `--features aws` (`make run-aws-emulated` does)")
}

#[cfg(feature = "aws")]
async fn bootstrap(settings: &Settings, group_max_size: usize, web_tiers: usize) -> anyhow::Result<()> {
    use imgrec_aws::bootstrap;
    use imgrec_runtime::settings::Backend;
    let endpoint = imgrec_aws::Endpoint {
        region: settings.aws.region.clone(),
        url: settings.aws.endpoint_url.clone(),
        max_attempts: settings.aws.max_attempts,
    };
    let aws = imgrec_aws::Aws::connect(&endpoint, Default::default()).await;
    let (b, q) = (&settings.buckets, &settings.queues);
    let response_queues: Vec<String> = (1..=web_tiers)
        .map(|k| q.response_queue_of(&format!("web-instance{k}")))
        .collect();
    let response_queues: Vec<&str> = response_queues.iter().map(String::as_str).collect();
    let mut buckets = vec![b.input.as_str(), b.output.as_str()];
    buckets.extend(settings.aws.lease_bucket.as_deref());
    let group =
        (settings.fleet.backend == Backend::Aws).then_some((settings.aws.auto_scaling_group.as_str(), group_max_size));
    bootstrap::create(
        &aws,
        &bootstrap::Resources {
            buckets: &buckets,
            requests_queue: &q.requests,
            dead_letter_queue: &q.dead_letter,
            other_queues: &response_queues,
            max_receives: q.max_receives,
            visibility_timeout_s: q.visibility_timeout_s,
            group,
        },
    )
    .await?;
    tracing::info!(endpoint = ?settings.aws.endpoint_url, "created buckets {} and {}, queues {}, {}, {}", b.input, b.output, q.requests, response_queues.join(", "), q.dead_letter);
    Ok(())
}

async fn run() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let cli = <Cli as clap::Parser>::parse();
    match cli.command {
        Some(Command::Bootstrap {
            group_max_size,
            web_tiers,
        }) => return bootstrap(&settings, group_max_size, web_tiers).await,
        Some(Command::CheckConfig) => {
            // Not println!: a closed pipe (`| head`) is an error to report, not a panic.
            writeln!(std::io::stdout(), "{settings:#?}")?;
            return Ok(());
        }
        Some(Command::Simulate { out, seed }) => {
            anyhow::ensure!(
                simulate::run(&settings, &out, seed)?,
                "the default policy misses the bar"
            );
            return Ok(());
        }
        Some(Command::Run) | None => {}
    }
    let adapters = Adapters::connect(&settings).await?;
    // Beside a web tier (on AWS every web instance runs one), named after it.
    let host = settings.web.name.clone().unwrap_or_else(|| "scaler".into());
    let lease = backend::scaler_lease(&settings, &backend::unique_holder(&host), &adapters.connection).await?;
    // Locally its workers are alive while this process holds a lease: the scaler's own.
    let fleet = backend::fleet(&settings, lease.holder(), &adapters.connection).await?;
    let scaler = Scaler::new(settings.scaler.policy()?, adapters.requests, fleet)
        .with_metrics(backend::metrics_sink(&settings, &adapters.connection).await)
        .with_lease(lease, settings.scaler.lease_ttl());
    scaler
        .run(
            settings.scaler.tick(),
            imgrec_runtime::shutdown::Shutdown::on_signals()?,
        )
        .await
}

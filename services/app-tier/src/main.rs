//! `app-tier`: the app tier of the image recognition service.
//!
//! `app-tier classify --model DIR FILE...` classifies local files without any queue and prints
//! `FILE_NAME,label` per file. `app-tier bench` measures the pipeline for `make bench`.

use std::process::ExitCode;

use app_tier::{bench, classify, worker};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "app-tier", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run as an app-tier instance: take requests from the queue until SIGTERM.
    Run(worker::Args),
    /// Classify local image files and print `FILE_NAME,label` per file.
    Classify(classify::Args),
    /// Time decode+preprocess and inference per image (used by `make bench`).
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let logs = imgrec_runtime::logging::init();
    let result = match Cli::parse().command {
        Command::Run(args) => worker::run(args),
        Command::Classify(args) => classify::run(args),
        Command::Bench(args) => bench::run(args),
    };
    logs.exit(result)
}

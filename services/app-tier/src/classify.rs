//! `app-tier classify`: the classifier on local files, no queue, no buckets.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use imgrec_classifier::{Classifier, ClassifyError};
use imgrec_runtime::settings::Settings;

#[derive(clap::Args)]
pub struct Args {
    /// Model folder (models/<name>/); default from configuration.
    #[arg(long)]
    model: Option<PathBuf>,
    /// ONNX Runtime intra-op threads; default from configuration.
    #[arg(long)]
    threads: Option<usize>,
    /// Images read and classified together; default `app_tier.batch_size`, as a worker receives
    /// them. Model runs within a batch follow `app_tier.max_batch_pixels`, as in a worker.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    batch: Option<u16>,
    /// Debugging aid: write each file's input tensor and logits (raw little-endian f32) here.
    #[arg(long, hide = true)]
    dump: Option<PathBuf>,
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut settings = Settings::load()?;
    if let Some(model) = args.model {
        settings.inference.model_dir = model;
    }
    if let Some(threads) = args.threads {
        settings.inference.threads = threads;
    }
    let mut classifier = Classifier::load(&settings.inference, settings.image_limits)?;
    if let Some(dir) = &args.dump {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut failures = 0usize;
    let stdout = std::io::stdout();
    let batch = args.batch.map_or(settings.app_tier.batch_size, usize::from).max(1);
    let max_pixels = settings.app_tier.max_batch_pixels;
    for chunk in args.files.chunks(batch) {
        let names: Vec<String> = chunk.iter().map(|p| file_name(p)).collect();
        let contents: Vec<Result<Vec<u8>, std::io::Error>> = chunk.iter().map(std::fs::read).collect();
        let readable: Vec<&[u8]> = contents.iter().filter_map(|c| c.as_deref().ok()).collect();
        let mut results = classifier.classify_within(&readable, max_pixels).into_iter();
        let mut out = stdout.lock();
        for ((name, content), path) in names.iter().zip(&contents).zip(chunk) {
            let result = match content {
                Ok(bytes) => match results.next().expect("one result per readable file") {
                    Ok(prediction) => {
                        if let Some(dir) = &args.dump {
                            dump(&mut classifier, bytes, &dir.join(name))?;
                        }
                        Ok(prediction)
                    }
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(format!("cannot read {}: {e}", path.display())),
            };
            match result {
                Ok(prediction) => writeln!(out, "{name},{}", prediction.label)?,
                Err(reason) => {
                    failures += 1;
                    // The exit code says a file failed even where stderr cannot be written.
                    let _ = writeln!(std::io::stderr(), "{name}: {reason}");
                }
            }
        }
        out.flush()?;
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn dump(classifier: &mut Classifier, bytes: &[u8], stem: &Path) -> anyhow::Result<()> {
    let tensor = classifier.preprocessor().prepare(bytes).map_err(ClassifyError::from)?;
    let batch = tensor.clone().insert_axis(ndarray::Axis(0));
    let logits = classifier.logits(batch.view())?;
    let write = |suffix: &str, values: &mut dyn Iterator<Item = f32>| -> anyhow::Result<()> {
        let bytes: Vec<u8> = values.flat_map(f32::to_le_bytes).collect();
        let path = PathBuf::from(format!("{}.{suffix}.f32", stem.display()));
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
    };
    write("input", &mut tensor.iter().copied())?;
    write("logits", &mut logits.iter().copied())
}

//! `app-tier bench`: per-image medians of the pipeline's stages, as JSON, for `make bench`
//! (tools/bench.py alternates it with Python onnxruntime and prints the ratios).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use imgrec_classifier::decode::decode_rgb;
use imgrec_classifier::Classifier;
use imgrec_runtime::settings::Settings;
use ndarray::{Array3, Array4, Axis};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Passes over the images per measurement.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut settings = Settings::load()?;
    if let Some(model) = args.model {
        settings.inference.model_dir = model;
    }
    settings.inference.threads = args.threads;
    let mut classifier = Classifier::load(&settings.inference, settings.image_limits)?;
    let images: Vec<Vec<u8>> = args
        .files
        .iter()
        .map(|p| std::fs::read(p).with_context(|| p.display().to_string()))
        .collect::<Result<_, _>>()?;

    let (tensors, mut report) = time_preparation(&classifier, &images, args.rounds)?;
    report.extend(time_inference(&mut classifier, &tensors, args.rounds)?);
    writeln!(std::io::stdout(), "{}", serde_json::Value::Object(report)).context("cannot write the report")?;
    Ok(ExitCode::SUCCESS)
}

type Report = serde_json::Map<String, serde_json::Value>;

/// Median milliseconds to prepare an image, and (the same work again, stage by stage, to show where
/// the time goes) to decode and to resize it; with the tensors prepared.
fn time_preparation(
    classifier: &Classifier,
    images: &[Vec<u8>],
    rounds: usize,
) -> anyhow::Result<(Vec<Array3<f32>>, Report)> {
    let (mut prepare_ms, mut decode_ms, mut resize_ms) = (Vec::new(), Vec::new(), Vec::new());
    let mut tensors: Vec<Array3<f32>> = Vec::new();
    let pre = classifier.preprocessor();
    for _ in 0..rounds {
        tensors.clear();
        for bytes in images {
            let start = Instant::now();
            let tensor = pre.prepare(bytes)?;
            prepare_ms.push(start.elapsed().as_secs_f64() * 1e3);
            tensors.push(tensor);
            let start = Instant::now();
            let image = decode_rgb(bytes, pre.limits())?;
            decode_ms.push(start.elapsed().as_secs_f64() * 1e3);
            let start = Instant::now();
            std::hint::black_box(pre.resize(image));
            resize_ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let mut report = Report::new();
    report.insert("prepare_ms".into(), median(prepare_ms).into());
    report.insert("decode_ms".into(), median(decode_ms).into());
    report.insert("resize_ms".into(), median(resize_ms).into());
    Ok((tensors, report))
}

/// Median inference milliseconds per image in batches of 1, 2, 4 and 8.
fn time_inference(classifier: &mut Classifier, tensors: &[Array3<f32>], rounds: usize) -> anyhow::Result<Report> {
    let mut report = Report::new();
    let Some(shape) = tensors.first().map(|t| t.dim()) else {
        return Ok(report);
    };
    for batch_size in [1usize, 2, 4, 8] {
        // Same-shape tensors only: batches need one shape (native-size models vary per image).
        let same: Vec<&Array3<f32>> = tensors.iter().filter(|t| t.dim() == shape).collect();
        let batches: Vec<Array4<f32>> = same
            .chunks_exact(batch_size)
            .map(|chunk| ndarray::stack(Axis(0), &chunk.iter().map(|t| t.view()).collect::<Vec<_>>()))
            .collect::<Result<_, _>>()?;
        let Some(first) = batches.first() else {
            report.insert(format!("infer_batch{batch_size}_ms"), serde_json::Value::Null);
            continue;
        };
        classifier.logits(first.view())?; // warm-up
        let mut per_image_ms = Vec::new();
        for _ in 0..rounds {
            for batch in &batches {
                let start = Instant::now();
                classifier.logits(batch.view())?;
                per_image_ms.push(start.elapsed().as_secs_f64() * 1e3 / batch_size as f64);
            }
        }
        report.insert(format!("infer_batch{batch_size}_ms"), median(per_image_ms).into());
    }
    Ok(report)
}

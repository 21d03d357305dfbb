//! `app-tier bench`: per-image medians of the pipeline's stages, as JSON, for `make bench`
//! (tools/bench.py alternates it with Python onnxruntime and prints the ratios).

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

    let (mut prepare_ms, mut decode_ms, mut resize_ms) = (Vec::new(), Vec::new(), Vec::new());
    let mut tensors: Vec<Array3<f32>> = Vec::new();
    let pre = classifier.preprocessor();
    for _ in 0..args.rounds {
        tensors.clear();
        for bytes in &images {
            let start = Instant::now();
            let tensor = pre.prepare(bytes)?;
            prepare_ms.push(start.elapsed().as_secs_f64() * 1e3);
            tensors.push(tensor);
            // The same work again, stage by stage, to show where the time goes.
            let start = Instant::now();
            let image = decode_rgb(bytes, pre.limits())?;
            decode_ms.push(start.elapsed().as_secs_f64() * 1e3);
            let start = Instant::now();
            std::hint::black_box(pre.resize(image));
            resize_ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }

    let mut per_batch = serde_json::Map::new();
    for batch_size in [1usize, 2, 4, 8] {
        // Same-shape tensors only: batches need one shape (native-size models vary per image).
        let shape = tensors[0].dim();
        let same: Vec<&Array3<f32>> = tensors.iter().filter(|t| t.dim() == shape).collect();
        let batches: Vec<Array4<f32>> = same
            .chunks_exact(batch_size)
            .map(|chunk| ndarray::stack(Axis(0), &chunk.iter().map(|t| t.view()).collect::<Vec<_>>()))
            .collect::<Result<_, _>>()?;
        let Some(first) = batches.first() else {
            per_batch.insert(format!("infer_batch{batch_size}_ms"), serde_json::Value::Null);
            continue;
        };
        classifier.logits(first.view())?; // warm-up
        let mut per_image_ms = Vec::new();
        for _ in 0..args.rounds {
            for batch in &batches {
                let start = Instant::now();
                classifier.logits(batch.view())?;
                per_image_ms.push(start.elapsed().as_secs_f64() * 1e3 / batch_size as f64);
            }
        }
        per_batch.insert(format!("infer_batch{batch_size}_ms"), median(per_image_ms).into());
    }
    let mut report = serde_json::Map::new();
    report.insert("prepare_ms".into(), median(prepare_ms).into());
    report.insert("decode_ms".into(), median(decode_ms).into());
    report.insert("resize_ms".into(), median(resize_ms).into());
    report.extend(per_batch);
    println!("{}", serde_json::Value::Object(report));
    Ok(ExitCode::SUCCESS)
}

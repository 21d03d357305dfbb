//! Image bytes -> ImageNet labels: decode, preprocess as the model's manifest says, run the ONNX
//! model in batches, softmax, the most likely classes.

pub mod decode;
pub mod manifest;
pub mod preprocess;
pub mod resize;
pub mod runtime;
mod settings;

use std::path::Path;

use anyhow::{anyhow, ensure, Context};
use ndarray::{Array2, Array4, ArrayView4, Ix2};
use ort::session::{builder::GraphOptimizationLevel, RunOptions, Session};
use ort::value::TensorRef;

pub use decode::{ImageError, ImageLimits, RgbImage};
pub use manifest::Manifest;
pub use preprocess::Preprocessor;
pub use settings::InferenceSettings;

/// How many of the most likely classes a prediction keeps.
pub const TOP_K: usize = 10;

/// The classes of one image the model finds most likely.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The most likely class (the first on ties, as numpy's argmax).
    pub index: usize,
    pub label: String,
    pub probability: f32,
    /// The `TOP_K` most likely (fewer if the model has fewer classes), most likely first; the first
    /// is `label`.
    pub top: Vec<(String, f32)>,
}

/// Which model answers: its manifest's name, and a version that changes whenever its graph or
/// weights do (the first 12 hex digits of `model.onnx`'s SHA-256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelId {
    pub name: String,
    pub version: String,
}

/// Why one image got no label.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("inference failed: {0:#}")]
    Inference(anyhow::Error),
}

pub struct Classifier {
    session: Session,
    run_options: RunOptions,
    preprocessor: Preprocessor,
    labels: Vec<String>,
    input_name: String,
    output_name: String,
    model: ModelId,
}

impl Classifier {
    /// Loads the model once; the session is then reused for every batch.
    pub fn load(settings: &InferenceSettings, limits: ImageLimits) -> anyhow::Result<Self> {
        let dir = &settings.model_dir;
        let manifest = Manifest::load(dir)?;
        let limits = limits.for_model(&manifest);
        let labels = load_labels(&dir.join(&manifest.labels))?;
        ensure!(settings.threads >= 1, "inference threads must be at least 1");
        let env = runtime::environment(settings.onnxruntime_lib.as_deref())?;
        let model = dir.join("model.onnx");
        let configure = |e: ort::Error<_>| anyhow!("cannot configure ONNX Runtime session: {e}");
        let session = Session::builder(env)
            .map_err(|e| anyhow!("cannot create ONNX Runtime session: {e}"))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(configure)?
            .with_intra_threads(settings.threads)
            .map_err(configure)?
            .with_inter_threads(1)
            .map_err(configure)?
            // Spinning threads steal the core other workers need.
            .with_intra_op_spinning(false)
            .map_err(configure)?
            .commit_from_file(&model)
            .map_err(|e| anyhow!("cannot load {}: {e}", model.display()))?;
        let native_size = manifest.runs_at_image_size();
        let mut run_options = RunOptions::new().map_err(|e| anyhow!("cannot create ONNX Runtime run options: {e}"))?;
        if native_size {
            // The arena grows with the largest image run and keeps that (a worker held 2.2 GB
            // after one 16 MP image on ResNet-18): given back after each run, an idle worker
            // holds its model, not its largest image.
            run_options
                .set("memory.enable_memory_arena_shrinkage", "cpu:0")
                .map_err(|e| anyhow!("cannot configure ONNX Runtime run options: {e}"))?;
        }
        let (input_name, output_name) = (manifest.input.name.clone(), manifest.output.name.clone());
        let model_id = ModelId {
            name: manifest.name.clone(),
            version: file_version(&model)?,
        };
        ensure!(
            session.inputs().iter().any(|i| i.name() == input_name),
            "{} has no input named {input_name:?}",
            model.display()
        );
        ensure!(
            session.outputs().iter().any(|o| o.name() == output_name),
            "{} has no output named {output_name:?}",
            model.display()
        );
        let mut classifier = Self {
            session,
            run_options,
            preprocessor: Preprocessor::new(manifest, limits),
            labels,
            input_name,
            output_name,
            model: model_id,
        };
        if native_size {
            // Shrinking frees every region of the arena but its first: a first run on a small
            // input keeps that one small (run first on a 2 MP photo, a worker kept 0.41 of its
            // 0.44 GB peak).
            let small = Array4::<f32>::zeros((1, 3, 64, 64));
            classifier
                .logits(small.view())
                .context("the model does not run on a 64x64 input")?;
        }
        Ok(classifier)
    }

    pub fn model(&self) -> &ModelId {
        &self.model
    }

    pub fn preprocessor(&self) -> &Preprocessor {
        &self.preprocessor
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Runs one batch `[N, 3, H, W]` and returns the logits `[N, classes]`.
    pub fn logits(&mut self, batch: ArrayView4<'_, f32>) -> anyhow::Result<Array2<f32>> {
        let input = TensorRef::from_array_view(batch).map_err(|e| anyhow!("bad input tensor: {e}"))?;
        let outputs = self
            .session
            .run_with_options(ort::inputs![self.input_name.as_str() => input], &self.run_options)
            .map_err(|e| anyhow!("model run failed: {e}"))?;
        let output = outputs
            .get(&self.output_name)
            .with_context(|| format!("model produced no {:?}", self.output_name))?;
        let logits = output
            .try_extract_array::<f32>()
            .map_err(|e| anyhow!("unexpected model output: {e}"))?;
        let logits = logits
            .to_owned()
            .into_dimensionality::<Ix2>()
            .context("logits are not [N, classes]")?;
        ensure!(
            logits.nrows() == batch.dim().0,
            "model returned {} rows for {} images",
            logits.nrows(),
            batch.dim().0
        );
        ensure!(
            logits.ncols() == self.labels.len(),
            "model has {} classes, labels.json {}",
            logits.ncols(),
            self.labels.len()
        );
        Ok(logits)
    }

    /// Predicts each image (decoded at the model's input size), one model run per run of images
    /// of the same size, their values normalised straight into the run's input.
    pub fn predict(&mut self, images: &[&RgbImage]) -> anyhow::Result<Vec<Prediction>> {
        let mut predictions = Vec::with_capacity(images.len());
        for group in images.chunk_by(|a, b| (a.width, a.height) == (b.width, b.height)) {
            let (height, width) = (group[0].height, group[0].width);
            let mut values = Vec::with_capacity(group.len() * 3 * height * width);
            for image in group {
                self.preprocessor.normalize_onto(image, &mut values);
            }
            let batch = Array4::from_shape_vec((group.len(), 3, height, width), values)
                .context("cannot shape a model run's input")?;
            let logits = self.logits(batch.view())?;
            predictions.extend(
                logits
                    .rows()
                    .into_iter()
                    .map(|row| self.ranked(row.as_slice().unwrap_or(&row.to_vec()))),
            );
        }
        Ok(predictions)
    }

    /// Classifies uploads in model runs of at most `max_pixels` input pixels each (an image
    /// larger than that runs alone), so that a batch of large photos on a native-size model
    /// holds a bounded number of tensors at once.
    pub fn classify_within(&mut self, images: &[&[u8]], max_pixels: usize) -> Vec<Result<Prediction, ClassifyError>> {
        let limits = *self.preprocessor.limits();
        // A header that does not parse costs nothing here: `prepare` reports it.
        let costs: Vec<usize> = images
            .iter()
            .map(|bytes| decode::probe(bytes, &limits).map_or(0, |(_, w, h)| self.preprocessor.input_pixels(w, h)))
            .collect();
        let mut results = Vec::with_capacity(images.len());
        let mut start = 0;
        while start < images.len() {
            let mut end = start + 1;
            let mut pixels = costs[start];
            while end < images.len() && pixels + costs[end] <= max_pixels {
                pixels += costs[end];
                end += 1;
            }
            results.extend(self.classify(&images[start..end]));
            start = end;
        }
        results
    }

    /// Classifies a batch of uploads in one model run per input shape; a bad image fails alone,
    /// the others still get labels.
    pub fn classify(&mut self, images: &[&[u8]]) -> Vec<Result<Prediction, ClassifyError>> {
        let decoded: Vec<Result<RgbImage, ImageError>> = images
            .iter()
            .map(|bytes| self.preprocessor.decode_resized(bytes))
            .collect();
        let ready: Vec<&RgbImage> = decoded.iter().filter_map(|d| d.as_ref().ok()).collect();
        let mut predicted = match self.predict(&ready) {
            Ok(p) => p.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => {
                let message = format!("{e:#}");
                ready
                    .iter()
                    .map(|_| Err(ClassifyError::Inference(anyhow!(message.clone()))))
                    .collect()
            }
        }
        .into_iter();
        decoded
            .into_iter()
            .map(|d| match d {
                Ok(_) => predicted.next().expect("one prediction per decoded image"),
                Err(e) => Err(ClassifyError::Image(e)),
            })
            .collect()
    }

    fn ranked(&self, logits: &[f32]) -> Prediction {
        let (index, max) = argmax(logits);
        let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
        let top = top_k(logits, TOP_K)
            .into_iter()
            .map(|i| (self.labels[i].clone(), (logits[i] - max).exp() / sum))
            .collect();
        Prediction {
            index,
            label: self.labels[index].clone(),
            probability: 1.0 / sum,
            top,
        }
    }
}

/// The indices of the `k` largest values, largest first; of equal values the first (so the first
/// index is `argmax`'s).
pub fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    // NaN logits sort last rather than poisoning the order.
    let key = |i: &usize| {
        if values[*i].is_nan() {
            f32::NEG_INFINITY
        } else {
            values[*i]
        }
    };
    // A total order (value, then index), so an unstable selection gives the same answer as a
    // stable sort: the k first in linear time, then only those k sorted.
    let first = |a: &usize, b: &usize| key(b).total_cmp(&key(a)).then(a.cmp(b));
    if k < order.len() {
        order.select_nth_unstable_by(k, first);
        order.truncate(k);
    }
    order.sort_unstable_by(first);
    order
}

/// The first 12 hex digits of a file's SHA-256.
fn file_version(path: &Path) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let cannot = || format!("cannot read {}", path.display());
    let mut file = std::fs::File::open(path).with_context(cannot)?;
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        match file.read(&mut chunk).with_context(cannot)? {
            0 => break,
            n => hasher.update(&chunk[..n]),
        }
    }
    Ok(hasher.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect())
}

/// Index and value of the largest element; the first one on ties, as numpy's argmax.
pub fn argmax(values: &[f32]) -> (usize, f32) {
    values.iter().copied().enumerate().fold(
        (0, f32::NEG_INFINITY),
        |best, (i, v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        },
    )
}

fn load_labels(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let labels: Vec<String> =
        serde_json::from_str(&text).with_context(|| format!("{} is not a JSON list of names", path.display()))?;
    ensure!(!labels.is_empty(), "{} has no labels", path.display());
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_largest_first_with_ties_in_index_order_and_nan_last() {
        let values = [0.5, 2.0, f32::NAN, 2.0, -1.0, 0.7];
        assert_eq!(top_k(&values, 4), vec![1, 3, 5, 0]);
        assert_eq!(top_k(&values, 1)[0], argmax(&values).0);
        assert_eq!(top_k(&values, 99).len(), values.len(), "never more than there are");
        assert_eq!(top_k(&values, 99).last(), Some(&2), "NaN last");
        assert!(top_k(&[], 3).is_empty());
    }

    #[test]
    fn top_k_selects_what_a_full_stable_sort_would() {
        // 1,000 logits with ties and NaNs, from a fixed linear congruential sequence.
        let mut state = 7u32;
        let values: Vec<f32> = (0..1000)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                match state >> 24 {
                    0..=3 => f32::NAN,
                    v => (v % 50) as f32 / 7.0,
                }
            })
            .collect();
        let key = |i: &usize| {
            if values[*i].is_nan() {
                f32::NEG_INFINITY
            } else {
                values[*i]
            }
        };
        let mut sorted: Vec<usize> = (0..values.len()).collect();
        sorted.sort_by(|a, b| key(b).total_cmp(&key(a)));
        for k in [0, 1, 5, 10, 999, 1000, 1001] {
            assert_eq!(top_k(&values, k), sorted[..k.min(sorted.len())], "k = {k}");
        }
    }
}

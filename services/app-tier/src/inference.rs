//! The model's own thread. The worker's async tasks hand it batches and await their labels.
//!
//! One thread loads the model and runs every batch, so a run needs no lock, and the decode
//! buffers, tensors and ONNX Runtime's allocations all come from one malloc arena. Run on the
//! blocking pool instead, each pool thread kept an arena of its own: 50 MiB more peak RSS per
//! worker (`make bench`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use imgrec_classifier::{Classifier, ClassifyError, ImageLimits, InferenceSettings, ModelId, Prediction};
use tokio::sync::oneshot;

type Labels = Vec<Result<Prediction, ClassifyError>>;

struct ModelRun {
    images: Vec<Bytes>,
    max_pixels: usize,
    reply: oneshot::Sender<Result<Labels, String>>,
}

/// A handle to the thread; the thread ends when the handle is dropped.
pub struct InferenceThread {
    runs: mpsc::Sender<ModelRun>,
    /// The model the thread loaded.
    pub model: ModelId,
}

impl InferenceThread {
    /// Starts the thread and loads the model on it; returns once the model is loaded.
    pub async fn start(settings: InferenceSettings, limits: ImageLimits) -> anyhow::Result<Self> {
        let (runs, queue) = mpsc::channel::<ModelRun>();
        let (loaded, load_result) = oneshot::channel();
        std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || {
                let mut classifier = match Classifier::load(&settings, limits) {
                    Ok(c) => {
                        let _ = loaded.send(Ok(c.model().clone()));
                        c
                    }
                    Err(e) => {
                        let _ = loaded.send(Err(e));
                        return;
                    }
                };
                for run in queue {
                    let views: Vec<&[u8]> = run.images.iter().map(|b| b.as_ref()).collect();
                    // A bug in decoding one image must not take the model thread down with it.
                    let labels = catch_unwind(AssertUnwindSafe(|| classifier.classify_within(&views, run.max_pixels)))
                        .map_err(|panic| panic_message(&*panic));
                    let _ = run.reply.send(labels);
                }
            })
            .context("cannot start the inference thread")?;
        let model = load_result
            .await
            .context("the inference thread stopped while loading the model")??;
        Ok(Self { runs, model })
    }

    /// Labels for `images` (one per image, in order), in model runs of at most `max_pixels`.
    pub async fn classify(&self, images: Vec<Bytes>, max_pixels: usize) -> anyhow::Result<Labels> {
        let (reply, labels) = oneshot::channel();
        self.runs
            .send(ModelRun {
                images,
                max_pixels,
                reply,
            })
            .map_err(|_| anyhow!("the inference thread has stopped"))?;
        labels
            .await
            .context("the inference thread stopped during a batch")?
            .map_err(|panic| anyhow!("classification panicked: {panic}"))
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use imgrec_runtime::settings::Settings;

    use super::*;

    fn settings() -> Settings {
        let mut settings = Settings::defaults().unwrap();
        settings.inference.model_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/efficientnet-lite0");
        settings
    }

    #[tokio::test]
    async fn a_model_that_does_not_load_is_an_error_not_a_hang() {
        let mut settings = settings();
        settings.inference.model_dir = "/nonexistent/model".into();
        let started = InferenceThread::start(settings.inference, settings.image_limits).await;
        assert!(started.is_err());
    }

    #[tokio::test]
    async fn labels_come_back_in_order_with_bad_images_failing_alone() {
        let settings = settings();
        let image = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../classifier/tests/fixtures/small.jpg"))
            .unwrap();
        let want = Classifier::load(&settings.inference, settings.image_limits)
            .unwrap()
            .classify(&[&image])
            .remove(0)
            .unwrap();
        let thread = InferenceThread::start(settings.inference, settings.image_limits)
            .await
            .unwrap();
        let images = vec![
            Bytes::from(image.clone()),
            Bytes::from_static(b"not an image"),
            Bytes::from(image),
        ];
        // Runs of one image each: three runs, answered in the order given.
        let labels = thread.classify(images, 1).await.unwrap();
        assert_eq!(labels.len(), 3);
        assert_eq!(labels[0].as_ref().unwrap().label, want.label);
        assert!(matches!(labels[1], Err(ClassifyError::Image(_))), "{:?}", labels[1]);
        assert_eq!(labels[2].as_ref().unwrap().label, want.label);
    }
}

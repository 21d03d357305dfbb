//! The classifier's settings sections: how a worker runs its model (`[inference]`) and the bounds
//! on decoded images (`[image_limits]`).

use std::path::PathBuf;

use serde::Deserialize;

use crate::Manifest;

/// How a worker runs its model.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InferenceSettings {
    /// `models/<name>/`: model.onnx, labels.json, manifest.json.
    pub model_dir: PathBuf,
    /// ONNX Runtime intra-op threads per session. One per worker process is best when workers
    /// share cores: ORT's spinning pool loses badly under contention.
    pub threads: usize,
    /// Explicit `libonnxruntime.so` path; `ORT_DYLIB_PATH` overrides it.
    #[serde(default)]
    pub onnxruntime_lib: Option<PathBuf>,
}

/// Bounds on decoded images, checked from the header before any pixel buffer is allocated.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImageLimits {
    pub max_side: usize,
    pub max_pixels: usize,
    /// The most pixels an image may have for a model that runs at the image's own size (no
    /// resize in its manifest): its inference memory grows with them (a ResNet-18 worker peaks at
    /// 2.5 GB on 16-24 MP images, 4.2 GB at 28 MP), where a resizing model's is fixed.
    pub max_native_pixels: usize,
    /// Whether `max_native_pixels` applies: set by `for_model`, never read from settings.
    #[serde(skip)]
    pub native_size_model: bool,
}

impl ImageLimits {
    /// These limits for images fed to `manifest`'s model.
    pub fn for_model(self, manifest: &Manifest) -> Self {
        Self {
            native_size_model: manifest.runs_at_image_size(),
            ..self
        }
    }
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_side: 8192,
            max_pixels: 40_000_000,
            max_native_pixels: 16_000_000,
            native_size_model: false,
        }
    }
}

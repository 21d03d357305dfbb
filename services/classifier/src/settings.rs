//! The classifier's settings sections: how a worker runs its model (`[inference]`) and the bounds
//! on decoded images (`[image_limits]`).

use std::path::PathBuf;

use serde::Deserialize;

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
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_side: 8192,
            max_pixels: 40_000_000,
        }
    }
}

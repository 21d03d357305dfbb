//! `models/<name>/manifest.json`: the model's preprocessing stated as data.

use std::path::Path;

use anyhow::{bail, ensure, Context};
use serde::Deserialize;

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub name: String,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub weights_sha256: Option<String>,
    pub input: InputSpec,
    pub output: OutputSpec,
    /// `None`: feed the image at its native size (the model takes dynamic height and width).
    pub resize: Option<Resize>,
    pub normalize: Normalize,
    pub labels: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    pub layout: Layout,
    pub color: ColorOrder,
    /// `[N, 3, H, W]`: numbers for fixed dimensions, names for dynamic ones.
    pub shape: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum Layout {
    #[serde(rename = "NCHW")]
    Nchw,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum ColorOrder {
    #[serde(rename = "RGB")]
    Rgb,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub name: String,
    pub kind: OutputKind,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    Logits,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Resize {
    pub width: usize,
    pub height: usize,
    pub filter: Filter,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    /// Pillow's `Image.BILINEAR`.
    Bilinear,
}

/// `x = (pixel - mean[c]) / std[c]` on pixel values 0..=255, in f32.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Manifest {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let manifest: Manifest = serde_json::from_str(text).context("invalid manifest.json")?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Whether the model takes each image at its own size (no resize step): its memory then grows
    /// with the image.
    pub fn runs_at_image_size(&self) -> bool {
        self.resize.is_none()
    }

    pub fn load(model_dir: &Path) -> anyhow::Result<Self> {
        let path = model_dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text).with_context(|| path.display().to_string())
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.format_version != FORMAT_VERSION {
            bail!(
                "manifest format_version {} is not supported (expected {FORMAT_VERSION})",
                self.format_version
            );
        }
        ensure!(self.input.shape.len() == 4, "input shape must be [N, 3, H, W]");
        ensure!(
            self.input.shape[1] == serde_json::json!(3),
            "input must have 3 channels"
        );
        if let Some(r) = self.resize {
            ensure!(r.width > 0 && r.height > 0, "resize target must be non-empty");
            for (dim, want) in [(2, r.height), (3, r.width)] {
                if let Some(n) = self.input.shape[dim].as_u64() {
                    ensure!(
                        n as usize == want,
                        "resize {}x{} does not match the model input",
                        r.width,
                        r.height
                    );
                }
            }
        } else {
            ensure!(
                !self.input.shape[2].is_u64() && !self.input.shape[3].is_u64(),
                "a model with fixed input size needs a resize step"
            );
        }
        ensure!(
            self.normalize.std.iter().all(|s| s.is_finite() && *s != 0.0)
                && self.normalize.mean.iter().all(|m| m.is_finite()),
            "normalize.std must be non-zero and finite"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LITE0: &str = r#"{
      "format_version": 1, "name": "efficientnet-lite0",
      "input": {"name": "input", "layout": "NCHW", "color": "RGB", "shape": ["N", 3, 224, 224]},
      "output": {"name": "logits", "kind": "logits"},
      "resize": {"width": 224, "height": 224, "filter": "bilinear"},
      "normalize": {"mean": [127.0, 127.0, 127.0], "std": [128.0, 128.0, 128.0]},
      "labels": "labels.json"
    }"#;

    #[test]
    fn parses_a_resizing_manifest() {
        let m = Manifest::parse(LITE0).unwrap();
        assert_eq!(
            m.resize,
            Some(Resize {
                width: 224,
                height: 224,
                filter: Filter::Bilinear
            })
        );
        assert_eq!(m.normalize.mean, [127.0; 3]);
    }

    #[test]
    fn parses_a_native_size_manifest() {
        let text = LITE0
            .replace(r#"{"width": 224, "height": 224, "filter": "bilinear"}"#, "null")
            .replace(r#"224, 224]"#, r#""H", "W"]"#);
        assert_eq!(Manifest::parse(&text).unwrap().resize, None);
    }

    #[test]
    fn rejects_inconsistent_or_unknown_manifests() {
        for (from, to) in [
            (r#""format_version": 1"#, r#""format_version": 2"#),
            (r#""filter": "bilinear""#, r#""filter": "lanczos""#),
            (r#""width": 224, "height""#, r#""width": 200, "height""#),
            (r#"[128.0, 128.0, 128.0]"#, r#"[128.0, 0.0, 128.0]"#),
            (r#""layout": "NCHW""#, r#""layout": "NHWC""#),
            (r#""labels": "labels.json""#, r#""labels": "labels.json", "extra": 1"#),
        ] {
            let text = LITE0.replace(from, to);
            assert_ne!(text, LITE0, "test edit {from} did not apply");
            assert!(Manifest::parse(&text).is_err(), "accepted {to}");
        }
        let native = LITE0.replace(r#"{"width": 224, "height": 224, "filter": "bilinear"}"#, "null");
        assert!(
            Manifest::parse(&native).is_err(),
            "fixed-size model without resize accepted"
        );
    }
}

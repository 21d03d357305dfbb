//! Decoded pixels -> the model's input tensor, as the manifest says.

use ndarray::Array3;

use super::decode::{decode_rgb, ImageError, ImageLimits, RgbImage};
use super::manifest::{Filter, Manifest};
use super::resize::resize_bilinear;

/// The manifest's preprocessing, ready to apply to many images.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    manifest: Manifest,
    limits: ImageLimits,
}

impl Preprocessor {
    pub fn new(manifest: Manifest, limits: ImageLimits) -> Self {
        Self { manifest, limits }
    }

    pub fn limits(&self) -> &ImageLimits {
        &self.limits
    }

    /// Pixels of the model input for an image of `width` x `height`.
    pub fn input_pixels(&self, width: usize, height: usize) -> usize {
        match self.manifest.resize {
            Some(r) => r.width * r.height,
            None => width * height,
        }
    }

    /// Image bytes -> CHW float tensor.
    pub fn prepare(&self, bytes: &[u8]) -> Result<Array3<f32>, ImageError> {
        let image = self.decode_resized(bytes)?;
        let mut values = Vec::with_capacity(3 * image.height * image.width);
        self.normalize_onto(&image, &mut values);
        Ok(Array3::from_shape_vec((3, image.height, image.width), values)
            .expect("an RgbImage holds height x width pixels"))
    }

    /// Image bytes -> the image at the model's input size, not yet normalised.
    pub fn decode_resized(&self, bytes: &[u8]) -> Result<RgbImage, ImageError> {
        Ok(self.resize(decode_rgb(bytes, &self.limits)?))
    }

    pub fn resize(&self, image: RgbImage) -> RgbImage {
        match self.manifest.resize {
            Some(r) => match r.filter {
                Filter::Bilinear => resize_bilinear(&image, r.width, r.height),
            },
            None => image,
        }
    }

    /// Appends `(pixel - mean) / std` of `image` to `out`, plane by plane (`[3, height, width]`):
    /// each value written once, into a model run's input directly.
    pub fn normalize_onto(&self, image: &RgbImage, out: &mut Vec<f32>) {
        let norm = self.manifest.normalize;
        // A 256-entry table per channel: the same f32 division as numpy, done once per value.
        let tables: [[f32; 256]; 3] =
            std::array::from_fn(|c| std::array::from_fn(|v| (v as f32 - norm.mean[c]) / norm.std[c]));
        out.reserve(3 * image.height * image.width);
        for (c, table) in tables.iter().enumerate() {
            out.extend(image.pixels.chunks_exact(3).map(|px| table[px[c] as usize]));
        }
    }
}

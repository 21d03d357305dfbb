//! Decoded pixels -> the model's input tensor, as the manifest says.

use ndarray::{Array3, ArrayViewMut3};

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
        let image = self.resize(decode_rgb(bytes, &self.limits)?);
        let mut tensor = Array3::zeros((3, image.height, image.width));
        self.normalize_into(&image, tensor.view_mut());
        Ok(tensor)
    }

    pub fn resize(&self, image: RgbImage) -> RgbImage {
        match self.manifest.resize {
            Some(r) => match r.filter {
                Filter::Bilinear => resize_bilinear(&image, r.width, r.height),
            },
            None => image,
        }
    }

    /// Writes `(pixel - mean) / std` of `image` into `out` (shape `[3, height, width]`).
    pub fn normalize_into(&self, image: &RgbImage, mut out: ArrayViewMut3<'_, f32>) {
        assert_eq!(
            out.dim(),
            (3, image.height, image.width),
            "tensor shape does not match the image"
        );
        let norm = self.manifest.normalize;
        // A 256-entry table per channel: the same f32 division as numpy, done once per value.
        let tables: [[f32; 256]; 3] =
            std::array::from_fn(|c| std::array::from_fn(|v| (v as f32 - norm.mean[c]) / norm.std[c]));
        for c in 0..3 {
            let table = &tables[c];
            let plane = out.index_axis_mut(ndarray::Axis(0), c);
            let plane = plane.into_slice().expect("standard layout tensor");
            for (dst, px) in plane.iter_mut().zip(image.pixels.chunks_exact(3)) {
                *dst = table[px[c] as usize];
            }
        }
    }
}

//! Image bytes -> 8-bit RGB pixels, decoded exactly as Pillow does (`Image.open(..).convert("RGB")`),
//! so that the Rust pipeline and the Python reference see the same pixels.

mod jpeg;
mod png;

pub use crate::settings::ImageLimits;
pub use jpeg::{MAX_SCANS, MAX_SCAN_PASSES};

/// An 8-bit RGB image, rows top to bottom, pixels interleaved `RGBRGB...`.
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl std::fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RgbImage({}x{})", self.width, self.height)
    }
}

impl RgbImage {
    pub fn new(width: usize, height: usize, pixels: Vec<u8>) -> Self {
        assert_eq!(
            pixels.len(),
            width * height * 3,
            "pixel buffer does not match dimensions"
        );
        Self { width, height, pixels }
    }
}

/// Why an upload is not an image we classify. Each variant is a one-line reason for the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("empty file")]
    Empty,
    #[error("unsupported image format ({0}); send JPEG or PNG")]
    UnsupportedFormat(&'static str),
    #[error("image is {width}x{height}, larger than the {max_side} pixels per side or {max_pixels} pixels allowed")]
    TooLarge {
        width: usize,
        height: usize,
        max_side: usize,
        max_pixels: usize,
    },
    #[error("image is {width}x{height}, more than the {max_pixels} pixels this model takes at the image's own size")]
    TooLargeForModel {
        width: usize,
        height: usize,
        max_pixels: usize,
    },
    #[error("image has zero width or height")]
    ZeroSize,
    #[error("image data is truncated")]
    Truncated,
    #[error("cannot decode image: {0}")]
    Corrupt(String),
}

/// Checks decoded dimensions against `limits` before any pixel buffer is allocated.
pub(crate) fn check_size(limits: &ImageLimits, width: usize, height: usize) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::ZeroSize);
    }
    if width > limits.max_side || height > limits.max_side || width.saturating_mul(height) > limits.max_pixels {
        return Err(ImageError::TooLarge {
            width,
            height,
            max_side: limits.max_side,
            max_pixels: limits.max_pixels,
        });
    }
    if limits.native_size_model && width.saturating_mul(height) > limits.max_native_pixels {
        return Err(ImageError::TooLargeForModel {
            width,
            height,
            max_pixels: limits.max_native_pixels,
        });
    }
    Ok(())
}

/// The container format, told by magic bytes, never by file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
}

pub fn sniff(bytes: &[u8]) -> Result<Format, ImageError> {
    match bytes {
        [] => Err(ImageError::Empty),
        [0xFF, 0xD8, 0xFF, ..] => Ok(Format::Jpeg),
        [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => Ok(Format::Png),
        [b'G', b'I', b'F', b'8', ..] => Err(ImageError::UnsupportedFormat("GIF")),
        [b'B', b'M', ..] => Err(ImageError::UnsupportedFormat("BMP")),
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Err(ImageError::UnsupportedFormat("WebP")),
        [b'I', b'I', 42, 0, ..] | [b'M', b'M', 0, 42, ..] => Err(ImageError::UnsupportedFormat("TIFF")),
        _ => Err(ImageError::UnsupportedFormat("not an image")),
    }
}

/// Reads only the header: format and dimensions, checked against `limits`. Cheap enough for the
/// web tier to validate every upload before it is queued.
pub fn probe(bytes: &[u8], limits: &ImageLimits) -> Result<(Format, usize, usize), ImageError> {
    let format = sniff(bytes)?;
    let (width, height) = match format {
        Format::Jpeg => jpeg::dimensions(bytes, limits)?,
        Format::Png => png::dimensions(bytes, limits)?,
    };
    check_size(limits, width, height)?;
    Ok((format, width, height))
}

/// What checking an image costs: the decoder's working memory (not a full frame), so that callers
/// can bound how many checks run at once by memory rather than by count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub format: Format,
    pub width: usize,
    pub height: usize,
    /// Bytes `verify` allocates at most for this image (libjpeg's whole-image coefficient buffers
    /// for progressive JPEGs; a few rows otherwise).
    pub verify_bytes: usize,
}

/// The header, checked against `limits`, and what verifying the whole image will cost.
pub fn inspect(bytes: &[u8], limits: &ImageLimits) -> Result<Probe, ImageError> {
    let (format, width, height) = probe(bytes, limits)?;
    let verify_bytes = match format {
        Format::Jpeg => jpeg::verify_bytes(bytes, width, height),
        Format::Png => png::verify_bytes(width),
    };
    Ok(Probe {
        format,
        width,
        height,
        verify_bytes,
    })
}

/// Decodes the whole image without keeping its pixels: every error `decode_rgb` reports (truncated,
/// corrupt, over the limits) is reported here, with a few rows of memory instead of a full frame
/// (JPEG at 1/8 scale: the same entropy decoding, an eighth of the IDCT work per side).
pub fn verify(bytes: &[u8], limits: &ImageLimits) -> Result<Probe, ImageError> {
    let probe = inspect(bytes, limits)?;
    match probe.format {
        Format::Jpeg => jpeg::verify(bytes, limits)?,
        Format::Png => png::verify(bytes, limits)?,
    }
    Ok(probe)
}

/// Decodes JPEG or PNG bytes into RGB, refusing anything over `limits` before allocating for it.
pub fn decode_rgb(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage, ImageError> {
    match sniff(bytes)? {
        Format::Jpeg => jpeg::decode(bytes, limits),
        Format::Png => png::decode(bytes, limits),
    }
}

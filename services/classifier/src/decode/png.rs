//! PNG decoding with Pillow's `convert("RGB")` semantics: palette and low bit depths expanded,
//! alpha dropped (not composited), gray replicated, 16-bit samples reduced to their high byte,
//! but 16-bit grey (no alpha) clamped to 255 as Pillow does (see `Samples`).

use std::io::Cursor;

use png::{BitDepth, ColorType, Decoder, Transformations};

use super::{check_size, ImageError, ImageLimits, RgbImage};

fn error(e: png::DecodingError) -> ImageError {
    match e {
        png::DecodingError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => ImageError::Truncated,
        png::DecodingError::LimitsExceeded => ImageError::Corrupt("PNG exceeds decoder memory limits".into()),
        other => ImageError::Corrupt(other.to_string()),
    }
}

/// A decoder that allocates, besides the output frame, at most what the file itself could hold plus
/// a working set (row buffers, zlib's window): metadata nobody reads (text chunks, colour profiles;
/// Pillow's `convert("RGB")` ignores them too) is skipped unread, so a chunk of a few MB that would
/// inflate to GBs costs nothing.
fn decoder<'a>(bytes: &'a [u8], limits: &ImageLimits) -> Decoder<Cursor<&'a [u8]>> {
    let cap = png::Limits {
        bytes: working_bytes(bytes.len(), limits.max_side),
    };
    let mut decoder = Decoder::new_with_limits(Cursor::new(bytes), cap);
    decoder.set_ignore_text_chunk(true);
    decoder.set_ignore_iccp_chunk(true);
    decoder
}

/// The decoder's allocations besides the frame: chunks it keeps (bounded by the file), two rows of
/// 16-bit RGBA, zlib's window.
fn working_bytes(file_bytes: usize, width: usize) -> usize {
    file_bytes
        .saturating_add(width.saturating_mul(8 * 2))
        .saturating_add(1 << 20)
}

pub fn dimensions(bytes: &[u8], limits: &ImageLimits) -> Result<(usize, usize), ImageError> {
    let reader = decoder(bytes, limits).read_info().map_err(error)?;
    let info = reader.info();
    Ok((info.width as usize, info.height as usize))
}

/// Decodes every row (every pass of an interlaced image) into the decoder's own row buffer: the
/// same errors as `decode`, without a frame.
pub fn verify(bytes: &[u8], limits: &ImageLimits) -> Result<(), ImageError> {
    let mut decoder = decoder(bytes, limits);
    decoder.set_transformations(Transformations::EXPAND | Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(error)?;
    let (width, height) = (reader.info().width as usize, reader.info().height as usize);
    check_size(limits, width, height)?;
    let passes = if reader.info().interlaced { 7 } else { 1 };
    let mut rows = 0usize;
    while reader.next_row().map_err(error)?.is_some() {
        rows += 1;
    }
    // An interlaced image has fewer rows in its passes than 7 x height; any image has at least height.
    if rows < height || rows > height * passes {
        return Err(ImageError::Truncated);
    }
    Ok(())
}

/// What `verify` allocates: the decoder's working set (the file's own bytes are already counted by
/// the caller, who holds them).
pub fn verify_bytes(width: usize) -> usize {
    working_bytes(0, width)
}

/// How the decoder hands over a PNG's samples, by what the file holds.
#[derive(Clone, Copy)]
enum Samples {
    /// 8-bit grey or RGB, with or without alpha: palettes, low bit depths and transparency
    /// expanded, 16-bit samples reduced to their high byte (Pillow opens such files as `L`, `LA`,
    /// `RGB` or `RGBA` the same way).
    Eight,
    /// 16-bit grey without alpha, as stored: Pillow opens it as mode `I;16`, and `convert("RGB")`
    /// clamps each sample to 255 rather than scaling it, so most such pictures come out white
    /// (python-pillow/Pillow#3011, #2574). The reference the service is held to does that, so this
    /// does too: parity over a prettier picture. Its `tRNS` is ignored, as Pillow's conversion
    /// drops it.
    Grey16Clamped,
}

impl Samples {
    fn of(header: &png::Info) -> Self {
        match (header.color_type, header.bit_depth) {
            (ColorType::Grayscale, BitDepth::Sixteen) => Self::Grey16Clamped,
            _ => Self::Eight,
        }
    }

    fn transformations(self) -> Transformations {
        match self {
            Self::Eight => Transformations::EXPAND | Transformations::STRIP_16,
            Self::Grey16Clamped => Transformations::IDENTITY,
        }
    }

    fn depth(self) -> BitDepth {
        match self {
            Self::Eight => BitDepth::Eight,
            Self::Grey16Clamped => BitDepth::Sixteen,
        }
    }
}

pub fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage, ImageError> {
    let mut decoder = decoder(bytes, limits);
    // The transformations depend on IHDR, so it is read first; `read_info` goes on from there.
    let samples = Samples::of(decoder.read_header_info().map_err(error)?);
    decoder.set_transformations(samples.transformations());
    let mut reader = decoder.read_info().map_err(error)?;
    let (width, height) = (reader.info().width as usize, reader.info().height as usize);
    check_size(limits, width, height)?;
    let size = reader.output_buffer_size().ok_or(ImageError::TooLarge {
        width,
        height,
        max_side: limits.max_side,
        max_pixels: limits.max_pixels,
    })?;
    let mut buf = vec![0; size];
    let frame = reader.next_frame(&mut buf).map_err(error)?;
    let (color, depth) = reader.output_color_type();
    if depth != samples.depth() {
        return Err(ImageError::Corrupt(format!(
            "unexpected PNG bit depth {depth:?} after expansion"
        )));
    }
    let bytes_per_sample = if depth == BitDepth::Sixteen { 2 } else { 1 };
    let channels = color.samples() * bytes_per_sample;
    let mut pixels = Vec::with_capacity(width * height * 3);
    for row in buf[..frame.buffer_size()].chunks_exact(frame.line_size) {
        for px in row[..width * channels].chunks_exact(channels) {
            match (samples, color) {
                (Samples::Grey16Clamped, ColorType::Grayscale) => {
                    let grey = u16::from_be_bytes([px[0], px[1]]).min(255) as u8;
                    pixels.extend_from_slice(&[grey; 3])
                }
                (Samples::Eight, ColorType::Grayscale | ColorType::GrayscaleAlpha) => {
                    pixels.extend_from_slice(&[px[0]; 3])
                }
                (Samples::Eight, ColorType::Rgb | ColorType::Rgba) => pixels.extend_from_slice(&px[..3]),
                (_, color) => {
                    return Err(ImageError::Corrupt(format!(
                        "unexpected PNG colour {color:?} after expansion"
                    )))
                }
            }
        }
    }
    if pixels.len() != width * height * 3 {
        return Err(ImageError::Truncated);
    }
    Ok(RgbImage::new(width, height, pixels))
}

//! PNG decoding with Pillow's `convert("RGB")` semantics: palette and low bit depths expanded,
//! alpha dropped (not composited), gray replicated, 16-bit samples reduced to their high byte.

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

pub fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage, ImageError> {
    let mut decoder = decoder(bytes, limits);
    decoder.set_transformations(Transformations::EXPAND | Transformations::STRIP_16);
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
    if depth != BitDepth::Eight {
        return Err(ImageError::Corrupt(format!(
            "unexpected PNG bit depth {depth:?} after expansion"
        )));
    }
    let channels = color.samples();
    let mut pixels = Vec::with_capacity(width * height * 3);
    for row in buf[..frame.buffer_size()].chunks_exact(frame.line_size) {
        for px in row[..width * channels].chunks_exact(channels) {
            match color {
                ColorType::Grayscale | ColorType::GrayscaleAlpha => pixels.extend_from_slice(&[px[0]; 3]),
                ColorType::Rgb | ColorType::Rgba => pixels.extend_from_slice(&px[..3]),
                ColorType::Indexed => return Err(ImageError::Corrupt("palette was not expanded".into())),
            }
        }
    }
    if pixels.len() != width * height * 3 {
        return Err(ImageError::Truncated);
    }
    Ok(RgbImage::new(width, height, pixels))
}

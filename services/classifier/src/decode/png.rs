//! PNG decoding with Pillow's `convert("RGB")` semantics: palette and low bit depths expanded,
//! alpha dropped (not composited), gray replicated, 16-bit samples reduced to their high byte,
//! but 16-bit grey (no alpha) clamped to 255 as Pillow does (see `Samples`). A file is read as
//! far as Pillow reads it (see `each_row`).

use std::io::Cursor;

use png::{BitDepth, ColorType, Decoder, InterlaceInfo, Reader, Transformations};

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
/// inflate to GBs costs nothing. Refuses first a file whose header chunks fail their CRC.
fn decoder<'a>(bytes: &'a [u8], limits: &ImageLimits) -> Result<Decoder<Cursor<&'a [u8]>>, ImageError> {
    check_header_crcs(bytes)?;
    let cap = png::Limits {
        bytes: working_bytes(bytes.len(), limits.max_side),
    };
    let mut options = png::DecodeOptions::default();
    options.set_ignore_text_chunk(true);
    options.set_ignore_iccp_chunk(true);
    // Checksums are Pillow's: the CRCs of the chunks before the image data
    // (`check_header_crcs`), and zlib's of the image data.
    options.set_ignore_crc(true);
    options.set_ignore_adler32(false);
    let mut decoder = Decoder::new_with_options(Cursor::new(bytes), options);
    decoder.set_limits(cap);
    Ok(decoder)
}

/// Pillow checks the CRC of every chunk before the first IDAT as it opens a file ("broken PNG
/// file"), and of none from there on.
fn check_header_crcs(bytes: &[u8]) -> Result<(), ImageError> {
    let mut at = 8; // after the signature
    while let Some(header) = bytes.get(at..at + 8) {
        let (length, kind) = (
            u32::from_be_bytes([header[0], header[1], header[2], header[3]]),
            &header[4..8],
        );
        if kind == b"IDAT" {
            return Ok(());
        }
        let end = at.saturating_add(8).saturating_add(length as usize);
        let (Some(data), Some(stored)) = (bytes.get(at + 8..end), bytes.get(end..end.saturating_add(4))) else {
            return Err(ImageError::Truncated);
        };
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        if crc.finalize().to_be_bytes() != stored {
            return Err(ImageError::Corrupt(format!(
                "broken PNG: bad checksum in its {} chunk",
                String::from_utf8_lossy(kind)
            )));
        }
        at = end + 4;
    }
    // Cut short before its image data: the decoder says so.
    Ok(())
}

/// Adam7's passes: (x offset, y offset, x step, y step).
const ADAM7: [(u32, u32, u32, u32); 7] = [
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
];

/// The rows the decoder hands over for an image: one per line, or each non-empty pass's lines.
fn row_count(width: u32, height: u32, interlaced: bool) -> u64 {
    if !interlaced {
        return u64::from(height);
    }
    ADAM7
        .iter()
        .map(|&(x, y, dx, dy)| {
            let (samples, lines) = (
                width.saturating_sub(x).div_ceil(dx),
                height.saturating_sub(y).div_ceil(dy),
            );
            if samples == 0 {
                0
            } else {
                u64::from(lines)
            }
        })
        .sum()
}

/// Hands each row of the image to `row` (with its pass, for an interlaced image) and stops after
/// the last, as Pillow does: what follows the rows (the rest of the image data, its zlib
/// checksum, IEND) is not read, so a file cut or damaged there is read whole by both.
fn each_row<R: std::io::BufRead + std::io::Seek>(
    reader: &mut Reader<R>,
    mut row: impl FnMut(&[u8], &InterlaceInfo),
) -> Result<(), ImageError> {
    let info = reader.info();
    for _ in 0..row_count(info.width, info.height, info.interlaced) {
        let next = reader
            .next_interlaced_row()
            .map_err(error)?
            .ok_or(ImageError::Truncated)?;
        row(next.data(), next.interlace());
    }
    Ok(())
}

/// The decoder's allocations besides the frame: chunks it keeps (bounded by the file), two rows of
/// 16-bit RGBA, zlib's window.
fn working_bytes(file_bytes: usize, width: usize) -> usize {
    file_bytes
        .saturating_add(width.saturating_mul(8 * 2))
        .saturating_add(1 << 20)
}

pub fn dimensions(bytes: &[u8], limits: &ImageLimits) -> Result<(usize, usize), ImageError> {
    let reader = decoder(bytes, limits)?.read_info().map_err(error)?;
    let info = reader.info();
    Ok((info.width as usize, info.height as usize))
}

/// Decodes every row (every pass of an interlaced image) into the decoder's own row buffer: the
/// same errors as `decode`, without a frame.
pub fn verify(bytes: &[u8], limits: &ImageLimits) -> Result<(), ImageError> {
    let mut decoder = decoder(bytes, limits)?;
    decoder.set_transformations(Transformations::EXPAND | Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(error)?;
    check_size(limits, reader.info().width as usize, reader.info().height as usize)?;
    each_row(&mut reader, |_, _| {})
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
    let mut decoder = decoder(bytes, limits)?;
    // The transformations depend on IHDR, so it is read first; `read_info` goes on from there.
    let samples = Samples::of(decoder.read_header_info().map_err(error)?);
    decoder.set_transformations(samples.transformations());
    let mut reader = decoder.read_info().map_err(error)?;
    let (width, height) = (reader.info().width as usize, reader.info().height as usize);
    check_size(limits, width, height)?;
    let too_large = || ImageError::TooLarge {
        width,
        height,
        max_side: limits.max_side,
        max_pixels: limits.max_pixels,
    };
    let size = reader.output_buffer_size().ok_or_else(too_large)?;
    let (color, depth) = reader.output_color_type();
    if depth != samples.depth() {
        return Err(ImageError::Corrupt(format!(
            "unexpected PNG bit depth {depth:?} after expansion"
        )));
    }
    let line_size = reader.output_line_size(width as u32).ok_or_else(too_large)?;
    let bits_per_pixel = color.samples() as u8 * depth as u8;
    let mut buf = vec![0; size];
    let mut line = 0;
    each_row(&mut reader, |row, interlace| match interlace {
        InterlaceInfo::Adam7(pass) => png::expand_interlaced_row(&mut buf, line_size, row, pass, bits_per_pixel),
        InterlaceInfo::Null(_) => {
            buf[line * line_size..][..line_size].copy_from_slice(row);
            line += 1;
        }
    })?;
    let bytes_per_sample = if depth == BitDepth::Sixteen { 2 } else { 1 };
    let channels = color.samples() * bytes_per_sample;
    let mut pixels = Vec::with_capacity(width * height * 3);
    for row in buf[..line_size * height].chunks_exact(line_size) {
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

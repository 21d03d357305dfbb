//! JPEG decoding through libjpeg-turbo (the bundled C source of `mozjpeg`), the decoder Pillow
//! uses: the same IDCT and chroma upsampling give bit-identical pixels. libjpeg reports fatal
//! errors by unwinding out of the C code; we catch that here and turn it into `ImageError`.

use std::os::raw::c_int;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use mozjpeg::{ColorSpace, ColorSpaceExt, Decompress};
use mozjpeg_sys::{jpeg_common_struct, jpeg_error_mgr, jpeg_std_error, JWRN_JPEG_EOF};

use super::{check_size, ImageError, ImageLimits, RgbImage};

/// Payload of an unwind started by libjpeg's error handlers.
struct JpegFailure(ImageError);

fn message(cinfo: &mut jpeg_common_struct) -> String {
    // SAFETY: libjpeg calls the handlers with `err` pointing at our error manager.
    let err = unsafe { &*cinfo.err };
    let buf = [0u8; 80];
    match err.format_message {
        Some(format) => {
            // SAFETY: format_message writes a NUL-terminated string of at most 80 bytes; the binding
            // declares the buffer as shared but the C side writes into it.
            unsafe { format(cinfo, &buf) };
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            String::from_utf8_lossy(&buf[..end]).into_owned()
        }
        None => format!("libjpeg error {}", err.msg_code),
    }
}

extern "C-unwind" fn error_exit(cinfo: &mut jpeg_common_struct) {
    let reason = message(cinfo);
    resume_unwind(Box::new(JpegFailure(ImageError::Corrupt(reason))));
}

extern "C-unwind" fn emit_message(cinfo: &mut jpeg_common_struct, level: c_int) {
    // SAFETY: as in `message`.
    let code = unsafe { (*cinfo.err).msg_code };
    // Like Pillow, a file that ends before its last scanline is an error, not a gray-filled image;
    // other warnings (extraneous bytes and the like) are tolerated as Pillow tolerates them.
    if level < 0 && code == JWRN_JPEG_EOF as c_int {
        resume_unwind(Box::new(JpegFailure(ImageError::Truncated)));
    }
}

fn error_manager() -> jpeg_error_mgr {
    // SAFETY: jpeg_error_mgr is a plain C struct; jpeg_std_error fills in every field.
    let mut err: jpeg_error_mgr = unsafe { std::mem::zeroed() };
    unsafe { jpeg_std_error(&mut err) };
    err.error_exit = Some(error_exit);
    err.emit_message = Some(emit_message);
    err
}

fn guarded<T>(f: impl FnOnce() -> Result<T, ImageError>) -> Result<T, ImageError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => match payload.downcast::<JpegFailure>() {
            Ok(failure) => Err(failure.0),
            Err(payload) => match payload.downcast::<String>() {
                Ok(text) => Err(ImageError::Corrupt(*text)),
                Err(_) => Err(ImageError::Corrupt("JPEG decoder failed".into())),
            },
        },
    }
}

fn io(e: std::io::Error) -> ImageError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ImageError::Truncated,
        _ => ImageError::Corrupt(e.to_string()),
    }
}

/// More scans than any encoder writes (progressive files have about ten). Each scan walks every
/// block of its components again, so a file of many tiny scans is a CPU bomb of a few KB; libjpeg-turbo's
/// own fuzzers stop at 500 too.
pub const MAX_SCANS: usize = 500;

/// A decompressor for a file whose scan count is within `MAX_SCANS`. Metadata segments (APPn: EXIF,
/// ICC, XMP; COM) are skipped by libjpeg unread, since no marker is asked to be saved.
fn open(bytes: &[u8]) -> Result<Decompress<&[u8]>, ImageError> {
    let scans = scan_count(bytes);
    if scans > MAX_SCANS {
        return Err(ImageError::Corrupt(format!(
            "JPEG has more than {MAX_SCANS} scans ({scans})"
        )));
    }
    Decompress::with_err(error_manager()).from_mem(bytes).map_err(io)
}

pub fn dimensions(bytes: &[u8]) -> Result<(usize, usize), ImageError> {
    guarded(|| Ok(open(bytes)?.size()))
}

pub fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage, ImageError> {
    guarded(|| {
        let decompress = open(bytes)?;
        let (width, height) = decompress.size();
        check_size(limits, width, height)?;
        let cmyk = matches!(decompress.color_space(), ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK);
        let pixels = if cmyk {
            let mut started = decompress.to_colorspace(ColorSpace::JCS_CMYK).map_err(io)?;
            let cmyk: Vec<[u8; 4]> = started.read_scanlines().map_err(io)?;
            started.finish().map_err(io)?;
            cmyk.iter().flat_map(|&px| inverted_cmyk_to_rgb(px)).collect()
        } else {
            let mut started = decompress.rgb().map_err(io)?;
            let rgb: Vec<u8> = started.read_scanlines().map_err(io)?;
            started.finish().map_err(io)?;
            rgb
        };
        if pixels.len() != width * height * 3 {
            return Err(ImageError::Truncated);
        }
        Ok(RgbImage::new(width, height, pixels))
    })
}

/// Decodes the file at 1/8 scale into one reused row: the same header checks, entropy decoding
/// and so errors as `decode`, without a full-size frame. A file whose one scan runs to its EOI
/// (`ends_at_eoi`) is read to its first row only: past it, nothing can fail (libjpeg's decoding
/// of sequential Huffman data only warns, the data cannot run out before EOI, and no marker comes
/// after the scan to be read), and decoding the rest would double the web tier's cost: the entropy
/// decoding of a 12 MP photo is ~45 ms here, half a worker's work on it.
pub fn verify(bytes: &[u8], limits: &ImageLimits) -> Result<(), ImageError> {
    guarded(|| {
        let mut decompress = open(bytes)?;
        let (width, height) = decompress.size();
        check_size(limits, width, height)?;
        decompress.scale(1);
        let cmyk = matches!(decompress.color_space(), ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK);
        let space = if cmyk {
            ColorSpace::JCS_CMYK
        } else {
            ColorSpace::JCS_RGB
        };
        let mut started = decompress.to_colorspace(space).map_err(io)?;
        let mut row = vec![0u8; started.width() * space.num_components()];
        if ends_at_eoi(bytes) {
            // The first row starts every pass (Huffman tables, colour conversion): their errors.
            return started.read_scanlines_into(&mut row).map(drop).map_err(io);
        }
        for _ in 0..started.height() {
            started.read_scanlines_into(&mut row).map_err(io)?;
        }
        started.finish().map_err(io)
    })
}

/// Whether the file is one sequential Huffman scan (SOF0 or SOF1) that holds every component,
/// its segments back to back up to that scan and each one libjpeg reads a length of, and the
/// first marker after the scan's data (0xFF not followed by a stuffed 0x00, a fill 0xFF or a
/// restart marker) is EOI. libjpeg then stops decoding at EOI at the latest (it reads no further
/// into a marker), so its source never runs dry, and finishing reads no other marker.
fn ends_at_eoi(bytes: &[u8]) -> bool {
    let Some(layout) = frame_layout(bytes) else {
        return false;
    };
    if layout.multi_scan || !layout.sequential_huffman || !layout.plain {
        return false;
    }
    let mut at = layout.scan_data;
    loop {
        match next_marker(bytes, at) {
            Some((found, 0xD0..=0xD7)) => at = found + 2,
            Some((_, code)) => return code == 0xD9,
            None => return false,
        }
    }
}

/// The first marker at or after `from`, skipping entropy-coded data: an 0xFF followed by a code
/// other than 0x00 (a stuffed byte) or 0xFF (fill); its offset and code.
fn next_marker(bytes: &[u8], mut from: usize) -> Option<(usize, u8)> {
    loop {
        let found = from + memchr::memchr(0xFF, bytes.get(from..)?)?;
        match *bytes.get(found + 1)? {
            0x00 | 0xFF => from = found + 1,
            code => return Some((found, code)),
        }
    }
}

/// What `verify` allocates for this file. libjpeg keeps every DCT coefficient of the image (2
/// bytes each, 64 per block) when the file has several scans (progressive, or components coded
/// one at a time); a single interleaved scan needs a few rows.
pub fn verify_bytes(bytes: &[u8], width: usize, height: usize) -> usize {
    const FIXED: usize = 1 << 20;
    let rows = width.saturating_mul(3 * 16 * 2) + FIXED;
    match frame_layout(bytes) {
        Some(layout) if !layout.multi_scan => rows,
        Some(layout) => {
            let (h_max, v_max) = layout
                .sampling
                .iter()
                .fold((1, 1), |(h, v), &(hc, vc)| (h.max(hc), v.max(vc)));
            let blocks: usize = layout
                .sampling
                .iter()
                .map(|&(hc, vc)| {
                    let w = (width * hc).div_ceil(h_max).div_ceil(8).next_multiple_of(hc.max(1));
                    let h = (height * vc).div_ceil(v_max).div_ceil(8).next_multiple_of(vc.max(1));
                    w.saturating_mul(h)
                })
                .sum();
            blocks.saturating_mul(128).saturating_add(rows)
        }
        // Unparsable headers fail in `verify` before allocating; charge the worst case anyway.
        None => width
            .saturating_mul(height)
            .saturating_mul(4 * 128 / 64)
            .saturating_add(rows),
    }
}

struct FrameLayout {
    /// Sampling factors (h, v) per component.
    sampling: Vec<(usize, usize)>,
    /// Progressive, or a first scan without every component: libjpeg buffers the whole image.
    multi_scan: bool,
    /// Baseline or extended sequential, Huffman-coded (SOF0, SOF1).
    sequential_huffman: bool,
    /// Where the first scan's entropy-coded data begins.
    scan_data: usize,
    /// Every segment before the scan is one libjpeg reads a length of (so it finds the scan's
    /// data where this walk does).
    plain: bool,
}

/// Reads the markers up to the first scan: the frame's components and whether the file has
/// several scans. `None` where the segments are not back to back (libjpeg skips stray bytes
/// between them; this walk does not).
fn frame_layout(bytes: &[u8]) -> Option<FrameLayout> {
    let mut at = 2; // after SOI
    let mut frame: Option<(u8, Vec<(usize, usize)>)> = None;
    let mut plain = true;
    loop {
        while *bytes.get(at)? == 0xFF && *bytes.get(at + 1)? == 0xFF {
            at += 1; // fill bytes
        }
        if *bytes.get(at)? != 0xFF {
            return None;
        }
        let marker = *bytes.get(at + 1)?;
        // Markers libjpeg reads a length of, as here; any other (a parameterless RSTn, say) would
        // set this walk apart from libjpeg's.
        plain &= matches!(marker, 0xC0..=0xCF | 0xDA | 0xDB | 0xDD | 0xE0..=0xEF | 0xFE);
        let len = usize::from(u16::from_be_bytes([*bytes.get(at + 2)?, *bytes.get(at + 3)?]));
        // A length below 2 (the length's own bytes) gives no segment: None.
        let segment = bytes.get(at + 4..at + 2 + len)?;
        match marker {
            // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                let count = usize::from(*segment.get(5)?);
                let sampling = (0..count)
                    .map(|i| {
                        let hv = *segment.get(6 + 3 * i + 1)?;
                        Some((usize::from(hv >> 4), usize::from(hv & 0x0F)))
                    })
                    .collect::<Option<Vec<_>>>()?;
                frame = Some((marker, sampling));
            }
            0xDA => {
                let (sof, sampling) = frame?;
                let progressive = matches!(sof, 0xC2 | 0xC6 | 0xCA | 0xCE);
                let in_scan = usize::from(*segment.first()?);
                let multi_scan = progressive || in_scan < sampling.len();
                return Some(FrameLayout {
                    sampling,
                    multi_scan,
                    sequential_huffman: matches!(sof, 0xC0 | 0xC1),
                    plain,
                    scan_data: at + 2 + len,
                });
            }
            _ => {}
        }
        at += 2 + len;
    }
}

/// Start-of-scan markers in the file, found by walking its segments and skipping entropy-coded data
/// (where 0xFF is always followed by a stuffed 0x00, a restart marker or the next marker), so that
/// bytes inside metadata or image data are never mistaken for markers. A file cut short counts the
/// scans seen so far.
fn scan_count(bytes: &[u8]) -> usize {
    let mut scans = 0;
    let mut at = 2; // after SOI
    loop {
        let Some((found, marker)) = next_marker(bytes, at) else {
            return scans;
        };
        at = found;
        match marker {
            0xD9 => return scans, // EOI
            // Markers without a length: SOI, RSTn, TEM.
            0xD8 | 0xD0..=0xD7 | 0x01 => at += 2,
            _ => {
                let Some(len) = bytes
                    .get(at + 2..at + 4)
                    .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
                else {
                    return scans;
                };
                if marker == 0xDA {
                    scans += 1;
                }
                // After SOS the search above skips the entropy-coded data.
                at += 2 + len;
            }
        }
    }
}

/// Pillow reads CMYK JPEGs as Adobe-inverted (`CMYK;I`) and converts to RGB with `cmyk2rgb`.
fn inverted_cmyk_to_rgb(px: [u8; 4]) -> [u8; 3] {
    let [c, m, y, k] = px.map(|v| 255 - v);
    let nk = 255 - i32::from(k);
    let channel = |v: u8| {
        let tmp = i32::from(v) * nk + 128;
        let muldiv255 = ((tmp >> 8) + tmp) >> 8;
        (nk - muldiv255).clamp(0, 255) as u8
    };
    [channel(c), channel(m), channel(y)]
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASELINE: &[u8] = include_bytes!("../../tests/fixtures/small.jpg");
    const RESTART: &[u8] = include_bytes!("../../tests/fixtures/restart.jpg");
    const GREY: &[u8] = include_bytes!("../../tests/fixtures/grey.jpg");

    /// The first scan's data and where it ends (the EOI's offset).
    fn scan_data(bytes: &[u8]) -> (usize, usize) {
        let start = frame_layout(bytes).expect("a layout").scan_data;
        (start, bytes.len() - 2)
    }

    #[test]
    fn a_single_scan_running_to_eoi_is_read_to_its_first_row_only() {
        for file in [BASELINE, RESTART, GREY] {
            assert!(ends_at_eoi(file));
            verify(file, &ImageLimits::default()).expect("verifies");
        }
        // Another marker between the scan's data and EOI: libjpeg reads it when it finishes.
        for code in [0xDA, 0xC4, 0xDD, 0xFE, 0x01, 0xDC] {
            let (_, eoi) = scan_data(BASELINE);
            let mut file = BASELINE.to_vec();
            file.splice(eoi..eoi, [0xFF, code, 0x00, 0x02]);
            assert!(!ends_at_eoi(&file), "{code:#x}");
        }
        // No EOI: the data may run out before the last row.
        assert!(!ends_at_eoi(&BASELINE[..BASELINE.len() - 2]));
        // A parameterless marker before the scan: libjpeg reads no length where a walk that
        // read one would look for the scan elsewhere.
        let (start, _) = scan_data(BASELINE);
        let sos = BASELINE[..start].windows(2).rposition(|w| w == [0xFF, 0xDA]).unwrap();
        let mut file = BASELINE.to_vec();
        file.splice(sos..sos, [0xFF, 0xD0, 0x00, 0x02]);
        assert!(!ends_at_eoi(&file));
    }

    #[test]
    fn several_scans_are_decoded_to_the_end() {
        let mut c = mozjpeg::Compress::new(ColorSpace::JCS_RGB);
        c.set_size(32, 24);
        c.set_progressive_mode();
        let mut started = c.start_compress(Vec::new()).unwrap();
        started.write_scanlines(&[128u8; 32 * 24 * 3]).unwrap();
        let progressive = started.finish().unwrap();
        assert!(!ends_at_eoi(&progressive));
        verify(&progressive, &ImageLimits::default()).expect("verifies");
    }
}

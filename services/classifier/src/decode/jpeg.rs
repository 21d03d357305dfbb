//! JPEG decoding through libjpeg-turbo (the bundled C source of `mozjpeg`), the decoder Pillow
//! uses: the same IDCT and chroma upsampling give bit-identical pixels. libjpeg reports fatal
//! errors by unwinding out of the C code; we catch that here and turn it into `ImageError`.

use std::io::{BufRead, Read};
use std::ops::Range;
use std::os::raw::c_int;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use mozjpeg::decompress::DecompressStarted;
use mozjpeg::{ColorSpace, ColorSpaceExt, Decompress};
use mozjpeg_sys::{jpeg_common_struct, jpeg_error_mgr, jpeg_std_error, JERR_FILE_READ, JWRN_JPEG_EOF};

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
    // SAFETY: as in `message`.
    let code = unsafe { (*cinfo.err).msg_code };
    // The readers here are in memory: a read fails only past the file's end (a segment whose
    // length runs past it, skipped), which is the file ending too soon.
    let failure = if code == JERR_FILE_READ as c_int {
        ImageError::Truncated
    } else {
        ImageError::Corrupt(message(cinfo))
    };
    resume_unwind(Box::new(JpegFailure(failure)));
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

/// A large image may have fewer: all its scans together walk at most this many times as many
/// blocks as one scan of the largest image allowed (under the default 40 MP limit: 32 scans at
/// 40 MP, 106 at 12 MP, 500 up to 2.5 MP), past what encoders write (libjpeg's progressive CMYK,
/// 18). Measured here at 40 MP, a
/// scan that refines every coefficient costs the worker's decode ~20 ms even with no data to
/// read: 499 of them in a 188 KB file cost ~10 s, the web tier's check ~1.3 s; with 32, ~0.67 s
/// and ~0.13 s, what a 13 MB progressive photo of that size costs (0.65 s and 0.09 s).
pub const MAX_SCAN_PASSES: usize = 32;

/// A decompressor for a file within `limits`: its size, and its scan count for that size.
/// Metadata segments (APPn: EXIF, ICC, XMP; COM) are skipped by libjpeg unread, since no marker is
/// asked to be saved.
fn open<'a>(bytes: &'a [u8], limits: &ImageLimits) -> Result<Decompress<&'a [u8]>, ImageError> {
    let scans = check_scans(bytes)?;
    let decompress = decompressor(bytes)?;
    let (width, height) = decompress.size();
    check_frame(limits, width, height, scans)?;
    Ok(decompress)
}

/// A decompressor reporting through `error_manager`, of what `reader` reads.
fn decompressor<R: BufRead>(reader: R) -> Result<Decompress<R>, ImageError> {
    Decompress::with_err(error_manager()).from_reader(reader).map_err(io)
}

/// The file's scan count, at most `MAX_SCANS`: counted before libjpeg reads any of them.
fn check_scans(bytes: &[u8]) -> Result<usize, ImageError> {
    let scans = scan_count(bytes);
    if scans > MAX_SCANS {
        return Err(ImageError::Corrupt(format!(
            "JPEG has more than {MAX_SCANS} scans ({scans})"
        )));
    }
    Ok(scans)
}

/// The image's size within `limits`, and its scans within `MAX_SCAN_PASSES` for that size.
fn check_frame(limits: &ImageLimits, width: usize, height: usize, scans: usize) -> Result<(), ImageError> {
    check_size(limits, width, height)?;
    let allowed =
        (MAX_SCAN_PASSES.saturating_mul(limits.max_pixels) / width.saturating_mul(height).max(1)).min(MAX_SCANS);
    if scans > allowed {
        return Err(ImageError::Corrupt(format!(
            "JPEG has {scans} scans, more than the {allowed} allowed for a {width}x{height} image (each scan walks the whole image again)"
        )));
    }
    Ok(())
}

pub fn dimensions(bytes: &[u8], limits: &ImageLimits) -> Result<(usize, usize), ImageError> {
    guarded(|| Ok(open(bytes, limits)?.size()))
}

pub fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage, ImageError> {
    guarded(|| {
        let decompress = open(bytes, limits)?;
        let (width, height) = decompress.size();
        let cmyk = matches!(decompress.color_space(), ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK);
        let pixels = if cmyk {
            let mut started = decompress.to_colorspace(ColorSpace::JCS_CMYK).map_err(io)?;
            let cmyk: Vec<[u8; 4]> = started.read_scanlines().map_err(io)?;
            finish(started)?;
            cmyk.iter().flat_map(|&px| inverted_cmyk_to_rgb(px)).collect()
        } else {
            let mut started = decompress.rgb().map_err(io)?;
            let rgb: Vec<u8> = started.read_scanlines().map_err(io)?;
            finish(started)?;
            rgb
        };
        if pixels.len() != width * height * 3 {
            return Err(ImageError::Truncated);
        }
        Ok(RgbImage::new(width, height, pixels))
    })
}

/// Decodes the file at 1/8 scale into one reused row: the same header checks, entropy decoding
/// and so errors as `decode`, without a full-size frame. Where it can (`without_safe_data`), the
/// file less the entropy-coded data that cannot fail to decode: decoding that was most of the
/// check's cost (for a 12 MP photo ~23 ms here, ~85 progressive, against a worker's ~100 and
/// ~150 to classify it).
pub fn verify(bytes: &[u8], limits: &ImageLimits) -> Result<(), ImageError> {
    guarded(|| {
        // First: the walk below keeps two ranges per scan.
        let scans = check_scans(bytes)?;
        let Some(kept) = without_safe_data(bytes) else {
            return decode_rows(decompressor(bytes)?, limits, scans, true);
        };
        // By the first row, what can fail has where the file is read to its end at the start (it
        // has several scans) or its one scan is followed by EOI; otherwise markers after the scan
        // are read at the end.
        let several_scans = frame_layout(bytes).is_some_and(|layout| layout.multi_scan);
        let to_first_row = several_scans || kept.eoi_after_first_scan;
        let reader = Pieces::new(bytes, kept.ranges);
        decode_rows(decompressor(reader)?, limits, scans, !to_first_row)
    })
}

/// Decodes at 1/8 scale into one reused row the first row, or every row and the file's end.
fn decode_rows<R: BufRead>(
    mut decompress: Decompress<R>,
    limits: &ImageLimits,
    scans: usize,
    all: bool,
) -> Result<(), ImageError> {
    let (width, height) = decompress.size();
    check_frame(limits, width, height, scans)?;
    decompress.scale(1);
    let cmyk = matches!(decompress.color_space(), ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK);
    let space = if cmyk {
        ColorSpace::JCS_CMYK
    } else {
        ColorSpace::JCS_RGB
    };
    let mut started = decompress.to_colorspace(space).map_err(io)?;
    let mut row = vec![0u8; started.width() * space.num_components()];
    started.read_scanlines_into(&mut row).map_err(io)?;
    if !all {
        return Ok(());
    }
    for _ in 1..started.height() {
        started.read_scanlines_into(&mut row).map_err(io)?;
    }
    finish(started)
}

/// Reads the file's end once every row is out. Pillow's decoder stops there when the file has no
/// more to give (a marker after the image data whose length runs past the end, or no EOI): no
/// pixel is missing, so neither is an error here; a marker there that libjpeg cannot read still
/// is, in both.
fn finish<R: BufRead>(started: DecompressStarted<R>) -> Result<(), ImageError> {
    match guarded(|| started.finish().map_err(io)) {
        Err(ImageError::Truncated) => Ok(()),
        other => other,
    }
}

/// The ranges of the file to decode in its place: all but the entropy-coded data of its scans,
/// except a progressive DC first scan's. libjpeg reads the same markers and scan headers, so it
/// fails where the file would, and fills the missing data with zeros where the file's data would
/// have decoded. Exact because in libjpeg's Huffman decoding (jdhuff.c, jdphuff.c) a scan's data
/// can only fail in a progressive DC first scan (a DC sum past `i32`), kept here; anything else
/// in it only warns (a bad code, a marker too soon), and the data cannot run dry before the
/// file's EOI, which this walk reaches. `None` (decode the file itself) for what this walk might
/// read otherwise than libjpeg: other codings (arithmetic, lossless), segments not back to back,
/// a marker libjpeg reads no length of outside the data, no EOI.
fn without_safe_data(bytes: &[u8]) -> Option<Kept> {
    let mut kept: Vec<Range<usize>> = Vec::new();
    let mut keep = |range: Range<usize>| match kept.last_mut() {
        Some(last) if last.end == range.start => last.end = range.end,
        _ => kept.push(range),
    };
    let mut eoi_after_first_scan = None;
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    keep(0..2);
    let mut progressive = None;
    let mut at = 2;
    loop {
        let marker;
        (at, marker) = segment_at(bytes, at)?;
        if marker == 0xD9 {
            keep(at..at + 2);
            return Some(Kept {
                ranges: kept,
                eoi_after_first_scan: eoi_after_first_scan?,
            });
        }
        if !matches!(marker, 0xC0..=0xCF | 0xDA | 0xDB | 0xDD | 0xE0..=0xEF | 0xFE) {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([*bytes.get(at + 2)?, *bytes.get(at + 3)?]));
        let segment = bytes.get(at..at + 2 + len)?;
        keep(at..at + 2 + len);
        at += 2 + len;
        match marker {
            0xC0 | 0xC1 => progressive = Some(false),
            0xC2 => progressive = Some(true),
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => return None,
            0xDA => {
                // Ss and Ah, after the components' selectors: a DC first scan has both 0.
                let count = usize::from(*segment.get(4)?);
                let (ss, ah) = (*segment.get(5 + 2 * count)?, *segment.get(7 + 2 * count)? >> 4);
                let mut end = at;
                let found = loop {
                    match next_marker(bytes, end)? {
                        (found, 0xD0..=0xD7) => end = found + 2, // restarts are part of the data
                        (found, _) => break found,
                    }
                };
                if progressive? && ss == 0 && ah == 0 {
                    keep(at..found);
                }
                eoi_after_first_scan.get_or_insert(bytes[found + 1] == 0xD9);
                at = found;
            }
            _ => {}
        }
    }
}

/// What `verify` decodes in a file's place.
struct Kept {
    /// Ranges of the file, in order.
    ranges: Vec<Range<usize>>,
    /// Whether the marker after the first scan's data is EOI.
    eoi_after_first_scan: bool,
}

/// Ranges of one buffer read one after the other.
struct Pieces<'a> {
    bytes: &'a [u8],
    ranges: std::vec::IntoIter<Range<usize>>,
    current: Range<usize>,
}

impl<'a> Pieces<'a> {
    fn new(bytes: &'a [u8], ranges: Vec<Range<usize>>) -> Self {
        Self {
            bytes,
            ranges: ranges.into_iter(),
            current: 0..0,
        }
    }
}

impl Read for Pieces<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = {
            let piece = self.fill_buf()?;
            let n = piece.len().min(out.len());
            out[..n].copy_from_slice(&piece[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Pieces<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.current.is_empty() {
            match self.ranges.next() {
                Some(next) => self.current = next,
                None => break,
            }
        }
        Ok(&self.bytes[self.current.clone()])
    }

    fn consume(&mut self, n: usize) {
        self.current.start = (self.current.start + n).min(self.current.end);
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
}

/// The marker that begins at `at`, after any fill bytes: its offset and code; `None` where no
/// marker is there (libjpeg would skip stray bytes to the next one; these walks do not).
fn segment_at(bytes: &[u8], mut at: usize) -> Option<(usize, u8)> {
    while *bytes.get(at)? == 0xFF && *bytes.get(at + 1)? == 0xFF {
        at += 1; // fill bytes
    }
    if *bytes.get(at)? != 0xFF {
        return None;
    }
    Some((at, *bytes.get(at + 1)?))
}

/// Reads the markers up to the first scan: the frame's components and whether the file has
/// several scans.
fn frame_layout(bytes: &[u8]) -> Option<FrameLayout> {
    let mut at = 2; // after SOI
    let mut frame: Option<(u8, Vec<(usize, usize)>)> = None;
    loop {
        let marker;
        (at, marker) = segment_at(bytes, at)?;
        let len = usize::from(u16::from_be_bytes([*bytes.get(at + 2)?, *bytes.get(at + 3)?]));
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
                return Some(FrameLayout { sampling, multi_scan });
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

    fn progressive() -> Vec<u8> {
        let mut c = mozjpeg::Compress::new(ColorSpace::JCS_RGB);
        c.set_size(32, 24);
        c.set_progressive_mode();
        let mut started = c.start_compress(Vec::new()).unwrap();
        let pixels: Vec<u8> = (0..32 * 24 * 3).map(|i| (i * 7 % 251) as u8).collect();
        started.write_scanlines(&pixels).unwrap();
        started.finish().unwrap()
    }

    /// What `verify` decodes in the file's place.
    fn kept(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let kept = without_safe_data(bytes).expect("walked to EOI");
        Pieces::new(bytes, kept.ranges).read_to_end(&mut out).unwrap();
        out
    }

    /// Each scan of `bytes`, walked segment by segment: its Ss and Ah, and its data's length.
    fn scans(bytes: &[u8]) -> Vec<(u8, u8, usize)> {
        let mut out = Vec::new();
        let mut at = 2;
        while bytes[at + 1] != 0xD9 {
            let len = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
            let next = at + 2 + len;
            if bytes[at + 1] != 0xDA {
                at = next;
                continue;
            }
            let n = usize::from(bytes[at + 4]);
            let mut end = next;
            let marker = loop {
                match next_marker(bytes, end).unwrap() {
                    (found, 0xD0..=0xD7) => end = found + 2,
                    (found, _) => break found,
                }
            };
            out.push((bytes[at + 5 + 2 * n], bytes[at + 7 + 2 * n] >> 4, marker - next));
            at = marker;
        }
        out
    }

    #[test]
    fn only_a_progressive_dc_first_scan_keeps_its_data() {
        for file in [BASELINE, RESTART, GREY] {
            let headers = kept(file);
            let data: usize = scans(file).iter().map(|&(_, _, data)| data).sum();
            assert!(data > 0);
            assert_eq!(headers.len(), file.len() - data, "all the data out, and nothing else");
            assert!(scans(&headers).iter().all(|&(_, _, data)| data == 0));
            verify(file, &ImageLimits::default()).expect("verifies");
        }
        let file = progressive();
        let kept = scans(&kept(&file));
        let all = scans(&file);
        assert_eq!(kept.len(), all.len(), "every scan's header");
        assert!(all.len() > 2, "{all:?}");
        for (&(ss, ah, data), &(_, _, original)) in kept.iter().zip(&all) {
            let dc_first = ss == 0 && ah == 0;
            assert_eq!(data, if dc_first { original } else { 0 }, "Ss {ss} Ah {ah}");
        }
        verify(&file, &ImageLimits::default()).expect("verifies");
    }

    #[test]
    fn what_this_walk_might_read_otherwise_than_libjpeg_is_decoded_itself() {
        // No EOI: the data may run out before the last row.
        assert!(without_safe_data(&BASELINE[..BASELINE.len() - 2]).is_none());
        // A parameterless marker before the scan: libjpeg reads no length where this walk would.
        let sos = BASELINE.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        let mut file = BASELINE.to_vec();
        file.splice(sos..sos, [0xFF, 0xD0, 0x00, 0x02]);
        assert!(without_safe_data(&file).is_none());
        // A stray byte between segments (libjpeg skips it with a warning).
        let mut file = BASELINE.to_vec();
        file.insert(sos, 0x00);
        assert!(without_safe_data(&file).is_none());
        // Arithmetic coding: its decoder's errors are not the Huffman decoders'.
        let mut file = BASELINE.to_vec();
        let sof = file.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        file[sof + 1] = 0xC9;
        assert!(without_safe_data(&file).is_none());
    }
}

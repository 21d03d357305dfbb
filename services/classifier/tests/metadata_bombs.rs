//! Metadata bombs: a real image carrying compressed or repeated metadata that would cost far more
//! memory or CPU than its bytes. Every check (`probe`, `inspect`, `verify`, `decode_rgb`) must either
//! ignore such metadata or refuse the file, allocating no more than the file's own size and a small
//! working set besides the frame. Allocation is measured by a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use imgrec_classifier::decode::{decode_rgb, inspect, probe, verify};
use imgrec_classifier::{ImageError, ImageLimits};

const JPEG: &[u8] = include_bytes!("fixtures/small.jpg");
const JPEG_PIXELS: &[u8] = include_bytes!("fixtures/small.jpg.rgb");
const PNG: &[u8] = include_bytes!("fixtures/small.png");
const PNG_PIXELS: &[u8] = include_bytes!("fixtures/small.png.rgb");

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(now, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One measurement at a time: the counters are process-wide and tests run on threads.
static MEASURING: Mutex<()> = Mutex::new(());

/// The most `f` had allocated at once, beyond what was allocated when it started.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let _one = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    (out, PEAK.load(Ordering::SeqCst).saturating_sub(base))
}

/// A zlib stream of `n` zero bytes, compressed about 1000:1.
fn zlib_zeros(n: usize) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let block = vec![0u8; 1 << 20];
    for _ in 0..n / block.len() {
        z.write_all(&block).unwrap();
    }
    z.finish().unwrap()
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
    chunk.extend_from_slice(kind);
    chunk.extend_from_slice(data);
    let crc = crc32fast::hash(&chunk[4..]);
    chunk.extend_from_slice(&crc.to_be_bytes());
    chunk
}

/// The small PNG with `chunks` inserted right after IHDR, where encoders put metadata.
fn png_with(chunks: &[Vec<u8>]) -> Vec<u8> {
    let after_ihdr = 8 + 8 + 13 + 4;
    let mut out = PNG[..after_ihdr].to_vec();
    for chunk in chunks {
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&PNG[after_ihdr..]);
    out
}

/// The small JPEG with `segments` inserted right after SOI.
fn jpeg_with(segments: &[Vec<u8>]) -> Vec<u8> {
    let mut out = JPEG[..2].to_vec();
    for segment in segments {
        out.extend_from_slice(segment);
    }
    out.extend_from_slice(&JPEG[2..]);
    out
}

fn jpeg_segment(marker: u8, data: &[u8]) -> Vec<u8> {
    let mut segment = vec![0xFF, marker];
    segment.extend_from_slice(&((data.len() + 2) as u16).to_be_bytes());
    segment.extend_from_slice(data);
    segment
}

/// Runs every check on `bytes`, asserting each allocates at most `budget` bytes, and returns what
/// `decode_rgb` said.
fn every_check_within(name: &str, bytes: &[u8], budget: usize) -> Result<Vec<u8>, ImageError> {
    let limits = ImageLimits::default();
    let (_, peak) = peak_during(|| probe(bytes, &limits));
    assert!(peak <= budget, "{name}: probe allocated {peak} bytes");
    let (_, peak) = peak_during(|| inspect(bytes, &limits));
    assert!(peak <= budget, "{name}: inspect allocated {peak} bytes");
    let (verified, peak) = peak_during(|| verify(bytes, &limits));
    assert!(peak <= budget, "{name}: verify allocated {peak} bytes");
    let (decoded, peak) = peak_during(|| decode_rgb(bytes, &limits));
    assert!(peak <= budget, "{name}: decode allocated {peak} bytes");
    assert_eq!(verified.is_ok(), decoded.is_ok(), "{name}: verify and decode disagree");
    decoded.map(|image| image.pixels)
}

/// The file's own size (a decoder may keep metadata it is given, never more) and 4 MiB of working
/// set: the frame of the 16x12 fixture is a few hundred bytes.
fn budget(bytes: &[u8]) -> usize {
    bytes.len() + (4 << 20)
}

#[test]
fn png_profile_and_text_chunks_that_inflate_to_hundreds_of_mb_are_ignored() {
    let bomb = zlib_zeros(256 << 20);
    assert!(bomb.len() < 1 << 20, "the bomb is {} bytes", bomb.len());
    let iccp = png_chunk(b"iCCP", &[b"icc\0\0".as_slice(), &bomb].concat());
    let ztxt = png_chunk(b"zTXt", &[b"Comment\0\0".as_slice(), &bomb].concat());
    // iTXt: keyword, compression flag 1, method 0, empty language tag and translated keyword.
    let itxt = png_chunk(b"iTXt", &[b"XML:com.adobe.xmp\0\x01\0\0\0".as_slice(), &bomb].concat());
    for (name, chunks) in [
        ("iCCP", vec![iccp.clone()]),
        ("zTXt", vec![ztxt.clone()]),
        ("iTXt", vec![itxt.clone()]),
        ("all three", vec![iccp, ztxt, itxt]),
    ] {
        let file = png_with(&chunks);
        let pixels = every_check_within(name, &file, budget(&file)).expect(name);
        assert_eq!(pixels, PNG_PIXELS, "{name}: the image under the metadata changed");
    }
}

#[test]
fn png_with_a_hundred_thousand_tiny_chunks_costs_no_more_than_its_bytes() {
    let tiny: Vec<_> = (0..100_000).map(|_| png_chunk(b"tEXt", b"k\0v")).collect();
    let file = png_with(&tiny);
    let pixels = every_check_within("tEXt x 100000", &file, budget(&file)).unwrap();
    assert_eq!(pixels, PNG_PIXELS);
}

#[test]
fn jpeg_metadata_segments_are_skipped_unread() {
    // A full-size APP2 ICC profile segment, 150 of them (~10 MB), and EXIF and COM besides.
    let icc = jpeg_segment(0xE2, &[b"ICC_PROFILE\0".as_slice(), &vec![7u8; 65_000]].concat());
    let mut segments = vec![icc; 150];
    segments.push(jpeg_segment(
        0xE1,
        &[b"Exif\0\0".as_slice(), &vec![1u8; 65_000]].concat(),
    ));
    segments.push(jpeg_segment(0xFE, &vec![b'x'; 65_000]));
    let file = jpeg_with(&segments);
    let pixels = every_check_within("APPn", &file, budget(&file)).unwrap();
    assert_eq!(pixels, JPEG_PIXELS);
}

#[test]
fn jpeg_with_more_scans_than_any_encoder_writes_is_refused() {
    // The file's scans, repeated before EOI: each extra scan would walk every block again.
    let sos = JPEG.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    let scan = &JPEG[sos..JPEG.len() - 2];
    let mut file = JPEG[..JPEG.len() - 2].to_vec();
    for _ in 0..imgrec_classifier::decode::MAX_SCANS {
        file.extend_from_slice(scan);
    }
    file.extend_from_slice(&[0xFF, 0xD9]);
    let refused = every_check_within("many scans", &file, budget(&file)).unwrap_err();
    assert!(
        matches!(&refused, ImageError::Corrupt(why) if why.contains("scans")),
        "{refused:?}"
    );
    assert!(
        probe(&file, &ImageLimits::default()).is_err(),
        "the probe let it through"
    );
}

/// A flat grey progressive JPEG of `width` x `height` whose last scan is repeated until it has
/// `scans`: each repeat walks every block again and changes no pixel.
fn progressive_with_scans(width: usize, height: usize, scans: usize) -> Vec<u8> {
    let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_GRAYSCALE);
    c.set_size(width, height);
    c.set_progressive_mode();
    let mut started = c.start_compress(Vec::new()).unwrap();
    started.write_scanlines(&vec![128u8; width * height]).unwrap();
    let file = started.finish().unwrap();
    let starts: Vec<usize> = (0..file.len() - 1)
        .filter(|&i| file[i..i + 2] == [0xFF, 0xDA])
        .collect();
    assert!(starts.len() > 1 && starts.len() <= scans, "{} scans", starts.len());
    let (body, eoi) = file.split_at(file.len() - 2);
    let last = &body[starts[starts.len() - 1]..];
    [body, &last.repeat(scans - starts.len()), eoi].concat()
}

#[test]
fn a_large_jpeg_may_have_fewer_scans() {
    // Scans of a 256x192 image, where that is the largest allowed: at most MAX_SCAN_PASSES.
    let (width, height) = (256, 192);
    let largest = ImageLimits {
        max_pixels: width * height,
        ..ImageLimits::default()
    };
    let passes = imgrec_classifier::decode::MAX_SCAN_PASSES;
    let within = progressive_with_scans(width, height, passes);
    assert!(probe(&within, &largest).is_ok());
    assert!(verify(&within, &largest).is_ok());
    assert_eq!(decode_rgb(&within, &largest).unwrap().pixels.len(), width * height * 3);
    let over = progressive_with_scans(width, height, passes + 1);
    let refusals = [
        probe(&over, &largest).map(|_| ()),
        verify(&over, &largest).map(|_| ()),
        decode_rgb(&over, &largest).map(|_| ()),
    ];
    for refused in refusals {
        assert!(
            matches!(&refused, Err(ImageError::Corrupt(why)) if why.contains(&format!("more than the {passes} allowed"))),
            "{refused:?}"
        );
    }
    // Where the same image is a quarter of the largest allowed, four times as many.
    let larger = ImageLimits {
        max_pixels: 4 * width * height,
        ..ImageLimits::default()
    };
    assert!(verify(&progressive_with_scans(width, height, 4 * passes), &larger).is_ok());
    let refused = decode_rgb(&progressive_with_scans(width, height, 4 * passes + 1), &larger);
    assert!(matches!(refused, Err(ImageError::Corrupt(_))), "{refused:?}");
}

#[test]
fn markers_inside_metadata_and_image_data_are_not_counted_as_scans() {
    // 600 start-of-scan byte pairs inside a COM segment: not scans.
    let com = jpeg_segment(0xFE, &[0xFF, 0xDA].repeat(600));
    let file = jpeg_with(&[com]);
    assert_eq!(decode_rgb(&file, &ImageLimits::default()).unwrap().pixels, JPEG_PIXELS);
}

#[test]
fn the_decoders_cap_leaves_room_for_the_widest_deepest_image() {
    // 16-bit RGBA at the widest side allowed: the largest rows the decoder works with.
    let limits = ImageLimits::default();
    let (width, height) = (limits.max_side as u32, 8);
    let mut file = Vec::new();
    let mut encoder = png::Encoder::new(&mut file, width, height);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Sixteen);
    let samples: Vec<u8> = (0..width * height * 8).map(|i| (i % 251) as u8).collect();
    encoder.write_header().unwrap().write_image_data(&samples).unwrap();
    let image = decode_rgb(&file, &limits).expect("a 16-bit RGBA image at the widest side");
    assert_eq!((image.width, image.height), (width as usize, height as usize));
    // High bytes of R, G, B of the first pixel.
    assert_eq!(&image.pixels[..3], &[samples[0], samples[2], samples[4]]);
    verify(&file, &limits).expect("verify agrees");
}

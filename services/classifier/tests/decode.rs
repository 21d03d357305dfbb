//! Decoding: Pillow's pixels on good files, a clear error and no panic on bad ones.

use imgrec_classifier::decode::{decode_rgb, inspect, probe, verify, Format};
use imgrec_classifier::{ImageError, ImageLimits, Manifest};

const JPEG: &[u8] = include_bytes!("fixtures/small.jpg");
const JPEG_PIXELS: &[u8] = include_bytes!("fixtures/small.jpg.rgb");
const PNG: &[u8] = include_bytes!("fixtures/small.png");
const PNG_PIXELS: &[u8] = include_bytes!("fixtures/small.png.rgb");
/// Pillow's, with a restart marker every two MCUs.
const RESTART_JPEG: &[u8] = include_bytes!("fixtures/restart.jpg");
/// Pillow's, one component.
const GREY_JPEG: &[u8] = include_bytes!("fixtures/grey.jpg");
/// A 160x120 picture (Pillow's, quality 85), and the same coefficients arithmetic-coded by
/// `jpegtran -arithmetic` (libjpeg-turbo 2.1), sequential and progressive.
const PHOTO_JPEG: &[u8] = include_bytes!("fixtures/photo.jpg");
const ARITHMETIC_JPEGS: [&[u8]; 2] = [
    include_bytes!("fixtures/arithmetic.jpg"),
    include_bytes!("fixtures/arithmetic_progressive.jpg"),
];

fn limits() -> ImageLimits {
    ImageLimits::default()
}

#[test]
fn decodes_to_pillows_pixels() {
    for (bytes, pixels) in [(JPEG, JPEG_PIXELS), (PNG, PNG_PIXELS)] {
        let image = decode_rgb(bytes, &limits()).unwrap();
        assert_eq!((image.width, image.height), (16, 12));
        assert_eq!(image.pixels, pixels);
    }
    assert_eq!(probe(JPEG, &limits()).unwrap(), (Format::Jpeg, 16, 12));
    assert_eq!(probe(PNG, &limits()).unwrap(), (Format::Png, 16, 12));
}

#[test]
fn arithmetic_coded_jpegs_decode_to_the_pixels_of_their_huffman_original() {
    let original = decode_rgb(PHOTO_JPEG, &limits()).unwrap();
    assert_eq!((original.width, original.height), (160, 120));
    for bytes in ARITHMETIC_JPEGS {
        let image = decode_rgb(bytes, &limits()).expect("an arithmetic-coded JPEG decodes");
        assert!(image.pixels == original.pixels, "arithmetic coding changed the pixels");
        assert_eq!(probe(bytes, &limits()).unwrap(), (Format::Jpeg, 160, 120));
        verify(bytes, &limits()).expect("the web tier's check takes it");
    }
}

#[test]
fn non_images_are_named() {
    assert_eq!(decode_rgb(b"", &limits()), Err(ImageError::Empty));
    assert_eq!(
        decode_rgb(b"hello world", &limits()),
        Err(ImageError::UnsupportedFormat("not an image"))
    );
    assert_eq!(
        decode_rgb(b"GIF89a....", &limits()),
        Err(ImageError::UnsupportedFormat("GIF"))
    );
    assert_eq!(
        decode_rgb(b"RIFF\0\0\0\0WEBPVP8 ", &limits()),
        Err(ImageError::UnsupportedFormat("WebP"))
    );
}

#[test]
fn every_truncation_is_an_error() {
    // Cut anywhere before the last image data, an error; after it, the whole picture, as Pillow
    // reads it. JPEG's 2-byte EOI carries no pixels; nor does the PNG's last 21 bytes: the last
    // byte of its deflate data (the end-of-block code), zlib's checksum, IDAT's CRC and IEND
    // (Pillow stops reading once every row is out; checked against it byte by byte).
    for (bytes, trailer) in [(JPEG, 2), (PNG, 21)] {
        for cut in 1..bytes.len() - trailer {
            let result = decode_rgb(&bytes[..cut], &limits());
            assert!(result.is_err(), "accepted a file cut at {cut} of {}", bytes.len());
        }
    }
    let whole = decode_rgb(PNG, &limits()).unwrap();
    for cut in PNG.len() - 21..PNG.len() {
        assert_eq!(decode_rgb(&PNG[..cut], &limits()).as_ref(), Ok(&whole), "cut at {cut}");
    }
    assert_eq!(
        decode_rgb(&JPEG[..JPEG.len() / 2], &limits()),
        Err(ImageError::Truncated)
    );
}

/// Rewrites the frame size in the JPEG's SOF0 segment.
fn jpeg_with_size(width: u16, height: u16) -> Vec<u8> {
    let mut bytes = JPEG.to_vec();
    let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).expect("baseline JPEG");
    bytes[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    bytes
}

/// Rewrites the PNG's IHDR size, with a valid CRC so that only the size is wrong.
fn png_with_size(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = PNG.to_vec();
    bytes[16..20].copy_from_slice(&width.to_be_bytes());
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32fast::hash(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

#[test]
fn huge_dimensions_are_refused_from_the_header() {
    for bytes in [jpeg_with_size(20000, 20000), png_with_size(20000, 20000)] {
        let err = decode_rgb(&bytes, &limits()).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::TooLarge {
                    width: 20000,
                    height: 20000,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(matches!(probe(&bytes, &limits()), Err(ImageError::TooLarge { .. })));
    }
    let tight = ImageLimits {
        max_side: 8,
        max_pixels: 1000,
        ..limits()
    };
    assert!(matches!(decode_rgb(JPEG, &tight), Err(ImageError::TooLarge { .. })));
}

const RESIZING: &str = r#"{
  "format_version": 1, "name": "resizing",
  "input": {"name": "input", "layout": "NCHW", "color": "RGB", "shape": ["N", 3, 224, 224]},
  "output": {"name": "logits", "kind": "logits"},
  "resize": {"width": 224, "height": 224, "filter": "bilinear"},
  "normalize": {"mean": [0.0, 0.0, 0.0], "std": [255.0, 255.0, 255.0]},
  "labels": "labels.json"
}"#;

#[test]
fn a_model_that_runs_at_the_images_own_size_takes_at_most_max_native_pixels() {
    let resizing = Manifest::parse(RESIZING).unwrap();
    let native = Manifest::parse(
        &RESIZING
            .replace(r#"{"width": 224, "height": 224, "filter": "bilinear"}"#, "null")
            .replace("224, 224]", r#""H", "W"]"#),
    )
    .unwrap();
    // 16 x 12 = 192 pixels: one more than the bound, then exactly the bound.
    let bound = |max_native_pixels| ImageLimits {
        max_native_pixels,
        ..limits()
    };
    for bytes in [JPEG, PNG] {
        let err = probe(bytes, &bound(191).for_model(&native)).unwrap_err();
        assert_eq!(
            err,
            ImageError::TooLargeForModel {
                width: 16,
                height: 12,
                max_pixels: 191
            }
        );
        assert_eq!(
            err.to_string(),
            "image is 16x12, more than the 191 pixels this model takes at the image's own size"
        );
        assert_eq!(verify(bytes, &bound(191).for_model(&native)).unwrap_err(), err);
        assert_eq!(decode_rgb(bytes, &bound(191).for_model(&native)).unwrap_err(), err);
        assert!(decode_rgb(bytes, &bound(192).for_model(&native)).is_ok());
        // A model that resizes takes any image the other limits allow, and so do limits not yet
        // fitted to a model.
        assert!(decode_rgb(bytes, &bound(191).for_model(&resizing)).is_ok());
        assert!(decode_rgb(bytes, &bound(191)).is_ok());
    }
}

#[test]
fn zero_dimensions_are_errors() {
    assert!(decode_rgb(&jpeg_with_size(0, 12), &limits()).is_err());
    assert!(decode_rgb(&png_with_size(16, 0), &limits()).is_err());
}

/// xorshift: deterministic, no dependency.
fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// `original` with 1 to 4 random bytes overwritten.
fn mutate(original: &[u8], next: &mut impl FnMut() -> u64) -> Vec<u8> {
    let mut bytes = original.to_vec();
    for _ in 0..1 + next() % 4 {
        let i = (next() as usize) % bytes.len();
        bytes[i] = next() as u8;
    }
    bytes
}

#[test]
fn mutated_files_never_panic() {
    let mut next = xorshift(0x2545_F491_4F6C_DD1D);
    let (mut ok, mut failed) = (0, 0);
    for original in [JPEG, PNG] {
        for _ in 0..3000 {
            match decode_rgb(&mutate(original, &mut next), &limits()) {
                Ok(image) => {
                    assert_eq!(image.pixels.len(), image.width * image.height * 3);
                    ok += 1;
                }
                Err(_) => failed += 1,
            }
        }
    }
    assert!(
        ok > 0 && failed > 0,
        "mutations should produce both outcomes ({ok} ok, {failed} errors)"
    );
}

/// `original` with a marker (or a stuffed or fill byte) put in, a run of bytes cut out, bytes
/// added after the end, a segment (or a scan's data) cut out, or a byte of a segment's length or
/// parameters changed: what moves a scan's end, or its EOI, against its data.
fn splice(original: &[u8], next: &mut impl FnMut() -> u64) -> Vec<u8> {
    const CODES: [u8; 14] = [
        0xD9, 0xDA, 0xC4, 0xDB, 0xDD, 0xD0, 0xD7, 0xD8, 0x01, 0xFE, 0xE1, 0xDC, 0x00, 0xFF,
    ];
    let mut bytes = original.to_vec();
    let at = (next() as usize) % bytes.len();
    // Where 0xFF begins a marker (or what reads as one inside the data).
    let markers: Vec<usize> = (0..bytes.len() - 1)
        .filter(|&i| bytes[i] == 0xFF && !matches!(bytes[i + 1], 0x00 | 0xFF))
        .collect();
    let marker = |n: u64| markers.get((n as usize) % markers.len().max(1)).copied();
    match next() % 5 {
        0 => {
            let code = CODES[(next() as usize) % CODES.len()];
            bytes.splice(at..at, [0xFF, code]);
        }
        1 => {
            let end = (at + 1 + (next() as usize) % 8).min(bytes.len());
            bytes.drain(at..end);
        }
        3 => {
            if let Some(i) = marker(next()) {
                let end = markers.iter().find(|&&m| m > i).copied().unwrap_or(bytes.len());
                bytes.drain(i..end);
            }
        }
        4 => {
            if let Some(i) = marker(next()) {
                let target = i + 2 + (next() as usize) % 12;
                if let Some(b) = bytes.get_mut(target) {
                    *b = next() as u8;
                }
            }
        }
        _ => bytes.extend_from_slice(&[0xFF, 0xD9, 0x12, 0xFF, 0xDA][..1 + (next() as usize) % 5]),
    }
    bytes
}

/// `verify` (JPEG at 1/8 scale, less the entropy-coded data that cannot fail) accepts exactly
/// what `decode_rgb` accepts: on the fixtures (baseline, progressive, restart markers, grey,
/// arithmetic-coded, PNG, interlaced PNG, 16-bit grey PNG, decoded without the expansion the check does), every
/// truncation and thousands of mutations and splices.
#[test]
fn verify_reports_what_decode_reports() {
    let mut next = xorshift(0x9E37_79B9_7F4A_7C15);
    for original in [
        JPEG,
        PNG,
        RESTART_JPEG,
        GREY_JPEG,
        ARITHMETIC_JPEGS[0],
        ARITHMETIC_JPEGS[1],
        INTERLACED_PNGS[0].0,
        INTERLACED_PNGS[1].0,
        INTERLACED_PNGS[2].0,
        &encode_jpeg(64, 48, true)[..],
        &encode_jpeg(64, 48, false)[..],
        &png16(png::ColorType::Grayscale, 24, &grey16_gradient(24, 16), Some(&[0, 7])),
    ] {
        let mut cases: Vec<Vec<u8>> = (1..original.len()).map(|cut| original[..cut].to_vec()).collect();
        cases.extend((0..2000).map(|_| mutate(original, &mut next)));
        cases.extend((0..2000).map(|_| splice(original, &mut next)));
        cases.push(original.to_vec());
        for bytes in cases {
            let decoded = decode_rgb(&bytes, &limits());
            let verified = verify(&bytes, &limits());
            assert_eq!(
                verified.is_ok(),
                decoded.is_ok(),
                "verify {verified:?} but decode {:?}",
                decoded.map(|i| (i.width, i.height))
            );
            if let (Ok(p), Ok(image)) = (verified, decoded) {
                assert_eq!((p.width, p.height), (image.width, image.height));
            }
        }
    }
}

fn grey16_gradient(width: usize, height: usize) -> Vec<u16> {
    (0..width * height).map(|i| (i * 173) as u16).collect()
}

/// A gradient JPEG from libjpeg-turbo's encoder, progressive or baseline.
fn encode_jpeg(width: usize, height: usize, progressive: bool) -> Vec<u8> {
    let pixels: Vec<u8> = (0..width * height * 3).map(|i| (i % 251) as u8).collect();
    let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
    c.set_size(width, height);
    c.set_quality(85.0);
    if progressive {
        c.set_progressive_mode();
    } else {
        c.set_fastest_defaults();
    }
    let mut started = c.start_compress(Vec::new()).unwrap();
    started.write_scanlines(&pixels).unwrap();
    let bytes = started.finish().unwrap();
    let sof = if progressive { [0xFF, 0xC2] } else { [0xFF, 0xC0] };
    assert!(bytes.windows(2).any(|w| w == sof), "not the JPEG kind asked for");
    bytes
}

/// Checking a progressive JPEG holds every DCT coefficient (libjpeg buffers the whole image for
/// its several scans): it is charged for them; a baseline one needs a few rows.
#[test]
fn progressive_jpegs_are_charged_for_their_coefficient_buffers() {
    let (w, h) = (640, 480);
    let progressive = inspect(&encode_jpeg(w, h, true), &limits()).unwrap();
    let baseline = inspect(&encode_jpeg(w, h, false), &limits()).unwrap();
    // 4:2:0: 80 x 60 luma blocks and 40 x 30 per chroma plane, 128 bytes each.
    assert!(
        progressive.verify_bytes >= (80 * 60 + 2 * 40 * 30) * 128,
        "{progressive:?}"
    );
    assert!(baseline.verify_bytes < progressive.verify_bytes, "{baseline:?}");
    assert!(baseline.verify_bytes < 2 << 20, "{baseline:?}");
    let png = inspect(PNG, &limits()).unwrap();
    assert!(png.verify_bytes < 2 << 20, "{png:?}");
}

/// A progressive grey JPEG of one DC first scan in which every block adds 32767 to the DC value:
/// past `i32::MAX` after 65,539 blocks, where libjpeg stops with an error (the one failure a
/// scan's data can cause; the check keeps such scans' data for it).
fn dc_overflow_jpeg(width: u16, height: u16) -> Vec<u8> {
    let mut file = vec![0xFF, 0xD8];
    file.extend_from_slice(&[0xFF, 0xDB, 0x00, 0x43, 0x00]);
    file.extend_from_slice(&[1; 64]);
    let [h1, h0] = height.to_be_bytes();
    let [w1, w0] = width.to_be_bytes();
    file.extend_from_slice(&[0xFF, 0xC2, 0x00, 0x0B, 8, h1, h0, w1, w0, 1, 1, 0x11, 0]);
    // DC table 0: one code, "0", for category 15.
    file.extend_from_slice(&[0xFF, 0xC4, 0x00, 0x14, 0x00, 1]);
    file.extend_from_slice(&[0; 15]);
    file.push(15);
    // One component, DC first (Ss 0, Se 0, Ah 0, Al 0).
    file.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 1, 1, 0x00, 0, 0, 0]);
    let blocks = usize::from(width).div_ceil(8) * usize::from(height).div_ceil(8);
    for _ in 0..blocks {
        // "0" then 15 one bits: +32767; the 0xFF byte stuffed.
        file.extend_from_slice(&[0x7F, 0xFF, 0x00]);
    }
    file.extend_from_slice(&[0xFF, 0xD9]);
    file
}

#[test]
fn a_dc_value_past_i32_is_refused_by_the_check_as_by_the_decode() {
    let within = dc_overflow_jpeg(2048, 2040); // 65,280 blocks
    assert!(decode_rgb(&within, &limits()).is_ok());
    assert!(verify(&within, &limits()).is_ok());
    let past = dc_overflow_jpeg(2048, 2056); // 65,792 blocks
    let decoded = decode_rgb(&past, &limits()).unwrap_err();
    assert!(
        matches!(&decoded, ImageError::Corrupt(why) if why.contains("DCT coefficient")),
        "{decoded:?}"
    );
    assert_eq!(verify(&past, &limits()).unwrap_err(), decoded);
}

/// A 16-bit PNG `width` samples of `color` wide, as many rows as `samples` fill.
fn png16(color: png::ColorType, width: usize, samples: &[u16], trns: Option<&[u8]>) -> Vec<u8> {
    let height = samples.len() / (width * color.samples());
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width as u32, height as u32);
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Sixteen);
    if let Some(trns) = trns {
        encoder.set_trns(trns);
    }
    let data: Vec<u8> = samples.iter().flat_map(|s| s.to_be_bytes()).collect();
    encoder.write_header().unwrap().write_image_data(&data).unwrap();
    out
}

/// Interlaced PNGs (written by pypng; Pillow writes none), with Pillow's `convert("RGB")`
/// pixels: 8-bit RGB, 4-bit grey, 16-bit grey (clamped) at 37x23, and 3x2 RGBA (empty passes).
const INTERLACED_PNGS: [(&[u8], &[u8]); 4] = [
    (
        include_bytes!("fixtures/interlaced_rgb.png"),
        include_bytes!("fixtures/interlaced_rgb.png.rgb"),
    ),
    (
        include_bytes!("fixtures/interlaced_grey4.png"),
        include_bytes!("fixtures/interlaced_grey4.png.rgb"),
    ),
    (
        include_bytes!("fixtures/interlaced_grey16.png"),
        include_bytes!("fixtures/interlaced_grey16.png.rgb"),
    ),
    (
        include_bytes!("fixtures/interlaced_tiny_rgba.png"),
        include_bytes!("fixtures/interlaced_tiny_rgba.png.rgb"),
    ),
];

#[test]
fn interlaced_pngs_decode_to_pillows_pixels() {
    for (bytes, pixels) in INTERLACED_PNGS {
        let image = decode_rgb(bytes, &limits()).expect("decodes");
        assert_eq!(image.pixels.len(), image.width * image.height * 3);
        assert!(
            image.pixels == pixels,
            "{}x{}: not Pillow's pixels",
            image.width,
            image.height
        );
        verify(bytes, &limits()).expect("the web tier's check takes it");
    }
}

/// The chunks of a PNG: (offset, type, data length).
fn png_chunks(bytes: &[u8]) -> Vec<(usize, [u8; 4], usize)> {
    let mut chunks = Vec::new();
    let mut at = 8;
    while at + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        chunks.push((at, bytes[at + 4..at + 8].try_into().unwrap(), len));
        at += 12 + len;
    }
    chunks
}

fn chunk(bytes: &[u8], kind: &[u8; 4]) -> (usize, usize) {
    let (at, _, len) = png_chunks(bytes).into_iter().find(|(_, k, _)| k == kind).unwrap();
    (at, len)
}

/// `text` as a tEXt chunk, with its CRC (flipped if `bad_crc`).
fn text_chunk(text: &[u8], bad_crc: bool) -> Vec<u8> {
    let mut chunk = (text.len() as u32).to_be_bytes().to_vec();
    chunk.extend_from_slice(b"tEXt");
    chunk.extend_from_slice(text);
    let crc = crc32fast::hash(&chunk[4..]) ^ u32::from(bad_crc);
    chunk.extend_from_slice(&crc.to_be_bytes());
    chunk
}

/// Pillow checks the CRC of each chunk before the image data, zlib's checksum of the image data
/// when it reads that far, and nothing after the last row: a bad IDAT CRC or a missing IEND
/// still reads (a 422 before), a bad IHDR CRC or zlib checksum does not.
#[test]
fn png_checksums_are_checked_where_pillow_checks_them() {
    let whole = decode_rgb(PNG, &limits()).unwrap();
    let flipped = |at: usize| {
        let mut bytes = PNG.to_vec();
        bytes[at] ^= 0x01;
        bytes
    };
    let (ihdr, ihdr_len) = chunk(PNG, b"IHDR");
    let (idat, idat_len) = chunk(PNG, b"IDAT");
    let (iend, _) = chunk(PNG, b"IEND");
    let idat_crc = idat + 8 + idat_len;
    let refused = [
        ("IHDR's CRC", flipped(ihdr + 8 + ihdr_len)),
        ("zlib's checksum", flipped(idat_crc - 1)),
        (
            "a tEXt chunk's CRC before IDAT",
            [&PNG[..idat], &text_chunk(b"k\0v", true), &PNG[idat..]].concat(),
        ),
    ];
    for (what, bytes) in refused {
        assert!(decode_rgb(&bytes, &limits()).is_err(), "{what} not checked");
        assert!(verify(&bytes, &limits()).is_err(), "{what} not checked by verify");
    }
    let read = [
        ("IDAT's CRC", flipped(idat_crc)),
        ("no IEND", PNG[..iend].to_vec()),
        (
            "a tEXt chunk's CRC after IDAT",
            [&PNG[..iend], &text_chunk(b"k\0v", true), &PNG[iend..]].concat(),
        ),
        (
            "a good tEXt chunk before IDAT",
            [&PNG[..idat], &text_chunk(b"k\0v", false), &PNG[idat..]].concat(),
        ),
    ];
    for (what, bytes) in read {
        assert_eq!(decode_rgb(&bytes, &limits()).as_ref(), Ok(&whole), "{what}");
        verify(&bytes, &limits()).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}

/// Pillow opens 16-bit grey as `I;16`, whose `convert("RGB")` clamps at 255 (the reference's
/// pixels, so ours); its other 16-bit modes keep each sample's high byte.
#[test]
fn sixteen_bit_grey_is_clamped_as_pillow_does_and_other_sixteen_bit_pngs_keep_their_high_byte() {
    let grey = [0, 1, 200, 255, 256, 0x1234, 65535];
    let clamped = [0u8, 1, 200, 255, 255, 255, 255];
    let rgb = |values: &[u8]| values.iter().flat_map(|&v| [v; 3]).collect::<Vec<u8>>();
    for trns in [None, Some(&[0x12u8, 0x34][..])] {
        let image = decode_rgb(&png16(png::ColorType::Grayscale, grey.len(), &grey, trns), &limits()).unwrap();
        assert_eq!(image.pixels, rgb(&clamped), "tRNS {trns:?}");
    }
    let grey_alpha: Vec<u16> = grey.iter().flat_map(|&g| [g, 0x8000]).collect();
    let image = decode_rgb(
        &png16(png::ColorType::GrayscaleAlpha, grey.len(), &grey_alpha, None),
        &limits(),
    )
    .unwrap();
    assert_eq!(image.pixels, rgb(&[0, 0, 0, 0, 1, 0x12, 255]));
    let image = decode_rgb(
        &png16(png::ColorType::Rgb, 1, &[0x0102, 0xA0FF, 0xFF00], None),
        &limits(),
    )
    .unwrap();
    assert_eq!(image.pixels, [1, 0xA0, 0xFF]);
}

/// Pillow's decoder stops once every row is out and the file has no more to give, so a segment
/// after the image data whose length runs past the end (no EOI) loses no pixel and is no error
/// (it was "Input file read error" here); a file whose data ends before its last row still is
/// truncated, and a marker there that libjpeg cannot read still refuses the file, as in Pillow.
#[test]
fn a_jpeg_whose_end_runs_past_the_file_after_its_last_row_is_read_as_pillow_reads_it() {
    let eoi = JPEG.len() - 2;
    assert_eq!(&JPEG[eoi..], [0xFF, 0xD9]);
    let with_end = |end: &[u8]| [&JPEG[..eoi], end].concat();
    let past_the_end = with_end(&[0xFF, 0xFE, 0x00, 0x40, b'a', b'b', b'c']);
    assert_eq!(decode_rgb(&past_the_end, &limits()).unwrap().pixels, JPEG_PIXELS);
    assert!(verify(&past_the_end, &limits()).is_ok());
    for (end, expected) in [
        (&[][..], ImageError::Truncated),
        (
            &[0xFF, 0xC4, 0x00, 0x05, 0x10, 0x00, 0x00, 0xFF, 0xD9][..],
            ImageError::Corrupt("Bogus marker length".into()),
        ),
    ] {
        let bytes = with_end(end);
        assert_eq!(decode_rgb(&bytes, &limits()), Err(expected), "{end:?}");
        assert!(verify(&bytes, &limits()).is_err(), "{end:?}");
    }
}

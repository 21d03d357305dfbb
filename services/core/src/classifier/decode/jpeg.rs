//! JPEG decoding through libjpeg-turbo (the bundled C source of `mozjpeg`), the decoder Pillow
//! uses: the same IDCT and chroma upsampling give bit-identical pixels. libjpeg reports fatal
//! errors by unwinding out of the C code; we catch that here and turn it into `ImageError`.

use std::os::raw::c_int;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use mozjpeg::{ColorSpace, Decompress};
use mozjpeg_sys::{jpeg_common_struct, jpeg_error_mgr, jpeg_std_error, JWRN_JPEG_EOF};

use super::{ImageError, ImageLimits, RgbImage};

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

pub fn dimensions(bytes: &[u8]) -> Result<(usize, usize), ImageError> {
    guarded(|| {
        let decompress = Decompress::with_err(error_manager()).from_mem(bytes).map_err(io)?;
        Ok(decompress.size())
    })
}

pub fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage, ImageError> {
    guarded(|| {
        let decompress = Decompress::with_err(error_manager()).from_mem(bytes).map_err(io)?;
        let (width, height) = decompress.size();
        limits.check(width, height)?;
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

//! Pillow's `Image.resize(size, BILINEAR)` for 8-bit RGB, ported operation for operation from
//! `libImaging/Resample.c` so that the output is bit-identical: a triangle filter with half-pixel
//! centres whose support widens with the scale when downscaling, coefficients in f64 turned into
//! 22-bit fixed point, one pass rounded to u8, then the other, in Pillow's order (`vertical_first`).

use super::decode::RgbImage;

const PRECISION_BITS: u32 = 32 - 8 - 2;
const BILINEAR_SUPPORT: f64 = 1.0;

fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// For each output index, the first input index and fixed-point weights of the inputs it reads.
struct Coefficients {
    /// Weights per output position, `ksize` apart; only the first `bounds[i].1` of each are used.
    weights: Vec<i32>,
    bounds: Vec<(usize, usize)>,
    ksize: usize,
}

impl Coefficients {
    /// `precompute_coeffs` + `normalize_coeffs_8bpc` for the box `[0, in_size)`.
    fn new(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = BILINEAR_SUPPORT * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut weights = vec![0i32; out_size * ksize];
        let mut bounds = Vec::with_capacity(out_size);
        let mut k = vec![0f64; ksize];
        for xx in 0..out_size {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's (int) cast truncates toward zero, as `as i64` does.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
            let mut ww = 0.0;
            for (x, w) in k.iter_mut().enumerate().take(xmax) {
                *w = bilinear((x as f64 + xmin as f64 - center + 0.5) * ss);
                ww += *w;
            }
            let row = &mut weights[xx * ksize..(xx + 1) * ksize];
            for (x, w) in k.iter().enumerate().take(xmax) {
                let w = if ww != 0.0 { w / ww } else { *w };
                let fixed = w * f64::from(1u32 << PRECISION_BITS);
                row[x] = if w < 0.0 {
                    (-0.5 + fixed) as i32
                } else {
                    (0.5 + fixed) as i32
                };
            }
            bounds.push((xmin, xmax));
        }
        Self { weights, bounds, ksize }
    }

    fn get(&self, out: usize) -> (usize, &[i32]) {
        let (min, len) = self.bounds[out];
        (min, &self.weights[out * self.ksize..out * self.ksize + len])
    }
}

fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

const ROUNDING: i32 = 1 << (PRECISION_BITS - 1);

/// Resizes `src` to `width` x `height` exactly as Pillow's BILINEAR filter does.
pub fn resize_bilinear(src: &RgbImage, width: usize, height: usize) -> RgbImage {
    assert!(width > 0 && height > 0, "resize target must not be empty");
    let need_horizontal = width != src.width;
    let need_vertical = height != src.height;
    let horiz = Coefficients::new(src.width, width);
    let vert = Coefficients::new(src.height, height);
    if vertical_first(src, width, height) {
        let temp = vertical_pass(src, &vert, 0);
        return if need_horizontal {
            horizontal_pass(&temp, &horiz, 0, height)
        } else {
            temp
        };
    }
    // Only the source rows that the vertical pass reads go through the horizontal pass.
    let first_row = vert.bounds[0].0;
    let last_row = vert.bounds[height - 1].0 + vert.bounds[height - 1].1;
    let (temp, row_offset) = if need_horizontal {
        (horizontal_pass(src, &horiz, first_row, last_row - first_row), first_row)
    } else {
        (src.clone(), 0)
    };
    if need_vertical {
        vertical_pass(&temp, &vert, row_offset)
    } else {
        temp
    }
}

/// Pillow 13 (`ImagingResampleInner`) runs the vertical pass first when the height shrinks by
/// more than twice as many pixels as the width does. The image between the passes is rounded to
/// 8 bits, so the order shows in the pixels: tall images (a 300x5000 strip, a 223-wide portrait)
/// came out one step off in a sixth of their values when this always went horizontal first.
fn vertical_first(src: &RgbImage, width: usize, height: usize) -> bool {
    let shrink_height = src.height as i64 - height as i64;
    let shrink_width = src.width as i64 - width as i64;
    shrink_height > 0 && shrink_height > shrink_width * 2
}

/// `ImagingResampleHorizontal_8bpc`: rows `first_row..first_row + rows` of `src` to `horiz`'s
/// width.
fn horizontal_pass(src: &RgbImage, horiz: &Coefficients, first_row: usize, rows: usize) -> RgbImage {
    let width = horiz.bounds.len();
    let mut out = vec![0u8; width * rows * 3];
    for y in 0..rows {
        let line = &src.pixels[(y + first_row) * src.width * 3..(y + first_row + 1) * src.width * 3];
        for xx in 0..width {
            let (xmin, k) = horiz.get(xx);
            let mut ss = [ROUNDING; 3];
            for (x, &w) in k.iter().enumerate() {
                let p = &line[(x + xmin) * 3..(x + xmin) * 3 + 3];
                for c in 0..3 {
                    ss[c] += i32::from(p[c]) * w;
                }
            }
            let o = (y * width + xx) * 3;
            for c in 0..3 {
                out[o + c] = clip8(ss[c]);
            }
        }
    }
    RgbImage::new(width, rows, out)
}

/// `ImagingResampleVertical_8bpc`: `src` to `vert`'s height, `src`'s first row being source row
/// `row_offset`.
fn vertical_pass(src: &RgbImage, vert: &Coefficients, row_offset: usize) -> RgbImage {
    let height = vert.bounds.len();
    let stride = src.width * 3;
    let mut out = vec![0u8; stride * height];
    // Taps outer, pixels inner: the inner loop is a plain multiply-add over a row, which the
    // compiler vectorizes. Same sums in the same integer arithmetic as Pillow.
    let mut acc = vec![0i32; stride];
    for yy in 0..height {
        let (ymin, k) = vert.get(yy);
        let ymin = ymin - row_offset;
        acc.fill(ROUNDING);
        for (y, &w) in k.iter().enumerate() {
            let row = &src.pixels[(y + ymin) * stride..(y + ymin + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += i32::from(p) * w;
            }
        }
        for (d, &a) in out[yy * stride..(yy + 1) * stride].iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
    RgbImage::new(src.width, height, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(width: usize, height: usize, f: impl Fn(usize, usize, usize) -> u8) -> RgbImage {
        let mut px = Vec::new();
        for y in 0..height {
            for x in 0..width {
                for c in 0..3 {
                    px.push(f(x, y, c));
                }
            }
        }
        RgbImage::new(width, height, px)
    }

    #[test]
    fn same_size_is_identity() {
        let img = image(5, 4, |x, y, c| (x * 40 + y * 7 + c) as u8);
        assert_eq!(resize_bilinear(&img, 5, 4), img);
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = image(7, 3, |_, _, c| [10, 128, 255][c]);
        let out = resize_bilinear(&img, 224, 224);
        assert!(out.pixels.chunks(3).all(|p| p == [10, 128, 255]));
        let out = resize_bilinear(&image(500, 333, |_, _, c| [10, 128, 255][c]), 224, 224);
        assert!(out.pixels.chunks(3).all(|p| p == [10, 128, 255]));
    }

    /// Values produced by Pillow 13: `Image.frombytes("RGB", (2, 1), bytes([0,0,0, 255,255,255]))
    /// .resize((4, 1), Image.BILINEAR)` and `.resize((1, 1), ...)` of the 2x2 image below.
    #[test]
    fn matches_pillow_on_known_pixels() {
        let img = image(2, 1, |x, _, _| if x == 0 { 0 } else { 255 });
        let out = resize_bilinear(&img, 4, 1);
        let red: Vec<u8> = out.pixels.chunks(3).map(|p| p[0]).collect();
        assert_eq!(red, [0, 64, 191, 255]);

        let img = image(2, 2, |x, y, _| [[0, 100], [200, 255]][y][x]);
        assert_eq!(resize_bilinear(&img, 1, 1).pixels, [139, 139, 139]);
    }

    /// Pillow 13's pixels for `Image.fromarray(...).resize((w, h), Image.BILINEAR)` of the pattern
    /// below: a tall image shrunk vertical pass first, and two whose passes run horizontal first
    /// (a wide one, and a portrait whose height shrinks by less than twice its width). Each order
    /// rounds differently: the other order is off in 7, 8 and 14 of these values.
    #[test]
    fn passes_run_in_pillows_order() {
        let pattern = |x: usize, y: usize, c: usize| ((x * 37 + y * 11 + c * 5 + (x * y) % 7 * 13) % 256) as u8;
        let vertical_first: [u8; 36] = [
            96, 101, 106, 142, 147, 152, 147, 152, 148, 134, 123, 111, 140, 134, 139, 104, 109, 114, 110, 115, 117,
            124, 129, 133, 117, 118, 123, 150, 155, 160, 134, 139, 144, 103, 108, 113,
        ];
        assert_eq!(resize_bilinear(&image(5, 40, pattern), 4, 3).pixels, vertical_first);
        let wide: [u8; 36] = [
            100, 105, 110, 109, 114, 119, 116, 121, 126, 120, 124, 108, 128, 114, 114, 121, 119, 124, 137, 140, 124,
            143, 129, 129, 132, 131, 136, 109, 114, 119, 112, 117, 122, 121, 126, 131,
        ];
        assert_eq!(resize_bilinear(&image(40, 6, pattern), 3, 4).pixels, wide);
        let portrait: [u8; 108] = [
            69, 74, 79, 146, 151, 145, 68, 73, 73, 139, 144, 149, 110, 115, 120, 177, 182, 136, 84, 89, 86, 181, 186,
            165, 139, 144, 149, 126, 110, 112, 88, 93, 98, 160, 165, 168, 142, 147, 152, 130, 119, 124, 102, 107, 112,
            164, 169, 174, 144, 149, 143, 89, 94, 79, 128, 133, 138, 121, 126, 97, 146, 151, 153, 92, 97, 96, 142, 147,
            141, 103, 108, 78, 130, 135, 140, 85, 90, 95, 145, 150, 153, 83, 88, 90, 125, 130, 135, 116, 121, 126, 163,
            168, 173, 94, 99, 104, 88, 93, 98, 139, 144, 149, 148, 153, 158, 92, 97, 102,
        ];
        assert_eq!(resize_bilinear(&image(12, 20, pattern), 4, 9).pixels, portrait);
    }
}

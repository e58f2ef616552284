//! Downscaling I420 frames by area averaging: each output pixel is the mean of the source
//! area it covers (fractional pixels weighted). Unlike bilinear sampling this keeps thin
//! lines and small text legible at any ratio, which matters for shared screens. Separable,
//! fixed point: a vertical pass per output row (vectorises), then a horizontal pass.

use p2pcall_media_io::Frame;

/// Weights are fixed point with this many fraction bits and sum to exactly `1 << BITS`.
const BITS: u32 = 14;

/// For each output position, the first source index and its weights.
#[derive(Debug)]
struct Taps {
    start: Vec<usize>,
    /// `(offset into weights, count)` per output position.
    span: Vec<(usize, usize)>,
    weights: Vec<u32>,
}

impl Taps {
    fn new(src: usize, dst: usize) -> Taps {
        // In units of 1/(src*dst): source pixel j covers [j*dst, (j+1)*dst), output pixel i
        // covers [i*src, (i+1)*src).
        let mut taps = Taps {
            start: Vec::with_capacity(dst),
            span: Vec::with_capacity(dst),
            weights: Vec::new(),
        };
        let one = 1u64 << BITS;
        for i in 0..dst {
            let (a, b) = ((i * src) as u64, ((i + 1) * src) as u64);
            let first = (a / dst as u64) as usize;
            let last = (b.div_ceil(dst as u64) as usize).min(src);
            let offset = taps.weights.len();
            // Cumulative rounding makes the weights sum to exactly `one`.
            let mut done = 0u64;
            for j in first..last {
                let end = (((j + 1) * dst) as u64).min(b);
                let cumulative = ((end - a) * one + src as u64 / 2) / src as u64;
                taps.weights.push((cumulative - done) as u32);
                done = cumulative;
            }
            taps.start.push(first);
            taps.span.push((offset, last - first));
        }
        taps
    }

    fn of(&self, i: usize) -> (usize, &[u32]) {
        let (offset, count) = self.span[i];
        (self.start[i], &self.weights[offset..offset + count])
    }
}

/// One plane, `sw × sh` → `dw × dh` (each no larger than the source).
fn plane(src: &[u8], sw: usize, sh: usize, dw: usize, dh: usize) -> Vec<u8> {
    let (tx, ty) = (Taps::new(sw, dw), Taps::new(sh, dh));
    let mut out = vec![0u8; dw * dh];
    let mut acc = vec![0u32; sw];
    for (oy, out_row) in out.chunks_exact_mut(dw).enumerate() {
        let (first, weights) = ty.of(oy);
        acc.iter_mut().for_each(|a| *a = 0);
        for (k, &w) in weights.iter().enumerate() {
            let row = &src[(first + k) * sw..][..sw];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += w * u32::from(p);
            }
        }
        // 255 << 14 → 8.8 fixed point, so the horizontal sum stays within u32.
        acc.iter_mut().for_each(|a| *a = (*a + (1 << 5)) >> 6);
        for (ox, o) in out_row.iter_mut().enumerate() {
            let (first, weights) = tx.of(ox);
            let sum: u32 = acc[first..first + weights.len()]
                .iter()
                .zip(weights)
                .map(|(&a, &w)| a * w)
                .sum();
            *o = ((sum + (1 << 21)) >> 22).min(255) as u8;
        }
    }
    out
}

/// `f` scaled down to `width × height` (even, no larger than `f`).
pub(crate) fn down(f: &Frame, width: usize, height: usize) -> Frame {
    if (f.width, f.height) == (width, height) {
        return f.clone();
    }
    let (cw, ch) = (f.width / 2, f.height / 2);
    Frame {
        width,
        height,
        y: plane(&f.y, f.width, f.height, width, height),
        u: plane(&f.u, cw, ch, width / 2, height / 2),
        v: plane(&f.v, cw, ch, width / 2, height / 2),
    }
}

/// The largest even size within `max_width × max_height` (0: no limit) with the aspect ratio
/// of `width × height` (even); never larger than the source.
pub(crate) fn fit(width: usize, height: usize, max_width: u32, max_height: u32) -> (usize, usize) {
    let limit = |m: u32, own: usize| if m == 0 { own } else { (m as usize).min(own) };
    let (mw, mh) = (limit(max_width, width), limit(max_height, height));
    if width <= mw && height <= mh {
        return (width, height);
    }
    let even = |v: usize| (v & !1).max(2);
    if width * mh > height * mw {
        let w = even(mw);
        (w, even(height * w / width))
    } else {
        let h = even(mh);
        (even(width * h / height), h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_cover_each_output_exactly() {
        for (src, dst) in [
            (1920, 1280),
            (1080, 720),
            (7, 3),
            (100, 99),
            (5, 5),
            (1366, 2),
        ] {
            let t = Taps::new(src, dst);
            for i in 0..dst {
                let (first, w) = t.of(i);
                assert_eq!(w.iter().sum::<u32>(), 1 << BITS, "{src}->{dst} at {i}");
                assert!(first + w.len() <= src);
            }
        }
    }

    #[test]
    fn flat_stays_flat_and_halving_averages_blocks() {
        let mut f = Frame::new(8, 4);
        f.y.iter_mut().for_each(|p| *p = 200);
        let s = down(&f, 6, 2);
        assert!(s.y.iter().all(|&p| p == 200), "{:?}", s.y);
        assert!(s.u.iter().all(|&p| p == 128));
        // Halving the width: each output is the mean of two neighbours.
        let mut g = Frame::new(4, 2);
        g.y = vec![0, 100, 10, 30, 50, 50, 20, 40];
        let h = down(&g, 2, 2);
        assert_eq!(h.y, vec![50, 20, 50, 30]);
        // A one-pixel line survives a 3:1 reduction as a third of its contrast.
        let mut l = Frame::new(12, 6);
        l.y.iter_mut().for_each(|p| *p = 0);
        for row in 0..6 {
            l.y[row * 12 + 4] = 255;
        }
        let s = down(&l, 4, 2);
        assert_eq!(s.y[1], 85, "{:?}", s.y);
    }

    #[test]
    fn fit_keeps_the_aspect_ratio_and_even_sizes() {
        assert_eq!(fit(1920, 1080, 1280, 720), (1280, 720));
        assert_eq!(fit(1920, 1080, 0, 0), (1920, 1080));
        assert_eq!(fit(1920, 1080, 4000, 4000), (1920, 1080));
        assert_eq!(fit(1920, 1200, 1280, 720), (1152, 720));
        assert_eq!(fit(800, 1000, 1280, 720), (576, 720));
        assert_eq!(fit(1000, 400, 640, 0), (640, 256));
        assert_eq!(fit(642, 2, 320, 320), (320, 2));
    }
}

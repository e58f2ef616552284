//! A synthetic video source whose pixels carry the frame number and capture time.
//!
//! Each frame has moving content (diagonal bars that scroll and a box that travels, so an
//! encoder has real motion to code) and, in its top 32 rows, a code strip: 64 blocks encoding
//! the frame number (32 bits) and the capture time in ms (32 bits), black or white, then the
//! same 64 blocks inverted. A receiver reads them back with [`decode`]; the inverted copy
//! rejects strips damaged by loss or heavy compression.

use crate::Frame;

/// Rows of one code line.
const CODE_ROWS: usize = 16;
const BITS: usize = 64;

/// The test pattern generator.
#[derive(Debug, Clone, Copy)]
pub struct TestPattern {
    /// Width (even, ≥ 128).
    pub width: usize,
    /// Height (even, ≥ 64).
    pub height: usize,
}

impl TestPattern {
    /// A generator for `width × height` frames.
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            width: width.max(128) & !1,
            height: height.max(64) & !1,
        }
    }

    /// Frame `n`, stamped with `capture_ms`.
    pub fn frame(&self, n: u32, capture_ms: u32) -> Frame {
        let (w, h) = (self.width, self.height);
        let mut f = Frame::new(w, h);
        let shift = n as usize * 4;
        for y in 0..h {
            for x in 0..w {
                let bar = ((x + y + shift) / 24) % 8;
                f.y[y * w + x] = 40 + (bar as u8) * 24;
            }
        }
        // A box travelling across the frame.
        let bw = (w / 8).max(8);
        let bh = (h / 6).max(8);
        let bx = (n as usize * 6) % (w - bw);
        let by = 2 * CODE_ROWS + (n as usize * 3) % (h - bh - 2 * CODE_ROWS);
        for y in by..by + bh {
            for x in bx..bx + bw {
                f.y[y * w + x] = 230;
            }
        }
        for (i, c) in f.u.iter_mut().enumerate() {
            *c = 128u8.wrapping_add(((i + shift) % 64) as u8);
        }
        for (i, c) in f.v.iter_mut().enumerate() {
            *c = 160u8.wrapping_sub(((i / 7 + shift) % 48) as u8);
        }
        let word = (u64::from(n) << 32) | u64::from(capture_ms);
        let bw = w / BITS;
        for bit in 0..BITS {
            let one = word >> (63 - bit) & 1 == 1;
            for row in 0..2 * CODE_ROWS {
                let inverted = row >= CODE_ROWS;
                let white = one != inverted;
                let v = if white { 235 } else { 16 };
                for x in bit * bw..(bit + 1) * bw {
                    f.y[row * w + x] = v;
                }
            }
        }
        f
    }
}

/// Reads the frame number and capture time back; `None` if the strip is damaged.
pub fn decode(f: &Frame) -> Option<(u32, u32)> {
    let w = f.width;
    let bw = w / BITS;
    if bw < 2 || f.height < 2 * CODE_ROWS {
        return None;
    }
    let block = |bit: usize, row0: usize| -> u32 {
        // Average the block's centre, away from edges blurred by the codec.
        let (x0, x1) = (bit * bw + bw / 4, (bit + 1) * bw - bw / 4);
        let (y0, y1) = (row0 + 4, row0 + CODE_ROWS - 4);
        let mut sum = 0u32;
        let mut n = 0u32;
        for y in y0..y1 {
            for x in x0..x1.max(x0 + 1) {
                sum += u32::from(f.y[y * w + x]);
                n += 1;
            }
        }
        sum / n.max(1)
    };
    let mut word = 0u64;
    for bit in 0..BITS {
        let (a, b) = (block(bit, 0), block(bit, CODE_ROWS));
        let one = a > 125;
        // The inverted copy must say the opposite, with a clear margin.
        if (b > 125) == one || a.abs_diff(b) < 80 {
            return None;
        }
        word = word << 1 | u64::from(one);
    }
    Some(((word >> 32) as u32, word as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_read_back_at_every_size() {
        for (w, h) in [(320, 240), (640, 360), (1280, 720), (1920, 1080)] {
            let p = TestPattern::new(w, h);
            for n in [0u32, 1, 77, u32::MAX] {
                let f = p.frame(n, n.wrapping_mul(33));
                assert_eq!(
                    decode(&f),
                    Some((n, n.wrapping_mul(33))),
                    "{w}x{h} frame {n}"
                );
            }
        }
    }

    #[test]
    fn frames_move_and_damage_is_detected() {
        let p = TestPattern::new(320, 240);
        let (a, b) = (p.frame(1, 0), p.frame(2, 0));
        assert!(crate::psnr(&a, &b) < 20.0, "consecutive frames differ");
        let mut bad = a.clone();
        for x in 0..160 {
            bad.y[5 * 320 + x] = 128;
            for r in 0..32 {
                bad.y[r * 320 + x] = 128;
            }
        }
        assert_eq!(decode(&bad), None);
    }
}

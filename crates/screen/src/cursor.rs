//! The mouse cursor, drawn into captured BGRX pixels (X servers leave it out of `GetImage`).

/// A cursor image as XFixes hands it out: premultiplied ARGB, one `u32` per pixel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CursorImage {
    pub width: usize,
    pub height: usize,
    /// Hot spot, from the image's top-left corner.
    pub xhot: i32,
    pub yhot: i32,
    pub serial: u32,
    pub argb: Vec<u32>,
}

impl CursorImage {
    /// The image's rectangle `(x, y, w, h)` when the pointer is at `(px, py)`.
    pub fn rect_at(&self, px: i32, py: i32) -> (i32, i32, i32, i32) {
        (
            px - self.xhot,
            py - self.yhot,
            self.width as i32,
            self.height as i32,
        )
    }

    /// Blends the cursor, pointer at `(px, py)` in the buffer's coordinates, into BGRX rows of
    /// `stride` bytes, `width × height` pixels; clipped at the edges.
    pub fn draw(
        &self,
        buf: &mut [u8],
        stride: usize,
        width: usize,
        height: usize,
        px: i32,
        py: i32,
    ) {
        if self.argb.len() < self.width * self.height {
            return;
        }
        let (x0, y0, _, _) = self.rect_at(px, py);
        for cy in 0..self.height {
            let y = y0 + cy as i32;
            if y < 0 || y as usize >= height {
                continue;
            }
            let src = &self.argb[cy * self.width..(cy + 1) * self.width];
            // Columns of the cursor that land inside the buffer.
            let skip = (-x0).max(0) as usize;
            let end = ((width as i32 - x0).max(0) as usize).min(self.width);
            if skip >= end {
                continue;
            }
            let row = y as usize * stride;
            let start = row + (x0 + skip as i32) as usize * 4;
            let Some(dst) = buf.get_mut(start..start + (end - skip) * 4) else {
                continue;
            };
            for (d, &s) in dst.chunks_exact_mut(4).zip(&src[skip..end]) {
                let a = s >> 24;
                if a == 0 {
                    continue;
                }
                let keep = 255 - a;
                for (i, d) in d[..3].iter_mut().enumerate() {
                    // Premultiplied: out = src + dst × (255 − a) / 255.
                    let c = (s >> (8 * i)) & 0xff;
                    let t = u32::from(*d) * keep + 128;
                    *d = (c + ((t + (t >> 8)) >> 8)).min(255) as u8;
                }
            }
        }
    }
}

/// Whether two rectangles `(x, y, w, h)` overlap.
pub(crate) fn overlaps(a: (i32, i32, i32, i32), b: (i32, i32, i32, i32)) -> bool {
    a.0 < b.0 + b.2 && b.0 < a.0 + a.2 && a.1 < b.1 + b.3 && b.1 < a.1 + a.3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_blends_premultiplied_and_clips() {
        // 2×2 cursor: opaque red, half-transparent white (premultiplied 0x80 each), clear, clear.
        let cursor = CursorImage {
            width: 2,
            height: 2,
            xhot: 1,
            yhot: 1,
            serial: 1,
            argb: vec![0xffff_0000, 0x8080_8080, 0, 0],
        };
        let (w, h, stride) = (3, 2, 16);
        let mut buf = vec![0u8; stride * h];
        // Pointer at (1, 1): the cursor's top-left lands at (0, 0).
        cursor.draw(&mut buf, stride, w, h, 1, 1);
        assert_eq!(&buf[0..4], &[0, 0, 255, 0]);
        assert_eq!(&buf[4..8], &[128, 128, 128, 0]);
        assert_eq!(&buf[8..12], &[0, 0, 0, 0]);
        // Over white, half-transparent white stays white; partly off every edge: no panic.
        let mut white = vec![255u8; stride * h];
        cursor.draw(&mut white, stride, w, h, 2, 1);
        assert_eq!(&white[8..11], &[255, 255, 255]);
        for (px, py) in [(-5, -5), (0, 0), (3, 2), (100, 1), (1, 100)] {
            cursor.draw(&mut buf, stride, w, h, px, py);
        }
        cursor.draw(&mut buf, stride, w, h, 0, 1);
        // Half-transparent white over the red drawn before.
        assert_eq!(&buf[0..4], &[128, 128, 255, 0]);
        assert!(overlaps((0, 0, 2, 2), (1, 1, 2, 2)));
        assert!(!overlaps((0, 0, 2, 2), (2, 0, 2, 2)));
    }
}

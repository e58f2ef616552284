//! Planar YUV 4:2:0 (I420) frames and PSNR.

/// One I420 frame: full-resolution Y, half-resolution U and V.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Width in pixels (even).
    pub width: usize,
    /// Height in pixels (even).
    pub height: usize,
    /// Luma, `width × height`.
    pub y: Vec<u8>,
    /// Chroma U, `width/2 × height/2`.
    pub u: Vec<u8>,
    /// Chroma V, `width/2 × height/2`.
    pub v: Vec<u8>,
}

impl Frame {
    /// A mid-grey frame.
    pub fn new(width: usize, height: usize) -> Self {
        let c = (width / 2) * (height / 2);
        Self {
            width,
            height,
            y: vec![128; width * height],
            u: vec![128; c],
            v: vec![128; c],
        }
    }

    /// Bytes of one frame of this size.
    pub fn len_for(width: usize, height: usize) -> usize {
        width * height + 2 * (width / 2) * (height / 2)
    }
}

/// PSNR of the luma planes in dB (`f64::INFINITY` for identical planes).
pub fn psnr(a: &Frame, b: &Frame) -> f64 {
    if a.width != b.width || a.height != b.height {
        return 0.0;
    }
    let se: f64 =
        a.y.iter()
            .zip(&b.y)
            .map(|(x, y)| {
                let d = f64::from(*x) - f64::from(*y);
                d * d
            })
            .sum();
    let mse = se / a.y.len().max(1) as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0 * 255.0 / mse).log10()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_of_known_errors() {
        let a = Frame::new(16, 16);
        assert_eq!(psnr(&a, &a), f64::INFINITY);
        let mut b = a.clone();
        b.y.iter_mut().for_each(|p| *p += 1);
        assert!((psnr(&a, &b) - 48.13).abs() < 0.01);
    }
}

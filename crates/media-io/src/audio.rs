//! Synthetic audio at 48 kHz, mono, 16-bit: a tone and a speech-like signal (voiced bursts
//! with harmonics and pauses, so DTX and loss concealment have something realistic to do).

/// Sample rate.
pub const RATE: u32 = 48_000;
/// Samples per 20 ms frame.
pub const FRAME: usize = 960;

/// A sine tone.
#[derive(Debug, Clone)]
pub struct Tone {
    freq: f64,
    amp: f64,
    n: u64,
}

impl Tone {
    /// `freq` Hz at `amp` (0..1 of full scale).
    pub fn new(freq: f64, amp: f64) -> Self {
        Self { freq, amp, n: 0 }
    }

    /// The next 20 ms.
    pub fn frame(&mut self) -> Vec<i16> {
        (0..FRAME)
            .map(|_| {
                let t = self.n as f64 / f64::from(RATE);
                self.n += 1;
                (self.amp * 32767.0 * (2.0 * std::f64::consts::PI * self.freq * t).sin()) as i16
            })
            .collect()
    }
}

/// Speech-like: 120–220 Hz voiced syllables with five harmonics, 150–400 ms long,
/// separated by 80–500 ms pauses (deterministic from a seed).
#[derive(Debug, Clone)]
pub struct SpeechLike {
    n: u64,
    state: u64,
    /// Samples left in the current syllable or pause, and whether it is voiced.
    left: u64,
    voiced: bool,
    pitch: f64,
}

impl SpeechLike {
    /// A generator; the same seed gives the same signal.
    pub fn new(seed: u64) -> Self {
        Self {
            n: 0,
            state: seed | 1,
            left: 0,
            voiced: false,
            pitch: 150.0,
        }
    }

    fn rand(&mut self) -> f64 {
        // xorshift64*: deterministic, no dependency.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        (self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The next 20 ms.
    pub fn frame(&mut self) -> Vec<i16> {
        let mut out = Vec::with_capacity(FRAME);
        for _ in 0..FRAME {
            if self.left == 0 {
                self.voiced = !self.voiced;
                let ms = if self.voiced {
                    150.0 + 250.0 * self.rand()
                } else {
                    80.0 + 420.0 * self.rand()
                };
                self.left = (ms * 48.0) as u64;
                self.pitch = 120.0 + 100.0 * self.rand();
            }
            self.left -= 1;
            let t = self.n as f64 / f64::from(RATE);
            self.n += 1;
            let s = if self.voiced {
                (1..=5)
                    .map(|k| {
                        (2.0 * std::f64::consts::PI * self.pitch * k as f64 * t).sin() / k as f64
                    })
                    .sum::<f64>()
                    * 0.25
            } else {
                0.0
            };
            out.push((s * 32767.0) as i16);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tone_has_its_frequency_and_speech_has_pauses() {
        let mut t = Tone::new(1000.0, 0.5);
        let f = t.frame();
        let crossings = f.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
        assert!(
            (38..=42).contains(&crossings),
            "{crossings} zero crossings in 20 ms"
        );
        let mut s = SpeechLike::new(9);
        let frames: Vec<Vec<i16>> = (0..200).map(|_| s.frame()).collect();
        let silent = frames.iter().filter(|f| f.iter().all(|x| *x == 0)).count();
        assert!(silent > 20 && silent < 180, "{silent} silent frames of 200");
        assert_eq!(SpeechLike::new(9).frame(), SpeechLike::new(9).frame());
    }
}

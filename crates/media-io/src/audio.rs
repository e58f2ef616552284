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
        self.frame_marked(None)
    }

    /// The next 20 ms, whose first sample is captured at wall-clock `wall_ms`: the tone is
    /// twice as loud for [`BEACON_MS`] after every whole wall-clock second, a beacon that a
    /// [`BeaconDetector`] on the same host times (capture-to-playout latency).
    pub fn frame_at(&mut self, wall_ms: f64) -> Vec<i16> {
        self.frame_marked(Some(wall_ms))
    }

    fn frame_marked(&mut self, wall_ms: Option<f64>) -> Vec<i16> {
        (0..FRAME)
            .map(|i| {
                let t = self.n as f64 / f64::from(RATE);
                self.n += 1;
                let beacon = wall_ms.is_some_and(|w| {
                    (w + i as f64 * 1000.0 / f64::from(RATE)) % 1000.0 < BEACON_MS
                });
                let amp = if beacon { 2.0 * self.amp } else { self.amp };
                (amp * 32767.0 * (2.0 * std::f64::consts::PI * self.freq * t).sin()) as i16
            })
            .collect()
    }
}

/// Length of a tone's beacon, ms.
pub const BEACON_MS: f64 = 10.0;

/// Finds the beacons of [`Tone::frame_at`] in played audio and times them.
#[derive(Debug, Clone, Default)]
pub struct BeaconDetector {
    /// Squares of the last window of samples (one 440 Hz period), and their sum.
    window: std::collections::VecDeque<f64>,
    sum: f64,
    /// Running mean-square level outside beacons.
    base: Option<f64>,
    in_beacon: bool,
    /// Samples seen.
    seen: u64,
}

/// Window of the level measurement: one period of the 440 Hz tone.
const BEACON_WINDOW: usize = 109;

impl BeaconDetector {
    /// A detector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds audio whose first sample plays at wall-clock `wall_ms`; returns the latency of
    /// each beacon that starts in it (ms since the whole second it was captured at; valid
    /// for latencies under a second).
    pub fn feed(&mut self, pcm: &[i16], wall_ms: f64) -> Vec<f64> {
        let mut found = Vec::new();
        for (i, &x) in pcm.iter().enumerate() {
            let sq = f64::from(x) * f64::from(x);
            self.window.push_back(sq);
            self.sum += sq;
            if self.window.len() > BEACON_WINDOW {
                self.sum -= self.window.pop_front().unwrap_or(0.0);
            }
            self.seen += 1;
            if self.window.len() < BEACON_WINDOW {
                continue;
            }
            let ms = self.sum.max(0.0) / BEACON_WINDOW as f64;
            let Some(base) = self.base else {
                if self.seen > 4800 {
                    self.base = Some(ms);
                }
                continue;
            };
            // A doubled amplitude is 4x the mean square; with a fraction f of the window
            // in the beacon the ratio is 1 + 3f: 2.25x (f = 5/12) marks the onset.
            if !self.in_beacon && base > 1e4 && ms > 2.25 * base {
                self.in_beacon = true;
                let onset = i as f64 - 5.0 / 12.0 * BEACON_WINDOW as f64;
                let at = wall_ms + onset * 1000.0 / f64::from(RATE);
                found.push(at.rem_euclid(1000.0));
            } else if self.in_beacon && ms < 1.5 * base {
                self.in_beacon = false;
            } else if !self.in_beacon && ms < 1.5 * base {
                // Follows the level slowly (gain changes, concealment).
                self.base = Some(base * 0.999 + ms * 0.001);
            }
        }
        found
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

    #[test]
    fn beacons_are_timed_to_the_millisecond() {
        // Captured from wall-clock 10_500 ms in 20 ms frames; played 37.25 ms later.
        let (mut t, mut d) = (Tone::new(440.0, 0.3), BeaconDetector::new());
        let mut got = Vec::new();
        for n in 0..150 {
            let cap = 10_500.0 + 20.0 * f64::from(n);
            got.extend(d.feed(&t.frame_at(cap), cap + 37.25));
        }
        // Beacons at 11 000, 12 000 and 13 000 (the frames end at 13 500).
        assert_eq!(got.len(), 3, "{got:?}");
        for g in got {
            assert!((g - 37.25).abs() < 0.5, "{g}");
        }
        // Without beacons, nothing is found.
        let mut plain = BeaconDetector::new();
        assert!((0..150).all(|_| plain.feed(&t.frame(), 0.0).is_empty()));
    }
}

//! The ring of an incoming call on the speaker: 425 Hz (the ITU/European ring tone), one
//! second on, four seconds off, with 10 ms fades so it does not click. Stops when dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use p2pcall_devices::Speaker;

use super::media::SpeakerChoice;

/// Sample rate of the ring.
pub const RATE: u32 = 48_000;
/// Tone frequency, Hz.
pub const TONE_HZ: f64 = 425.0;
/// On, then off, seconds.
pub const CADENCE: (f64, f64) = (1.0, 4.0);
const FADE_S: f64 = 0.010;
const LEVEL: f64 = 0.25 * i16::MAX as f64;
/// Samples handed to the speaker at a time.
const CHUNK: usize = 960;

/// Sample `n` of the ring (counted from its start).
pub fn sample(n: u64) -> i16 {
    let t = n as f64 / f64::from(RATE);
    let period = CADENCE.0 + CADENCE.1;
    let phase = t % period;
    if phase >= CADENCE.0 {
        return 0;
    }
    let fade = (phase / FADE_S).min((CADENCE.0 - phase) / FADE_S).min(1.0);
    (LEVEL * fade * (2.0 * std::f64::consts::PI * TONE_HZ * t).sin()) as i16
}

/// A ring playing on a speaker thread.
#[derive(Debug)]
pub struct Ringer {
    stop: Arc<AtomicBool>,
}

impl Ringer {
    /// Rings on the chosen speaker. `None` when there is nothing to ring on (no sound card,
    /// `off`, or the device cannot be opened): a missing speaker is not an error here.
    pub fn start(choice: &SpeakerChoice) -> Option<Ringer> {
        let name = match choice {
            SpeakerChoice::Off => return None,
            SpeakerChoice::Auto => None,
            SpeakerChoice::Device(d) => Some(d.clone()),
        };
        if name.is_none()
            && p2pcall_devices::list::list_devices()
                .speakers
                .why_none
                .is_some()
        {
            return None;
        }
        let mut speaker = match Speaker::open(name.as_deref()) {
            Ok(s) => s,
            Err(e) => {
                tracing::info!("no ring: {e}");
                return None;
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::Builder::new()
            .name("ring".into())
            .spawn(move || {
                let mut n = 0u64;
                let mut buf = Vec::with_capacity(CHUNK);
                while !s.load(Ordering::Relaxed) {
                    // Keep ~60 ms queued: a stop is heard within that.
                    if speaker.queued_ms() > 60 {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    buf.clear();
                    buf.extend((n..n + CHUNK as u64).map(sample));
                    n += CHUNK as u64;
                    if speaker.play(&buf).is_err() {
                        return;
                    }
                }
            })
            .ok()?;
        Some(Ringer { stop })
    }
}

impl Drop for Ringer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_is_one_second_of_tone_then_four_of_silence() {
        let rate = u64::from(RATE);
        let energy = |from: f64, to: f64| -> f64 {
            let (a, b) = ((from * rate as f64) as u64, (to * rate as f64) as u64);
            (a..b).map(|n| f64::from(sample(n)).powi(2)).sum::<f64>() / (b - a) as f64
        };
        let on = energy(0.1, 0.9);
        assert!(on.sqrt() > 0.15 * LEVEL, "rms {}", on.sqrt());
        assert_eq!(energy(1.0, 5.0), 0.0);
        assert!(energy(5.1, 5.9) > 0.9 * on, "the next ring");
        // Fades: the first and last samples of a ring are near zero (no click).
        assert!(sample(0).abs() < 10 && sample(rate - 1).abs() < 400);
        // 425 Hz: zero crossings over the first second.
        let crossings = (1..rate)
            .filter(|&n| (sample(n - 1) < 0) != (sample(n) < 0))
            .count();
        assert!((840..=860).contains(&crossings), "{crossings}");
    }

    #[test]
    fn no_speaker_means_no_ring_and_the_null_device_rings() {
        assert!(Ringer::start(&SpeakerChoice::Off).is_none());
        // ALSA's `null` device plays through the same path as a sound card (the CLI's call
        // tests use it the same way).
        let r = Ringer::start(&SpeakerChoice::Device("null".into()));
        assert!(r.is_some(), "the null device should open");
        // No such device: no ring, no error.
        assert!(Ringer::start(&SpeakerChoice::Device("no-such-pcm".into())).is_none());
    }
}

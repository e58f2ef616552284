//! Who is speaking in a group call, from the participants' audio levels (sans-IO).
//!
//! Each participant's level is the energy of what we decoded of it over the last few hundred
//! milliseconds, in dB below full scale. Someone above [`SPEAKING_DB`] who stays the loudest
//! by [`MARGIN_DB`] for [`TAKE_OVER`] becomes the active speaker; the active speaker holds
//! the floor at least [`HOLD`] (a cough or a laugh does not move the big tile), and keeps it
//! while nobody else takes over, even through pauses (people pause between sentences).

use std::time::{Duration, Instant};

/// Quieter than this, dBFS, is not speech.
pub const SPEAKING_DB: f32 = -45.0;
/// A new speaker must be this much louder than the current one, dB.
pub const MARGIN_DB: f32 = 3.0;
/// … for this long.
pub const TAKE_OVER: Duration = Duration::from_millis(500);
/// The active speaker keeps the floor at least this long.
pub const HOLD: Duration = Duration::from_secs(1);

/// The active speaker of one call.
#[derive(Debug, Clone)]
pub struct ActiveSpeaker<K> {
    current: Option<K>,
    since: Instant,
    /// Who has been taking over, since when.
    challenger: Option<(K, Instant)>,
}

impl<K: Copy + PartialEq> ActiveSpeaker<K> {
    /// Nobody speaks yet.
    pub fn new(now: Instant) -> Self {
        Self {
            current: None,
            since: now,
            challenger: None,
        }
    }

    /// The active speaker.
    pub fn current(&self) -> Option<K> {
        self.current
    }

    /// The participants' levels now (dBFS); the new active speaker when it changes.
    pub fn update(&mut self, now: Instant, levels: &[(K, f32)]) -> Option<K> {
        let cur = self.current;
        // A participant that left hands the floor on at once.
        if cur.is_some_and(|c| !levels.iter().any(|(k, _)| *k == c)) {
            self.current = None;
        }
        let level = |k: K| levels.iter().find(|(x, _)| *x == k).map(|(_, l)| *l);
        let loudest = (levels.iter())
            .filter(|(_, l)| *l >= SPEAKING_DB)
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(k, l)| (*k, *l));
        let Some((k, l)) = loudest else {
            self.challenger = None;
            return None;
        };
        let (Some(c), held) = (
            self.current,
            now.saturating_duration_since(self.since) >= HOLD,
        ) else {
            return self.take(now, k);
        };
        let louder = c != k && l >= level(c).unwrap_or(f32::MIN) + MARGIN_DB;
        if !louder {
            self.challenger = None;
            return None;
        }
        let since = match self.challenger {
            Some((x, t)) if x == k => t,
            _ => {
                self.challenger = Some((k, now));
                now
            }
        };
        if held && now.saturating_duration_since(since) >= TAKE_OVER {
            return self.take(now, k);
        }
        None
    }

    fn take(&mut self, now: Instant, k: K) -> Option<K> {
        self.current = Some(k);
        self.since = now;
        self.challenger = None;
        Some(k)
    }
}

/// The level of 20 ms of audio, dBFS (−100 for silence).
pub fn level_db(pcm: &[i16]) -> f32 {
    if pcm.is_empty() {
        return -100.0;
    }
    let energy = pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / pcm.len() as f64;
    let rms = energy.sqrt() / 32768.0;
    if rms <= 1e-5 {
        -100.0
    } else {
        (20.0 * rms.log10()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds the levels every 20 ms from `from` to `to` seconds; the speaker at the end.
    fn run(
        a: &mut ActiveSpeaker<u8>,
        t0: Instant,
        from: f64,
        to: f64,
        l: &[(u8, f32)],
    ) -> Option<u8> {
        let mut s = from;
        while s < to {
            a.update(t0 + Duration::from_secs_f64(s), l);
            s += 0.02;
        }
        a.current()
    }

    #[test]
    fn the_loudest_takes_the_floor_and_a_short_sound_does_not_move_it() {
        let t0 = Instant::now();
        let mut a = ActiveSpeaker::new(t0);
        assert_eq!(run(&mut a, t0, 0.0, 1.0, &[(1, -70.0), (2, -80.0)]), None);
        // Alice (1) speaks: she has the floor at once (nobody had it).
        assert_eq!(
            run(&mut a, t0, 1.0, 3.0, &[(1, -20.0), (2, -60.0)]),
            Some(1)
        );
        // Bob laughs for 300 ms: nothing moves.
        assert_eq!(
            run(&mut a, t0, 3.0, 3.3, &[(1, -25.0), (2, -15.0)]),
            Some(1)
        );
        assert_eq!(
            run(&mut a, t0, 3.3, 4.0, &[(1, -22.0), (2, -60.0)]),
            Some(1)
        );
        // Alice pauses: she keeps it. Bob talks on his own: it moves after 500 ms.
        assert_eq!(
            run(&mut a, t0, 4.0, 5.0, &[(1, -60.0), (2, -60.0)]),
            Some(1)
        );
        assert_eq!(
            run(&mut a, t0, 5.0, 5.4, &[(1, -60.0), (2, -20.0)]),
            Some(1)
        );
        assert_eq!(
            run(&mut a, t0, 5.4, 5.6, &[(1, -60.0), (2, -20.0)]),
            Some(2)
        );
        // Two at once, barely apart: the floor stays.
        assert_eq!(
            run(&mut a, t0, 6.0, 9.0, &[(1, -19.0), (2, -20.0)]),
            Some(2)
        );
        // The speaker leaves: the next one who speaks has it at once.
        assert_eq!(run(&mut a, t0, 9.0, 9.1, &[(1, -20.0)]), Some(1));
        assert_eq!(level_db(&[0; 960]), -100.0);
        assert!((level_db(&[16384; 960]) + 6.02).abs() < 0.01);
    }
}

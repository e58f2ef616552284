//! Adaptive audio jitter buffer for 20 ms Opus frames.
//!
//! Every arrival gives a transit sample (arrival time − capture timestamp). The spread of
//! transit over the last [`WINDOW`] packets above its minimum is the delay variation the
//! buffer must absorb: the target delay is its 99th percentile, capped at the 95th percentile
//! plus [`CAP_OVER_P95`] (so late loss stays ≈ 1 % without buffering for rare spikes), and
//! never below one frame. It follows the distribution both ways as the window slides.
//!
//! The buffer's actual delay is measured at each playout as the time by which a packet with
//! the minimal transit would wait (`decision time − capture − min transit`). Small errors are corrected by time
//! stretching: each frame's output may be up to [`MAX_STRETCH`] samples shorter or longer
//! (the renderer stretches the decoded audio, NetEQ's accelerate / preemptive expand), so
//! the delay tracks the target within a few ms instead of in 20 ms steps. Large errors jump:
//! more than [`SHRINK_ABOVE`] above the target skips a frame (catch-up after a spike), more
//! than [`GROW_BELOW`] below inserts a concealment frame.
//! A missing frame is decoded from the next packet's in-band FEC when that packet is there,
//! else concealed (Opus PLC); a gap with contiguous sequence numbers is DTX silence. While
//! losses are seen (> [`FEC_LOSS`] of frames, smoothed) the target holds one frame more, so
//! the packet carrying a lost frame's FEC has usually arrived when that frame is due.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Opus clock rate.
pub const CLOCK: u32 = 48_000;
/// Samples per 20 ms frame.
pub const FRAME_SAMPLES: u32 = 960;
/// Frame duration.
pub const FRAME: Duration = Duration::from_millis(20);
/// Transit samples kept (10 s of 20 ms frames).
pub const WINDOW: usize = 500;
/// The target never exceeds the 95th percentile by more than this.
pub const CAP_OVER_P95: f64 = 10.0;
/// Skip a frame when the buffer delay is this far above target (ms).
pub const SHRINK_ABOVE: f64 = 60.0;
/// Insert a frame when the buffer delay is this far below target (ms).
pub const GROW_BELOW: f64 = 30.0;
/// Most samples one frame's output is stretched or shrunk by (2 ms, 10 %).
pub const MAX_STRETCH: i32 = 96;
/// The delay is steered to the target plus this margin (ms).
pub const MARGIN: f64 = 2.0;
/// Most frames held (older ones are dropped).
pub const MAX_FRAMES: usize = 250;
/// Largest target (ms).
pub const MAX_TARGET: f64 = 1000.0;
/// Smoothed loss rate above which one frame of FEC look-ahead is added to the target.
pub const FEC_LOSS: f64 = 0.005;

/// What to play next, and how much to stretch it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// What to decode.
    pub playout: Playout,
    /// Samples to remove from (> 0) or add to (< 0) this frame's 960 when rendering.
    pub stretch: i32,
}

impl Output {
    /// Samples this frame contributes to the device.
    pub fn samples(&self) -> u32 {
        (FRAME_SAMPLES as i32 - self.stretch) as u32
    }
}

/// What to decode for the next frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout {
    /// Decode this packet.
    Frame(Bytes),
    /// The frame is missing: decode the FEC carried in this (next) packet.
    Fec(Bytes),
    /// The frame is missing: run the decoder's loss concealment.
    Conceal,
    /// Nothing to play (not started yet, or the sender is in DTX).
    Silence,
}

/// Counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AudioStats {
    /// Packets received (not duplicates).
    pub received: u64,
    /// Packets that arrived after their time.
    pub late: u64,
    /// Frames played from a packet.
    pub played: u64,
    /// Frames recovered from FEC.
    pub fec: u64,
    /// Frames concealed (including inserted ones).
    pub concealed: u64,
    /// Frames skipped to catch up.
    pub skipped: u64,
    /// Frames inserted to grow the buffer.
    pub inserted: u64,
    /// DTX silence frames.
    pub silence: u64,
}

#[derive(Debug)]
struct Pkt {
    seq: u32,
    payload: Bytes,
}

/// The buffer of one audio stream.
#[derive(Debug)]
pub struct AudioJitterBuffer {
    epoch: Option<Instant>,
    last_ts: Option<u64>,
    packets: BTreeMap<u64, Pkt>,
    next_ts: Option<u64>,
    last_seq: Option<u32>,
    transit: VecDeque<f64>,
    target: f64,
    min_target: f64,
    delay: f64,
    loss: f64,
    /// Counters.
    pub stats: AudioStats,
}

impl Default for AudioJitterBuffer {
    fn default() -> Self {
        Self::new()
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

impl AudioJitterBuffer {
    /// An empty buffer with a one-frame target.
    pub fn new() -> Self {
        Self {
            epoch: None,
            last_ts: None,
            packets: BTreeMap::new(),
            next_ts: None,
            last_seq: None,
            transit: VecDeque::new(),
            target: 20.0,
            min_target: 0.0,
            delay: 0.0,
            loss: 0.0,
            stats: AudioStats::default(),
        }
    }

    /// A floor for the target (lip sync: audio waits as long as video needs), from the
    /// next packet on.
    pub fn set_min_target(&mut self, min: Duration) {
        self.min_target = (min.as_secs_f64() * 1e3).min(MAX_TARGET);
    }

    /// Current target delay.
    pub fn target(&self) -> Duration {
        Duration::from_secs_f64(self.target / 1e3)
    }

    /// Buffer delay measured at the last playout (see the module docs).
    pub fn delay(&self) -> Duration {
        Duration::from_secs_f64(self.delay.max(0.0) / 1e3)
    }

    /// Capture time (ms in the sender's media clock) of the frame the last
    /// [`pop`](Self::pop) decided on, once playout has started. Audio and video share the
    /// sender's clock, so this is what video is synchronised to (a call shorter than the
    /// 24 h wrap of the 48 kHz clock).
    pub fn playout_capture_ms(&self) -> Option<f64> {
        let played = self.next_ts?.checked_sub(u64::from(FRAME_SAMPLES))?;
        Some(Self::ts_ms(played.saturating_sub(1 << 32)))
    }

    fn unwrap_ts(&mut self, ts: u32) -> u64 {
        let ext = match self.last_ts {
            None => u64::from(ts) + (1 << 32),
            Some(last) => {
                let base = last & !0xffff_ffff;
                let cands = [base.wrapping_sub(1 << 32), base, base + (1 << 32)];
                cands
                    .into_iter()
                    .map(|b| b + u64::from(ts))
                    .min_by_key(|c| c.abs_diff(last))
                    .unwrap_or(base + u64::from(ts))
            }
        };
        self.last_ts = Some(self.last_ts.map_or(ext, |l| l.max(ext)));
        ext
    }

    fn ms_since_epoch(&self, now: Instant) -> f64 {
        self.epoch.map_or(0.0, |e| {
            now.saturating_duration_since(e).as_secs_f64() * 1e3
        })
    }

    fn ts_ms(ts: u64) -> f64 {
        ts as f64 * 1e3 / f64::from(CLOCK)
    }

    fn min_transit(&self) -> f64 {
        self.transit.iter().copied().fold(f64::INFINITY, f64::min)
    }

    /// Adds a packet that arrived at `now`.
    pub fn push(&mut self, now: Instant, seq: u32, ts: u32, payload: Bytes) {
        self.epoch.get_or_insert(now);
        let ext = self.unwrap_ts(ts);
        if self.packets.contains_key(&ext) {
            return;
        }
        self.stats.received += 1;
        let transit = self.ms_since_epoch(now) - Self::ts_ms(ext);
        self.transit.push_back(transit);
        if self.transit.len() > WINDOW {
            self.transit.pop_front();
        }
        let min = self.min_transit();
        let mut spread: Vec<f64> = self.transit.iter().map(|t| t - min).collect();
        spread.sort_by(f64::total_cmp);
        let (p95, p99) = (percentile(&spread, 0.95), percentile(&spread, 0.99));
        let fec = if self.loss > FEC_LOSS { 20.0 } else { 0.0 };
        self.target = (p99.min(p95 + CAP_OVER_P95) + fec)
            .max(self.min_target)
            .clamp(20.0, MAX_TARGET);
        if self.next_ts.is_some_and(|n| ext < n) {
            // It was concealed, but it was late, not lost: take it back out of the loss
            // estimate (lateness is the target's business, not FEC's).
            self.stats.late += 1;
            self.loss = (self.loss - 0.01).max(0.0);
            return;
        }
        self.packets.insert(ext, Pkt { seq, payload });
        while self.packets.len() > MAX_FRAMES {
            self.packets.pop_first();
        }
    }

    /// Buffer delay if `ts` were played at `now`.
    fn delay_at(&self, now: Instant, ts: u64) -> f64 {
        self.ms_since_epoch(now) - Self::ts_ms(ts) - self.min_transit()
    }

    /// The next frame (call just in time: whenever the device needs more audio). Its delay
    /// is measured at this decision, which is what decides lateness; the device's own
    /// queue adds its fixed output latency on top.
    pub fn pop(&mut self, now: Instant) -> Output {
        let playout = self.next_frame(now);
        let stretch = match playout {
            Playout::Silence if self.next_ts.is_none() => 0,
            _ => {
                let err = self.delay - (self.target + MARGIN);
                ((err * f64::from(CLOCK) / 1e3 * 0.5) as i32).clamp(-MAX_STRETCH, MAX_STRETCH)
            }
        };
        Output { playout, stretch }
    }

    fn next_frame(&mut self, now: Instant) -> Playout {
        let next = match self.next_ts {
            Some(n) => n,
            None => {
                let Some((&first, _)) = self.packets.first_key_value() else {
                    return Playout::Silence;
                };
                if self.delay_at(now, first) < self.target {
                    return Playout::Silence;
                }
                self.next_ts = Some(first);
                first
            }
        };
        self.delay = self.delay_at(now, next);
        // Adapt: grow by inserting a concealment frame, shrink by skipping one.
        if self.delay < self.target - GROW_BELOW {
            self.stats.inserted += 1;
            self.stats.concealed += 1;
            return Playout::Conceal;
        }
        let mut next = next;
        if self.delay > self.target + SHRINK_ABOVE
            && self
                .packets
                .contains_key(&(next + u64::from(FRAME_SAMPLES)))
        {
            self.packets.remove(&next);
            next += u64::from(FRAME_SAMPLES);
            self.stats.skipped += 1;
            self.delay -= FRAME.as_secs_f64() * 1e3;
        }
        self.next_ts = Some(next + u64::from(FRAME_SAMPLES));
        // Frames before `next` will never play.
        while self
            .packets
            .first_key_value()
            .is_some_and(|(&t, _)| t < next)
        {
            self.packets.pop_first();
        }
        if let Some(p) = self.packets.remove(&next) {
            self.last_seq = Some(p.seq);
            self.stats.played += 1;
            self.loss *= 0.99;
            return Playout::Frame(p.payload);
        }
        let after = self.packets.range(next..).next().map(|(&t, p)| (t, p));
        match after {
            Some((_, p)) if self.last_seq.is_some_and(|s| p.seq == s.wrapping_add(1)) => {
                // Contiguous sequence numbers around the gap: the sender sent nothing (DTX).
                self.stats.silence += 1;
                Playout::Silence
            }
            Some((t, p)) if t == next + u64::from(FRAME_SAMPLES) => {
                self.stats.fec += 1;
                self.loss = self.loss * 0.99 + 0.01;
                Playout::Fec(p.payload.clone())
            }
            _ => {
                self.stats.concealed += 1;
                self.loss = self.loss * 0.99 + 0.01;
                Playout::Conceal
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_distr::{Distribution, Normal};

    struct Run {
        stats: AudioStats,
        /// Buffer delay at each played frame (ms).
        delays: Vec<f64>,
        /// p95 of (one-way delay − its minimum), ms.
        p95_jitter: f64,
        target_end: f64,
    }

    /// 60 s of 20 ms frames through a network with the given one-way delay sampler and loss;
    /// the consumer pops every 20 ms.
    fn simulate(
        seed: u64,
        loss: f64,
        mut delay_ms: impl FnMut(&mut rand::rngs::StdRng) -> f64,
    ) -> Run {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let t0 = Instant::now();
        let frames = 3000u32;
        let mut arrivals: Vec<(f64, u32)> = Vec::new();
        let mut delays = Vec::new();
        for i in 0..frames {
            if rng.random_bool(loss) {
                continue;
            }
            let d = delay_ms(&mut rng).max(0.0);
            delays.push(d);
            arrivals.push((f64::from(i) * 20.0 + d, i));
        }
        arrivals.sort_by(|a, b| a.0.total_cmp(&b.0));
        let min = delays.iter().copied().fold(f64::INFINITY, f64::min);
        let mut spread: Vec<f64> = delays.iter().map(|d| d - min).collect();
        spread.sort_by(f64::total_cmp);
        let p95_jitter = percentile(&spread, 0.95);

        let mut jb = AudioJitterBuffer::new();
        let mut out = Vec::new();
        let mut a = 0;
        // The device pulls 240 samples every 5 ms (its period), offset from the send clock;
        // the buffer is asked for a frame whenever fewer than one period is queued.
        const PERIOD: u32 = 240;
        let mut tick = 7.0;
        let mut queued = 0u32;
        'run: while tick < f64::from(frames) * 20.0 + 1000.0 {
            while a < arrivals.len() && arrivals[a].0 <= tick {
                let (at, i) = arrivals[a];
                let now = t0 + Duration::from_secs_f64(at / 1e3);
                jb.push(
                    now,
                    i,
                    i * FRAME_SAMPLES,
                    Bytes::from(i.to_be_bytes().to_vec()),
                );
                a += 1;
            }
            while queued < PERIOD {
                if a == arrivals.len() && jb.packets.is_empty() {
                    break 'run;
                }
                let o = jb.pop(t0 + Duration::from_secs_f64(tick / 1e3));
                if matches!(o.playout, Playout::Frame(_)) {
                    out.push(jb.delay().as_secs_f64() * 1e3);
                }
                if matches!(o.playout, Playout::Silence) && jb.next_ts.is_none() {
                    queued = PERIOD; // not started: the device plays silence
                    break;
                }
                queued += o.samples();
            }
            queued -= PERIOD;
            tick += 5.0;
        }
        Run {
            stats: jb.stats,
            delays: out,
            p95_jitter,
            target_end: jb.target().as_secs_f64() * 1e3,
        }
    }

    fn median(v: &[f64]) -> f64 {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    #[test]
    fn gaussian_jitter_late_loss_and_added_delay_meet_the_targets() {
        for seed in 0..5 {
            let n = Normal::new(50.0, 10.0).unwrap();
            let r = simulate(seed, 0.0, |rng| n.sample(rng));
            let late = r.stats.late as f64 / r.stats.received as f64;
            let added = median(&r.delays);
            println!(
                "seed {seed}: late {:.2}%, added delay median {added:.1} ms (p95 jitter {:.1} ms), target {:.1} ms, skipped {}, inserted {}",
                late * 100.0,
                r.p95_jitter,
                r.target_end,
                r.stats.skipped,
                r.stats.inserted
            );
            assert!(late <= 0.01, "late loss {late}");
            assert!(
                added <= r.p95_jitter + 10.0,
                "added {added} > p95 {} + 10",
                r.p95_jitter
            );
        }
    }

    #[test]
    fn uniform_jitter_and_two_percent_loss_conceal_little() {
        let r = simulate(11, 0.02, |rng| 40.0 + rng.random::<f64>() * 20.0);
        let concealed = (r.stats.concealed - r.stats.inserted) as f64 / 3000.0;
        println!("{:?} median delay {:.1} ms", r.stats, median(&r.delays));
        // Isolated losses are recovered from the next packet's FEC (one frame of look-ahead).
        assert!(r.stats.fec > 40, "{:?}", r.stats);
        assert!(concealed < 0.01, "concealed {concealed}");
        assert!(median(&r.delays) <= r.p95_jitter + 30.0);
    }

    #[test]
    fn the_target_follows_the_jitter_down_and_up() {
        let mut phase = 0u32;
        let mut calm_target = 0.0;
        let r = {
            let n_wide = Normal::new(100.0, 40.0).unwrap();
            let n_calm = Normal::new(30.0, 2.0).unwrap();
            simulate(3, 0.0, move |rng| {
                phase += 1;
                if phase < 1500 {
                    n_wide.sample(rng)
                } else {
                    n_calm.sample(rng)
                }
            })
        };
        // After 30 s of calm the target is back near the calm spread.
        assert!(r.target_end < 40.0, "target {}", r.target_end);
        let tail = |d: &[f64]| median(&d[d.len() - 500..]);
        assert!(
            tail(&r.delays) < 45.0,
            "the delay came down: {}",
            tail(&r.delays)
        );
        calm_target += r.target_end;
        let r2 = {
            let n_calm = Normal::new(30.0, 2.0).unwrap();
            let n_wide = Normal::new(100.0, 40.0).unwrap();
            let mut k = 0u32;
            simulate(4, 0.0, move |rng| {
                k += 1;
                if k < 1500 {
                    n_calm.sample(rng)
                } else {
                    n_wide.sample(rng)
                }
            })
        };
        assert!(
            r2.target_end > calm_target + 40.0,
            "target grew: {}",
            r2.target_end
        );
        assert!(
            tail(&r2.delays) > calm_target + 40.0,
            "the delay grew: {}",
            tail(&r2.delays)
        );
        // A sudden jump from 2 to 40 ms of jitter costs a few late frames while it learns.
        assert!(
            r2.stats.late as f64 / r2.stats.received as f64 <= 0.05,
            "{:?}",
            r2.stats
        );
    }

    #[test]
    fn dtx_gaps_are_silence_and_late_or_duplicate_packets_are_ignored() {
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        let mut jb = AudioJitterBuffer::new();
        // Seq 0..3 at ts 0..3 frames, then DTX: seq 3 jumps to ts of frame 10.
        for (seq, frame) in [(0u32, 0u32), (1, 1), (2, 2), (3, 10)] {
            jb.push(
                ms(u64::from(frame) * 20),
                seq,
                frame * FRAME_SAMPLES,
                Bytes::from_static(b"a"),
            );
        }
        jb.push(ms(10), 0, 0, Bytes::from_static(b"dup"));
        let mut outs = Vec::new();
        for k in 0..11u64 {
            outs.push(jb.pop(ms(20 + k * 20)).playout);
        }
        assert!(matches!(outs[0], Playout::Frame(_)));
        assert_eq!(jb.stats.played, 4);
        assert_eq!(
            jb.stats.silence, 7,
            "frames 3..9: DTX, seq 2 -> 3 is contiguous: {:?}",
            jb.stats
        );
        assert_eq!(jb.stats.concealed, 0);
        jb.push(ms(400), 9, 5 * FRAME_SAMPLES, Bytes::from_static(b"late"));
        assert_eq!(jb.stats.late, 1);
    }
}

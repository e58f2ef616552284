//! Bandwidth estimation for a call (sans-IO), in the style of Google Congestion Control
//! (draft-ietf-rmcat-gcc, as libwebrtc runs it with transport-wide feedback).
//!
//! ```text
//! sender                                           receiver
//! every media/padding datagram gets a tw number    FeedbackBuilder: arrival time of each
//! SendHistory: tw -> (sent, bytes, probe)  <-----  tw, every 50 ms, + connection rx bytes
//! on_feedback:
//!   delay-based: packet groups (5 ms bursts) -> delay variation -> trendline slope ->
//!                overuse detector (adaptive threshold) -> AIMD rate control
//!   a fall:      a queue that grew fast while the connection delivered < half the
//!                target -> send a quarter of what got through until it drained (its
//!                overflow is not counted as loss), then 0.8 of it; GCC goes on from there
//!   loss-based:  lost fraction of recent feedback -> > 10 %: cut, < 5 %: may grow
//!   acknowledged rate: what the receiver got (media, or everything the connection
//!                delivered when streams share it), the base of every decrease
//!   probes:      padding clusters at a higher rate; what arrives bounds the jump
//! target = min(delay-based, loss-based), within [min, max]
//! ```
//!
//! The estimate is for the whole peer connection: the call takes what it needs first and
//! the driver lets bulk streams (file transfers) have the rest, so one controller keeps the
//! bottleneck's queue short for everything the connection sends.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use p2pcall_proto::media::{FEEDBACK_TICK_US, Feedback, MAX_FEEDBACK, NOT_RECEIVED};

/// Feedback is sent this often while packets arrive.
pub const FEEDBACK_INTERVAL: Duration = Duration::from_millis(50);
/// Sent packets remembered for feedback (older ones are forgotten).
const HISTORY_AGE: Duration = Duration::from_secs(2);
const HISTORY_MAX: usize = 8192;
/// A gap is reported as loss only once a later packet arrived this long ago.
const REORDER_WINDOW: Duration = Duration::from_millis(40);
/// Arrivals a receiver keeps before it must report.
const ARRIVALS_MAX: usize = 4 * MAX_FEEDBACK;
/// Packets sent within this time of a group's first packet form one group (a burst).
const BURST: Duration = Duration::from_millis(5);
/// Groups in the trendline's regression window.
const TREND_WINDOW: usize = 20;
const TREND_SMOOTHING: f64 = 0.9;
const TREND_GAIN: f64 = 4.0;
/// Overuse must last this long (and two groups) to count.
const OVERUSE_TIME_MS: f64 = 10.0;
/// The adaptive threshold never goes below this (ms of modified trend).
const MIN_THRESHOLD: f64 = 10.0;
/// Acknowledged rate window.
const ACKED_WINDOW: Duration = Duration::from_millis(250);
/// Below this loss fraction the loss controller lets the estimate grow. GCC says 2 %; a
/// path with 2 % random (not congestive) loss then never grows, and the delay-based part
/// already sees congestion well before it causes loss.
const LOSS_GROW: f64 = 0.05;
/// Window of the connection's delivery rate (everything it received).
const DELIVERED_WINDOW: Duration = Duration::from_millis(500);
/// Rate multiplier on a delay-based decrease (of the acknowledged rate).
const BETA: f64 = 0.85;
/// The base (queue-free) one-way delay is the minimum over this window: long, so that a
/// queue that never emptied for seconds is still seen as one (a path that got longer is
/// caught by the drains instead: `REBASE_AFTER`).
const BASE_DELAY_WINDOW: Duration = Duration::from_secs(60);
/// A decrease also drains the standing queue within about this time.
const DRAIN_TIME: Duration = Duration::from_secs(1);
/// Probes may jump the estimate without bound only this long after the first packet.
const STARTUP: Duration = Duration::from_secs(10);
/// Probe cluster length.
const PROBE_TIME: Duration = Duration::from_millis(50);
const PROBE_MIN_PACKETS: usize = 10;
/// A capacity drop: within one feedback the queue grew by at least this much …
const DROP_GROWTH_US: i64 = 25_000;
/// … to a standing queue of at least this much (ms; frame bursts alone grow it by tens of
/// ms, but from an empty queue) …
const DROP_QUEUE_MS: f64 = 50.0;
/// … while the connection delivered less than this fraction of the target.
const DROP_DELIVERED: f64 = 0.5;
/// After a capacity drop, send this fraction of what got through until the queue drained.
const DROP_DRAIN: f64 = 0.25;
/// … and then this fraction (the recovery keyframe and retransmissions come on top).
const DROP_RECOVER: f64 = 0.8;
/// The queue counts as drained below this (ms), or this long after the drop at the latest
/// (frame bursts keep a little queue even on an idle link).
const DRAINED_MS: f64 = 20.0;
const MAX_DRAIN_TIME: Duration = Duration::from_millis(1500);
/// The delay target: the estimate does not grow, and probes wait, while a standing queue
/// of more than this lies above the path's least one-way delay.
const QUEUE_TARGET_MS: f64 = 10.0;
/// A standing queue above this is drained back to the target.
const QUEUE_DRAIN_MS: f64 = 25.0;
/// A probe's own burst queues this much at most (50 ms at 1.5-2× the estimate).
const PROBE_QUEUE_MS: f64 = 50.0;
/// A standing queue that drains did not halve within this long is taken for a longer path.
const REBASE_AFTER: Duration = Duration::from_secs(2);
/// Rate multiplier (of the acknowledged rate) on such a drain, at least.
const STANDING_BETA: f64 = 0.95;
/// The standing queue is the least queueing over this window.
const STANDING_WINDOW: Duration = Duration::from_millis(250);
/// Probe rate (× the estimate) near the capacity found by earlier decreases.
const NEAR_PROBE: f64 = 1.2;
/// After a probe that raised the estimate, the next one starts this soon.
const REPROBE_AFTER_SUCCESS: Duration = Duration::from_secs(1);

/// What the delay-based detector concludes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Usage {
    /// Queues are stable.
    #[default]
    Normal,
    /// Queues grow: send less.
    Overusing,
    /// Queues drain.
    Underusing,
}

/// A burst of padding the pacer must send now to probe for more bandwidth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeCluster {
    /// Cluster id (carried in the send history, not on the wire).
    pub id: u32,
    /// Sending rate, bit/s.
    pub rate_bps: u64,
    /// Bytes to send at that rate (media sent meanwhile counts).
    pub bytes: usize,
}

/// The estimator's state, for statistics.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BweStats {
    /// Current target, bit/s.
    pub target_bps: u64,
    /// Delay-based estimate, bit/s.
    pub delay_bps: u64,
    /// Loss-based estimate, bit/s.
    pub loss_bps: u64,
    /// What the receiver acknowledged recently, bit/s.
    pub acked_bps: u64,
    /// Loss fraction of recent feedback.
    pub loss: f64,
    /// Detector state.
    pub usage: Usage,
    /// Queueing delay estimate: one-way delay above its recent minimum, ms.
    pub queue_ms: f64,
    /// Modified trend and the adaptive threshold it is compared with (ms).
    pub trend: f64,
    /// Adaptive threshold.
    pub threshold: f64,
    /// Probe clusters sent.
    pub probes: u64,
    /// Feedback datagrams received.
    pub feedbacks: u64,
}

// ---------------------------------------------------------------------------------------
// Receiver side.

/// Unwraps 16-bit sequence numbers into a 64-bit count, nearest to the last one seen.
#[derive(Debug, Default, Clone, Copy)]
struct Unwrapper(Option<u64>);

impl Unwrapper {
    fn unwrap(&mut self, s: u16) -> u64 {
        let v = match self.0 {
            None => u64::from(s) + (1 << 16),
            Some(last) => {
                let d = s.wrapping_sub(last as u16) as i16;
                (last as i64 + i64::from(d)).max(0) as u64
            }
        };
        if self.0.is_none_or(|l| v > l) {
            self.0 = Some(v);
        }
        v
    }
}

/// The receiver's side: collects arrival times and builds [`Feedback`].
#[derive(Debug)]
pub struct FeedbackBuilder {
    origin: Option<Instant>,
    unwrap: Unwrapper,
    /// Next sequence number to report (everything before it has been).
    next: Option<u64>,
    /// Arrivals not reported yet: seq -> (ticks since origin, connection bytes received by
    /// then).
    pending: std::collections::BTreeMap<u64, (u64, u32)>,
    last_sent: Option<Instant>,
}

impl Default for FeedbackBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl FeedbackBuilder {
    /// A builder with nothing received.
    pub fn new() -> Self {
        Self {
            origin: None,
            unwrap: Unwrapper::default(),
            next: None,
            pending: Default::default(),
            last_sent: None,
        }
    }

    /// A datagram numbered `tw` arrived now; `rx_bytes` is everything the connection has
    /// received so far (mod 2³²), 0 if unknown.
    pub fn on_arrival(&mut self, now: Instant, tw: u16, rx_bytes: u32) {
        let origin = *self.origin.get_or_insert(now);
        let seq = self.unwrap.unwrap(tw);
        let next = *self.next.get_or_insert(seq);
        if seq < next {
            return; // already reported as missing
        }
        let ticks = now.saturating_duration_since(origin).as_micros() as u64 / FEEDBACK_TICK_US;
        self.pending.insert(seq, (ticks, rx_bytes));
        // A flood of far-ahead numbers must not grow memory: report or drop the oldest.
        while self.pending.len() > ARRIVALS_MAX {
            self.pending.pop_first();
        }
    }

    /// When [`poll`](Self::poll) has something to send.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.pending.is_empty() {
            return None;
        }
        match self.last_sent {
            Some(t) => Some(t + FEEDBACK_INTERVAL),
            None => self.origin,
        }
    }

    /// Feedback due now (none until [`FEEDBACK_INTERVAL`] after the last).
    pub fn poll(&mut self, now: Instant) -> Vec<Feedback> {
        let mut out = Vec::new();
        if self.pending.is_empty() || self.last_sent.is_some_and(|t| now < t + FEEDBACK_INTERVAL) {
            return out;
        }
        self.last_sent = Some(now);
        let now_ticks = self.origin.map_or(0, |o| {
            now.saturating_duration_since(o).as_micros() as u64 / FEEDBACK_TICK_US
        });
        while let Some((&first, _)) = self.pending.first_key_value() {
            let mut next = self.next.unwrap_or(first).max(first.saturating_sub(64));
            // Long gaps before the first received one are not worth reporting one by one.
            if first > next + MAX_FEEDBACK as u64 / 2 {
                next = first;
            }
            let base = next;
            let mut deltas = Vec::new();
            let mut reference = None;
            let mut last = 0u64;
            let mut rx_bytes = 0;
            while deltas.len() < MAX_FEEDBACK {
                let Some((&seq, &(t, rx))) = self.pending.first_key_value() else {
                    break;
                };
                if seq > next {
                    // A gap closely followed by an arrival may be reordering: report it
                    // next time, when the missing packets had time to arrive.
                    let recent =
                        (t + REORDER_WINDOW.as_micros() as u64 / FEEDBACK_TICK_US) > now_ticks;
                    if recent {
                        break;
                    }
                    deltas.push(NOT_RECEIVED);
                    next += 1;
                    continue;
                }
                let d = match reference {
                    None => {
                        reference = Some(t);
                        0
                    }
                    // Signed: a reordered packet arrived before the one numbered before it.
                    Some(_) => t as i64 - last as i64,
                };
                // A delta that does not fit ends this datagram.
                let Ok(d) = i16::try_from(d) else { break };
                if d == NOT_RECEIVED {
                    break;
                }
                deltas.push(d);
                last = t;
                rx_bytes = rx;
                self.pending.pop_first();
                next = seq + 1;
            }
            self.next = Some(next);
            let Some(reference) = reference else { break };
            let held_back = self
                .pending
                .first_key_value()
                .is_some_and(|(&q, _)| q > next);
            out.push(Feedback {
                base: base as u16,
                reference: reference as u32,
                rx_bytes,
                deltas,
            });
            if held_back {
                break;
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// Sender side.

#[derive(Debug, Clone, Copy)]
struct Sent {
    seq: u64,
    at: Instant,
    bytes: usize,
    probe: Option<u32>,
    reported: bool,
}

/// A packet the receiver reported as received: when sent (our clock) and when it arrived
/// (the receiver's clock, µs, unwrapped).
#[derive(Debug, Clone, Copy)]
struct Acked {
    sent: Instant,
    arrival_us: i64,
    bytes: usize,
    probe: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Group {
    first_sent: Instant,
    last_sent: Instant,
    last_arrival_us: i64,
}

/// Delay variation between packet groups, trendline slope and the overuse detector.
#[derive(Debug)]
struct Trendline {
    current: Option<Group>,
    previous: Option<Group>,
    first_arrival_us: Option<i64>,
    accumulated: f64,
    smoothed: f64,
    window: VecDeque<(f64, f64)>,
    deltas: usize,
    threshold: f64,
    last_threshold_update: Option<i64>,
    time_over: f64,
    over_count: u32,
    prev_trend: f64,
    trend: f64,
    usage: Usage,
}

impl Trendline {
    fn new() -> Self {
        Self {
            current: None,
            previous: None,
            first_arrival_us: None,
            accumulated: 0.0,
            smoothed: 0.0,
            window: VecDeque::new(),
            deltas: 0,
            threshold: 12.5,
            last_threshold_update: None,
            time_over: -1.0,
            over_count: 0,
            prev_trend: 0.0,
            trend: 0.0,
            usage: Usage::Normal,
        }
    }

    fn on_packet(&mut self, p: &Acked) {
        let Some(g) = self.current.as_mut() else {
            self.current = Some(Group {
                first_sent: p.sent,
                last_sent: p.sent,
                last_arrival_us: p.arrival_us,
            });
            return;
        };
        if p.sent < g.first_sent + BURST && p.sent >= g.first_sent {
            g.last_sent = g.last_sent.max(p.sent);
            g.last_arrival_us = g.last_arrival_us.max(p.arrival_us);
            return;
        }
        if p.sent < g.first_sent {
            return; // reordered across groups: ignore (as libwebrtc does)
        }
        let done = *g;
        self.current = Some(Group {
            first_sent: p.sent,
            last_sent: p.sent,
            last_arrival_us: p.arrival_us,
        });
        if let Some(prev) = self.previous {
            let send_ms = done
                .last_sent
                .saturating_duration_since(prev.last_sent)
                .as_secs_f64()
                * 1e3;
            let arrival_ms = (done.last_arrival_us - prev.last_arrival_us) as f64 / 1e3;
            self.update(arrival_ms - send_ms, arrival_ms, done.last_arrival_us);
        }
        self.previous = Some(done);
    }

    fn update(&mut self, delta_ms: f64, arrival_delta_ms: f64, arrival_us: i64) {
        self.deltas = (self.deltas + 1).min(1000);
        self.accumulated += delta_ms;
        self.smoothed =
            TREND_SMOOTHING * self.smoothed + (1.0 - TREND_SMOOTHING) * self.accumulated;
        let first = *self.first_arrival_us.get_or_insert(arrival_us);
        self.window
            .push_back(((arrival_us - first) as f64 / 1e3, self.smoothed));
        if self.window.len() > TREND_WINDOW {
            self.window.pop_front();
        }
        if self.window.len() == TREND_WINDOW
            && let Some(slope) = slope(&self.window)
        {
            self.prev_trend = self.trend;
            self.trend = slope;
        }
        self.detect(arrival_delta_ms, arrival_us);
    }

    fn detect(&mut self, ts_delta_ms: f64, now_us: i64) {
        if self.deltas < 2 {
            return;
        }
        let modified = self.deltas.min(60) as f64 * self.trend * TREND_GAIN;
        if modified > self.threshold {
            if self.time_over < 0.0 {
                self.time_over = ts_delta_ms / 2.0;
            } else {
                self.time_over += ts_delta_ms;
            }
            self.over_count += 1;
            if self.time_over > OVERUSE_TIME_MS
                && self.over_count > 1
                && self.trend >= self.prev_trend
            {
                self.time_over = 0.0;
                self.over_count = 0;
                self.usage = Usage::Overusing;
            }
        } else if modified < -self.threshold {
            self.time_over = -1.0;
            self.over_count = 0;
            self.usage = Usage::Underusing;
        } else {
            self.time_over = -1.0;
            self.over_count = 0;
            self.usage = Usage::Normal;
        }
        // Adaptive threshold (GCC §5.4): follows the trend slowly upwards, quickly down, so
        // the detector neither starves against queue-filling flows nor ignores real overuse.
        let last = self.last_threshold_update.replace(now_us).unwrap_or(now_us);
        let m = modified.abs();
        if m <= self.threshold + 15.0 {
            let k = if m < self.threshold { 0.039 } else { 0.0087 };
            let dt = ((now_us - last) as f64 / 1e3).clamp(0.0, 100.0);
            self.threshold =
                (self.threshold + k * (m - self.threshold) * dt).clamp(MIN_THRESHOLD, 600.0);
        }
    }

    fn modified_trend(&self) -> f64 {
        self.deltas.min(60) as f64 * self.trend * TREND_GAIN
    }
}

/// Least-squares slope of `(x, y)` points.
fn slope(pts: &VecDeque<(f64, f64)>) -> Option<f64> {
    let n = pts.len() as f64;
    let (sx, sy) = pts.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (mut num, mut den) = (0.0, 0.0);
    for (x, y) in pts {
        num += (x - mx) * (y - my);
        den += (x - mx) * (x - mx);
    }
    (den > 0.0).then(|| num / den)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RateState {
    Hold,
    Increase,
    Decrease,
}

/// A rate measured over a sliding window of (time µs, bytes).
#[derive(Debug, Default)]
struct WindowRate {
    samples: VecDeque<(i64, usize)>,
    bytes: usize,
}

impl WindowRate {
    fn add(&mut self, t_us: i64, bytes: usize, window: Duration) {
        self.samples.push_back((t_us, bytes));
        self.bytes += bytes;
        let w = window.as_micros() as i64;
        while self.samples.len() > HISTORY_MAX
            || self.samples.front().is_some_and(|(t, _)| *t < t_us - w)
        {
            if let Some((_, b)) = self.samples.pop_front() {
                self.bytes -= b;
            }
        }
    }

    /// bit/s, once the window spans at least half its length.
    fn rate(&self, window: Duration) -> Option<f64> {
        let (first, _) = *self.samples.front()?;
        let (last, _) = *self.samples.back()?;
        let span = (last - first) as f64 / 1e6;
        if span < window.as_secs_f64() / 2.0 {
            return None;
        }
        let first_bytes = self.samples.front().map_or(0, |s| s.1);
        Some((self.bytes - first_bytes) as f64 * 8.0 / span)
    }
}

/// The sender's bandwidth estimator.
#[derive(Debug)]
pub struct Bwe {
    history: VecDeque<Sent>,
    next_seq: u64,
    unwrap: Unwrapper,
    /// Receiver clock unwrapping: last reference ticks seen and its unwrapped value.
    last_ref: Option<(u32, i64)>,
    trend: Trendline,
    acked: WindowRate,
    delivered: VecDeque<(i64, u64)>,
    last_rx: Option<(u32, u64)>,
    state: RateState,
    rate: f64,
    loss_rate: f64,
    min: f64,
    max: f64,
    last_change: Option<Instant>,
    last_decrease: Option<Instant>,
    /// Link capacity estimate (from decreases), kbit/s mean and variance (libwebrtc style).
    capacity: Option<(f64, f64)>,
    loss: f64,
    loss_window: VecDeque<(Instant, usize, usize)>,
    rtt: Duration,
    probe_id: u32,
    probe_pending: Option<ProbeCluster>,
    probes_running: Vec<(u32, Instant, u64)>,
    next_probe: Option<Instant>,
    probe_failures: u32,
    last_overuse: Option<Instant>,
    /// A probe raised the estimate: the queue it built is not a reason to cut.
    probe_grace_until: Option<Instant>,
    /// Send times are measured from here (µs), to compare with arrival times.
    origin: Option<Instant>,
    /// One-way delay samples (arrival − send, µs, clocks offset): (arrival, delay).
    owd: VecDeque<(i64, i64)>,
    /// Latest queueing delay estimate: one-way delay above the recent minimum, ms.
    queue_ms: f64,
    /// Recent queueing samples (arrival µs, queueing µs), for the standing queue.
    recent_queue: VecDeque<(i64, i64)>,
    /// Since when standing-queue drains have followed each other, and the standing queue
    /// then: one that does not shrink under them is a longer path, not a queue.
    draining_standing: Option<(Instant, f64)>,
    /// After a decrease that also drained a queue: the rate to return to once it is empty.
    recover_to: Option<f64>,
    /// What the connection delivered while a sudden queue built (this feedback): the link's
    /// new capacity, acted on at once.
    dropped_to: Option<f64>,
    /// Packets sent before this were in flight when a capacity drop was answered, or went
    /// into the queue it filled: their loss is not counted.
    overflow_before: Option<Instant>,
    /// When a capacity drop was answered, until the queue it filled has drained.
    draining_since: Option<Instant>,
    /// When the first packet left (start-up ends 10 s later at the latest).
    first_sent: Option<Instant>,
    usage: Usage,
    stats: BweStats,
}

impl Bwe {
    /// An estimator starting at `start` bit/s, never below `min` nor above `max`.
    pub fn new(start: u64, min: u64, max: u64) -> Self {
        let (min, max) = (min as f64, (max as f64).max(min as f64));
        Self {
            history: VecDeque::new(),
            next_seq: 1 << 16,
            unwrap: Unwrapper::default(),
            last_ref: None,
            trend: Trendline::new(),
            acked: WindowRate::default(),
            delivered: VecDeque::new(),
            last_rx: None,
            state: RateState::Hold,
            rate: (start as f64).clamp(min, max),
            loss_rate: max,
            min,
            max,
            last_change: None,
            last_decrease: None,
            capacity: None,
            loss: 0.0,
            loss_window: VecDeque::new(),
            rtt: Duration::from_millis(100),
            probe_id: 0,
            probe_pending: None,
            probes_running: Vec::new(),
            next_probe: None,
            probe_failures: 0,
            last_overuse: None,
            probe_grace_until: None,
            origin: None,
            owd: VecDeque::new(),
            queue_ms: 0.0,
            recent_queue: VecDeque::new(),
            draining_standing: None,
            recover_to: None,
            dropped_to: None,
            overflow_before: None,
            draining_since: None,
            first_sent: None,
            usage: Usage::Normal,
            stats: BweStats::default(),
        }
    }

    /// Changes the bounds (the most the call and the connection's streams could use).
    pub fn set_bounds(&mut self, min: u64, max: u64) {
        self.min = min as f64;
        self.max = (max as f64).max(self.min);
        self.rate = self.rate.clamp(self.min, self.max);
    }

    /// The connection's round-trip time.
    pub fn set_rtt(&mut self, rtt: Duration) {
        self.rtt = rtt.max(Duration::from_millis(1));
    }

    /// Numbers a datagram about to leave: `bytes` on the wire, `probe` if it belongs to a
    /// probe cluster. Returns its transport-wide sequence number.
    pub fn on_send(&mut self, now: Instant, bytes: usize, probe: Option<u32>) -> u16 {
        self.first_sent.get_or_insert(now);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.history.push_back(Sent {
            seq,
            at: now,
            bytes,
            probe,
            reported: false,
        });
        while self.history.len() > HISTORY_MAX
            || self
                .history
                .front()
                .is_some_and(|s| now > s.at + HISTORY_AGE)
        {
            self.history.pop_front();
        }
        seq as u16
    }

    /// Current target for everything the connection sends, bit/s.
    pub fn target_bps(&self) -> u64 {
        self.rate.min(self.loss_rate).clamp(self.min, self.max) as u64
    }

    /// Estimator state.
    pub fn stats(&self) -> BweStats {
        BweStats {
            target_bps: self.target_bps(),
            delay_bps: self.rate as u64,
            loss_bps: self.loss_rate.min(self.max) as u64,
            acked_bps: self.acked_bps().unwrap_or(0.0) as u64,
            loss: self.loss,
            usage: self.usage,
            queue_ms: self.queue_ms,
            trend: self.trend.modified_trend(),
            threshold: self.trend.threshold,
            ..self.stats
        }
    }

    fn acked_bps(&self) -> Option<f64> {
        let media = self.acked.rate(ACKED_WINDOW);
        let all = self.delivered_bps();
        match (media, all) {
            (Some(m), Some(a)) => Some(m.max(a)),
            (m, a) => m.or(a),
        }
    }

    /// What the receiver's connection received recently, from `rx_bytes`.
    fn delivered_bps(&self) -> Option<f64> {
        let (t0, b0) = *self.delivered.front()?;
        let (t1, b1) = *self.delivered.back()?;
        let span = (t1 - t0) as f64 / 1e6;
        (span >= DELIVERED_WINDOW.as_secs_f64() / 2.0 && b1 > b0)
            .then(|| (b1 - b0) as f64 * 8.0 / span)
    }

    /// The probe cluster to send now, if any (the pacer sends its padding).
    pub fn poll_probe(&mut self, now: Instant) -> Option<ProbeCluster> {
        if let Some(p) = self.probe_pending.take() {
            return Some(p);
        }
        let due = *self.next_probe.get_or_insert(now);
        let stable = self
            .last_overuse
            .is_none_or(|t| now >= t + Duration::from_secs(2));
        if now < due {
            return None;
        }
        if !stable
            || self.rate >= self.max * 0.95
            || self.loss > 0.05
            || self.standing_ms() > QUEUE_TARGET_MS
        {
            self.next_probe = Some(now + Duration::from_millis(500)); // look again soon
            return None;
        }
        // Start-up: 3× the start rate; after a probe that found more: 2×; else 1.5× (a
        // probe above capacity queues for its 50 ms: at 1.5× that is 25 ms at most).
        // Near the capacity earlier decreases found, only a little above it (a probe at
        // 1.5× a full link queues 25 ms for nothing).
        let factor = match (self.stats.probes, self.probe_failures) {
            (0, _) => 3.0,
            _ if self.near_capacity() => NEAR_PROBE,
            (_, 0) => 2.0,
            _ => 1.5,
        };
        let rate = (self.rate * factor).min(self.max);
        let bytes = ((rate / 8.0) * PROBE_TIME.as_secs_f64()) as usize;
        self.probe_id = self.probe_id.wrapping_add(1);
        let c = ProbeCluster {
            id: self.probe_id,
            rate_bps: rate as u64,
            bytes: bytes.max(PROBE_MIN_PACKETS * 1000),
        };
        self.stats.probes += 1;
        self.probes_running.push((c.id, now, c.rate_bps));
        // Often enough that a link which got faster is found within seconds.
        let interval = if self.probe_failures < 3 { 2 } else { 4 };
        self.next_probe = Some(now + Duration::from_secs(interval));
        Some(c)
    }

    /// When the next probe may start.
    pub fn next_probe(&self) -> Option<Instant> {
        self.next_probe
    }

    /// Feedback from the receiver.
    pub fn on_feedback(&mut self, now: Instant, fb: &Feedback) {
        self.stats.feedbacks += 1;
        let base = self.unwrap.unwrap(fb.base);
        let reference = self.unwrap_reference(fb.reference);
        let mut acked = Vec::new();
        let (mut lost, mut total) = (0usize, 0usize);
        let mut t = reference;
        let mut last_arrival = None;
        let overflow_before = self.overflow_before;
        for (i, &d) in fb.deltas.iter().enumerate() {
            let seq = base + i as u64;
            let received = d != NOT_RECEIVED;
            if received {
                t += i64::from(d) * FEEDBACK_TICK_US as i64;
                last_arrival = Some(t);
            }
            let Some(s) = self.find(seq) else { continue };
            if s.reported {
                continue;
            }
            s.reported = true;
            total += 1;
            if received {
                acked.push(Acked {
                    sent: s.at,
                    arrival_us: t,
                    bytes: s.bytes,
                    probe: s.probe,
                });
            } else if overflow_before.is_some_and(|t| s.at < t) {
                total -= 1;
            } else {
                lost += 1;
            }
        }
        if let Some(t) = last_arrival {
            self.note_delivered(t, fb.rx_bytes);
        }
        acked.sort_by_key(|a| a.arrival_us);
        let mut min_owd: Option<i64> = None;
        let mut growth = 0;
        for a in &acked {
            self.acked.add(a.arrival_us, a.bytes, ACKED_WINDOW);
            self.trend.on_packet(a);
            let owd = self.note_delay(a);
            let m = *min_owd.get_or_insert(owd);
            min_owd = Some(m.min(owd));
            growth = growth.max(owd.saturating_sub(m));
        }
        self.detect_drop(growth);
        self.on_probe_results(now, &acked);
        self.update_loss(now, lost, total);
        self.usage = self.trend.usage;
        self.update_rate(now);
    }

    /// Tracks the one-way delay (with the unknown clock offset) and its minimum over
    /// [`BASE_DELAY_WINDOW`]: what lies above the minimum is queueing.
    fn note_delay(&mut self, a: &Acked) -> i64 {
        let origin = *self.origin.get_or_insert(a.sent);
        let sent_us = a.sent.saturating_duration_since(origin).as_micros() as i64;
        let d = a.arrival_us - sent_us;
        // Monotonic deque of minima: a sample hides every older, larger one.
        while self.owd.back().is_some_and(|&(_, v)| v >= d) {
            self.owd.pop_back();
        }
        self.owd.push_back((a.arrival_us, d));
        if self.owd.len() > HISTORY_MAX {
            self.owd.pop_front(); // hostile arrival times: stay bounded
        }
        let window = BASE_DELAY_WINDOW.as_micros() as i64;
        while self.owd.len() > 1
            && self
                .owd
                .front()
                .is_some_and(|&(t, _)| t < a.arrival_us - window)
        {
            self.owd.pop_front();
        }
        let base = self.owd.front().map_or(d, |&(_, v)| v);
        self.queue_ms = (d - base).max(0) as f64 / 1e3;
        let q = (d - base).max(0);
        while self.recent_queue.back().is_some_and(|&(_, v)| v >= q) {
            self.recent_queue.pop_back();
        }
        self.recent_queue.push_back((a.arrival_us, q));
        let w = STANDING_WINDOW.as_micros() as i64;
        while self.recent_queue.len() > HISTORY_MAX
            || (self.recent_queue.len() > 1
                && self
                    .recent_queue
                    .front()
                    .is_some_and(|&(t, _)| t < a.arrival_us - w))
        {
            self.recent_queue.pop_front();
        }
        d
    }

    /// A link whose capacity fell far below the target shows, one feedback after the fall,
    /// as a queue that grew fast (`growth` µs among this feedback's packets) while the
    /// connection delivered much less than the target. The delay detector would need the
    /// queue's own delay plus a round trip to see it (the queue is full by then); what got
    /// through is the new capacity, acted on now.
    fn detect_drop(&mut self, growth: i64) {
        if growth < DROP_GROWTH_US || self.queue_ms < DROP_QUEUE_MS {
            return;
        }
        let n = self.delivered.len();
        if n < 2 {
            return;
        }
        let ((t0, b0), (t1, b1)) = (self.delivered[n - 2], self.delivered[n - 1]);
        let span = (t1 - t0) as f64 / 1e6;
        if span < 0.02 {
            return;
        }
        let rate = (b1 - b0) as f64 * 8.0 / span;
        if rate < DROP_DELIVERED * self.target_bps() as f64 {
            self.dropped_to = Some(rate);
        }
    }

    /// Start-up: before the first overuse, and within 10 s of the first packet.
    fn startup(&self, now: Instant) -> bool {
        self.last_overuse.is_none()
            && self
                .history
                .front()
                .is_none_or(|_| self.first_sent.is_none_or(|t| now < t + STARTUP))
    }

    fn find(&mut self, seq: u64) -> Option<&mut Sent> {
        let first = self.history.front()?.seq;
        let i = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.history.get_mut(i).filter(|s| s.seq == seq)
    }

    fn unwrap_reference(&mut self, r: u32) -> i64 {
        let v = match self.last_ref {
            None => i64::from(r),
            Some((lr, lv)) => lv + i64::from(r.wrapping_sub(lr) as i32),
        };
        self.last_ref = Some((r, v));
        v * FEEDBACK_TICK_US as i64
    }

    fn note_delivered(&mut self, t_us: i64, rx: u32) {
        if rx == 0 {
            return;
        }
        let total = match self.last_rx {
            None => u64::from(rx),
            Some((lr, lt)) => lt + u64::from(rx.wrapping_sub(lr)),
        };
        self.last_rx = Some((rx, total));
        if self.delivered.back().is_some_and(|(t, _)| *t >= t_us) {
            return;
        }
        self.delivered.push_back((t_us, total));
        if self.delivered.len() > HISTORY_MAX {
            self.delivered.pop_front();
        }
        while self
            .delivered
            .front()
            .is_some_and(|(t, _)| *t < t_us - DELIVERED_WINDOW.as_micros() as i64)
        {
            self.delivered.pop_front();
        }
    }

    fn update_loss(&mut self, now: Instant, lost: usize, total: usize) {
        if total == 0 {
            return;
        }
        self.loss_window.push_back((now, lost, total));
        if self.loss_window.len() > HISTORY_MAX {
            self.loss_window.pop_front();
        }
        while self
            .loss_window
            .front()
            .is_some_and(|(t, _, _)| now > *t + Duration::from_secs(1))
        {
            self.loss_window.pop_front();
        }
        let (l, n) = self
            .loss_window
            .iter()
            .fold((0, 0), |(a, b), (_, l, n)| (a + l, b + n));
        self.loss = l as f64 / n.max(1) as f64;
        // GCC's loss controller: > 10 % cuts, below LOSS_GROW lets the estimate grow (the
        // delay controller decides how fast), in between holds. At most once per RTT-ish.
        if n < 20 {
            return;
        }
        if self.loss > 0.10 {
            let since = self.last_decrease.map_or(Duration::MAX, |t| now - t);
            if since > self.rtt + Duration::from_millis(300) {
                let base = self.loss_rate.min(self.rate);
                self.loss_rate = (base * (1.0 - 0.5 * self.loss)).max(self.min);
                self.last_decrease = Some(now);
            }
        } else if self.loss < LOSS_GROW {
            self.loss_rate = self.max;
        } else {
            self.loss_rate = self.loss_rate.min(self.rate.max(self.min) * 1.0);
        }
    }

    fn update_rate(&mut self, now: Instant) {
        let acked = self.acked_bps();
        if let Some(a) = self.dropped_to.take() {
            // The queue keeps growing for a round trip of data sent at the old rate: send a
            // quarter of what gets through until it drained, then return to just below it.
            self.rate = (DROP_DRAIN * a).max(self.min);
            self.recover_to = Some(DROP_RECOVER * a);
            self.draining_since = Some(now);
            self.overflow_before = Some(now);
            self.last_decrease = Some(now);
            self.last_overuse = Some(now);
            self.last_change = Some(now);
            self.capacity = None;
            self.state = RateState::Hold;
            return;
        }
        if let Some(since) = self.draining_since {
            // What the full queue dropped, and what the delay detector reads of it, is this
            // fall, already answered: neither cuts again. Once it drained, back to just
            // below what got through.
            let drained = self.queue_ms < DRAINED_MS || now >= since + MAX_DRAIN_TIME;
            if !drained {
                self.overflow_before = Some(now);
                return;
            }
            self.draining_since = None;
            if let Some(to) = self.recover_to.take() {
                self.rate = self.rate.max(to).min(self.max);
                self.loss_rate = self.loss_rate.max(to);
            }
            self.last_change = Some(now);
            self.state = RateState::Hold;
            return;
        }
        // After a probe its own burst's queue is no reason to cut; a queue well beyond it
        // is (a token bucket's burst let the probe through at line rate: the raise was
        // wrong, and the NAT lab's queue reached 200-320 ms before the grace ended).
        let grace = self.probe_grace_until.is_some_and(|t| now < t)
            && self.standing_ms() <= QUEUE_DRAIN_MS
            && self.queue_ms <= PROBE_QUEUE_MS;
        if !grace && self.usage != Usage::Overusing && self.drain_standing_queue(now, acked) {
            return;
        }
        self.state = match (self.usage, self.state) {
            (Usage::Overusing, _) if grace => RateState::Hold,
            (Usage::Overusing, _) => RateState::Decrease,
            (Usage::Underusing, _) => RateState::Hold,
            (Usage::Normal, RateState::Hold) => RateState::Increase,
            (Usage::Normal, s) => s,
        };
        let dt = self
            .last_change
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
            .min(Duration::from_secs(1));
        self.last_change = Some(now);
        match self.state {
            RateState::Hold => {}
            RateState::Increase => {
                if let (Some(a), Some((mean, dev))) = (acked, self.capacity_band())
                    && a / 1e3 > mean + 3.0 * dev
                {
                    self.capacity = None; // the link got faster: forget the old capacity
                }
                let standing = self.standing_ms() > QUEUE_TARGET_MS;
                let inc = if standing {
                    0.0
                } else if self.near_capacity() {
                    // Additive: about one 1200-byte packet per response time.
                    let response = (self.rtt + Duration::from_millis(100)).as_secs_f64();
                    let per_frame = (self.rate / 30.0).max(1200.0 * 8.0);
                    per_frame.min(1200.0 * 8.0) * dt.as_secs_f64() / response
                } else {
                    self.rate * (1.08f64.powf(dt.as_secs_f64()) - 1.0)
                };
                let floor = if standing { 0.0 } else { 1000.0 };
                let mut r = self.rate + inc.max(floor * dt.as_secs_f64());
                // The queue a decrease drained is gone: back to just below what got through.
                if self.queue_ms < 10.0
                    && self.loss < LOSS_GROW
                    && let Some(to) = self.recover_to.take()
                {
                    r = r.max(to);
                    self.loss_rate = self.loss_rate.max(to);
                }
                // Never far above what actually gets through (an application-limited call
                // must not build an estimate it has never tested).
                if let Some(a) = acked {
                    r = r.min((1.5 * a + 10_000.0).max(self.rate));
                }
                self.rate = r.min(self.max);
            }
            RateState::Decrease => {
                self.decrease(now, acked);
                self.state = RateState::Hold;
            }
        }
    }

    /// The link capacity estimate and its deviation, kbit/s. The variance is kept
    /// normalised by the mean (as libwebrtc's link capacity estimator keeps it): the
    /// deviation is `sqrt(var × mean)`, ±60-200 kbit/s around 1 Mbit/s, not `sqrt(var)`.
    fn capacity_band(&self) -> Option<(f64, f64)> {
        self.capacity
            .map(|(mean, var)| (mean, (var * mean.max(1.0)).sqrt()))
    }

    /// The estimate is within three deviations of the capacity found by earlier decreases:
    /// grow additively there, and probe only a little above it.
    fn near_capacity(&self) -> bool {
        self.capacity_band().is_some_and(|(mean, dev)| {
            let k = self.rate / 1e3;
            k < mean + 3.0 * dev && k > mean - 3.0 * dev
        })
    }

    /// Decreases come once per round trip, but a queue inflates the RTT: the wait is capped
    /// so a collapsing link is followed within a few feedbacks.
    fn may_decrease(&self, now: Instant) -> bool {
        let spacing = self
            .rtt
            .clamp(Duration::from_millis(50), Duration::from_millis(200));
        self.last_decrease
            .is_none_or(|t| now.saturating_duration_since(t) >= spacing)
    }

    /// The trendline flagged overuse: below what got through, once per round trip.
    fn decrease(&mut self, now: Instant, acked: Option<f64>) {
        if self.may_decrease(now) {
            let a = acked.unwrap_or(self.rate);
            // Below what gets through, and lower still while a queue stands, so
            // that it drains in about DRAIN_TIME instead of lingering.
            let backlog = a * self.queue_ms / 1e3 / DRAIN_TIME.as_secs_f64();
            let r = (BETA * a - backlog).max(0.5 * a).min(self.rate);
            // While a queue stands, what got through is the bottleneck's rate: the
            // level to return to once the queue is gone (later cuts, made while
            // the queue drains and little arrives, do not lower it).
            if self.queue_ms > 50.0 {
                self.recover_to = Some(BETA * a);
            }
            self.rate = r.max(self.min);
            let k = a / 1e3;
            self.capacity = Some(match self.capacity {
                None => (k, 0.4 * k * 0.4 * k),
                Some((mean, var)) => {
                    let m = 0.95 * mean + 0.05 * k;
                    let norm = mean.max(1.0);
                    let v = 0.95 * var + 0.05 * (mean - k) * (mean - k) / norm;
                    (m, v.clamp(0.4, 2.5 * 2.5))
                }
            });
            self.last_decrease = Some(now);
            self.last_overuse = Some(now);
        }
    }

    /// The delay target's other half: a standing queue above [`QUEUE_DRAIN_MS`] that the
    /// trendline does not flag (a rate a few per cent above the capacity grows the queue
    /// by tens of ms a second, a slope under its threshold) is drained back to the target
    /// within about [`DRAIN_TIME`], once per round trip. Returns whether it cut.
    fn drain_standing_queue(&mut self, now: Instant, acked: Option<f64>) -> bool {
        let standing = self.standing_ms();
        if standing <= QUEUE_DRAIN_MS {
            self.draining_standing = None;
            return false;
        }
        if !self.may_decrease(now) {
            return false;
        }
        let (since, first) = *self.draining_standing.get_or_insert((now, standing));
        if now.saturating_duration_since(since) > REBASE_AFTER && standing > first / 2.0 {
            // Sending below what got through for this long drains any queue: what stays
            // is a path that got longer (a switch to the relay, a new route). Its delay
            // is the new base.
            self.rebase_delay();
            return false;
        }
        let a = acked.unwrap_or(self.rate);
        let excess = (standing - QUEUE_TARGET_MS) / 1e3 / DRAIN_TIME.as_secs_f64();
        let r = (a * (1.0 - excess)).min(STANDING_BETA * a).min(self.rate);
        self.rate = r.max(self.min);
        self.last_decrease = Some(now);
        self.last_change = Some(now);
        self.state = RateState::Hold;
        true
    }

    /// Forgets the one-way delays seen so far: the next ones set the base.
    fn rebase_delay(&mut self) {
        self.owd.clear();
        self.recent_queue.clear();
        self.queue_ms = 0.0;
        self.draining_standing = None;
    }

    /// The standing queue: the least queueing over the last [`STANDING_WINDOW`], ms (frame
    /// bursts queue for a few ms and leave; what stays under every packet is standing).
    fn standing_ms(&self) -> f64 {
        self.recent_queue
            .front()
            .map_or(0.0, |&(_, v)| v as f64 / 1e3)
    }

    /// Probe clusters whose packets have all been reported: what arrived, how fast.
    fn on_probe_results(&mut self, now: Instant, acked: &[Acked]) {
        if self.probes_running.is_empty() {
            return;
        }
        let mut done = Vec::new();
        for &(id, started, rate) in &self.probes_running {
            let pkts: Vec<&Acked> = acked.iter().filter(|a| a.probe == Some(id)).collect();
            let expired = now > started + Duration::from_secs(2);
            if pkts.len() >= PROBE_MIN_PACKETS / 2 {
                let (f, l) = (pkts[0], pkts[pkts.len() - 1]);
                let recv_span = (l.arrival_us - f.arrival_us) as f64 / 1e6;
                let send_span = l.sent.saturating_duration_since(f.sent).as_secs_f64();
                let bytes: usize = pkts[1..].iter().map(|p| p.bytes).sum();
                if recv_span > 0.0 && send_span > 0.0 {
                    let recv = bytes as f64 * 8.0 / recv_span;
                    let send = bytes as f64 * 8.0 / send_span;
                    let got = recv.min(send);
                    // What the path delivered is a measurement, overuse or not (the
                    // probe's own burst queues a little by design).
                    if got > self.rate * 1.1 {
                        // A short probe can pass a token bucket's burst at line rate (the
                        // NAT lab's tbf let 16 kB through and probes read 2-3x the link):
                        // past start-up, one probe may raise the estimate by half at most,
                        // and the delay detector judges the rest.
                        let cap = if self.startup(now) {
                            self.max
                        } else {
                            self.rate * 1.5
                        };
                        self.rate = (0.9 * got).min(cap).min(self.max).max(self.rate);
                        self.probe_failures = 0;
                        // The path carried clearly more than the capacity earlier
                        // decreases found: that figure is stale (the next probes look
                        // further, growth is multiplicative again).
                        if self
                            .capacity_band()
                            .is_some_and(|(mean, dev)| got / 1e3 > mean + 3.0 * dev)
                        {
                            self.capacity = None;
                        }
                        self.probe_grace_until = Some(now + self.rtt + Duration::from_millis(200));
                        // Everything the probe sent got through: during start-up the path
                        // may have far more to give, probe again right away.
                        if recv >= 0.85 * send && self.startup(now) {
                            self.next_probe = Some(now);
                        } else {
                            // Found more: look again soon (a link that got faster is
                            // climbed in a few steps of at most half each).
                            let soon = now + REPROBE_AFTER_SUCCESS;
                            self.next_probe = Some(self.next_probe.map_or(soon, |n| n.min(soon)));
                        }
                    } else {
                        self.probe_failures += 1;
                        // A probe at capacity queues for its own 50 ms: that is not a
                        // reason to cut below what the path just carried.
                        self.probe_grace_until =
                            Some(now + self.rtt.min(Duration::from_millis(200)));
                    }
                    let _ = rate;
                }
                done.push(id);
            } else if expired {
                self.probe_failures += 1;
                done.push(id);
            }
        }
        self.probes_running.retain(|(id, _, _)| !done.contains(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bottleneck of `rate` bit/s with `delay` one way and no loss: returns arrival times.
    struct Link {
        rate: f64,
        delay: Duration,
        busy_until: Instant,
    }

    impl Link {
        fn send(&mut self, now: Instant, bytes: usize) -> Instant {
            let start = self.busy_until.max(now);
            self.busy_until = start + Duration::from_secs_f64(bytes as f64 * 8.0 / self.rate);
            self.busy_until + self.delay
        }
    }

    /// Runs a sender that always sends at the estimate through `link` for `secs`.
    fn run(link_rate: impl Fn(f64) -> f64, secs: f64, start: u64) -> Vec<(f64, u64, f64)> {
        run_on(link_rate, |_| Duration::from_millis(50), secs, start)
    }

    /// [`run`] on a path whose one-way delay is `link_delay(t)`.
    fn run_on(
        link_rate: impl Fn(f64) -> f64,
        link_delay: impl Fn(f64) -> Duration,
        secs: f64,
        start: u64,
    ) -> Vec<(f64, u64, f64)> {
        let t0 = Instant::now();
        let mut bwe = Bwe::new(start, 50_000, 5_000_000);
        bwe.set_rtt(Duration::from_millis(100));
        let mut fb = FeedbackBuilder::new();
        let mut link = Link {
            rate: link_rate(0.0),
            delay: Duration::from_millis(50),
            busy_until: t0,
        };
        let mut inflight: VecDeque<(Instant, u16)> = VecDeque::new();
        let mut feedback: VecDeque<(Instant, Feedback)> = VecDeque::new();
        let mut out = Vec::new();
        let mut now = t0;
        let step = Duration::from_millis(5);
        let mut credit = 0.0;
        let mut probe: Option<(ProbeCluster, usize)> = None;
        let mut rx_bytes = 0u32;
        while now < t0 + Duration::from_secs_f64(secs) {
            let t = (now - t0).as_secs_f64();
            link.rate = link_rate(t);
            link.delay = link_delay(t);
            if probe.is_none() {
                probe = bwe.poll_probe(now).map(|p| (p, p.bytes));
            }
            let rate = match probe {
                Some((p, _)) => p.rate_bps as f64,
                None => bwe.target_bps() as f64,
            };
            credit += rate * step.as_secs_f64() / 8.0;
            while credit >= 1000.0 {
                credit -= 1000.0;
                let id = probe.map(|(p, _)| p.id);
                let tw = bwe.on_send(now, 1000, id);
                let q = link.busy_until.saturating_duration_since(now);
                let arr = link.send(now, 1000);
                out.push((t, bwe.target_bps(), q.as_secs_f64() * 1e3));
                inflight.push_back((arr, tw));
                if let Some((_, left)) = probe.as_mut() {
                    *left = left.saturating_sub(1000);
                    if *left == 0 {
                        probe = None;
                    }
                }
            }
            while inflight.front().is_some_and(|(a, _)| *a <= now) {
                if let Some((a, tw)) = inflight.pop_front() {
                    rx_bytes = rx_bytes.wrapping_add(1000);
                    fb.on_arrival(a, tw, rx_bytes);
                }
            }
            for f in fb.poll(now) {
                feedback.push_back((now + Duration::from_millis(50), f));
            }
            while feedback.front().is_some_and(|(a, _)| *a <= now) {
                if let Some((_, f)) = feedback.pop_front() {
                    bwe.on_feedback(now, &f);
                }
            }
            now += step;
        }
        out
    }

    fn mean_rate(out: &[(f64, u64, f64)], from: f64, to: f64) -> f64 {
        let v: Vec<f64> = out
            .iter()
            .filter(|(t, _, _)| (from..to).contains(t))
            .map(|(_, r, _)| *r as f64)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    }

    #[test]
    fn converges_to_a_fixed_bottleneck_without_building_a_queue() {
        let out = run(|_| 1_000_000.0, 30.0, 300_000);
        let r = mean_rate(&out, 10.0, 30.0);
        assert!((800_000.0..1_050_000.0).contains(&r), "{r}");
        let mut q: Vec<f64> = out
            .iter()
            .filter(|(t, _, _)| *t > 10.0)
            .map(|x| x.2)
            .collect();
        q.sort_by(f64::total_cmp);
        let p95 = q[q.len() * 95 / 100];
        assert!(p95 < 100.0, "p95 queue {p95} ms");
    }

    #[test]
    fn follows_a_drop_and_a_rise() {
        let out = run(
            |t| {
                if t < 15.0 {
                    2_000_000.0
                } else if t < 30.0 {
                    600_000.0
                } else {
                    1_500_000.0
                }
            },
            45.0,
            300_000,
        );
        let high = mean_rate(&out, 8.0, 15.0);
        let low = mean_rate(&out, 20.0, 30.0);
        let back = mean_rate(&out, 37.0, 45.0);
        assert!(high > 1_500_000.0, "{high}");
        assert!((400_000.0..650_000.0).contains(&low), "{low}");
        assert!(back > 1_100_000.0, "{back}");
    }

    #[test]
    fn a_sudden_fall_is_answered_before_the_delay_detector_could() {
        // 2.5 -> 0.6 Mbit/s: the queue fills within ~100 ms; the delay it builds reaches
        // the sender only after that delay plus a round trip.
        let out = run(
            |t| if t < 15.0 { 2_500_000.0 } else { 600_000.0 },
            30.0,
            300_000,
        );
        let cut = out
            .iter()
            .find(|(t, r, _)| *t >= 15.0 && *r < 600_000)
            .map_or(f64::INFINITY, |x| x.0 - 15.0);
        assert!(
            cut <= 0.3,
            "target under the new capacity {cut:.3} s after the fall"
        );
        // Drained and back near the new capacity (not held down by the overflow's loss).
        let qmax = out
            .iter()
            .filter(|(t, _, _)| *t > 16.5)
            .map(|x| x.2)
            .fold(0.0, f64::max);
        assert!(qmax < 150.0, "queue {qmax} ms after the drain");
        let low = mean_rate(&out, 16.5, 30.0);
        assert!((400_000.0..650_000.0).contains(&low), "{low}");
    }

    #[test]
    fn a_standing_queue_is_drained_and_a_longer_path_is_not_one() {
        // 1 Mbit/s; at 20 s the path gets 40 ms longer each way (a switch to the relay):
        // that looks like a 40 ms standing queue that no drain can empty.
        let out = run_on(
            |_| 1_000_000.0,
            |t| Duration::from_millis(if t < 20.0 { 50 } else { 90 }),
            45.0,
            300_000,
        );
        let mut q: Vec<f64> = out
            .iter()
            .filter(|(t, _, _)| (8.0..20.0).contains(t))
            .map(|x| x.2)
            .collect();
        q.sort_by(f64::total_cmp);
        let p95 = q[q.len() * 95 / 100];
        assert!(p95 < 40.0, "queue p95 {p95} ms at steady state");
        // The drains stop once they cannot shrink it: the estimate stays near capacity.
        let after = mean_rate(&out, 21.0, 30.0);
        assert!(after > 750_000.0, "{after} after the path got longer");
    }

    #[test]
    fn feedback_reports_gaps_and_sizes_stay_bounded() {
        let t0 = Instant::now();
        let mut fb = FeedbackBuilder::new();
        for (i, tw) in [10u16, 11, 13, 14].into_iter().enumerate() {
            fb.on_arrival(t0 + Duration::from_millis(i as u64), tw, 100);
        }
        // 12 may still come (reordering): the gap waits for a later report.
        let f = fb.poll(t0 + Duration::from_millis(5));
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].base, f[0].deltas.clone()), (10, vec![0, 4]));
        let f = fb.poll(t0 + Duration::from_millis(60));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].base, 12);
        assert_eq!(f[0].deltas, vec![NOT_RECEIVED, 0, 4]);
        // Nothing more until the interval passed; a late 12 is not reported again.
        fb.on_arrival(t0 + Duration::from_millis(61), 12, 100);
        assert!(fb.poll(t0 + Duration::from_millis(62)).is_empty());
        // A hostile flood of numbers keeps the pending set bounded.
        for i in 0..60_000u32 {
            fb.on_arrival(t0 + Duration::from_millis(10), (i * 7) as u16, 0);
        }
        assert!(fb.pending.len() <= ARRIVALS_MAX);
        let f = fb.poll(t0 + Duration::from_secs(1));
        assert!(f.iter().all(|f| f.deltas.len() <= MAX_FEEDBACK));
    }

    #[test]
    fn reordered_arrivals_are_reported_with_their_own_times() {
        let t0 = Instant::now();
        let ms = |m| t0 + Duration::from_millis(m);
        let mut fb = FeedbackBuilder::new();
        fb.on_arrival(ms(0), 10, 0);
        fb.on_arrival(ms(1), 12, 0);
        fb.on_arrival(ms(10), 11, 0); // overtaken by 12
        let f = fb.poll(ms(60));
        assert_eq!(f.len(), 1);
        // 11 arrived 10 ms after 10 (40 ticks), 12 9 ms before 11 (−36 ticks).
        assert_eq!((f[0].base, f[0].deltas.clone()), (10, vec![0, 40, -36]));
        // The sender reads the same arrival times back.
        let mut bwe = Bwe::new(300_000, 50_000, 1_000_000);
        for i in 0..3 {
            bwe.on_send(ms(i), 1000, None);
        }
        let mut u = Unwrapper::default();
        assert_eq!(u.unwrap(10) + 2, u.unwrap(12));
        bwe.on_feedback(ms(60), &f[0]);
        assert_eq!(bwe.stats().feedbacks, 1);
    }

    #[test]
    fn sequence_numbers_unwrap_across_the_16_bit_edge() {
        let mut u = Unwrapper::default();
        let a = u.unwrap(65_534);
        assert_eq!(u.unwrap(65_535), a + 1);
        assert_eq!(u.unwrap(0), a + 2);
        assert_eq!(u.unwrap(65_535), a + 1);
        assert_eq!(u.unwrap(5), a + 7);
    }

    #[test]
    fn hostile_feedback_neither_panics_nor_grows_memory() {
        let t0 = Instant::now();
        let mut bwe = Bwe::new(300_000, 50_000, 5_000_000);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000u64 {
            let now = t0 + Duration::from_millis(i);
            bwe.on_send(now, 1200, None);
            let deltas = (0..(next() % 300) as usize)
                .map(|_| next() as i16)
                .collect();
            let fb = Feedback {
                base: next() as u16,
                reference: next() as u32,
                rx_bytes: next() as u32,
                deltas,
            };
            bwe.on_feedback(now, &fb);
            let _ = bwe.poll_probe(now);
            let t = bwe.target_bps();
            assert!((50_000..=5_000_000).contains(&t), "{t}");
        }
        assert!(bwe.history.len() <= HISTORY_MAX);
        assert!(bwe.owd.len() <= HISTORY_MAX);
        assert!(bwe.delivered.len() <= HISTORY_MAX);
        assert!(bwe.loss_window.len() <= HISTORY_MAX);
        assert!(bwe.acked.samples.len() <= HISTORY_MAX);
    }
}

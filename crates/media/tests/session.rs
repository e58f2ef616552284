//! Two media sessions on a virtual clock through a seeded network (50 ms ± 10 ms one way,
//! reordering, random loss): 20 ms audio frames and 30 fps video (8 KB frames, 30 KB
//! keyframes on request) for 60 s. Audio is pulled at the device's cadence, video when due.
//! Measures concealed audio, freezes per minute, lip-sync skew and NACK traffic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2pcall_media::audio::Playout;
use p2pcall_media::call::Negotiated;
use p2pcall_media::session::{Bitrates, MediaSession, SessionEvent};
use p2pcall_proto::call::{Codec, StreamDesc, StreamKind};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

const AUDIO: u8 = 0;
const VIDEO: u8 = 1;

fn streams() -> Vec<StreamDesc> {
    vec![
        StreamDesc {
            id: AUDIO,
            kind: StreamKind::Audio,
            codec: Codec::Opus,
            active: true,
        },
        StreamDesc {
            id: VIDEO,
            kind: StreamKind::Camera,
            codec: Codec::H264,
            active: true,
        },
    ]
}

/// Seeded one-way network: N(50 ms, 10 ms) delay (at least 30 ms), random loss.
struct Net {
    rng: rand::rngs::StdRng,
    jitter: Normal<f64>,
    loss: f64,
    /// (arrival µs, index into `msgs`)
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    /// (to the receiver?, datagram)
    msgs: Vec<Option<(bool, Bytes)>>,
}

impl Net {
    fn send(&mut self, now_ms: f64, to_rx: bool, d: Bytes) {
        if self.rng.random_bool(self.loss) {
            return;
        }
        let delay: f64 = self.jitter.sample(&mut self.rng);
        self.msgs.push(Some((to_rx, d)));
        self.heap.push(Reverse((
            ((now_ms + delay.max(30.0)) * 1000.0) as u64,
            (self.msgs.len() - 1) as u64,
        )));
    }
}

/// A sender of [`streams`] and a receiver of them.
fn pair() -> (MediaSession, MediaSession) {
    let (mut tx, mut rx) = (MediaSession::new(), MediaSession::new());
    tx.configure(&Negotiated {
        send: streams(),
        receive: vec![],
    });
    rx.configure(&Negotiated {
        send: vec![],
        receive: streams(),
    });
    (tx, rx)
}

struct Outcome {
    concealed_pct: f64,
    freezes_per_min: f64,
    video_frames: u64,
    skew_p05: f64,
    skew_p95: f64,
    nacks: u64,
    keyframe_requests: u64,
    audio_delay_ms: f64,
}

fn run(seed: u64, loss: f64) -> Outcome {
    let jitter = Normal::new(50.0, 10.0).unwrap();
    let t0 = Instant::now();
    let at = |ms: f64| t0 + Duration::from_secs_f64(ms / 1e3);
    let (mut tx, mut rx) = pair();
    // 8 kB frames at 30 fps: ~2 Mbit/s of video on a path with room for it.
    tx.set_bitrates(Bitrates {
        start: 2_500_000,
        video_max: 3_000_000,
        ..Bitrates::default()
    });
    let rtt = Duration::from_millis(100);
    tx.set_rtt(rtt);
    rx.set_rtt(rtt);
    let mut net = Net {
        rng: rand::rngs::StdRng::seed_from_u64(seed),
        jitter,
        loss,
        heap: BinaryHeap::new(),
        msgs: Vec::new(),
    };
    let secs = 60.0;
    let (mut t, mut next_audio_tx, mut next_video_tx, mut next_play) = (0.0, 0.0, 0.0, 0.0);
    let (mut a_n, mut v_n, mut force_key) = (0u32, 0u32, true);
    let mut skews = Vec::new();
    let mut delays = Vec::new();
    while t < secs * 1000.0 {
        let now = at(t);
        // Sender: audio every 20 ms, video every 33.3 ms, timestamps from one clock.
        if t >= next_audio_tx {
            tx.send_frame(
                now,
                AUDIO,
                Bytes::from(vec![1u8; 80]),
                a_n * 960,
                true,
                1200,
            )
            .unwrap();
            a_n += 1;
            next_audio_tx += 20.0;
        }
        if t >= next_video_tx {
            let size = if force_key { 30_000 } else { 8_000 };
            let ts = (f64::from(v_n) * 1000.0 / 30.0 * 90.0) as u32;
            tx.send_frame(
                now,
                VIDEO,
                Bytes::from(vec![2u8; size]),
                ts,
                force_key,
                1200,
            )
            .unwrap();
            force_key = false;
            v_n += 1;
            next_video_tx += 1000.0 / 30.0;
        }
        // Deliveries due.
        while let Some(Reverse((due, i))) = net.heap.peek().copied() {
            if due as f64 / 1000.0 > t {
                break;
            }
            net.heap.pop();
            let (to_rx, d) = net.msgs[i as usize].take().unwrap();
            if to_rx {
                rx.handle_datagram(now, &d).unwrap();
            } else {
                tx.handle_datagram(now, &d).unwrap();
            }
        }
        rx.handle_timeout(now);
        tx.handle_timeout(now);
        while let Some(SessionEvent::KeyframeRequested { .. }) = tx.poll_event() {
            force_key = true;
        }
        // Receiver's device pulls audio; video is released when due.
        while next_play <= t {
            let o = rx.pop_audio(now, AUDIO).unwrap();
            if !matches!(o.playout, Playout::Silence) {
                delays.push(rx.recv_stats()[0].1.buffer_ms);
            }
            next_play += f64::from(o.samples()) / 48.0;
        }
        while rx.pop_video(now, VIDEO).is_some() {
            if let Some(s) = rx.recv_stats()[1].1.skew_ms {
                skews.push(s);
            }
        }
        while let Some(d) = tx.poll_transmit(now) {
            net.send(t, true, d);
        }
        while let Some(d) = rx.poll_transmit(now) {
            net.send(t, false, d);
        }
        t += 5.0;
    }
    let stats = rx.recv_stats();
    let (a, v) = (stats[0].1, stats[1].1);
    skews.sort_by(f64::total_cmp);
    delays.sort_by(f64::total_cmp);
    let pct = |v: &[f64], p: f64| v[((v.len() - 1) as f64 * p) as usize];
    Outcome {
        concealed_pct: a.concealed as f64 * 100.0 / a.playouts.max(1) as f64,
        freezes_per_min: v.freezes as f64 / (secs / 60.0),
        video_frames: v.frames,
        skew_p05: pct(&skews, 0.05),
        skew_p95: pct(&skews, 0.95),
        nacks: v.nacks,
        keyframe_requests: v.keyframe_requests,
        audio_delay_ms: pct(&delays, 0.5),
    }
}

#[test]
fn audio_and_video_stay_smooth_and_in_sync_under_jitter_and_loss() {
    let mut freezes = Vec::new();
    for seed in 1..=3 {
        for loss in [0.0, 0.02] {
            let o = run(seed, loss);
            println!(
                "seed {seed} loss {:.0}%: audio concealed {:.2}% (median buffer {:.0} ms), video {} of 1800 frames, {:.1} freezes/min, skew p5 {:+.0} ms p95 {:+.0} ms, {} NACKs, {} keyframe requests",
                loss * 100.0,
                o.concealed_pct,
                o.audio_delay_ms,
                o.video_frames,
                o.freezes_per_min,
                o.skew_p05,
                o.skew_p95,
                o.nacks,
                o.keyframe_requests
            );
            // Targets of the calls issue: ≤ 3 % concealed, ≤ 1 freeze/min, skew within
            // +45 / −125 ms (video behind its audio by at most 45 ms, ahead by at most 125).
            assert!(o.concealed_pct <= 3.0, "concealed {:.2}%", o.concealed_pct);
            freezes.push(o.freezes_per_min);
            assert!(o.video_frames >= 1700, "{} frames", o.video_frames);
            assert!(
                o.skew_p95 <= 45.0 && o.skew_p05 >= -125.0,
                "skew {:+.0}..{:+.0}",
                o.skew_p05,
                o.skew_p95
            );
            if loss == 0.0 {
                assert_eq!(o.freezes_per_min, 0.0);
                // Only reordering beyond the learned wait causes (spurious) NACKs; a stream
                // that starts with a keyframe never needs to ask for one.
                assert!(o.nacks <= 30, "{} NACKs without loss", o.nacks);
                assert_eq!(o.keyframe_requests, 0);
            } else {
                assert!(o.nacks > 0);
            }
        }
    }
    // Target: ≤ 1 freeze per minute. A freeze here is a packet whose NACK or retransmission
    // was lost too (two rounds at 100 ms RTT exceed the 183 ms freeze gap): rare, random
    // events, so the target holds on average, and no run has more than two.
    println!("freezes/min: {freezes:?}");
    let mean = freezes.iter().sum::<f64>() / freezes.len() as f64;
    assert!(
        mean <= 1.0 && freezes.iter().all(|&f| f <= 2.0),
        "{freezes:?}"
    );
}

#[test]
fn a_decoder_error_asks_the_sender_for_a_keyframe_at_a_bounded_rate() {
    let t0 = Instant::now();
    let (mut tx, mut rx) = pair();
    rx.set_rtt(Duration::from_millis(100));
    // Only a stream we receive video on can be asked about.
    assert!(!rx.request_keyframe(t0, AUDIO));
    assert!(!rx.request_keyframe(t0, 9));
    assert!(rx.request_keyframe(t0, VIDEO));
    // Repeated errors within max(2 RTT, 300 ms) do not repeat the request.
    assert!(!rx.request_keyframe(t0 + Duration::from_millis(100), VIDEO));
    let mut requests = 0;
    while let Some(d) = rx.poll_transmit(t0) {
        tx.handle_datagram(t0, &d).unwrap();
        while let Some(SessionEvent::KeyframeRequested { stream }) = tx.poll_event() {
            assert_eq!(stream, VIDEO);
            requests += 1;
        }
    }
    assert_eq!(requests, 1);
    assert!(rx.request_keyframe(t0 + Duration::from_millis(400), VIDEO));
}

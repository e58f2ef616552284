//! A group call's layer choice under a constrained pair, on the virtual clock.
//!
//! Alice sends to bob, carol and dave over three real QUIC connections (quinn-proto with
//! p2pcall's settings), each with its own `MediaSession`, as the engine's group call does:
//! every frame of a moving 640×360 test pattern is coded twice — the full layer, at what its
//! most constrained receiver allows, and the 320×180 small layer at up to `SMALL_BPS` — and
//! each pair's own estimate picks its layer (`LayerChoice`); a receiver moves to a layer at
//! that layer's next keyframe. Dave's link carries 500 kbit/s, bob's and carol's 5 Mbit/s
//! (40 ms one way). Each receiver decodes what it gets.
//!
//!     cargo test -p p2pcall-sim --test group_layers -- --nocapture
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{AUDIO, Peer, VIDEO, a};
use p2pcall_codec::{VideoConfig, VideoDecoder, VideoEncoder};
use p2pcall_media::session::SessionEvent;
use p2pcall_media::simulcast::{Layer, LayerChoice, SMALL_BPS, full_layer_need, small_size};
use p2pcall_media_io::pattern::TestPattern;
use p2pcall_sim::{Link, VirtualNet};

const ALICE: [&str; 3] = ["192.0.2.1:1001", "192.0.2.1:1002", "192.0.2.1:1003"];
const OTHERS: [&str; 3] = ["192.0.2.2:2000", "192.0.2.3:2000", "192.0.2.4:2000"];
/// Each pair's link from alice, bit/s: dave's is the constrained one.
const RATES: [u64; 3] = [5_000_000, 5_000_000, 500_000];
const FPS: f64 = 30.0;
const SECS: f64 = 20.0;
/// The figures count from here (the estimates have settled).
const SETTLED: f64 = 10.0;

/// Alice's call with one other participant.
struct Pair {
    tx: Peer,
    rx: Peer,
    choice: LayerChoice,
    sending: Layer,
    switching: Option<Layer>,
    dec: VideoDecoder,
    /// Decoded frames: (s, width).
    decoded: Vec<(f64, usize)>,
    /// Video bytes sent to it after [`SETTLED`].
    sent: u64,
}

/// What alice codes each frame time: the frame of each layer someone gets.
struct Encoders {
    full: VideoEncoder,
    small: VideoEncoder,
    full_bps: u32,
    small_bps: u32,
    force: [bool; 2],
}

fn encoder(bps: u32) -> VideoEncoder {
    VideoEncoder::new(VideoConfig {
        bitrate: bps,
        fps: FPS as f32,
        ..VideoConfig::default()
    })
    .unwrap()
}

fn index(l: Layer) -> usize {
    match l {
        Layer::Full => 0,
        Layer::Small => 1,
    }
}

/// One frame time: layer choices, the encoders' rates, coding, and each pair's frames.
fn video_tick(pairs: &mut [Pair], enc: &mut Encoders, now: Instant, t: f64, n: u32) {
    for p in pairs.iter_mut() {
        while let Some(SessionEvent::KeyframeRequested { .. }) = p.tx.session.poll_event() {
            enc.force[index(p.switching.unwrap_or(p.sending))] = true;
        }
        if let Some(to) = p.choice.update(now, p.tx.session.video_target_bps()) {
            p.switching = (to != p.sending).then_some(to);
            if let Some(l) = p.switching {
                enc.force[index(l)] = true;
            }
        }
    }
    let target = |layer: Layer| {
        (pairs.iter())
            .filter(|p| p.switching.unwrap_or(p.sending) == layer)
            .map(|p| p.tx.session.video_target_bps() as u32)
            .min()
    };
    let (full, small) = (target(Layer::Full), target(Layer::Small));
    if let Some(bps) = full.map(|b| b.min(1_000_000))
        && bps.abs_diff(enc.full_bps) > enc.full_bps / 20
    {
        enc.full.set_rate(bps, FPS as f32).unwrap();
        enc.full_bps = bps;
    }
    if let Some(bps) = small.map(|b| b.clamp(50_000, SMALL_BPS))
        && bps.abs_diff(enc.small_bps) > enc.small_bps / 20
    {
        enc.small.set_rate(bps, FPS as f32).unwrap();
        enc.small_bps = bps;
    }
    let ms = (t * 1e3) as u64;
    let (sw, sh) = small_size(640, 360);
    let mut coded = Vec::new();
    for (layer, wanted, size) in [
        (Layer::Full, full.is_some(), (640, 360)),
        (Layer::Small, small.is_some(), (sw, sh)),
    ] {
        if !wanted {
            continue;
        }
        let f = TestPattern::new(size.0, size.1).frame(n, ms as u32);
        let e = match layer {
            Layer::Full => enc.full.encode(&f, ms, enc.force[0]),
            Layer::Small => enc.small.encode(&f, ms, enc.force[1]),
        }
        .unwrap();
        if !e.data.is_empty() {
            enc.force[index(layer)] = false;
            coded.push((layer, Bytes::from(e.data), e.keyframe));
        }
    }
    let ts = (t * 90_000.0) as u32;
    for p in pairs.iter_mut() {
        for (layer, data, key) in &coded {
            if *key && p.switching == Some(*layer) {
                p.sending = *layer;
                p.switching = None;
            }
            if *layer == p.sending {
                if t >= SETTLED {
                    p.sent += data.len() as u64;
                }
                let (_, conn) = p.tx.conn.as_mut().unwrap();
                let max = conn.datagrams().max_size().unwrap_or(1200);
                let _ =
                    p.tx.session
                        .send_frame(now, VIDEO, data.clone(), ts, *key, max);
            }
        }
    }
}

fn run() -> Vec<Pair> {
    let start = Instant::now();
    let at = |s: f64| start + Duration::from_secs_f64(s);
    let mut net = VirtualNet::new(start, 7);
    let mut pairs: Vec<Pair> = (0..3)
        .map(|i| {
            let (from, to) = (a(ALICE[i]), a(OTHERS[i]));
            net.connect(from, to, Link::with_delay(Duration::from_millis(40)));
            net.set_rate(from, to, Some(RATES[i]));
            // The engine's defaults for a 640x360 call (1 Mbit/s at most).
            let (tx, rx) = Peer::call(start, ALICE[i], OTHERS[i], 1_000_000);
            Pair {
                tx,
                rx,
                choice: LayerChoice::new(start, full_layer_need(640, 360, FPS as u32, 1_000_000)),
                sending: Layer::Full,
                switching: None,
                dec: VideoDecoder::new().unwrap(),
                decoded: Vec::new(),
                sent: 0,
            }
        })
        .collect();
    let mut enc = Encoders {
        full: encoder(600_000),
        small: encoder(SMALL_BPS),
        full_bps: 600_000,
        small_bps: SMALL_BPS,
        force: [true, true],
    };
    let mut connected = [false; 3];
    let (mut next_audio, mut next_video, mut next_play) = (0.0, 0.0, 0.0);
    let (mut a_n, mut v_n) = (0u32, 0u32);
    let mut now = start;
    let end = at(SECS);
    while now < end {
        let t = (now - start).as_secs_f64();
        for (i, p) in pairs.iter_mut().enumerate() {
            connected[i] |= p.tx.events();
            p.rx.events();
        }
        if connected.iter().all(|c| *c) {
            if t >= next_audio {
                for p in &mut pairs {
                    let frame = Bytes::from(vec![7u8; 80]);
                    p.tx.session
                        .send_frame(now, AUDIO, frame, a_n * 960, true, 1200)
                        .unwrap();
                }
                a_n += 1;
                next_audio += 0.02;
            }
            if t >= next_video {
                video_tick(&mut pairs, &mut enc, now, t, v_n);
                v_n += 1;
                next_video += 1.0 / FPS;
            }
            while next_play <= t {
                for p in &mut pairs {
                    let _ = p.rx.session.pop_audio(now, AUDIO);
                }
                next_play += 0.02;
            }
            for p in &mut pairs {
                while let Some(f) = p.rx.session.pop_video(now, VIDEO) {
                    if let Ok(Some(pic)) = p.dec.decode(&f.data) {
                        p.decoded.push((t, pic.width));
                    }
                }
            }
        }
        let mut next = end;
        for p in &mut pairs {
            p.tx.pump(now, &mut net);
            p.rx.pump(now, &mut net);
            for t in [p.tx.next_timeout(now), p.rx.next_timeout(now)]
                .into_iter()
                .flatten()
            {
                next = next.min(t);
            }
        }
        next = next.min(net.next_event().unwrap_or(end));
        next = next.min(at(next_audio.min(next_video).min(next_play)));
        now = next.max(now + Duration::from_micros(50));
        net.advance_to(now);
        while let Some(d) = net.pop_due() {
            for p in &mut pairs {
                if d.to == p.tx.addr {
                    p.tx.receive(d.at, d.payload.clone(), &mut net);
                } else if d.to == p.rx.addr {
                    p.rx.receive(d.at, d.payload.clone(), &mut net);
                }
            }
        }
    }
    pairs
}

#[test]
fn a_participant_behind_a_500_kbit_link_gets_the_small_layer_and_the_others_the_full_one() {
    let pairs = run();
    let span = SECS - SETTLED;
    for (p, name) in pairs.iter().zip(["bob", "carol", "dave"]) {
        let late: Vec<usize> = (p.decoded.iter())
            .filter(|(t, _)| *t >= SETTLED)
            .map(|(_, w)| *w)
            .collect();
        let fps = late.len() as f64 / span;
        let kbps = p.sent as f64 * 8.0 / span / 1e3;
        let widths: std::collections::BTreeSet<usize> = late.iter().copied().collect();
        println!(
            "{name}: {} kbit/s link, layer {:?}, from {SETTLED} s: {fps:.1} fps decoded at widths {widths:?}, video sent {kbps:.0} kbit/s",
            RATES[pairs.iter().position(|q| std::ptr::eq(q, p)).unwrap()] / 1000,
            p.sending
        );
        assert!(fps >= 25.0, "{name}: {fps:.1} fps");
        if name == "dave" {
            assert_eq!(p.sending, Layer::Small);
            assert_eq!(widths, [320].into(), "{name}");
            assert!(
                kbps <= f64::from(SMALL_BPS) / 1e3 * 1.1,
                "{name}: {kbps:.0} kbit/s"
            );
        } else {
            assert_eq!(p.sending, Layer::Full);
            assert_eq!(widths, [640].into(), "{name}");
            assert!(kbps > 600.0, "{name}: {kbps:.0} kbit/s");
        }
    }
}

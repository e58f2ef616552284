//! Loss recovery end to end on a virtual clock: packetizer → seeded lossy, jittery,
//! reordering network → assembler + NACK tracker ⇄ retransmission buffer → frame buffer,
//! with keyframe requests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2pcall_media::assemble::FrameAssembler;
use p2pcall_media::nack::{KeyframeRequests, NackTracker};
use p2pcall_media::packetize::Packetizer;
use p2pcall_media::retransmit::RetransmitBuffer;
use p2pcall_media::video::FrameBuffer;
use p2pcall_proto::media::{MediaDatagram, MediaPacket};
use rand::{Rng, SeedableRng};

const ONE_WAY_MS: f64 = 50.0;
const RTT: Duration = Duration::from_millis(100);

enum Msg {
    ToReceiver(MediaPacket),
    ToSender(MediaDatagram),
}

struct Net {
    rng: rand::rngs::StdRng,
    loss: f64,
    /// Packets sent while `blackout` covers now are all lost.
    blackout: Option<(f64, f64)>,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    msgs: Vec<Option<Msg>>,
}

impl Net {
    fn send(&mut self, now_ms: f64, m: Msg) {
        let dark = self
            .blackout
            .is_some_and(|(a, b)| now_ms >= a && now_ms < b);
        if dark || self.rng.random_bool(self.loss) {
            return;
        }
        // 50 ms plus 0–20 ms jitter: packets overtake each other.
        let at = now_ms + ONE_WAY_MS + self.rng.random::<f64>() * 20.0;
        self.msgs.push(Some(m));
        self.queue.push(Reverse((
            (at * 1000.0) as u64,
            (self.msgs.len() - 1) as u64,
        )));
    }
}

struct Outcome {
    frames: u32,
    released: u64,
    /// Longest time without a new decoded frame (ms).
    longest_gap: f64,
    keyframe_requests: u64,
    nacks: u64,
    resent: u64,
    recovered: u64,
}

fn run(seed: u64, loss: f64, blackout: Option<(f64, f64)>) -> Outcome {
    let t0 = Instant::now();
    let at = |ms: f64| t0 + Duration::from_secs_f64(ms / 1e3);
    let mut net = Net {
        rng: rand::rngs::StdRng::seed_from_u64(seed),
        loss,
        blackout,
        queue: BinaryHeap::new(),
        msgs: Vec::new(),
    };
    let mut pk = Packetizer::new(1);
    let mut rtx = RetransmitBuffer::new();
    let mut asm = FrameAssembler::new();
    let mut nack = NackTracker::starting_at(0);
    let mut fb = FrameBuffer::new();
    let mut kf = KeyframeRequests::default();
    let mut force_key = true;
    let frames = 300u32; // 10 s at 30 fps
    let mut released = 0u64;
    let mut last_release = 0.0f64;
    let mut longest_gap = 0.0f64;
    let mut t = 0.0f64;
    let (mut n, mut next_send) = (0u32, 0.0f64);
    let mut receiving = false;
    while t < f64::from(frames) * 33.3 + 2000.0 {
        // Sender: a frame every 33.3 ms (~8 KB, a keyframe every 100 frames or on request).
        if t >= next_send && n < frames {
            next_send += 100.0 / 3.0;
            let key = force_key || n % 100 == 0;
            force_key = false;
            let size = if key { 30_000 } else { 8_000 };
            let data = Bytes::from(vec![n as u8; size]);
            for p in pk.packetize(data, n * 3000, key, 1200).unwrap() {
                rtx.sent(at(t), p.clone());
                net.send(t, Msg::ToReceiver(p));
            }
            n += 1;
        }
        // Deliveries due by now.
        while let Some(Reverse((due, i))) = net.queue.peek().copied() {
            if due as f64 / 1000.0 > t {
                break;
            }
            net.queue.pop();
            match net.msgs[i as usize].take() {
                Some(Msg::ToReceiver(p)) => {
                    receiving = true;
                    nack.on_packet(at(t), p.seq, p.retransmit);
                    if let Ok(Some(f)) = asm.push(at(t), p) {
                        fb.push(f);
                    }
                }
                Some(Msg::ToSender(MediaDatagram::Nack { seqs, .. })) => {
                    for p in rtx.nacked(at(t), &seqs) {
                        net.send(t, Msg::ToReceiver(p));
                    }
                }
                Some(Msg::ToSender(MediaDatagram::KeyframeRequest { .. })) => force_key = true,
                _ => {}
            }
        }
        // Receiver: NACKs, decodable frames, keyframe requests.
        let poll = nack.poll(at(t), RTT);
        for chunk in poll.nack.chunks(p2pcall_proto::media::MAX_NACKS) {
            net.send(
                t,
                Msg::ToSender(MediaDatagram::Nack {
                    stream: 1,
                    seqs: chunk.to_vec(),
                }),
            );
        }
        // A missing frame is waited for up to two retransmission rounds.
        while let Some(f) = fb.pop(at(t), RTT * 5) {
            asm.discard_below(f.frame);
            released += 1;
            if released > 1 {
                longest_gap = longest_gap.max(t - last_release);
            }
            last_release = t;
        }
        // Not decodable (lost start, or an unrepairable gap) while packets arrive: ask.
        if fb.needs_keyframe() && receiving && kf.request(at(t), RTT) {
            net.send(
                t,
                Msg::ToSender(MediaDatagram::KeyframeRequest { stream: 1 }),
            );
        }
        t += 5.0;
    }
    Outcome {
        frames,
        released,
        longest_gap,
        keyframe_requests: kf.sent,
        nacks: nack.nacks_sent,
        resent: rtx.resent,
        recovered: nack.recovered,
    }
}

#[test]
fn two_percent_loss_each_way_is_repaired_by_nacks() {
    for seed in 0..5 {
        let o = run(seed, 0.02, None);
        println!(
            "seed {seed}: {}/{} frames decoded, longest gap {:.0} ms, {} NACKs, {} resent, {} recovered, {} keyframe requests",
            o.released,
            o.frames,
            o.longest_gap,
            o.nacks,
            o.resent,
            o.recovered,
            o.keyframe_requests
        );
        assert!(
            o.released as f64 >= f64::from(o.frames) * 0.99,
            "{} of {}",
            o.released,
            o.frames
        );
        assert!(o.recovered > 0);
        // Few spurious NACKs: the reordering wait follows the observed reordering.
        assert!(o.nacks < 3 * 62, "{} NACKs for ~62 losses", o.nacks);
        // At most the start-up request and one for a loss NACKs could not repair in time.
        assert!(o.keyframe_requests <= 2, "{}", o.keyframe_requests);
    }
}

#[test]
fn a_blackout_is_ended_by_a_keyframe_request() {
    // 1.5 s with every packet lost, 3 s in: NACKs cannot repair it (the sender keeps packets
    // for 1 s), so the receiver asks for a keyframe.
    let o = run(42, 0.0, Some((3000.0, 4500.0)));
    println!(
        "blackout: {}/{} frames decoded, longest gap {:.0} ms, {} keyframe requests",
        o.released, o.frames, o.longest_gap, o.keyframe_requests
    );
    assert!(o.keyframe_requests >= 1);
    // Back within the blackout + the frame buffer's wait (5 RTT) + a keyframe round trip
    // (+ margin), not at the next periodic keyframe (frame 200, 6.7 s).
    assert!(
        o.longest_gap < 1500.0 + 500.0 + 300.0 + 200.0,
        "gap {}",
        o.longest_gap
    );
    // 45 frames fall in the blackout; the ones after it wait for the requested keyframe.
    assert!(o.released >= 225, "{}", o.released);
}

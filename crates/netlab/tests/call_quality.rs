//! Benchmark (not run by CI: `scripts/bench.sh call-quality`): real calls between two
//! `p2pcall` processes in the NAT lab, under no impairment, 50±10 ms jitter, and 2 % random
//! loss. Prints, per condition, the stack-added latency of audio and video (capture to
//! playout, from the test pattern's stamps and the tone's beacons, minus the network's
//! one-way delay measured in the same run as RTT/2), freezes per minute, concealed audio and
//! the PSNR of the received video beside the codec alone on the same frames.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{lab_with_listener_args, run_a};
use p2pcall_codec::{VideoConfig, VideoDecoder, VideoEncoder};
use p2pcall_media_io::pattern::{TestPattern, decode};
use p2pcall_media_io::{psnr, y4m::Y4mReader};
use p2pcall_netlab::{Impair, Nat};
use serde_json::Value;

const W: usize = 640;
const H: usize = 360;
const KBPS: u32 = 1000;

/// PSNR of the pattern through the encoder and decoder alone, same size, rate and bitrate.
fn codec_alone(frames: u32) -> f64 {
    let mut enc = VideoEncoder::new(VideoConfig {
        bitrate: KBPS * 1000,
        fps: 30.0,
        screen: false,
        threads: 1,
        skip_frames: true,
    })
    .unwrap();
    let mut dec = VideoDecoder::new().unwrap();
    let pattern = TestPattern::new(W, H);
    let (mut sum, mut n) = (0.0, 0);
    for i in 0..frames {
        let f = pattern.frame(i, 1000 + i);
        let e = enc.encode(&f, u64::from(i) * 33, i == 0).unwrap();
        if e.data.is_empty() {
            continue;
        }
        if let Some(out) = dec.decode(&e.data).unwrap() {
            sum += psnr(&f, &out);
            n += 1;
        }
    }
    sum / f64::from(n.max(1))
}

fn percentile(mut v: Vec<f64>, p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[((v.len() - 1) as f64 * p).round() as usize])
}

struct Row {
    name: &'static str,
    rtt_ms: f64,
    video_ms: Option<f64>,
    video_p95_ms: Option<f64>,
    audio_ms: Option<f64>,
    audio_p95_ms: Option<f64>,
    freezes_per_min: f64,
    concealed_pct: f64,
    psnr_mean: f64,
    psnr_worst: f64,
    frames: u32,
    path: String,
}

fn run(name: &'static str, impair: Impair, secs: u32) -> Option<Row> {
    let (mut lab, id, _b) = lab_with_listener_args(Nat::Cone, Nat::Cone, impair, &["--answer"])?;
    let (vid, stats) = (lab.dir.join("a.y4m"), lab.dir.join("a.json"));
    let (v, s, d) = (
        vid.to_str().unwrap().to_string(),
        stats.to_str().unwrap().to_string(),
        secs.to_string(),
    );
    let (_, out) = run_a(
        &mut lab,
        &[
            "call",
            &id,
            "--duration",
            &d,
            "--record-video",
            &v,
            "--stats-json",
            &s,
        ],
    );
    let lines = out.collect(Duration::from_secs(u64::from(secs) + 60));
    let end = lines.iter().find(|l| l["event"] == "call_ended");
    assert!(end.is_some(), "{name}: the call did not end: {lines:?}");
    let st: Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    if let Ok(dir) = std::env::var("CALL_KEEP") {
        let _ = std::fs::copy(&stats, format!("{dir}/{}.json", name.replace(' ', "_")));
    }
    let fin = &st["final"];
    let secs_v = st["seconds"].as_array().unwrap();
    // Skip the first 2 s (start-up: first keyframe, buffers settling).
    let series = |k: &str| -> Vec<f64> {
        secs_v
            .iter()
            .skip(2)
            .filter_map(|x| x[k].as_f64())
            .collect()
    };
    let recv = fin["recv"].as_array().unwrap();
    let by = |kind: &str| {
        recv.iter()
            .find(|r| r["kind"] == kind)
            .unwrap_or_else(|| panic!("{name}: no {kind} received: {fin}"))
            .clone()
    };
    let (audio, video) = (by("audio"), by("video"));
    let minutes = fin["elapsed_s"].as_f64().unwrap() / 60.0;

    let mut r = Y4mReader::open(&vid).unwrap();
    let pattern = TestPattern::new(W, H);
    let (mut sum, mut worst, mut frames) = (0.0, f64::MAX, 0u32);
    while let Some(f) = r.next_frame().unwrap() {
        let Some((n, cap)) = decode(&f) else { continue };
        let q = psnr(&pattern.frame(n, cap), &f);
        sum += q;
        worst = worst.min(q);
        frames += 1;
    }
    Some(Row {
        name,
        rtt_ms: fin["rtt_ms"].as_f64().unwrap(),
        video_ms: fin["video_latency_mean_ms"].as_f64(),
        video_p95_ms: percentile(series("video_latency_ms"), 0.95),
        audio_ms: fin["audio_latency_mean_ms"].as_f64(),
        audio_p95_ms: percentile(series("audio_latency_ms"), 0.95),
        freezes_per_min: video["freezes"].as_f64().unwrap() / minutes,
        concealed_pct: audio["concealed_pct"].as_f64().unwrap(),
        psnr_mean: sum / f64::from(frames.max(1)),
        psnr_worst: worst,
        frames,
        path: fin["path"].as_str().unwrap_or("").to_string(),
    })
}

#[test]
#[ignore = "benchmark: scripts/bench.sh call-quality"]
fn call_quality() {
    let secs: u32 = std::env::var("CALL_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let ms = Duration::from_millis;
    let conditions = [
        ("no impairment", Impair::default()),
        (
            "50±10 ms jitter",
            Impair {
                one_way_delay: ms(40),
                jitter: ms(20),
                ..Impair::default()
            },
        ),
        (
            "2% loss, 25 ms",
            Impair {
                one_way_delay: ms(25),
                loss_permille: 20,
                ..Impair::default()
            },
        ),
        (
            "2% loss + 50±10 ms",
            Impair {
                one_way_delay: ms(40),
                jitter: ms(20),
                loss_permille: 20,
                ..Impair::default()
            },
        ),
    ];
    let baseline = codec_alone(300);
    let f = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.0}"));
    println!(
        "{secs} s calls, {W}x{H} test pattern at {KBPS} kbit/s + 440 Hz tone, both ways, cone x \
         cone NATs"
    );
    println!(
        "{:<20} {:>6} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>8} {:>9} | {:>6} {:>6} {:>7} {:>6}",
        "condition",
        "rtt",
        "video ms",
        "p95",
        "stack",
        "audio ms",
        "p95",
        "stack",
        "frz/min",
        "conceal%",
        "PSNR",
        "worst",
        "ratio",
        "frames"
    );
    let only = std::env::var("CALL_ONLY").unwrap_or_default();
    for (name, imp) in conditions {
        if !name.contains(only.as_str()) {
            continue;
        }
        let Some(r) = run(name, imp, secs) else {
            return;
        };
        let one_way = r.rtt_ms / 2.0;
        println!(
            "{:<20} {:>6.1} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>8.2} {:>9.2} | {:>6.1} {:>6.1} {:>7.3} {:>6}  {}",
            r.name,
            r.rtt_ms,
            f(r.video_ms),
            f(r.video_p95_ms),
            f(r.video_ms.map(|v| v - one_way)),
            f(r.audio_ms),
            f(r.audio_p95_ms),
            f(r.audio_ms.map(|v| v - one_way)),
            r.freezes_per_min,
            r.concealed_pct,
            r.psnr_mean,
            r.psnr_worst,
            r.psnr_mean / baseline,
            r.frames,
            r.path
        );
    }
    println!(
        "stack = capture-to-playout minus RTT/2 (the network's one-way delay); ratio = PSNR / \
         codec alone on the same frames ({baseline:.1} dB)"
    );
}

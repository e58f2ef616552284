//! Codec speed on this machine: H264 encode + decode per frame at 720p30 and 1080p (camera
//! mode, one thread), 1080p screen-content encode rate (one and two threads), Opus per frame.
//! The baseline is the frame budget: a ratio ≥ 1 is faster than real time. Every frame is
//! coded (no rate-control skips), so the bitrate may exceed the target on this busy pattern.

use std::time::Instant;

use anyhow::Result;
use p2pcall_codec::{
    AudioConfig, AudioDecoder, AudioEncoder, AudioInput, VideoConfig, VideoDecoder, VideoEncoder,
};
use p2pcall_media_io::audio::SpeechLike;
use p2pcall_media_io::pattern::TestPattern;
use p2pcall_media_io::psnr;

fn video(label: &str, (w, h): (usize, usize), cfg: VideoConfig, frames: u32) -> Result<()> {
    let fps = cfg.fps;
    let p = TestPattern::new(w, h);
    let ms = |n: u32| (f64::from(n) * 1000.0 / f64::from(fps)) as u32;
    let src: Vec<_> = (0..frames).map(|n| p.frame(n, ms(n))).collect();
    let mut enc = VideoEncoder::new(cfg)?;
    let mut dec = VideoDecoder::new()?;
    let (mut t_enc, mut t_dec, mut bytes, mut q, mut decoded) = (0.0, 0.0, 0usize, 0.0, 0u32);
    for (n, f) in src.iter().enumerate() {
        let t0 = Instant::now();
        let e = enc.encode(f, u64::from(ms(n as u32)), false)?;
        t_enc += t0.elapsed().as_secs_f64();
        bytes += e.data.len();
        let t1 = Instant::now();
        let out = dec.decode(&e.data)?;
        t_dec += t1.elapsed().as_secs_f64();
        if let Some(o) = out {
            q += psnr(f, &o);
            decoded += 1;
        }
    }
    let n = f64::from(frames);
    let (enc_ms, dec_ms) = (t_enc / n * 1e3, t_dec / n * 1e3);
    let budget = 1000.0 / f64::from(fps);
    println!(
        "  {label:<34} encode {enc_ms:>6.2} ms/frame ({:>5.0} fps)  decode {dec_ms:>5.2} ms/frame  enc+dec {:>6.2} ms = {:.2}x real time  {:.0} kbit/s  PSNR {:.1} dB  ({} of {frames} frames coded)",
        1000.0 / enc_ms,
        enc_ms + dec_ms,
        budget / (enc_ms + dec_ms),
        bytes as f64 * 8.0 / n * f64::from(fps) / 1e3,
        q / f64::from(decoded.max(1)),
        decoded
    );
    Ok(())
}

pub fn run(frames: u32) -> Result<()> {
    println!(
        "codec-speed ({frames} frames of the moving test pattern per line; baseline = frame budget)"
    );
    // (label, size, bit/s, fps, screen content, threads)
    let cases = [
        (
            "720p30 camera, 1 thread",
            (1280, 720),
            2_500_000,
            30.0,
            false,
            1,
        ),
        (
            "1080p30 camera, 1 thread",
            (1920, 1080),
            4_000_000,
            30.0,
            false,
            1,
        ),
        (
            "1080p60 screen content, 1 thread",
            (1920, 1080),
            6_000_000,
            60.0,
            true,
            1,
        ),
        (
            "1080p60 screen content, 2 threads",
            (1920, 1080),
            6_000_000,
            60.0,
            true,
            2,
        ),
    ];
    for (label, size, bitrate, fps, screen, threads) in cases {
        let cfg = VideoConfig {
            bitrate,
            fps,
            screen,
            threads,
            skip_frames: false,
        };
        video(label, size, cfg, frames)?;
    }
    let mut s = SpeechLike::new(1);
    let pcm: Vec<Vec<i16>> = (0..500).map(|_| s.frame()).collect();
    let mut enc = AudioEncoder::new(AudioConfig {
        dtx: false,
        ..AudioConfig::default()
    })?;
    let mut dec = AudioDecoder::new()?;
    let t0 = Instant::now();
    for f in &pcm {
        let p = enc.encode(f)?;
        dec.decode(AudioInput::Packet(&p))?;
    }
    let per = t0.elapsed().as_secs_f64() / 500.0 * 1e3;
    println!(
        "  Opus 48 kHz mono 32 kbit/s, 20 ms frames: enc+dec {per:.3} ms/frame = {:.0}x real time",
        20.0 / per
    );
    Ok(())
}

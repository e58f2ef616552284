//! What showing a call in another process costs: two `p2pcall daemon`s in a call (test
//! pattern, 640×360 at 30 fps, no audio) placed through the local API, measured once with
//! nobody watching and once with a client reading the calling daemon's video feed (as the
//! app does when it shows a daemon's engine): frames and bytes the feed delivered, and the
//! daemon's CPU in both runs (the baseline is the same call without the feed).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use p2pcall_api::{Answer, CallNote, Event, Media, Request};
use p2pcall_daemon::Client;

use crate::capacity::start_relay;
use crate::daemon::start_daemon;
use crate::procfs::cpu_ticks;

/// Each call's length.
const CALL: Duration = Duration::from_secs(8);
/// CPU is sampled from this long after the start to this long before the end.
const SETTLE: Duration = Duration::from_secs(2);

fn media(w: u32, h: u32) -> Media {
    Media {
        video: "testsrc".into(),
        audio: "none".into(),
        speaker: "none".into(),
        width: w,
        height: h,
        fps: 30,
        video_kbps: 1500,
        record_video: None,
        record_audio: None,
        duration_ms: Some(CALL.as_millis() as u64),
    }
}

pub fn run(bin: &str, width: u32, height: u32) -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("p2pcall-bench-feed-{}", std::process::id()));
    let (_relay, udp) = start_relay(bin, &tmp.join("relay"), 8)?;
    let rt = crate::runtime(2)?;
    let r = rt.block_on(async {
        let (da, db) = (tmp.join("a"), tmp.join("b"));
        let a = start_daemon(bin, &da, udp)?;
        let _b = start_daemon(bin, &db, udp)?;
        let mut cb = connect(&db).await?;
        let Answer::Status(sb) = cb.call(Request::Status).await? else {
            bail!("status")
        };
        cb.call(Request::Policy {
            accept_files: None,
            answer: Some(media(width, height)),
            from: "anyone".into(),
        })
        .await?;
        let pid = a.0.id();
        let quiet = call(&da, &sb.id, pid, width, height, false).await?;
        let watched = call(&da, &sb.id, pid, width, height, true).await?;
        println!(
            "video feed: a call at {width}x{height}, 30 fps, through two daemons ({} s each)",
            CALL.as_secs()
        );
        println!(
            "  calling daemon's CPU: {:.1} % of a core without a feed (baseline), {:.1} % with one (ratio {:.2})",
            quiet.cpu_pct,
            watched.cpu_pct,
            watched.cpu_pct / quiet.cpu_pct.max(0.01)
        );
        println!(
            "  the feed delivered {:.1} pictures/s ({:.1} ours + {:.1} the peer's, of {:.1}/s the call decoded), {:.1} MB/s over the socket",
            watched.frames_per_s.0 + watched.frames_per_s.1,
            watched.frames_per_s.0,
            watched.frames_per_s.1,
            watched.decoded_fps,
            watched.mbytes_per_s
        );
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&tmp);
    r
}

async fn connect(data: &Path) -> Result<Client> {
    Client::connect(data, "bench")
        .await?
        .context("the daemon serves no API")
}

struct Run {
    cpu_pct: f64,
    /// Ours, the peer's.
    frames_per_s: (f64, f64),
    mbytes_per_s: f64,
    /// The peer's pictures the call decoded per second.
    decoded_fps: f64,
}

/// One call from the daemon of `data` to `peer`; with `feed`, a client reads its pictures.
async fn call(data: &Path, peer: &str, pid: u32, w: u32, h: u32, feed: bool) -> Result<Run> {
    let mut events = connect(data).await?;
    events.call(Request::Subscribe).await?;
    let reader = if feed {
        let mut f = connect(data).await?.video_feed().await?;
        Some(tokio::spawn(async move {
            let (mut ours, mut theirs, mut bytes) = (0u64, 0u64, 0u64);
            let t0 = Instant::now();
            while t0.elapsed() < CALL + SETTLE {
                let next = tokio::time::timeout(Duration::from_secs(1), f.next_frame()).await;
                let Ok(Ok((side, frame))) = next else {
                    continue;
                };
                bytes += (frame.y.len() + frame.u.len() + frame.v.len()) as u64;
                match side {
                    p2pcall_api::video::Side::Local => ours += 1,
                    p2pcall_api::video::Side::Remote(_) => theirs += 1,
                }
            }
            (ours, theirs, bytes)
        }))
    } else {
        None
    };
    let mut c = connect(data).await?;
    c.call(Request::Call {
        peer: peer.into(),
        media: media(w, h),
        also: Vec::new(),
    })
    .await?;
    let started = loop {
        if let Event::Call(CallNote::Started { .. }) = events.next_event().await? {
            break Instant::now();
        }
    };
    tokio::time::sleep(SETTLE).await;
    let (t0, c0) = (Instant::now(), cpu_ticks(pid).unwrap_or(0));
    tokio::time::sleep(CALL - SETTLE * 2).await;
    let (t1, c1) = (Instant::now(), cpu_ticks(pid).unwrap_or(0));
    // The pictures the call itself decoded per second (its statistics): what the feed
    // could show of the peer at most.
    let mut decoded = Vec::new();
    loop {
        match events.next_event().await? {
            Event::Call(CallNote::Ended { .. }) => break,
            Event::Call(CallNote::Stats { stats }) => {
                let fps = stats["recv"].as_array().and_then(|r| {
                    r.iter()
                        .find(|s| s["kind"] != "audio")
                        .and_then(|s| s["fps"].as_f64())
                });
                decoded.extend(fps);
            }
            _ => {}
        }
    }
    let decoded_fps = decoded.iter().sum::<f64>() / decoded.len().max(1) as f64;
    let length = started.elapsed().as_secs_f64().min(CALL.as_secs_f64());
    let cpu_pct = (c1 - c0) as f64 / (t1 - t0).as_secs_f64();
    let (frames_per_s, mbytes_per_s) = match reader {
        Some(r) => {
            let (ours, theirs, bytes) = r.await?;
            (
                (ours as f64 / length, theirs as f64 / length),
                bytes as f64 / length / 1e6,
            )
        }
        None => ((0.0, 0.0), 0.0),
    };
    Ok(Run {
        cpu_pct,
        frames_per_s,
        mbytes_per_s,
        decoded_fps,
    })
}

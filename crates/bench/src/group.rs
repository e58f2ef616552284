//! Group calls on this machine: `p2pcall daemon`s on loopback, all processes on its cores
//! together, each sending the moving test pattern (640×360 at 30 fps) and a tone.
//!
//! 1. A one-to-one call (the baseline): each side's CPU.
//! 2. A call of four: per participant, the pictures per second it decodes from each other
//!    participant (steady seconds), audio concealment, CPU beside the one-to-one call's, and
//!    upload (everything its connections sent) against what it sent of its layers and audio.
//! 3. A call of three that a fourth joins: from its answer to the first picture of every
//!    participant, against 1 s + 2 RTT.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use p2pcall_api::{Answer, CallChange, CallNote, Event, Media, Request};
use p2pcall_daemon::Client;
use serde_json::Value;

use crate::capacity::{Kill, start_relay};
use crate::daemon::start_daemon;
use crate::procfs::cpu_ticks;

/// The calls' length.
const CALL: Duration = Duration::from_secs(12);
/// CPU is sampled from this long after the start to this long before the end.
const SETTLE: Duration = Duration::from_secs(3);
/// Per-second figures of a participant leave out its first and last seconds.
const EDGE: usize = 2;

fn media(duration: Duration) -> Media {
    Media {
        video: "testsrc".into(),
        audio: "tone".into(),
        speaker: "none".into(),
        width: 640,
        height: 360,
        fps: 30,
        video_kbps: 1000,
        record_video: None,
        record_audio: None,
        duration_ms: Some(duration.as_millis() as u64),
    }
}

/// A daemon of the run.
struct Member {
    data: PathBuf,
    id: String,
    pid: u32,
    _proc: Kill,
}

async fn connect(data: &Path) -> Result<Client> {
    Client::connect(data, "bench")
        .await?
        .context("the daemon serves no API")
}

impl Member {
    async fn start(bin: &str, data: PathBuf, relay: std::net::SocketAddr) -> Result<Self> {
        let proc = start_daemon(bin, &data, relay)?;
        let mut c = connect(&data).await?;
        let Answer::Status(s) = c.call(Request::Status).await? else {
            bail!("status")
        };
        Ok(Self {
            data,
            id: s.id,
            pid: proc.0.id(),
            _proc: proc,
        })
    }

    /// Answers calls with the test media for `duration`.
    async fn answer_for(&self, duration: Duration) -> Result<()> {
        let mut c = connect(&self.data).await?;
        c.call(Request::Policy {
            accept_files: None,
            answer: Some(media(duration)),
            from: "anyone".into(),
        })
        .await?;
        // The policy holds while its connection is open.
        tokio::spawn(async move {
            let _keep = c;
            tokio::time::sleep(CALL * 4).await;
        });
        Ok(())
    }

    /// Collects the statistics of this daemon's next call until it ends: every second's and
    /// the final ones.
    async fn follow(&self) -> Result<tokio::task::JoinHandle<Result<(Vec<Value>, Value)>>> {
        let mut events = connect(&self.data).await?;
        events.call(Request::Subscribe).await?;
        Ok(tokio::spawn(async move {
            let mut seconds = Vec::new();
            loop {
                match events.next_event().await? {
                    Event::Call(CallNote::Stats { stats }) => seconds.push(stats),
                    Event::Call(CallNote::Ended { stats, .. }) => {
                        return Ok((seconds, stats.unwrap_or_default()));
                    }
                    _ => {}
                }
            }
        }))
    }
}

/// CPU of each process over the middle of a call, % of a core.
async fn cpu(pids: &[u32], length: Duration) -> Vec<f64> {
    tokio::time::sleep(SETTLE).await;
    let t0 = Instant::now();
    let c0: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p).unwrap_or(0)).collect();
    tokio::time::sleep(length - SETTLE * 2).await;
    let dt = t0.elapsed().as_secs_f64();
    (pids.iter().zip(c0))
        .map(|(p, c)| (cpu_ticks(*p).unwrap_or(0) - c) as f64 / dt)
        .collect()
}

/// The participants' figures in one statistics object (a group call's, or the one peer's).
fn participants(s: &Value) -> Vec<&Value> {
    match s["participants"].as_array() {
        Some(p) if !p.is_empty() => p.iter().collect(),
        _ => vec![s],
    }
}

fn recv<'a>(p: &'a Value, kind: &str) -> Option<&'a Value> {
    (p["recv"].as_array()?)
        .iter()
        .find(|r| (r["kind"] == "audio") == (kind == "audio"))
}

/// Per other participant: mean and lowest pictures/s decoded over its steady seconds.
fn steady_fps(seconds: &[Value]) -> Vec<(String, f64, f64)> {
    let mut by: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for s in seconds {
        for p in participants(s) {
            let fps = recv(p, "video").and_then(|r| r["fps"].as_f64());
            if let (Some(peer), Some(fps)) = (p["peer"].as_str(), fps) {
                by.entry(peer[..8].to_string()).or_default().push(fps);
            }
        }
    }
    (by.into_iter())
        .filter(|(_, v)| v.len() > EDGE * 2)
        .map(|(peer, v)| {
            let v = &v[EDGE..v.len() - 1];
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            (peer, mean, v.iter().copied().fold(f64::MAX, f64::min))
        })
        .collect()
}

pub fn run(bin: &str) -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("p2pcall-bench-group-{}", std::process::id()));
    let (_relay, udp) = start_relay(bin, &tmp.join("relay"), 8)?;
    let rt = crate::runtime(2)?;
    let r = rt.block_on(async {
        let mut m = Vec::new();
        for name in ["a", "b", "c", "d"] {
            m.push(Member::start(bin, tmp.join(name), udp).await?);
        }
        println!("group calls: daemons on loopback, test pattern 640x360 at 30 fps and a tone each, {} s calls", CALL.as_secs());
        let one = one_to_one(&m).await?;
        let four = call_of_four(&m).await?;
        println!(
            "  CPU per participant: one-to-one {:.0} % of a core (baseline), call of four {:.0} % (ratio {:.2})",
            one,
            four,
            four / one.max(0.01)
        );
        // The joiner is new to everyone: its connections to the members are cold.
        let e = Member::start(bin, tmp.join("e"), udp).await?;
        join(&m, &e).await
    });
    let _ = std::fs::remove_dir_all(&tmp);
    r
}

/// The baseline: mean CPU of the two sides of a one-to-one call.
async fn one_to_one(m: &[Member]) -> Result<f64> {
    m[1].answer_for(CALL).await?;
    let ends = [m[0].follow().await?, m[1].follow().await?];
    let mut c = connect(&m[0].data).await?;
    c.call(Request::Call {
        peer: m[1].id.clone(),
        media: media(CALL),
        also: Vec::new(),
    })
    .await?;
    let cpu = cpu(&[m[0].pid, m[1].pid], CALL).await;
    for e in ends {
        e.await??;
    }
    Ok(cpu.iter().sum::<f64>() / cpu.len() as f64)
}

/// A call of four: the figures per participant; the mean CPU per participant.
async fn call_of_four(m: &[Member]) -> Result<f64> {
    let mut follow = Vec::new();
    for x in &m[1..4] {
        x.answer_for(CALL).await?;
    }
    for x in &m[..4] {
        follow.push(x.follow().await?);
    }
    let mut c = connect(&m[0].data).await?;
    c.call(Request::Call {
        peer: m[1].id.clone(),
        media: media(CALL),
        also: vec![m[2].id.clone(), m[3].id.clone()],
    })
    .await?;
    let pids: Vec<u32> = m[..4].iter().map(|x| x.pid).collect();
    let cpu = cpu(&pids, CALL).await;
    println!("  call of four:");
    let (mut worst_fps, mut worst_conceal, mut worst_upload) = (f64::MAX, 0.0f64, 0.0f64);
    for ((f, x), cpu) in follow.into_iter().zip(m).zip(&cpu) {
        let (seconds, fin) = f.await??;
        let fps = steady_fps(&seconds);
        let others = participants(&fin);
        let conceal = (others.iter())
            .filter_map(|p| recv(p, "audio")?["concealed_pct"].as_f64())
            .fold(0.0, f64::max);
        let upload: f64 = others
            .iter()
            .filter_map(|p| p["upload_kbps"].as_f64())
            .sum();
        let media_kbps: f64 = (others.iter())
            .flat_map(|p| p["send"].as_array().into_iter().flatten())
            .filter_map(|s| s["kbps"].as_f64())
            .sum();
        let layers: Vec<&str> = others.iter().filter_map(|p| p["layer"].as_str()).collect();
        let text: Vec<String> = (fps.iter())
            .map(|(p, mean, low)| format!("{p} {mean:.1} (lowest {low:.0})"))
            .collect();
        println!(
            "    {}: pictures/s from {}; concealed ≤ {conceal:.2} %; CPU {cpu:.0} %; upload {upload:.0} kbit/s for {media_kbps:.0} kbit/s of media (layers {layers:?}, ratio {:.3})",
            &x.id[..8],
            text.join(", "),
            upload / media_kbps.max(1.0)
        );
        worst_fps = fps.iter().map(|f| f.1).fold(worst_fps, f64::min);
        worst_conceal = worst_conceal.max(conceal);
        worst_upload = worst_upload.max(upload / media_kbps.max(1.0));
    }
    // Every participant's call is over (their own durations end them).
    println!(
        "    worst: {worst_fps:.1} pictures/s (target ≥ 25), concealment {worst_conceal:.2} % (target ≤ 1), upload / (N−1) × layer {worst_upload:.3} (target ≤ 1.10)"
    );
    Ok(cpu.iter().sum::<f64>() / cpu.len() as f64)
}

/// A call of three that `e`, a peer none of them has talked to yet, joins: its answer to
/// each participant's first picture.
async fn join(m: &[Member], e: &Member) -> Result<()> {
    let late = Duration::from_secs(4);
    for x in &m[1..3] {
        x.answer_for(CALL).await?;
    }
    e.answer_for(CALL - late).await?;
    let follow = e.follow().await?;
    let mut c = connect(&m[0].data).await?;
    c.call(Request::Call {
        peer: m[1].id.clone(),
        media: media(CALL),
        also: vec![m[2].id.clone()],
    })
    .await?;
    tokio::time::sleep(late).await;
    c.call(Request::ChangeCall(CallChange::Add { peer: e.id.clone() }))
        .await?;
    let (_, fin) = follow.await??;
    println!(
        "  joining a call of three (a fourth, new to all of them, is added after {} s):",
        late.as_secs()
    );
    for p in participants(&fin) {
        let first = p["first_picture_ms"].as_f64();
        let rtt = p["rtt_ms"].as_f64().unwrap_or(0.0);
        let target = 1000.0 + 2.0 * rtt;
        println!(
            "    first picture from {} {} ms after the answer (target ≤ 1 s + 2 RTT = {target:.0} ms)",
            p["peer"].as_str().map_or("?", |s| &s[..8]),
            first.map_or("never".into(), |f| format!("{f:.0}")),
        );
    }
    Ok(())
}

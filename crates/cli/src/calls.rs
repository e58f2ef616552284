//! `call`, `listen --answer` and `devices`: headless calls for people and scripts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use p2pcall_core::call::{
    AudioSource, CallEvent, CallOptions, CallStats, SCREEN_KBPS, SCREEN_MAX_SIZE, Sinks,
    SpeakerChoice, VideoSource, describe_end,
};
use p2pcall_core::engine::EngineEvent;
use serde_json::json;
use tokio::io::AsyncBufReadExt;

use crate::output;
use crate::session::Control;
use p2pcall_api::CallChange;
use p2pcall_proto::id::CallId;

/// Media options shared by `call` and `listen --answer`.
#[derive(Args, Debug, Clone)]
pub struct MediaArgs {
    /// Video to send: testsrc (moving test pattern), FILE.y4m, camera[:/dev/videoN],
    /// screen[:N] (share X11 monitor N, 0 by default; sent at its own size up to --size,
    /// 1920x1080 unless given), window:ID or window:NAME (one X11 window; ID decimal or 0x
    /// hex), or none. `p2pcall devices` lists cameras, screens and windows
    #[arg(long, default_value = "testsrc", value_name = "SRC")]
    pub video: VideoSource,
    /// Audio to send: tone, speech (synthetic), FILE.wav (48 kHz mono), mic[:ALSA-DEVICE]
    /// (echo-cancelled and noise-suppressed; e.g. mic:hw:1,0, mic:null), or none
    #[arg(long, default_value = "tone", value_name = "SRC")]
    pub audio: AudioSource,
    /// Where received audio plays: auto (the default speaker, if any), none, or an ALSA
    /// device (default, hw:0,0, null …)
    #[arg(long, default_value = "auto", value_name = "DEV")]
    pub speaker: SpeakerChoice,
    /// Video size for the test pattern and cameras, WIDTHxHEIGHT (320x240 … 1920x1080;
    /// default 640x360); the largest size of a shared screen (default 1920x1080: a smaller
    /// screen is sent at its own size, a larger one scaled down); files keep their own size
    #[arg(long, value_parser = parse_size, value_name = "WxH")]
    pub size: Option<(usize, usize)>,
    /// Frames per second (15–60; a screen share at 1080p60 needs two cores)
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(15..=60))]
    pub fps: u32,
    /// Most video bitrate, kbit/s [default: 1000; 4000 for a screen]: the call's bandwidth
    /// estimate sets the actual bitrate, size and frame rate below it
    #[arg(long, value_name = "KBPS")]
    pub bitrate: Option<u32>,
    /// Write the received video to this Y4M file
    #[arg(long, value_name = "FILE")]
    pub record_video: Option<PathBuf>,
    /// Write the received audio to this WAV file (48 kHz mono)
    #[arg(long, value_name = "FILE")]
    pub record_audio: Option<PathBuf>,
    /// Write the per-second statistics and the final summary to this JSON file
    #[arg(long, value_name = "FILE")]
    pub stats_json: Option<PathBuf>,
    /// Hang up after this many seconds of call
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
}

fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let (w, h) = s
        .split_once('x')
        .ok_or_else(|| format!("{s:?}: expected WIDTHxHEIGHT, e.g. 1280x720"))?;
    let (w, h): (usize, usize) = (
        w.parse().map_err(|_| format!("bad width {w:?}"))?,
        h.parse().map_err(|_| format!("bad height {h:?}"))?,
    );
    if !(320..=1920).contains(&w) || !(240..=1080).contains(&h) || w % 2 == 1 || h % 2 == 1 {
        return Err(format!(
            "{w}x{h}: sizes from 320x240 to 1920x1080, even numbers"
        ));
    }
    Ok((w, h))
}

impl MediaArgs {
    pub fn options(&self) -> CallOptions {
        let screen = self.video.is_screen();
        let (width, height) =
            self.size
                .unwrap_or(if screen { SCREEN_MAX_SIZE } else { (640, 360) });
        CallOptions {
            video: self.video.clone(),
            audio: self.audio.clone(),
            width,
            height,
            fps: self.fps,
            video_kbps: self
                .bitrate
                .unwrap_or(if screen { SCREEN_KBPS } else { 1000 }),
            sinks: Sinks {
                video: self.record_video.clone(),
                audio: self.record_audio.clone(),
                speaker: self.speaker.clone(),
                tap: None,
            },
            duration: self.duration.map(Duration::from_secs_f64),
            notes: Vec::new(),
        }
    }
}

/// Collects statistics for `--stats-json`.
#[derive(Default)]
pub struct StatsFile {
    seconds: Vec<CallStats>,
}

impl StatsFile {
    /// Remembers what an event says; returns the end code and message when the call ended.
    pub fn note(&mut self, e: &CallEvent) {
        if let CallEvent::Stats(s) = e {
            self.seconds.push((**s).clone());
        }
    }

    /// Writes the file.
    pub fn write(&self, path: &std::path::Path, role: &str, end: &CallEvent) -> Result<()> {
        let (code, message, last) = match end {
            CallEvent::Ended { reason, stats, .. } => {
                let (c, m) = describe_end(reason);
                (c, m, stats.as_deref().cloned())
            }
            _ => ("unknown", String::new(), None),
        };
        let v = json!({
            "role": role,
            "end": {"code": code, "message": message},
            "final": last,
            "seconds": self.seconds,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&v)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// Lines typed during a call: mute, unmute, camera on/off, source SRC, add PEER, hangup.
pub fn spawn_console(mut engine: Control) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            let change = |c| Some(c);
            let c = match l.trim() {
                "mute" => change(CallChange::Mute { muted: true }),
                "unmute" => change(CallChange::Mute { muted: false }),
                "camera off" | "video off" => change(CallChange::Camera { on: false }),
                "camera on" | "video on" => change(CallChange::Camera { on: true }),
                "hangup" | "bye" | "q" => None,
                l if l.starts_with("add ") => change(CallChange::Add {
                    peer: l["add ".len()..].trim().to_string(),
                }),
                l if l.starts_with("source ") => {
                    match l["source ".len()..].trim().parse::<VideoSource>() {
                        // The engine may run elsewhere: a file is named absolutely.
                        Ok(VideoSource::File(p)) => change(CallChange::Source {
                            source: std::path::absolute(&p).unwrap_or(p).display().to_string(),
                        }),
                        Ok(src) => change(CallChange::Source {
                            source: src.to_string(),
                        }),
                        Err(e) => {
                            errln!("{e}");
                            continue;
                        }
                    }
                }
                "" => continue,
                other => {
                    errln!(
                        "unknown command {other:?}: mute, unmute, camera off, camera on, \
                         source testsrc|FILE.y4m|camera[:DEV]|screen[:N]|window:ID|NAME, \
                         add PEER, hangup"
                    );
                    continue;
                }
            };
            let r = match c {
                Some(c) => engine.change(c).await,
                None => engine.hangup().await,
            };
            if let Err(e) = r {
                errln!("{e:#}");
            }
        }
    })
}

/// The call an event is about.
pub fn call_id(e: &CallEvent) -> Option<CallId> {
    match e {
        CallEvent::Incoming { call, .. }
        | CallEvent::Ringing { call }
        | CallEvent::Started { call, .. }
        | CallEvent::Updated { call, .. }
        | CallEvent::Joined { call, .. }
        | CallEvent::Left { call, .. }
        | CallEvent::Speaker { call, .. }
        | CallEvent::Sending { call, .. }
        | CallEvent::Warning { call, .. }
        | CallEvent::Ended { call, .. } => Some(*call),
        CallEvent::Stats(s) => s.call.parse().ok(),
    }
}

/// Whether an end is a normal one (exit status 0).
pub fn ended_normally(e: &CallEvent) -> bool {
    matches!(
        e,
        CallEvent::Ended { reason, .. }
            if matches!(describe_end(reason).0, "hung_up" | "hung_up_by_peer" | "finished")
    )
}

/// Prints the device lists.
pub fn devices(json_out: bool) {
    let d = p2pcall_core::devices::list_devices();
    if json_out {
        outln!("{}", serde_json::to_value(&d).unwrap_or_default());
        return;
    }
    for (title, l) in [
        ("cameras", &d.cameras),
        ("microphones", &d.microphones),
        ("speakers", &d.speakers),
        ("screens", &d.screens),
    ] {
        outln!("{title}:");
        for x in &l.devices {
            outln!("  {:<28} {}", x.id, x.name);
        }
        if let Some(why) = &l.why_none {
            outln!("  none: {why}");
        }
    }
}

/// Engine events of a call, printed.
pub fn print(json_out: bool, e: &EngineEvent) -> bool {
    if let EngineEvent::Call(c) = e {
        if json_out {
            outln!("{}", output::call_json(c));
        } else {
            outln!("{}", output::call_text(c));
        }
        true
    } else {
        false
    }
}

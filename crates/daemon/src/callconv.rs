//! Calls, connections and media options: engine types to API messages and back.

use std::time::{Duration, Instant};

use p2pcall_api as api;
use p2pcall_api::{ErrorKind, RpcError};
use p2pcall_core::PeerId;
use p2pcall_core::call::{CallEvent, CallOptions, CallStats, EndReason, Negotiated, Sinks};
use p2pcall_net::Path;
use p2pcall_proto::call::{Codec, HangupReason, RejectReason, StreamDesc, StreamKind};

/// Media options for the API: what the engine opens (relative paths made absolute against
/// this process's directory, since the engine runs elsewhere).
pub fn media(o: &CallOptions) -> api::Media {
    let abs = |p: &std::path::Path| {
        std::path::absolute(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    use p2pcall_core::call::{AudioSource, VideoSource};
    api::Media {
        video: match &o.video {
            VideoSource::File(p) => abs(p),
            v => v.to_string(),
        },
        audio: match &o.audio {
            AudioSource::File(p) => abs(p),
            a => a.to_string(),
        },
        speaker: o.sinks.speaker.to_string(),
        width: o.width as u32,
        height: o.height as u32,
        fps: o.fps,
        video_kbps: o.video_kbps,
        record_video: o.sinks.video.as_deref().map(abs),
        record_audio: o.sinks.audio.as_deref().map(abs),
        duration_ms: o.duration.map(|d| d.as_millis() as u64),
    }
}

/// Media options from the API, checked as the CLI checks its flags.
pub(crate) fn options(m: &api::Media) -> Result<CallOptions, RpcError> {
    let bad = |e: String| RpcError::new(ErrorKind::BadMedia, e);
    if !(2..=1920).contains(&m.width) || !(2..=1080).contains(&m.height) {
        return Err(bad(format!(
            "{}x{}: sizes up to 1920x1080",
            m.width, m.height
        )));
    }
    if !(1..=60).contains(&m.fps) {
        return Err(bad(format!("{} frames per second: 1 to 60", m.fps)));
    }
    Ok(CallOptions {
        video: m.video.parse().map_err(bad)?,
        audio: m.audio.parse().map_err(bad)?,
        width: m.width as usize,
        height: m.height as usize,
        fps: m.fps,
        video_kbps: m.video_kbps,
        sinks: Sinks {
            video: m.record_video.as_ref().map(Into::into),
            audio: m.record_audio.as_ref().map(Into::into),
            speaker: m.speaker.parse().map_err(bad)?,
            tap: None,
        },
        duration: m.duration_ms.map(Duration::from_millis),
        notes: Vec::new(),
    })
}

fn stream(s: &StreamDesc) -> api::Stream {
    api::Stream {
        id: s.id,
        kind: s.kind.name().into(),
        codec: match s.codec {
            Codec::Opus => "opus".into(),
            Codec::H264 => "h264".into(),
            Codec::Unknown(n) => format!("unknown-{n}"),
        },
        active: s.active,
    }
}

fn stream_from_api(s: &api::Stream) -> Option<StreamDesc> {
    Some(StreamDesc {
        id: s.id,
        kind: match s.kind.as_str() {
            "audio" => StreamKind::Audio,
            "camera" => StreamKind::Camera,
            "screen" => StreamKind::Screen,
            _ => return None,
        },
        codec: match s.codec.as_str() {
            "opus" => Codec::Opus,
            "h264" => Codec::H264,
            other => Codec::Unknown(other.strip_prefix("unknown-")?.parse().ok()?),
        },
        active: s.active,
    })
}

fn streams(n: &Negotiated) -> api::Streams {
    api::Streams {
        send: n.send.iter().map(stream).collect(),
        receive: n.receive.iter().map(stream).collect(),
    }
}

fn streams_from_api(s: &api::Streams) -> Option<Negotiated> {
    Some(Negotiated {
        send: s.send.iter().map(stream_from_api).collect::<Option<_>>()?,
        receive: s
            .receive
            .iter()
            .map(stream_from_api)
            .collect::<Option<_>>()?,
    })
}

const HANGUPS: [(HangupReason, &str); 3] = [
    (HangupReason::Normal, "normal"),
    (HangupReason::Finished, "finished"),
    (HangupReason::Error, "error"),
];
const REJECTS: [(RejectReason, &str); 4] = [
    (RejectReason::Declined, "declined"),
    (RejectReason::Busy, "busy"),
    (RejectReason::NoAnswer, "no_answer"),
    (RejectReason::Incompatible, "incompatible"),
];

fn name_of<T: PartialEq + Copy>(table: &[(T, &'static str)], v: T) -> String {
    table
        .iter()
        .find(|(t, _)| *t == v)
        .map_or("unknown", |(_, n)| n)
        .into()
}

fn named<T: Copy>(table: &[(T, &'static str)], name: &str) -> Option<T> {
    table.iter().find(|(_, n)| *n == name).map(|(t, _)| *t)
}

fn end(r: &EndReason) -> api::CallEnd {
    match r {
        EndReason::HungUp {
            remote,
            reason,
            detail,
        } => api::CallEnd::HungUp {
            remote: *remote,
            reason: name_of(&HANGUPS, *reason),
            detail: detail.clone(),
        },
        EndReason::Rejected { remote, reason } => api::CallEnd::Rejected {
            remote: *remote,
            reason: name_of(&REJECTS, *reason),
        },
        EndReason::Unreachable => api::CallEnd::Unreachable,
        EndReason::PeerVanished => api::CallEnd::PeerVanished,
        EndReason::Protocol(d) => api::CallEnd::Protocol { detail: d.clone() },
    }
}

fn end_from_api(e: &api::CallEnd) -> Option<EndReason> {
    Some(match e {
        api::CallEnd::HungUp {
            remote,
            reason,
            detail,
        } => EndReason::HungUp {
            remote: *remote,
            reason: named(&HANGUPS, reason)?,
            detail: detail.clone(),
        },
        api::CallEnd::Rejected { remote, reason } => EndReason::Rejected {
            remote: *remote,
            reason: named(&REJECTS, reason)?,
        },
        api::CallEnd::Unreachable => EndReason::Unreachable,
        api::CallEnd::PeerVanished => EndReason::PeerVanished,
        api::CallEnd::Protocol { detail } => EndReason::Protocol(detail.clone()),
    })
}

fn stats(s: &CallStats) -> serde_json::Value {
    serde_json::to_value(s).unwrap_or_default()
}

fn stats_from_api(v: &serde_json::Value) -> Option<Box<CallStats>> {
    serde_json::from_value(v.clone()).ok().map(Box::new)
}

/// A call event for the API.
pub(crate) fn call_note(e: &CallEvent) -> api::CallNote {
    match e {
        CallEvent::Incoming {
            call,
            peer,
            name,
            audio,
            video,
            members,
        } => api::CallNote::Incoming {
            call: call.to_string(),
            peer: peer.to_hex(),
            name: name.clone(),
            audio: *audio,
            video: *video,
            members: members.iter().map(PeerId::to_hex).collect(),
        },
        CallEvent::Ringing { call } => api::CallNote::Ringing {
            call: call.to_string(),
        },
        CallEvent::Started {
            call,
            peer,
            streams: s,
        } => api::CallNote::Started {
            call: call.to_string(),
            peer: peer.to_hex(),
            streams: streams(s),
        },
        CallEvent::Updated {
            call,
            peer,
            streams: s,
        } => api::CallNote::Updated {
            call: call.to_string(),
            peer: peer.to_hex(),
            streams: streams(s),
        },
        CallEvent::Joined {
            call,
            peer,
            name,
            streams: s,
        } => api::CallNote::Joined {
            call: call.to_string(),
            peer: peer.to_hex(),
            name: name.clone(),
            streams: streams(s),
        },
        CallEvent::Speaker { call, peer } => api::CallNote::Speaker {
            call: call.to_string(),
            peer: peer.to_hex(),
        },
        CallEvent::Left { call, peer, reason } => api::CallNote::Left {
            call: call.to_string(),
            peer: peer.to_hex(),
            end: end(reason),
        },
        CallEvent::Stats(s) => api::CallNote::Stats { stats: stats(s) },
        CallEvent::Sending { call, audio, video } => api::CallNote::Sending {
            call: call.to_string(),
            audio: *audio,
            video: *video,
        },
        CallEvent::Warning { call, message } => api::CallNote::Warning {
            call: call.to_string(),
            message: message.clone(),
        },
        CallEvent::Ended {
            call,
            peer,
            reason,
            stats: s,
        } => api::CallNote::Ended {
            call: call.to_string(),
            peer: peer.to_hex(),
            end: end(reason),
            stats: s.as_deref().map(stats),
        },
    }
}

/// The engine's call event an API note stands for (`None`: unreadable).
pub fn call_event_from_api(n: &api::CallNote) -> Option<CallEvent> {
    Some(match n {
        api::CallNote::Incoming {
            call,
            peer,
            name,
            audio,
            video,
            members,
        } => CallEvent::Incoming {
            call: call.parse().ok()?,
            peer: peer.parse().ok()?,
            name: name.clone(),
            audio: *audio,
            video: *video,
            members: members
                .iter()
                .map(|m| m.parse().ok())
                .collect::<Option<_>>()?,
        },
        api::CallNote::Ringing { call } => CallEvent::Ringing {
            call: call.parse().ok()?,
        },
        api::CallNote::Started {
            call,
            peer,
            streams,
        } => CallEvent::Started {
            call: call.parse().ok()?,
            peer: peer.parse().ok()?,
            streams: streams_from_api(streams)?,
        },
        api::CallNote::Updated {
            call,
            peer,
            streams,
        } => CallEvent::Updated {
            call: call.parse().ok()?,
            peer: peer.parse().ok()?,
            streams: streams_from_api(streams)?,
        },
        api::CallNote::Joined {
            call,
            peer,
            name,
            streams,
        } => CallEvent::Joined {
            call: call.parse().ok()?,
            peer: peer.parse().ok()?,
            name: name.clone(),
            streams: streams_from_api(streams)?,
        },
        api::CallNote::Speaker { call, peer } => CallEvent::Speaker {
            call: call.parse().ok()?,
            peer: peer.parse().ok()?,
        },
        api::CallNote::Left { call, peer, end } => CallEvent::Left {
            call: call.parse().ok()?,
            peer: peer.parse().ok()?,
            reason: end_from_api(end)?,
        },
        api::CallNote::Stats { stats } => CallEvent::Stats(stats_from_api(stats)?),
        api::CallNote::Sending { call, audio, video } => CallEvent::Sending {
            call: call.parse().ok()?,
            audio: *audio,
            video: *video,
        },
        api::CallNote::Warning { call, message } => CallEvent::Warning {
            call: call.parse().ok()?,
            message: message.clone(),
        },
        api::CallNote::Ended {
            call,
            peer,
            end,
            stats,
        } => CallEvent::Ended {
            call: call.parse().ok()?,
            peer: peer.parse().ok()?,
            reason: end_from_api(end)?,
            stats: match stats {
                Some(s) => Some(stats_from_api(s)?),
                None => None,
            },
        },
    })
}

/// A path as the API (and the CLI) writes it: `relay` or `direct ADDR`.
pub(crate) fn path(p: &Path) -> String {
    p.to_string()
}

/// A path from the API.
pub fn path_from_api(s: &str) -> Option<Path> {
    match s.strip_prefix("direct ") {
        Some(a) => Some(Path::Direct(a.parse().ok()?)),
        None => (s == "relay").then_some(Path::Relay),
    }
}

/// The path-change event for the API.
pub(crate) fn path_changed(peer: &PeerId, p: &Path, rtt: Option<Duration>) -> api::Event {
    api::Event::PathChanged {
        peer: peer.to_hex(),
        path: path(p),
        rtt_us: rtt.map(|d| d.as_micros() as u64),
    }
}

/// The engine's path-change event an API event stands for, timed now.
pub(crate) fn path_changed_from_api(
    peer: &str,
    p: &str,
    rtt_us: Option<u64>,
) -> Option<p2pcall_net::Event> {
    Some(p2pcall_net::Event::PathChanged {
        peer: peer.parse().ok()?,
        path: path_from_api(p)?,
        rtt: rtt_us.map(Duration::from_micros),
        at: Instant::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pcall_core::call::{AudioSource, VideoSource};

    #[test]
    fn media_options_cross_the_api_unchanged_with_paths_made_absolute() {
        let o = CallOptions {
            video: VideoSource::File("clip.y4m".into()),
            audio: AudioSource::Mic(Some("hw:1,0".into())),
            width: 1280,
            height: 720,
            fps: 60,
            video_kbps: 2500,
            sinks: Sinks {
                video: Some("in.y4m".into()),
                audio: None,
                speaker: "auto".parse().unwrap(),
                tap: None,
            },
            duration: Some(Duration::from_millis(1500)),
            notes: Vec::new(),
        };
        let m = media(&o);
        assert!(std::path::Path::new(&m.video).is_absolute());
        assert!(m.video.ends_with("/clip.y4m"));
        let back = options(&m).unwrap();
        assert_eq!(back.video, VideoSource::File(m.video.clone().into()));
        assert_eq!(back.audio, o.audio);
        assert_eq!((back.width, back.height, back.fps), (1280, 720, 60));
        assert_eq!(back.video_kbps, 2500);
        assert_eq!(back.sinks.speaker, o.sinks.speaker);
        assert!(back.sinks.video.unwrap().is_absolute());
        assert_eq!(back.duration, o.duration);
        let bad = api::Media {
            video: "floppy".into(),
            ..m.clone()
        };
        assert_eq!(options(&bad).unwrap_err().kind, ErrorKind::BadMedia);
        let huge = api::Media { width: 8000, ..m };
        assert_eq!(options(&huge).unwrap_err().kind, ErrorKind::BadMedia);
    }

    #[test]
    fn every_end_reason_crosses_the_api_unchanged() {
        let mut reasons = vec![
            EndReason::Unreachable,
            EndReason::PeerVanished,
            EndReason::Protocol("bad frame".into()),
        ];
        for (h, _) in HANGUPS {
            for remote in [false, true] {
                reasons.push(EndReason::HungUp {
                    remote,
                    reason: h,
                    detail: "after 3 s".into(),
                });
            }
        }
        for (r, _) in REJECTS {
            reasons.push(EndReason::Rejected {
                remote: true,
                reason: r,
            });
        }
        for r in reasons {
            assert_eq!(end_from_api(&end(&r)), Some(r.clone()), "{r:?}");
        }
    }

    #[test]
    fn call_events_cross_the_api_unchanged() {
        let call: p2pcall_proto::id::CallId = "00112233445566778899aabbccddeeff".parse().unwrap();
        let peer = PeerId::from_bytes([7; 32]);
        let s = StreamDesc {
            id: 1,
            kind: StreamKind::Screen,
            codec: Codec::H264,
            active: false,
        };
        let stats = CallStats {
            call: call.to_string(),
            elapsed_s: 2.5,
            path: "relay".into(),
            resolution: Some((640, 360)),
            ..Default::default()
        };
        let events = [
            CallEvent::Started {
                call,
                peer,
                streams: Negotiated {
                    send: vec![s],
                    receive: vec![s],
                },
            },
            CallEvent::Ended {
                call,
                peer,
                reason: EndReason::PeerVanished,
                stats: Some(Box::new(stats.clone())),
            },
            CallEvent::Stats(Box::new(stats)),
        ];
        for e in events {
            let back = call_event_from_api(&call_note(&e)).expect("readable");
            assert_eq!(format!("{back:?}"), format!("{e:?}"));
        }
        assert_eq!(
            path_from_api(&path(&Path::Direct("10.0.0.1:5".parse().unwrap()))),
            Some(Path::Direct("10.0.0.1:5".parse().unwrap()))
        );
    }
}

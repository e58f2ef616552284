//! Calls through the local API: media options, call events, connections and pings.

use serde::{Deserialize, Serialize};

/// What a call sends and where what it receives goes (the CLI's media flags). The engine
/// opens the sources and sinks: paths are absolute, devices are the engine's machine's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Media {
    /// Video to send, as `--video` takes it (`testsrc`, `FILE.y4m`, `camera[:DEV]`,
    /// `screen[:N]`, `window:ID`, `none`).
    pub video: String,
    /// Audio to send, as `--audio` takes it (`tone`, `speech`, `FILE.wav`, `mic[:DEV]`,
    /// `none`).
    pub audio: String,
    /// Where received audio plays, as `--speaker` takes it (`auto`, `none`, an ALSA device).
    pub speaker: String,
    /// Video width.
    pub width: u32,
    /// Video height.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// Most video bitrate, kbit/s.
    pub video_kbps: u32,
    /// Record the received video to this Y4M file.
    pub record_video: Option<String>,
    /// Record the received audio to this WAV file.
    pub record_audio: Option<String>,
    /// Hang up after this long, milliseconds.
    pub duration_ms: Option<u64>,
}

/// A change to the call in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum CallChange {
    /// Stop or start sending audio.
    Mute {
        /// Muted.
        muted: bool,
    },
    /// Stop or start sending video.
    Camera {
        /// Sending.
        on: bool,
    },
    /// Send video from another source (as [`Media::video`] names it).
    Source {
        /// The source.
        source: String,
    },
    /// Invite one more participant (a one-to-one call becomes a group call).
    Add {
        /// The peer, as [`crate::Request::SendMessage`] names it.
        peer: String,
    },
}

/// A stream of a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stream {
    /// Its number in the call.
    pub id: u8,
    /// `audio`, `camera` or `screen`.
    pub kind: String,
    /// `opus` or `h264`.
    pub codec: String,
    /// Being sent now (not muted, camera on).
    pub active: bool,
}

/// The streams of a call, each way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Streams {
    /// Ours the peer decodes.
    pub send: Vec<Stream>,
    /// The peer's we decode.
    pub receive: Vec<Stream>,
}

/// Why a call ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "how", rename_all = "snake_case")]
pub enum CallEnd {
    /// A side hung up.
    HungUp {
        /// The peer did.
        remote: bool,
        /// `normal`, `finished` (a limit ran out) or `error`.
        reason: String,
        /// Details.
        detail: String,
    },
    /// The call was not taken.
    Rejected {
        /// The peer did not take it.
        remote: bool,
        /// `declined`, `busy`, `no_answer` or `incompatible`.
        reason: String,
    },
    /// The peer's software did not respond to the call.
    Unreachable,
    /// The peer stopped responding.
    PeerVanished,
    /// The peer broke the protocol.
    Protocol {
        /// How.
        detail: String,
    },
}

/// What happens in a call (the CLI's `call_*` JSON events carry the same facts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "what", rename_all = "snake_case")]
pub enum CallNote {
    /// A peer calls: answer with [`crate::Request::AnswerCall`] or
    /// [`crate::Request::DeclineCall`].
    Incoming {
        /// The call, 32 hex digits.
        call: String,
        /// The caller, 64 hex digits.
        peer: String,
        /// The caller's display name (a hint).
        name: Option<String>,
        /// Offers audio.
        audio: bool,
        /// Offers video.
        video: bool,
        /// A group call: the other participants, 64 hex digits each.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        members: Vec<String>,
    },
    /// The callee's device rings.
    Ringing {
        /// The call.
        call: String,
    },
    /// The call is up.
    Started {
        /// The call.
        call: String,
        /// With whom, 64 hex digits.
        peer: String,
        /// Streams each way.
        streams: Streams,
    },
    /// A participant changed its streams.
    Updated {
        /// The call.
        call: String,
        /// Who, 64 hex digits.
        #[serde(default)]
        peer: String,
        /// Streams each way.
        streams: Streams,
    },
    /// A group call: a participant is in (its media flows).
    Joined {
        /// The call.
        call: String,
        /// Who, 64 hex digits.
        peer: String,
        /// Its display name (a hint).
        name: Option<String>,
        /// Streams each way.
        streams: Streams,
    },
    /// A group call: a participant left, declined or could not be reached.
    Left {
        /// The call.
        call: String,
        /// Who, 64 hex digits.
        peer: String,
        /// How its part ended.
        end: CallEnd,
    },
    /// A group call: the active speaker changed.
    Speaker {
        /// The call.
        call: String,
        /// Who speaks now, 64 hex digits.
        peer: String,
    },
    /// Every second: the statistics object `--stats-json` documents.
    Stats {
        /// The statistics.
        stats: serde_json::Value,
    },
    /// What we send: once the call starts, then whenever it changes (a missing or stopped
    /// microphone is muted, a missing or stopped camera is off).
    Sending {
        /// The call.
        call: String,
        /// Our audio reaches the others.
        audio: bool,
        /// Our video reaches the others.
        video: bool,
    },
    /// A source or sink failed; the call goes on without it.
    Warning {
        /// The call.
        call: String,
        /// What happened.
        message: String,
    },
    /// The call is over.
    Ended {
        /// The call.
        call: String,
        /// With whom, 64 hex digits.
        peer: String,
        /// Why.
        end: CallEnd,
        /// The final statistics (`None` if media never started).
        stats: Option<serde_json::Value>,
    },
}

/// An incoming call waiting for an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ringing {
    /// The call, 32 hex digits.
    pub call: String,
    /// The caller, 64 hex digits.
    pub peer: String,
    /// The name the engine knows the caller by.
    pub name: String,
    /// Offers audio.
    pub audio: bool,
    /// Offers video.
    pub video: bool,
}

/// A connection to a peer, as it came up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// The peer.
    pub peer: crate::Peer,
    /// How long it took to come up, microseconds (0: it was up already).
    pub connect_us: u64,
    /// `relay` or `direct ADDR`.
    pub path: String,
    /// The relay session's transport (`udp`, `tcp`); `None` on a LAN.
    pub relay_transport: Option<String>,
    /// The safety number both sides compare.
    pub safety_number: String,
}

/// One ping's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// Round-trip time, microseconds; `None`: lost.
    pub rtt_us: Option<u64>,
    /// The path it took.
    pub path: String,
    /// Path probes the connection sent so far.
    pub probes_sent: u64,
}

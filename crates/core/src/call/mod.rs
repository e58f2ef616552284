//! Calls: signaling on a call stream (kind [`CALL`]), media on QUIC datagrams.
//!
//! One task per call ([`driver`]) drives a leg per other participant — the sans-IO
//! [`p2pcall_media::call::Call`] (offer, ring, accept, updates, hang-up, liveness) and a
//! [`p2pcall_media::session::MediaSession`] (packetizing, NACK, jitter buffers, lip sync) on
//! that pair's connection — and, in a group call, the roster every member keeps
//! ([`p2pcall_proto::group`]). Capture threads encode each source once and hand frames to it
//! for every leg; a render thread per participant decodes what its leg releases and writes
//! the sinks. The task plays audio out at each jitter buffer's pace (20 ms frames,
//! time-stretched) and reports [`CallStats`] every second. One call at a time: another
//! incoming call is answered `Busy`.

mod driver;
mod grabber;
mod leg;
pub mod media;
pub mod ring;

use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2pcall_media::call::Call;
use p2pcall_media::session::Bitrates;
use p2pcall_net::PeerConnection;
use p2pcall_proto::PeerId;
use p2pcall_proto::call::{
    CallFrame, CallId, Codec, GroupJoin, HangupReason, MAX_FRAME, RejectReason, SessionDesc,
    StreamDesc, StreamKind,
};
use p2pcall_transport::framed::FrameReader;
use serde::Serialize;
use tokio::sync::mpsc;

pub use media::{
    AudioSource, IDLE_REFRESH, RenderStats, SCREEN_KBPS, SCREEN_MAX_SIZE, SCREEN_THREADS, Sinks,
    SpeakerChoice, VideoSource,
};
pub use p2pcall_media::call::{EndReason, Negotiated};
pub use p2pcall_screen::Target as ScreenTarget;

use crate::bulk::Gates;
use crate::context::Context;
pub use crate::error::CallError;
use crate::error::EngineError;
use crate::events::Emitter;

/// Kind byte of a call stream.
pub const CALL: u8 = p2pcall_proto::stream::StreamKind::Call.byte();
/// Our audio stream number.
pub const AUDIO_STREAM: u8 = 0;
/// Our video stream number.
pub const VIDEO_STREAM: u8 = 1;
/// Statistics interval.
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// Video is never asked to go below this, kbit/s.
const VIDEO_MIN_KBPS: u32 = 100;
/// The bandwidth estimate of a new connection starts here, kbit/s.
const START_KBPS: u64 = 600;
/// The callee's software must send its first frame within this.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// How to place or answer a call.
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// Outgoing video.
    pub video: VideoSource,
    /// Outgoing audio.
    pub audio: AudioSource,
    /// Video width of the test pattern and cameras; the largest width of a screen share
    /// (files keep their size).
    pub width: usize,
    /// Video height.
    pub height: usize,
    /// Frames per second.
    pub fps: u32,
    /// Video bitrate, kbit/s.
    pub video_kbps: u32,
    /// Where received media goes.
    pub sinks: Sinks,
    /// Hang up after this long (counted from the answer).
    pub duration: Option<Duration>,
    /// What [`CallOptions::check`] left out (a default camera or microphone this machine
    /// does not have): shown as warnings when the call starts.
    pub notes: Vec<String>,
}

impl Default for CallOptions {
    fn default() -> Self {
        Self {
            video: VideoSource::TestPattern,
            audio: AudioSource::Tone,
            width: 640,
            height: 360,
            fps: 30,
            video_kbps: 1000,
            sinks: Sinks::default(),
            duration: None,
            notes: Vec::new(),
        }
    }
}

impl CallOptions {
    /// Opens every source and sink once, before a call is placed or answered. The default
    /// camera or microphone (`camera`, `mic`: no device named) that this machine does not
    /// have is left out, and [`CallOptions::notes`] says so: the call goes ahead with the
    /// camera off, or muted, and still receives. Anything else that cannot be used (a named
    /// device, a file, a speaker) is an error here rather than a call that fails.
    pub fn check(&mut self) -> Result<(), CallError> {
        let p = self.video_params();
        match media::check_video(&self.video, p) {
            Err(e) if self.video == VideoSource::Camera(None) => {
                self.video = VideoSource::None;
                self.notes.push(format!(
                    "no camera, so your camera is off in this call (you still see the others): {e}"
                ));
            }
            r => r?,
        }
        match media::check_audio(&self.audio) {
            Err(e) if self.audio == AudioSource::Mic(None) => {
                self.audio = AudioSource::None;
                self.notes.push(format!(
                    "no microphone, so you are muted in this call (you still hear the others): {e}"
                ));
            }
            r => r?,
        }
        media::check_speaker(&self.sinks)
    }

    /// Stays within what the peer asked to receive (size, frame rate, bitrate; 0 = no cap).
    pub fn fit_to(&mut self, peer: &SessionDesc) {
        let cap = |v: usize, c: u16| {
            if c == 0 {
                v
            } else {
                v.min(usize::from(c)) & !1
            }
        };
        self.width = cap(self.width, peer.max_width).max(2);
        self.height = cap(self.height, peer.max_height).max(2);
        if peer.max_fps > 0 {
            self.fps = self.fps.min(u32::from(peer.max_fps)).max(1);
        }
        if peer.max_kbps > 0 {
            // Audio takes ~32 kbit/s of the peer's budget.
            self.video_kbps = self
                .video_kbps
                .min(peer.max_kbps.saturating_sub(32).max(50));
        }
    }

    /// What the bandwidth estimator may give the call.
    fn bitrates(&self) -> Bitrates {
        let max = u64::from(self.video_kbps.max(50)) * 1000;
        Bitrates {
            audio: p2pcall_codec::AudioConfig::default().bitrate.max(0) as u64,
            video_min: VIDEO_MIN_KBPS.min(self.video_kbps.max(50)) as u64 * 1000,
            video_max: max,
            // Probing from here triples the estimate within the first second or two.
            start: (max + 32_000).min(START_KBPS * 1000),
        }
    }

    fn video_params(&self) -> media::VideoParams {
        media::VideoParams {
            width: self.width,
            height: self.height,
            fps: self.fps,
            kbps: self.video_kbps,
        }
    }

    fn describe(&self, audio_on: bool, video_on: bool) -> SessionDesc {
        let mut streams = Vec::new();
        if self.audio != AudioSource::None {
            streams.push(StreamDesc {
                id: AUDIO_STREAM,
                kind: StreamKind::Audio,
                codec: Codec::Opus,
                active: audio_on,
            });
        }
        if self.video != VideoSource::None {
            streams.push(StreamDesc {
                id: VIDEO_STREAM,
                kind: if self.video.is_screen() {
                    StreamKind::Screen
                } else {
                    StreamKind::Camera
                },
                codec: Codec::H264,
                active: video_on,
            });
        }
        SessionDesc {
            receive: vec![Codec::Opus, Codec::H264],
            max_width: 1920,
            max_height: 1080,
            max_fps: 60,
            max_kbps: 8000,
            streams,
        }
    }
}

/// Per-stream statistics of what we send.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct SendStreamStats {
    /// Stream number.
    pub id: u8,
    /// audio / camera / screen.
    pub kind: String,
    /// Bitrate over the last interval, kbit/s.
    pub kbps: f64,
    /// Frames per second over the last interval.
    pub fps: f64,
    /// Frames sent.
    pub frames: u64,
    /// Packets sent.
    pub packets: u64,
    /// Packets sent again after NACKs.
    pub retransmitted: u64,
    /// Keyframe requests received.
    pub keyframe_requests: u64,
}

/// Per-stream statistics of what we receive.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct RecvStreamStats {
    /// Stream number.
    pub id: u8,
    /// audio / camera / screen.
    pub kind: String,
    /// Bitrate over the last interval, kbit/s.
    pub kbps: f64,
    /// Frames per second released (video) or played (audio) over the last interval.
    pub fps: f64,
    /// Packets received.
    pub packets: u64,
    /// Packets never received, %.
    pub loss_pct: f64,
    /// NACKed packets.
    pub nacks: u64,
    /// Packets recovered by retransmission.
    pub recovered: u64,
    /// Keyframe requests sent.
    pub keyframe_requests: u64,
    /// RFC 3550 interarrival jitter, ms.
    pub jitter_ms: f64,
    /// Audio: jitter buffer delay, ms.
    pub buffer_ms: f64,
    /// Audio: jitter buffer target, ms.
    pub target_ms: f64,
    /// Audio: frames concealed, % of frames played.
    pub concealed_pct: f64,
    /// Audio: frames rebuilt from FEC.
    pub fec_frames: u64,
    /// Video: freezes so far (W3C definition).
    pub freezes: u64,
    /// Video: time frozen so far, ms.
    pub freeze_ms: f64,
    /// Video: A/V skew of the last frame, ms (> 0: video behind its audio).
    pub skew_ms: Option<f64>,
}

/// Call statistics, reported every second and at the end.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct CallStats {
    /// Call id (hex).
    pub call: String,
    /// The participant these figures are about (64 hex digits); in a group call the top
    /// level is the first participant's.
    #[serde(default)]
    pub peer: Option<String>,
    /// Seconds since the call was answered.
    pub elapsed_s: f64,
    /// Connection round-trip time, ms.
    pub rtt_ms: f64,
    /// relay / direct ADDR.
    pub path: String,
    /// What we send.
    pub send: Vec<SendStreamStats>,
    /// What we receive.
    pub recv: Vec<RecvStreamStats>,
    /// Decoder and recorder counters.
    pub video_decoded: u64,
    /// Last decoded video size.
    pub resolution: Option<(usize, usize)>,
    /// Test-pattern capture-to-render latency, last and mean, ms (same host only).
    pub video_latency_ms: Option<f64>,
    /// Mean of it.
    pub video_latency_mean_ms: Option<f64>,
    /// Test-pattern frames seen out of sequence.
    pub stamp_gaps: u64,
    /// Frames written to the recording.
    pub recorded_frames: u64,
    /// The files recorded to (a taken name gets ` (1)`: nothing is overwritten).
    pub recordings: Vec<String>,
    /// Audio samples rendered.
    pub audio_samples: u64,
    /// Tone beacons: capture-to-playout latency, last, ms (same host only).
    pub audio_latency_ms: Option<f64>,
    /// Mean of it.
    pub audio_latency_mean_ms: Option<f64>,
    /// The speaker received audio plays on, or why there is none.
    pub speaker: Option<String>,
    /// Times the speaker ran dry.
    pub speaker_underruns: u64,
    /// Echo removed from the microphone by the echo canceller, dB (its own estimate).
    pub echo_erle_db: Option<f64>,
    /// Datagrams refused (garbage, unknown streams).
    pub rejected_datagrams: u64,
    /// Bandwidth estimation and pacing.
    pub rate: RateReport,
    /// Everything the connection to this participant sent over the interval (media,
    /// retransmissions, acknowledgements, QUIC and UDP overhead … headers of IP excluded),
    /// kbit/s.
    #[serde(default)]
    pub upload_kbps: f64,
    /// From our answer (or our call's start) to the first picture of this participant, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_picture_ms: Option<f64>,
    /// The level of this participant's audio as we played it lately, dBFS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_level_db: Option<f64>,
    /// A group call: the layer of our video this participant gets (`full`, `small`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<String>,
    /// A group call: the same figures for each participant (those who left: as they left).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub participants: Vec<CallStats>,
}

/// What the bandwidth estimator thinks, and what it lets each part send.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct RateReport {
    /// The estimate for everything the connection sends, kbit/s.
    pub target_kbps: f64,
    /// Its delay-based part, kbit/s.
    pub delay_kbps: f64,
    /// Its loss-based part, kbit/s.
    pub loss_kbps: f64,
    /// What the peer acknowledged receiving recently, kbit/s.
    pub acked_kbps: f64,
    /// What video may send, kbit/s.
    pub video_target_kbps: f64,
    /// What file transfers may send (None: no limit).
    pub bulk_kbps: Option<f64>,
    /// Queueing delay the estimator sees on the path, ms.
    pub queue_ms: f64,
    /// normal / overusing / underusing.
    pub usage: String,
    /// Lost fraction of recent media packets, %.
    pub loss_pct: f64,
    /// Probe clusters sent.
    pub probes: u64,
    /// Time the oldest packet waits in the pacer, ms.
    pub pacer_delay_ms: f64,
    /// Video frames the pacer dropped because they would have been late.
    pub dropped_frames: u64,
}

impl RateReport {
    fn new(r: &p2pcall_media::session::RateStats) -> Self {
        let k = |b: u64| b as f64 / 1e3;
        Self {
            target_kbps: k(r.bwe.target_bps),
            delay_kbps: k(r.bwe.delay_bps),
            loss_kbps: k(r.bwe.loss_bps),
            acked_kbps: k(r.bwe.acked_bps),
            video_target_kbps: k(r.video_target_bps),
            bulk_kbps: r.bulk_bps.map(k),
            queue_ms: r.bwe.queue_ms,
            usage: format!("{:?}", r.bwe.usage).to_lowercase(),
            loss_pct: r.bwe.loss * 100.0,
            probes: r.bwe.probes,
            pacer_delay_ms: r.pacer_delay_ms,
            dropped_frames: r.pacer.dropped_frames,
        }
    }
}

/// Call events.
#[derive(Debug, Clone)]
pub enum CallEvent {
    /// Someone calls us: answer with [`crate::EngineHandle::answer`] or reject.
    Incoming {
        /// The call.
        call: CallId,
        /// Who.
        peer: PeerId,
        /// Their display name (a hint).
        name: Option<String>,
        /// They offer audio.
        audio: bool,
        /// They offer video.
        video: bool,
        /// A group call: the other participants (besides the caller and us).
        members: Vec<PeerId>,
    },
    /// The callee's device rings.
    Ringing {
        /// The call.
        call: CallId,
    },
    /// The call is up.
    Started {
        /// The call.
        call: CallId,
        /// With whom.
        peer: PeerId,
        /// Streams each way.
        streams: Negotiated,
    },
    /// A participant changed its streams (mute, camera).
    Updated {
        /// The call.
        call: CallId,
        /// Who.
        peer: PeerId,
        /// Streams each way.
        streams: Negotiated,
    },
    /// A group call: a participant is in (its media flows).
    Joined {
        /// The call.
        call: CallId,
        /// Who.
        peer: PeerId,
        /// Its display name (a hint).
        name: Option<String>,
        /// Streams each way.
        streams: Negotiated,
    },
    /// A group call: a participant left, declined or could not be reached (the call goes
    /// on while someone else is in).
    Left {
        /// The call.
        call: CallId,
        /// Who.
        peer: PeerId,
        /// How its part ended.
        reason: EndReason,
    },
    /// A group call: the active speaker changed (from the participants' audio levels).
    Speaker {
        /// The call.
        call: CallId,
        /// Who speaks now.
        peer: PeerId,
    },
    /// Every second.
    Stats(Box<CallStats>),
    /// What we send: once the call starts, then whenever it changes (mute, camera, a
    /// capture that stopped, a new source). `false` when nothing captures it, whatever the
    /// controls say: a missing microphone is muted.
    Sending {
        /// The call.
        call: CallId,
        /// Our audio reaches the others.
        audio: bool,
        /// Our video (camera or screen) reaches the others.
        video: bool,
    },
    /// A source or sink failed; the call goes on without it.
    Warning {
        /// The call.
        call: CallId,
        /// What happened.
        message: String,
    },
    /// Over.
    Ended {
        /// The call.
        call: CallId,
        /// With whom.
        peer: PeerId,
        /// Why.
        reason: EndReason,
        /// Final statistics (`None` if media never started).
        stats: Option<Box<CallStats>>,
    },
}

/// A short machine-readable name and a sentence for an end reason.
pub fn describe_end(r: &EndReason) -> (&'static str, String) {
    match r {
        EndReason::HungUp {
            remote: true,
            reason,
            detail,
        } => (
            "hung_up_by_peer",
            match reason {
                HangupReason::Normal => format!("the peer hung up{}", colon(detail)),
                HangupReason::Finished => format!("the peer ended the call{}", colon(detail)),
                HangupReason::Error => {
                    format!("the peer ended the call after an error{}", colon(detail))
                }
            },
        ),
        EndReason::HungUp { reason, detail, .. } => match reason {
            HangupReason::Finished => ("finished", format!("finished{}", colon(detail))),
            HangupReason::Error => ("error", format!("ended by an error{}", colon(detail))),
            HangupReason::Normal => ("hung_up", format!("hung up{}", colon(detail))),
        },
        EndReason::Rejected { remote, reason } => {
            let code = match reason {
                RejectReason::Declined => "declined",
                RejectReason::Busy => "busy",
                RejectReason::NoAnswer => "no_answer",
                RejectReason::Incompatible => "incompatible",
            };
            let who = if *remote { "the peer" } else { "we" };
            (code, format!("{who} did not take the call: {code}"))
        }
        EndReason::Unreachable => (
            "unreachable",
            "the peer's app did not respond to the call".into(),
        ),
        EndReason::PeerVanished => (
            "peer_vanished",
            "the peer stopped responding (network or process gone)".into(),
        ),
        EndReason::Protocol(w) => ("protocol", format!("protocol error: {w}")),
    }
}

fn colon(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

/// The call service: at most one call at a time.
#[derive(Debug)]
pub(crate) struct Calls {
    ctx: Arc<Context>,
    events: Emitter<CallEvent>,
    active: Mutex<Option<ActiveCall>>,
    /// Per peer: what the call's estimate leaves to file transfers.
    bulk: Arc<Gates>,
}

impl Calls {
    pub(crate) fn new(ctx: Arc<Context>, events: Emitter<CallEvent>, bulk: Arc<Gates>) -> Self {
        Self {
            ctx,
            events,
            active: Mutex::default(),
            bulk,
        }
    }

    /// Calls `peer`; the outcome arrives as [`CallEvent`]s. The call exists from the start:
    /// a hang-up while the connection comes up ends it (no ringing later), other commands
    /// (mute, camera) wait for it.
    pub(crate) async fn call(
        self: &Arc<Self>,
        peer: PeerId,
        opts: CallOptions,
    ) -> Result<CallId, EngineError> {
        let id = CallId::from_bytes(rand::random());
        let mut inputs = register(self, id, peer)?;
        // Dropped before its driver runs (a client gone mid-request): forgotten.
        let mut guard = Unregister {
            calls: self,
            id,
            armed: true,
        };
        let connect = self.ctx.connect(peer);
        tokio::pin!(connect);
        let mut early = Vec::new();
        let conn = loop {
            tokio::select! {
                c = &mut connect => break c,
                c = inputs.cmd.recv() => match c {
                    Some(Cmd::Hangup) | None => return Err(CallError::HungUpConnecting.into()),
                    // A client's commands, kept in order (a bounded few).
                    Some(c) if early.len() < EARLY_COMMANDS => early.push(c),
                    Some(_) => {}
                },
            }
        };
        start_dial(self.clone(), conn?, opts, id, inputs, early).await?;
        guard.armed = false;
        Ok(id)
    }

    /// Starts a group call and invites `peers` (each is called over its own connection).
    pub(crate) fn call_group(
        self: &Arc<Self>,
        peers: Vec<PeerId>,
        opts: CallOptions,
    ) -> Result<CallId, CallError> {
        let first = *peers.first().ok_or(CallError::NoSuchCall)?;
        if peers.len() >= p2pcall_proto::group::MAX_MEMBERS {
            return Err(CallError::TooMany);
        }
        let id = CallId::from_bytes(rand::random());
        let inputs = register(self, id, first)?;
        let setup = driver::Setup::Group(peers, opts);
        tokio::spawn(driver::run(self.clone(), id, first, setup, inputs));
        Ok(id)
    }

    /// Sends a command to the current call (`id`: only if it is that call).
    pub(crate) async fn command(&self, id: Option<CallId>, cmd: Cmd) -> Result<(), EngineError> {
        Ok(command(self, id, cmd).await?)
    }
}

/// Commands to a running call.
#[derive(Debug)]
pub(crate) enum Cmd {
    Answer(Box<CallOptions>),
    Reject,
    Hangup,
    Mute(bool),
    Camera(bool),
    Video(VideoSource),
    /// Invite one more participant.
    Add(PeerId),
}

/// The call registered with the engine.
#[derive(Debug)]
pub(crate) struct ActiveCall {
    pub id: CallId,
    /// The peers of its legs (and of those being dialed): whose datagrams are its media.
    pub peers: Vec<PeerId>,
    pub cmd: mpsc::Sender<Cmd>,
    pub media: mpsc::Sender<(PeerId, Instant, Bytes)>,
    /// Offers of its group's members.
    pub legs: mpsc::Sender<driver::NewLeg>,
}

impl std::fmt::Debug for driver::NewLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewLeg")
    }
}

/// Forwards a connection's media datagrams to the call with its peer, stamped on arrival.
pub(crate) async fn route_datagrams(svc: Arc<Calls>, conn: PeerConnection) {
    let Some(mut rx) = conn.take_datagrams() else {
        return;
    };
    let peer = conn.peer();
    while let Some(d) = rx.recv().await {
        let at = Instant::now();
        let tx = svc
            .active
            .lock()
            .as_ref()
            .filter(|c| c.peers.contains(&peer))
            .map(|c| c.media.clone());
        if let Some(tx) = tx {
            let _ = tx.try_send((peer, at, d));
        }
    }
}

/// Registers call `id` (with `peer` first); fails with `Busy` when one runs.
fn register(svc: &Calls, id: CallId, peer: PeerId) -> Result<driver::Inputs, CallError> {
    let mut g = svc.active.lock();
    if g.is_some() {
        return Err(CallError::Busy);
    }
    let (cmd, cmd_rx) = mpsc::channel(16);
    let (media, media_rx) = mpsc::channel(1024);
    let (legs, legs_rx) = mpsc::channel(16);
    *g = Some(ActiveCall {
        id,
        peers: vec![peer],
        cmd,
        media,
        legs: legs.clone(),
    });
    Ok(driver::Inputs {
        cmd: cmd_rx,
        media: media_rx,
        legs: legs_rx,
        legs_tx: legs,
    })
}

/// Most commands kept for a call whose connection is still coming up.
const EARLY_COMMANDS: usize = 64;

/// On drop, while armed, forgets the registered call if it is this one (it never started).
struct Unregister<'a> {
    calls: &'a Calls,
    id: CallId,
    armed: bool,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        let mut g = self.calls.active.lock();
        if self.armed && g.as_ref().is_some_and(|c| c.id == self.id) {
            *g = None;
        }
    }
}

/// Places registered call `id` to the peer of `conn` (`early`: commands given meanwhile).
async fn start_dial(
    svc: Arc<Calls>,
    conn: PeerConnection,
    opts: CallOptions,
    id: CallId,
    inputs: driver::Inputs,
    early: Vec<Cmd>,
) -> Result<(), EngineError> {
    let (mut send, recv) = conn.quic().open_bi().await.map_err(CallError::from)?;
    send.write_all(&[CALL]).await.map_err(CallError::from)?;
    let peer = conn.peer();
    let leg = driver::NewLeg::Dialed {
        conn,
        streams: (send, recv),
        join: None,
    };
    let setup = driver::Setup::Dial(leg, opts, early);
    tokio::spawn(driver::run(svc, id, peer, setup, inputs));
    Ok(())
}

/// How long an offer of a group call's member waits for the call to exist here (its
/// invitation may be on its way over another connection).
const MESH_WAIT: Duration = Duration::from_secs(10);

/// Serves a call stream the peer opened.
pub(crate) async fn serve(
    svc: Arc<Calls>,
    conn: PeerConnection,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let mut reader = FrameReader::new(recv, MAX_FRAME);
    let first = match tokio::time::timeout(FIRST_FRAME_TIMEOUT, reader.next()).await {
        Ok(Ok(raw)) => CallFrame::decode(raw),
        _ => return,
    };
    let group = match &first {
        Ok(CallFrame::Offer { group, .. }) => group.clone(),
        _ => None,
    };
    let now = Instant::now();
    let call = match first
        .map_err(|e| e.to_string())
        .and_then(|f| Call::incoming(now, f).map_err(|e| e.to_string()))
    {
        Ok((c, _)) => c,
        Err(e) => {
            tracing::debug!(peer = %conn.peer(), "bad call stream: {e}");
            let _ = send.reset(1u32.into());
            return;
        }
    };
    let id = call.id();
    let peer = conn.peer();
    let welcome = match group {
        Some(GroupJoin::Mesh) => {
            return join_mesh(&svc, conn, send, reader, call).await;
        }
        Some(GroupJoin::Invite { members }) => Some(members),
        None => None,
    };
    let Ok(inputs) = register(&svc, id, peer) else {
        refuse(send, RejectReason::Busy).await;
        return;
    };
    let leg = driver::NewLeg::Incoming {
        conn,
        send,
        reader,
        call: Box::new(call),
    };
    let setup = driver::Setup::Incoming { leg, welcome };
    driver::run(svc, id, peer, setup, inputs).await;
}

/// A member's offer in a group call: handed to the call once it exists here, refused if it
/// does not come to be within [`MESH_WAIT`].
async fn join_mesh(
    svc: &Calls,
    conn: PeerConnection,
    send: quinn::SendStream,
    reader: FrameReader<quinn::RecvStream>,
    call: Call,
) {
    let id = call.id();
    let deadline = Instant::now() + MESH_WAIT;
    let tx = loop {
        let tx = (svc.active.lock().as_ref())
            .filter(|c| c.id == id)
            .map(|c| c.legs.clone());
        match tx {
            Some(tx) => break tx,
            None if Instant::now() >= deadline => {
                refuse(send, RejectReason::Declined).await;
                return;
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let leg = driver::NewLeg::Incoming {
        conn,
        send,
        reader,
        call: Box::new(call),
    };
    if let Err(e) = tx.send(leg).await
        && let driver::NewLeg::Incoming { send, .. } = e.0
    {
        refuse(send, RejectReason::Busy).await;
    }
}

/// Refuses a call stream's offer.
async fn refuse(mut send: quinn::SendStream, reason: RejectReason) {
    let mut buf = Vec::new();
    CallFrame::Reject { reason }.encode(&mut buf);
    let _ = send.write_all(&buf).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
}

/// Sends a command to the current call.
pub(crate) async fn command(svc: &Calls, id: Option<CallId>, cmd: Cmd) -> Result<(), CallError> {
    let tx = svc
        .active
        .lock()
        .as_ref()
        .filter(|c| id.is_none_or(|id| c.id == id))
        .map(|c| c.cmd.clone())
        .ok_or(CallError::NoSuchCall)?;
    tx.send(cmd).await.map_err(|_| CallError::NoSuchCall)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_fit_the_peers_caps() {
        let mut o = CallOptions {
            width: 1920,
            height: 1080,
            fps: 60,
            video_kbps: 6000,
            ..CallOptions::default()
        };
        let mut peer = o.describe(true, true);
        peer.max_width = 1280;
        peer.max_height = 721;
        peer.max_fps = 30;
        peer.max_kbps = 2000;
        o.fit_to(&peer);
        assert_eq!(
            (o.width, o.height, o.fps, o.video_kbps),
            (1280, 720, 30, 1968)
        );
        // Zero means no cap.
        let mut o2 = CallOptions::default();
        peer.max_width = 0;
        peer.max_height = 0;
        peer.max_fps = 0;
        peer.max_kbps = 0;
        o2.fit_to(&peer);
        assert_eq!((o2.width, o2.height, o2.fps), (640, 360, 30));
    }
}

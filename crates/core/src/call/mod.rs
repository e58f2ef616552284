//! Calls: signaling on a call stream (kind [`CALL`]), media on QUIC datagrams.
//!
//! One task per call drives the sans-IO [`p2pcall_media::call::Call`] (offer, ring,
//! accept, updates, hang-up, liveness) and [`MediaSession`] (packetizing, NACK, jitter
//! buffers, lip sync). Capture threads encode and hand frames to it; a render thread
//! decodes what it releases and writes the sinks. The task plays audio out at the jitter
//! buffer's pace (20 ms frames, time-stretched) and reports [`CallStats`] every second.
//! One call at a time: a second incoming call is answered `Busy`.

mod grabber;
pub mod media;
pub mod ring;

use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2pcall_media::adapt::Ladder;
use p2pcall_media::call::{Call, CallEvent as SmEvent};
use p2pcall_media::session::{Bitrates, MediaSession, SessionEvent};
use p2pcall_net::PeerConnection;
use p2pcall_proto::PeerId;
use p2pcall_proto::call::{
    CallFrame, CallId, Codec, HangupReason, MAX_FRAME, RejectReason, SessionDesc, StreamDesc,
    StreamKind,
};
use p2pcall_transport::framed::{FrameReadError, FrameReader};
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
/// How long the end of a call waits for the peer to read our last frames.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);
/// Datagrams go to QUIC only while its buffer has this much room (it holds at most a
/// couple of packets more than it can send).
const DATAGRAM_ROOM: usize = (64 << 10) - 2 * 1500;
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
        }
    }
}

impl CallOptions {
    /// Opens every source and sink once: an unusable camera, microphone, file or speaker is an
    /// error here, before a call is placed or answered, rather than a call that fails.
    pub fn check(&self) -> Result<(), CallError> {
        media::check_sources(&self.video, &self.audio, &self.sinks, self.video_params())
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
    /// The peer changed its streams (mute, camera).
    Updated {
        /// The call.
        call: CallId,
        /// Streams each way.
        streams: Negotiated,
    },
    /// Every second.
    Stats(Box<CallStats>),
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

    /// Calls `peer`; the outcome arrives as [`CallEvent`]s.
    pub(crate) async fn call(
        self: &Arc<Self>,
        peer: PeerId,
        opts: CallOptions,
    ) -> Result<CallId, EngineError> {
        let conn = self.ctx.connect(peer).await?;
        Ok(dial(self.clone(), conn, opts).await?)
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
}

/// The call registered with the engine.
#[derive(Debug)]
pub(crate) struct ActiveCall {
    pub id: CallId,
    pub peer: PeerId,
    pub cmd: mpsc::Sender<Cmd>,
    pub media: mpsc::Sender<(Instant, Bytes)>,
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
            .filter(|c| c.peer == peer)
            .map(|c| c.media.clone());
        if let Some(tx) = tx {
            let _ = tx.try_send((at, d));
        }
    }
}

/// The channels of a registered call: commands and media datagrams.
type CallChannels = (mpsc::Receiver<Cmd>, mpsc::Receiver<(Instant, Bytes)>);

/// Registers call `id` with `peer`; fails with `Busy` when one runs.
fn register(svc: &Calls, id: CallId, peer: PeerId) -> Result<CallChannels, CallError> {
    let mut g = svc.active.lock();
    if g.is_some() {
        return Err(CallError::Busy);
    }
    let (cmd, cmd_rx) = mpsc::channel(16);
    let (media, media_rx) = mpsc::channel(1024);
    *g = Some(ActiveCall {
        id,
        peer,
        cmd,
        media,
    });
    Ok((cmd_rx, media_rx))
}

/// Places a call to `peer` over `conn`.
pub(crate) async fn dial(
    svc: Arc<Calls>,
    conn: PeerConnection,
    opts: CallOptions,
) -> Result<CallId, CallError> {
    if svc.active.lock().is_some() {
        return Err(CallError::Busy);
    }
    let (mut send, recv) = conn.quic().open_bi().await?;
    send.write_all(&[CALL]).await?;
    let id = CallId::from_bytes(rand::random());
    let call = Call::dial(Instant::now(), id, opts.describe(true, true));
    let chans = register(&svc, id, conn.peer())?;
    tokio::spawn(run(svc, conn, call, (send, recv), chans, Some(opts)));
    Ok(id)
}

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
    let now = Instant::now();
    let (call, offer) = match first
        .map_err(|e| e.to_string())
        .and_then(|f| Call::incoming(now, f).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(peer = %conn.peer(), "bad call stream: {e}");
            let _ = send.reset(1u32.into());
            return;
        }
    };
    let id = call.id();
    let Ok(chans) = register(&svc, id, conn.peer()) else {
        let mut buf = Vec::new();
        CallFrame::Reject {
            reason: RejectReason::Busy,
        }
        .encode(&mut buf);
        let _ = send.write_all(&buf).await;
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
        return;
    };
    svc.events.emit(CallEvent::Incoming {
        call: id,
        peer: conn.peer(),
        name: conn.remote_name(),
        audio: offer.streams.iter().any(|s| s.codec == Codec::Opus),
        video: offer.streams.iter().any(|s| s.codec == Codec::H264),
    });
    run_with_reader(svc, conn, call, send, reader, chans, None).await;
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

async fn run(
    svc: Arc<Calls>,
    conn: PeerConnection,
    call: Call,
    (send, recv): (quinn::SendStream, quinn::RecvStream),
    chans: CallChannels,
    opts: Option<CallOptions>,
) {
    let reader = FrameReader::new(recv, MAX_FRAME);
    run_with_reader(svc, conn, call, send, reader, chans, opts).await;
}

/// Media pipeline state of a running call.
struct Pipeline {
    opts: CallOptions,
    epoch: Instant,
    captures: Vec<(u8, media::Capture)>,
    render: Option<media::RenderThread>,
    render_stats: Arc<Mutex<RenderStats>>,
    next_audio: Option<Instant>,
    audio_rx: Option<u8>,
    video_rx: Option<u8>,
    muted: bool,
    camera: bool,
    meter: Meter,
    /// Echo canceller of the microphone, if the call uses one.
    voice: Option<media::Voice>,
    /// Bitrate → size and frame rate of our video (None: no video sent).
    ladder: Option<Ladder>,
    /// The video capture was told to skip frames (the pacer is backed up).
    backlog: bool,
    /// Decode errors the render thread had reported when last looked at.
    decode_errors: u64,
}

#[derive(Default)]
struct Meter {
    at: Option<Instant>,
    send: Vec<(u8, u64, u64)>,
    recv: Vec<(u8, u64, u64)>,
}

/// Reads signaling frames from the peer into `tx` until the stream ends (`None`).
fn spawn_reader(
    mut reader: FrameReader<quinn::RecvStream>,
    tx: mpsc::Sender<Option<CallFrame>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let f = match reader.next().await {
                Ok(raw) => CallFrame::decode(raw).ok(),
                Err(FrameReadError::Closed) | Err(_) => None,
            };
            let end = f.is_none();
            if tx.send(f).await.is_err() || end {
                return;
            }
        }
    })
}

/// Runs one call until it ends: [`CallDriver`] handles each event, this loop only waits for
/// the next one.
async fn run_with_reader(
    svc: Arc<Calls>,
    conn: PeerConnection,
    call: Call,
    send: quinn::SendStream,
    reader: FrameReader<quinn::RecvStream>,
    (mut cmd_rx, mut media_rx): CallChannels,
    opts: Option<CallOptions>,
) {
    let (frame_tx, mut frame_rx) = mpsc::channel::<Option<CallFrame>>(16);
    let reader_task = spawn_reader(reader, frame_tx);
    let (enc_tx, mut enc_rx) = mpsc::channel::<media::Encoded>(8);
    let (err_tx, mut err_rx) = mpsc::channel::<String>(4);
    let mut d = CallDriver::new(svc, conn, call, send, opts, enc_tx, err_tx);
    loop {
        d.flush_signaling().await;
        d.handle_call_events();
        if d.ended.is_some() {
            break;
        }
        d.send_media();
        let wake = d.next_wake(Instant::now());
        tokio::select! {
            c = cmd_rx.recv() => d.handle_command(c),
            f = frame_rx.recv() => d.handle_frame(f.flatten()),
            Some((at, dg)) = media_rx.recv() => {
                d.handle_datagram(at, &dg);
                // Take whatever else is queued now (one wake-up per burst).
                while let Ok((at, dg)) = media_rx.try_recv() {
                    d.handle_datagram(at, &dg);
                }
            }
            Some(e) = enc_rx.recv() => d.handle_encoded(e),
            Some(msg) = err_rx.recv() => d.handle_capture_error(msg),
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        d.handle_timeout(Instant::now());
    }
    d.finish(&mut frame_rx).await;
    reader_task.abort();
    d.report_end().await;
}

/// One running call: its signaling machine, media session and pipeline, and what happens on
/// each event (a command from the front end, a frame or datagram from the peer, an encoded
/// frame or an error from a capture, time passing).
struct CallDriver {
    svc: Arc<Calls>,
    conn: PeerConnection,
    call: Call,
    send: quinn::SendStream,
    id: CallId,
    peer: PeerId,
    opts: Option<CallOptions>,
    session: MediaSession,
    gate: Arc<crate::bulk::BulkGate>,
    pipe: Option<Pipeline>,
    /// Hang up here (`--duration`).
    deadline: Option<Instant>,
    next_stats: Instant,
    ended: Option<EndReason>,
    wbuf: Vec<u8>,
    enc_tx: mpsc::Sender<media::Encoded>,
    err_tx: mpsc::Sender<String>,
}

impl CallDriver {
    fn new(
        svc: Arc<Calls>,
        conn: PeerConnection,
        call: Call,
        send: quinn::SendStream,
        opts: Option<CallOptions>,
        enc_tx: mpsc::Sender<media::Encoded>,
        err_tx: mpsc::Sender<String>,
    ) -> Self {
        let peer = conn.peer();
        Self {
            gate: svc.bulk.of(peer),
            svc,
            id: call.id(),
            peer,
            conn,
            call,
            send,
            opts,
            session: MediaSession::new(),
            pipe: None,
            deadline: None,
            next_stats: Instant::now() + STATS_INTERVAL,
            ended: None,
            wbuf: Vec::new(),
            enc_tx,
            err_tx,
        }
    }

    fn emit(&self, e: CallEvent) {
        self.svc.events.emit(e);
    }

    fn warn(&self, message: String) {
        self.emit(CallEvent::Warning {
            call: self.id,
            message,
        });
    }

    /// Signaling out.
    async fn flush_signaling(&mut self) {
        while let Some(f) = self.call.poll_transmit() {
            self.wbuf.clear();
            f.encode(&mut self.wbuf);
            if self.send.write_all(&self.wbuf).await.is_err() {
                self.call.stream_closed(Instant::now());
            }
        }
    }

    /// What the signaling machine decided.
    fn handle_call_events(&mut self) {
        while let Some(e) = self.call.poll_event() {
            match e {
                SmEvent::Ringing => self.emit(CallEvent::Ringing { call: self.id }),
                SmEvent::Accepted(n) => self.accepted(n),
                SmEvent::Updated(n) => {
                    self.session.configure(&n);
                    if let Some(p) = &mut self.pipe {
                        (p.audio_rx, p.video_rx) = received_streams(&n);
                    }
                    self.emit(CallEvent::Updated {
                        call: self.id,
                        streams: n,
                    });
                }
                SmEvent::Ended(r) => {
                    tracing::debug!(call = %self.id, ?r, "call ended");
                    self.ended = Some(r);
                }
            }
        }
    }

    /// Both sides agreed: configure the session and start capturing and rendering.
    fn accepted(&mut self, n: Negotiated) {
        tracing::debug!(call = %self.id, ?n, "call accepted");
        self.session.configure(&n);
        let mut o = self.opts.clone().unwrap_or_default();
        if let Some(r) = self.call.remote() {
            o.fit_to(r);
        }
        self.session.set_bitrates(o.bitrates());
        self.deadline = o.duration.map(|d| Instant::now() + d);
        match start_pipeline(o, &n, &self.enc_tx, &self.err_tx) {
            Ok(p) => self.pipe = Some(p),
            Err(e) => {
                self.warn(e.to_string());
                self.call
                    .hangup(Instant::now(), HangupReason::Error, &e.to_string());
            }
        }
        self.emit(CallEvent::Started {
            call: self.id,
            peer: self.peer,
            streams: n,
        });
    }

    /// Media out, while QUIC takes it at once: what it cannot send yet waits in the
    /// session's pacer (audio first, late frames dropped whole), not in QUIC's buffer.
    fn send_media(&mut self) {
        let quic = self.conn.quic();
        while quic.datagram_send_buffer_space() >= DATAGRAM_ROOM
            && let Some(d) = self.session.poll_transmit(Instant::now())
        {
            let _ = quic.send_datagram(d);
        }
        while let Some(SessionEvent::KeyframeRequested { stream }) = self.session.poll_event() {
            if let Some(p) = &self.pipe
                && let Some((_, c)) = p.captures.iter().find(|(s, _)| *s == stream)
            {
                let _ = c.cmd.send(media::CaptureCmd::Keyframe);
            }
        }
    }

    /// When something is due next (at least `now`).
    fn next_wake(&self, now: Instant) -> Instant {
        let pipe = self.pipe.as_ref();
        [
            self.call.poll_timeout(),
            self.session.poll_timeout(now),
            Some(self.next_stats),
            self.deadline,
            pipe.and_then(|p| p.next_audio),
            pipe.and_then(|p| p.video_rx)
                .and_then(|s| self.session.video_due(s)),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now + Duration::from_secs(1))
        .max(now)
    }

    /// A command from the front end (`None`: the engine dropped the call's handle).
    fn handle_command(&mut self, c: Option<Cmd>) {
        let now = Instant::now();
        match c {
            Some(Cmd::Answer(o)) => {
                tracing::debug!(call = %self.id, "answering");
                let d = o.describe(true, true);
                self.opts = Some(*o);
                let _ = self.call.accept(now, d);
            }
            Some(Cmd::Reject) => {
                let _ = self.call.reject(now, RejectReason::Declined);
            }
            Some(Cmd::Hangup) | None => self.call.hangup(now, HangupReason::Normal, ""),
            Some(Cmd::Mute(m)) => set_active(&mut self.call, &mut self.pipe, Some(m), None),
            Some(Cmd::Camera(on)) => set_active(&mut self.call, &mut self.pipe, None, Some(on)),
            Some(Cmd::Video(src)) => {
                if let Some(p) = &mut self.pipe
                    && let Err(e) = switch_video(p, src, &self.enc_tx, &self.err_tx)
                {
                    self.warn(e.to_string());
                }
                set_active(&mut self.call, &mut self.pipe, None, None);
            }
        }
    }

    /// A signaling frame from the peer (`None`: its stream ended or broke the protocol).
    fn handle_frame(&mut self, f: Option<CallFrame>) {
        match f {
            Some(f) => self.call.handle_frame(Instant::now(), f),
            None => self.call.stream_closed(Instant::now()),
        }
    }

    /// A media datagram from the peer, received at `at`.
    fn handle_datagram(&mut self, at: Instant, d: &[u8]) {
        self.call.handle_media(at);
        self.session
            .set_connection_rx_bytes(self.conn.quic().stats().udp_rx.bytes);
        let _ = self.session.handle_datagram(at, d);
    }

    /// A frame one of our captures encoded.
    fn handle_encoded(&mut self, e: media::Encoded) {
        let stream = if e.audio { AUDIO_STREAM } else { VIDEO_STREAM };
        // Not from a capture that was replaced or stopped.
        let current = self.pipe.as_ref().is_some_and(|p| {
            p.captures
                .iter()
                .any(|(s, c)| *s == stream && c.id == e.capture)
        });
        let max = self.conn.quic().max_datagram_size().unwrap_or(1200);
        if current
            && let Err(err) = self.session.send_frame(
                Instant::now(),
                stream,
                e.data,
                e.timestamp,
                e.keyframe,
                max,
            )
        {
            tracing::debug!("media frame not sent: {err}");
        }
    }

    /// A capture failed: the call cannot go on as negotiated.
    fn handle_capture_error(&mut self, msg: String) {
        self.warn(msg.clone());
        self.call.hangup(Instant::now(), HangupReason::Error, &msg);
    }

    /// Time passed: timers, rate adaptation, play-out, statistics, the call's duration.
    fn handle_timeout(&mut self, now: Instant) {
        self.call.handle_timeout(now);
        self.session.set_rtt(self.conn.quic().rtt());
        self.session.set_bulk_active(self.gate.writers() > 0);
        self.session.handle_timeout(now);
        self.gate
            .set_allowance(self.session.bulk_allowance_bps(now));
        let stats_due = now >= self.next_stats;
        if stats_due {
            self.next_stats = now + STATS_INTERVAL;
        }
        if let Some(p) = &mut self.pipe {
            adapt(p, &self.session, now);
            play_out(p, &mut self.session, now);
            // A frame the decoder could not use leaves the picture broken until the next
            // keyframe (there are no periodic ones): ask for one.
            let errors = p.render_stats.lock().decode_errors;
            if errors > p.decode_errors
                && let Some(v) = p.video_rx
                && self.session.request_keyframe(now, v)
            {
                p.decode_errors = errors;
            }
            if stats_due {
                let s = stats(&self.call, &self.conn, &self.session, p, now);
                self.svc.events.emit(CallEvent::Stats(Box::new(s)));
            }
        }
        if self.deadline.is_some_and(|d| now >= d) {
            self.deadline = None;
            self.call
                .hangup(now, HangupReason::Finished, "duration reached");
        }
    }

    /// The call ended: tell the peer (a Hangup or Reject may still be queued) and let it
    /// read our last frames before anything closes the connection (a process that exits
    /// right after a call must not look vanished to the peer; the peer finishes its side
    /// only after it has read them, so wait for that).
    async fn finish(&mut self, frame_rx: &mut mpsc::Receiver<Option<CallFrame>>) {
        self.gate.set_allowance(None);
        while let Some(f) = self.call.poll_transmit() {
            self.wbuf.clear();
            f.encode(&mut self.wbuf);
            let _ = self.send.write_all(&self.wbuf).await;
        }
        let _ = self.send.finish();
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, async {
            while let Some(Some(_)) = frame_rx.recv().await {}
        })
        .await;
        let mut g = self.svc.active.lock();
        if g.as_ref().is_some_and(|c| c.id == self.id) {
            *g = None;
        }
    }

    /// Stops the pipeline and reports how the call ended, with its final statistics.
    async fn report_end(mut self) {
        let mut final_stats = None;
        if let Some(mut p) = self.pipe.take() {
            // Final rates are averages over the whole call.
            p.meter = Meter::default();
            let mut s = stats(
                &self.call,
                &self.conn,
                &self.session,
                &mut p,
                Instant::now(),
            );
            p.captures.clear();
            if let Some((tx, h)) = p.render.take() {
                drop(tx);
                match tokio::task::spawn_blocking(move || h.join()).await {
                    Ok(Ok(Err(e))) => self.warn(format!("recording: {e}")),
                    Ok(Ok(Ok(()))) => {}
                    _ => tracing::warn!("the render thread failed"),
                }
            }
            // Counters of the render thread are final only now.
            let r = p.render_stats.lock().clone();
            fill_render(&mut s, &r);
            final_stats = Some(Box::new(s));
        }
        let reason = self.ended.take().unwrap_or(EndReason::PeerVanished);
        self.emit(CallEvent::Ended {
            call: self.id,
            peer: self.peer,
            reason,
            stats: final_stats,
        });
    }
}

/// The peer's audio stream and video stream that we play (the first of each).
fn received_streams(n: &Negotiated) -> (Option<u8>, Option<u8>) {
    let first = |audio: bool| {
        n.receive
            .iter()
            .find(|s| (s.kind == StreamKind::Audio) == audio)
            .map(|s| s.id)
    };
    (first(true), first(false))
}

/// The quality ladder of a call's video: from the call's size and frame rate down.
fn ladder_for(o: &CallOptions) -> Ladder {
    Ladder::new(o.width, o.height, o.fps as f32, o.video.is_screen())
}

/// Follows the bandwidth estimate: the video capture gets the bitrate at once and the size
/// and frame rate the ladder picks, and skips frames while the pacer is backed up.
fn adapt(p: &mut Pipeline, session: &MediaSession, now: Instant) {
    let Some((_, c)) = p.captures.iter().find(|(s, _)| *s == VIDEO_STREAM) else {
        return;
    };
    if let Some(q) = p
        .ladder
        .as_mut()
        .and_then(|l| l.update(now, session.video_target_bps()))
    {
        let _ = c.cmd.send(media::CaptureCmd::Quality {
            bitrate_bps: q.bitrate_bps,
            fps: q.fps,
            max_width: q.width,
            max_height: q.height,
        });
    }
    let backlog = session.should_skip_frame();
    if backlog != p.backlog {
        p.backlog = backlog;
        let _ = c.cmd.send(media::CaptureCmd::Backlog(backlog));
    }
}

fn start_pipeline(
    opts: CallOptions,
    n: &Negotiated,
    enc_tx: &mpsc::Sender<media::Encoded>,
    err_tx: &mpsc::Sender<String>,
) -> Result<Pipeline, CallError> {
    let epoch = Instant::now();
    let render_stats = Arc::new(Mutex::new(RenderStats::default()));
    let mut captures = Vec::new();
    let voice = media::voice_for(&opts.audio);
    for s in &n.send {
        let c = match s.kind {
            StreamKind::Audio => media::start_audio(
                &opts.audio,
                epoch,
                voice.clone(),
                enc_tx.clone(),
                err_tx.clone(),
            )?,
            StreamKind::Camera | StreamKind::Screen => media::start_video(
                &opts.video,
                opts.video_params(),
                s.kind == StreamKind::Screen,
                epoch,
                enc_tx.clone(),
                err_tx.clone(),
                opts.sinks.tap.clone(),
            )?,
        };
        captures.push((s.id, c));
    }
    let (audio_rx, video_rx) = received_streams(n);
    let ladder = n
        .send
        .iter()
        .any(|s| s.kind != StreamKind::Audio)
        .then(|| ladder_for(&opts));
    let render = Some(media::start_render(
        opts.sinks.clone(),
        opts.fps,
        render_stats.clone(),
        voice.clone(),
    )?);
    Ok(Pipeline {
        opts,
        epoch,
        captures,
        render,
        render_stats,
        next_audio: audio_rx.map(|_| epoch),
        audio_rx,
        video_rx,
        ladder,
        backlog: false,
        decode_errors: 0,
        muted: false,
        camera: true,
        meter: Meter::default(),
        voice,
    })
}

/// Replaces the video source of a running call (the new capture starts with a keyframe).
fn switch_video(
    p: &mut Pipeline,
    src: VideoSource,
    enc_tx: &mpsc::Sender<media::Encoded>,
    err_tx: &mpsc::Sender<String>,
) -> Result<(), CallError> {
    let Some(slot) = p.captures.iter_mut().find(|(s, _)| *s == VIDEO_STREAM) else {
        return Err(CallError::Source(
            "this call has no video stream (it was placed with --video none)".into(),
        ));
    };
    if src == VideoSource::None {
        return Err(CallError::Source(
            "to stop video, turn the camera off".into(),
        ));
    }
    // Same clock as before: timestamps continue, the receiver sees a keyframe. The stream
    // becomes a screen stream or a camera stream with the source (the update says so).
    slot.1 = media::start_video(
        &src,
        p.opts.video_params(),
        src.is_screen(),
        p.epoch,
        enc_tx.clone(),
        err_tx.clone(),
        p.opts.sinks.tap.clone(),
    )?;
    let _ = slot.1.cmd.send(media::CaptureCmd::Active(p.camera));
    p.opts.video = src;
    // A new source climbs its own ladder (a screen keeps its size, a camera its rate).
    p.ladder = Some(ladder_for(&p.opts));
    p.backlog = false;
    Ok(())
}

fn set_active(
    call: &mut Call,
    pipe: &mut Option<Pipeline>,
    mute: Option<bool>,
    camera: Option<bool>,
) {
    let Some(p) = pipe else { return };
    if let Some(m) = mute {
        p.muted = m;
    }
    if let Some(c) = camera {
        p.camera = c;
    }
    for (s, c) in &p.captures {
        let on = if *s == AUDIO_STREAM {
            !p.muted
        } else {
            p.camera
        };
        let _ = c.cmd.send(media::CaptureCmd::Active(on));
    }
    let d = p.opts.describe(!p.muted, p.camera);
    let _ = call.update(Instant::now(), d);
}

/// Plays out audio frames that are due, and releases video frames that are due.
fn play_out(p: &mut Pipeline, session: &mut MediaSession, now: Instant) {
    let Some((tx, _)) = &p.render else { return };
    if let (Some(stream), Some(mut next)) = (p.audio_rx, p.next_audio) {
        // A late wake-up plays every frame that was due (the device would have pulled them).
        let mut n = 0;
        while next <= now && n < 10 {
            let Some(o) = session.pop_audio(next.max(now - Duration::from_millis(1)), stream)
            else {
                break;
            };
            let samples = o.samples();
            let _ = tx.try_send(media::Render::Audio {
                playout: o.playout,
                stretch: o.stretch,
            });
            next += Duration::from_micros(u64::from(samples) * 1_000_000 / 48_000);
            n += 1;
        }
        if next + Duration::from_millis(200) < now {
            next = now;
        }
        p.next_audio = Some(next);
    }
    if let Some(stream) = p.video_rx {
        while let Some(f) = session.pop_video(now, stream) {
            let _ = tx.try_send(media::Render::Video { data: f.data });
        }
    }
}

fn kind_name(k: StreamKind) -> &'static str {
    match k {
        StreamKind::Audio => "audio",
        StreamKind::Camera => "camera",
        StreamKind::Screen => "screen",
    }
}

fn fill_render(s: &mut CallStats, r: &RenderStats) {
    s.video_decoded = r.decoded;
    s.resolution = r.resolution;
    s.video_latency_ms = r.video_latency_ms;
    s.video_latency_mean_ms = r.video_latency_mean_ms;
    s.stamp_gaps = r.stamp_gaps;
    s.recorded_frames = r.recorded_frames;
    s.recordings.clone_from(&r.recordings);
    s.audio_samples = r.audio_samples;
    s.audio_latency_ms = r.audio_latency_ms;
    s.audio_latency_mean_ms = r.audio_latency_mean_ms;
    s.speaker = r.speaker.clone();
    s.speaker_underruns = r.speaker_underruns;
}

fn stats(
    call: &Call,
    conn: &PeerConnection,
    session: &MediaSession,
    p: &mut Pipeline,
    now: Instant,
) -> CallStats {
    let dt = p
        .meter
        .at
        .map(|t| now.saturating_duration_since(t).as_secs_f64())
        .unwrap_or_else(|| now.saturating_duration_since(p.epoch).as_secs_f64())
        .max(1e-3);
    let prev =
        |v: &[(u8, u64, u64)], id: u8| v.iter().find(|x| x.0 == id).map_or((0, 0), |x| (x.1, x.2));
    let mut s = CallStats {
        call: call.id().to_string(),
        elapsed_s: call
            .started
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64()),
        rtt_ms: conn.quic().rtt().as_secs_f64() * 1e3,
        path: conn.path().to_string(),
        rejected_datagrams: session.rejected,
        rate: RateReport::new(&session.rate_stats(now)),
        echo_erle_db: p
            .voice
            .as_ref()
            .and_then(|v| v.lock().echo_return_loss_enhancement_db()),
        ..CallStats::default()
    };
    let mut send_now = Vec::new();
    for (id, kind, st) in session.send_stats() {
        let (b0, f0) = prev(&p.meter.send, id);
        s.send.push(SendStreamStats {
            id,
            kind: kind_name(kind).into(),
            kbps: (st.bytes - b0) as f64 * 8.0 / dt / 1e3,
            fps: (st.frames - f0) as f64 / dt,
            frames: st.frames,
            packets: st.packets,
            retransmitted: st.retransmitted,
            keyframe_requests: st.keyframe_requests,
        });
        send_now.push((id, st.bytes, st.frames));
    }
    let mut recv_now = Vec::new();
    for (id, st) in session.recv_stats() {
        let (b0, f0) = prev(&p.meter.recv, id);
        let kind = if Some(id) == p.audio_rx {
            "audio"
        } else {
            "video"
        };
        s.recv.push(RecvStreamStats {
            id,
            kind: kind.into(),
            kbps: (st.bytes - b0) as f64 * 8.0 / dt / 1e3,
            fps: (st.frames.saturating_sub(f0)) as f64 / dt,
            packets: st.packets,
            loss_pct: st.loss() * 100.0,
            nacks: st.nacks,
            recovered: st.recovered,
            keyframe_requests: st.keyframe_requests,
            jitter_ms: st.jitter_ms,
            buffer_ms: st.buffer_ms,
            target_ms: st.target_ms,
            concealed_pct: if st.playouts == 0 {
                0.0
            } else {
                st.concealed as f64 * 100.0 / st.playouts as f64
            },
            fec_frames: st.fec,
            freezes: st.freezes,
            freeze_ms: st.freeze_ms,
            skew_ms: st.skew_ms,
        });
        recv_now.push((id, st.bytes, st.frames));
    }
    p.meter = Meter {
        at: Some(now),
        send: send_now,
        recv: recv_now,
    };
    {
        let r = p.render_stats.lock();
        fill_render(&mut s, &r);
    }
    s
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

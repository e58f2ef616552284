//! One pair's part of a call: its signaling machine and call stream, its media session over
//! the pair's connection, and the render thread of what that peer sends. A one-to-one call
//! has one leg; a group call has one per other member.

use std::sync::Arc;
use std::time::{Duration, Instant};

use p2pcall_media::call::{Call, CallState, Negotiated};
use p2pcall_media::session::MediaSession;
use p2pcall_media::simulcast::{Layer, LayerChoice};
use p2pcall_net::PeerConnection;
use p2pcall_proto::PeerId;
use p2pcall_proto::call::{CallFrame, HangupReason, MAX_FRAME, StreamKind};
use p2pcall_transport::framed::FrameReader;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::media::{self, RenderStats};
use super::{CallStats, RateReport, RecvStreamStats, SendStreamStats};
use crate::bulk::BulkGate;

/// Frames from every leg's reader: `None` when that leg's stream ended or broke the protocol.
pub(super) type FrameTx = mpsc::Sender<(PeerId, FrameIn)>;

/// What a leg's call stream brought.
#[derive(Debug)]
pub(super) enum FrameIn {
    /// A signaling frame.
    Frame(CallFrame),
    /// Bytes that are no frame (the stream is not read further): why.
    Malformed(String),
    /// The stream ended or failed.
    Closed,
}

/// Most datagrams kept from before a leg is up (a keyframe and some audio).
const EARLY_MEDIA: usize = 256;
/// How much the writer of a call stream may have queued (signaling is a few frames a second).
const WRITE_QUEUE: usize = 64;

/// What the peer of a leg sends us, once the leg is up: decoded, played, recorded.
pub(super) struct Receive {
    pub render: Option<media::RenderThread>,
    pub render_stats: Arc<Mutex<RenderStats>>,
    pub next_audio: Option<Instant>,
    pub audio_rx: Option<u8>,
    pub video_rx: Option<u8>,
    pub meter: Meter,
    /// Decode errors the render thread had reported when last looked at.
    pub decode_errors: u64,
    /// When it started (the statistics' rates before their first interval).
    pub epoch: Instant,
    /// The connection's UDP bytes sent at the last statistics.
    pub sent_bytes: u64,
}

/// Byte and frame counters at the last statistics, per stream.
#[derive(Default)]
pub(super) struct Meter {
    pub at: Option<Instant>,
    /// The connection's UDP bytes sent then.
    pub udp_tx: u64,
    pub send: Vec<(u8, u64, u64)>,
    pub recv: Vec<(u8, u64, u64)>,
}

/// One pair's call.
pub(super) struct Leg {
    pub peer: PeerId,
    pub conn: PeerConnection,
    pub call: Call,
    pub session: MediaSession,
    pub gate: Arc<BulkGate>,
    pub rx: Option<Receive>,
    /// Encoded frames for the writer task (dropped: the stream is finished).
    out: Option<mpsc::Sender<Vec<u8>>>,
    reader: tokio::task::JoinHandle<()>,
    /// The stream's reader said it ended.
    pub closed: bool,
    /// The peer said it leaves the call: its hang-up follows, or we hang up at this time.
    pub leaving: Option<Instant>,
    /// A group call: which of our video layers this peer gets (its estimate decides).
    pub layers: Option<LayerChoice>,
    /// The layer whose frames go to this peer now.
    pub sending: Layer,
    /// The layer it moves to at that layer's next keyframe.
    pub switching: Option<Layer>,
    /// Media that arrived before the peer's `Accept` (datagrams can overtake the stream):
    /// played once the leg is up, so that its first keyframe is not lost.
    early: Vec<(Instant, bytes::Bytes)>,
    wbuf: Vec<u8>,
}

impl Leg {
    /// Starts the reader and writer of a call stream (`reader`: the stream's frames after
    /// any the caller took already).
    pub fn new(
        conn: PeerConnection,
        call: Call,
        send: quinn::SendStream,
        reader: FrameReader<quinn::RecvStream>,
        frames: &FrameTx,
        gate: Arc<BulkGate>,
    ) -> Self {
        let peer = conn.peer();
        let (out, out_rx) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(write_frames(peer, send, out_rx, frames.clone()));
        Self {
            peer,
            conn,
            call,
            session: MediaSession::new(),
            gate,
            rx: None,
            out: Some(out),
            reader: spawn_reader(peer, reader, frames.clone()),
            closed: false,
            leaving: None,
            layers: None,
            sending: Layer::Full,
            switching: None,
            early: Vec::new(),
            wbuf: Vec::new(),
        }
    }

    /// A leg over a stream we opened (`recv`: its receiving half).
    pub fn dialed(
        conn: PeerConnection,
        call: Call,
        (send, recv): (quinn::SendStream, quinn::RecvStream),
        frames: &FrameTx,
        gate: Arc<BulkGate>,
    ) -> Self {
        Self::new(
            conn,
            call,
            send,
            FrameReader::new(recv, MAX_FRAME),
            frames,
            gate,
        )
    }

    /// Whether media flows (both sides accepted, not ended).
    pub fn is_active(&self) -> bool {
        *self.call.state() == CallState::Active
    }

    /// Hands the signaling machine's frames to the writer. A writer that cannot keep up
    /// (the peer does not read its stream) ends the leg: the peer is as good as gone.
    pub fn flush(&mut self) {
        while let Some(f) = self.call.poll_transmit() {
            self.wbuf.clear();
            f.encode(&mut self.wbuf);
            let sent = self
                .out
                .as_ref()
                .is_some_and(|o| o.try_send(std::mem::take(&mut self.wbuf)).is_ok());
            if !sent {
                self.call.stream_closed(Instant::now());
            }
        }
    }

    /// The leg is over: its last frames go out, then the stream is finished; the reader
    /// stops once the peer has had [`FLUSH`] to read them.
    pub fn close(&mut self) {
        self.flush();
        self.out = None;
        let reader = self.reader.abort_handle();
        tokio::spawn(async move {
            tokio::time::sleep(FLUSH).await;
            reader.abort();
        });
    }

    /// Stops the render thread; `Err` says what went wrong with a recording.
    pub async fn stop_render(&mut self) -> Result<(), String> {
        let Some((tx, h)) = self.rx.as_mut().and_then(|r| r.render.take()) else {
            return Ok(());
        };
        drop(tx);
        match tokio::task::spawn_blocking(move || h.join()).await {
            Ok(Ok(r)) => r.map_err(|e| format!("recording: {e}")),
            _ => Err("the render thread failed".into()),
        }
    }

    /// A frame from the peer (`None`: its stream ended).
    pub fn handle_frame(&mut self, now: Instant, f: FrameIn) {
        match f {
            FrameIn::Frame(f) => self.call.handle_frame(now, f),
            FrameIn::Malformed(why) => {
                self.closed = true;
                self.call.malformed(now, &why);
            }
            FrameIn::Closed => {
                self.closed = true;
                self.call.stream_closed(now);
            }
        }
    }

    /// A media datagram from the peer, received at `at`.
    pub fn handle_datagram(&mut self, at: Instant, d: bytes::Bytes) {
        self.call.handle_media(at);
        if self.is_active() {
            self.session
                .set_connection_rx_bytes(self.conn.quic().stats().udp_rx.bytes);
            let _ = self.session.handle_datagram(at, &d);
        } else if self.early.len() < EARLY_MEDIA {
            self.early.push((at, d));
        }
    }

    /// The leg is up and its session configured: what arrived early is played now.
    pub fn replay_early(&mut self) {
        for (at, d) in std::mem::take(&mut self.early) {
            let _ = self.session.handle_datagram(at, &d);
        }
    }

    /// Time passed: the signaling machine's timers and the media session's rate control.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.call.handle_timeout(now);
        if self.leaving.is_some_and(|t| now >= t) {
            self.call
                .hangup(now, HangupReason::Normal, "no longer in the call");
        }
        if !self.is_active() {
            return;
        }
        self.session.set_rtt(self.conn.quic().rtt());
        self.session.set_bulk_active(self.gate.writers() > 0);
        self.session.handle_timeout(now);
        self.gate
            .set_allowance(self.session.bulk_allowance_bps(now));
        play_out(self, now);
        // A frame the decoder could not use leaves the picture broken until the next
        // keyframe (there are no periodic ones): ask for one.
        if let Some(r) = &mut self.rx {
            let errors = r.render_stats.lock().decode_errors;
            if errors > r.decode_errors
                && let Some(v) = r.video_rx
                && self.session.request_keyframe(now, v)
            {
                r.decode_errors = errors;
            }
        }
    }

    /// When something of this leg is due next.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let rx = self.rx.as_ref();
        [
            self.call.poll_timeout(),
            self.leaving,
            self.is_active()
                .then(|| self.session.poll_timeout(now))
                .flatten(),
            rx.and_then(|r| r.next_audio),
            rx.and_then(|r| r.video_rx)
                .and_then(|s| self.session.video_due(s)),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The peer's streams changed: play the new ones.
    pub fn set_received(&mut self, n: &Negotiated) {
        self.session.configure(n);
        if let Some(r) = &mut self.rx {
            (r.audio_rx, r.video_rx) = received_streams(n);
        }
    }
}

impl Drop for Leg {
    fn drop(&mut self) {
        self.gate.set_allowance(None);
    }
}

/// How long the end of a call stream waits for the peer to read our last frames.
pub(super) const FLUSH: Duration = Duration::from_secs(1);

/// Writes a call stream's frames until the leg drops its sender, then finishes the stream
/// and gives the peer [`FLUSH`] to read it; a failed write ends the leg.
async fn write_frames(
    peer: PeerId,
    mut send: quinn::SendStream,
    mut rx: mpsc::Receiver<Vec<u8>>,
    frames: FrameTx,
) {
    while let Some(buf) = rx.recv().await {
        if send.write_all(&buf).await.is_err() {
            let _ = frames.send((peer, FrameIn::Closed)).await;
            return;
        }
    }
    let _ = send.finish();
    let _ = tokio::time::timeout(FLUSH, send.stopped()).await;
}

/// Reads signaling frames from the peer until the stream ends (then `None`).
fn spawn_reader(
    peer: PeerId,
    mut reader: FrameReader<quinn::RecvStream>,
    tx: FrameTx,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let f = match reader.next().await {
                Ok(raw) => match CallFrame::decode(raw) {
                    Ok(f) => FrameIn::Frame(f),
                    Err(e) => FrameIn::Malformed(e.to_string()),
                },
                Err(_) => FrameIn::Closed,
            };
            let end = !matches!(f, FrameIn::Frame(_));
            if tx.send((peer, f)).await.is_err() || end {
                return;
            }
        }
    })
}

/// The peer's audio stream and video stream that we play (the first of each).
pub(super) fn received_streams(n: &Negotiated) -> (Option<u8>, Option<u8>) {
    let first = |audio: bool| {
        n.receive
            .iter()
            .find(|s| (s.kind == StreamKind::Audio) == audio)
            .map(|s| s.id)
    };
    (first(true), first(false))
}

/// Plays out audio frames that are due, and releases video frames that are due.
fn play_out(leg: &mut Leg, now: Instant) {
    let Some(r) = &mut leg.rx else { return };
    let Some((tx, _)) = &r.render else { return };
    if let (Some(stream), Some(mut next)) = (r.audio_rx, r.next_audio) {
        // A late wake-up plays every frame that was due (the device would have pulled them).
        let mut n = 0;
        while next <= now && n < 10 {
            let Some(o) = leg
                .session
                .pop_audio(next.max(now - Duration::from_millis(1)), stream)
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
        r.next_audio = Some(next);
    }
    if let Some(stream) = r.video_rx {
        while let Some(f) = leg.session.pop_video(now, stream) {
            let _ = tx.try_send(media::Render::Video { data: f.data });
        }
    }
}

/// Copies the render thread's counters.
pub(super) fn fill_render(s: &mut CallStats, r: &RenderStats) {
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
    s.audio_level_db = (r.audio_samples > 0).then(|| f64::from(r.audio_level_db()));
}

/// The statistics of one leg since the last call (rates over that interval; `answered`:
/// when we answered or placed the call).
pub(super) fn stats(leg: &mut Leg, now: Instant, answered: Instant) -> Option<CallStats> {
    let r = leg.rx.as_mut()?;
    let session = &leg.session;
    let dt = r
        .meter
        .at
        .map(|t| now.saturating_duration_since(t).as_secs_f64())
        .unwrap_or_else(|| now.saturating_duration_since(r.epoch).as_secs_f64())
        .max(1e-3);
    let prev =
        |v: &[(u8, u64, u64)], id: u8| v.iter().find(|x| x.0 == id).map_or((0, 0), |x| (x.1, x.2));
    let mut s = CallStats {
        call: leg.call.id().to_string(),
        peer: Some(leg.peer.to_string()),
        elapsed_s: leg
            .call
            .started
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64()),
        rtt_ms: leg.conn.quic().rtt().as_secs_f64() * 1e3,
        path: leg.conn.path().to_string(),
        rejected_datagrams: session.rejected,
        layer: leg.layers.as_ref().map(|_| leg.sending.name().to_string()),
        rate: RateReport::new(&session.rate_stats(now)),
        ..CallStats::default()
    };
    let mut send_now = Vec::new();
    for (id, kind, st) in session.send_stats() {
        let (b0, f0) = prev(&r.meter.send, id);
        s.send.push(SendStreamStats {
            id,
            kind: kind.name().into(),
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
        let (b0, f0) = prev(&r.meter.recv, id);
        let kind = if Some(id) == r.audio_rx {
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
    let udp_tx = leg.conn.quic().stats().udp_tx.bytes;
    let tx0 = if r.meter.at.is_some() {
        r.meter.udp_tx
    } else {
        r.sent_bytes
    };
    s.upload_kbps = udp_tx.saturating_sub(tx0) as f64 * 8.0 / dt / 1e3;
    r.meter = Meter {
        at: Some(now),
        udp_tx,
        send: send_now,
        recv: recv_now,
    };
    let rs = r.render_stats.lock();
    fill_render(&mut s, &rs);
    s.first_picture_ms =
        (rs.first_picture).map(|t| t.saturating_duration_since(answered).as_secs_f64() * 1e3);
    Some(s)
}

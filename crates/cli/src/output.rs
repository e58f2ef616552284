//! Rendering of events and results, as text for people and as JSON for scripts, and the
//! one way they reach standard output ([`outln!`]).
//!
//! Every peer in JSON is the same object, [`peer_obj`]: `{"id", "fingerprint", "name"}`
//! (`name` is `null` where the event does not carry one).

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use p2pcall_core::PeerId;

use p2pcall_core::call::{CallEvent, CallStats, describe_end};
use p2pcall_core::chat::ChatEvent;
use p2pcall_core::engine::EngineEvent;
use p2pcall_core::transfer::{Progress, Summary, TransferEvent};
use p2pcall_core::{Message, Path, PeerInfo};
use p2pcall_net::{Event, PresenceEvent, RelayTransport};
use serde_json::{Value, json};

/// Prints one line to standard output; see [`write_line`].
macro_rules! outln {
    ($($t:tt)*) => { $crate::output::write_line(&format!($($t)*)) };
}

/// Like `eprintln!`, for lines that may hold what a peer sent (a refusal's reason, a name).
macro_rules! errln {
    ($($t:tt)*) => { eprintln!("{}", p2pcall_proto::text::terminal_safe(&format!($($t)*))) };
}

/// Set once standard output turned out to be closed.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

fn closed_notify() -> &'static tokio::sync::Notify {
    static N: OnceLock<tokio::sync::Notify> = OnceLock::new();
    N.get_or_init(tokio::sync::Notify::new)
}

/// Writes one line to standard output. When the reader has gone (a pipe into `head`, a
/// wrapper that exited), nothing more is printed and [`stdout_closed`] resolves, so that the
/// command stops as it would on Ctrl-C, instead of panicking like `println!`.
pub(crate) fn write_line(line: &str) {
    if STDOUT_CLOSED.load(Ordering::Acquire) {
        return;
    }
    // Peers' names, messages and file names are in these lines: nothing in them may drive
    // the terminal.
    let line = p2pcall_proto::text::terminal_safe(line);
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        STDOUT_CLOSED.store(true, Ordering::Release);
        closed_notify().notify_waiters();
    }
}

/// Resolves once a write found standard output closed.
pub(crate) async fn stdout_closed() {
    loop {
        let notified = closed_notify().notified();
        if STDOUT_CLOSED.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }
}

/// Prints a result: `text` for people, or `json` with `--json`.
pub(crate) fn emit(json_out: bool, text: impl FnOnce() -> String, json: impl FnOnce() -> Value) {
    if json_out {
        outln!("{}", json());
    } else {
        outln!("{}", text());
    }
}

/// An error and its causes in one line, each cause once: a cause whose text the message
/// before it already holds is not repeated ("Not a directory (os error 20)" twice).
pub(crate) fn error_text(e: &anyhow::Error) -> String {
    p2pcall_core::causes(e.as_ref())
}

/// The fingerprint of a peer given by its 64-hex-digit id (the text itself if it is not one).
pub(crate) fn fingerprint_of(id: &str) -> String {
    id.parse::<PeerId>()
        .map(|p| p.fingerprint().to_string())
        .unwrap_or_else(|_| id.to_string())
}

/// A failed command in JSON.
pub(crate) fn error_json(e: &anyhow::Error, exit_code: u8) -> Value {
    json!({"event": "error", "error": error_text(e), "exit_code": exit_code})
}

/// A command line clap could not parse: help and version print as usual; errors print as
/// clap renders them, or with `--json` as an error object on standard output. Exit code 2.
pub(crate) fn argument_error(e: &clap::Error) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    let wants_json = std::env::args_os().any(|a| a == "--json");
    let informational = matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if wants_json && !informational {
        let text = e.render().to_string();
        let first = text
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ");
        outln!(
            "{}",
            json!({"event": "error", "error": first, "usage": text.trim_end(), "exit_code": 2})
        );
        return std::process::ExitCode::from(2);
    }
    let _ = e.print();
    std::process::ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
}

/// Paths as strings (JSON arrays, command lines).
pub(crate) fn path_strings(paths: &[std::path::PathBuf]) -> Vec<String> {
    paths.iter().map(|p| p.display().to_string()).collect()
}

/// Paths for people: comma-separated.
pub(crate) fn path_list(paths: &[std::path::PathBuf]) -> String {
    path_strings(paths).join(", ")
}

/// A peer, the same object in every JSON output.
pub(crate) fn peer_obj(id: &PeerId, name: Option<&str>) -> Value {
    json!({"id": id.to_hex(), "fingerprint": id.fingerprint().to_string(), "name": name})
}

/// The relay transport in JSON: `udp` or `tcp`.
pub(crate) fn transport_json(t: RelayTransport) -> &'static str {
    p2pcall_daemon::tools::transport(t)
}

/// The relay transport for people.
pub(crate) fn transport_text(t: RelayTransport) -> &'static str {
    match t {
        RelayTransport::Udp => "UDP (QUIC)",
        RelayTransport::Tcp => "TCP+TLS",
    }
}

fn signal_failure(r: p2pcall_proto::relay::SignalFailure) -> &'static str {
    use p2pcall_proto::relay::SignalFailure as F;
    match r {
        F::Offline => "offline",
        F::RateLimited => "rate_limited",
        F::QueueFull => "queue_full",
    }
}

pub(crate) fn path_str(p: &Path) -> String {
    p.to_string()
}

pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

pub(crate) fn since(ms_epoch: u64) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let s = now.saturating_sub(ms_epoch) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// An online peer: [`peer_obj`] and since when it is online.
pub(crate) fn peer_json(p: &PeerInfo) -> Value {
    let mut v = peer_obj(&p.id, Some(&p.name));
    v["online_since_ms"] = json!(p.online_since_ms);
    v
}

pub(crate) fn event_json(e: &EngineEvent) -> Value {
    let n = match e {
        EngineEvent::PeerConnected { conn, incoming } => {
            return json!({"event": "connected", "incoming": incoming, "peer": peer_obj(&conn.peer(), conn.remote_name().as_deref()), "path": path_str(&conn.path()), "safety_number": conn.safety_number().to_string()});
        }
        EngineEvent::Chat(ChatEvent::Received(m)) => {
            let mut v = message_json(m);
            v["event"] = json!(if m.request {
                "message_request"
            } else {
                "message"
            });
            return v;
        }
        EngineEvent::Chat(ChatEvent::Queued(m)) => {
            let mut v = message_json(m);
            v["event"] = json!("message_queued");
            return v;
        }
        EngineEvent::Chat(ChatEvent::State { peer, id, state }) => {
            return json!({"event": "message_state", "peer": peer_obj(peer, None), "id": id.to_string(), "state": state.as_str()});
        }
        EngineEvent::Transfer(t) => return transfer_json(t),
        EngineEvent::Call(c) => return call_json(c),
        EngineEvent::Net(n) => n,
    };
    match n {
        Event::RelayConnected {
            observed,
            transport,
            relay,
            addr,
            primary,
        } => {
            json!({"event": "relay_connected", "observed": observed.to_string(), "transport": transport_json(*transport), "relay": relay.fingerprint().to_string(), "relay_addr": addr.to_string(), "configured": primary})
        }
        Event::RelaysListed(list) => {
            json!({"event": "relays_listed", "relays": list.iter().map(|r| json!({"key": r.key.to_hex(), "fingerprint": r.key.fingerprint().to_string(), "addr": r.addr, "region": r.region, "peers": r.peers})).collect::<Vec<_>>()})
        }
        Event::RelayDisconnected { reason, retry_in } => {
            json!({"event": "relay_disconnected", "reason": reason, "retry_in_ms": retry_in.as_millis() as u64})
        }
        Event::RelayRefused { reason, detail } => {
            json!({"event": "relay_refused", "reason": reason.to_string(), "detail": detail})
        }
        Event::RelayUnreachable { addr, detail } => {
            json!({"event": "relay_unreachable", "addr": addr.to_string(), "detail": detail})
        }
        Event::RelayKeyMismatch {
            addr,
            pinned,
            presented,
        } => {
            json!({"event": "relay_key_mismatch", "addr": addr.to_string(), "pinned": pinned.to_hex(), "presented": presented.to_hex()})
        }
        Event::Presence(PresenceEvent::Snapshot(list)) => {
            json!({"event": "peers", "peers": list.iter().map(peer_json).collect::<Vec<_>>()})
        }
        Event::Presence(PresenceEvent::Joined(p)) => {
            json!({"event": "peer_joined", "peer": peer_json(p)})
        }
        Event::Presence(PresenceEvent::Updated(p)) => {
            json!({"event": "peer_updated", "peer": peer_json(p)})
        }
        Event::Presence(PresenceEvent::Left(id)) => {
            json!({"event": "peer_left", "peer": peer_obj(id, None)})
        }
        Event::PathChanged {
            peer, path, rtt, ..
        } => {
            json!({"event": "path_changed", "peer": peer_obj(peer, None), "path": path_str(path), "rtt_ms": rtt.map(ms)})
        }
        Event::ConnectionClosed { peer, reason } => {
            json!({"event": "disconnected", "peer": peer_obj(peer, None), "reason": reason})
        }
        Event::Signal { from, payload } => {
            json!({"event": "signal", "from": peer_obj(from, None), "bytes": payload.len()})
        }
        Event::SignalFailed { to, reason } => {
            json!({"event": "signal_failed", "to": peer_obj(to, None), "reason": signal_failure(*reason)})
        }
        Event::Incoming(c) => {
            json!({"event": "incoming", "peer": peer_obj(&c.peer(), None)})
        }
    }
}

pub(crate) fn event_text(e: &EngineEvent) -> String {
    let n = match e {
        EngineEvent::PeerConnected { conn, incoming } => {
            return format!(
                "{} {} ({}) via {}; safety number: {}",
                if *incoming {
                    "connection from"
                } else {
                    "connected to"
                },
                conn.remote_name().unwrap_or_default(),
                conn.peer().fingerprint(),
                path_str(&conn.path()),
                conn.safety_number()
            );
        }
        EngineEvent::Chat(ChatEvent::Received(m)) if m.request => {
            return format!(
                "message request from {} (not a contact; `p2pcall requests accept {}` or `delete`): {}",
                m.peer.fingerprint(),
                &m.peer.fingerprint().to_string()[..9],
                m.text
            );
        }
        EngineEvent::Chat(ChatEvent::Received(m)) => {
            return format!("message from {}: {}", m.peer.fingerprint(), m.text);
        }
        EngineEvent::Chat(ChatEvent::Queued(m)) => {
            return format!("message to {}: {}", m.peer.fingerprint(), m.text);
        }
        EngineEvent::Chat(ChatEvent::State { peer, state, .. }) => {
            return format!("message to {} is {}", peer.fingerprint(), state.as_str());
        }
        EngineEvent::Transfer(t) => return transfer_text(t),
        EngineEvent::Call(c) => return call_text(c),
        EngineEvent::Net(n) => n,
    };
    match n {
        Event::RelayConnected {
            observed,
            transport,
            relay,
            addr,
            primary,
        } => format!(
            "online via {}relay {} ({addr}) over {}; the relay sees us as {observed}",
            if *primary { "" } else { "another cluster " },
            relay.fingerprint(),
            transport_text(*transport)
        ),
        Event::RelaysListed(list) => format!(
            "the relay is one of a cluster of {}: {}",
            list.len(),
            list.iter()
                .map(|r| format!("{} ({})", r.addr, r.key.fingerprint()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Event::RelayDisconnected { reason, retry_in } => format!(
            "relay connection lost ({reason}); retrying in {:.1}s",
            retry_in.as_secs_f64()
        ),
        Event::RelayKeyMismatch {
            addr,
            pinned,
            presented,
        } => crate::exit::Fail::RelayKeyMismatch {
            addr: *addr,
            pinned: *pinned,
            presented: *presented,
        }
        .to_string(),
        Event::RelayUnreachable { addr, detail } => {
            format!("the relay at {addr} is unreachable: {detail}")
        }
        Event::RelayRefused { reason, detail } => {
            format!("the relay refused us: {reason} ({detail})")
        }
        Event::Presence(PresenceEvent::Snapshot(list)) => {
            format!("{} other peer(s) online", list.len())
        }
        Event::Presence(PresenceEvent::Joined(p)) => {
            format!("{} ({}) came online", p.name, p.id.fingerprint())
        }
        Event::Presence(PresenceEvent::Updated(p)) => {
            format!("{} is now called {}", p.id.fingerprint(), p.name)
        }
        Event::Presence(PresenceEvent::Left(id)) => {
            format!("{} went offline", id.fingerprint())
        }
        Event::PathChanged {
            peer, path, rtt, ..
        } => format!(
            "path to {} is now {}{}",
            peer.fingerprint(),
            path_str(path),
            rtt.map(|r| format!(" (rtt {:.2} ms)", ms(r)))
                .unwrap_or_default()
        ),
        Event::ConnectionClosed { peer, reason } => {
            format!("connection with {} closed: {reason}", peer.fingerprint())
        }
        Event::Signal { from, payload } => format!(
            "signal from {} ({} bytes)",
            from.fingerprint(),
            payload.len()
        ),
        Event::SignalFailed { to, reason } => {
            format!(
                "signal to {} failed: {}",
                to.fingerprint(),
                signal_failure(*reason).replace('_', " ")
            )
        }
        Event::Incoming(c) => format!("incoming connection from {}", c.peer().fingerprint()),
    }
}

pub(crate) fn print_event(json: bool, e: &EngineEvent) {
    emit(json, || event_text(e), || event_json(e));
}

/// Prints a path change; in JSON with its time since the connection came up.
pub(crate) fn print_path_change(json: bool, e: &EngineEvent, connected: Instant) {
    let EngineEvent::Net(Event::PathChanged { at, .. }) = e else {
        return;
    };
    if json {
        let mut v = event_json(e);
        v["since_connect_ms"] = json!(ms(at.saturating_duration_since(connected)));
        outln!("{v}");
    } else {
        print_event(false, e);
    }
}

pub(crate) use p2pcall_proto::id::hex;

pub(crate) fn message_json(m: &Message) -> Value {
    json!({
        "n": m.rowid, "peer": peer_obj(&m.peer, None), "outgoing": m.outgoing,
        "id": m.id.to_string(), "seq": m.seq, "sent_ms": m.sent_ms, "received_ms": m.received_ms,
        "state": m.state.as_str(), "text": m.text, "request": m.request,
    })
}

pub(crate) fn progress_json(p: &Progress) -> Value {
    json!({
        "event": "transfer_progress", "id": p.id.to_string(), "peer": peer_obj(&p.peer, None),
        "outgoing": p.outgoing, "done_bytes": p.done_bytes, "total_bytes": p.total_bytes,
        "files_done": p.files_done, "files": p.files,
        "rate_bytes_per_s": p.rate.map(|r| r.round()), "eta_s": p.eta.map(|e| e.as_secs_f64().round()),
    })
}

pub(crate) fn summary_json(s: &Summary) -> Value {
    json!({
        "event": "transfer_done", "id": s.id.to_string(), "peer": peer_obj(&s.peer, None),
        "outgoing": s.outgoing, "files": s.files, "folders": s.dirs, "total_bytes": s.total_bytes,
        "resumed_bytes": s.resumed_bytes, "elapsed_ms": ms(s.elapsed),
        "mb_per_s": s.bytes_per_s() / 1e6,
        "placed": path_strings(&s.placed),
        "skipped": path_strings(&s.skipped),
        "blake3": s.hashes.iter().map(|(p, h)| json!({"path": p, "blake3": hex(h)})).collect::<Vec<_>>(),
    })
}

pub(crate) fn transfer_json(t: &TransferEvent) -> Value {
    match t {
        TransferEvent::Offered(o) | TransferEvent::Resumed(o) => json!({
            "event": if matches!(t, TransferEvent::Offered(_)) { "transfer_offer" } else { "transfer_resumed" },
            "id": o.id.to_string(), "peer": peer_obj(&o.peer, None), "files": o.files,
            "folders": o.dirs, "total_bytes": o.total_bytes, "names": o.tops,
        }),
        TransferEvent::Progress(p) => progress_json(p),
        TransferEvent::Finished(s) => summary_json(s),
        TransferEvent::Failed {
            peer,
            id,
            outgoing,
            reason,
            resumable,
        } => json!({
            "event": "transfer_failed", "id": id.to_string(), "peer": peer_obj(peer, None),
            "outgoing": outgoing, "reason": reason, "resumable": resumable,
        }),
    }
}

/// Bytes for people: 1.5 GB, 320 kB.
pub(crate) fn human(b: f64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", units[u])
    } else {
        format!("{v:.1} {}", units[u])
    }
}

pub(crate) fn transfer_text(t: &TransferEvent) -> String {
    match t {
        TransferEvent::Offered(o) | TransferEvent::Resumed(o) => format!(
            "{} {} offers {} file(s), {} folder(s), {}: {} [transfer {}]",
            if matches!(t, TransferEvent::Offered(_)) {
                "offer:"
            } else {
                "resuming:"
            },
            o.peer.fingerprint(),
            o.files,
            o.dirs,
            human(o.total_bytes as f64),
            o.tops.join(", "),
            o.id
        ),
        TransferEvent::Progress(p) => format!(
            "transfer {}: {} of {} ({}/{} files){}",
            &p.id.to_string()[..8],
            human(p.done_bytes as f64),
            human(p.total_bytes as f64),
            p.files_done,
            p.files,
            p.rate
                .map(|r| format!(", {}/s", human(r)))
                .unwrap_or_default()
        ),
        TransferEvent::Finished(s) => format!(
            "transfer {} done: {} file(s), {} in {:.1} s ({}/s){}{}",
            &s.id.to_string()[..8],
            s.files,
            human(s.total_bytes as f64),
            s.elapsed.as_secs_f64(),
            human(s.bytes_per_s()),
            if s.resumed_bytes > 0 {
                format!(", {} resumed", human(s.resumed_bytes as f64))
            } else {
                String::new()
            },
            if s.placed.is_empty() {
                String::new()
            } else {
                format!("; saved as {}", path_list(&s.placed))
            }
        ),
        TransferEvent::Failed {
            id,
            reason,
            resumable,
            ..
        } => format!(
            "transfer {} stopped: {reason}{}",
            &id.to_string()[..8],
            if *resumable {
                " (send it again to resume)"
            } else {
                ""
            }
        ),
    }
}

// Calls.

fn fmt_stats(s: &CallStats) -> String {
    let mut out = format!("{:>5.1} s  rtt {:.1} ms  {}", s.elapsed_s, s.rtt_ms, s.path);
    for t in &s.send {
        out += &format!("  ↑{} {:.0} kbit/s", t.kind, t.kbps);
        if t.kind != "audio" {
            out += &format!(" {:.0} fps", t.fps);
        }
    }
    for r in &s.recv {
        out += &format!("  ↓{} {:.0} kbit/s loss {:.1}%", r.kind, r.kbps, r.loss_pct);
        if r.kind == "audio" {
            out += &format!(
                " jb {:.0}/{:.0} ms concealed {:.1}%",
                r.buffer_ms, r.target_ms, r.concealed_pct
            );
        } else {
            out += &format!(" {:.0} fps freezes {}", r.fps, r.freezes);
            if let Some(k) = r.skew_ms {
                out += &format!(" skew {k:+.0} ms");
            }
        }
    }
    if let Some((w, h)) = s.resolution {
        out += &format!("  {w}x{h}");
    }
    if s.rate.target_kbps > 0.0 {
        out += &format!(
            "  bwe {:.0} kbit/s (video {:.0}) queue {:.0} ms",
            s.rate.target_kbps, s.rate.video_target_kbps, s.rate.queue_ms
        );
    }
    out
}

/// A call event as one JSON object.
pub fn call_json(e: &CallEvent) -> serde_json::Value {
    match e {
        CallEvent::Incoming {
            call,
            peer,
            name,
            audio,
            video,
            members,
        } => {
            json!({"event": "call_incoming", "call": call.to_string(), "peer": peer_obj(peer, name.as_deref()), "audio": audio, "video": video,
            "members": members.iter().map(|m| peer_obj(m, None)).collect::<Vec<_>>()})
        }
        CallEvent::Ringing { call } => {
            json!({"event": "call_ringing", "call": call.to_string()})
        }
        CallEvent::Started {
            call,
            peer,
            streams,
        } => {
            json!({"event": "call_started", "call": call.to_string(), "peer": peer_obj(peer, None),
            "send": streams.send.iter().map(|s| s.kind.name()).collect::<Vec<_>>(),
            "receive": streams.receive.iter().map(|s| s.kind.name()).collect::<Vec<_>>()})
        }
        CallEvent::Joined {
            call,
            peer,
            name,
            streams,
        } => {
            json!({"event": "call_joined", "call": call.to_string(), "peer": peer_obj(peer, name.as_deref()),
            "receive": streams.receive.iter().map(|s| s.kind.name()).collect::<Vec<_>>()})
        }
        CallEvent::Speaker { call, peer } => {
            json!({"event": "call_speaker", "call": call.to_string(), "peer": peer_obj(peer, None)})
        }
        CallEvent::Left { call, peer, reason } => {
            let (code, message) = describe_end(reason);
            json!({"event": "call_left", "call": call.to_string(), "peer": peer_obj(peer, None), "reason": code, "message": message})
        }
        CallEvent::Updated {
            call,
            peer,
            streams,
        } => {
            json!({"event": "call_updated", "call": call.to_string(), "peer": peer_obj(peer, None),
            "receive": streams.receive.iter().map(|s| json!({"kind": s.kind.name(), "active": s.active})).collect::<Vec<_>>()})
        }
        CallEvent::Stats(s) => {
            let mut v = serde_json::to_value(s).unwrap_or_default();
            v["event"] = json!("call_stats");
            v
        }
        CallEvent::Sending { call, audio, video } => {
            json!({"event": "call_sending", "call": call.to_string(), "audio": audio, "video": video})
        }
        CallEvent::Warning { call, message } => {
            json!({"event": "call_warning", "call": call.to_string(), "message": message})
        }
        CallEvent::Ended {
            call,
            peer,
            reason,
            stats,
        } => {
            let (code, message) = describe_end(reason);
            json!({"event": "call_ended", "call": call.to_string(), "peer": peer_obj(peer, None), "reason": code, "message": message, "stats": stats})
        }
    }
}

/// A call event as one line of text.
pub fn call_text(e: &CallEvent) -> String {
    match e {
        CallEvent::Incoming {
            peer,
            name,
            audio,
            video,
            members,
            ..
        } => format!(
            "incoming call from {} ({}){}{}{}",
            name.clone().unwrap_or_default(),
            peer.fingerprint(),
            if *audio { " audio" } else { "" },
            if *video { " video" } else { "" },
            if members.is_empty() {
                String::new()
            } else {
                let m: Vec<String> = members
                    .iter()
                    .map(|m| m.fingerprint().to_string())
                    .collect();
                format!(", a group call with {}", m.join(", "))
            }
        ),
        CallEvent::Joined { peer, name, .. } => format!(
            "{} ({}) joined the call",
            name.clone().unwrap_or_default(),
            peer.fingerprint()
        ),
        CallEvent::Speaker { peer, .. } => format!("{} is speaking", peer.fingerprint()),
        CallEvent::Left { peer, reason, .. } => {
            format!(
                "{} left the call: {}",
                peer.fingerprint(),
                describe_end(reason).1
            )
        }
        CallEvent::Ringing { .. } => "ringing…".into(),
        CallEvent::Started { peer, streams, .. } => format!(
            "call with {} started: sending {}, receiving {} (type mute, unmute, camera off, camera on, source SRC, add PEER or hangup)",
            peer.fingerprint(),
            kinds(&streams.send),
            kinds(&streams.receive)
        ),
        CallEvent::Updated { peer, streams, .. } => format!(
            "{} now sends {}",
            peer.fingerprint(),
            streams
                .receive
                .iter()
                .map(|s| format!("{}{}", s.kind.name(), if s.active { "" } else { " (off)" }))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        CallEvent::Stats(s) => fmt_stats(s),
        CallEvent::Sending { audio, video, .. } => format!(
            "you are {}, your video is {}",
            if *audio { "heard" } else { "muted" },
            if *video { "on" } else { "off" }
        ),
        CallEvent::Warning { message, .. } => format!("warning: {message}"),
        CallEvent::Ended { reason, stats, .. } => {
            let (_, message) = describe_end(reason);
            match stats {
                Some(s) => format!(
                    "call ended: {message}; {:.1} s, {} video frames decoded{}",
                    s.elapsed_s,
                    s.video_decoded,
                    if s.recordings.is_empty() {
                        String::new()
                    } else {
                        format!("; recorded to {}", s.recordings.join(", "))
                    }
                ),
                None => format!("call ended: {message}"),
            }
        }
    }
}

fn kinds(s: &[p2pcall_proto::call::StreamDesc]) -> String {
    if s.is_empty() {
        return "nothing".into();
    }
    s.iter()
        .map(|s| s.kind.name())
        .collect::<Vec<_>>()
        .join(" + ")
}

/// Says that the peer a command works with is not one of the user's contacts (reached by
/// its key alone; writing to it or calling it makes it one).
pub(crate) fn stranger_note(peer: &PeerId, announced: &str) {
    errln!(
        "note: {} ({announced:?} by its own account) is not a contact; writing to it, sending it files or calling it adds it (`p2pcall add {} --name NAME` names it yourself)",
        peer.fingerprint(),
        &peer.to_hex()[..8]
    );
}

/// The contact whose name `name` looks like, when `peer` is not that contact (nor any
/// contact): what someone posing as a known peer, or a known peer's new key, looks like.
pub(crate) fn lookalike_of(
    contacts: &[p2pcall_core::Contact],
    peer: &PeerId,
    name: &str,
) -> Option<String> {
    let chosen = |c: &&p2pcall_core::Contact| c.chosen_ms.is_some() || c.verified_ms.is_some();
    if contacts.iter().filter(chosen).any(|c| c.peer == *peer) {
        return None;
    }
    contacts
        .iter()
        .filter(chosen)
        .find(|c| {
            p2pcall_proto::text::looks_alike(c.shown_name(), name)
                || p2pcall_proto::text::looks_alike(&c.name, name)
        })
        .map(|c| format!("{} ({})", c.shown_name(), c.peer.fingerprint()))
}

/// Warns loudly about peers in a presence event that pose as a contact.
pub(crate) fn warn_lookalikes(contacts: &[p2pcall_core::Contact], e: &EngineEvent) {
    let EngineEvent::Net(Event::Presence(p)) = e else {
        return;
    };
    let peers: Vec<&PeerInfo> = match p {
        PresenceEvent::Snapshot(list) => list.iter().collect(),
        PresenceEvent::Joined(p) | PresenceEvent::Updated(p) => vec![p],
        PresenceEvent::Left(_) => return,
    };
    for p in peers {
        if let Some(contact) = lookalike_of(contacts, &p.id, &p.name) {
            errln!(
                "WARNING: a key that is not your contact ({}) calls itself {:?}, which looks like your contact {contact}. It may be someone posing as them, or their new key: compare safety numbers before you trust it",
                p.id.fingerprint(),
                p.name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pcall_core::MessageState;
    use p2pcall_core::transfer::OfferInfo;
    use p2pcall_proto::chat::MessageId;
    use p2pcall_proto::relay::{RefuseReason, SignalFailure};
    use p2pcall_proto::transfer::TransferId;

    fn peer(b: u8) -> PeerId {
        PeerId::from_bytes([b; 32])
    }

    /// Every JSON peer is the one object: id, fingerprint, name.
    fn assert_peer(v: &Value, p: &PeerId, name: Option<&str>) {
        assert_eq!(v["id"], p.to_hex(), "{v}");
        assert_eq!(v["fingerprint"], p.fingerprint().to_string(), "{v}");
        assert_eq!(v["name"], json!(name), "{v}");
    }

    fn both(e: EngineEvent) -> (String, Value) {
        (event_text(&e), event_json(&e))
    }

    #[test]
    fn relay_events_name_transports_and_reasons_for_people() {
        let (text, json) = both(EngineEvent::Net(Event::RelayConnected {
            observed: "192.0.2.7:4000".parse().expect("addr"),
            transport: RelayTransport::Tcp,
            relay: peer(9),
            addr: "198.51.100.1:7700".parse().expect("addr"),
            primary: true,
        }));
        assert_eq!(
            text,
            format!(
                "online via relay {} (198.51.100.1:7700) over TCP+TLS; the relay sees us as 192.0.2.7:4000",
                peer(9).fingerprint()
            )
        );
        assert_eq!(json["event"], "relay_connected");
        assert_eq!(json["transport"], "tcp");
        assert_eq!(json["relay_addr"], "198.51.100.1:7700");
        assert_eq!(json["configured"], true);

        let (text, json) = both(EngineEvent::Net(Event::RelayDisconnected {
            reason: "idle".into(),
            retry_in: Duration::from_millis(1500),
        }));
        assert_eq!(text, "relay connection lost (idle); retrying in 1.5s");
        assert_eq!(json["retry_in_ms"], 1500);

        let (text, json) = both(EngineEvent::Net(Event::RelayRefused {
            reason: RefuseReason::BadToken,
            detail: "access token missing or wrong".into(),
        }));
        assert!(text.starts_with("the relay refused us: "), "{text}");
        assert!(!text.contains("BadToken"), "{text}");
        assert_eq!(json["event"], "relay_refused");

        let (text, json) = both(EngineEvent::Net(Event::RelayUnreachable {
            addr: "127.0.0.1:9".parse().expect("addr"),
            detail: "refused".into(),
        }));
        assert_eq!(text, "the relay at 127.0.0.1:9 is unreachable: refused");
        assert_eq!(json["addr"], "127.0.0.1:9");
    }

    #[test]
    fn presence_events_carry_the_peer_object() {
        let info = PeerInfo {
            id: peer(1),
            name: "alice".into(),
            online_since_ms: 42,
        };
        let (text, json) = both(EngineEvent::Net(Event::Presence(PresenceEvent::Joined(
            info.clone(),
        ))));
        assert_eq!(
            text,
            format!("alice ({}) came online", peer(1).fingerprint())
        );
        assert_eq!(json["event"], "peer_joined");
        assert_peer(&json["peer"], &peer(1), Some("alice"));
        assert_eq!(json["peer"]["online_since_ms"], 42);

        let (_, json) = both(EngineEvent::Net(Event::Presence(PresenceEvent::Updated(
            info.clone(),
        ))));
        assert_eq!(json["event"], "peer_updated");
        assert_peer(&json["peer"], &peer(1), Some("alice"));

        let (text, json) = both(EngineEvent::Net(Event::Presence(PresenceEvent::Left(
            peer(1),
        ))));
        assert_eq!(text, format!("{} went offline", peer(1).fingerprint()));
        assert_peer(&json["peer"], &peer(1), None);

        let (text, json) = both(EngineEvent::Net(Event::Presence(PresenceEvent::Snapshot(
            vec![info],
        ))));
        assert_eq!(text, "1 other peer(s) online");
        assert_peer(&json["peers"][0], &peer(1), Some("alice"));
    }

    #[test]
    fn path_signal_and_close_events_carry_the_peer_object() {
        let (text, json) = both(EngineEvent::Net(Event::PathChanged {
            peer: peer(2),
            path: Path::Direct("192.0.2.1:5000".parse().expect("addr")),
            rtt: Some(Duration::from_micros(1500)),
            at: Instant::now(),
        }));
        assert_eq!(
            text,
            format!(
                "path to {} is now direct 192.0.2.1:5000 (rtt 1.50 ms)",
                peer(2).fingerprint()
            )
        );
        assert_eq!(json["path"], "direct 192.0.2.1:5000");
        assert_eq!(json["rtt_ms"], 1.5);
        assert_peer(&json["peer"], &peer(2), None);

        let (text, json) = both(EngineEvent::Net(Event::SignalFailed {
            to: peer(3),
            reason: SignalFailure::RateLimited,
        }));
        assert_eq!(
            text,
            format!("signal to {} failed: rate limited", peer(3).fingerprint())
        );
        assert_eq!(json["reason"], "rate_limited");
        assert_peer(&json["to"], &peer(3), None);

        let (_, json) = both(EngineEvent::Net(Event::Signal {
            from: peer(3),
            payload: bytes::Bytes::from_static(b"abc"),
        }));
        assert_eq!(json["bytes"], 3);
        assert_peer(&json["from"], &peer(3), None);

        let (text, json) = both(EngineEvent::Net(Event::ConnectionClosed {
            peer: peer(4),
            reason: "idle".into(),
        }));
        assert_eq!(
            text,
            format!("connection with {} closed: idle", peer(4).fingerprint())
        );
        assert_eq!(json["event"], "disconnected");
        assert_peer(&json["peer"], &peer(4), None);
    }

    #[test]
    fn chat_events_carry_the_peer_object() {
        let m = Message {
            rowid: 7,
            peer: peer(5),
            outgoing: false,
            id: MessageId::from_bytes([0xab; 16]),
            seq: 3,
            sent_ms: 1000,
            received_ms: Some(1001),
            text: "hi there".into(),
            state: MessageState::Delivered,
            request: false,
        };
        let (text, json) = both(EngineEvent::Chat(ChatEvent::Received(m)));
        assert_eq!(
            text,
            format!("message from {}: hi there", peer(5).fingerprint())
        );
        assert_eq!(json["event"], "message");
        assert_eq!(json["n"], 7);
        assert_eq!(json["id"], "ab".repeat(16));
        assert_peer(&json["peer"], &peer(5), None);

        let (text, json) = both(EngineEvent::Chat(ChatEvent::State {
            peer: peer(5),
            id: MessageId::from_bytes([1; 16]),
            state: MessageState::Read,
        }));
        assert_eq!(
            text,
            format!("message to {} is read", peer(5).fingerprint())
        );
        assert_eq!(json["state"], "read");
        assert_peer(&json["peer"], &peer(5), None);
    }

    #[test]
    fn transfer_events_in_text_and_json() {
        let offer = OfferInfo {
            peer: peer(6),
            id: TransferId::from_bytes([2; 16]),
            files: 2,
            dirs: 1,
            total_bytes: 1_500_000,
            tops: vec!["photos".into()],
            sample: Vec::new(),
        };
        let (text, json) = both(EngineEvent::Transfer(TransferEvent::Offered(offer.clone())));
        assert_eq!(
            text,
            format!(
                "offer: {} offers 2 file(s), 1 folder(s), 1.5 MB: photos [transfer {}]",
                peer(6).fingerprint(),
                "02".repeat(16)
            )
        );
        assert_eq!(json["event"], "transfer_offer");
        assert_peer(&json["peer"], &peer(6), None);
        let (_, json) = both(EngineEvent::Transfer(TransferEvent::Resumed(offer)));
        assert_eq!(json["event"], "transfer_resumed");

        let (text, json) = both(EngineEvent::Transfer(TransferEvent::Progress(Progress {
            peer: peer(6),
            id: TransferId::from_bytes([2; 16]),
            outgoing: true,
            done_bytes: 500_000,
            total_bytes: 1_500_000,
            files_done: 1,
            files: 2,
            rate: Some(250_000.0),
            eta: Some(Duration::from_secs(4)),
        })));
        assert_eq!(
            text,
            "transfer 02020202: 500.0 kB of 1.5 MB (1/2 files), 250.0 kB/s"
        );
        assert_eq!(json["event"], "transfer_progress");
        assert_eq!(json["eta_s"], 4.0);
        assert_peer(&json["peer"], &peer(6), None);

        let (text, json) = both(EngineEvent::Transfer(TransferEvent::Failed {
            peer: peer(6),
            id: TransferId::from_bytes([2; 16]),
            outgoing: false,
            reason: "the sender stopped".into(),
            resumable: true,
        }));
        assert_eq!(
            text,
            "transfer 02020202 stopped: the sender stopped (send it again to resume)"
        );
        assert_eq!(json["resumable"], true);
        assert_peer(&json["peer"], &peer(6), None);

        let (text, json) = both(EngineEvent::Transfer(TransferEvent::Finished(Summary {
            peer: peer(6),
            id: TransferId::from_bytes([2; 16]),
            outgoing: false,
            files: 2,
            dirs: 1,
            total_bytes: 2_000_000,
            resumed_bytes: 0,
            elapsed: Duration::from_secs(2),
            placed: vec!["/tmp/in/photos".into()],
            skipped: Vec::new(),
            hashes: vec![("photos/a.jpg".into(), [0; 32])],
        })));
        assert_eq!(
            text,
            "transfer 02020202 done: 2 file(s), 2.0 MB in 2.0 s (1.0 MB/s); saved as /tmp/in/photos"
        );
        assert_eq!(json["event"], "transfer_done");
        assert_eq!(json["blake3"][0]["path"], "photos/a.jpg");
        assert_peer(&json["peer"], &peer(6), None);
    }

    #[test]
    fn call_events_in_text_and_json() {
        use p2pcall_core::call::{CallStats, EndReason, Negotiated};
        use p2pcall_proto::call::{
            CallId, Codec, HangupReason, RejectReason, StreamDesc, StreamKind,
        };
        let (p, call) = (peer(4), CallId::from_bytes([0xab; 16]));
        let id = "ab".repeat(16);
        let desc = |id, kind, codec, active| StreamDesc {
            id,
            kind,
            codec,
            active,
        };
        let audio = desc(0, StreamKind::Audio, Codec::Opus, true);
        let camera_off = desc(1, StreamKind::Camera, Codec::H264, false);
        let streams = Negotiated {
            send: vec![audio],
            receive: vec![audio, camera_off],
        };
        let call_ev = |e: CallEvent| (call_text(&e), call_json(&e));

        let (t, j) = call_ev(CallEvent::Incoming {
            call,
            peer: p,
            name: Some("bob".into()),
            audio: true,
            video: false,
            members: Vec::new(),
        });
        assert_eq!(j["event"], "call_incoming");
        assert_eq!(j["call"], id);
        assert_peer(&j["peer"], &p, Some("bob"));
        assert_eq!(
            (j["audio"].clone(), j["video"].clone()),
            (json!(true), json!(false))
        );
        assert!(
            t.starts_with("incoming call from bob (") && t.ends_with(" audio"),
            "{t}"
        );

        let (t, j) = call_ev(CallEvent::Ringing { call });
        assert_eq!(
            (t.as_str(), &j["event"], &j["call"]),
            ("ringing…", &json!("call_ringing"), &json!(id))
        );

        let (t, j) = call_ev(CallEvent::Started {
            call,
            peer: p,
            streams: streams.clone(),
        });
        assert_eq!(j["event"], "call_started");
        assert_peer(&j["peer"], &p, None);
        assert_eq!(j["send"], json!(["audio"]));
        assert_eq!(j["receive"], json!(["audio", "camera"]));
        assert!(t.contains("sending audio, receiving audio + camera"), "{t}");

        let (t, j) = call_ev(CallEvent::Updated {
            call,
            peer: p,
            streams: streams.clone(),
        });
        assert_eq!(j["event"], "call_updated");
        assert_eq!(j["receive"][1], json!({"kind": "camera", "active": false}));
        assert_eq!(
            t,
            format!("{} now sends audio, camera (off)", p.fingerprint())
        );

        // A group call: who else is in, who joins and who leaves.
        let carol = PeerId::from_bytes([9; 32]);
        let (t, j) = call_ev(CallEvent::Incoming {
            call,
            peer: p,
            name: Some("bob".into()),
            audio: true,
            video: true,
            members: vec![carol],
        });
        assert_peer(&j["members"][0], &carol, None);
        assert!(
            t.ends_with(&format!("a group call with {}", carol.fingerprint())),
            "{t}"
        );
        let (t, j) = call_ev(CallEvent::Joined {
            call,
            peer: carol,
            name: Some("carol".into()),
            streams,
        });
        assert_eq!(j["event"], "call_joined");
        assert_peer(&j["peer"], &carol, Some("carol"));
        assert_eq!(
            t,
            format!("carol ({}) joined the call", carol.fingerprint())
        );
        let (t, j) = call_ev(CallEvent::Left {
            call,
            peer: carol,
            reason: p2pcall_core::call::EndReason::PeerVanished,
        });
        assert_eq!(
            (&j["event"], &j["reason"]),
            (&json!("call_left"), &json!("peer_vanished"))
        );
        assert!(
            t.starts_with(&format!("{} left the call: ", carol.fingerprint())),
            "{t}"
        );

        let (t, j) = call_ev(CallEvent::Sending {
            call,
            audio: false,
            video: true,
        });
        assert_eq!(t, "you are muted, your video is on");
        assert_eq!(
            (&j["event"], &j["audio"], &j["video"]),
            (&json!("call_sending"), &json!(false), &json!(true))
        );

        let (t, j) = call_ev(CallEvent::Warning {
            call,
            message: "the camera stopped".into(),
        });
        assert_eq!(
            (t.as_str(), &j["message"]),
            ("warning: the camera stopped", &json!("the camera stopped"))
        );

        let stats = CallStats {
            elapsed_s: 12.5,
            video_decoded: 300,
            ..Default::default()
        };
        let (t, j) = call_ev(CallEvent::Stats(Box::new(stats.clone())));
        assert_eq!(j["event"], "call_stats");
        assert_eq!(j["elapsed_s"], 12.5);
        assert!(!t.is_empty());

        // Every end: a stable code for scripts, a sentence for people (no internal names).
        let ends = [
            (
                EndReason::HungUp {
                    remote: true,
                    reason: HangupReason::Normal,
                    detail: String::new(),
                },
                Some(stats),
            ),
            (
                EndReason::Rejected {
                    remote: true,
                    reason: RejectReason::Busy,
                },
                None,
            ),
            (EndReason::Unreachable, None),
            (EndReason::PeerVanished, None),
            (EndReason::Protocol("bad frame".into()), None),
        ];
        let mut codes = Vec::new();
        for (reason, stats) in ends {
            let had_stats = stats.is_some();
            let (t, j) = call_ev(CallEvent::Ended {
                call,
                peer: p,
                reason: reason.clone(),
                stats: stats.map(Box::new),
            });
            assert_eq!(j["event"], "call_ended");
            assert_peer(&j["peer"], &p, None);
            let (code, message) = describe_end(&reason);
            assert_eq!(
                (&j["reason"], &j["message"]),
                (&json!(code), &json!(message))
            );
            assert_eq!(j["stats"].is_null(), !had_stats);
            assert!(t.starts_with(&format!("call ended: {message}")), "{t}");
            assert!(
                !t.contains("HungUp") && !t.contains("Busy)") && !t.contains("Normal"),
                "{t}"
            );
            if had_stats {
                assert!(t.contains("12.5 s, 300 video frames decoded"), "{t}");
            }
            codes.push(code);
        }
        codes.dedup();
        assert_eq!(codes.len(), 5, "each end has its own code: {codes:?}");
    }

    #[test]
    fn an_error_chain_names_each_cause_once() {
        let io = std::io::Error::from_raw_os_error(20);
        let e = anyhow::Error::new(io).context("cannot send /tmp/x/y");
        assert_eq!(
            error_text(&e),
            "cannot send /tmp/x/y: Not a directory (os error 20)"
        );
        // A message that already quotes its cause does not repeat it.
        let inner = std::io::Error::from_raw_os_error(20);
        let outer = anyhow::anyhow!("placing the file: {inner}");
        let e = anyhow::Error::from(inner).context(outer.to_string());
        assert_eq!(
            error_text(&e),
            "placing the file: Not a directory (os error 20)"
        );
        let json = error_json(&e, 1);
        assert_eq!(json["event"], "error");
        assert_eq!(json["exit_code"], 1);
    }

    #[test]
    fn sizes_and_ages_for_people() {
        assert_eq!(human(999.0), "999 B");
        assert_eq!(human(1_000.0), "1.0 kB");
        assert_eq!(human(268_435_456.0), "268.4 MB");
        assert_eq!(ms(Duration::from_micros(1234)), 1.234);
        assert_eq!(transport_json(RelayTransport::Tcp), "tcp");
    }
}

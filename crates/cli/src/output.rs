//! Rendering of events and results, as text for people and as JSON for scripts.

use std::time::{Duration, Instant, SystemTime};

use p2pcall_core::chat::ChatEvent;
use p2pcall_core::engine::EngineEvent;
use p2pcall_core::transfer::{Progress, Summary, TransferEvent, id_hex};
use p2pcall_core::{Message, Path, PeerInfo};
use p2pcall_net::{Event, PresenceEvent, RelayTransport};
use serde_json::json;

use crate::calls;

/// The relay transport for `--json` (`null` in LAN-only mode).
pub(crate) fn transport_name(t: Option<RelayTransport>) -> Option<String> {
    t.map(|t| format!("{t:?}").to_lowercase())
}

pub(crate) fn path_str(p: &Path) -> String {
    match p {
        Path::Relay => "relay".into(),
        Path::Direct(a) => format!("direct {a}"),
    }
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

pub(crate) fn peer_json(p: &PeerInfo) -> serde_json::Value {
    json!({"name": p.name, "id": p.id.to_hex(), "fingerprint": p.id.fingerprint().to_string(), "online_since_ms": p.online_since_ms})
}

pub(crate) fn event_json(e: &EngineEvent) -> serde_json::Value {
    let n = match e {
        EngineEvent::PeerConnected { conn, incoming } => {
            return json!({"event": "connected", "incoming": incoming, "id": conn.peer().to_hex(), "fingerprint": conn.peer().fingerprint().to_string(), "name": conn.remote_name(), "path": path_str(&conn.path()), "safety_number": conn.safety_number().to_string()});
        }
        EngineEvent::Chat(ChatEvent::Received(m)) => {
            let mut v = message_json(m);
            v["event"] = json!("message");
            return v;
        }
        EngineEvent::Chat(ChatEvent::State { peer, id, state }) => {
            return json!({"event": "message_state", "peer": peer.fingerprint().to_string(), "id": hex(id), "state": state.as_str()});
        }
        EngineEvent::Transfer(t) => return transfer_json(t),
        EngineEvent::Call(c) => return calls::call_json(c),
        EngineEvent::Net(n) => n,
    };
    match n {
        Event::RelayConnected {
            observed,
            transport,
            relay,
        } => {
            json!({"event": "relay_connected", "observed": observed.to_string(), "transport": format!("{transport:?}").to_lowercase(), "relay": relay.fingerprint().to_string()})
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
            json!({"event": "peer_left", "id": id.to_hex(), "fingerprint": id.fingerprint().to_string()})
        }
        Event::PathChanged {
            peer, path, rtt, ..
        } => {
            json!({"event": "path_changed", "fingerprint": peer.fingerprint().to_string(), "path": path_str(path), "rtt_ms": rtt.map(ms)})
        }
        Event::ConnectionClosed { peer, reason } => {
            json!({"event": "disconnected", "fingerprint": peer.fingerprint().to_string(), "reason": reason})
        }
        Event::Signal { from, payload } => {
            json!({"event": "signal", "from": from.fingerprint().to_string(), "bytes": payload.len()})
        }
        Event::SignalFailed { to, reason } => {
            json!({"event": "signal_failed", "to": to.fingerprint().to_string(), "reason": format!("{reason:?}")})
        }
        Event::Incoming(c) => {
            json!({"event": "incoming", "fingerprint": c.peer().fingerprint().to_string()})
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
        EngineEvent::Chat(ChatEvent::Received(m)) => {
            return format!("message from {}: {}", m.peer.fingerprint(), m.text);
        }
        EngineEvent::Chat(ChatEvent::State { peer, state, .. }) => {
            return format!("message to {} is {}", peer.fingerprint(), state.as_str());
        }
        EngineEvent::Transfer(t) => return transfer_text(t),
        EngineEvent::Call(c) => return calls::call_text(c),
        EngineEvent::Net(n) => n,
    };
    match n {
        Event::RelayConnected {
            observed,
            transport,
            relay,
        } => format!(
            "online via relay {} over {transport:?}; the relay sees us as {observed}",
            relay.fingerprint()
        ),
        Event::RelayDisconnected { reason, retry_in } => format!(
            "relay connection lost ({reason}); retrying in {:.1}s",
            retry_in.as_secs_f64()
        ),
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
            format!("signal to {} failed: {reason:?}", to.fingerprint())
        }
        Event::Incoming(c) => format!("incoming connection from {}", c.peer().fingerprint()),
    }
}

pub(crate) fn print_event(json: bool, e: &EngineEvent) {
    if json {
        println!("{}", event_json(e));
    } else {
        println!("{}", event_text(e));
    }
}

/// Prints a path change; in JSON with its time since the connection came up.
pub(crate) fn print_path_change(json: bool, e: &EngineEvent, connected: Instant) {
    let EngineEvent::Net(Event::PathChanged { at, .. }) = e else {
        return;
    };
    if json {
        let mut v = event_json(e);
        v["since_connect_ms"] = json!(ms(at.saturating_duration_since(connected)));
        println!("{v}");
    } else {
        print_event(false, e);
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn message_json(m: &Message) -> serde_json::Value {
    json!({
        "n": m.rowid, "peer": m.peer.fingerprint().to_string(), "outgoing": m.outgoing,
        "id": hex(&m.id), "seq": m.seq, "sent_ms": m.sent_ms, "received_ms": m.received_ms,
        "state": m.state.as_str(), "text": m.text,
    })
}

pub(crate) fn progress_json(p: &Progress) -> serde_json::Value {
    json!({
        "event": "transfer_progress", "id": id_hex(&p.id), "peer": p.peer.fingerprint().to_string(),
        "outgoing": p.outgoing, "done_bytes": p.done_bytes, "total_bytes": p.total_bytes,
        "files_done": p.files_done, "files": p.files,
        "rate_bytes_per_s": p.rate.map(|r| r.round()), "eta_s": p.eta.map(|e| e.as_secs_f64().round()),
    })
}

pub(crate) fn summary_json(s: &Summary) -> serde_json::Value {
    json!({
        "event": "transfer_done", "id": id_hex(&s.id), "peer": s.peer.fingerprint().to_string(),
        "outgoing": s.outgoing, "files": s.files, "folders": s.dirs, "total_bytes": s.total_bytes,
        "resumed_bytes": s.resumed_bytes, "elapsed_ms": ms(s.elapsed),
        "mb_per_s": s.bytes_per_s() / 1e6,
        "placed": s.placed.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "skipped": s.skipped.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "blake3": s.hashes.iter().map(|(p, h)| json!({"path": p, "blake3": hex(h)})).collect::<Vec<_>>(),
    })
}

pub(crate) fn transfer_json(t: &TransferEvent) -> serde_json::Value {
    match t {
        TransferEvent::Offered(o) | TransferEvent::Resumed(o) => json!({
            "event": if matches!(t, TransferEvent::Offered(_)) { "transfer_offer" } else { "transfer_resumed" },
            "id": id_hex(&o.id), "peer": o.peer.fingerprint().to_string(), "files": o.files,
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
            "event": "transfer_failed", "id": id_hex(id), "peer": peer.fingerprint().to_string(),
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
            id_hex(&o.id)
        ),
        TransferEvent::Progress(p) => format!(
            "transfer {}: {} of {} ({}/{} files){}",
            &id_hex(&p.id)[..8],
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
            &id_hex(&s.id)[..8],
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
                format!(
                    "; saved as {}",
                    s.placed
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ),
        TransferEvent::Failed {
            id,
            reason,
            resumable,
            ..
        } => format!(
            "transfer {} stopped: {reason}{}",
            &id_hex(id)[..8],
            if *resumable {
                " (send it again to resume)"
            } else {
                ""
            }
        ),
    }
}

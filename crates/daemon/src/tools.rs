//! Connection tools on an engine (connect, ping, speed test, NAT check), with their results
//! in the API's types: the server answers with them, and a command that runs its own engine
//! reports the same facts the same way.

use std::time::{Duration, Instant};

use p2pcall_api as api;
use p2pcall_core::engine::EngineHandle;
use p2pcall_core::{EngineError, PeerId, RelayTransport};
use p2pcall_nat::classify::Mapping;
use p2pcall_net::PeerConnection;

use crate::callconv::path;

/// The relay session's transport as the API names it (`None` while not connected or on a
/// LAN).
pub async fn relay_transport(engine: &EngineHandle) -> Option<String> {
    let t = engine.wait_relay(Duration::ZERO).await.ok()?;
    Some(transport(t).into())
}

/// `udp` or `tcp` (what the API and the CLI's JSON call a relay transport).
pub fn transport(t: RelayTransport) -> &'static str {
    match t {
        RelayTransport::Udp => "udp",
        RelayTransport::Tcp => "tcp",
    }
}

/// A relay transport from the API's word for it.
pub fn transport_from_api(s: &str) -> Option<RelayTransport> {
    match s {
        "udp" => Some(RelayTransport::Udp),
        "tcp" => Some(RelayTransport::Tcp),
        _ => None,
    }
}

/// A connection as it stands, `setup` after it was asked for.
pub async fn connection(
    engine: &EngineHandle,
    conn: &PeerConnection,
    setup: Duration,
) -> api::Connection {
    let name = conn
        .remote_name()
        .unwrap_or_else(|| engine.peer_name(&conn.peer()));
    api::Connection {
        peer: api::Peer {
            id: conn.peer().to_hex(),
            name,
            online_since_ms: 0,
        },
        connect_us: setup.as_micros() as u64,
        path: path(&conn.path()),
        relay_transport: relay_transport(engine).await,
        safety_number: conn.safety_number().to_string(),
    }
}

/// Connects to `peer` (at once if a connection is up).
pub async fn connect(engine: &EngineHandle, peer: PeerId) -> Result<api::Connection, EngineError> {
    let t0 = Instant::now();
    let conn = engine.connect(peer).await?;
    Ok(connection(engine, &conn, t0.elapsed()).await)
}

/// One ping over the connection to `peer`.
pub async fn ping(engine: &EngineHandle, peer: PeerId, seq: u32) -> Result<api::Pong, EngineError> {
    let r = engine.ping(peer, seq).await?;
    let conn = engine.connect(peer).await?;
    Ok(api::Pong {
        rtt_us: r.rtt.map(|d| d.as_micros() as u64),
        path: path(&r.path),
        probes_sent: conn.stats().probes_sent,
    })
}

/// A speed test of `bytes` to `peer`.
pub async fn speedtest(
    engine: &EngineHandle,
    peer: PeerId,
    bytes: u64,
) -> Result<api::Speed, EngineError> {
    let r = engine.speedtest(peer, bytes).await?;
    let s = engine.connect(peer).await?.stats();
    Ok(api::Speed {
        bytes: r.bytes,
        elapsed_us: r.elapsed.as_micros() as u64,
        verified: r.verified,
        tx_relay: s.tx_relay,
        tx_direct: s.tx_direct,
        path: path(&s.path),
    })
}

/// Mutes, turns the camera on or off, or changes the video source of the call in progress.
pub async fn change_call(engine: &EngineHandle, c: api::CallChange) -> Result<(), EngineError> {
    match c {
        api::CallChange::Mute { muted } => engine.set_muted(muted).await,
        api::CallChange::Camera { on } => engine.set_camera(on).await,
        api::CallChange::Source { source } => {
            let src = source
                .parse()
                .map_err(|e: String| EngineError::Call(p2pcall_core::call::CallError::Source(e)))?;
            engine.set_video_source(src).await
        }
        api::CallChange::Add { peer } => engine.add_to_call(engine.resolve_peer(&peer)?).await,
    }
}

/// What the relay's reflection ports say about our NAT.
pub async fn netcheck(
    engine: &EngineHandle,
    transport_now: RelayTransport,
) -> Result<api::Netcheck, EngineError> {
    let ep = engine.endpoint();
    let report = ep.netcheck().await?;
    let mapping = match report.mapping {
        Mapping::None => "none (public address)",
        Mapping::EndpointIndependent => "endpoint-independent",
        Mapping::EndpointDependent => "endpoint-dependent",
        Mapping::Unknown => "unknown",
    };
    // Both reflection ports usually see the same address: list each address once.
    let mut observed: Vec<String> = Vec::new();
    for a in &report.observed {
        let a = a.to_string();
        if !observed.contains(&a) {
            observed.push(a);
        }
    }
    Ok(api::Netcheck {
        udp: !report.udp_blocked,
        relay_transport: transport(transport_now).into(),
        mapping: mapping.into(),
        port_preserved: report.port_preserved,
        observed,
        ipv6: ep.has_global_ipv6(),
        candidates: ep
            .local_candidates()
            .iter()
            .map(ToString::to_string)
            .collect(),
    })
}

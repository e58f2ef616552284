//! `p2pcall demo`: an in-process relay and two peers, end to end, on loopback.
//!
//! 1. start a relay on 127.0.0.1 (random port) and two engines with fresh identities;
//! 2. both register and see each other in the presence list;
//! 3. alice signals bob through the relay;
//! 4. alice opens the end-to-end encrypted connection (relay path first), pings, waits for
//!    the direct path, pings again;
//! 5. alice streams `bytes` to bob over one QUIC stream and bob checks every byte.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2pcall_net::{Path, RelayConfig};
use p2pcall_relay::{Relay, RelayConfig as ServerConfig};
use p2pcall_tls::Identity;

use crate::engine::{Engine, EngineConfig, EngineError, EngineEvent, EngineHandle};

/// What the demo observed.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// The relay's UDP address.
    pub relay: SocketAddr,
    /// Alice's fingerprint.
    pub alice: String,
    /// Bob's fingerprint.
    pub bob: String,
    /// Whether each saw the other in its presence list.
    pub presence_ok: bool,
    /// Whether bob received alice's signal intact.
    pub signal_ok: bool,
    /// Time from dialing to an established connection.
    pub connect_time: Duration,
    /// Path right after connecting.
    pub first_path: Path,
    /// RTTs of pings sent right after connecting.
    pub rtts_first: Vec<Option<Duration>>,
    /// Time from connect until the direct path was selected (if it was).
    pub direct_after: Option<Duration>,
    /// Path at the end.
    pub final_path: Path,
    /// RTTs of pings on the final path.
    pub rtts_final: Vec<Option<Duration>>,
    /// The safety number both users would compare.
    pub safety_number: String,
    /// Bytes streamed and verified.
    pub bytes: u64,
    /// Stream throughput, Mbit/s.
    pub throughput_mbit: f64,
}

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Engine failure.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Relay failure.
    #[error(transparent)]
    Relay(#[from] p2pcall_relay::RelayError),
    /// Key generation.
    #[error(transparent)]
    Tls(#[from] p2pcall_tls::TlsError),
    /// A step did not complete.
    #[error("demo step failed: {0}")]
    Step(String),
}

async fn peer(
    name: &str,
    relay: SocketAddr,
) -> Result<(EngineHandle, tokio::sync::mpsc::Receiver<EngineEvent>), DemoError> {
    let mut cfg = EngineConfig::new(
        Identity::generate()?,
        name.to_string(),
        Some(RelayConfig {
            addr: relay,
            tcp_addr: None,
            token: None,
            presence: true,
            force_tcp: false,
            relay_key: None,
        }),
    );
    // Loopback only: no gateway to ask for a port mapping.
    cfg.port_mapping = false;
    cfg.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    Ok(Engine::start(cfg).await?)
}

/// Runs the demo, streaming `bytes` at the end.
pub async fn run(bytes: u64) -> Result<DemoReport, DemoError> {
    let relay = Relay::start(
        &Identity::generate()?,
        ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0))),
    )
    .await?;
    let relay_addr = relay.udp_addr;
    let result = run_with(relay_addr, bytes).await;
    relay.shutdown().await;
    result
}

async fn run_with(relay: SocketAddr, bytes: u64) -> Result<DemoReport, DemoError> {
    let step = |s: &str| DemoError::Step(s.to_string());
    let (alice, _alice_events) = peer("alice", relay).await?;
    let (bob, mut bob_events) = peer("bob", relay).await?;
    alice.wait_relay(Duration::from_secs(5)).await?;
    bob.wait_relay(Duration::from_secs(5)).await?;

    // Presence: each must see the other (bob may have registered after alice's snapshot).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut presence_ok = false;
    while Instant::now() < deadline {
        let a_sees = alice.online_peers().iter().any(|p| p.id == bob.id());
        let b_sees = bob.online_peers().iter().any(|p| p.id == alice.id());
        if a_sees && b_sees {
            presence_ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Bob: collect the signal and the incoming connection.
    let (sig_tx, sig_rx) = tokio::sync::oneshot::channel();
    let (conn_tx, conn_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut sig_tx, mut conn_tx) = (Some(sig_tx), Some(conn_tx));
        while let Some(e) = bob_events.recv().await {
            match e {
                EngineEvent::Net(p2pcall_net::Event::Signal { payload, .. }) => {
                    if let Some(t) = sig_tx.take() {
                        let _ = t.send(payload);
                    }
                }
                EngineEvent::PeerConnected {
                    conn,
                    incoming: true,
                } => {
                    if let Some(t) = conn_tx.take() {
                        let _ = t.send(conn);
                    }
                }
                _ => {}
            }
        }
    });
    let hello = Bytes::from_static(b"hello bob, this is alice");
    alice.signal(bob.id(), hello.clone()).await?;
    let signal_ok = tokio::time::timeout(Duration::from_secs(5), sig_rx)
        .await
        .ok()
        .and_then(Result::ok)
        == Some(hello);

    let t0 = Instant::now();
    let conn = alice.connect(bob.id()).await?;
    let connect_time = t0.elapsed();
    let first_path = conn.path();
    let mut rtts_first = Vec::new();
    for seq in 0..3 {
        rtts_first.push(alice.ping(bob.id(), seq).await?.rtt);
    }
    let direct = conn
        .wait_path(Duration::from_secs(5), |p| matches!(p, Path::Direct(_)))
        .await;
    let direct_after = direct.map(|_| t0.elapsed());
    let mut rtts_final = Vec::new();
    for seq in 3..8 {
        rtts_final.push(alice.ping(bob.id(), seq).await?.rtt);
    }
    let final_path = conn.path();

    // Throughput: one stream, bob verifies the byte pattern.
    let bob_conn = tokio::time::timeout(Duration::from_secs(5), conn_rx)
        .await
        .map_err(|_| step("bob saw no incoming connection"))?
        .map_err(|_| step("bob's event task ended"))?;
    let reader = tokio::spawn(async move {
        let mut recv = bob_conn
            .quic()
            .accept_uni()
            .await
            .map_err(|e| e.to_string())?;
        let mut total = 0u64;
        while let Some(chunk) = recv
            .read_chunk(1 << 20, true)
            .await
            .map_err(|e| e.to_string())?
        {
            for (i, b) in chunk.bytes.iter().enumerate() {
                if *b != pattern(total + i as u64) {
                    return Err(format!("byte {} corrupted", total + i as u64));
                }
            }
            total += chunk.bytes.len() as u64;
        }
        Ok::<u64, String>(total)
    });
    let t1 = Instant::now();
    let mut send = conn
        .quic()
        .open_uni()
        .await
        .map_err(|e| step(&e.to_string()))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(buf.len() as u64) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern(sent + i as u64);
        }
        send.write_all(&buf[..n])
            .await
            .map_err(|e| step(&e.to_string()))?;
        sent += n as u64;
    }
    send.finish().map_err(|e| step(&e.to_string()))?;
    let received = reader
        .await
        .map_err(|e| step(&e.to_string()))?
        .map_err(|e| step(&e))?;
    let secs = t1.elapsed().as_secs_f64();
    if received != bytes {
        return Err(step(&format!("bob received {received} of {bytes} bytes")));
    }
    let report = DemoReport {
        relay,
        alice: alice.id().fingerprint().to_string(),
        bob: bob.id().fingerprint().to_string(),
        presence_ok,
        signal_ok,
        connect_time,
        first_path,
        rtts_first,
        direct_after,
        final_path,
        rtts_final,
        safety_number: conn.safety_number().to_string(),
        bytes,
        throughput_mbit: bytes as f64 * 8.0 / secs / 1e6,
    };
    alice.shutdown().await;
    bob.shutdown().await;
    Ok(report)
}

/// A byte pattern that catches reordering and corruption (not all-zero).
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

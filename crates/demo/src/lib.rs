//! `p2pcall demo`: an in-process relay and two peers, end to end, on loopback; and the same
//! pieces (a relay on a free loopback port, peers with fresh identities) for tests and tools.
//! It lives outside the engine so that the engine does not depend on the relay server.
//!
//! 1. start a relay on 127.0.0.1 (random port) and two engines with fresh identities;
//! 2. both register and see each other in the presence list;
//! 3. alice signals bob through the relay;
//! 4. alice opens the end-to-end encrypted connection (relay path first), pings, waits for
//!    the direct path, pings again;
//! 5. alice streams `bytes` to bob over one QUIC stream and bob checks every byte;
//! 6. alice sends three chat messages; bob stores them (a message request: alice is a
//!    stranger), accepts the request, reads them, the receipts come back;
//! 7. alice sends a small folder tree; bob accepts it into a temporary folder and both sides
//!    compare every file's BLAKE3.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2pcall_net::{Path, RelayConfig};
use p2pcall_relay::{Relay, RelayConfig as ServerConfig};
use p2pcall_transport::Identity;

use p2pcall_core::engine::{Engine, EngineConfig, EngineError, EngineEvent, EngineHandle};
use p2pcall_core::transfer::TransferEvent;
use p2pcall_store::MessageState;

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
    /// Three messages delivered in order and read receipts returned.
    pub chat_ok: bool,
    /// Time for the chat exchange.
    pub chat_time: Duration,
    /// Files in the folder transfer.
    pub files: u64,
    /// Bytes in the folder transfer.
    pub file_bytes: u64,
    /// Time for the folder transfer (offer to completion).
    pub files_time: Duration,
    /// Both sides report the same BLAKE3 for every file.
    pub files_ok: bool,
    /// Where bob's copy landed.
    pub placed: Vec<String>,
    /// A short synthetic call (test pattern + tone both ways): alice's final statistics.
    pub call: Option<p2pcall_core::call::CallStats>,
    /// The call ended as planned with video and audio received.
    pub call_ok: bool,
}

/// Length of the demo call.
pub const DEMO_CALL: Duration = Duration::from_secs(3);

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
    Tls(#[from] p2pcall_transport::TlsError),
    /// A step did not complete.
    #[error("demo step failed: {0}")]
    Step(String),
}

/// An engine on loopback registered with the relay at `relay` (fresh identity, in-memory
/// store, no port mapping): for the demo, tests and benchmarks.
pub async fn local_peer(
    name: &str,
    relay: SocketAddr,
) -> Result<(EngineHandle, tokio::sync::mpsc::Receiver<EngineEvent>), DemoError> {
    let mut cfg = EngineConfig::new(
        Identity::generate()?,
        name.to_string(),
        Some(RelayConfig::new(relay)),
    );
    // Loopback only: no gateway to ask for a port mapping.
    cfg.port_mapping = false;
    cfg.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    Ok(Engine::start(cfg).await?)
}

/// A peer in LAN-only mode on the loopback interface (mDNS there only, no relay): for tests
/// run inside a private network namespace.
pub async fn local_lan_peer(
    name: &str,
) -> Result<(EngineHandle, tokio::sync::mpsc::Receiver<EngineEvent>), DemoError> {
    let mut cfg = EngineConfig::new(Identity::generate()?, name.to_string(), None);
    cfg.lan = Some(p2pcall_net::LanConfig {
        interfaces: vec!["lo".into()],
        ..Default::default()
    });
    cfg.port_mapping = false;
    cfg.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    Ok(Engine::start(cfg).await?)
}

/// A relay on a free loopback port with a fresh key: for the demo, tests and tools.
pub async fn local_relay() -> Result<Relay, DemoError> {
    Ok(Relay::start(
        &Identity::generate()?,
        ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0))),
    )
    .await?)
}

/// Runs the demo, streaming `bytes` at the end.
pub async fn run(bytes: u64) -> Result<DemoReport, DemoError> {
    let relay = local_relay().await?;
    let relay_addr = relay.udp_addr;
    let result = run_with(relay_addr, bytes).await;
    relay.shutdown().await;
    result
}

async fn run_with(relay: SocketAddr, bytes: u64) -> Result<DemoReport, DemoError> {
    let step = |s: &str| DemoError::Step(s.to_string());
    let (alice, mut alice_events) = local_peer("alice", relay).await?;
    let (bob, bob_events) = local_peer("bob", relay).await?;
    alice.wait_relay(Duration::from_secs(5)).await?;
    bob.wait_relay(Duration::from_secs(5)).await?;

    let presence_ok = see_each_other(&alice, &bob).await;

    let inbox = tempfile::tempdir().map_err(|e| step(&e.to_string()))?;
    let (sig_rx, done_rx) = serve_bob(bob.clone(), bob_events, inbox.path().to_path_buf());
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

    // Throughput: one stream, bob hashes every byte and answers with the hash.
    let speed = alice.speedtest(bob.id(), bytes).await?;
    if !speed.verified {
        return Err(step("bob's hash of the streamed bytes differs"));
    }

    let t_chat = Instant::now();
    let chat_ok = chat_round(&alice, &bob).await?;
    let chat_time = t_chat.elapsed();

    // Folder transfer: bob's event task accepts into its own temporary folder.
    let work = tempfile::tempdir().map_err(|e| step(&e.to_string()))?;
    let tree = work.path().join("holiday");
    make_tree(&tree).map_err(|e| step(&e.to_string()))?;
    let t_files = Instant::now();
    let sent = alice
        .send_files(bob.id(), std::slice::from_ref(&tree))
        .await?;
    let files_time = t_files.elapsed();
    let received = tokio::time::timeout(Duration::from_secs(10), done_rx)
        .await
        .map_err(|_| step("bob saw no finished transfer"))?
        .map_err(|_| step("bob's event task ended"))?;
    let files_ok = received.hashes == sent.hashes && received.files == sent.files;

    let (call, call_ok) = short_call(&alice, &bob, &mut alice_events).await?;

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
        throughput_mbit: speed.mbit_per_s(),
        chat_ok,
        chat_time,
        files: sent.files,
        file_bytes: sent.total_bytes,
        files_time,
        files_ok,
        placed: received
            .placed
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        call,
        call_ok,
    };
    alice.shutdown().await;
    bob.shutdown().await;
    Ok(report)
}

/// Waits up to 5 s until each sees the other online (bob may have registered after alice's
/// snapshot).
async fn see_each_other(alice: &EngineHandle, bob: &EngineHandle) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let a_sees = alice.online_peers().iter().any(|p| p.id == bob.id());
        let b_sees = bob.online_peers().iter().any(|p| p.id == alice.id());
        if a_sees && b_sees {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Bob's side: passes on the first signal, accepts file offers into `inbox`, answers calls,
/// and passes on the first finished transfer.
fn serve_bob(
    bob: EngineHandle,
    mut events: tokio::sync::mpsc::Receiver<EngineEvent>,
    inbox: std::path::PathBuf,
) -> (
    tokio::sync::oneshot::Receiver<Bytes>,
    tokio::sync::oneshot::Receiver<p2pcall_core::transfer::Summary>,
) {
    let (sig_tx, sig_rx) = tokio::sync::oneshot::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut sig_tx, mut done_tx) = (Some(sig_tx), Some(done_tx));
        while let Some(e) = events.recv().await {
            match e {
                EngineEvent::Net(p2pcall_net::Event::Signal { payload, .. }) => {
                    if let Some(t) = sig_tx.take() {
                        let _ = t.send(payload);
                    }
                }
                EngineEvent::Transfer(TransferEvent::Offered(o)) => {
                    let _ = bob.accept_offer(o.peer, o.id, inbox.clone());
                }
                EngineEvent::Call(p2pcall_core::call::CallEvent::Incoming { call, .. }) => {
                    let _ = bob
                        .answer(call, p2pcall_core::call::CallOptions::default())
                        .await;
                }
                EngineEvent::Transfer(TransferEvent::Finished(s)) => {
                    if let Some(t) = done_tx.take() {
                        let _ = t.send(s);
                    }
                }
                _ => {}
            }
        }
    });
    (sig_rx, done_rx)
}

/// Three messages, delivered in order, then read by bob: whether all of it happened.
async fn chat_round(alice: &EngineHandle, bob: &EngineHandle) -> Result<bool, DemoError> {
    const TEXTS: [&str; 3] = ["hi bob", "the folder is coming", "été ✓"];
    let mut last = None;
    for text in TEXTS {
        last = Some(alice.send_message(bob.id(), text).await?);
    }
    let delivered = last.as_ref().map(|m| m.state) == Some(MessageState::Delivered);
    // Alice is a stranger to bob: her messages are a request, and she learns nothing (not
    // even that they were read) until bob accepts it, as a user would.
    bob.accept_request(alice.id(), Some("alice".into())).await?;
    bob.mark_read(alice.id()).await?;
    let read = alice
        .store()
        .history(&bob.id(), None, 3)
        .map_err(EngineError::from)?
        .iter()
        .all(|m| m.state == MessageState::Read);
    let bob_got: Vec<String> = bob
        .store()
        .history(&alice.id(), None, 10)
        .map_err(EngineError::from)?
        .into_iter()
        .map(|m| m.text)
        .collect();
    Ok(delivered && read && bob_got == TEXTS)
}

/// A short call: alice dials, bob's event task answers; both send the test pattern and a
/// tone; alice's final statistics say what she received.
async fn short_call(
    alice: &EngineHandle,
    bob: &EngineHandle,
    alice_events: &mut tokio::sync::mpsc::Receiver<EngineEvent>,
) -> Result<(Option<p2pcall_core::call::CallStats>, bool), DemoError> {
    let opts = p2pcall_core::call::CallOptions {
        duration: Some(DEMO_CALL),
        ..Default::default()
    };
    alice.call(bob.id(), opts).await?;
    let ended = tokio::time::timeout(DEMO_CALL + Duration::from_secs(10), async {
        while let Some(e) = alice_events.recv().await {
            if let EngineEvent::Call(p2pcall_core::call::CallEvent::Ended {
                reason, stats, ..
            }) = e
            {
                return Some((reason, stats));
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    Ok(match ended {
        Some((reason, stats)) => {
            let ok = p2pcall_core::call::describe_end(&reason).0 == "finished"
                && stats.as_ref().is_some_and(|s| {
                    s.video_decoded > 0 && s.audio_samples > 0 && s.recv.len() == 2
                });
            (stats.map(|s| *s), ok)
        }
        None => (None, false),
    })
}

/// A small tree: nested folders, an empty folder, an empty file, a unicode name, and a
/// 6 MiB file (several chunks).
fn make_tree(root: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(root.join("photos/2026"))?;
    std::fs::create_dir_all(root.join("empty folder"))?;
    std::fs::write(root.join("notes.txt"), b"packing list\n")?;
    std::fs::write(root.join("empty.txt"), b"")?;
    std::fs::write(root.join("photos/été ☀.txt"), "sunny".repeat(100))?;
    let big: Vec<u8> = (0..6u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(root.join("photos/2026/video.bin"), big)
}

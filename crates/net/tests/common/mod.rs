//! Shared helpers: an in-process relay and peers on loopback.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use p2pcall_net::{Endpoint, EndpointConfig, Event, Identity, RelayConfig};
use p2pcall_relay::{Relay, RelayConfig as ServerConfig};
use tokio::sync::mpsc;

pub const WAIT: Duration = Duration::from_secs(10);

pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub async fn relay_with(f: impl FnOnce(&mut ServerConfig)) -> Relay {
    let mut cfg = ServerConfig::new(loopback());
    f(&mut cfg);
    Relay::start(&Identity::generate().unwrap(), cfg)
        .await
        .unwrap()
}

pub async fn relay() -> Relay {
    relay_with(|_| {}).await
}

pub struct Peer {
    pub ep: Endpoint,
    pub events: mpsc::Receiver<Event>,
}

pub fn relay_cfg(addr: SocketAddr) -> RelayConfig {
    RelayConfig::new(addr)
}

pub async fn peer_with(name: &str, identity: Identity, relay: RelayConfig, direct: bool) -> Peer {
    let (ep, events) = Endpoint::bind(EndpointConfig {
        identity,
        name: name.into(),
        bind: loopback(),
        relay: Some(relay),
        direct_paths: direct,
        port_mapping: false,
        lan: None,
    })
    .await
    .unwrap();
    Peer { ep, events }
}

pub async fn peer(name: &str, relay: SocketAddr, direct: bool) -> Peer {
    let p = peer_with(
        name,
        Identity::generate().unwrap(),
        relay_cfg(relay),
        direct,
    )
    .await;
    p.ep.wait_relay(WAIT).await.unwrap();
    p
}

impl Peer {
    /// Waits for the first event matching `f`, discarding others.
    pub async fn expect<T>(&mut self, what: &str, mut f: impl FnMut(Event) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let e = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .unwrap_or_else(|| panic!("event channel closed waiting for {what}"));
            if let Some(t) = f(e) {
                return t;
            }
        }
    }
}

/// Sends `len` bytes on a new stream of `conn` and checks they come back: the other side,
/// `incoming`, echoes them. Returns `incoming`.
pub async fn echo_through(
    conn: &p2pcall_net::PeerConnection,
    incoming: p2pcall_net::PeerConnection,
    len: u32,
) -> p2pcall_net::PeerConnection {
    let limit = len as usize + 1;
    let echo = tokio::spawn(async move {
        let (mut send, mut recv) = incoming.quic().accept_bi().await.unwrap();
        let data = recv.read_to_end(limit).await.unwrap();
        send.write_all(&data).await.unwrap();
        send.finish().unwrap();
        incoming
    });
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let (mut send, mut recv) = conn.quic().open_bi().await.unwrap();
    send.write_all(&data).await.unwrap();
    send.finish().unwrap();
    let back = recv.read_to_end(limit).await.unwrap();
    assert!(back == data, "the stream came back intact");
    echo.await.unwrap()
}

/// Resident memory of this process, KiB (Linux).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

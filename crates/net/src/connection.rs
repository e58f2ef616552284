//! A peer-to-peer connection as the application sees it: its peer, path, statistics,
//! pings, datagrams, liveness.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2pcall_nat::Path;
use p2pcall_proto::peer::Datagram;
use p2pcall_proto::{PeerId, SafetyNumber};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::NetError;
use crate::socket::{ControlPacket, PeerRoute};

/// A `ping` without answer for this long counts as lost.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Pings of a connection whose peer re-registered are sent this far apart, and each may
/// take three times as long (a relayed path across continents has ~300 ms RTT).
pub(crate) const ALIVE_CHECK_EVERY: Duration = Duration::from_millis(300);
/// Application close code for a normal hang-up.
pub const CLOSE_NORMAL: u32 = 0;
/// Application close code for a connection whose peer process is gone: a newer connection
/// from the same key announced another instance (the peer restarted).
pub(crate) const CLOSE_PEER_RESTARTED: u32 = 0x103;
/// Application close code for "key does not match".
pub(crate) const CLOSE_KEY_MISMATCH: u32 = 0x101;
/// Application close code for protocol violations on the control stream.
pub(crate) const CLOSE_PROTOCOL: u32 = 0x102;

/// Live numbers of one connection.
#[derive(Debug, Clone)]
pub struct ConnectionStats {
    /// Current path.
    pub path: Path,
    /// QUIC's smoothed RTT.
    pub rtt: Duration,
    /// Bytes sent via relay / direct; received via relay / direct.
    pub tx_relay: u64,
    /// Bytes sent directly.
    pub tx_direct: u64,
    /// Bytes received through the relay.
    pub rx_relay: u64,
    /// Bytes received directly.
    pub rx_direct: u64,
    /// Packets QUIC declared lost.
    pub lost_packets: u64,
    /// Path probes sent so far (hole punching and liveness).
    pub probes_sent: u64,
}

/// A live connection, as the endpoint tracks it.
pub(crate) struct LiveConn {
    pub(crate) serial: u64,
    pub(crate) probe_tx: mpsc::Sender<ControlPacket>,
    pub(crate) shared: Arc<ConnShared>,
}

pub(crate) struct ConnShared {
    pub(crate) me: PeerId,
    pub(crate) peer: PeerId,
    /// This connection's number within the endpoint (order of establishment).
    pub(crate) serial: u64,
    /// The peer's instance, from its `Hello`.
    pub(crate) remote_instance: Mutex<Option<u64>>,
    /// Set when the peer registered with the relay again while this connection was up: it
    /// may have restarted (this connection is then dead) or only lost its relay session.
    /// [`PeerConnection::check_alive`] tells which.
    pub(crate) suspect: std::sync::atomic::AtomicBool,
    pub(crate) conn: quinn::Connection,
    pub(crate) route: Arc<PeerRoute>,
    pub(crate) pings: Mutex<HashMap<u32, oneshot::Sender<Instant>>>,
    pub(crate) remote_name: Mutex<Option<String>>,
    pub(crate) path_rx: tokio::sync::watch::Receiver<Path>,
    pub(crate) datagrams: Mutex<Option<mpsc::Receiver<Bytes>>>,
    pub(crate) probes_sent: std::sync::atomic::AtomicU64,
    /// The peer's address as the relay vouched for it (the birthday technique's target).
    pub(crate) vouched: tokio::sync::watch::Sender<Option<std::net::SocketAddr>>,
}

/// An end-to-end encrypted connection to one peer.
#[derive(Clone)]
pub struct PeerConnection {
    pub(crate) shared: Arc<ConnShared>,
}

impl std::fmt::Debug for PeerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConnection")
            .field("peer", &self.shared.peer)
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

impl PeerConnection {
    /// The authenticated peer.
    pub fn peer(&self) -> PeerId {
        self.shared.peer
    }

    /// The name the peer announced (a hint).
    pub fn remote_name(&self) -> Option<String> {
        self.shared.remote_name.lock().clone()
    }

    /// The safety number of this pair of identities.
    pub fn safety_number(&self) -> SafetyNumber {
        SafetyNumber::new(&self.shared.me, &self.shared.peer)
    }

    /// The path packets take now.
    pub fn path(&self) -> Path {
        self.shared.route.path()
    }

    /// Waits until the path satisfies `f` (or the timeout passes); returns the path.
    pub async fn wait_path(&self, timeout: Duration, f: impl Fn(&Path) -> bool) -> Option<Path> {
        let mut rx = self.shared.path_rx.clone();
        tokio::time::timeout(timeout, rx.wait_for(|p| f(p)))
            .await
            .ok()?
            .ok()
            .map(|p| *p)
    }

    /// The underlying QUIC connection: open streams, send datagrams.
    pub fn quic(&self) -> &quinn::Connection {
        &self.shared.conn
    }

    /// Datagrams that are not pings, for the application (taken once).
    pub fn take_datagrams(&self) -> Option<mpsc::Receiver<Bytes>> {
        self.shared.datagrams.lock().take()
    }

    /// Whether the peer re-registered with the relay since this connection came up (it may
    /// have restarted): check with [`check_alive`](Self::check_alive) before relying on it.
    pub fn is_suspect(&self) -> bool {
        self.shared.suspect.load(Ordering::Acquire)
    }

    /// Whether the peer still answers on this connection: up to three pings, one every
    /// [`ALIVE_CHECK_EVERY`] (so one lost packet does not condemn a live connection). A
    /// connection that does not answer is closed; one that does is no longer suspect.
    pub async fn check_alive(&self) -> bool {
        let (tx, mut rx) = mpsc::channel(3);
        for i in 0..3u32 {
            let seq = rand::random::<u32>();
            let me = self.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(ALIVE_CHECK_EVERY * i).await;
                let _ = tx
                    .send(me.ping_within(seq, 0, ALIVE_CHECK_EVERY * 3).await.is_ok())
                    .await;
            });
        }
        drop(tx);
        while let Some(ok) = rx.recv().await {
            if ok {
                self.shared.suspect.store(false, Ordering::Release);
                return true;
            }
        }
        self.shared.conn.close(
            CLOSE_PEER_RESTARTED.into(),
            b"no answer after the peer registered again",
        );
        false
    }

    /// Sends a ping datagram of `pad` extra bytes and waits for its pong.
    pub async fn ping(&self, seq: u32, pad: usize) -> Result<Duration, NetError> {
        self.ping_within(seq, pad, PING_TIMEOUT).await
    }

    async fn ping_within(
        &self,
        seq: u32,
        pad: usize,
        wait: Duration,
    ) -> Result<Duration, NetError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut m = self.shared.pings.lock();
            if m.len() > 1024 {
                m.clear();
            }
            m.insert(seq, tx);
        }
        let mut buf = Vec::new();
        Datagram::Ping {
            seq,
            pad: Bytes::from(vec![0u8; pad.min(p2pcall_proto::peer::MAX_PING_PAD)]),
        }
        .encode(&mut buf);
        let sent = Instant::now();
        tracing::trace!(serial = self.shared.serial, seq, "ping sent");
        self.shared.conn.send_datagram(Bytes::from(buf))?;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(at)) => Ok(at.saturating_duration_since(sent)),
            _ => {
                {
                    let mut m = self.shared.pings.lock();
                    m.remove(&seq);
                }
                Err(NetError::Timeout("ping"))
            }
        }
    }

    /// Live statistics.
    pub fn stats(&self) -> ConnectionStats {
        let c = &self.shared.route.counters;
        let q = self.shared.conn.stats();
        ConnectionStats {
            path: self.path(),
            rtt: self.shared.conn.rtt(),
            tx_relay: c.tx_relay.load(Ordering::Relaxed),
            tx_direct: c.tx_direct.load(Ordering::Relaxed),
            rx_relay: c.rx_relay.load(Ordering::Relaxed),
            rx_direct: c.rx_direct.load(Ordering::Relaxed),
            lost_packets: q.path.lost_packets,
            probes_sent: self.shared.probes_sent.load(Ordering::Relaxed),
        }
    }

    /// Closes the connection.
    pub fn close(&self, reason: &str) {
        self.shared
            .conn
            .close(CLOSE_NORMAL.into(), reason.as_bytes());
    }

    /// Waits until the connection is closed and returns why.
    pub async fn closed(&self) -> quinn::ConnectionError {
        self.shared.conn.closed().await
    }
}

//! What the relay's tasks share: settings, metrics, the session table, the UDP socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use p2pcall_proto::PeerId;
use p2pcall_proto::relay::ServerFrame;
use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;

use crate::config::RelayConfig;
use crate::metrics::{DropReason, Metrics};
use crate::registry::{Route, Sessions};
use crate::socket::RelaySocket;

/// What every task of a relay shares.
pub(crate) struct Shared {
    /// The relay's own key.
    pub(crate) id: PeerId,
    pub(crate) cfg: RelayConfig,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) sessions: Arc<RwLock<Sessions>>,
    pub(crate) socket: Arc<RelaySocket>,
    pub(crate) cancel: CancellationToken,
    /// Set when shutdown begins: no new session registers from then on (one that did would
    /// be welcomed by a relay about to go away).
    pub(crate) closing: AtomicBool,
    pub(crate) reflect_ports: Vec<u16>,
    /// The parking task: parked sessions a signal now waits for.
    pub(crate) waker: tokio::sync::mpsc::Sender<PeerId>,
}

impl Shared {
    /// Forwards a packet that arrived in a TCP `Data` frame (to a peer here, or to the relay
    /// of the cluster it is registered with).
    pub(crate) fn forward_from_tcp(&self, from: PeerId, to: PeerId, packet: &[u8]) {
        let ok = {
            let sessions = self.sessions.read();
            match sessions.route(&to) {
                Route::Local(dst) => match dst.udp_addr() {
                    Some(addr) => self.socket.send_relayed(addr, &from, packet),
                    None => dst.try_queue(ServerFrame::Data {
                        from,
                        packet: bytes::Bytes::copy_from_slice(packet),
                    }),
                },
                Route::Remote(p2pcall_proto::cluster::Located {
                    route,
                    hop: Some(hop),
                    ..
                }) => {
                    let sent = self.socket.send_hop(&hop, route, &from, packet);
                    if sent {
                        self.metrics.hops_out.fetch_add(1, Ordering::Relaxed);
                    }
                    sent
                }
                Route::Remote(_) | Route::Nowhere => {
                    self.metrics.dropped(DropReason::UnknownDestination);
                    return;
                }
            }
        };
        if ok {
            self.metrics.packets_relayed.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .bytes_relayed
                .fetch_add(packet.len() as u64, Ordering::Relaxed);
        } else {
            self.metrics.dropped(DropReason::QueueFull);
        }
    }
}

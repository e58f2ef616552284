//! The engine's services, and what a peer opens on a connection routed to them.
//!
//! Every stream after a connection's control stream starts with its kind byte
//! ([`p2pcall_proto::stream::StreamKind`]) and goes to the service of that kind; unknown
//! kinds, and kinds opened in the wrong direction, are refused with a stream error. Media
//! datagrams go to the call service.

use std::sync::{Arc, Weak};

use p2pcall_net::PeerConnection;
use p2pcall_proto::PeerId;
use p2pcall_proto::stream::StreamKind;
use tokio::sync::mpsc;

use crate::call::Calls;
use crate::chat::Chat;
use crate::context::Context;
use crate::presence::Presence;
use crate::transfer::Transfers;

/// Stream error code for an unknown stream kind.
const UNKNOWN_KIND: u32 = 1;

/// One service per feature, over the shared [`Context`].
#[derive(Debug)]
pub(crate) struct Services {
    pub(crate) ctx: Arc<Context>,
    pub(crate) presence: Presence,
    pub(crate) chat: Chat,
    pub(crate) transfers: Arc<Transfers>,
    pub(crate) calls: Arc<Calls>,
    /// Deliver queued messages and resume transfers when a peer becomes reachable.
    pub(crate) auto_deliver: bool,
}

impl Services {
    /// A peer came online or connected: deliver what waits for it (queued messages, read
    /// receipts, unfinished outgoing transfers).
    pub(crate) fn peer_reachable(self: &Arc<Self>, peer: PeerId) {
        if !self.auto_deliver {
            return;
        }
        let s = self.clone();
        tokio::spawn(async move {
            if let Err(e) = s.chat.flush(peer).await {
                tracing::debug!(%peer, "chat delivery postponed: {e}");
            }
            s.transfers.resume(peer).await;
        });
    }
}

/// Serves every connection the context adopts, until the services are gone.
pub(crate) async fn serve_adopted(
    services: Weak<Services>,
    mut adopted: mpsc::UnboundedReceiver<PeerConnection>,
) {
    while let Some(conn) = adopted.recv().await {
        let Some(s) = services.upgrade() else { return };
        tokio::spawn(crate::call::route_datagrams(s.calls.clone(), conn.clone()));
        tokio::spawn(serve(s, conn));
    }
}

/// Serves the streams the peer opens on `conn` until it closes.
async fn serve(s: Arc<Services>, conn: PeerConnection) {
    let uni = tokio::spawn(serve_uni(s.transfers.clone(), conn.clone()));
    loop {
        let Ok((send, recv)) = conn.quic().accept_bi().await else {
            break;
        };
        tokio::spawn(serve_bi(s.clone(), conn.clone(), send, recv));
    }
    uni.abort();
}

async fn serve_uni(transfers: Arc<Transfers>, conn: PeerConnection) {
    while let Ok(mut recv) = conn.quic().accept_uni().await {
        let transfers = transfers.clone();
        let peer = conn.peer();
        tokio::spawn(async move {
            let mut kind = [0u8; 1];
            if recv.read_exact(&mut kind).await.is_err() {
                return;
            }
            match StreamKind::from_byte(kind[0]) {
                Some(StreamKind::TransferData) => {
                    crate::transfer::serve_data(transfers, peer, recv).await;
                }
                _ => {
                    let _ = recv.stop(UNKNOWN_KIND.into());
                }
            }
        });
    }
}

async fn serve_bi(
    s: Arc<Services>,
    conn: PeerConnection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let mut kind = [0u8; 1];
    if recv.read_exact(&mut kind).await.is_err() {
        return;
    }
    match StreamKind::from_byte(kind[0]) {
        Some(StreamKind::Speedtest) => crate::speedtest::serve(send, recv).await,
        Some(StreamKind::Chat) => s.chat.serve(conn.peer(), send, recv).await,
        Some(StreamKind::Call) => crate::call::serve(s.calls.clone(), conn, send, recv).await,
        Some(StreamKind::TransferOffer) => {
            crate::transfer::serve_offer(s.transfers.clone(), conn.peer(), send, recv).await
        }
        Some(StreamKind::TransferData) | None => {
            let _ = recv.stop(UNKNOWN_KIND.into());
            let _ = send.reset(UNKNOWN_KIND.into());
        }
    }
}

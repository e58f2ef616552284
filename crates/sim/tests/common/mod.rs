//! A QUIC peer on the virtual network: quinn-proto's state machine with p2pcall's TLS and
//! transport settings, a `MediaSession` on its datagrams, and optionally a bulk stream.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use p2pcall_media::call::Negotiated;
use p2pcall_media::session::{Bitrates, MediaSession};
use p2pcall_proto::call::{Codec, StreamDesc, StreamKind};
use p2pcall_sim::VirtualNet;
use p2pcall_transport::Identity;
use quinn_proto::{
    ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig, Event, StreamEvent, StreamId,
};

/// The stream numbers of a call's audio and video.
pub const AUDIO: u8 = 0;
pub const VIDEO: u8 = 1;

/// A call's streams: Opus audio and H264 camera video.
pub fn streams() -> Vec<StreamDesc> {
    let s = |id, kind, codec| StreamDesc {
        id,
        kind,
        codec,
        active: true,
    };
    vec![
        s(AUDIO, StreamKind::Audio, Codec::Opus),
        s(VIDEO, StreamKind::Camera, Codec::H264),
    ]
}

/// Datagrams go to QUIC only while its buffer holds less than a couple of packets.
pub const DATAGRAM_ROOM: usize = (64 << 10) - 2 * 1300;

pub fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub struct Peer {
    pub endpoint: Endpoint,
    pub conn: Option<(ConnectionHandle, quinn_proto::Connection)>,
    pub addr: SocketAddr,
    pub peer: SocketAddr,
    pub session: MediaSession,
    pub bulk: Option<StreamId>,
    pub bulk_rx: Option<StreamId>,
    pub bulk_read: u64,
    /// Packets of 150 bytes or less it sent (acknowledgements, feedback, keep-alives).
    pub small_sent: u64,
}

impl Peer {
    /// A client at `a` connecting to a server at `b` (the virtual net carries what they
    /// send once connected with [`VirtualNet::connect`]).
    pub fn pair(start: Instant, a_addr: &str, b_addr: &str) -> (Peer, Peer) {
        let (ida, idb) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let mut alice = Peer::new(&ida, false, a_addr, b_addr);
        let bob = Peer::new(&idb, true, b_addr, a_addr);
        let cfg = p2pcall_transport::quinn_client_config(
            &ida,
            Some(idb.id()),
            p2pcall_transport::ALPN_PEER,
            p2pcall_transport::transport_config(Duration::from_secs(5), Duration::from_secs(20)),
        )
        .unwrap();
        let (ch, c) = alice
            .endpoint
            .connect(start, cfg, a(b_addr), p2pcall_transport::PEER_SERVER_NAME)
            .unwrap();
        alice.conn = Some((ch, c));
        (alice, bob)
    }

    /// [`Peer::pair`] whose sessions carry a 640×360 call from the client to the server with
    /// the engine's bitrates and `video_max_bps` at most.
    pub fn call(start: Instant, a_addr: &str, b_addr: &str, video_max_bps: u64) -> (Peer, Peer) {
        let (mut tx, mut rx) = Peer::pair(start, a_addr, b_addr);
        tx.session.configure(&Negotiated {
            send: streams(),
            receive: vec![],
        });
        rx.session.configure(&Negotiated {
            send: vec![],
            receive: streams(),
        });
        tx.session.set_bitrates(Bitrates {
            audio: 32_000,
            video_min: 100_000,
            video_max: video_max_bps,
            start: 600_000,
        });
        (tx, rx)
    }

    pub fn new(id: &Identity, server: bool, addr: &str, peer: &str) -> Self {
        let transport =
            p2pcall_transport::transport_config(Duration::from_secs(5), Duration::from_secs(20));
        let server_config = server.then(|| {
            Arc::new(
                p2pcall_transport::quinn_server_config(id, p2pcall_transport::ALPN_PEER, transport)
                    .unwrap(),
            )
        });
        let mut ecfg: EndpointConfig = p2pcall_transport::endpoint_config();
        ecfg.rng_seed(Some([u8::from(server); 32]));
        Self {
            endpoint: Endpoint::new(Arc::new(ecfg), server_config, true, None),
            conn: None,
            addr: a(addr),
            peer: a(peer),
            session: MediaSession::new(),
            bulk: None,
            bulk_rx: None,
            bulk_read: 0,
            small_sent: 0,
        }
    }

    pub fn receive(&mut self, now: Instant, payload: Vec<u8>, net: &mut VirtualNet) {
        let mut buf = Vec::new();
        match self.endpoint.handle(
            now,
            self.peer,
            None,
            None,
            BytesMut::from(&payload[..]),
            &mut buf,
        ) {
            Some(DatagramEvent::ConnectionEvent(_, ev)) => {
                if let Some((_, c)) = &mut self.conn {
                    c.handle_event(ev);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                let (ch, c) = self.endpoint.accept(incoming, now, &mut buf, None).unwrap();
                self.conn = Some((ch, c));
            }
            Some(DatagramEvent::Response(t)) => {
                net.send(self.addr, self.peer, buf[..t.size].to_vec())
            }
            None => {}
        }
    }

    /// Runs QUIC events; returns true once connected.
    pub fn events(&mut self) -> bool {
        let Some((ch, conn)) = &mut self.conn else {
            return false;
        };
        while let Some(ev) = conn.poll_endpoint_events() {
            if let Some(cev) = self.endpoint.handle_event(*ch, ev) {
                conn.handle_event(cev);
            }
        }
        let mut connected = false;
        while let Some(ev) = conn.poll() {
            match ev {
                Event::Connected => connected = true,
                Event::ConnectionLost { reason } => panic!("connection lost: {reason}"),
                Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) => {
                    self.bulk_rx = conn.streams().accept(Dir::Uni);
                }
                _ => {}
            }
        }
        connected
    }

    /// Moves datagrams between the session and QUIC, reads bulk data, transmits.
    pub fn pump(&mut self, now: Instant, net: &mut VirtualNet) {
        let Some((_, conn)) = &mut self.conn else {
            return;
        };
        if conn.poll_timeout().is_some_and(|t| t <= now) {
            conn.handle_timeout(now);
        }
        self.session.set_rtt(conn.rtt());
        self.session
            .set_connection_rx_bytes(conn.stats().udp_rx.bytes);
        while let Some(d) = conn.datagrams().recv() {
            self.session.handle_datagram(now, &d).unwrap();
        }
        self.session.handle_timeout(now);
        // Like the engine: media waits in the session's pacer (where late frames are
        // dropped whole and audio goes first), not behind QUIC's congestion window.
        while conn.datagrams().send_buffer_space() >= DATAGRAM_ROOM
            && let Some(d) = self.session.poll_transmit(now)
        {
            let _ = conn.datagrams().send(d, true);
        }
        if let Some(id) = self.bulk_rx {
            let mut recv = conn.recv_stream(id);
            if let Ok(mut chunks) = recv.read(true) {
                while let Ok(Some(c)) = chunks.next(usize::MAX) {
                    self.bulk_read += c.bytes.len() as u64;
                }
                let _ = chunks.finalize();
            }
        }
        let mut buf = Vec::new();
        while let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
            self.small_sent += u64::from(t.size <= 150);
            net.send(self.addr, self.peer, buf[..t.size].to_vec());
            buf.clear();
        }
    }

    pub fn next_timeout(&mut self, now: Instant) -> Option<Instant> {
        let q = self.conn.as_mut().and_then(|(_, c)| c.poll_timeout());
        [q, self.session.poll_timeout(now)]
            .into_iter()
            .flatten()
            .min()
    }
}

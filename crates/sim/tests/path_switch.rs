//! Virtual-clock test of path switching under a running QUIC stream.
//!
//! Two real QUIC state machines (quinn-proto, with p2pcall's TLS identities) talk through a
//! simulated network. Each side routes its QUIC packets the way the path-switching socket
//! does: to the relay while its `PathManager` says `Relay`, straight to the peer when it
//! says `Direct(addr)`; QUIC only ever sees one stable "virtual" peer address. A stream runs
//! the whole time while the direct link comes up, is cut and comes back:
//! relay -> direct -> relay -> direct, and every byte must arrive, in order, once.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use p2pcall_nat::{Path, PathEvent, PathManager};
use p2pcall_proto::packet::{self, Control};
use p2pcall_sim::{Datagram, Link, VirtualNet};
use p2pcall_transport::Identity;
use quinn_proto::{
    ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig, Event, StreamEvent, StreamId,
};

const A: &str = "192.0.2.1:1000";
const B: &str = "192.0.2.2:2000";
const RELAY: &str = "198.51.100.1:7700";
/// How each side's QUIC addresses the other (never a real address).
const VADDR_OF_A: &str = "240.0.0.1:7";
const VADDR_OF_B: &str = "240.0.0.2:7";
/// Application write pacing: 16 KiB every 10 ms (~13 Mbit/s).
const WRITE_CHUNK: usize = 16 * 1024;
const WRITE_EVERY: Duration = Duration::from_millis(10);

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(0x9E37_79B9) >> 7) as u8
}

struct Node {
    name: &'static str,
    id: Identity,
    endpoint: Endpoint,
    conn: Option<(ConnectionHandle, quinn_proto::Connection)>,
    pm: Option<PathManager>,
    addr: SocketAddr,
    peer_addr: SocketAddr,
    peer_vaddr: SocketAddr,
    validated: HashSet<SocketAddr>,
    paths: Vec<(Duration, Path)>,
    stream: Option<StreamId>,
    written: u64,
    read: u64,
    finished: bool,
    done_reading: bool,
}

impl Node {
    fn new(name: &'static str, server: bool, addr: &str, peer: &str, peer_vaddr: &str) -> Self {
        let id = Identity::generate().unwrap();
        let transport =
            || p2pcall_transport::transport_config(Duration::from_secs(5), Duration::from_secs(20));
        let server_config = server.then(|| {
            Arc::new(
                p2pcall_transport::quinn_server_config(
                    &id,
                    p2pcall_transport::ALPN_PEER,
                    transport(),
                )
                .unwrap(),
            )
        });
        let mut ecfg: EndpointConfig = p2pcall_transport::endpoint_config();
        ecfg.rng_seed(Some([u8::from(server); 32]));
        Self {
            name,
            endpoint: Endpoint::new(Arc::new(ecfg), server_config, true, None),
            id,
            conn: None,
            pm: None,
            addr: a(addr),
            peer_addr: a(peer),
            peer_vaddr: a(peer_vaddr),
            validated: HashSet::new(),
            paths: Vec::new(),
            stream: None,
            written: 0,
            read: 0,
            finished: false,
            done_reading: false,
        }
    }

    fn path(&self) -> Path {
        self.pm.as_ref().map_or(Path::Relay, PathManager::selected)
    }

    /// Sends a QUIC datagram the way the path-switching socket does.
    fn route(&self, net: &mut VirtualNet, bytes: Vec<u8>) {
        match self.path() {
            Path::Relay => net.send(self.addr, a(RELAY), bytes),
            Path::Direct(to) => net.send(self.addr, to, bytes),
        }
    }

    fn receive(&mut self, start: Instant, d: Datagram, net: &mut VirtualNet) {
        let now = d.at;
        let from_relay = d.from == a(RELAY);
        if !from_relay {
            if !packet::is_quic(d.payload[0]) {
                let pkt = Control::decode(&d.payload).unwrap();
                if let Some(pm) = &mut self.pm
                    && pm.handle_control(now, d.from, p2pcall_nat::MAIN_SOCKET, &pkt)
                {
                    self.validated.insert(d.from);
                }
                self.drain_pm(start, now, net);
                return;
            }
            // Direct QUIC is accepted only from addresses an authenticated probe validated.
            if !self.validated.contains(&d.from) {
                return;
            }
            if let Some(pm) = &mut self.pm {
                pm.note_rx(now, d.from);
            }
        }
        let mut buf = Vec::new();
        let ev = self.endpoint.handle(
            now,
            self.peer_vaddr,
            None,
            None,
            BytesMut::from(&d.payload[..]),
            &mut buf,
        );
        match ev {
            Some(DatagramEvent::ConnectionEvent(_, ev)) => {
                if let Some((_, c)) = &mut self.conn {
                    c.handle_event(ev);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                let (ch, c) = self.endpoint.accept(incoming, now, &mut buf, None).unwrap();
                self.conn = Some((ch, c));
            }
            Some(DatagramEvent::Response(t)) => self.route(net, buf[..t.size].to_vec()),
            None => {}
        }
    }

    fn drain_pm(&mut self, start: Instant, now: Instant, net: &mut VirtualNet) {
        let Some(pm) = &mut self.pm else { return };
        pm.handle_timeout(now);
        while let Some(t) = pm.poll_transmit() {
            net.send(self.addr, t.dst, t.payload);
        }
        while let Some(PathEvent::Selected { path, .. }) = pm.poll_event() {
            self.paths.push((now - start, path));
        }
    }

    /// Runs the QUIC connection, the app and the path manager at `now`.
    fn drive(
        &mut self,
        start: Instant,
        now: Instant,
        net: &mut VirtualNet,
        may_write: bool,
        finish: bool,
    ) {
        let Some((ch, conn)) = &mut self.conn else {
            return;
        };
        if conn.poll_timeout().is_some_and(|t| t <= now) {
            conn.handle_timeout(now);
        }
        while let Some(ev) = conn.poll_endpoint_events() {
            if let Some(cev) = self.endpoint.handle_event(*ch, ev) {
                conn.handle_event(cev);
            }
        }
        while let Some(ev) = conn.poll() {
            match ev {
                Event::Connected => {
                    let mut key = [0u8; 32];
                    conn.crypto_session()
                        .export_keying_material(&mut key, b"p2pcall probe key v1", b"")
                        .unwrap();
                    let mut pm = PathManager::new(self.id.id(), key, false);
                    // In the endpoint the candidates travel in the control stream's Hello.
                    pm.add_remote_candidates(now, &[self.peer_addr]);
                    self.pm = Some(pm);
                }
                Event::ConnectionLost { reason } => {
                    panic!("{}: connection lost: {reason}", self.name)
                }
                Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) => {
                    self.stream = conn.streams().accept(Dir::Uni);
                }
                _ => {}
            }
        }
        // The sender writes a paced byte pattern; the receiver checks every byte.
        if self.name == "alice" && self.pm.is_some() {
            if self.stream.is_none() {
                self.stream = conn.streams().open(Dir::Uni);
            }
            let id = self.stream.unwrap();
            if may_write && !self.finished {
                let chunk: Vec<u8> = (0..WRITE_CHUNK as u64)
                    .map(|i| pattern(self.written + i))
                    .collect();
                if let Ok(n) = conn.send_stream(id).write(&chunk) {
                    self.written += n as u64;
                }
            }
            if finish && !self.finished {
                conn.send_stream(id).finish().unwrap();
                self.finished = true;
            }
        }
        if self.name == "bob"
            && let Some(id) = self.stream
        {
            let mut recv = conn.recv_stream(id);
            if let Ok(mut chunks) = recv.read(true) {
                loop {
                    match chunks.next(usize::MAX) {
                        Ok(Some(c)) => {
                            assert_eq!(c.offset, self.read, "bytes arrive in order, once");
                            for (i, b) in c.bytes.iter().enumerate() {
                                assert_eq!(
                                    *b,
                                    pattern(self.read + i as u64),
                                    "byte {} corrupted",
                                    self.read + i as u64
                                );
                            }
                            self.read += c.bytes.len() as u64;
                        }
                        Ok(None) => {
                            self.done_reading = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let _ = chunks.finalize();
            }
        }
        let mut buf = Vec::new();
        let mut out = Vec::new();
        while let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
            out.push(buf[..t.size].to_vec());
            buf.clear();
        }
        for b in out {
            self.route(net, b);
        }
        self.drain_pm(start, now, net);
    }

    fn next_timeout(&mut self) -> Option<Instant> {
        let q = self.conn.as_mut().and_then(|(_, c)| c.poll_timeout());
        let p = self.pm.as_ref().and_then(PathManager::poll_timeout);
        [q, p].into_iter().flatten().min()
    }
}

#[test]
fn relay_direct_relay_direct_with_a_stream_running_loses_no_data() {
    let start = Instant::now();
    let mut net = VirtualNet::new(start, 42);
    // Relay legs: 20 ms each way (40 ms one-way end to end); the direct link: 5 ms.
    net.connect(a(A), a(RELAY), Link::with_delay(Duration::from_millis(20)));
    net.connect(a(B), a(RELAY), Link::with_delay(Duration::from_millis(20)));
    net.connect(a(A), a(B), Link::with_delay(Duration::from_millis(5)));

    let mut alice = Node::new("alice", false, A, B, VADDR_OF_B);
    let mut bob = Node::new("bob", true, B, A, VADDR_OF_A);
    let client_cfg = p2pcall_transport::quinn_client_config(
        &alice.id,
        Some(bob.id.id()),
        p2pcall_transport::ALPN_PEER,
        p2pcall_transport::transport_config(Duration::from_secs(5), Duration::from_secs(20)),
    )
    .unwrap();
    let (ch, conn) = alice
        .endpoint
        .connect(
            start,
            client_cfg,
            a(VADDR_OF_B),
            p2pcall_transport::PEER_SERVER_NAME,
        )
        .unwrap();
    alice.conn = Some((ch, conn));

    let cut_at = start + Duration::from_secs(10);
    let restore_at = start + Duration::from_secs(14);
    let finish_at = start + Duration::from_secs(50);
    let end = start + Duration::from_secs(60);
    let mut next_write = start;
    let (mut cut, mut restored) = (false, false);
    let mut now = start;
    let mut direct_rx_before_cut = 0;
    while now < end {
        let may_write = now >= next_write && now < finish_at;
        if may_write {
            next_write = now + WRITE_EVERY;
        }
        alice.drive(start, now, &mut net, may_write, now >= finish_at);
        bob.drive(start, now, &mut net, false, false);
        if !cut && now >= cut_at {
            direct_rx_before_cut = bob.read;
            net.set_up(a(A), a(B), false);
            cut = true;
        }
        if !restored && now >= restore_at {
            net.set_up(a(A), a(B), true);
            restored = true;
        }
        if bob.done_reading {
            break;
        }
        let mut next = [net.next_event(), alice.next_timeout(), bob.next_timeout()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(end);
        for t in [next_write, cut_at, restore_at, finish_at] {
            if t > now {
                next = next.min(t);
            }
        }
        now = next.max(now);
        net.advance_to(now);
        while let Some(d) = net.pop_due() {
            if d.to == a(RELAY) {
                // The relay forwards opaque packets to the other peer.
                let to = if d.from == a(A) { a(B) } else { a(A) };
                net.send(a(RELAY), to, d.payload);
            } else if d.to == a(A) {
                alice.receive(start, d, &mut net);
            } else {
                bob.receive(start, d, &mut net);
            }
        }
    }

    // Every byte arrived, in order, exactly once, and the stream ended cleanly.
    assert!(
        bob.done_reading,
        "stream not finished: {} of {} bytes",
        bob.read, alice.written
    );
    assert_eq!(bob.read, alice.written);
    assert!(
        alice.written > 20 << 20,
        "the stream carried real load: {}",
        alice.written
    );
    assert!(direct_rx_before_cut > 0);

    // Alice's path history: direct soon after the handshake, relay within 2 s of the cut,
    // direct again after the link came back (periodic re-probe).
    let kinds: Vec<bool> = alice
        .paths
        .iter()
        .map(|(_, p)| matches!(p, Path::Direct(_)))
        .collect();
    assert_eq!(
        kinds,
        vec![true, false, true],
        "alice's paths: {:?}",
        alice.paths
    );
    let (t_direct, _) = alice.paths[0];
    assert!(
        t_direct < Duration::from_millis(400),
        "direct after {t_direct:?}"
    );
    let (t_fallback, _) = alice.paths[1];
    let fallback = t_fallback - Duration::from_secs(10);
    assert!(
        fallback <= Duration::from_secs(2),
        "fallback took {fallback:?}"
    );
    let (t_back, _) = alice.paths[2];
    assert!(t_back > Duration::from_secs(14));
    assert_eq!(bob.paths.len(), 3, "bob's paths: {:?}", bob.paths);
    println!(
        "direct at {t_direct:?}, relay again {fallback:?} after the cut, direct again at {t_back:?}; {} MiB delivered; net {:?}",
        bob.read >> 20,
        net.stats
    );
}

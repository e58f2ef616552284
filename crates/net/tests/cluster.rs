//! Relays of one cluster behave as one network: peers registered with different relays see
//! each other's presence, signal each other and connect over a relayed path that crosses
//! relays (with a real 3-node NATS cluster, started here on free loopback ports). One NATS
//! node killed loses nothing; a relay that shuts down takes its peers out of the others' view.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;
#[path = "../../relay/tests/nats/mod.rs"]
mod nats;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use p2pcall_net::{Event, Path, PresenceEvent};
use p2pcall_proto::relay::SignalFailure;
use p2pcall_relay::Relay;
use p2pcall_relay::cluster::ClusterConfig;

async fn cluster_relay(nats: &nats::NatsCluster, first: usize, region: &str) -> Relay {
    relay_with(|cfg| {
        cfg.tcp_listen = None;
        cfg.reflect_listen = None;
        cfg.cluster = Some(ClusterConfig {
            servers: nats.urls_from(first),
            region: region.into(),
            // Empty: other relays send packets to the bound UDP address.
            public_addr: String::new(),
        });
    })
    .await
}

async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn joined(id: p2pcall_proto::PeerId) -> impl FnMut(Event) -> Option<String> {
    move |e| match e {
        Event::Presence(PresenceEvent::Joined(p)) if p.id == id => Some(p.name),
        Event::Presence(PresenceEvent::Snapshot(l)) => {
            l.into_iter().find(|p| p.id == id).map(|p| p.name)
        }
        _ => None,
    }
}

fn left(id: p2pcall_proto::PeerId) -> impl FnMut(Event) -> Option<()> {
    move |e| match e {
        Event::Presence(PresenceEvent::Left(l)) if l == id => Some(()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_of_different_relays_see_signal_and_connect_through_both() {
    let mut nats = nats::NatsCluster::start(3);
    let a = cluster_relay(&nats, 0, "a").await;
    let b = cluster_relay(&nats, 1, "b").await;
    let c = cluster_relay(&nats, 2, "c").await;
    until("the relays to see each other", || {
        [&a, &b, &c].iter().all(|r| r.cluster_members().len() == 2)
    })
    .await;

    let mut alice = peer("alice", a.udp_addr, false).await;
    let t = Instant::now();
    let mut carol = peer("carol", c.udp_addr, false).await;
    let name = alice
        .expect("carol, online at c", joined(carol.ep.id()))
        .await;
    assert_eq!(name, "carol");
    let seen_in = t.elapsed();
    carol
        .expect("alice, online at a", joined(alice.ep.id()))
        .await;

    // Signals cross relays; one to a key online nowhere fails as offline.
    alice
        .ep
        .signal(carol.ep.id(), Bytes::from_static(b"hello carol"))
        .await
        .unwrap();
    let (from, payload) = carol
        .expect("alice's signal", |e| match e {
            Event::Signal { from, payload } => Some((from, payload)),
            _ => None,
        })
        .await;
    assert_eq!((from, &payload[..]), (alice.ep.id(), &b"hello carol"[..]));
    let nobody = p2pcall_proto::PeerId::from_bytes([9; 32]);
    alice.ep.signal(nobody, Bytes::new()).await.unwrap();
    let why = alice
        .expect("the failure", |e| match e {
            Event::SignalFailed { to, reason } if to == nobody => Some(reason),
            _ => None,
        })
        .await;
    assert_eq!(why, SignalFailure::Offline);

    // A relayed connection whose packets cross from relay a to relay c and back.
    let conn = alice.ep.connect(carol.ep.id()).await.unwrap();
    assert_eq!(conn.path(), Path::Relay);
    let incoming = carol
        .expect("alice's connection", |e| match e {
            Event::Incoming(c) => Some(c),
            _ => None,
        })
        .await;
    assert_eq!(incoming.peer(), alice.ep.id());
    assert_eq!(incoming.safety_number(), conn.safety_number());
    let _incoming = echo_through(&conn, incoming, 1_000_000).await;
    let (am, cm) = (a.metrics(), c.metrics());
    assert!(am.hops_out.load(Relaxed) > 500 && am.hops_in.load(Relaxed) > 100);
    assert!(cm.hops_in.load(Relaxed) > 500 && cm.hops_out.load(Relaxed) > 100);
    assert_eq!(b.metrics().hops_in.load(Relaxed), 0, "b is not on the way");

    // A rename reaches the other relay's subscribers as an update.
    carol.ep.set_name("caroline".into()).await.unwrap();
    let renamed = alice
        .expect("carol's new name", |e| match e {
            Event::Presence(PresenceEvent::Updated(p)) if p.id == carol.ep.id() => Some(p.name),
            _ => None,
        })
        .await;
    assert_eq!(renamed, "caroline");

    // One NATS node dies (the one relay a talks to): a moves to another, nothing is lost.
    nats.kill(0);
    let mut dave = peer("dave", c.udp_addr, false).await;
    alice
        .expect(
            "dave, who came while a NATS node died",
            joined(dave.ep.id()),
        )
        .await;
    dave.expect("alice, seen from c", joined(alice.ep.id()))
        .await;
    alice
        .ep
        .signal(dave.ep.id(), Bytes::from_static(b"still here"))
        .await
        .unwrap();
    dave.expect("alice's signal after the NATS node died", |e| match e {
        Event::Signal { from, .. } if from == alice.ep.id() => Some(()),
        _ => None,
    })
    .await;
    assert!(
        (a.cluster_members().len(), c.cluster_members().len()) == (2, 2),
        "no relay fell out of the cluster"
    );

    // Carol leaves; then relay c shuts down and dave goes with it.
    let carol_id = carol.ep.id();
    carol.ep.close().await;
    alice.expect("carol left", left(carol_id)).await;
    let dave_id = dave.ep.id();
    c.shutdown().await;
    alice.expect("dave, gone with relay c", left(dave_id)).await;
    eprintln!("cross-relay presence: carol seen at a {seen_in:?} after her login started");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_moves_to_another_relay_of_the_cluster_and_its_relayed_connection_recovers() {
    let nats = nats::NatsCluster::start(1);
    let a = cluster_relay(&nats, 0, "a").await;
    let b = cluster_relay(&nats, 0, "b").await;
    until("the relays to see each other", || {
        a.cluster_members().len() == 1 && b.cluster_members().len() == 1
    })
    .await;
    // Alice is configured with relay b; carol with relay a.
    let mut alice = peer("alice", b.udp_addr, false).await;
    let mut carol = peer("carol", a.udp_addr, false).await;
    alice.expect("carol", joined(carol.ep.id())).await;
    let conn = alice.ep.connect(carol.ep.id()).await.unwrap();
    let _incoming = carol
        .expect("alice's connection", |e| match e {
            Event::Incoming(c) => Some(c),
            _ => None,
        })
        .await;
    conn.ping(0, 100).await.unwrap();

    // Relay b goes away: alice registers with a (the relay b listed) at once.
    let t = Instant::now();
    b.shutdown().await;
    let (addr, primary) = alice
        .expect("alice on relay a", |e| match e {
            Event::RelayConnected { addr, primary, .. } => Some((addr, primary)),
            _ => None,
        })
        .await;
    let moved = t.elapsed();
    assert_eq!((addr, primary), (a.udp_addr, false));
    assert!(moved < Duration::from_secs(5), "moved in {moved:?}");
    // The connection carries on over the relay path through relay a, without redialing.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut seq = 1;
    let recovered = loop {
        if conn.ping(seq, 100).await.is_ok() {
            break t.elapsed();
        }
        seq += 1;
        assert!(Instant::now() < deadline, "no answer through relay a");
    };
    assert_eq!(conn.path(), Path::Relay);
    assert!(a.online() == 2);
    eprintln!("moved to relay a in {moved:?}; relayed connection answering {recovered:?} after");
    a.shutdown().await;
}

/// What a hostile member of the cluster learns from NATS (everything relays share there).
#[derive(Default)]
struct Overheard {
    hops: std::collections::HashMap<p2pcall_proto::PeerId, p2pcall_proto::cluster::Hop>,
    routes: std::collections::HashMap<p2pcall_proto::PeerId, u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_relay_in_the_cluster_can_misroute_but_not_read_or_impersonate() {
    use futures_util::StreamExt as _;
    use p2pcall_proto::cluster::wire::{PRESENCE_WILDCARD, inbox_subject};
    use p2pcall_proto::cluster::{ALIVE_SUBJECT, Heartbeat, Hop, RelayMsg, RemotePeer};
    use p2pcall_proto::packet::{RELAY_HOP, RelayHop};
    use std::sync::{Arc, Mutex};

    let nats = nats::NatsCluster::start(1);
    let a = cluster_relay(&nats, 0, "a").await;
    let c = cluster_relay(&nats, 0, "c").await;
    until("the relays to see each other", || {
        a.cluster_members().len() == 1 && c.cluster_members().len() == 1
    })
    .await;
    let mut alice = peer("alice", a.udp_addr, false).await;
    let bob = peer("bob", c.udp_addr, false).await;
    let mut mallory = peer("mallory", c.udp_addr, false).await;
    alice.expect("bob", joined(bob.ep.id())).await;
    let before = alice.ep.connect(bob.ep.id()).await.unwrap();
    before.ping(0, 0).await.unwrap();

    // The hostile relay: a member of the cluster that overhears everything on NATS.
    let h_id = p2pcall_proto::PeerId::from_bytes([0x66; 32]);
    let h_sock = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let h_hop = Hop {
        addr: h_sock.local_addr().unwrap(),
        token: [0x66; 8],
    };
    let nc = async_nats::connect(nats.urls_from(0)[0].as_str())
        .await
        .unwrap();
    let mut inbox = nc.subscribe(inbox_subject(&h_id)).await.unwrap();
    let mut alive = nc.subscribe(ALIVE_SUBJECT).await.unwrap();
    let _presence = nc.subscribe(PRESENCE_WILDCARD).await.unwrap();
    let heard = Arc::new(Mutex::new(Overheard::default()));
    for relay in [a.id, c.id] {
        let ask = RelayMsg::SnapshotRequest {
            relay: h_id,
            request: 1,
        }
        .encode();
        nc.publish(inbox_subject(&relay), ask.into()).await.unwrap();
    }
    // It claims Bob and Alice registered with it later than anywhere else.
    let lie = |p: &Peer, route| RemotePeer {
        info: p2pcall_proto::relay::PeerInfo {
            id: p.ep.id(),
            name: "bob".into(),
            online_since_ms: u64::MAX / 2,
        },
        route,
    };
    let claims = vec![lie(&bob, 1), lie(&alice, 2)];
    {
        let (nc, heard) = (nc.clone(), heard.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(300));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let hb = Heartbeat { relay: h_id, region: "evil".into(), public_addr: String::new(), peers: 2, leaving: false, epoch: 1, seq: 0, hop: Some(h_hop) };
                        let _ = nc.publish(ALIVE_SUBJECT, hb.encode().into()).await;
                    }
                    Some(m) = alive.next() => {
                        if let Ok(hb) = Heartbeat::decode(&m.payload) && let Some(hop) = hb.hop {
                            heard.lock().unwrap().hops.insert(hb.relay, hop);
                        }
                    }
                    Some(m) = inbox.next() => match RelayMsg::decode(&m.payload) {
                        Ok(RelayMsg::SnapshotRequest { relay, request }) => {
                            let part = RelayMsg::SnapshotPart { relay: h_id, epoch: 1, seq: 0, request, part: 0, parts: 1, peers: claims.clone() };
                            let _ = nc.publish(inbox_subject(&relay), part.encode().into()).await;
                        }
                        Ok(RelayMsg::SnapshotPart { peers, .. }) => {
                            let mut h = heard.lock().unwrap();
                            for p in peers {
                                h.routes.insert(p.info.id, p.route);
                            }
                        }
                        _ => {}
                    },
                }
            }
        });
    }
    // Relay a now sends Bob's packets to it: it passes them to Mallory (at relay c), and
    // Mallory's answers back to Alice as if from Bob, looking in every packet for the secret.
    let (b_id, m_id, a_id) = (bob.ep.id(), mallory.ep.id(), alice.ep.id());
    let seen_secret = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let diverted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let (heard, seen, diverted) = (heard.clone(), seen_secret.clone(), diverted.clone());
        let (a_id_relay, c_id_relay) = (a.id, c.id);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, _)) = h_sock.recv_from(&mut buf).await {
                let Ok(hop) = RelayHop::decode(&buf[..n]) else {
                    continue;
                };
                if hop.payload.windows(6).any(|w| w == b"SECRET") {
                    seen.store(true, Relaxed);
                }
                let (to_relay, to, from) = match hop.route {
                    1 if hop.from == a_id => (c_id_relay, m_id, a_id),
                    2 if hop.from == m_id => (a_id_relay, a_id, b_id),
                    _ => continue,
                };
                let found = {
                    let h = heard.lock().unwrap();
                    (h.hops.get(&to_relay).copied(), h.routes.get(&to).copied())
                };
                let (Some(dst), Some(route)) = found else {
                    continue;
                };
                let mut out = Vec::with_capacity(n);
                RelayHop::write_header(&mut out, &dst.token, route, &from);
                out.extend_from_slice(hop.payload);
                debug_assert_eq!(out[0], RELAY_HOP);
                diverted.fetch_add(1, Relaxed);
                let _ = h_sock.send_to(&out, dst.addr).await;
            }
        });
    }
    alice
        .expect("the lie about Bob to reach alice", |e| match e {
            Event::Presence(PresenceEvent::Updated(p))
                if p.id == b_id && p.online_since_ms == u64::MAX / 2 =>
            {
                Some(())
            }
            _ => None,
        })
        .await;
    until("the hostile relay to know its routes", || {
        heard.lock().unwrap().routes.len() >= 3
    })
    .await;

    // What Alice sends Bob on her connection now goes through the hostile relay: unreadable.
    let (mut send, _recv) = before.quic().open_bi().await.unwrap();
    let _ = send.write_all(b"SECRET for bob only").await;
    let _ = send.finish();
    // A new dial reaches Mallory, whose key is not Bob's: refused, nothing sent.
    let dial = alice.ep.connect(b_id).await;
    match dial {
        Err(p2pcall_net::NetError::PeerKeyMismatch { expected, got }) => {
            assert_eq!((expected, got), (b_id, Some(m_id)));
        }
        other => panic!("the impostor's answer was not refused: {other:?}"),
    }
    assert!(
        diverted.load(Relaxed) > 0,
        "the hostile relay carried packets"
    );
    assert!(
        !seen_secret.load(Relaxed),
        "the hostile relay read the secret"
    );
    let got_in = tokio::time::timeout(Duration::from_millis(500), mallory.events.recv()).await;
    assert!(
        !matches!(got_in, Ok(Some(Event::Incoming(_)))),
        "mallory got a connection"
    );
    a.shutdown().await;
    c.shutdown().await;
}

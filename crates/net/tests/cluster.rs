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
    let echo = tokio::spawn(async move {
        let (mut send, mut recv) = incoming.quic().accept_bi().await.unwrap();
        let data = recv.read_to_end(4 << 20).await.unwrap();
        send.write_all(&data).await.unwrap();
        send.finish().unwrap();
        incoming
    });
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    let (mut send, mut recv) = conn.quic().open_bi().await.unwrap();
    send.write_all(&data).await.unwrap();
    send.finish().unwrap();
    assert_eq!(recv.read_to_end(4 << 20).await.unwrap(), data);
    let _incoming = echo.await.unwrap();
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

//! Parked relay sessions: an idle peer stays registered without a connection, is woken by a
//! dial, receives relayed packets while parked, sees presence late but sees it, and is
//! forgotten when its keep-alives stop; a relay that lost it tells it to register again.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::*;
use p2pcall_net::{Event, Identity, Path, PresenceEvent, RelayConfig};

fn parking(addr: std::net::SocketAddr) -> RelayConfig {
    RelayConfig {
        park_after: Some(Duration::from_millis(300)),
        ..relay_cfg(addr)
    }
}

async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_peer_parks_is_woken_by_a_dial_and_gets_relayed_packets_while_parked() {
    let relay = relay_with(|c| c.park_keepalive = Duration::from_millis(500)).await;
    let addr = relay.udp_addr;
    let m = relay.metrics();
    let mut alice = peer_with("alice", Identity::generate().unwrap(), parking(addr), false).await;
    alice.ep.wait_relay(WAIT).await.unwrap();
    let mut bob = peer("bob", addr, false).await;
    let alice_id = alice.ep.id();
    wait_until("bob sees alice", || {
        bob.ep.online_peers().iter().any(|p| p.id == alice_id)
    })
    .await;
    wait_until("alice parked", || m.peers_parked.load(Relaxed) == 1).await;
    assert_eq!(relay.online(), 2, "a parked peer is online");

    // Bob dials her: the relayed handshake reaches her parked.
    let t = Instant::now();
    let conn = bob.ep.connect(alice_id).await.unwrap();
    let incoming = alice
        .expect("incoming", |e| match e {
            Event::Incoming(c) => Some(c),
            _ => None,
        })
        .await;
    eprintln!("dialing a parked peer took {:?}", t.elapsed());
    assert_eq!(conn.path(), Path::Relay);
    assert_eq!(
        m.peers_parked.load(Relaxed),
        1,
        "a relayed dial needs no wake"
    );

    // A signal waits at the relay, which wakes her for it.
    let t = Instant::now();
    bob.ep
        .signal(alice_id, bytes::Bytes::from_static(b"knock"))
        .await
        .unwrap();
    alice
        .expect("the signal", |e| match e {
            Event::Signal { from, payload } if from == bob.ep.id() => {
                (&payload[..] == b"knock").then_some(())
            }
            _ => None,
        })
        .await;
    eprintln!("a signal to a parked peer took {:?}", t.elapsed());
    assert!(m.wakes.load(Relaxed) >= 1 && m.unparks.load(Relaxed) >= 1);

    // She parks again; the relayed connection keeps working (the data path needs no
    // connection to the relay) and does not wake her.
    wait_until("alice parked again", || {
        m.parks.load(Relaxed) >= 2 && m.peers_parked.load(Relaxed) == 1
    })
    .await;
    let unparks = m.unparks.load(Relaxed);
    let _incoming = echo_through(&conn, incoming, 1_000_000).await;
    assert_eq!(m.unparks.load(Relaxed), unparks, "packets do not wake her");
    assert_eq!(m.peers_parked.load(Relaxed), 1);

    // Presence reaches her parked (late, within the relay's spread of a few seconds).
    let carol = peer("carol", addr, false).await;
    let carol_id = carol.ep.id();
    alice
        .expect("carol joined", |e| match e {
            Event::Presence(PresenceEvent::Joined(p)) if p.id == carol_id => Some(()),
            _ => None,
        })
        .await;

    // A rename while parked brings her back, and the others see the new name.
    wait_until("alice parked again", || m.peers_parked.load(Relaxed) == 1).await;
    alice.ep.set_name("alicia".into()).await.unwrap();
    bob.expect("alice renamed", |e| match e {
        Event::Presence(PresenceEvent::Updated(p)) if p.id == alice_id => {
            (p.name == "alicia").then_some(())
        }
        _ => None,
    })
    .await;

    // Gone without a word (no keep-alives): forgotten after four keep-alive periods.
    wait_until("alice parked again", || m.peers_parked.load(Relaxed) == 1).await;
    alice.ep.close().await;
    drop(alice);
    let t = Instant::now();
    bob.expect("alice left", |e| match e {
        Event::Presence(PresenceEvent::Left(id)) if id == alice_id => Some(()),
        _ => None,
    })
    .await;
    eprintln!("a silent parked peer was forgotten after {:?}", t.elapsed());
    assert_eq!(m.peers_parked.load(Relaxed), 0);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_lost_a_parked_session_tells_its_peer_to_register_again() {
    let relay = relay_with(|c| c.park_keepalive = Duration::from_millis(300)).await;
    let addr = relay.udp_addr;
    let alice = peer_with("alice", Identity::generate().unwrap(), parking(addr), false).await;
    alice.ep.wait_relay(WAIT).await.unwrap();
    let m = relay.metrics();
    wait_until("alice parked", || m.peers_parked.load(Relaxed) == 1).await;

    // The relay forgets her (as a restarted relay would have): her next keep-alive is
    // answered `ParkGone`, and she registers again, a new session.
    relay.simulate_logout(&alice.ep.id());
    assert_eq!(relay.online(), 0);
    let t = Instant::now();
    wait_until("alice registered again", || relay.online() == 1).await;
    eprintln!(
        "registered again {:?} after the relay forgot her",
        t.elapsed()
    );
    assert_eq!(m.sessions_total.load(Relaxed), 2);
    assert_eq!(
        m.unparks.load(Relaxed),
        0,
        "a new registration, not the parked one"
    );
    relay.shutdown().await;
}

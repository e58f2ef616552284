//! In-process relay and peers on loopback: registration, presence, signaling, relayed
//! connections, refusals, relay restart, TCP fallback.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use p2pcall_net::{Event, Identity, NetError, Path, PresenceEvent};
use p2pcall_proto::relay::{RefuseReason, SignalFailure};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peers_presence_signaling_and_a_relayed_connection() {
    let relay = relay().await;
    let mut a = peer("alice", relay.udp_addr, false).await;
    let snapshot = a
        .expect("alice's snapshot", |e| match e {
            Event::Presence(PresenceEvent::Snapshot(l)) => Some(l),
            _ => None,
        })
        .await;
    assert!(snapshot.is_empty(), "alice is alone: {snapshot:?}");

    let mut b = peer("bob", relay.udp_addr, false).await;
    let joined = a
        .expect("bob joined", |e| match e {
            Event::Presence(PresenceEvent::Joined(p)) => Some(p),
            _ => None,
        })
        .await;
    assert_eq!((joined.id, joined.name.as_str()), (b.ep.id(), "bob"));
    let b_snapshot = b
        .expect("bob's snapshot", |e| match e {
            Event::Presence(PresenceEvent::Snapshot(l)) => Some(l),
            _ => None,
        })
        .await;
    assert_eq!(
        b_snapshot.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![a.ep.id()]
    );

    let c = peer("carol", relay.udp_addr, false).await;
    let c_id = c.ep.id();
    for p in [&mut a, &mut b] {
        p.expect("carol joined", |e| match e {
            Event::Presence(PresenceEvent::Joined(p)) if p.id == c_id => Some(()),
            _ => None,
        })
        .await;
    }
    // A rename is an incremental update, not a new list.
    b.ep.set_name("robert".into()).await.unwrap();
    let updated = a
        .expect("bob renamed", |e| match e {
            Event::Presence(PresenceEvent::Updated(p)) => Some(p),
            Event::Presence(PresenceEvent::Snapshot(_)) => panic!("no full list on a change"),
            _ => None,
        })
        .await;
    assert_eq!(updated.name, "robert");

    c.ep.close().await;
    for p in [&mut a, &mut b] {
        p.expect("carol left", |e| match e {
            Event::Presence(PresenceEvent::Left(id)) if id == c_id => Some(()),
            _ => None,
        })
        .await;
    }
    assert_eq!(a.ep.online_peers().len(), 1);

    // Signaling: delivered to an online peer, refused for an offline one.
    a.ep.signal(b.ep.id(), Bytes::from_static(b"offer"))
        .await
        .unwrap();
    let (from, payload) = b
        .expect("signal", |e| match e {
            Event::Signal { from, payload } => Some((from, payload)),
            _ => None,
        })
        .await;
    assert_eq!((from, &payload[..]), (a.ep.id(), &b"offer"[..]));
    a.ep.signal(c_id, Bytes::from_static(b"anyone?"))
        .await
        .unwrap();
    let reason = a
        .expect("signal failure", |e| match e {
            Event::SignalFailed { to, reason } if to == c_id => Some(reason),
            _ => None,
        })
        .await;
    assert_eq!(reason, SignalFailure::Offline);
    // Above the signal rate, signals fail with a reason and the session stays up.
    for _ in 0..60 {
        a.ep.signal(b.ep.id(), Bytes::from_static(b"spam"))
            .await
            .unwrap();
    }
    a.expect("rate-limited signal", |e| match e {
        Event::SignalFailed {
            reason: SignalFailure::RateLimited,
            ..
        } => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(relay.online(), 2, "the sender is still online");

    // End-to-end connection over the relay path: a reliable stream and datagrams.
    let conn = a.ep.connect(b.ep.id()).await.unwrap();
    assert_eq!(conn.path(), Path::Relay);
    let incoming = b
        .expect("incoming connection", |e| match e {
            Event::Incoming(c) => Some(c),
            _ => None,
        })
        .await;
    assert_eq!(incoming.peer(), a.ep.id());
    assert_eq!(incoming.safety_number(), conn.safety_number());
    let incoming = echo_through(&conn, incoming, 2_000_000).await;
    for seq in 0..5 {
        conn.ping(seq, 900).await.unwrap();
    }
    let stats = conn.stats();
    assert_eq!(stats.tx_direct, 0);
    assert!(stats.tx_relay > 2_000_000, "{stats:?}");
    let m = relay.metrics();
    assert!(m.packets_relayed.load(std::sync::atomic::Ordering::Relaxed) > 1000);
    // The application's own datagrams reach the other side.
    let mut dgrams = incoming.take_datagrams().unwrap();
    conn.quic()
        .send_datagram(Bytes::from_static(b"\xffmedia"))
        .unwrap();
    let d = tokio::time::timeout(WAIT, dgrams.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&d[..], b"\xffmedia");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_presenting_another_key_is_refused() {
    // Whoever answers a dial must prove the exact key that was dialed: a server holding
    // another key fails the TLS handshake (the relay cannot impersonate a peer either).
    let server_id = Identity::generate().unwrap();
    let client_id = Identity::generate().unwrap();
    let expected = Identity::generate().unwrap().id();
    let transport =
        || p2pcall_transport::transport_config(Duration::from_secs(5), Duration::from_secs(10));
    let server_cfg = p2pcall_transport::quinn_server_config(
        &server_id,
        p2pcall_transport::ALPN_PEER,
        transport(),
    )
    .unwrap();
    let server = quinn::Endpoint::server(server_cfg, loopback()).unwrap();
    let server_addr = server.local_addr().unwrap();
    let client = quinn::Endpoint::client(loopback()).unwrap();
    let cfg = p2pcall_transport::quinn_client_config(
        &client_id,
        Some(expected),
        p2pcall_transport::ALPN_PEER,
        transport(),
    )
    .unwrap();
    let accept = tokio::spawn(async move {
        let inc = server.accept().await.unwrap();
        inc.await.map(|_| ())
    });
    let err = client
        .connect_with(cfg, server_addr, p2pcall_transport::PEER_SERVER_NAME)
        .unwrap()
        .await
        .unwrap_err();
    // The error names the key that was presented instead (the user must see both).
    assert!(
        p2pcall_transport::presented_key(&err.to_string()).is_some(),
        "{err}"
    );
    assert!(accept.await.unwrap().is_err());

    // The right key is accepted, and each side learns the other's key.
    let cfg = p2pcall_transport::quinn_client_config(
        &client_id,
        Some(server_id.id()),
        p2pcall_transport::ALPN_PEER,
        transport(),
    )
    .unwrap();
    let server_cfg = p2pcall_transport::quinn_server_config(
        &server_id,
        p2pcall_transport::ALPN_PEER,
        transport(),
    )
    .unwrap();
    let server = quinn::Endpoint::server(server_cfg, loopback()).unwrap();
    let addr = server.local_addr().unwrap();
    let accept = tokio::spawn(async move { server.accept().await.unwrap().await.unwrap() });
    let conn = client
        .connect_with(cfg, addr, p2pcall_transport::PEER_SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    assert_eq!(p2pcall_transport::peer_id(&conn), Some(server_id.id()));
    assert_eq!(
        p2pcall_transport::peer_id(&accept.await.unwrap()),
        Some(client_id.id())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_a_key_that_is_not_online_fails_cleanly() {
    let relay = relay().await;
    let a = peer("alice", relay.udp_addr, false).await;
    let nobody = Identity::generate().unwrap().id();
    let err = tokio::time::timeout(Duration::from_secs(15), a.ep.connect(nobody))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, NetError::Timeout(_) | NetError::Connection(_)),
        "{err}"
    );
    assert!(
        relay
            .metrics()
            .drops(p2pcall_relay::metrics::DropReason::UnknownDestination)
            > 0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_and_duplicate_login_are_refused_for_good() {
    let relay = relay_with(|c| c.token = Some("s3cret".into())).await;
    let mut bad = peer_with(
        "eve",
        Identity::generate().unwrap(),
        relay_cfg(relay.udp_addr),
        false,
    )
    .await;
    let reason = bad
        .expect("refusal", |e| match e {
            Event::RelayRefused { reason, .. } => Some(reason),
            _ => None,
        })
        .await;
    assert_eq!(reason, RefuseReason::BadToken);

    let id = Identity::generate().unwrap();
    let mut cfg = relay_cfg(relay.udp_addr);
    cfg.token = Some("s3cret".into());
    let mut first = peer_with("a1", id.clone(), cfg.clone(), false).await;
    first.ep.wait_relay(WAIT).await.unwrap();
    let second = peer_with("a2", id, cfg, false).await;
    second.ep.wait_relay(WAIT).await.unwrap();
    let reason = first
        .expect("replaced", |e| match e {
            Event::RelayRefused { reason, .. } => Some(reason),
            _ => None,
        })
        .await;
    assert_eq!(reason, RefuseReason::Replaced);
    assert_eq!(relay.online(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_restart_reregisters_while_direct_connections_keep_running() {
    // A relay keeps its key across restarts (peers accept no other one once they met it).
    let key = Identity::generate().unwrap();
    let mut cfg = p2pcall_relay::RelayConfig::new(loopback());
    cfg.reflect_listen = None;
    let relay = p2pcall_relay::Relay::start(&key, cfg).await.unwrap();
    let addr = relay.udp_addr;
    let mut a = peer("alice", addr, true).await;
    let mut b = peer("bob", addr, true).await;
    let conn = a.ep.connect(b.ep.id()).await.unwrap();
    let path = conn
        .wait_path(WAIT, |p| matches!(p, Path::Direct(_)))
        .await
        .expect("loopback candidates give a direct path");
    assert!(matches!(path, Path::Direct(_)));
    b.expect("incoming", |e| {
        matches!(e, Event::Incoming(_)).then_some(())
    })
    .await;

    relay.shutdown().await;
    // Each peer's next RelayConnected must come after its RelayDisconnected: an earlier one
    // may still be queued (`wait_relay` returns before the event is), and matching it would
    // look like a re-registration that has not happened.
    for p in [&mut a, &mut b] {
        p.expect("relay lost", |e| {
            matches!(e, Event::RelayDisconnected { .. }).then_some(())
        })
        .await;
    }
    // The direct path does not need the relay.
    for seq in 0..5 {
        conn.ping(seq, 0)
            .await
            .expect("direct path keeps working without the relay");
    }
    assert!(matches!(conn.path(), Path::Direct(_)));

    // Same address, new process: both peers come back on their own.
    let relay = relay_with_addr(&key, addr).await;
    for p in [&mut a, &mut b] {
        p.expect("re-registered", |e| {
            matches!(e, Event::RelayConnected { .. }).then_some(())
        })
        .await;
    }
    assert_eq!(relay.online(), 2);
    conn.ping(99, 0).await.unwrap();
}

async fn relay_with_addr(key: &Identity, addr: std::net::SocketAddr) -> p2pcall_relay::Relay {
    // The old socket may take a moment to be released.
    for _ in 0..50 {
        let mut cfg = p2pcall_relay::RelayConfig::new(addr);
        cfg.reflect_listen = None;
        if let Ok(r) = p2pcall_relay::Relay::start(key, cfg).await {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("could not restart the relay on {addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_fallback_carries_control_and_data() {
    let relay = relay().await;
    let mut cfg = relay_cfg(relay.udp_addr);
    cfg.force_tcp = true;
    let a = peer_with("alice-tcp", Identity::generate().unwrap(), cfg, false).await;
    let transport = a.ep.wait_relay(WAIT).await.unwrap();
    assert_eq!(transport, p2pcall_net::RelayTransport::Tcp);
    let b = peer("bob-udp", relay.udp_addr, false).await;
    // TCP peer dials the UDP peer, and the other way round.
    let conn = a.ep.connect(b.ep.id()).await.unwrap();
    for seq in 0..5 {
        conn.ping(seq, 500).await.unwrap();
    }
    let (mut send, mut recv) = conn.quic().open_bi().await.unwrap();
    let data = vec![7u8; 300_000];
    let mut b = b;
    let incoming = b
        .expect("incoming", |e| match e {
            Event::Incoming(c) => Some(c),
            _ => None,
        })
        .await;
    let echo = tokio::spawn(async move {
        let (mut s, mut r) = incoming.quic().accept_bi().await.unwrap();
        let d = r.read_to_end(1 << 20).await.unwrap();
        s.write_all(&d).await.unwrap();
        s.finish().unwrap();
        incoming
    });
    send.write_all(&data).await.unwrap();
    send.finish().unwrap();
    assert_eq!(recv.read_to_end(1 << 20).await.unwrap(), data);
    let incoming = echo.await.unwrap();
    let back = b.ep.connect(a.ep.id()).await.unwrap();
    back.ping(1, 0).await.unwrap();
    drop(incoming);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_on_both_relay_ports_reports_our_socket_address() {
    let relay = relay().await;
    let a = peer("alice", relay.udp_addr, false).await;
    let main = a.ep.reflect(relay.udp_addr).await.unwrap();
    let second = a.ep.reflect(relay.reflect_addr.unwrap()).await.unwrap();
    assert_eq!(main.port(), a.ep.local_port());
    assert_eq!(
        main, second,
        "no NAT on loopback: both ports see the same mapping"
    );
    assert_eq!(
        a.ep.observed_addr().map(|o| o.port()),
        Some(a.ep.local_port())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_enforced_and_counted() {
    use p2pcall_relay::metrics::{Close, DropReason};
    let relay = relay_with(|c| {
        c.max_peers = 2;
        c.packet_rate = 200.0;
    })
    .await;
    let a = peer("alice", relay.udp_addr, false).await;
    let mut b = peer("bob", relay.udp_addr, false).await;
    // The third peer is told the relay is full (and keeps retrying with backoff).
    let (c, reason) = refused_carol(&relay).await;
    assert!(reason.contains("full"), "{reason}");
    assert!(relay.metrics().closes(Close::ServerFull) >= 1);

    // A bulk stream far above 200 packets/s is throttled by the relay, not passed through.
    let conn = a.ep.connect(b.ep.id()).await.unwrap();
    let incoming = b
        .expect("incoming", |e| match e {
            Event::Incoming(c) => Some(c),
            _ => None,
        })
        .await;
    let reader = tokio::spawn(async move {
        let mut r = incoming.quic().accept_uni().await.unwrap();
        r.read_to_end(1 << 20).await.unwrap().len()
    });
    let mut s = conn.quic().open_uni().await.unwrap();
    s.write_all(&vec![1u8; 400_000]).await.unwrap();
    s.finish().unwrap();
    assert_eq!(
        reader.await.unwrap(),
        400_000,
        "QUIC recovers every throttled packet"
    );
    assert!(relay.metrics().drops(DropReason::RateLimited) > 0);
    c.ep.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_dialing_at_once_get_two_working_connections_that_go_direct() {
    let relay = relay().await;
    let a = peer("alice", relay.udp_addr, true).await;
    let b = peer("bob", relay.udp_addr, true).await;
    let (ab, ba) = tokio::join!(a.ep.connect(b.ep.id()), b.ep.connect(a.ep.id()));
    let (ab, ba) = (ab.unwrap(), ba.unwrap());
    // Each side also accepted the other's connection; the route follows the newest, and
    // both QUIC connections keep working on it.
    for (name, c) in [("alice's", &ab), ("bob's", &ba)] {
        let direct = c.wait_path(WAIT, |p| matches!(p, Path::Direct(_))).await;
        assert!(direct.is_some(), "{name} connection never went direct");
        for seq in 0..5 {
            c.ping(seq, 0)
                .await
                .unwrap_or_else(|e| panic!("{name} ping {seq}: {e}"));
        }
    }
    assert!(ab.quic().close_reason().is_none() && ba.quic().close_reason().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_per_address_are_capped_and_handshake_spikes_get_a_retry() {
    use p2pcall_relay::metrics::Close;
    // Every handshake must prove its address first (as when handshakes spike): peers still
    // connect, through a QUIC Retry; and one address gets at most two sessions.
    let relay = relay_with(|c| {
        c.max_per_address = 2;
        c.retry_above = 0;
    })
    .await;
    let a = peer("alice", relay.udp_addr, false).await;
    let b = peer("bob", relay.udp_addr, false).await;
    assert!(
        relay
            .metrics()
            .retries
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
    let (mut c, reason) = refused_carol(&relay).await;
    assert!(reason.contains("your address"), "{reason}");
    assert!(relay.metrics().closes(Close::ServerFull) >= 1);
    // A session leaving makes room for another from the same address.
    b.ep.close().await;
    c.expect("carol registers once bob left", |e| match e {
        Event::RelayConnected { .. } => Some(()),
        _ => None,
    })
    .await;
    drop(a);
}

/// A third peer, carol, logging in and told why the relay will not have her.
async fn refused_carol(relay: &p2pcall_relay::Relay) -> (Peer, String) {
    let mut c = peer_with(
        "carol",
        Identity::generate().unwrap(),
        relay_cfg(relay.udp_addr),
        false,
    )
    .await;
    let reason = c
        .expect("a refusal", |e| match e {
            Event::RelayDisconnected { reason, .. } => Some(reason),
            _ => None,
        })
        .await;
    (c, reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_port_of_eight_sockets_serves_every_flow() {
    // The kernel spreads the flows over the port's sockets by their addresses: with six
    // peers on eight sockets, all six landing on quinn's own socket has a chance of 1 in
    // 262,144, so the others' hand-over of QUIC packets and their forwarding are exercised.
    // No TCP fallback: every session must come over the UDP port.
    let relay = relay_with(|c| {
        c.udp_sockets = 8;
        c.tcp_listen = None;
    })
    .await;
    let mut peers = Vec::new();
    for n in 0..6 {
        peers.push(peer(&format!("p{n}"), relay.udp_addr, false).await);
    }
    assert_eq!(relay.online(), 6);
    for pair in peers.chunks_mut(2) {
        let [a, b] = pair else { unreachable!() };
        let conn = a.ep.connect(b.ep.id()).await.unwrap();
        assert_eq!(conn.path(), Path::Relay);
        let incoming = b
            .expect("incoming", |e| match e {
                Event::Incoming(c) => Some(c),
                _ => None,
            })
            .await;
        echo_through(&conn, incoming, 300_000).await;
    }
    relay.shutdown().await;
}

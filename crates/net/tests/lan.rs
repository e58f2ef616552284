//! LAN-only mode on real sockets: two endpoints with no relay find each other by mDNS, connect,
//! switch names, and see each other leave.
//!
//! mDNS is multicast, and tests must not send traffic off this machine: each test re-runs
//! itself inside a private network namespace (`unshare --net`) holding only a loopback
//! interface. Needs root (CI runs as root); elsewhere it says it was skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::net::SocketAddr;
use std::time::Duration;

use p2pcall_net::{Endpoint, EndpointConfig, Event, Identity, LanConfig, Path, PresenceEvent};
use tokio::sync::mpsc;

fn lan_cfg(name: &str) -> EndpointConfig {
    EndpointConfig {
        identity: Identity::generate().unwrap(),
        name: name.into(),
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        relay: None,
        direct_paths: true,
        port_mapping: false,
        lan: Some(LanConfig {
            interfaces: vec!["lo".into()],
            ..LanConfig::default()
        }),
    }
}

async fn next_presence(rx: &mut mpsc::Receiver<Event>, within: Duration) -> PresenceEvent {
    tokio::time::timeout(within, async {
        loop {
            match rx.recv().await.expect("endpoint alive") {
                Event::Presence(p) => return p,
                _ => continue,
            }
        }
    })
    .await
    .expect("a presence event in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lan_peers_find_each_other_connect_rename_and_leave() {
    if !p2pcall_netlab::rerun_in_private_netns("lan_peers_find_each_other_connect_rename_and_leave")
    {
        return;
    }
    let (a, mut a_rx) = Endpoint::bind(lan_cfg("alice")).await.unwrap();
    let (b, mut b_rx) = Endpoint::bind(lan_cfg("bob")).await.unwrap();
    assert!(a.is_lan());
    // The first snapshot comes after the settle time and already holds the other peer.
    let snap = next_presence(&mut a_rx, Duration::from_secs(5)).await;
    let PresenceEvent::Snapshot(list) = snap else {
        panic!("first presence event is the snapshot, got {snap:?}");
    };
    let mut list = list;
    if list.is_empty() {
        // Slow resolution: the peer then arrives as a join.
        match next_presence(&mut a_rx, Duration::from_secs(5)).await {
            PresenceEvent::Joined(p) => list.push(p),
            other => panic!("expected bob to join, got {other:?}"),
        }
    }
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].id, b.id());
    assert_eq!(list[0].name, "bob");
    assert!(
        b.online_peers().iter().any(|p| p.id == a.id()) || {
            // b may still be settling; wait for its view too.
            tokio::time::sleep(Duration::from_secs(2)).await;
            b.online_peers().iter().any(|p| p.id == a.id())
        }
    );

    // No relay anywhere: the connection starts on the announced address and stays direct.
    let conn = a.connect(b.id()).await.expect("connects over the LAN");
    assert!(matches!(conn.path(), Path::Direct(_)), "{:?}", conn.path());
    let rtt = conn.ping(1, 0).await.expect("ping answered");
    assert!(rtt < Duration::from_secs(1));
    let incoming = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(Event::Incoming(c)) = b_rx.recv().await {
                return c;
            }
        }
    })
    .await
    .expect("bob sees the connection");
    assert_eq!(incoming.peer(), a.id());
    assert_eq!(incoming.remote_name().as_deref(), Some("alice"));

    // A rename is re-announced.
    b.set_name("bobby".into()).await.unwrap();
    loop {
        match next_presence(&mut a_rx, Duration::from_secs(5)).await {
            PresenceEvent::Updated(p) if p.id == b.id() => {
                assert_eq!(p.name, "bobby");
                break;
            }
            _ => continue,
        }
    }

    // Closing sends the goodbye: the other side sees the peer leave at once, not after the
    // records' 75-minute TTL.
    b.close().await;
    loop {
        match next_presence(&mut a_rx, Duration::from_secs(5)).await {
            PresenceEvent::Left(id) if id == b.id() => break,
            _ => continue,
        }
    }
    assert!(a.online_peers().is_empty());
    a.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lan_endpoint_refuses_a_relay_too() {
    let mut cfg = lan_cfg("x");
    cfg.relay = Some(p2pcall_net::RelayConfig::new(SocketAddr::from((
        [127, 0, 0, 1],
        1,
    ))));
    let err = Endpoint::bind(cfg).await.unwrap_err();
    assert!(matches!(err, p2pcall_net::NetError::LanAndRelay), "{err}");
}

//! Relays joining a cluster through a real `nats-server` (started here on free loopback ports
//! and stopped here): they see each other, a relay whose NATS goes away keeps serving and says
//! it is degraded, comes back when NATS does, and a relay that shuts down leaves at once.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use p2pcall_relay::{Relay, RelayConfig, cluster::ClusterConfig};
use p2pcall_transport::Identity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod nats;
use nats::{Nats, free_port};

async fn relay(nats: u16, region: &str) -> Relay {
    let mut cfg = RelayConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    cfg.tcp_listen = None;
    cfg.reflect_listen = None;
    cfg.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    cfg.cluster = Some(ClusterConfig {
        servers: vec![format!("nats://127.0.0.1:{nats}")],
        region: region.into(),
        public_addr: format!("127.0.0.1:{}", 7700 + region.len()),
    });
    Relay::start(&Identity::generate().unwrap(), cfg)
        .await
        .unwrap()
}

async fn until(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn healthz(relay: &Relay) -> String {
    let mut s = tokio::net::TcpStream::connect(relay.metrics_addr.unwrap())
        .await
        .unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_of_one_cluster_see_each_other_and_keep_serving_without_nats() {
    let port = free_port();
    let nats = Nats::start(port);
    let a = relay(port, "eu").await;
    let b = relay(port, "us").await;
    let sees = |r: &Relay, other: &Relay| r.cluster_members().iter().any(|m| m.relay == other.id);
    until(
        "both relays to see each other",
        Duration::from_secs(5),
        || sees(&a, &b) && sees(&b, &a),
    )
    .await;
    let m = a.cluster_members();
    assert_eq!(m.len(), 1);
    assert_eq!(
        (m[0].region.as_str(), m[0].public_addr.as_str()),
        ("us", "127.0.0.1:7702")
    );
    assert_eq!(a.metrics().cluster_connected.load(Relaxed), 1);
    assert!(healthz(&a).await.ends_with("ok\n"));

    // NATS goes away: each relay keeps serving and says it is degraded; the other relay
    // falls out of its membership once silent for 3 s.
    drop(nats);
    until("a degraded relay", Duration::from_secs(5), || {
        a.metrics().cluster_connected.load(Relaxed) == 0
    })
    .await;
    assert!(
        healthz(&a).await.contains("degraded"),
        "{}",
        healthz(&a).await
    );
    assert!(
        a.metrics()
            .render()
            .contains("p2pcall_relay_cluster_connected 0")
    );
    until(
        "the silent member to expire",
        Duration::from_secs(5),
        || a.cluster_members().is_empty(),
    )
    .await;

    // NATS is back (same address): the relays reconnect and see each other again.
    let _nats = Nats::start(port);
    until("the cluster to come back", Duration::from_secs(20), || {
        sees(&a, &b) && sees(&b, &a) && a.metrics().cluster_connected.load(Relaxed) == 1
    })
    .await;
    assert!(healthz(&a).await.ends_with("ok\n"));

    // A relay that shuts down says so: it leaves at once, not after the 3 s of silence.
    let t = Instant::now();
    b.shutdown().await;
    until("b to leave", Duration::from_secs(2), || {
        a.cluster_members().is_empty()
    })
    .await;
    assert!(t.elapsed() < p2pcall_proto::cluster::MEMBER_TTL);
    a.shutdown().await;
}

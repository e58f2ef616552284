//! Hostile input against the relay: it closes the offending connection with a reason, keeps
//! serving everyone else, and does not grow without bound.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use p2pcall_net::Identity;
use p2pcall_proto::relay::{ClientFrame, MAX_FRAME};
use p2pcall_relay::metrics::{Close, DropReason};
use tokio::io::AsyncWriteExt;

async fn raw_login(relay: std::net::SocketAddr) -> (quinn::Endpoint, quinn::Connection) {
    let id = Identity::generate().unwrap();
    let cfg = p2pcall_transport::quinn_client_config(
        &id,
        None,
        p2pcall_transport::ALPN_RELAY,
        p2pcall_transport::transport_config(Duration::from_secs(5), Duration::from_secs(10)),
    )
    .unwrap();
    let ep = quinn::Endpoint::client(loopback()).unwrap();
    let conn = ep
        .connect_with(cfg, relay, p2pcall_transport::RELAY_SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    (ep, conn)
}

async fn expect_closed(conn: &quinn::Connection, what: &str) -> String {
    let e = tokio::time::timeout(WAIT, conn.closed())
        .await
        .unwrap_or_else(|_| panic!("relay did not close the connection after {what}"));
    e.to_string()
}

fn hello() -> Vec<u8> {
    let mut b = Vec::new();
    ClientFrame::Hello {
        name: "x".into(),
        token: None,
        presence: false,
    }
    .encode(&mut b);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_closes_only_the_offender() {
    let relay = relay_with(|c| c.handshake_timeout = Duration::from_millis(500)).await;
    let addr = relay.udp_addr;
    let a = peer("alice", addr, false).await;
    let b = peer("bob", addr, false).await;
    let conn = a.ep.connect(b.ep.id()).await.unwrap();
    conn.ping(0, 0).await.unwrap();
    // Both peers measure their NAT through the reflection ports after registering.
    while a.ep.nat_mapping().is_none() || b.ep.nat_mapping().is_none() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reflections_before = relay.metrics().reflections.load(Ordering::Relaxed);
    let rss_before = rss_kib();

    // 1. Garbage datagrams of every first byte, including forged relay headers.
    let junk = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in 0..20_000u32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 1 + (x % 1400) as usize;
        let mut pkt: Vec<u8> = (0..len).map(|j| (x >> (j % 56)) as u8).collect();
        pkt[0] = match i % 4 {
            0 => 0x10,                  // RelaySend with a random tag
            1 => 0x12, // short reflection request (must not be answered: amplification)
            2 => (x >> 8) as u8 | 0x40, // QUIC-looking
            _ => (x >> 16) as u8,
        };
        let _ = junk.send_to(&pkt, addr).await;
        if i % 1000 == 0 {
            tokio::task::yield_now().await;
        }
    }

    // 2. Half-open: TLS done, no hello.
    let mut idle = Vec::new();
    for _ in 0..20 {
        let (ep, c) = raw_login(addr).await;
        let (mut s, _r) = c.open_bi().await.unwrap();
        s.write_all(&[]).await.unwrap();
        idle.push((ep, c, s));
    }

    // 3. An oversized frame header.
    let (_ep1, big) = raw_login(addr).await;
    let (mut s, _r) = big.open_bi().await.unwrap();
    let mut frame = hello();
    frame.extend_from_slice(&((MAX_FRAME as u32) * 100).to_be_bytes());
    frame.extend_from_slice(&[1, 3, 0, 0]);
    s.write_all(&frame).await.unwrap();
    let why = expect_closed(&big, "an oversized frame").await;
    assert!(why.contains("protocol violation"), "{why}");

    // 4. Garbage after a valid hello, and a wrong protocol version.
    let (_ep2, garbage) = raw_login(addr).await;
    let (mut s, _r) = garbage.open_bi().await.unwrap();
    let mut bytes = hello();
    bytes.extend_from_slice(&[0, 0, 0, 9, 42, 1, 2, 3, 4, 5, 6, 7, 8]);
    s.write_all(&bytes).await.unwrap();
    let why = expect_closed(&garbage, "a frame of another version").await;
    assert!(why.contains("unsupported protocol version 42"), "{why}");

    // 5. A control-frame flood.
    let (_ep3, flood) = raw_login(addr).await;
    let (mut s, _r) = flood.open_bi().await.unwrap();
    let mut bytes = hello();
    for nonce in 0..2000 {
        ClientFrame::Ping { nonce }.encode(&mut bytes);
    }
    let _ = s.write_all(&bytes).await;
    let why = expect_closed(&flood, "a ping flood").await;
    assert!(why.contains("rate limit"), "{why}");

    // 6. TCP: garbage, and silence.
    let tcp_addr = relay.tcp_addr.unwrap();
    let mut t1 = tokio::net::TcpStream::connect(tcp_addr).await.unwrap();
    t1.write_all(&[0x16, 3, 1, 0xff, 0xff, 1, 2, 3])
        .await
        .unwrap();
    let t2 = tokio::net::TcpStream::connect(tcp_addr).await.unwrap();
    for t in [&mut t1] {
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(t, &mut buf)).await;
        assert!(
            matches!(r, Ok(Ok(_)) | Ok(Err(_))),
            "garbage TLS must be answered by a close"
        );
    }
    let mut t2 = t2;
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut t2, &mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "a silent TCP client is cut off: {r:?}"
    );

    // Half-open sessions were closed for timing out, never registered.
    for (_ep, c, _s) in &idle {
        let why = expect_closed(c, "no hello").await;
        assert!(
            why.contains("timed out") || why.contains("no hello"),
            "{why}"
        );
    }

    // The legitimate pair was never disturbed.
    for seq in 1..20 {
        conn.ping(seq, 1000).await.unwrap();
    }
    assert_eq!(relay.online(), 2);
    let m = relay.metrics();
    assert!(m.drops(DropReason::UnknownSession) > 1000);
    assert!(m.drops(DropReason::Malformed) > 1000);
    assert!(m.closes(Close::Timeout) >= 20);
    assert!(m.closes(Close::Protocol) >= 2);
    assert!(m.closes(Close::RateLimited) >= 1);
    assert_eq!(
        m.reflections.load(Ordering::Relaxed),
        reflections_before,
        "short reflection requests are ignored"
    );
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(
        grown < 64 * 1024,
        "memory grew by {grown} KiB under hostile input"
    );
}

//! One QUIC stream peer to peer: raw quinn (baseline), p2pcall over the relay path, and
//! p2pcall over the direct path, all on loopback in one process.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use p2pcall_net::{Endpoint, EndpointConfig, Event, Path, RelayConfig};
use p2pcall_transport::Identity;
use tokio::sync::mpsc;

const CHUNK: usize = 256 * 1024;

/// Sends `bytes` on a new uni stream of `tx`, read by `rx`; returns Mbit/s.
async fn transfer(tx: &quinn::Connection, rx: &quinn::Connection, bytes: u64) -> Result<f64> {
    let rx = rx.clone();
    let reader = tokio::spawn(async move {
        let mut s = rx.accept_uni().await?;
        let mut n = 0u64;
        while let Some(c) = s.read_chunk(1 << 20, false).await? {
            n += c.bytes.len() as u64;
        }
        Ok::<u64, anyhow::Error>(n)
    });
    let t0 = Instant::now();
    let mut s = tx.open_uni().await?;
    let buf = bytes::Bytes::from(vec![0xa5u8; CHUNK]);
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(CHUNK as u64) as usize;
        s.write_chunk(buf.slice(..n)).await?;
        sent += n as u64;
    }
    s.finish()?;
    let got = reader.await??;
    let secs = t0.elapsed().as_secs_f64();
    if got != bytes {
        bail!("received {got} of {bytes} bytes");
    }
    Ok(bytes as f64 * 8.0 / secs / 1e6)
}

pub(crate) async fn raw_quinn(bytes: u64) -> Result<f64> {
    let (a, b) = (Identity::generate()?, Identity::generate()?);
    let t = || p2pcall_transport::transport_config(Duration::from_secs(5), Duration::from_secs(20));
    let server = quinn::Endpoint::server(
        p2pcall_transport::quinn_server_config(&b, p2pcall_transport::ALPN_PEER, t())?,
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )?;
    let addr = server.local_addr()?;
    let client = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let cfg = p2pcall_transport::quinn_client_config(
        &a,
        Some(b.id()),
        p2pcall_transport::ALPN_PEER,
        t(),
    )?;
    let accept = tokio::spawn(async move {
        let c = server.accept().await.context("no incoming")?.await?;
        Ok::<_, anyhow::Error>((server, c))
    });
    let tx = client
        .connect_with(cfg, addr, p2pcall_transport::PEER_SERVER_NAME)?
        .await?;
    let (_server, rx) = accept.await??;
    transfer(&tx, &rx, bytes).await
}

async fn endpoint(relay: SocketAddr, direct: bool) -> Result<(Endpoint, mpsc::Receiver<Event>)> {
    let (ep, ev) = Endpoint::bind(EndpointConfig {
        identity: Identity::generate()?,
        name: "bench".into(),
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        relay: Some(RelayConfig {
            presence: false,
            ..RelayConfig::new(relay)
        }),
        direct_paths: direct,
        port_mapping: false,
        lan: None,
    })
    .await?;
    ep.wait_relay(Duration::from_secs(5)).await?;
    Ok((ep, ev))
}

async fn p2p(relay: SocketAddr, direct: bool, bytes: u64) -> Result<(f64, Path)> {
    let (a, _ea) = endpoint(relay, direct).await?;
    let (b, mut eb) = endpoint(relay, direct).await?;
    let conn = a.connect(b.id()).await?;
    let incoming = loop {
        match eb.recv().await.context("bob's events ended")? {
            Event::Incoming(c) => break c,
            _ => continue,
        }
    };
    if direct {
        conn.wait_path(Duration::from_secs(5), |p| matches!(p, Path::Direct(_)))
            .await
            .context("no direct path on loopback")?;
    }
    let mbit = transfer(conn.quic(), incoming.quic(), bytes).await?;
    let path = conn.path();
    a.close().await;
    b.close().await;
    Ok((mbit, path))
}

pub fn run(mib: u64) -> Result<()> {
    let rt = crate::runtime(2)?;
    rt.block_on(async {
        let bytes = mib << 20;
        let mut cfg = p2pcall_relay::RelayConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        cfg.packet_rate = 1e9;
        cfg.byte_rate = 1e12;
        let relay = p2pcall_relay::Relay::start(&Identity::generate()?, cfg).await?;
        let raw = raw_quinn(bytes).await?;
        let (relayed, p1) = p2p(relay.udp_addr, false, bytes).await?;
        let (direct, p2) = p2p(relay.udp_addr, true, bytes).await?;
        relay.shutdown().await;
        println!("p2p-throughput: one QUIC stream, {mib} MiB, loopback");
        println!("  raw quinn (baseline):        {raw:>7.0} Mbit/s");
        println!(
            "  p2pcall relay path ({p1:?}):   {relayed:>7.0} Mbit/s   ratio {:.2}",
            relayed / raw
        );
        println!(
            "  p2pcall direct path:         {direct:>7.0} Mbit/s   ratio {:.2}   ({p2:?})",
            direct / raw
        );
        Ok(())
    })
}

//! Relay forwarding vs. a minimal UDP forwarder.
//!
//! Both runs use the same senders (one OS thread per pair blasting 1249-byte datagrams: a
//! 49-byte relay header plus a 1200-byte payload) and the same receivers (a quinn endpoint
//! whose socket counts and swallows non-QUIC datagrams). Only the box in the middle differs:
//! the p2pcall relay (session-tag check, rate limits, header rewrite) or a tokio task doing
//! `recv_from` + map lookup + `send_to`. Each box gets a single-threaded runtime.

use std::collections::HashMap;
use std::fmt;
use std::io::IoSliceMut;
use std::net::{SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use p2pcall_proto::packet::{self, RelaySend};
use p2pcall_proto::relay::{ClientFrame, MAX_FRAME, ServerFrame};
use p2pcall_transport::Identity;
use p2pcall_transport::framed::FrameReader;
use quinn::udp::RecvMeta;

const PAYLOAD: usize = 1200;

/// A socket for quinn that counts (and drops) every non-QUIC datagram it receives.
struct Counting {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
    count: Arc<AtomicU64>,
}

impl fmt::Debug for Counting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Counting")
    }
}

impl quinn::AsyncUdpSocket for Counting {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        self.inner.clone().create_io_poller()
    }
    fn try_send(&self, t: &quinn::udp::Transmit<'_>) -> std::io::Result<()> {
        self.inner.try_send(t)
    }
    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            let n = ready!(self.inner.poll_recv(cx, bufs, meta))?;
            let mut kept = 0;
            for i in 0..n {
                let m = meta[i];
                if packet::is_quic(bufs[i][0]) {
                    p2pcall_transport::udp::move_entry(bufs, meta, i, kept);
                    kept += 1;
                } else {
                    self.count
                        .fetch_add(m.len.div_ceil(m.stride.max(1)) as u64, Ordering::Relaxed);
                }
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
    }
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }
    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }
}

struct Receiver {
    _endpoint: quinn::Endpoint,
    count: Arc<AtomicU64>,
    addr: SocketAddr,
}

fn counting_endpoint(std: UdpSocket) -> Result<Receiver> {
    let addr = std.local_addr()?;
    let _ = std.set_nonblocking(true);
    let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, std)?;
    let count = Arc::new(AtomicU64::new(0));
    let socket = Arc::new(Counting {
        inner,
        count: count.clone(),
    });
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        p2pcall_transport::endpoint_config(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    Ok(Receiver {
        _endpoint: endpoint,
        count,
        addr,
    })
}

/// A registered relay session, kept alive by holding its streams.
pub struct Session {
    pub tag: [u8; 16],
    /// Held so the session stays up.
    pub _conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub reader: FrameReader<quinn::RecvStream>,
}

/// Logs `id` in to the relay from `ep`.
pub async fn login(
    ep: &quinn::Endpoint,
    id: &Identity,
    relay: SocketAddr,
    presence: bool,
) -> Result<Session> {
    let cfg = p2pcall_transport::quinn_client_config(
        id,
        None,
        p2pcall_transport::ALPN_RELAY,
        p2pcall_transport::transport_config(Duration::from_secs(5), Duration::from_secs(60)),
    )?;
    let conn = ep
        .connect_with(cfg, relay, p2pcall_transport::RELAY_SERVER_NAME)?
        .await?;
    let (mut send, recv) = conn.open_bi().await?;
    let mut hello = Vec::new();
    ClientFrame::Hello {
        name: "bench".into(),
        token: None,
        presence,
    }
    .encode(&mut hello);
    p2pcall_transport::framed::write_all(&mut send, &hello).await?;
    let mut r = FrameReader::new(recv, MAX_FRAME);
    match ServerFrame::decode(r.next().await?)? {
        ServerFrame::Welcome { session_tag, .. } => Ok(Session {
            tag: session_tag,
            _conn: conn,
            send,
            reader: r,
        }),
        other => bail!("relay answered {other:?}"),
    }
}

fn bind() -> Result<UdpSocket> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    Ok(s)
}

/// Blasts `pkt` to `dst` from `sock` until `stop`; returns packets sent.
fn blast(
    sock: UdpSocket,
    dst: SocketAddr,
    pkt: Vec<u8>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    // The socket may be a clone of quinn's (same file description): it must stay
    // non-blocking, so a full send buffer is waited out by yielding.
    std::thread::spawn(move || {
        let _ = sock.set_nonblocking(true);
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            match sock.send_to(&pkt, dst) {
                Ok(_) => n += 1,
                Err(_) => std::thread::yield_now(),
            }
        }
        n
    })
}

struct Measured {
    pps: f64,
    sent_pps: f64,
}

fn measure(
    receivers: &[Receiver],
    senders: Vec<(UdpSocket, SocketAddr, Vec<u8>)>,
    secs: f64,
) -> Measured {
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = senders
        .into_iter()
        .map(|(s, d, p)| blast(s, d, p, stop.clone()))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let c0: u64 = receivers
        .iter()
        .map(|r| r.count.load(Ordering::Relaxed))
        .sum();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let c1: u64 = receivers
        .iter()
        .map(|r| r.count.load(Ordering::Relaxed))
        .sum();
    let dt = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let sent: u64 = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    Measured {
        pps: (c1 - c0) as f64 / dt,
        sent_pps: sent as f64 / (dt + 0.5),
    }
}

/// The baseline: a minimal UDP forwarder (one task, a map of sender to receiver).
fn baseline(client_rt: &tokio::runtime::Runtime, pairs: usize, secs: f64) -> Result<Measured> {
    let fwd_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let fwd_std = bind()?;
    let fwd_addr = fwd_std.local_addr()?;
    fwd_std.set_nonblocking(true)?;
    let mut map = HashMap::new();
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..pairs {
        let r = client_rt.block_on(async { counting_endpoint(bind()?) })?;
        let s = bind()?;
        map.insert(s.local_addr()?, r.addr);
        senders.push((
            s,
            fwd_addr,
            vec![0x10u8; packet::RELAY_SEND_HEADER + PAYLOAD],
        ));
        receivers.push(r);
    }
    let fwd = std::thread::spawn(move || {
        fwd_rt.block_on(async move {
            let Ok(sock) = tokio::net::UdpSocket::from_std(fwd_std) else {
                return;
            };
            let mut buf = vec![0u8; 2048];
            let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs + 2.0);
            loop {
                tokio::select! {
                    r = sock.recv_from(&mut buf) => if let Ok((n, src)) = r
                        && let Some(dst) = map.get(&src) {
                        let _ = sock.send_to(&buf[..n], dst).await;
                    },
                    _ = tokio::time::sleep_until(deadline) => return,
                }
            }
        })
    });
    let base = measure(&receivers, senders, secs);
    let _ = fwd.join();
    client_rt.block_on(async move { drop(receivers) });
    Ok(base)
}

/// The p2pcall relay (rate limits lifted) forwarding between logged-in sessions; also
/// returns the relay's send errors.
fn relayed(
    client_rt: &tokio::runtime::Runtime,
    pairs: usize,
    secs: f64,
) -> Result<(Measured, u64)> {
    let relay_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let relay_id = Identity::generate()?;
    let (relay_tx, relay_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let relay_thread = std::thread::spawn(move || {
        relay_rt.block_on(async move {
            let mut cfg = p2pcall_relay::RelayConfig::new(
                "127.0.0.1:0"
                    .parse()
                    .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
            );
            cfg.tcp_listen = None;
            cfg.reflect_listen = None;
            // Measure forwarding, not the rate limiter.
            cfg.packet_rate = 1e9;
            cfg.byte_rate = 1e12;
            match p2pcall_relay::Relay::start(&relay_id, cfg).await {
                Ok(r) => {
                    let _ = relay_tx.send(Ok((r.udp_addr, r.metrics())));
                    let _ = stop_rx.await;
                    r.shutdown().await;
                }
                Err(e) => {
                    let _ = relay_tx.send(Err(e.to_string()));
                }
            }
        })
    });
    let (relay_addr, metrics) = relay_rx.recv()?.map_err(anyhow::Error::msg)?;
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    let mut keep = Vec::new();
    for _ in 0..pairs {
        let (r, rid, rsession) = client_rt.block_on(async {
            let r = counting_endpoint(bind()?)?;
            let id = Identity::generate()?;
            let session = login(&r._endpoint, &id, relay_addr, false).await?;
            Ok::<_, anyhow::Error>((r, id.id(), session))
        })?;
        let s = bind()?;
        let sclone = s.try_clone()?;
        let (tag, ssession, sep) = client_rt.block_on(async {
            s.set_nonblocking(true)?;
            let ep = quinn::Endpoint::new(
                p2pcall_transport::endpoint_config(),
                None,
                s,
                Arc::new(quinn::TokioRuntime),
            )?;
            let session = login(&ep, &Identity::generate()?, relay_addr, false).await?;
            Ok::<_, anyhow::Error>((session.tag, session, ep))
        })?;
        let mut pkt = Vec::new();
        RelaySend::write_header(&mut pkt, &tag, &rid);
        pkt.resize(packet::RELAY_SEND_HEADER + PAYLOAD, 0x5a);
        senders.push((sclone, relay_addr, pkt));
        receivers.push(r);
        keep.push((rsession, ssession, sep));
    }
    let relayed = measure(&receivers, senders, secs);
    let dropped = metrics.drops(p2pcall_relay::metrics::DropReason::SendError);
    let _ = stop_tx.send(());
    let _ = relay_thread.join();
    // quinn objects are dropped on their runtime.
    client_rt.block_on(async move {
        for (r, s, ep) in keep {
            ep.close(0u32.into(), b"done");
            drop((r, s, ep));
        }
        drop(receivers);
    });
    Ok((relayed, dropped))
}

pub fn run(pairs: usize, secs: f64) -> Result<()> {
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let base = baseline(&client_rt, pairs, secs)?;
    let (relayed, dropped) = relayed(&client_rt, pairs, secs)?;

    let mbit = |pps: f64| pps * PAYLOAD as f64 * 8.0 / 1e6;
    println!("relay-forward: {pairs} pairs, {PAYLOAD}-byte payloads, {secs} s each, loopback");
    println!(
        "  baseline UDP forwarder: {:>9.0} pkt/s  {:>7.0} Mbit/s   (senders offered {:.0} pkt/s)",
        base.pps,
        mbit(base.pps),
        base.sent_pps
    );
    println!(
        "  p2pcall relay:          {:>9.0} pkt/s  {:>7.0} Mbit/s   (senders offered {:.0} pkt/s; relay send errors {dropped})",
        relayed.pps,
        mbit(relayed.pps),
        relayed.sent_pps
    );
    println!(
        "  ratio relay / baseline: {:.2}",
        relayed.pps / base.pps.max(1.0)
    );
    if base.pps <= 0.0 {
        bail!("the baseline forwarded nothing: measurement failed");
    }
    Ok(())
}

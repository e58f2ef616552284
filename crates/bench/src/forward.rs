//! Relay forwarding vs. minimal UDP forwarders, and the cost of crossing two relays.
//!
//! Every run uses the same senders (one OS thread per pair blasting 1249-byte datagrams: a
//! 49-byte relay header plus a 1200-byte payload) and the same receivers (a quinn endpoint
//! whose socket counts and swallows non-QUIC datagrams). Only the box in the middle differs:
//! * the batched baseline: one thread per core, each on its own socket of one port
//!   (`SO_REUSEPORT`), `recvmmsg` (quinn-udp, 32
//!   messages per call, GRO on) + map lookup + one GSO send per run of datagrams to one
//!   destination (up to 64 segments: what a `sendmmsg` of 64 would carry, in one call);
//! * the simple baseline: one tokio task doing `recv_from` + map lookup + `send_to`;
//! * the p2pcall relay (session-tag check, rate limits, header rewrite, GSO), on a 2-thread
//!   runtime as in production;
//! * two p2pcall relays of one cluster (a local `nats-server`): senders registered with one,
//!   receivers with the other, every packet crossing from the first to the second.

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
    /// CPU the relays used meanwhile (relay runs only), seconds.
    relay_cpu_s: f64,
    /// The measured window (after the warm-up), seconds.
    window_s: f64,
}

impl Measured {
    /// Relay CPU per delivered packet, µs (over the window plus the warm-up's share).
    fn cpu_us_per_packet(&self) -> f64 {
        let delivered = self.pps * (self.window_s + 0.5);
        self.relay_cpu_s * 1e6 / delivered.max(1.0)
    }
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
        relay_cpu_s: 0.0,
        window_s: dt,
    }
}

/// Senders and receivers for a forwarder at `fwd_addr`: where each sender's packets go, the
/// receivers, and the senders (socket, destination, packet).
#[allow(clippy::type_complexity)]
fn forwarded_pairs(
    client_rt: &tokio::runtime::Runtime,
    pairs: usize,
    fwd_addr: SocketAddr,
) -> Result<(
    HashMap<SocketAddr, SocketAddr>,
    Vec<Receiver>,
    Vec<(UdpSocket, SocketAddr, Vec<u8>)>,
)> {
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
    Ok((map, receivers, senders))
}

/// The baseline: a minimal UDP forwarder (one task, a map of sender to receiver).
fn baseline(client_rt: &tokio::runtime::Runtime, pairs: usize, secs: f64) -> Result<Measured> {
    let fwd_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let fwd_std = bind()?;
    let fwd_addr = fwd_std.local_addr()?;
    fwd_std.set_nonblocking(true)?;
    let (map, receivers, senders) = forwarded_pairs(client_rt, pairs, fwd_addr)?;
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

/// The batched baseline: `threads` threads share one blocking socket; each receives a batch
/// (recvmmsg, GRO), looks every datagram's sender up and sends the batch on (sendmmsg).
fn batched_baseline(
    client_rt: &tokio::runtime::Runtime,
    pairs: usize,
    secs: f64,
    threads: usize,
) -> Result<Measured> {
    use quinn::udp::UdpSocketState;
    // One socket per thread on one port (SO_REUSEPORT: the kernel spreads the flows).
    let mut socks = vec![reuseport_socket(SocketAddr::from(([127, 0, 0, 1], 0)))?];
    let fwd_addr = socks[0].local_addr()?;
    for _ in 1..threads {
        socks.push(reuseport_socket(fwd_addr)?);
    }
    let (map, receivers, senders) = forwarded_pairs(client_rt, pairs, fwd_addr)?;
    let map = Arc::new(map);
    let deadline = Instant::now() + Duration::from_secs_f64(secs + 2.0);
    let mut workers = Vec::new();
    for sock in socks {
        let state = UdpSocketState::new((&sock).into())?;
        // Non-blocking, and a yield when nothing is there: a blocking recvmmsg waits for a
        // whole batch.
        sock.set_nonblocking(true)?;
        let map = map.clone();
        workers.push(std::thread::spawn(move || {
            forward_batches(&sock, &state, &map, deadline)
        }));
    }
    let base = measure(&receivers, senders, secs);
    for w in workers {
        let _ = w.join();
    }
    client_rt.block_on(async move { drop(receivers) });
    Ok(base)
}

/// A UDP socket bound to `addr` with `SO_REUSEPORT` (several can share the port).
fn reuseport_socket(addr: SocketAddr) -> Result<UdpSocket> {
    use rustix::net::{AddressFamily, SocketType, bind, socket, sockopt};
    let fd = socket(AddressFamily::INET, SocketType::DGRAM, None)?;
    sockopt::set_socket_reuseport(&fd, true)?;
    bind(&fd, &addr)?;
    Ok(UdpSocket::from(fd))
}

/// Most datagrams in one GSO send of the batched baseline.
const SEND_BATCH: usize = 64;

/// Receives batches (recvmmsg, GRO) and sends each run of datagrams for one destination as
/// one GSO send (up to [`SEND_BATCH`] equal segments), until `deadline`.
fn forward_batches(
    sock: &UdpSocket,
    state: &quinn::udp::UdpSocketState,
    map: &HashMap<SocketAddr, SocketAddr>,
    deadline: Instant,
) {
    let n_bufs = quinn::udp::BATCH_SIZE;
    let mut storage = vec![vec![0u8; 65_536]; n_bufs];
    let mut meta = vec![RecvMeta::default(); n_bufs];
    let max_segments = state.max_gso_segments().clamp(1, SEND_BATCH);
    let mut run: Vec<u8> = Vec::with_capacity(SEND_BATCH * 1500);
    while Instant::now() < deadline {
        let n = {
            let mut bufs: Vec<IoSliceMut<'_>> =
                storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            match state.recv(sock.into(), &mut bufs, &mut meta) {
                Ok(n) => n,
                Err(_) => {
                    std::thread::yield_now();
                    continue;
                }
            }
        };
        // (destination, segment size, segments) of the run being built.
        let mut current: Option<(SocketAddr, usize, usize)> = None;
        for (m, buf) in meta[..n].iter().zip(&storage) {
            let Some(dst) = map.get(&m.addr).copied() else {
                continue;
            };
            let stride = m.stride.max(1);
            for seg in buf[..m.len].chunks(stride) {
                let joins = matches!(current, Some((d, size, count))
                    if d == dst && seg.len() == size && count < max_segments);
                if !joins {
                    flush_run(sock, state, current.take(), &mut run);
                    current = Some((dst, seg.len(), 0));
                }
                run.extend_from_slice(seg);
                if let Some((_, _, count)) = &mut current {
                    *count += 1;
                }
            }
        }
        flush_run(sock, state, current, &mut run);
    }
}

fn flush_run(
    sock: &UdpSocket,
    state: &quinn::udp::UdpSocketState,
    run_of: Option<(SocketAddr, usize, usize)>,
    run: &mut Vec<u8>,
) {
    if let Some((destination, size, count)) = run_of {
        let t = quinn::udp::Transmit {
            destination,
            ecn: None,
            contents: run,
            segment_size: (count > 1).then_some(size),
            src_ip: None,
        };
        let _ = state.send(sock.into(), &t);
    }
    run.clear();
}

/// The relays' runtime threads (their CPU time is read from `/proc`).
pub(crate) const RELAY_THREAD: &str = "bench-relay";

/// CPU seconds the relays' threads have used (Linux `/proc/self/task/*/stat`).
pub(crate) fn relay_cpu_s() -> f64 {
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let total: u64 = (tasks.flatten())
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter_map(|stat| {
            let (comm, ticks) = crate::procfs::stat_cpu(&stat)?;
            (comm == RELAY_THREAD).then_some(ticks)
        })
        .sum();
    total as f64 / ticks
}

/// A `nats-server` on a free loopback port for the two-relay run (stopped when dropped).
pub(crate) struct Nats(std::process::Child, u16);

impl Nats {
    /// Its client port.
    pub(crate) fn port(&self) -> u16 {
        self.1
    }

    pub(crate) fn start() -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!("nats-server ({e}): scripts/setup.sh --dev installs it")
            })?;
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("nats-server did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self(child, port))
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Relays for a run (rate limits lifted), on their own 2-thread runtime: one alone, or two
/// of one cluster. Returns their UDP addresses and metrics, and a way to stop them.
#[allow(clippy::type_complexity)]
fn start_relays(
    cluster: Option<u16>,
) -> Result<(
    Vec<(SocketAddr, Arc<p2pcall_relay::Metrics>)>,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
)> {
    let relay_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(RELAY_THREAD)
        .enable_all()
        .build()?;
    let (relay_tx, relay_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let count = if cluster.is_some() { 2 } else { 1 };
    let thread = std::thread::spawn(move || {
        relay_rt.block_on(async move {
            let mut relays = Vec::new();
            for i in 0..count {
                let mut cfg =
                    p2pcall_relay::RelayConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
                cfg.tcp_listen = None;
                cfg.reflect_listen = None;
                // Measure forwarding, not the rate limiter.
                cfg.packet_rate = 1e9;
                cfg.byte_rate = 1e12;
                cfg.cluster = cluster.map(|port| p2pcall_relay::cluster::ClusterConfig {
                    servers: vec![format!("nats://127.0.0.1:{port}")],
                    region: format!("r{i}"),
                    public_addr: String::new(),
                });
                let started = match Identity::generate() {
                    Ok(id) => p2pcall_relay::Relay::start(&id, cfg)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match started {
                    Ok(r) => relays.push(r),
                    Err(e) => {
                        let _ = relay_tx.send(Err(e));
                        return;
                    }
                }
            }
            let info = relays.iter().map(|r| (r.udp_addr, r.metrics())).collect();
            let _ = relay_tx.send(Ok(info));
            let _ = stop_rx.await;
            for r in relays {
                r.shutdown().await;
            }
        })
    });
    let info = relay_rx.recv()?.map_err(anyhow::Error::msg)?;
    Ok((info, stop_tx, thread))
}

/// The p2pcall relay (or two of a cluster: `nats` given) forwarding between logged-in
/// sessions; also returns the relays' send errors.
fn relayed(
    client_rt: &tokio::runtime::Runtime,
    pairs: usize,
    secs: f64,
    nats: Option<&Nats>,
) -> Result<(Measured, u64)> {
    let (relays, stop_tx, relay_thread) = start_relays(nats.map(|n| n.1))?;
    let (relay_addr, metrics) = relays[0].clone();
    // Receivers register with the last relay (the second of a cluster).
    let (recv_relay, recv_metrics) = relays[relays.len() - 1].clone();
    if nats.is_some() {
        let t0 = Instant::now();
        while metrics.cluster_members.load(Ordering::Relaxed) < 1
            || recv_metrics.cluster_members.load(Ordering::Relaxed) < 1
        {
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("the two relays did not form a cluster");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    let mut keep = Vec::new();
    for _ in 0..pairs {
        let (r, rid, rsession) = client_rt.block_on(async {
            let r = counting_endpoint(bind()?)?;
            let id = Identity::generate()?;
            let session = login(&r._endpoint, &id, recv_relay, false).await?;
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
    if nats.is_some() {
        // The first relay knows where every receiver is.
        let t0 = Instant::now();
        while metrics.cluster_peers.load(Ordering::Relaxed) < pairs as u64 {
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("the receivers' relay did not tell the senders' relay about them");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let cpu0 = relay_cpu_s();
    let mut relayed = measure(&receivers, senders, secs);
    relayed.relay_cpu_s = relay_cpu_s() - cpu0;
    let dropped = metrics.drops(p2pcall_relay::metrics::DropReason::SendError)
        + recv_metrics.drops(p2pcall_relay::metrics::DropReason::SendError);
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
    let client_rt = crate::runtime(1)?;
    let threads = std::env::var("FWD_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let batched = batched_baseline(&client_rt, pairs, secs, threads)?;
    let simple = baseline(&client_rt, pairs, secs)?;
    let (relayed1, dropped1) = relayed(&client_rt, pairs, secs, None)?;
    let nats = Nats::start()?;
    let (relayed2, dropped2) = relayed(&client_rt, pairs, secs, Some(&nats))?;

    let mbit = |pps: f64| pps * PAYLOAD as f64 * 8.0 / 1e6;
    let line = |what: &str, m: &Measured, extra: String| {
        println!(
            "  {what:<34} {:>9.0} pkt/s  {:>7.0} Mbit/s   (senders offered {:.0} pkt/s{extra})",
            m.pps,
            mbit(m.pps),
            m.sent_pps
        );
    };
    println!("relay-forward: {pairs} pairs, {PAYLOAD}-byte payloads, {secs} s each, loopback");
    line(
        &format!("batched forwarder ({threads} threads):"),
        &batched,
        String::new(),
    );
    line("one-at-a-time tokio forwarder:", &simple, String::new());
    line(
        "p2pcall relay:",
        &relayed1,
        format!(
            "; relay CPU {:.1} µs/pkt; send errors {dropped1}",
            relayed1.cpu_us_per_packet()
        ),
    );
    line(
        "two p2pcall relays (cluster):",
        &relayed2,
        format!(
            "; relays' CPU {:.1} µs/pkt; send errors {dropped2}",
            relayed2.cpu_us_per_packet()
        ),
    );
    println!(
        "  ratio relay / batched forwarder:    {:.2}",
        relayed1.pps / batched.pps.max(1.0)
    );
    println!(
        "  ratio relay / one-at-a-time:        {:.2}",
        relayed1.pps / simple.pps.max(1.0)
    );
    println!(
        "  ratio two relays / one relay:       {:.2} (relay CPU per packet {:.2}x)",
        relayed2.pps / relayed1.pps.max(1.0),
        relayed2.cpu_us_per_packet() / relayed1.cpu_us_per_packet().max(1e-9)
    );
    if batched.pps <= 0.0 || simple.pps <= 0.0 {
        bail!("a baseline forwarded nothing: measurement failed");
    }
    Ok(())
}

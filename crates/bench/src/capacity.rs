//! Relay capacity: registers many peers with a relay *process* (so its memory is measured
//! alone) and measures the relay's CPU time per presence change. With `--park`, every peer
//! but the subscribers and the renaming ones parks right after its login (as an idle client
//! does after a minute), so the client side never holds more than a few hundred connections
//! and 50,000 peers fit; the bench then sends their keep-alives itself.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use std::collections::HashMap;

use p2pcall_proto::PeerId;
use p2pcall_proto::relay::{ClientFrame, ServerFrame};
use p2pcall_transport::Identity;

use crate::forward::{Session, login};
use crate::procfs::{cpu_ticks, proc_field};

/// Logins in flight at once.
const CONCURRENCY: usize = 128;
/// Renames per changing session (within the relay's control-frame burst).
const CHANGES_PER_SESSION: usize = 50;
/// Sessions that rename themselves.
const CHANGERS: usize = 10;
/// The last name each changer takes.
const FINAL: &str = "final-name";
/// How often the bench sends the parked sessions' keep-alives (the relay wants one every
/// 15 s and forgets a session after 60 s without).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(10);
/// How long the relay's idle CPU is measured.
const IDLE_SPAN: Duration = Duration::from_secs(10);

/// A login's outcome: a live session, or the tag of a parked one.
enum Logged {
    Live(PeerId, bool, Session),
    Parked([u8; 16]),
}

/// Parks a live session: `Park`, then whatever the relay still sends up to `Parked`, then the
/// connection closes. Returns its tag.
async fn park(mut s: Session) -> Result<[u8; 16]> {
    let mut buf = Vec::new();
    ClientFrame::Park.encode(&mut buf);
    p2pcall_transport::framed::write_all(&mut s.send, &buf).await?;
    loop {
        if let ServerFrame::Parked { .. } = ServerFrame::decode(s.reader.next().await?)? {
            s._conn.close(0u32.into(), b"parked");
            return Ok(s.tag);
        }
    }
}

/// Logs peer number `n` in (the first `subscribers` ask for presence); with `park`, the ones
/// that neither subscribe nor rename park then.
async fn log_in(
    ep: quinn::Endpoint,
    udp: SocketAddr,
    n: usize,
    (subscribers, parks): (usize, bool),
    retries: Arc<AtomicU64>,
) -> Result<Logged> {
    let (id, presence, s) = login_retrying(ep, udp, n < subscribers, retries).await?;
    Ok(if parks && n >= subscribers + CHANGERS {
        Logged::Parked(park(s).await?)
    } else {
        Logged::Live(id, presence, s)
    })
}

/// The relay's CPU ticks over [`IDLE_SPAN`].
async fn idle_cpu(pid: u32) -> u64 {
    let before = cpu_ticks(pid).unwrap_or(0);
    tokio::time::sleep(IDLE_SPAN).await;
    cpu_ticks(pid).unwrap_or(0) - before
}

/// The relay's memory (KiB) once it settled after its start.
fn settled_rss(pid: u32) -> u64 {
    std::thread::sleep(Duration::from_millis(200));
    proc_field(pid, "VmRSS:").unwrap_or(0)
}

/// Sends every parked session's keep-alive each [`KEEPALIVE_EVERY`], from one UDP socket.
async fn keep_parked(
    relay: SocketAddr,
    tags: Arc<parking_lot::Mutex<Vec<[u8; 16]>>>,
) -> Result<()> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    loop {
        let all = tags.lock().clone();
        for tag in all {
            let mut pkt = Vec::with_capacity(17);
            p2pcall_proto::packet::Control::ParkAlive { tag }.encode(&mut pkt);
            // A full socket buffer: wait a little (the relay reads as fast as it can).
            while sock.try_send_to(&pkt, relay).is_err() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        tokio::time::sleep(KEEPALIVE_EVERY).await;
    }
}

pub(crate) struct Kill(pub(crate) std::process::Child);
impl Drop for Kill {
    /// SIGTERM first (the relay shuts down gracefully; profilers write their output), then
    /// SIGKILL after 10 s.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the relay process (room for `peers`, all from this machine's one address) and
/// reads its UDP address.
pub(crate) fn start_relay(
    relay_bin: &str,
    dir: &std::path::Path,
    peers: usize,
) -> Result<(Kill, SocketAddr)> {
    start_relay_with(relay_bin, dir, peers, &[])
}

/// [`start_relay`] with more relay arguments.
pub(crate) fn start_relay_with(
    relay_bin: &str,
    dir: &std::path::Path,
    peers: usize,
    extra: &[&str],
) -> Result<(Kill, SocketAddr)> {
    let mut child = Command::new(relay_bin)
        .args(["--json", "--data-dir"])
        .arg(dir)
        .args([
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--no-tcp",
            "--no-reflect",
            "--max-peers",
            &(peers + 16).to_string(),
            "--max-per-address",
            &(peers + 16).to_string(),
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("starting {relay_bin} (build it: cargo build --release -p p2pcall)")
        })?;
    let stdout = child.stdout.take().context("no stdout")?;
    let child = Kill(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let udp: SocketAddr = line
        .split("\"udp\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .context("relay did not print its address")?
        .parse()?;
    Ok((child, udp))
}

/// One loopback QUIC endpoint for many relay sessions (each logs in with its own key).
pub(crate) fn relay_client_endpoint() -> Result<quinn::Endpoint> {
    let mut ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    ep.set_default_client_config(p2pcall_transport::quinn_client_config(
        &Identity::generate()?,
        None,
        p2pcall_transport::ALPN_RELAY,
        p2pcall_transport::transport_config(Duration::from_secs(15), Duration::from_secs(60)),
    )?);
    Ok(ep)
}

/// Logs a new identity in; handshakes lost under load are retried, as real clients do.
pub(crate) async fn login_retrying(
    ep: quinn::Endpoint,
    udp: SocketAddr,
    presence: bool,
    retries: Arc<AtomicU64>,
) -> Result<(PeerId, bool, Session)> {
    let id = Identity::generate()?;
    let mut attempt = 0;
    loop {
        match login(&ep, &id, udp, presence).await {
            Ok(s) => return Ok((id.id(), presence, s)),
            Err(e) if attempt >= 6 => return Err(e),
            Err(_) => {
                attempt += 1;
                retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200 << attempt.min(4))).await;
            }
        }
    }
}

/// A subscriber: keeps the latest name of every peer, and counts itself converged once
/// every changer shows its final name. It owns the whole session (dropping its send half
/// would end it).
async fn follow_presence(
    mut s: Session,
    changers: Arc<parking_lot::RwLock<Vec<PeerId>>>,
    converged: Arc<AtomicU64>,
    events: Arc<AtomicU64>,
) {
    let mut names: HashMap<PeerId, String> = HashMap::new();
    let mut done = false;
    while let Ok(raw) = s.reader.next().await {
        match ServerFrame::decode(raw) {
            Ok(ServerFrame::Updated(p)) => {
                events.fetch_add(1, Ordering::Relaxed);
                names.insert(p.id, p.name);
            }
            Ok(ServerFrame::Snapshot { peers, .. }) => {
                names.extend(peers.into_iter().map(|p| (p.id, p.name)));
            }
            _ => continue,
        }
        let c = changers.read().clone();
        if !done && !c.is_empty() && c.iter().all(|id| names.get(id).is_some_and(|n| n == FINAL)) {
            done = true;
            converged.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The changers rename themselves; returns the seconds until `subs` subscribers converged
/// (or 60 s).
async fn fan_out(changers: &mut [Session], converged: &AtomicU64, subs: u64) -> Result<f64> {
    let t1 = Instant::now();
    rename(changers).await?;
    while converged.load(Ordering::Relaxed) < subs && t1.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(t1.elapsed().as_secs_f64())
}

/// Each session renames itself CHANGES_PER_SESSION times, the last time to FINAL.
async fn rename(sessions: &mut [Session]) -> Result<()> {
    for s in sessions {
        let mut buf = Vec::new();
        for i in 1..=CHANGES_PER_SESSION {
            let name = if i == CHANGES_PER_SESSION {
                FINAL.to_string()
            } else {
                format!("peer-{i}")
            };
            ClientFrame::SetName { name }.encode(&mut buf);
        }
        p2pcall_transport::framed::write_all(&mut s.send, &buf).await?;
    }
    Ok(())
}

/// What one capacity run measured.
struct Report {
    registered: usize,
    /// Of which parked.
    parked: usize,
    /// Relay CPU ticks (10 ms) over [`IDLE_SPAN`] with nothing happening.
    idle_ticks: u64,
    reg_secs: f64,
    rss0: u64,
    rss1: u64,
    changes: u64,
    want: u64,
    delivered: u64,
    fanout_secs: f64,
    ticks: u64,
}

impl Report {
    fn print(&self, relay_bin: &str) {
        let Report {
            registered,
            parked,
            idle_ticks,
            reg_secs,
            rss0,
            rss1,
            changes,
            want,
            delivered,
            fanout_secs,
            ticks,
        } = *self;
        let per_peer = (rss1.saturating_sub(rss0)) as f64 * 1024.0 / registered.max(1) as f64;
        let cpu_us = ticks as f64 * 10_000.0 / changes as f64;
        println!("relay-capacity: relay process {relay_bin}, one client endpoint");
        println!(
            "  registered {registered} peers in {reg_secs:.1} s ({:.0} logins/s)",
            registered as f64 / reg_secs
        );
        println!(
            "  {parked} of them parked (no connection), {} live",
            registered - parked
        );
        println!(
            "  relay RSS {} KiB -> {} KiB: {:.0} bytes ({:.2} KiB) per peer   target <= 8 KiB: {}",
            rss0,
            rss1,
            per_peer,
            per_peer / 1024.0,
            if per_peer <= 8192.0 { "met" } else { "NOT met" }
        );
        println!(
            "  relay CPU while idle: {:.1} % of a core (over {} s)",
            idle_ticks as f64 * 10.0 / IDLE_SPAN.as_millis() as f64 * 100.0,
            IDLE_SPAN.as_secs()
        );
        println!(
            "  projected for 50,000 peers: {:.0} MiB",
            per_peer * 50_000.0 / (1 << 20) as f64
        );
        println!(
            "  presence: {changes} changes x {} subscribers: all converged in {fanout_secs:.2} s; {delivered} of {want} as incremental events (the rest folded into snapshots)",
            want / changes.max(1)
        );
        println!(
            "  relay CPU per change: {cpu_us:.0} us ({:.2} us per delivered event; 10 ms tick resolution)",
            ticks as f64 * 10_000.0 / delivered.max(1) as f64
        );
    }
}

pub fn run(
    peers: usize,
    subscribers: usize,
    relay_bin: &str,
    max_secs: u64,
    parked: bool,
) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("p2pcall-bench-{}", std::process::id()));
    let (child, udp) = start_relay(relay_bin, &dir, peers)?;
    let pid = child.0.id();
    let rss0 = settled_rss(pid);
    let rt = crate::runtime(2)?;
    let report = rt.block_on(async move {
        let ep = relay_client_endpoint()?;
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(max_secs);
        // Subscribers read from the moment they log in, keeping the latest name of every
        // peer; a subscriber has converged once every changer shows its final name.
        let changers: Arc<parking_lot::RwLock<Vec<PeerId>>> = Arc::default();
        let converged = Arc::new(AtomicU64::new(0));
        let events = Arc::new(AtomicU64::new(0));
        let mut readers = tokio::task::JoinSet::new();
        let mut sessions: Vec<Session> = Vec::with_capacity(peers);
        let mut ids: Vec<PeerId> = Vec::with_capacity(peers);
        let mut pending = tokio::task::JoinSet::new();
        let mut next = 0usize;
        let mut registered = 0usize;
        let retries = Arc::new(AtomicU64::new(0));
        let tags: Arc<parking_lot::Mutex<Vec<[u8; 16]>>> = Arc::default();
        let keepalives = tokio::spawn(keep_parked(udp, tags.clone()));
        while registered < peers && Instant::now() < deadline {
            while pending.len() < CONCURRENCY && next < peers {
                let how = (subscribers, parked);
                pending.spawn(log_in(ep.clone(), udp, next, how, retries.clone()));
                next += 1;
            }
            match pending.join_next().await {
                Some(Ok(Ok(Logged::Parked(tag)))) => {
                    registered += 1;
                    tags.lock().push(tag);
                }
                Some(Ok(Ok(Logged::Live(id, presence, s)))) => {
                    registered += 1;
                    if presence {
                        readers.spawn(follow_presence(
                            s,
                            changers.clone(),
                            converged.clone(),
                            events.clone(),
                        ));
                    } else {
                        sessions.push(s);
                        ids.push(id);
                    }
                    if registered.is_multiple_of(1000) {
                        eprintln!(
                            "  {} peers registered after {:.1} s, relay RSS {} KiB",
                            registered,
                            t0.elapsed().as_secs_f64(),
                            proc_field(pid, "VmRSS:").unwrap_or(0)
                        );
                    }
                }
                Some(Ok(Err(e))) => bail!("login failed after {registered} peers: {e}"),
                Some(Err(e)) => bail!("login task: {e}"),
                None => break,
            }
        }
        let reg_secs = t0.elapsed().as_secs_f64();
        // Let the subscribers drain the joins of the registration phase.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss1 = proc_field(pid, "VmRSS:").unwrap_or(0);
        // The relay's cost while nothing happens: the live sessions' pings, the parked ones'
        // keep-alives and the parking task's rounds.
        let idle_ticks = idle_cpu(pid).await;

        // Presence changes: CHANGERS sessions rename themselves CHANGES_PER_SESSION times.
        let changes = (CHANGERS * CHANGES_PER_SESSION) as u64;
        *changers.write() = ids.iter().take(CHANGERS).copied().collect();
        let subs = subscribers.min(registered) as u64;
        let events0 = events.load(Ordering::Relaxed);
        let cpu0 = cpu_ticks(pid).unwrap_or(0);
        let n = CHANGERS.min(sessions.len());
        let fanout_secs = fan_out(&mut sessions[..n], &converged, subs).await?;
        let cpu1 = cpu_ticks(pid).unwrap_or(0);
        let want = changes * subs;
        let delivered = events.load(Ordering::Relaxed) - events0;
        if converged.load(Ordering::Relaxed) < subs {
            bail!(
                "only {} of {subs} subscribers saw every change ({delivered} incremental events seen)",
                converged.load(Ordering::Relaxed),
            );
        }
        readers.abort_all();
        keepalives.abort();
        let parked = tags.lock().len();
        drop(sessions);
        ep.close(0u32.into(), b"done");
        eprintln!("  login retries: {}", retries.load(Ordering::Relaxed));
        Ok::<_, anyhow::Error>(Report {
            parked,
            idle_ticks,
            registered,
            reg_secs,
            rss0,
            rss1,
            changes,
            want,
            delivered,
            fanout_secs,
            ticks: cpu1 - cpu0,
        })
    });
    let report = report?;
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
    report.print(relay_bin);
    Ok(())
}

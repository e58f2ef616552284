//! The daemon's local API: how long `peers` takes through a running `p2pcall daemon` (one
//! API round trip, and the whole command) beside the same command on an engine of its own;
//! how late presence events reach an API subscriber beside a raw relay subscriber; the
//! daemon's idle CPU and memory with peers online.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use p2pcall_api::{Answer, Event, Request};
use p2pcall_daemon::Client;
use p2pcall_proto::relay::{ClientFrame, ServerFrame};
use p2pcall_transport::Identity;

use crate::capacity::{Kill, start_relay};
use crate::forward::{Session, login};
use crate::procfs::{cpu_ticks, proc_field};

/// Whole `peers` commands timed through the daemon, and on an engine of their own.
const COMMANDS: usize = 20;
const OWN_ENGINE_COMMANDS: usize = 5;
/// Idle measurement.
const IDLE: Duration = Duration::from_secs(10);
/// Renames are paced under the relay's control-frame rate (50/s).
const RENAME_EVERY: Duration = Duration::from_millis(40);

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Starts `p2pcall daemon` on `data` and waits until it is registered with the relay.
pub(crate) fn start_daemon(bin: &str, data: &Path, relay: SocketAddr) -> Result<Kill> {
    let mut child = Command::new(bin)
        .arg("--json")
        .arg("--data-dir")
        .arg(data)
        .args(["--relay", &relay.to_string(), "--name", "daemon", "daemon"])
        .env("P2PCALL_NO_PORT_MAPPING", "true")
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {bin} daemon"))?;
    let out = child.stdout.take().context("no stdout")?;
    let child = Kill(child);
    for line in BufReader::new(out).lines() {
        if line?.contains("\"relay_connected\"") {
            return Ok(child);
        }
    }
    bail!("the daemon ended before it registered with the relay")
}

/// Milliseconds of one `p2pcall --json peers` run.
fn peers_command(bin: &str, data: &Path, relay: Option<SocketAddr>) -> Result<f64> {
    let mut c = Command::new(bin);
    c.arg("--json").arg("--data-dir").arg(data);
    if let Some(r) = relay {
        c.args(["--relay", &r.to_string()]);
    }
    c.arg("peers").env("P2PCALL_NO_PORT_MAPPING", "true");
    let t = Instant::now();
    let out = c.output()?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        bail!("peers failed: {}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(ms)
}

pub fn run(peers: usize, calls: usize, changes: usize, bin: &str) -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("p2pcall-bench-daemon-{}", std::process::id()));
    let (_relay, udp) = start_relay(bin, &tmp.join("relay"), peers + 4)?;
    let rt = crate::runtime(2)?;
    let r = rt.block_on(measure(peers, calls, changes, bin, udp, &tmp));
    let _ = std::fs::remove_dir_all(&tmp);
    r
}

async fn measure(
    peers: usize,
    calls: usize,
    changes: usize,
    bin: &str,
    udp: SocketAddr,
    tmp: &Path,
) -> Result<()> {
    let ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let mut sessions: Vec<Session> = Vec::with_capacity(peers);
    for _ in 0..peers {
        sessions.push(login(&ep, &Identity::generate()?, udp, false).await?);
    }
    // A raw relay subscriber: the baseline for presence events.
    let mut watcher = login(&ep, &Identity::generate()?, udp, true).await?;
    let data = tmp.join("daemon");
    let daemon = start_daemon(bin, &data, udp)?;
    let pid = daemon.0.id();
    let mut c = Client::connect(&data, "bench")
        .await?
        .context("the daemon serves no API")?;
    let online = loop {
        if let Answer::Peers { peers: p } = c.call(Request::Peers { wait_ms: 10_000 }).await?
            && p.len() > peers
        {
            break p.len();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let mut rtt = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        c.call(Request::Peers { wait_ms: 0 }).await?;
        rtt.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut through = Vec::new();
    for _ in 0..COMMANDS {
        through.push(peers_command(bin, &data, None)?);
    }
    let mut own = Vec::new();
    for i in 0..OWN_ENGINE_COMMANDS {
        own.push(peers_command(bin, &tmp.join(format!("own{i}")), Some(udp))?);
    }

    let (event_lat, raw_lat) =
        events(&mut c, &data, &mut watcher, &mut sessions[0], changes).await?;

    let cpu0 = cpu_ticks(pid).unwrap_or(0);
    tokio::time::sleep(IDLE).await;
    let idle_pct = (cpu_ticks(pid).unwrap_or(0) - cpu0) as f64 / IDLE.as_secs_f64();
    let rss = proc_field(pid, "VmRSS:").unwrap_or(0);
    drop(sessions);
    drop(daemon);
    ep.close(0u32.into(), b"done");

    let (mut rtt, mut through, mut own) = (rtt, through, own);
    println!("daemon: {online} peers online (relay sessions), release binary {bin}");
    println!(
        "  `peers` API round trip:       p50 {:.2} ms  p99 {:.2} ms   ({calls} calls)",
        pct(&mut rtt, 0.5),
        pct(&mut rtt, 0.99)
    );
    let (t50, o50) = (pct(&mut through, 0.5), pct(&mut own, 0.5));
    println!(
        "  `p2pcall peers` through it:   p50 {t50:.1} ms   own engine: p50 {o50:.1} ms   ratio {:.3}   target p50 <= 5 ms: {}",
        t50 / o50,
        if t50 <= 5.0 { "met" } else { "NOT met" }
    );
    // Per rename: how much later the API subscriber saw it than the raw relay subscriber
    // (the relay's delivery to the daemon's relay session stands in for the engine's input).
    let mut added: Vec<f64> = event_lat.iter().zip(&raw_lat).map(|(a, r)| a - r).collect();
    let (mut event_lat, mut raw_lat) = (event_lat, raw_lat);
    let (e50, e99) = (pct(&mut event_lat, 0.5), pct(&mut event_lat, 0.99));
    let (r50, r99) = (pct(&mut raw_lat, 0.5), pct(&mut raw_lat, 0.99));
    let (a50, a99) = (pct(&mut added, 0.5), pct(&mut added, 0.99));
    println!(
        "  presence event to an API subscriber: p50 {e50:.2} ms p99 {e99:.2} ms; raw relay subscriber p50 {r50:.2} ms p99 {r99:.2} ms"
    );
    println!(
        "  engine -> client, per event: p50 {a50:.2} ms p99 {a99:.2} ms   target p99 <= 1 ms: {}",
        if a99 <= 1.0 { "met" } else { "NOT met" }
    );
    println!(
        "  idle: {:.2} % of a core over {} s (target < 0.5 %: {}), RSS {rss} KiB",
        idle_pct,
        IDLE.as_secs(),
        if idle_pct < 0.5 { "met" } else { "NOT met" }
    );
    Ok(())
}

/// Renames one session `changes` times; returns, per rename, the milliseconds until an API
/// subscriber of the daemon and until a raw relay subscriber saw it.
async fn events(
    c: &mut Client,
    data: &Path,
    watcher: &mut Session,
    changer: &mut Session,
    changes: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut sub = Client::connect(data, "bench-subscriber")
        .await?
        .context("the daemon serves no API")?;
    sub.call(Request::Subscribe).await?;
    let _ = c;
    let (mut api, mut raw) = (Vec::new(), Vec::new());
    for i in 0..changes {
        let name = format!("bench-{i}");
        let mut buf = Vec::new();
        ClientFrame::SetName { name: name.clone() }.encode(&mut buf);
        let t = Instant::now();
        p2pcall_transport::framed::write_all(&mut changer.send, &buf).await?;
        let (mut api_at, mut raw_at) = (None, None);
        while api_at.is_none() || raw_at.is_none() {
            tokio::select! {
                e = sub.next_event(), if api_at.is_none() => {
                    if let Event::PeerUpdated(p) = e? && p.name == name {
                        api_at = Some(t.elapsed());
                    }
                }
                f = watcher.reader.next(), if raw_at.is_none() => {
                    if let Ok(ServerFrame::Updated(p)) = ServerFrame::decode(f?) && p.name == name {
                        raw_at = Some(t.elapsed());
                    }
                }
                () = tokio::time::sleep(Duration::from_secs(5)) => bail!("rename {i} was not reported"),
            }
        }
        api.push(api_at.unwrap_or_default().as_secs_f64() * 1e3);
        raw.push(raw_at.unwrap_or_default().as_secs_f64() * 1e3);
        tokio::time::sleep(RENAME_EVERY).await;
    }
    Ok((api, raw))
}

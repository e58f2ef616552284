//! Relay capacity: registers many peers with a relay *process* (so its memory is measured
//! alone) and measures the relay's CPU time per presence change.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use p2pcall_proto::relay::{ClientFrame, ServerFrame};
use p2pcall_tls::Identity;

use crate::forward::{Session, login};

/// Logins in flight at once.
const CONCURRENCY: usize = 256;
/// Renames per changing session (within the relay's control-frame burst).
const CHANGES_PER_SESSION: usize = 50;
/// Sessions that rename themselves.
const CHANGERS: usize = 10;

fn proc_field(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of a process, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(peers: usize, subscribers: usize, relay_bin: &str, max_secs: u64) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("p2pcall-bench-{}", std::process::id()));
    let mut child = Command::new(relay_bin)
        .args(["--json", "--data-dir"])
        .arg(&dir)
        .args(["relay", "--listen", "127.0.0.1:0", "--no-tcp", "--no-reflect", "--max-peers"])
        .arg((peers + 16).to_string())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {relay_bin} (build it: cargo build --release -p p2pcall)"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let child = Kill(child);
    let pid = child.0.id();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let udp: SocketAddr = line
        .split("\"udp\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .context("relay did not print its address")?
        .parse()?;
    std::thread::sleep(Duration::from_millis(200));
    let rss0 = proc_field(pid, "VmRSS:").unwrap_or(0);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(async move {
        let mut ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        ep.set_default_client_config(p2pcall_tls::quinn_client_config(
            &Identity::generate()?,
            None,
            p2pcall_tls::ALPN_RELAY,
            p2pcall_tls::transport_config(Duration::from_secs(15), Duration::from_secs(60)),
        )?);
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(max_secs);
        let mut sessions: Vec<Session> = Vec::with_capacity(peers);
        let mut pending = tokio::task::JoinSet::new();
        let mut next = 0usize;
        while sessions.len() < peers && Instant::now() < deadline {
            while pending.len() < CONCURRENCY && next < peers {
                let ep = ep.clone();
                let presence = next < subscribers;
                pending.spawn(async move { login(&ep, &Identity::generate()?, udp, presence).await });
                next += 1;
            }
            match pending.join_next().await {
                Some(Ok(Ok(s))) => {
                    sessions.push(s);
                    if sessions.len() % 1000 == 0 {
                        eprintln!(
                            "  {} peers registered after {:.1} s, relay RSS {} KiB",
                            sessions.len(),
                            t0.elapsed().as_secs_f64(),
                            proc_field(pid, "VmRSS:").unwrap_or(0)
                        );
                    }
                }
                Some(Ok(Err(e))) => bail!("login failed after {} peers: {e}", sessions.len()),
                Some(Err(e)) => bail!("login task: {e}"),
                None => break,
            }
        }
        let reg_secs = t0.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss1 = proc_field(pid, "VmRSS:").unwrap_or(0);
        let registered = sessions.len();

        // Presence changes: CHANGERS sessions rename themselves CHANGES_PER_SESSION times;
        // every subscriber must see every change.
        let changes = (CHANGERS * CHANGES_PER_SESSION) as u64;
        let seen = Arc::new(AtomicU64::new(0));
        let mut tail = sessions.split_off(subscribers.min(registered));
        let subs = std::mem::take(&mut sessions);
        let mut readers = tokio::task::JoinSet::new();
        for mut s in subs {
            let seen = seen.clone();
            readers.spawn(async move {
                let mut mine = 0;
                while mine < changes {
                    let Ok(raw) = s.reader.next().await else { break };
                    if let Ok(ServerFrame::Updated(_)) = ServerFrame::decode(raw) {
                        mine += 1;
                        seen.fetch_add(1, Ordering::Relaxed);
                    }
                }
                s
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cpu0 = cpu_ticks(pid).unwrap_or(0);
        let t1 = Instant::now();
        for s in tail.iter_mut().take(CHANGERS) {
            let mut buf = Vec::new();
            for i in 0..CHANGES_PER_SESSION {
                ClientFrame::SetName { name: format!("peer-{i}") }.encode(&mut buf);
            }
            p2pcall_tls::framed::write_all(&mut s.send, &buf).await?;
        }
        let want = changes * subscribers.min(registered) as u64;
        while seen.load(Ordering::Relaxed) < want && t1.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let fanout_secs = t1.elapsed().as_secs_f64();
        let cpu1 = cpu_ticks(pid).unwrap_or(0);
        let delivered = seen.load(Ordering::Relaxed);
        readers.abort_all();
        drop(tail);
        ep.close(0u32.into(), b"done");
        Ok::<_, anyhow::Error>((registered, reg_secs, rss1, changes, want, delivered, fanout_secs, cpu1 - cpu0))
    });
    let (registered, reg_secs, rss1, changes, want, delivered, fanout_secs, ticks) = report?;
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
    let per_peer = (rss1.saturating_sub(rss0)) as f64 * 1024.0 / registered.max(1) as f64;
    let cpu_us = ticks as f64 * 10_000.0 / changes as f64;
    println!("relay-capacity: relay process {relay_bin}, one client endpoint");
    println!(
        "  registered {registered} peers in {reg_secs:.1} s ({:.0} logins/s)",
        registered as f64 / reg_secs
    );
    println!(
        "  relay RSS {} KiB -> {} KiB: {:.0} bytes ({:.2} KiB) per peer   target <= 4 KiB: {}",
        rss0,
        rss1,
        per_peer,
        per_peer / 1024.0,
        if per_peer <= 4096.0 { "met" } else { "NOT met" }
    );
    println!("  projected for 50,000 peers: {:.0} MiB", per_peer * 50_000.0 / (1 << 20) as f64);
    println!(
        "  presence: {changes} changes x {} subscribers = {want} events, {delivered} delivered in {fanout_secs:.2} s",
        want / changes.max(1)
    );
    println!(
        "  relay CPU per change: {cpu_us:.0} us ({:.2} us per delivered event; 10 ms tick resolution)",
        ticks as f64 * 10_000.0 / delivered.max(1) as f64
    );
    Ok(())
}

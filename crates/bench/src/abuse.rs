//! What a hostile peer can make others spend (issue 24's limits), each beside a baseline
//! measured in the same run:
//!
//! * `renamer`: one session renaming itself 49 times a second while N subscribers follow
//!   presence: updates the relay delivers per second and its CPU, with the relay's rename
//!   coalescing (the default, one update per second per peer) and without it (baseline).
//! * `probe-flood`: a peer announcing 48 candidate addresses of its choosing and sending a
//!   `Punch` every second for a minute (sans-IO path manager, virtual clock): probes sent
//!   toward addresses that never answered, beside an honest peer's round.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use p2pcall_proto::relay::{ClientFrame, ServerFrame};

use crate::capacity::{login_retrying, relay_client_endpoint, start_relay_with};
use crate::forward::Session;
use crate::procfs::cpu_ticks;

/// Renames per second of the hostile session (within the relay's control rate of 50/s).
const RENAMES_PER_S: u32 = 49;
/// Logins in flight at once (each login makes the relay tell every subscriber so far).
const CONCURRENCY: usize = 32;

/// Counts the `Updated` events a subscriber receives, pinging as clients do (the relay ends
/// a session silent for 40 s).
async fn count_updates(mut s: Session, n: Arc<AtomicU64>) {
    let mut ping = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            raw = s.reader.next() => match raw {
                Ok(raw) => {
                    if let Ok(ServerFrame::Updated(_)) = ServerFrame::decode(raw) {
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(_) => return,
            },
            _ = ping.tick() => {
                let mut buf = Vec::new();
                ClientFrame::Ping { nonce: 0 }.encode(&mut buf);
                if p2pcall_transport::framed::write_all(&mut s.send, &buf).await.is_err() {
                    return;
                }
            }
        }
    }
}

struct Renamed {
    delivered_per_s: f64,
    cpu_percent: f64,
}

async fn renamer_run(
    relay_bin: &str,
    subscribers: usize,
    secs: f64,
    rename_every_ms: &str,
) -> Result<Renamed> {
    let dir = tempfile::tempdir()?;
    let (relay, udp) = start_relay_with(
        relay_bin,
        dir.path(),
        subscribers + 1,
        &["--rename-every-ms", rename_every_ms],
    )?;
    let pid = relay.0.id();
    let ep = relay_client_endpoint()?;
    let updates = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut readers = tokio::task::JoinSet::new();
    let mut pending = tokio::task::JoinSet::new();
    let (mut next, mut done) = (0, 0);
    while done < subscribers {
        while pending.len() < CONCURRENCY && next < subscribers {
            pending.spawn(login_retrying(ep.clone(), udp, true, retries.clone()));
            next += 1;
        }
        let (_, _, s) = pending.join_next().await.context("logins")???;
        readers.spawn(count_updates(s, updates.clone()));
        done += 1;
    }
    let (_, _, mut renamer) = login_retrying(ep.clone(), udp, false, retries).await?;
    eprintln!(
        "  {subscribers} subscribers registered in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    // The subscribers drain the joins of the registration.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (u0, c0, t0) = (
        updates.load(Ordering::Relaxed),
        cpu_ticks(pid).unwrap_or(0),
        Instant::now(),
    );
    let every = Duration::from_secs(1) / RENAMES_PER_S;
    let mut i = 0u64;
    while t0.elapsed().as_secs_f64() < secs {
        let mut buf = Vec::new();
        ClientFrame::SetName {
            name: format!("renamer-{i}"),
        }
        .encode(&mut buf);
        p2pcall_transport::framed::write_all(&mut renamer.send, &buf).await?;
        i += 1;
        tokio::time::sleep_until((t0 + every * i as u32).into()).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    // What the relay queued during the renaming is read within a second or two.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (u1, c1) = (updates.load(Ordering::Relaxed), cpu_ticks(pid).unwrap_or(0));
    readers.abort_all();
    ep.close(0u32.into(), b"done");
    drop(relay);
    Ok(Renamed {
        delivered_per_s: (u1 - u0) as f64 / elapsed,
        cpu_percent: (c1 - c0) as f64 / (elapsed + 1.5),
    })
}

/// One renamer at 49/s followed by `subscribers`, with and without coalescing.
pub fn renamer(relay_bin: &str, subscribers: usize, secs: f64) -> Result<()> {
    let rt = crate::runtime(2)?;
    println!(
        "renamer: one session renaming itself {RENAMES_PER_S}/s for {secs} s, {subscribers} presence subscribers, relay process {relay_bin}"
    );
    let mut rows = Vec::new();
    for (label, every) in [
        ("baseline, no coalescing", "0"),
        ("coalesced, 1 update/s", "1000"),
    ] {
        let r = rt.block_on(renamer_run(relay_bin, subscribers, secs, every))?;
        println!(
            "  {label:<24} updates delivered {:>9.0}/s ({:.1}/s per subscriber); relay CPU {:.1} % of a core (includes its other work)",
            r.delivered_per_s,
            r.delivered_per_s / subscribers as f64,
            r.cpu_percent
        );
        rows.push(r);
    }
    if let [base, now] = rows.as_slice() {
        println!(
            "  ratio coalesced/baseline: updates {:.3}, relay CPU {:.2}   target about 1 update/s per subscriber: {}",
            now.delivered_per_s / base.delivered_per_s.max(1.0),
            now.cpu_percent / base.cpu_percent.max(0.01),
            if now.delivered_per_s / (subscribers as f64) <= 1.2 {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    Ok(())
}

/// Probes one path manager sends in a minute toward addresses that never answer.
fn probes_in_a_minute(candidates: usize, punch_every: Option<Duration>) -> (u64, u64) {
    use p2pcall_nat::PathManager;
    let t0 = Instant::now();
    let mut m = PathManager::new(p2pcall_proto::PeerId::from_bytes([1; 32]), [7; 32], false);
    let targets: Vec<SocketAddr> = (0..candidates as u16)
        .map(|i| SocketAddr::from(([198, 51, 100, (i % 250) as u8], 1000 + i)))
        .collect();
    m.add_remote_candidates(t0, &targets);
    m.start_round(t0);
    let (mut now, mut sent) = (t0, 0u64);
    let mut next_punch = punch_every.map(|p| t0 + p);
    while now < t0 + Duration::from_secs(60) {
        if let Some(p) = next_punch.filter(|p| now >= *p) {
            m.add_remote_candidates(now, &targets);
            m.start_round(now);
            next_punch = punch_every.map(|e| p + e);
        }
        m.handle_timeout(now);
        sent += std::iter::from_fn(|| m.poll_transmit()).count() as u64;
        now += Duration::from_millis(5);
    }
    (sent, m.probes_over_budget())
}

/// A peer flooding `Candidates` and `Punch` vs. an honest peer's rounds.
pub fn probe_flood() -> Result<()> {
    let (honest, _) = probes_in_a_minute(4, Some(p2pcall_nat::REPUNCH_INTERVAL));
    let (flood, refused) = probes_in_a_minute(
        p2pcall_nat::MAX_CANDIDATES,
        Some(p2pcall_nat::MIN_ROUND_GAP),
    );
    // Before the budget, each round probed every candidate PROBE_TRIES times over 2 s and a
    // Punch a second restarted them: candidates x 5 probes/s.
    let unbounded = p2pcall_nat::MAX_CANDIDATES as u64 * 5 * 60;
    println!(
        "probe-flood: probes per minute toward addresses that never answer (sans-IO, virtual clock)"
    );
    println!("  baseline, honest peer (4 candidates, a round every 30 s): {honest}");
    println!(
        "  hostile peer (48 candidates, a Punch every second): {flood} sent, {refused} refused by the budget (unbounded, as before: about {unbounded})"
    );
    println!(
        "  ratio hostile/honest: {:.1}; endpoint-wide budget for all connections: 250/s",
        flood as f64 / honest.max(1) as f64
    );
    Ok(())
}

//! Presence at scale in a relay cluster: N simulated peers spread over R relays of one
//! cluster (a local `nats-server`), one real presence subscriber per relay; then single
//! changes (a peer joins, then leaves), each timed from the relay where it happens to the subscribers of every
//! other relay. Reports p50/p99, NATS messages per change and the relays' CPU per change.
//! The baseline is the same change seen by a subscriber of the relay where it happens.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use p2pcall_proto::PeerId;
use p2pcall_proto::relay::ServerFrame;
use p2pcall_relay::{Metrics, Relay};
use p2pcall_transport::Identity;

use crate::forward::{Nats, login};

fn peer(relay: usize, i: usize) -> PeerId {
    let mut k = [0u8; 32];
    k[0] = 0xb0 + relay as u8;
    k[1..9].copy_from_slice(&(i as u64).to_le_bytes());
    PeerId::from_bytes(k)
}

/// A presence event a subscriber saw: (subscriber, peer, joined, when).
type Seen = (usize, PeerId, bool, Instant);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn wait_for(what: &str, limit: Duration, cond: impl Fn() -> bool) -> Result<Duration> {
    let t0 = Instant::now();
    while !cond() {
        if t0.elapsed() > limit {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(t0.elapsed())
}

struct Cluster {
    relays: Vec<Arc<Relay>>,
    metrics: Vec<Arc<Metrics>>,
    addrs: Vec<SocketAddr>,
}

fn nats_counts(m: &[Arc<Metrics>]) -> (u64, u64) {
    let sum = |f: fn(&Metrics) -> u64| m.iter().map(|m| f(m)).sum::<u64>();
    (
        sum(|m| m.cluster_published.load(Ordering::Relaxed)),
        sum(|m| m.cluster_received.load(Ordering::Relaxed)),
    )
}

/// What the load phase measured.
struct Load {
    logged_in: Duration,
    converged: Duration,
    cpu_s: f64,
    published: u64,
    delivered: u64,
}

/// What the change phase measured.
struct Changes {
    local: Vec<Duration>,
    other: Vec<Duration>,
    cpu_s: f64,
    published: u64,
    delivered: u64,
}

/// `relays` relays of one cluster on `nats`, on the runtime `rt`, once they see each other.
fn start_cluster(rt: &tokio::runtime::Runtime, nats: &Nats, relays: usize) -> Result<Cluster> {
    let cluster = rt.block_on(async {
        let mut c = Cluster {
            relays: Vec::new(),
            metrics: Vec::new(),
            addrs: Vec::new(),
        };
        for i in 0..relays {
            let mut cfg = p2pcall_relay::RelayConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
            cfg.tcp_listen = None;
            cfg.reflect_listen = None;
            cfg.max_peers = usize::MAX;
            cfg.max_per_address = usize::MAX;
            cfg.cluster = Some(p2pcall_relay::cluster::ClusterConfig {
                servers: vec![format!("nats://127.0.0.1:{}", nats.port())],
                region: format!("r{i}"),
                public_addr: String::new(),
            });
            let r = Relay::start(&Identity::generate()?, cfg).await?;
            c.metrics.push(r.metrics());
            c.addrs.push(r.udp_addr);
            c.relays.push(Arc::new(r));
        }
        Ok::<_, anyhow::Error>(c)
    })?;
    wait_for(
        "the relays to form a cluster",
        Duration::from_secs(10),
        || {
            (cluster.metrics.iter())
                .all(|m| m.cluster_members.load(Ordering::Relaxed) == relays as u64 - 1)
        },
    )?;
    Ok(cluster)
}

/// Every relay registers `per_relay` simulated peers; until every relay knows the others'.
fn load(cluster: &Cluster, per_relay: usize) -> Result<Load> {
    let relays = cluster.relays.len();
    let (p0, r0) = nats_counts(&cluster.metrics);
    let cpu0 = crate::forward::relay_cpu_s();
    let t0 = Instant::now();
    for (r, relay) in cluster.relays.iter().enumerate() {
        for i in 0..per_relay {
            relay.simulate_login(peer(r, i), &format!("peer {i}"));
        }
    }
    let logged_in = t0.elapsed();
    let remote = (per_relay * (relays - 1)) as u64;
    let known = || -> Vec<u64> {
        (cluster.metrics.iter())
            .map(|m| m.cluster_peers.load(Ordering::Relaxed))
            .collect()
    };
    wait_for(
        "every relay to know the others' peers",
        Duration::from_secs(120),
        || known().iter().all(|n| *n == remote),
    )
    .with_context(|| format!("each relay knows {:?} of {remote}", known()))?;
    let converged = t0.elapsed();
    let cpu_s = crate::forward::relay_cpu_s() - cpu0;
    let (p1, r1) = nats_counts(&cluster.metrics);
    Ok(Load {
        logged_in,
        converged,
        cpu_s,
        published: p1 - p0,
        delivered: r1 - r0,
    })
}

/// One presence subscriber per relay (logged in from `ep`), once each has its snapshot of
/// `total` peers; what they see comes out of the returned receiver.
fn subscribe(
    client_rt: &tokio::runtime::Runtime,
    ep: quinn::Endpoint,
    cluster: &Cluster,
    total: usize,
) -> Result<std::sync::mpsc::Receiver<Seen>> {
    let (seen_tx, seen_rx) = std::sync::mpsc::channel::<Seen>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<usize>();
    for (s, addr) in cluster.addrs.iter().enumerate() {
        let session = client_rt.block_on(login(&ep, &Identity::generate()?, *addr, true))?;
        let (seen_tx, ready_tx) = (seen_tx.clone(), ready_tx.clone());
        client_rt.spawn(async move {
            let mut session = session;
            let mut snapshot = 0usize;
            loop {
                let Ok(raw) = session.reader.next().await else {
                    return;
                };
                let now = Instant::now();
                match ServerFrame::decode(raw) {
                    Ok(ServerFrame::Snapshot { peers, last }) => {
                        snapshot += peers.len();
                        if last {
                            let _ = ready_tx.send(snapshot);
                        }
                    }
                    Ok(ServerFrame::Joined(p)) => {
                        let _ = seen_tx.send((s, p.id, true, now));
                    }
                    Ok(ServerFrame::Left(id)) => {
                        let _ = seen_tx.send((s, id, false, now));
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
    }
    for _ in 0..cluster.relays.len() {
        let n = (ready_rx.recv_timeout(Duration::from_secs(120)))
            .context("a subscriber's presence snapshot")?;
        if n < total {
            bail!("a subscriber's snapshot held {n} peers, not {total}");
        }
    }

    Ok(seen_rx)
}

/// `changes` single changes (a peer joins at the next relay, then leaves), each waited for at
/// every relay's subscriber.
fn change(
    cluster: &Cluster,
    seen_rx: &std::sync::mpsc::Receiver<Seen>,
    per_relay: usize,
    changes: usize,
) -> Result<Changes> {
    let relays = cluster.relays.len();
    let (p2, r2) = nats_counts(&cluster.metrics);
    let cpu2 = crate::forward::relay_cpu_s();
    let mut local = Vec::new();
    let mut other = Vec::new();
    for k in 0..changes {
        // A peer joins at the next relay, then leaves again.
        let j = k / 2;
        let r = j % relays;
        let id = peer(r, per_relay + j);
        let join = k % 2 == 0;
        let t = Instant::now();
        if join {
            cluster.relays[r].simulate_login(id, "changer");
        } else {
            cluster.relays[r].simulate_logout(&id);
        }
        let mut waiting: Vec<usize> = (0..relays).collect();
        let deadline = t + Duration::from_secs(10);
        while !waiting.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let (s, seen_id, joined, at) = (seen_rx.recv_timeout(left)).with_context(|| {
                format!("change {k} (join {join}) at relay {r}: still waiting for {waiting:?}")
            })?;
            if seen_id != id || joined != join {
                continue;
            }
            waiting.retain(|w| *w != s);
            if s == r {
                local.push(at - t);
            } else {
                other.push(at - t);
            }
        }
    }
    let change_cpu = crate::forward::relay_cpu_s() - cpu2;
    let (p3, r3) = nats_counts(&cluster.metrics);
    local.sort();
    other.sort();
    Ok(Changes {
        local,
        other,
        cpu_s: change_cpu,
        published: p3 - p2,
        delivered: r3 - r2,
    })
}

pub fn run(peers: usize, relays: usize, changes: usize) -> Result<()> {
    let relays = relays.max(2);
    let per_relay = peers / relays;
    let nats = Nats::start()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(crate::forward::RELAY_THREAD)
        .enable_all()
        .build()?;
    let cluster = start_cluster(&rt, &nats, relays)?;
    let l = load(&cluster, per_relay)?;
    let client_rt = crate::runtime(1)?;
    let ep = client_rt
        .block_on(async { quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))) })?;
    let seen_rx = subscribe(&client_rt, ep.clone(), &cluster, per_relay * relays)?;
    let c = change(&cluster, &seen_rx, per_relay, changes)?;
    report(per_relay * relays, relays, changes, &l, &c);
    client_rt.block_on(async move { ep.close(0u32.into(), b"done") });
    rt.block_on(async move {
        for r in cluster.relays {
            if let Ok(r) = Arc::try_unwrap(r) {
                r.shutdown().await;
            }
        }
    });
    Ok(())
}

fn report(total: usize, relays: usize, changes: usize, l: &Load, c: &Changes) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "cluster-presence: {} simulated peers over {relays} relays of one cluster (one nats-server), {changes} single changes",
        total
    );
    println!(
        "  load: {} logins in {:.1} s; every relay knew every other relay's peers after {:.1} s",
        total,
        l.logged_in.as_secs_f64(),
        l.converged.as_secs_f64()
    );
    println!(
        "        NATS messages published {}, delivered {} ({:.3} published per login: changes are batched); relays' CPU {:.1} µs per login",
        l.published,
        l.delivered,
        l.published as f64 / (total) as f64,
        l.cpu_s * 1e6 / (total) as f64
    );
    println!(
        "  a change seen by a subscriber of its own relay (baseline): p50 {:.2} ms, p99 {:.2} ms",
        ms(percentile(&c.local, 0.5)),
        ms(percentile(&c.local, 0.99))
    );
    println!(
        "  a change seen by the subscribers of the other relays:      p50 {:.2} ms, p99 {:.2} ms  (ratio p50 {:.1})",
        ms(percentile(&c.other, 0.5)),
        ms(percentile(&c.other, 0.99)),
        ms(percentile(&c.other, 0.5)) / ms(percentile(&c.local, 0.5)).max(1e-6)
    );
    println!(
        "  NATS messages per change: {:.2} published, {:.2} delivered (heartbeats included); relays' CPU per change {:.0} µs (all {relays} relays)",
        c.published as f64 / changes as f64,
        c.delivered as f64 / changes as f64,
        c.cpu_s * 1e6 / changes as f64
    );
}

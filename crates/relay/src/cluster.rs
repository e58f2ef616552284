//! Joining a cluster of relays through NATS: this relay's heartbeat every second, and the
//! members it hears (`proto::cluster`). When NATS cannot be reached the relay keeps serving
//! the peers registered with it and says so (`/healthz`, `p2pcall_relay_cluster_connected`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use p2pcall_proto::PeerId;
use p2pcall_proto::cluster::{ALIVE_SUBJECT, HEARTBEAT_EVERY, Heartbeat, Membership};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

pub use crate::config::ClusterConfig;

/// The cluster as this relay sees it.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub(crate) membership: Mutex<Membership>,
}

/// What [`crate::Relay::cluster_members`] reports of another relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMember {
    /// Its key.
    pub relay: PeerId,
    /// Its region.
    pub region: String,
    /// Where clients reach it.
    pub public_addr: String,
    /// Peers registered with it.
    pub peers: u32,
}

impl Cluster {
    pub(crate) fn members(&self) -> Vec<ClusterMember> {
        (self.membership.lock().members())
            .map(|m| ClusterMember {
                relay: m.heartbeat.relay,
                region: m.heartbeat.region.clone(),
                public_addr: m.heartbeat.public_addr.clone(),
                peers: m.heartbeat.peers,
            })
            .collect()
    }
}

/// Joins the cluster in the background (a task of the relay's set).
pub(crate) fn start(
    cfg: ClusterConfig,
    me: PeerId,
    shared: &crate::state::Shared,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Arc<Cluster> {
    let cluster = Arc::new(Cluster {
        membership: Mutex::new(Membership::new(me)),
    });
    let sessions = shared.sessions.clone();
    tasks.spawn(run(
        cfg,
        me,
        cluster.clone(),
        shared.metrics.clone(),
        move || sessions.read().len(),
        shared.cancel.clone(),
    ));
    cluster
}

/// Connects to NATS (retrying in the background until it answers: the relay serves its own
/// peers meanwhile) and runs the heartbeat until `cancel`; then says it leaves.
async fn run(
    cfg: ClusterConfig,
    me: PeerId,
    cluster: Arc<Cluster>,
    metrics: Arc<Metrics>,
    online: impl Fn() -> usize + Send + 'static,
    cancel: CancellationToken,
) {
    metrics.cluster_configured.store(1, Ordering::Relaxed);
    let servers: Vec<async_nats::ServerAddr> = (cfg.servers.iter())
        .filter_map(|s| {
            s.parse()
                .inspect_err(|e| tracing::warn!("cluster server {s:?}: {e}"))
                .ok()
        })
        .collect();
    let options = async_nats::ConnectOptions::new()
        .name(format!("p2pcall-relay {}", me.fingerprint()))
        .retry_on_initial_connect()
        .connection_timeout(std::time::Duration::from_secs(2))
        .max_reconnects(None);
    let client = tokio::select! {
        _ = cancel.cancelled() => return,
        c = options.connect(servers) => match c {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("cannot join the relay cluster: {e}");
                return;
            }
        },
    };
    let mut alive = match client.subscribe(ALIVE_SUBJECT).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot subscribe to the cluster's heartbeats: {e}");
            return;
        }
    };
    let heartbeat = |leaving: bool| Heartbeat {
        relay: me,
        region: cfg.region.clone(),
        public_addr: cfg.public_addr.clone(),
        peers: u32::try_from(online()).unwrap_or(u32::MAX),
        leaving,
    };
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    use futures_util::StreamExt as _;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            m = alive.next() => {
                let Some(m) = m else { break };
                match Heartbeat::decode(&m.payload) {
                    Ok(hb) => {
                        if let Some(change) = cluster.membership.lock().heard(Instant::now(), hb) {
                            tracing::info!(?change, "cluster membership");
                        }
                    }
                    Err(e) => tracing::debug!("a heartbeat that does not decode: {e}"),
                }
            }
            _ = tick.tick() => {
                let connected =
                    client.connection_state() == async_nats::connection::State::Connected;
                metrics.cluster_connected.store(u64::from(connected), Ordering::Relaxed);
                let _ = client.publish(ALIVE_SUBJECT, heartbeat(false).encode().into()).await;
                let n = {
                    let mut membership = cluster.membership.lock();
                    for change in membership.expire(Instant::now()) {
                        tracing::info!(?change, "cluster membership");
                    }
                    membership.members().count()
                };
                metrics.cluster_members.store(n as u64, Ordering::Relaxed);
            }
        }
    }
    let _ = client
        .publish(ALIVE_SUBJECT, heartbeat(true).encode().into())
        .await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), client.flush()).await;
}

//! `p2pcall relay`.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::Args;
use p2pcall_core::identity;
use serde_json::json;

use crate::Cli;
use crate::ctx::*;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  p2pcall relay                                        # UDP and TCP 7700, reflection 7701
  p2pcall relay --listen 0.0.0.0:7700 --metrics 127.0.0.1:9100 --token s3cret
  p2pcall relay --config /etc/p2pcall/relay.toml       # the same settings in a file

Settings given on the command line win over the file's, which win over the defaults.
The relay's key is in --data-dir (identity.key): keep that folder to keep the key clients
pinned.")]
pub(crate) struct RelayArgs {
    /// Settings file (TOML: listen, udp, tcp_listen, tcp, reflect_listen, reflect, metrics,
    /// token, max_peers, max_per_address, packet_rate, mbit_rate, cluster, region,
    /// public_addr)
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Address for everything: UDP (QUIC control + packet relay) and the TCP+TLS fallback
    /// [default: 0.0.0.0:7700]
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// UDP address, if not --listen
    #[arg(long, value_name = "ADDR")]
    udp: Option<SocketAddr>,
    /// TCP+TLS fallback address, if not --listen
    #[arg(long, value_name = "ADDR", conflicts_with = "no_tcp")]
    tcp_listen: Option<SocketAddr>,
    /// Disable the TCP+TLS fallback
    #[arg(long)]
    no_tcp: bool,
    /// Second UDP address answering address reflection [default: UDP port + 1]
    #[arg(long, value_name = "ADDR", conflicts_with = "no_reflect")]
    reflect: Option<SocketAddr>,
    /// Disable the second reflection port
    #[arg(long)]
    no_reflect: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (and /healthz)
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Most peers online at once [default: 50000]
    #[arg(long, value_name = "N")]
    max_peers: Option<usize>,
    /// Most peers online at once from one IP address (one client cannot take every slot)
    /// [default: 256]
    #[arg(long, value_name = "N")]
    max_per_address: Option<usize>,
    /// Relayed packets per second per peer [default: 10000]
    #[arg(long, value_name = "N")]
    packet_rate: Option<f64>,
    /// Relayed Mbit/s per peer [default: 100]
    #[arg(long, value_name = "N")]
    mbit_rate: Option<f64>,
    /// Join a cluster of relays through these NATS servers (any one is enough)
    #[arg(long, value_name = "nats://HOST:PORT[,...]")]
    cluster: Option<String>,
    /// This relay's region, told to the cluster
    #[arg(long, value_name = "NAME")]
    region: Option<String>,
    /// Where clients and the other relays reach this relay, told to the cluster [default:
    /// the UDP address it listens on, unless that is 0.0.0.0]
    #[arg(long, value_name = "HOST:PORT")]
    public_addr: Option<String>,
    /// (benchmarks) Deliver a peer's renames at most this often, ms [default: 1000]
    #[arg(long, hide = true, value_name = "MS")]
    rename_every_ms: Option<u64>,
}

impl RelayArgs {
    /// The settings given on the command line, as a settings file would hold them.
    fn as_file(&self, cli: &Cli) -> p2pcall_relay::RelayFile {
        p2pcall_relay::RelayFile {
            listen: self.listen,
            udp: self.udp,
            tcp_listen: self.tcp_listen,
            tcp: self.no_tcp.then_some(false),
            reflect_listen: self.reflect,
            reflect: self.no_reflect.then_some(false),
            metrics: self.metrics,
            token: cli.token.clone(),
            max_peers: self.max_peers,
            max_per_address: self.max_per_address,
            packet_rate: self.packet_rate,
            mbit_rate: self.mbit_rate,
            cluster: self.cluster.clone(),
            region: self.region.clone(),
            public_addr: self.public_addr.clone(),
        }
    }
}

pub(crate) async fn relay(cli: &Cli, a: &RelayArgs) -> Result<()> {
    let ctx = load(cli)?;
    let (identity, _) = identity::load_or_create(&ctx.dirs.data)?;
    let file = match &a.config {
        Some(path) => p2pcall_relay::RelayFile::load(path)?,
        None => p2pcall_relay::RelayFile::default(),
    };
    let mut cfg = file.overlaid(a.as_file(cli)).config();
    if let Some(ms) = a.rename_every_ms {
        cfg.rename_every = std::time::Duration::from_millis(ms);
    }
    let token_required = cfg.token.is_some();
    let mut cluster = cfg.cluster.clone();
    let relay = p2pcall_relay::Relay::start(&identity, cfg)
        .await
        .context("starting the relay (is another relay already running on that port?)")?;
    // What the cluster tells clients when no public address was given: the bound one (not a
    // wildcard address, which reaches nobody).
    if let Some(c) = cluster.as_mut().filter(|c| c.public_addr.is_empty())
        && !relay.udp_addr.ip().is_unspecified()
    {
        c.public_addr = relay.udp_addr.to_string();
    }
    if cli.json {
        outln!(
            "{}",
            json!({"event": "relay_started", "udp": relay.udp_addr.to_string(), "tcp": relay.tcp_addr.map(|a| a.to_string()), "reflect": relay.reflect_addr.map(|a| a.to_string()), "metrics": relay.metrics_addr.map(|a| format!("http://{a}/metrics")), "fingerprint": relay.id.fingerprint().to_string(), "key": relay.id.to_hex(), "token_required": token_required, "cluster": cluster.as_ref().map(|c| json!({"servers": c.servers, "region": c.region, "public_addr": c.public_addr}))})
        );
    } else {
        outln!("relay {} listening", relay.id.fingerprint());
        outln!(
            "  key (clients pin it; give it to them as relay_key): {}",
            relay.id.to_hex()
        );
        outln!("  UDP (QUIC + packet relay): {}", relay.udp_addr);
        if let Some(t) = relay.tcp_addr {
            outln!("  TCP+TLS fallback:          {t}");
        }
        if let Some(r) = relay.reflect_addr {
            outln!("  reflection:                {r}");
        }
        if let Some(m) = relay.metrics_addr {
            outln!("  metrics:                   http://{m}/metrics");
        }
        if let Some(c) = &cluster {
            outln!(
                "  cluster:                   {} (region {:?}, clients reach it at {:?}; /healthz says degraded while NATS is unreachable)",
                c.servers.join(","),
                c.region,
                c.public_addr
            );
        }
        if token_required {
            outln!("  access token required");
        }
    }
    shutdown_signal().await;
    if !cli.json {
        outln!("shutting down ({} peers online)", relay.online());
    }
    relay.shutdown().await;
    Ok(())
}

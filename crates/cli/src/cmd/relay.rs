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
  p2pcall relay --listen 0.0.0.0:7700 --metrics 127.0.0.1:9100 --token s3cret")]
pub(crate) struct RelayArgs {
    /// Address for everything: UDP (QUIC control + packet relay) and the TCP+TLS fallback
    #[arg(long, default_value = "0.0.0.0:7700", value_name = "ADDR")]
    listen: SocketAddr,
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
    /// Most peers online at once
    #[arg(long, default_value_t = 50_000)]
    max_peers: usize,
    /// (benchmarks) Deliver a peer's renames at most this often, ms [default: 1000]
    #[arg(long, hide = true, value_name = "MS")]
    rename_every_ms: Option<u64>,
    /// Most peers online at once from one IP address (one client cannot take every slot)
    #[arg(long, default_value_t = 256, value_name = "N")]
    max_per_address: usize,
    /// Relayed packets per second per peer
    #[arg(long, default_value_t = 10_000.0)]
    packet_rate: f64,
    /// Relayed Mbit/s per peer
    #[arg(long, default_value_t = 100.0)]
    mbit_rate: f64,
}

pub(crate) async fn relay(cli: &Cli, a: &RelayArgs) -> Result<()> {
    let ctx = load(cli)?;
    let (identity, _) = identity::load_or_create(&ctx.dirs.data)?;
    let udp = a.udp.unwrap_or(a.listen);
    let mut cfg = p2pcall_relay::RelayConfig::new(udp);
    cfg.tcp_listen = if a.no_tcp {
        None
    } else {
        Some(a.tcp_listen.unwrap_or(a.listen))
    };
    cfg.reflect_listen = if a.no_reflect {
        None
    } else {
        a.reflect.or(cfg.reflect_listen)
    };
    cfg.metrics_listen = a.metrics;
    cfg.token = cli.token.clone();
    cfg.max_peers = a.max_peers;
    cfg.max_per_address = a.max_per_address;
    if let Some(ms) = a.rename_every_ms {
        cfg.rename_every = std::time::Duration::from_millis(ms);
    }
    cfg.packet_rate = a.packet_rate;
    cfg.byte_rate = a.mbit_rate * 1e6 / 8.0;
    let relay = p2pcall_relay::Relay::start(&identity, cfg)
        .await
        .context("starting the relay (is another relay already running on that port?)")?;
    if cli.json {
        outln!(
            "{}",
            json!({"event": "relay_started", "udp": relay.udp_addr.to_string(), "tcp": relay.tcp_addr.map(|a| a.to_string()), "reflect": relay.reflect_addr.map(|a| a.to_string()), "metrics": relay.metrics_addr.map(|a| format!("http://{a}/metrics")), "fingerprint": relay.id.fingerprint().to_string(), "key": relay.id.to_hex(), "token_required": cli.token.is_some()})
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
        if cli.token.is_some() {
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

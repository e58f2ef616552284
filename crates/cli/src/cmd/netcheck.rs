//! `p2pcall netcheck`.

use anyhow::{Result, bail};
use p2pcall_nat::classify::Mapping;
use serde_json::json;

use crate::Cli;
use crate::ctx::*;
use crate::output::{transport_json, transport_text};

pub(crate) async fn netcheck(cli: &Cli) -> Result<()> {
    let (engine, mut events) = start_engine(cli, false).await?;
    if wait_online(&engine, &mut events).await?.is_none() {
        bail!(
            "netcheck measures the NAT through a relay's reflection ports; LAN-only mode has no relay: pass --relay HOST"
        );
    }
    let transport = engine.wait_relay(RELAY_WAIT).await?;
    let ep = engine.endpoint();
    let report = ep.netcheck().await?;
    let mapping = match report.mapping {
        Mapping::None => "none (public address)",
        Mapping::EndpointIndependent => "endpoint-independent",
        Mapping::EndpointDependent => "endpoint-dependent",
        Mapping::Unknown => "unknown",
    };
    let candidates: Vec<String> = ep
        .local_candidates()
        .iter()
        .map(ToString::to_string)
        .collect();
    // Both reflection ports usually see the same address: list each address once.
    let mut observed: Vec<String> = Vec::new();
    for a in &report.observed {
        let a = a.to_string();
        if !observed.contains(&a) {
            observed.push(a);
        }
    }
    let ipv6 = ep.has_global_ipv6();
    if cli.json {
        outln!(
            "{}",
            json!({"udp": !report.udp_blocked, "relay_transport": transport_json(transport),
                   "mapping": mapping, "port_preserved": report.port_preserved, "observed": observed,
                   "ipv6": ipv6, "candidates": candidates})
        );
    } else {
        outln!(
            "UDP:            {}",
            if report.udp_blocked {
                "blocked (relay reached over TCP)"
            } else {
                "works"
            }
        );
        outln!("relay session:  {}", transport_text(transport));
        outln!("NAT mapping:    {mapping}");
        outln!(
            "port preserved: {}",
            if report.port_preserved { "yes" } else { "no" }
        );
        outln!(
            "observed:       {}",
            if observed.is_empty() {
                "-".into()
            } else {
                observed.join(", ")
            }
        );
        outln!("global IPv6:    {}", if ipv6 { "yes" } else { "no" });
        outln!("candidates:     {}", candidates.join(", "));
    }
    engine.shutdown().await;
    Ok(())
}

//! `p2pcall netcheck`.

use anyhow::{Result, bail};
use p2pcall_nat::classify::Mapping;
use serde_json::json;

use crate::Cli;
use crate::ctx::*;

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
    let observed: Vec<String> = report.observed.iter().map(ToString::to_string).collect();
    let ipv6 = ep.has_global_ipv6();
    if cli.json {
        println!(
            "{}",
            json!({"udp": !report.udp_blocked, "relay_transport": format!("{transport:?}").to_lowercase(),
                   "mapping": mapping, "port_preserved": report.port_preserved, "observed": observed,
                   "ipv6": ipv6, "candidates": candidates})
        );
    } else {
        println!(
            "UDP:            {}",
            if report.udp_blocked {
                "blocked (relay reached over TCP)"
            } else {
                "works"
            }
        );
        println!("relay session:  {transport:?}");
        println!("NAT mapping:    {mapping}");
        println!(
            "port preserved: {}",
            if report.port_preserved { "yes" } else { "no" }
        );
        println!(
            "observed:       {}",
            if observed.is_empty() {
                "-".into()
            } else {
                observed.join(", ")
            }
        );
        println!("global IPv6:    {}", if ipv6 { "yes" } else { "no" });
        println!("candidates:     {}", candidates.join(", "));
    }
    engine.shutdown().await;
    Ok(())
}

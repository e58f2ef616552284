//! `p2pcall netcheck`.

use anyhow::{Result, bail};
use p2pcall_api::{Answer, Request};
use serde_json::json;

use crate::Cli;
use crate::ctx::*;

pub(crate) async fn netcheck(cli: &Cli) -> Result<()> {
    let r = match engine_client(cli).await? {
        Some(mut c) => {
            let Answer::Netcheck(r) = c.call(Request::Netcheck).await? else {
                bail!("the p2pcall daemon answered something else than the NAT check");
            };
            r
        }
        None => {
            let (engine, mut events) = start_engine(cli, false).await?;
            if wait_online(&engine, &mut events).await?.is_none() {
                bail!(
                    "netcheck measures the NAT through a relay's reflection ports; LAN-only mode has no relay: pass --relay HOST"
                );
            }
            let transport = engine.wait_relay(RELAY_WAIT).await?;
            let r = p2pcall_daemon::tools::netcheck(&engine, transport).await?;
            engine.shutdown().await;
            r
        }
    };
    if cli.json {
        outln!(
            "{}",
            json!({"udp": r.udp, "relay_transport": r.relay_transport,
                   "mapping": r.mapping, "port_preserved": r.port_preserved, "observed": r.observed,
                   "ipv6": r.ipv6, "candidates": r.candidates})
        );
        return Ok(());
    }
    outln!(
        "UDP:            {}",
        if r.udp {
            "works"
        } else {
            "blocked (relay reached over TCP)"
        }
    );
    let session: String = p2pcall_daemon::tools::transport_from_api(&r.relay_transport)
        .map_or_else(
            || r.relay_transport.clone(),
            |t| crate::output::transport_text(t).into(),
        );
    outln!("relay session:  {session}");
    outln!("NAT mapping:    {}", r.mapping);
    outln!(
        "port preserved: {}",
        if r.port_preserved { "yes" } else { "no" }
    );
    outln!(
        "observed:       {}",
        if r.observed.is_empty() {
            "-".into()
        } else {
            r.observed.join(", ")
        }
    );
    outln!("global IPv6:    {}", if r.ipv6 { "yes" } else { "no" });
    outln!("candidates:     {}", r.candidates.join(", "));
    Ok(())
}

//! `p2pcall ping`.

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use p2pcall_core::engine::EngineEvent;
use p2pcall_net::Event;
use serde_json::json;

use crate::Cli;
use crate::ctx::*;
use crate::exit;
use crate::output::*;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  p2pcall ping alice
  p2pcall ping 3f2a-91c0 -c 10 -i 200
  p2pcall ping alice --watch        # until Ctrl-C, with path changes")]
pub(crate) struct PingArgs {
    /// The peer: fingerprint (or its first 4+ digits), full id, or display name
    peer: String,
    /// Number of pings
    #[arg(long, short = 'c', default_value_t = 4)]
    count: u32,
    /// Milliseconds between pings
    #[arg(long, short = 'i', default_value_t = 1000)]
    interval: u64,
    /// Keep pinging until Ctrl-C (ignores --count) and show path changes as they happen
    #[arg(long)]
    watch: bool,
}

pub(crate) async fn ping(cli: &Cli, a: &PingArgs) -> Result<()> {
    let Dialed {
        engine,
        mut events,
        peer,
        conn,
        transport,
        setup,
        connected,
    } = dial(cli, &a.peer).await?;
    if cli.json {
        outln!("{}", connected_json(&engine, &conn, setup, transport));
    } else {
        outln!(
            "connected to {} in {:.1} ms via {}",
            peer.fingerprint(),
            ms(setup),
            path_str(&conn.path())
        );
        outln!(
            "safety number (compare with your peer): {}",
            conn.safety_number()
        );
    }
    let mut rtts = Vec::new();
    let mut lost = 0u32;
    let mut sent = 0u32;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    for seq in 0.. {
        if !a.watch && seq >= a.count {
            break;
        }
        if seq > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(a.interval)) => {}
                _ = &mut stop => break,
            }
        }
        sent += 1;
        while let Ok(e) = events.try_recv() {
            if let EngineEvent::Net(Event::PathChanged { peer: p, .. }) = &e
                && *p == peer
            {
                print_path_change(cli.json, &e, connected);
            }
        }
        let r = engine.ping(peer, seq).await?;
        match r.rtt {
            Some(rtt) => {
                rtts.push(rtt);
                if cli.json {
                    outln!(
                        "{}",
                        json!({"event": "ping", "seq": seq, "rtt_ms": ms(rtt), "path": path_str(&r.path)})
                    );
                } else {
                    outln!("seq={seq} rtt={:.3} ms path={}", ms(rtt), path_str(&r.path));
                }
            }
            None => {
                lost += 1;
                if cli.json {
                    outln!(
                        "{}",
                        json!({"event": "ping", "seq": seq, "rtt_ms": null, "path": path_str(&r.path)})
                    );
                } else {
                    outln!("seq={seq} lost path={}", path_str(&r.path));
                }
            }
        }
    }
    let min = rtts.iter().min().copied().map(ms);
    let max = rtts.iter().max().copied().map(ms);
    let avg = (!rtts.is_empty()).then(|| ms(rtts.iter().sum::<Duration>() / rtts.len() as u32));
    if cli.json {
        outln!(
            "{}",
            json!({"event": "summary", "sent": sent, "received": rtts.len(), "lost": lost, "min_ms": min, "avg_ms": avg, "max_ms": max, "path": path_str(&conn.path()), "probes_sent": conn.stats().probes_sent})
        );
    } else {
        outln!(
            "{} sent, {} received, {} lost; rtt min/avg/max = {}/{}/{} ms; path now {}",
            sent,
            rtts.len(),
            lost,
            min.map_or("-".into(), |v| format!("{v:.3}")),
            avg.map_or("-".into(), |v| format!("{v:.3}")),
            max.map_or("-".into(), |v| format!("{v:.3}")),
            path_str(&conn.path())
        );
    }
    engine.shutdown().await;
    if rtts.is_empty() && sent > 0 {
        return Err(exit::Fail::PeerSilent(format!(
            "none of the {sent} pings was answered within {} s",
            p2pcall_net::PING_TIMEOUT.as_secs()
        ))
        .into());
    }
    Ok(())
}

//! `p2pcall ping`.

use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use p2pcall_core::engine::EngineEvent;
use p2pcall_net::Event;
use serde_json::json;

use crate::Cli;
use crate::ctx::*;
use crate::exit;
use crate::output::*;
use crate::session::{Session, connected_json, setup};

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
    let (mut session, conn, connected) = Session::connect(cli, &a.peer).await?;
    let peer = session.peer;
    if cli.json {
        outln!("{}", connected_json(&conn));
    } else {
        outln!(
            "connected to {} in {:.1} ms via {}",
            peer.fingerprint(),
            ms(setup(&conn)),
            conn.path
        );
        outln!(
            "safety number (compare with your peer): {}",
            conn.safety_number
        );
    }
    let mut rtts = Vec::new();
    let mut lost = 0u32;
    let mut sent = 0u32;
    let mut last = None;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    'pings: for seq in 0.. {
        if !a.watch && seq >= a.count {
            break;
        }
        if seq > 0 {
            let pause = tokio::time::sleep(Duration::from_millis(a.interval));
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    _ = &mut pause => break,
                    _ = &mut stop => break 'pings,
                    e = session.next_event() => match e? {
                        Some(e @ EngineEvent::Net(Event::PathChanged { peer: p, .. })) if p == peer => {
                            print_path_change(cli.json, &e, connected);
                        }
                        Some(_) => {}
                        None => bail!("the engine stopped"),
                    },
                }
            }
        }
        sent += 1;
        let r = session.ping(seq).await?;
        match r.rtt_us.map(Duration::from_micros) {
            Some(rtt) => {
                rtts.push(rtt);
                if cli.json {
                    outln!(
                        "{}",
                        json!({"event": "ping", "seq": seq, "rtt_ms": ms(rtt), "path": r.path})
                    );
                } else {
                    outln!("seq={seq} rtt={:.3} ms path={}", ms(rtt), r.path);
                }
            }
            None => {
                lost += 1;
                if cli.json {
                    outln!(
                        "{}",
                        json!({"event": "ping", "seq": seq, "rtt_ms": null, "path": r.path})
                    );
                } else {
                    outln!("seq={seq} lost path={}", r.path);
                }
            }
        }
        last = Some(r);
    }
    let min = rtts.iter().min().copied().map(ms);
    let max = rtts.iter().max().copied().map(ms);
    let avg = (!rtts.is_empty()).then(|| ms(rtts.iter().sum::<Duration>() / rtts.len() as u32));
    let (path, probes_sent) = last.map_or((conn.path.clone(), 0), |r| (r.path, r.probes_sent));
    if cli.json {
        outln!(
            "{}",
            json!({"event": "summary", "sent": sent, "received": rtts.len(), "lost": lost, "min_ms": min, "avg_ms": avg, "max_ms": max, "path": path, "probes_sent": probes_sent})
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
            path
        );
    }
    session.close().await;
    if rtts.is_empty() && sent > 0 {
        return Err(exit::Fail::PeerSilent(format!(
            "none of the {sent} pings was answered within {} s",
            p2pcall_net::PING_TIMEOUT.as_secs()
        ))
        .into());
    }
    Ok(())
}

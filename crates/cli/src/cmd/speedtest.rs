//! `p2pcall speedtest`.

use anyhow::{Result, bail};
use clap::Args;
use serde_json::json;

use crate::Cli;
use crate::ctx::*;
use crate::output::*;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  p2pcall speedtest alice
  p2pcall speedtest alice --bytes 1GB")]
pub(crate) struct SpeedtestArgs {
    /// The peer: fingerprint (or its first 4+ digits), full id, or display name
    peer: String,
    /// How much to send: bytes, or with a unit (kB, MB, GB; KiB, MiB, GiB)
    #[arg(long, default_value = "256MiB", value_parser = parse_size, value_name = "SIZE")]
    bytes: u64,
}

pub(crate) async fn speedtest(cli: &Cli, a: &SpeedtestArgs) -> Result<()> {
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
            "connected to {} in {:.1} ms via {}; sending {}",
            peer.fingerprint(),
            ms(setup),
            path_str(&conn.path()),
            human(a.bytes as f64)
        );
    }
    let test = engine.speedtest(peer, a.bytes);
    tokio::pin!(test);
    let report = loop {
        tokio::select! {
            r = &mut test => break r?,
            e = events.recv() => match e {
                Some(e) => print_path_change(cli.json, &e, connected),
                None => bail!("engine stopped"),
            },
        }
    };
    let s = conn.stats();
    if cli.json {
        outln!(
            "{}",
            json!({"event": "result", "bytes": report.bytes, "seconds": report.elapsed.as_secs_f64(), "mbit_s": report.mbit_per_s(), "verified": report.verified, "tx_relay": s.tx_relay, "tx_direct": s.tx_direct, "path": path_str(&s.path)})
        );
    } else {
        outln!(
            "{} bytes in {:.2} s: {:.1} Mbit/s, {}; {} bytes via the relay, {} direct; path now {}",
            report.bytes,
            report.elapsed.as_secs_f64(),
            report.mbit_per_s(),
            if report.verified {
                "verified by the peer"
            } else {
                "NOT verified"
            },
            s.tx_relay,
            s.tx_direct,
            path_str(&s.path)
        );
    }
    engine.shutdown().await;
    if !report.verified {
        bail!("the peer received different data than was sent");
    }
    Ok(())
}

//! `p2pcall speedtest`.

use anyhow::{Result, bail};
use clap::Args;
use serde_json::json;

use crate::Cli;
use crate::ctx::*;
use crate::output::*;
use crate::session::{Session, connected_json, setup};

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
    let (mut session, conn, connected) = Session::connect(cli, &a.peer).await?;
    let peer = session.peer;
    if cli.json {
        outln!("{}", connected_json(&conn));
    } else {
        outln!(
            "connected to {} in {:.1} ms via {}; sending {}",
            peer.fingerprint(),
            ms(setup(&conn)),
            conn.path,
            human(a.bytes as f64)
        );
    }
    let mut test = tokio::spawn(session.control(cli).await?.speedtest(peer, a.bytes));
    let report = loop {
        tokio::select! {
            r = &mut test => break r??,
            e = session.next_event() => match e? {
                Some(e) => print_path_change(cli.json, &e, connected),
                None => bail!("engine stopped"),
            },
        }
    };
    let elapsed = std::time::Duration::from_micros(report.elapsed_us);
    let seconds = elapsed.as_secs_f64();
    let mbit_s = p2pcall_core::speedtest::SpeedReport {
        bytes: report.bytes,
        elapsed,
        verified: report.verified,
    }
    .mbit_per_s();
    if cli.json {
        outln!(
            "{}",
            json!({"event": "result", "bytes": report.bytes, "seconds": seconds, "mbit_s": mbit_s, "verified": report.verified, "tx_relay": report.tx_relay, "tx_direct": report.tx_direct, "path": report.path})
        );
    } else {
        outln!(
            "{} bytes in {:.2} s: {:.1} Mbit/s, {}; {} bytes via the relay, {} direct; path now {}",
            report.bytes,
            seconds,
            mbit_s,
            if report.verified {
                "verified by the peer"
            } else {
                "NOT verified"
            },
            report.tx_relay,
            report.tx_direct,
            report.path
        );
    }
    session.close().await;
    if !report.verified {
        bail!("the peer received different data than was sent");
    }
    Ok(())
}

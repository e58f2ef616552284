//! `p2pcall demo`.

use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use serde_json::json;

use crate::Cli;
use crate::output::*;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  p2pcall demo
  p2pcall --json demo --bytes 16MiB")]
pub(crate) struct DemoArgs {
    /// How much to stream from one peer to the other: bytes, or with a unit (kB, MB, GB;
    /// KiB, MiB, GiB)
    #[arg(long, default_value = "64MiB", value_parser = crate::ctx::parse_size, value_name = "SIZE")]
    bytes: u64,
}

pub(crate) async fn demo(cli: &Cli, a: &DemoArgs) -> Result<()> {
    if !cli.json {
        outln!("starting an in-process relay and two peers (alice, bob) on loopback...");
    }
    let r = p2pcall_demo::run(a.bytes).await?;
    if cli.json {
        report_json(&r);
    } else {
        report_text(&r);
    }
    if !r.presence_ok || !r.signal_ok || !r.chat_ok || !r.files_ok || !r.call_ok {
        bail!(
            "demo incomplete: presence {} signal {} chat {} files {} call {}",
            r.presence_ok,
            r.signal_ok,
            r.chat_ok,
            r.files_ok,
            r.call_ok
        );
    }
    Ok(())
}

/// The demo's findings as one JSON object.
fn report_json(r: &p2pcall_demo::DemoReport) {
    let rtts =
        |v: &[Option<Duration>]| -> Vec<Option<f64>> { v.iter().map(|r| r.map(ms)).collect() };
    outln!(
        "{}",
        json!({
            "relay": r.relay.to_string(), "alice": r.alice, "bob": r.bob,
            "presence_ok": r.presence_ok, "signal_ok": r.signal_ok,
            "connect_ms": ms(r.connect_time), "first_path": path_str(&r.first_path),
            "rtts_first_ms": rtts(&r.rtts_first), "direct_after_ms": r.direct_after.map(ms),
            "final_path": path_str(&r.final_path), "rtts_final_ms": rtts(&r.rtts_final),
            "safety_number": r.safety_number, "bytes": r.bytes, "throughput_mbit": r.throughput_mbit,
            "chat_ok": r.chat_ok, "chat_ms": ms(r.chat_time),
            "files": r.files, "file_bytes": r.file_bytes, "files_ms": ms(r.files_time),
            "files_ok": r.files_ok, "placed": r.placed,
            "call_ok": r.call_ok, "call": r.call,
        })
    );
}

/// The demo's findings for people, step by step.
fn report_text(r: &p2pcall_demo::DemoReport) {
    let fmt = |v: &[Option<Duration>]| {
        v.iter()
            .map(|r| r.map_or("lost".into(), |d| format!("{:.3}", ms(d))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    outln!("relay on {}", r.relay);
    outln!("alice {}  bob {}", r.alice, r.bob);
    outln!(
        "presence: each sees the other: {}",
        if r.presence_ok { "yes" } else { "NO" }
    );
    outln!(
        "signal through the relay: {}",
        if r.signal_ok {
            "delivered"
        } else {
            "NOT delivered"
        }
    );
    outln!(
        "end-to-end connection up in {:.1} ms via {}",
        ms(r.connect_time),
        path_str(&r.first_path)
    );
    outln!("  ping (ms): {}", fmt(&r.rtts_first));
    match r.direct_after {
        Some(d) => outln!(
            "switched to {} {:.1} ms after dialing, without reconnecting",
            path_str(&r.final_path),
            ms(d)
        ),
        None => outln!("stayed on {}", path_str(&r.final_path)),
    }
    outln!("  ping (ms): {}", fmt(&r.rtts_final));
    outln!("safety number: {}", r.safety_number);
    outln!(
        "streamed {} MiB alice -> bob, verified: {:.0} Mbit/s",
        r.bytes >> 20,
        r.throughput_mbit
    );
    outln!(
        "chat: 3 messages delivered in order, read receipts back: {} ({:.1} ms)",
        if r.chat_ok { "yes" } else { "NO" },
        ms(r.chat_time)
    );
    outln!(
        "folder: {} files ({}) sent, accepted, verified by BLAKE3 on both sides: {} ({:.1} ms); bob saved it as {}",
        r.files,
        human(r.file_bytes as f64),
        if r.files_ok { "yes" } else { "NO" },
        ms(r.files_time),
        r.placed.join(", ")
    );
    match &r.call {
        Some(s) => {
            outln!(
                "call: {:.1} s of test pattern + tone both ways, answered by bob: {}",
                s.elapsed_s,
                if r.call_ok { "ok" } else { "INCOMPLETE" }
            );
            outln!(
                "  alice received {} video frames ({}), audio concealed {:.1}%, capture-to-render {} ms",
                s.video_decoded,
                s.resolution
                    .map(|(w, h)| format!("{w}x{h}"))
                    .unwrap_or_else(|| "-".into()),
                s.recv
                    .iter()
                    .find(|x| x.kind == "audio")
                    .map_or(0.0, |a| a.concealed_pct),
                s.video_latency_mean_ms
                    .map_or("-".into(), |l| format!("{l:.0}"))
            );
            outln!(
                "  whole call: {}",
                call_text(&p2pcall_core::call::CallEvent::Stats(Box::new(s.clone()))).trim()
            );
        }
        None => outln!("call: did not complete"),
    }
}

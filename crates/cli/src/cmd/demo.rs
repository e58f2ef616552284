//! `p2pcall demo`.

use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use serde_json::json;

use crate::Cli;
use crate::calls;
use crate::output::*;

#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// Bytes to stream from one peer to the other
    #[arg(long, default_value_t = 64 << 20)]
    bytes: u64,
}

pub(crate) async fn demo(cli: &Cli, a: &DemoArgs) -> Result<()> {
    if !cli.json {
        println!("starting an in-process relay and two peers (alice, bob) on loopback...");
    }
    let r = p2pcall_core::demo::run(a.bytes).await?;
    let rtts =
        |v: &[Option<Duration>]| -> Vec<Option<f64>> { v.iter().map(|r| r.map(ms)).collect() };
    if cli.json {
        println!(
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
    } else {
        let fmt = |v: &[Option<Duration>]| {
            v.iter()
                .map(|r| r.map_or("lost".into(), |d| format!("{:.3}", ms(d))))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!("relay on {}", r.relay);
        println!("alice {}  bob {}", r.alice, r.bob);
        println!(
            "presence: each sees the other: {}",
            if r.presence_ok { "yes" } else { "NO" }
        );
        println!(
            "signal through the relay: {}",
            if r.signal_ok {
                "delivered"
            } else {
                "NOT delivered"
            }
        );
        println!(
            "end-to-end connection up in {:.1} ms via {}",
            ms(r.connect_time),
            path_str(&r.first_path)
        );
        println!("  ping (ms): {}", fmt(&r.rtts_first));
        match r.direct_after {
            Some(d) => println!(
                "switched to {} {:.1} ms after dialing, without reconnecting",
                path_str(&r.final_path),
                ms(d)
            ),
            None => println!("stayed on {}", path_str(&r.final_path)),
        }
        println!("  ping (ms): {}", fmt(&r.rtts_final));
        println!("safety number: {}", r.safety_number);
        println!(
            "streamed {} MiB alice -> bob, verified: {:.0} Mbit/s",
            r.bytes >> 20,
            r.throughput_mbit
        );
        println!(
            "chat: 3 messages delivered in order, read receipts back: {} ({:.1} ms)",
            if r.chat_ok { "yes" } else { "NO" },
            ms(r.chat_time)
        );
        println!(
            "folder: {} files ({}) sent, accepted, verified by BLAKE3 on both sides: {} ({:.1} ms); bob saved it as {}",
            r.files,
            human(r.file_bytes as f64),
            if r.files_ok { "yes" } else { "NO" },
            ms(r.files_time),
            r.placed.join(", ")
        );
    }
    if !cli.json {
        match &r.call {
            Some(s) => {
                println!(
                    "call: {:.1} s of test pattern + tone both ways, answered by bob: {}",
                    s.elapsed_s,
                    if r.call_ok { "ok" } else { "INCOMPLETE" }
                );
                println!(
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
                println!(
                    "  whole call: {}",
                    calls::call_text(&p2pcall_core::call::CallEvent::Stats(Box::new(s.clone())))
                        .trim()
                );
            }
            None => println!("call: did not complete"),
        }
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

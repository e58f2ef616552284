//! Benchmark (not run by CI: `scripts/bench.sh rate-steps`): a real call between two
//! `p2pcall` processes in the NAT lab while a tbf rate limit on both routers' internet links
//! steps 1 → 2.5 → 0.6 → 1 Mbit/s (RFC 8867 5.1's capacities, 15-20 s each, 50 ms one way).
//! Prints per second what the caller's estimator thinks and what it sends, the RTT above the
//! path's base RTT (the queueing the call causes), and per phase the utilisation (media sent
//! / capacity), the p95 extra RTT and the time to re-converge; the callee's audio
//! concealment. `CALL_KEEP=DIR` keeps both sides' statistics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{lab_with_listener_args, run_a};
use p2pcall_netlab::{Impair, Nat};
use serde_json::Value;

/// (from second, kbit/s).
const STEPS: [(u64, u32); 4] = [(0, 1000), (20, 2500), (35, 600), (50, 1000)];
const SECS: u64 = 65;

fn capacity(t: usize) -> u32 {
    STEPS
        .iter()
        .rev()
        .find(|(s, _)| t as u64 >= *s)
        .map_or(STEPS[0].1, |x| x.1)
}

#[test]
#[ignore = "benchmark: scripts/bench.sh rate-steps"]
fn rate_steps() {
    let impair = Impair {
        one_way_delay: Duration::from_millis(50),
        rate_kbit: Some(STEPS[0].1),
        ..Impair::default()
    };
    let callee_stats = std::env::temp_dir().join(format!("rate-steps-{}.json", std::process::id()));
    let cs = callee_stats.to_str().unwrap().to_string();
    let Some((mut lab, id, _b)) = lab_with_listener_args(
        Nat::Cone,
        Nat::Cone,
        impair,
        &["--answer", "--bitrate", "2500", "--stats-json", &cs],
    ) else {
        return;
    };
    let stats = lab.dir.join("a.json");
    let s = stats.to_str().unwrap().to_string();
    let d = SECS.to_string();
    let (_, out) = run_a(
        &mut lab,
        &[
            "call",
            &id,
            "--duration",
            &d,
            "--bitrate",
            "2500",
            "--stats-json",
            &s,
        ],
    );
    out.wait_event("call_started", Duration::from_secs(30));
    let t0 = Instant::now();
    for &(at, kbit) in &STEPS[1..] {
        let due = t0 + Duration::from_secs(at);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        lab.set_rate(kbit).unwrap();
    }
    let lines = out.collect(Duration::from_secs(SECS + 30));
    assert!(
        lines.iter().any(|l| l["event"] == "call_ended"),
        "the call did not end: {lines:?}"
    );
    std::thread::sleep(Duration::from_secs(2)); // the callee writes its summary
    let st: Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    let callee: Value = serde_json::from_slice(&std::fs::read(&callee_stats).unwrap_or_default())
        .unwrap_or_default();
    if let Ok(dir) = std::env::var("CALL_KEEP") {
        let _ = std::fs::copy(&stats, format!("{dir}/rate-steps-caller.json"));
        let _ = std::fs::copy(&callee_stats, format!("{dir}/rate-steps-callee.json"));
    }
    let _ = std::fs::remove_file(&callee_stats);
    let secs = st["seconds"].as_array().unwrap();
    let base_rtt = secs
        .iter()
        .filter_map(|x| x["rtt_ms"].as_f64())
        .fold(f64::INFINITY, f64::min);
    println!(
        "NAT lab, cone x cone, 50 ms one way, tbf on both internet links (200 ms queue); \
         640x360 test pattern, video cap 2.5 Mbit/s, both ways; base RTT {base_rtt:.0} ms"
    );
    println!(
        "{:>4} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "s", "capacity", "estimate", "sent", "video", "+rtt ms"
    );
    let mut rows = Vec::new();
    for (i, x) in secs.iter().enumerate() {
        let sent: f64 = x["send"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s["kbps"].as_f64()).sum())
            .unwrap_or(0.0);
        let video: f64 = x["send"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["kind"] != "audio"))
            .and_then(|s| s["kbps"].as_f64())
            .unwrap_or(0.0);
        let extra = x["rtt_ms"].as_f64().unwrap_or(0.0) - base_rtt;
        let target = x["rate"]["target_kbps"].as_f64().unwrap_or(0.0);
        println!(
            "{:>4} {:>8} {:>8.0} {:>8.0} {:>8.0} {:>8.0}",
            i + 1,
            capacity(i),
            target,
            sent,
            video,
            extra
        );
        rows.push((i, sent, extra));
    }
    for (k, &(from, kbit)) in STEPS.iter().enumerate() {
        let to = STEPS.get(k + 1).map_or(SECS, |s| s.0) as usize;
        let phase: Vec<_> = rows
            .iter()
            .filter(|r| r.0 >= from as usize + 2 && r.0 < to)
            .collect();
        if phase.is_empty() {
            continue;
        }
        let util = phase.iter().map(|r| r.1).sum::<f64>() / phase.len() as f64 / f64::from(kbit);
        let mut extra: Vec<f64> = phase.iter().map(|r| r.2).collect();
        extra.sort_by(f64::total_cmp);
        let p95 = extra[(extra.len() - 1) * 95 / 100];
        let converge = rows
            .iter()
            .filter(|r| r.0 >= from as usize)
            .find(|r| r.1 >= 0.85 * 0.9 * f64::from(kbit) && r.2 <= 100.0)
            .map(|r| format!("{} s", r.0 + 1 - from as usize));
        println!(
            "phase {kbit:>4} kbit/s: media sent {:.0}% of capacity (payload; ~10 % is headers), \
             p95 extra RTT {p95:.0} ms, re-converged after {}",
            util * 100.0,
            converge.unwrap_or_else(|| "-".into())
        );
    }
    let audio = callee["final"]["recv"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["kind"] == "audio"))
        .cloned()
        .unwrap_or_default();
    println!(
        "callee: audio concealed {:.2}%, video freezes {}",
        audio["concealed_pct"].as_f64().unwrap_or(f64::NAN),
        callee["final"]["recv"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["kind"] == "video"))
            .map_or(Value::Null, |v| v["freezes"].clone())
    );
}

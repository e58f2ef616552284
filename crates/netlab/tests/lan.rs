//! LAN-only mode with the real binary: two hosts on one Ethernet segment, no relay and no
//! route anywhere. `p2pcall --lan` finds the other host by mDNS, pings it directly, sends it a
//! chat message and a file. Needs root; says so and skips otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Lines, p2pcall};
use p2pcall_netlab::LanPair;
use serde_json::Value;

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn run_ok(cmd: &mut Command) -> Vec<Value> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(&out)
}

#[test]
fn two_hosts_find_each_other_and_talk_without_a_relay() {
    if let Some(why) = p2pcall_netlab::unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let bin = p2pcall();
    let mut lan = LanPair::new().unwrap();
    let dir = lan.dir.clone();
    let inbox = dir.join("inbox");
    let peer = |lan: &LanPair, i: usize, name: &str| {
        let mut c = lan.command(i, &bin);
        c.arg("--data-dir")
            .arg(dir.join(name))
            .args(["--lan", "--name", name, "--json"])
            .env("RUST_LOG", "warn");
        c
    };
    let mut listen = peer(&lan, 0, "alice");
    listen
        .args(["listen", "--from", "anyone", "--accept-files"])
        .arg(&inbox)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let child = lan.spawn(&mut listen).unwrap();
    let events = Lines::new(child.stdout.take().unwrap());

    // `peers` waits for the first LAN snapshot; alice may take a moment to announce.
    let mut list = Value::Null;
    for _ in 0..5 {
        let out = peer(&lan, 1, "bob").arg("peers").output().unwrap();
        list = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if list.as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let peers = list.as_array().expect("a peer list");
    assert_eq!(peers.len(), 1, "{list}");
    assert_eq!(peers[0]["name"], "alice");
    let alice = peers[0]["fingerprint"].as_str().unwrap().to_string();

    // Ping: straight to alice's LAN address; no relay transport at all.
    let lines = run_ok(peer(&lan, 1, "bob").args(["ping", &alice, "-c", "3", "-i", "100"]));
    let connected = lines.iter().find(|v| v["event"] == "connected").unwrap();
    assert_eq!(connected["relay_transport"], Value::Null, "{connected}");
    let summary = lines.iter().find(|v| v["event"] == "summary").unwrap();
    assert_eq!(summary["lost"], 0, "{summary}");
    let path = summary["path"].as_str().unwrap();
    assert!(
        path.starts_with(&format!("direct {}:", LanPair::addr(0))),
        "{summary}"
    );
    eprintln!(
        "LAN ping: connect {} ms, rtt avg {} ms, path {path}",
        connected["connect_ms"], summary["avg_ms"]
    );

    // Chat: delivered (alice's listen prints it).
    let lines = run_ok(peer(&lan, 1, "bob").args(["chat", &alice, "hello over the LAN"]));
    let states: Vec<&Value> = lines.iter().map(|v| &v["state"]).collect();
    assert!(
        states.iter().any(|s| *s == "delivered" || *s == "read"),
        "{lines:?}"
    );

    // A file: arrives whole in alice's inbox.
    let file = dir.join("notes.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let lines = run_ok(peer(&lan, 1, "bob").args(["send", &alice]).arg(&file));
    let done = lines
        .iter()
        .find(|v| v["event"] == "transfer_done")
        .unwrap();
    eprintln!("LAN transfer: {done}");
    events.wait_event("transfer_done", Duration::from_secs(10));
    assert_eq!(std::fs::read(inbox.join("notes.bin")).unwrap(), data);
}

//! Reconnect soak through the real binaries: one host with loopback and two interfaces, each
//! with an IPv4 and an IPv6 address (six equal-RTT candidates per peer), a relay, one
//! listening peer, and one-shot commands from another identity one after the other
//! (`ping -c 1`, `chat`, `send` of a small file), with gaps of 0 to 2 s, while the listener
//! is killed (SIGKILL or Ctrl-C) and restarted now and then, and the relay is restarted.
//! Every command must succeed: each one starts a new process with the same key as the last,
//! which died a moment ago.
//!
//! CI runs a short version (`reconnects_never_fail`); `scripts/bench.sh reconnect` runs
//! 1,000 and prints failures and connect time p50/p99, direct and relayed. Needs root;
//! says so and skips otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{
    Lines, gone, identity, kill, listener_args, listener_started, p2pcall, relay_args,
    relay_started,
};
use p2pcall_netlab::MultiHomed;
use serde_json::Value;

/// Gaps between commands, cycled in a scrambled order (mean 0.64 s).
const GAPS_MS: [u64; 6] = [0, 100, 250, 500, 1000, 2000];
/// A command that takes longer than this failed.
const COMMAND_LIMIT: &str = "30";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ping,
    Chat,
    Send,
}

struct Soak {
    host: MultiHomed,
    bin: PathBuf,
    alice: String,
    relay: u32,
    listener: u32,
    events: Lines,
    restarts: u32,
}

#[derive(Debug, Default)]
struct Report {
    runs: usize,
    by_kind: [usize; 3],
    failures: Vec<String>,
    connect_ms: Vec<f64>,
}

impl Report {
    fn percentile(&self, p: f64) -> f64 {
        let mut v = self.connect_ms.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() - 1) as f64 * p).round() as usize]
    }

    fn print(&self, what: &str, restarts: u32) {
        println!(
            "{what}: {} reconnects (ping {}, chat {}, send {}), listener or relay restarted {restarts} times: {} failures; connect p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (ping's connect_ms, {} samples)",
            self.runs,
            self.by_kind[0],
            self.by_kind[1],
            self.by_kind[2],
            self.failures.len(),
            self.percentile(0.5),
            self.percentile(0.99),
            self.percentile(1.0),
            self.connect_ms.len(),
        );
        for f in &self.failures {
            println!("  FAILED {f}");
        }
    }
}

impl Soak {
    fn new() -> Option<Soak> {
        if let Some(why) = p2pcall_netlab::unavailable() {
            eprintln!("SKIPPED: {why}");
            return None;
        }
        let bin = p2pcall();
        let mut host = MultiHomed::new().unwrap();
        let dir = host.dir.clone();
        std::fs::create_dir_all(dir.join("files")).unwrap();
        let relay = start_relay(&mut host, &bin);
        let alice = identity(&dir.join("alice"));
        let (listener, events) = start_listener(&mut host, &bin);
        Some(Soak {
            host,
            bin,
            alice,
            relay,
            listener,
            events,
            restarts: 0,
        })
    }

    /// Restarts, in turn: the listener killed with SIGKILL, the listener stopped with
    /// Ctrl-C, the relay stopped (SIGTERM) and started again. Returns once the listener is
    /// registered with the relay.
    fn restart(&mut self) {
        match self.restarts % 3 {
            2 => {
                kill(self.relay, "-TERM");
                assert!(gone(self.relay, Duration::from_secs(10)), "relay stuck");
                self.relay = start_relay(&mut self.host, &self.bin);
                self.events
                    .wait_event("relay_connected", Duration::from_secs(30));
            }
            n => {
                kill(self.listener, if n == 0 { "-KILL" } else { "-INT" });
                assert!(
                    gone(self.listener, Duration::from_secs(10)),
                    "listener stuck"
                );
                let (pid, events) = start_listener(&mut self.host, &self.bin);
                self.listener = pid;
                self.events = events;
            }
        }
        self.restarts += 1;
    }

    /// Runs one command as bob; `Ok(connect_ms)` (for pings) when it did what it should.
    fn one(&self, kind: Kind, i: usize, relayed: bool) -> Result<Option<f64>, String> {
        let dir = &self.host.dir;
        let mut cmd = self.host.command("timeout");
        cmd.arg(COMMAND_LIMIT)
            .arg(&self.bin)
            .arg("--data-dir")
            .arg(dir.join("bob"))
            .args(["--relay", "127.0.0.1", "--name", "bob", "--json"])
            .args(["--no-port-mapping"]);
        if relayed {
            cmd.arg("--relay-only");
        }
        match kind {
            Kind::Ping => cmd.args(["ping", &self.alice, "-c", "1"]),
            Kind::Chat => cmd.args(["chat", &self.alice, &format!("soak message {i}")]),
            Kind::Send => {
                let f = dir.join("files").join(format!("f{i}.txt"));
                std::fs::write(&f, format!("soak {i:03}\n")).unwrap();
                cmd.args(["send", &self.alice]).arg(f)
            }
        };
        let t0 = Instant::now();
        let out = cmd.stderr(Stdio::piped()).output().unwrap();
        let took = t0.elapsed();
        let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let what = || {
            format!(
                "#{i} {kind:?}{} after {took:.2?}: {}\n{}",
                if relayed { " (relayed)" } else { "" },
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
            ) + &String::from_utf8_lossy(&out.stderr)
        };
        if !out.status.success() {
            return Err(what());
        }
        let event = |e: &str| lines.iter().find(|v| v["event"] == e);
        match kind {
            Kind::Ping => {
                let pong = event("ping").is_some_and(|p| p["rtt_ms"].is_number());
                let connect = event("connected").and_then(|c| c["connect_ms"].as_f64());
                match (pong, connect) {
                    (true, Some(ms)) => Ok(Some(ms)),
                    _ => Err(what()),
                }
            }
            Kind::Chat => {
                let delivered = lines
                    .iter()
                    .any(|v| v["state"] == "delivered" || v["state"] == "read");
                if delivered { Ok(None) } else { Err(what()) }
            }
            Kind::Send => Ok(None),
        }
    }

    /// `n` commands, mostly pings, a chat and a send in every ten; the listener restarts
    /// every `restart_every` commands.
    fn run(&mut self, n: usize, relayed: bool, restart_every: usize, seed: u64) -> Report {
        let mut r = Report::default();
        let mut x = seed | 1;
        for i in 0..n {
            if i > 0 && i.is_multiple_of(restart_every) {
                self.restart();
            }
            let kind = match i % 10 {
                3 | 7 => Kind::Chat,
                5 => Kind::Send,
                _ => Kind::Ping,
            };
            r.runs += 1;
            r.by_kind[kind as usize] += 1;
            match self.one(kind, i, relayed) {
                Ok(Some(ms)) => r.connect_ms.push(ms),
                Ok(None) => {}
                Err(e) => r.failures.push(e),
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            std::thread::sleep(Duration::from_millis(
                GAPS_MS[(x % GAPS_MS.len() as u64) as usize],
            ));
        }
        r
    }
}

fn start_relay(host: &mut MultiHomed, bin: &PathBuf) -> u32 {
    let mut cmd = host.command(bin);
    relay_args(&mut cmd, &host.dir.join("relay"), "0.0.0.0:7700");
    let child = host.spawn(&mut cmd).unwrap();
    relay_started(child);
    child.id()
}

fn start_listener(host: &mut MultiHomed, bin: &PathBuf) -> (u32, Lines) {
    let mut cmd = host.command(bin);
    let (alice, inbox) = (host.dir.join("alice"), host.dir.join("inbox"));
    listener_args(&mut cmd, &alice, "127.0.0.1", "alice", &inbox);
    listener_started(host.spawn(&mut cmd).unwrap())
}

#[test]
fn reconnects_never_fail() {
    let Some(mut soak) = Soak::new() else { return };
    let direct = soak.run(50, false, 12, 0x5eed);
    direct.print("direct", soak.restarts);
    let before = soak.restarts;
    let relayed = soak.run(20, true, 10, 0xfeed);
    relayed.print("relayed", soak.restarts - before);
    assert!(
        direct.failures.is_empty() && relayed.failures.is_empty(),
        "some reconnects failed (see above)"
    );
    // Every received file landed, once.
    let inbox: Vec<_> = std::fs::read_dir(soak.host.dir.join("inbox"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(inbox.len(), 7, "{inbox:?}");
    assert!(inbox.iter().all(|n| !n.ends_with(".part")), "{inbox:?}");
}

/// `SOAK_RECONNECTS` (default 1,000) reconnects, half direct and half relayed.
#[test]
#[ignore = "benchmark: scripts/bench.sh reconnect"]
fn reconnect_soak_benchmark() {
    let Some(mut soak) = Soak::new() else { return };
    let n: usize = std::env::var("SOAK_RECONNECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let direct = soak.run(n / 2, false, 50, 1);
    direct.print("direct", soak.restarts);
    let before = soak.restarts;
    let relayed = soak.run(n - n / 2, true, 50, 2);
    relayed.print("relayed", soak.restarts - before);
    assert!(direct.failures.is_empty() && relayed.failures.is_empty());
}

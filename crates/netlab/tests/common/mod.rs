//! Running the p2pcall binaries in a lab and reading their JSON lines.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use p2pcall_netlab::{Host, Impair, Lab, Nat, RELAY_IP};
use serde_json::Value;

/// The `p2pcall` binary of this build (built by the workspace test run; built here if not).
pub fn p2pcall() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let bin = dir.join("p2pcall");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "-p", "p2pcall", "--bin", "p2pcall"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "building p2pcall failed");
    }
    bin
}

/// Makes `cmd` (a `p2pcall` command on some lab host) run a relay on `listen` with its data
/// in `data`, JSON lines on stdout.
pub fn relay_args(cmd: &mut Command, data: &std::path::Path, listen: &str) {
    cmd.arg("--data-dir")
        .arg(data)
        .args(["--json", "relay", "--listen", listen])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
}

/// Waits until a relay started with [`relay_args`] is serving.
pub fn relay_started(child: &mut std::process::Child) {
    Lines::new(child.stdout.take().unwrap()).wait_event("relay_started", Duration::from_secs(10));
}

/// The full id of the identity in `data` (created if missing).
pub fn identity(data: &std::path::Path) -> String {
    let out = Command::new(p2pcall())
        .arg("--data-dir")
        .arg(data)
        .args(["--json", "id"])
        .output()
        .unwrap();
    let id: Value = serde_json::from_slice(&out.stdout).unwrap();
    id["id"].as_str().unwrap().to_string()
}

/// Makes `cmd` run `listen --accept-files inbox` as `name` (data in `data`) on `relay`,
/// JSON lines on stdout.
pub fn listener_args(
    cmd: &mut Command,
    data: &std::path::Path,
    relay: &str,
    name: &str,
    inbox: &std::path::Path,
) {
    cmd.arg("--data-dir")
        .arg(data)
        .args([
            "--relay",
            relay,
            "--name",
            name,
            "--json",
            "--no-port-mapping",
        ])
        // Senders here are strangers to the listener: it accepts anyone's files, explicitly.
        .args(["listen", "--from", "anyone", "--accept-files"])
        .arg(inbox)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
}

/// Waits until a listener started with [`listener_args`] is registered with its relay;
/// returns its pid and its JSON lines.
pub fn listener_started(child: &mut std::process::Child) -> (u32, Lines) {
    let lines = Lines::new(child.stdout.take().unwrap());
    lines.wait_event("relay_connected", Duration::from_secs(15));
    (child.id(), lines)
}

/// Sends `signal` (`-KILL`, `-INT`, `-TERM`) to process `pid`.
pub fn kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
}

/// Whether process `pid` is gone (or a zombie) within `within`.
pub fn gone(pid: u32, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        let alive =
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
        if !alive {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

pub fn delayer() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_netlab-delay"))
}

/// JSON lines of a child's stdout, through a channel.
pub struct Lines(mpsc::Receiver<Value>);

impl Lines {
    pub fn new(out: impl std::io::Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        Self(rx)
    }

    /// Waits for a line whose "event" is `event`.
    pub fn wait_event(&self, event: &str, timeout: Duration) -> Value {
        let end = Instant::now() + timeout;
        // What else the process said, for the failure's message (an error line, say).
        let mut seen = Vec::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.0.recv_timeout(left) {
                Ok(v) if v["event"] == event => return v,
                Ok(v) => {
                    if seen.len() == 8 {
                        seen.remove(0);
                    }
                    seen.push(v);
                }
                Err(e) => panic!("no {event:?} line within {timeout:?}: {e}; last lines: {seen:?}"),
            }
        }
    }

    /// The next line, if one comes within `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<Value> {
        self.0.recv_timeout(timeout).ok()
    }

    /// Every line until the program ends.
    pub fn collect(&self, timeout: Duration) -> Vec<Value> {
        let end = Instant::now() + timeout;
        let mut out = Vec::new();
        while let Ok(v) = self
            .0
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            out.push(v);
        }
        out
    }
}

/// A lab with a relay and a listening peer B; returns it and B's id.
pub fn lab_with_listener(a: Nat, b: Nat, impair: Impair) -> Option<(Lab, String, Lines)> {
    lab_with_listener_args(a, b, impair, &[])
}

/// The same, with more arguments for B's `listen`.
pub fn lab_with_listener_args(
    a: Nat,
    b: Nat,
    impair: Impair,
    listen_args: &[&str],
) -> Option<(Lab, String, Lines)> {
    if let Some(why) = p2pcall_netlab::unavailable() {
        eprintln!("SKIPPED: {why}");
        return None;
    }
    let mut lab = Lab::new(a, b, impair, &delayer()).unwrap();
    let (id, b_out) = relay_and_listener(&mut lab, listen_args);
    Some((lab, id, b_out))
}

/// Starts the relay and B listening (with `listen_args` added) in `lab`; returns B's id and
/// its output once it is connected to the relay.
pub fn relay_and_listener(lab: &mut Lab, listen_args: &[&str]) -> (String, Lines) {
    let bin = p2pcall();
    let dir = lab.dir.clone();
    let relay = format!("{RELAY_IP}:7700");
    let mut cmd = lab.command(Host::Relay, &bin);
    relay_args(&mut cmd, &dir.join("relay"), &relay);
    relay_started(lab.spawn(&mut cmd).unwrap());
    let id = identity(&dir.join("b"));

    let mut cmd = lab.command(Host::PeerB, &bin);
    cmd.arg("--data-dir")
        .arg(dir.join("b"))
        .args(["--relay", &relay, "--name", "bob", "--json", "listen"])
        // Its peers here are strangers to it: it answers anyone, explicitly.
        .args(["--from", "anyone"])
        .args(listen_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let child = lab.spawn(&mut cmd).unwrap();
    let b_out = Lines::new(child.stdout.take().unwrap());
    b_out.wait_event("relay_connected", Duration::from_secs(15));
    (id, b_out)
}

/// What one ping run from A to B saw.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub nats: (Nat, Nat),
    pub rtt_ms: f64,
    pub connect_ms: f64,
    /// Time from the connection being up (on the relay) to the first direct path.
    pub direct_ms: Option<f64>,
    pub final_path: String,
    pub transport: String,
    pub probes: u64,
    pub lost: u64,
}

impl Outcome {
    pub fn row(&self) -> String {
        format!(
            "| {} x {} | {:.0} ms | {} | connect {:.1} ms | direct after {} | probes {} | via {} |",
            self.nats.0.name(),
            self.nats.1.name(),
            self.rtt_ms,
            if self.direct_ms.is_some() {
                "direct"
            } else {
                "relay"
            },
            self.connect_ms,
            self.direct_ms.map_or("-".into(), |d| format!("{d:.1} ms")),
            self.probes,
            self.transport,
        )
    }
}

/// Runs `p2pcall --json ARGS` as peer A (registered with the lab's relay); returns its pid
/// and its JSON lines.
pub fn run_a(lab: &mut Lab, args: &[&str]) -> (u32, Lines) {
    let relay = format!("{RELAY_IP}:7700");
    let mut cmd = lab.command(Host::PeerA, p2pcall());
    cmd.arg("--data-dir")
        .arg(lab.dir.join("a"))
        .args(["--relay", &relay, "--name", "alice", "--json"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let child = lab.spawn(&mut cmd).unwrap();
    (child.id(), Lines::new(child.stdout.take().unwrap()))
}

/// Pings B from A `count` times and reports.
pub fn ping(lab: &mut Lab, id: &str, count: u32) -> Outcome {
    let count = count.to_string();
    let (_, lines) = run_a(lab, &["ping", id, "--count", &count, "--interval", "100"]);
    let lines = lines.collect(Duration::from_secs(60));
    let find = |e: &str| lines.iter().find(|v| v["event"] == e).cloned();
    let connected = find("connected").unwrap_or_else(|| panic!("no connection: {lines:?}"));
    let summary = find("summary").unwrap_or_else(|| panic!("no summary: {lines:?}"));
    let direct_ms = lines
        .iter()
        .find(|v| {
            v["event"] == "path_changed" && v["path"].as_str().unwrap_or("").starts_with("direct")
        })
        .and_then(|v| v["since_connect_ms"].as_f64());
    Outcome {
        nats: lab.nats,
        rtt_ms: 0.0,
        connect_ms: connected["connect_ms"].as_f64().unwrap_or(-1.0),
        direct_ms,
        final_path: summary["path"].as_str().unwrap_or("").to_string(),
        transport: connected["relay_transport"]
            .as_str()
            .unwrap_or("?")
            .to_string(),
        probes: summary["probes_sent"].as_u64().unwrap_or(0),
        lost: summary["lost"].as_u64().unwrap_or(0),
    }
}

/// A whole lab run for one NAT pair; `None` when the lab cannot run here.
pub fn run_pair(a: Nat, b: Nat, impair: Impair, pings: u32) -> Option<Outcome> {
    let (mut lab, id, _b) = lab_with_listener(a, b, impair)?;
    let mut o = ping(&mut lab, &id, pings);
    o.rtt_ms = 2.0 * impair.one_way_delay.as_secs_f64() * 1000.0;
    if o.direct_ms.is_none() {
        eprintln!("router A mappings:\n{}", lab.conntrack(Host::RouterA));
        eprintln!("router B mappings:\n{}", lab.conntrack(Host::RouterB));
    }
    Some(o)
}

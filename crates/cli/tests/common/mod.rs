//! Helpers shared by the tests that run the real binary.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_p2pcall");

pub fn cmd(dir: &std::path::Path) -> Command {
    let mut c = Command::new(BIN);
    // Tests talk to loopback only: never ask this machine's gateway for a port mapping.
    c.arg("--data-dir")
        .arg(dir)
        .env_remove("RUST_LOG")
        .env("P2PCALL_NO_PORT_MAPPING", "true");
    c
}

pub struct Proc {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
}

impl Proc {
    pub fn spawn(c: Command) -> Self {
        Self::spawn_logged(c, None)
    }

    /// Like `spawn`, keeping stderr (logs) in `log`.
    pub fn spawn_logged(mut c: Command, log: Option<&std::path::Path>) -> Self {
        let err = match log {
            Some(p) => Stdio::from(std::fs::File::create(p).unwrap()),
            None => Stdio::null(),
        };
        let mut child = c.stdout(Stdio::piped()).stderr(err).spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Self { child, lines }
    }

    /// Next JSON line whose "event" is `event`.
    pub fn expect(&self, event: &str) -> Value {
        loop {
            let l = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("no {event:?} line: {e:?}"));
            let v: Value =
                serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            if v["event"] == event {
                return v;
            }
        }
    }

    pub fn term(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        for _ in 0..100 {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("process did not exit on SIGTERM");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `p2pcall relay` with its data in `dir`, on a free loopback port, with `extra`
/// arguments; returns it and its UDP address.
pub fn relay(dir: &std::path::Path, extra: &[&str]) -> (Proc, String) {
    let mut c = cmd(dir);
    c.args(["--json", "relay", "--listen", "127.0.0.1:0"])
        .args(extra);
    let relay = Proc::spawn(c);
    let udp = relay.expect("relay_started")["udp"]
        .as_str()
        .unwrap()
        .to_string();
    (relay, udp)
}

/// Runs a command to completion: its JSON lines on standard output, its standard error,
/// its exit code.
pub fn run(mut c: Command) -> (Vec<Value>, String, Option<i32>) {
    let out = c.output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code(),
    )
}

pub fn json_out(mut c: Command) -> Value {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        c,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// A data dir's peer id, 64 hex digits (created on first use).
pub fn id_of(dir: &std::path::Path) -> String {
    let mut c = cmd(dir);
    c.args(["--json", "id"]);
    json_out(c)["id"].as_str().unwrap().to_string()
}

//! The resume matrix through the real binaries in the NAT lab (cone x cone, 80 Mbit/s
//! links): a `send` of a 48 MiB file is interrupted half-way in each way a transfer can be
//! (Ctrl-C of the sender or the receiver, kill -9 of either, a network cut on the sender's
//! side), over a direct path and over the relay; the same `send` run again completes, sends
//! again at most what was not verified yet, and leaves no partial file behind. Needs root;
//! says so and skips otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;
use std::time::{Duration, Instant};

use common::{
    Lines, delayer, gone, identity, kill, listener_args, listener_started, p2pcall, relay_args,
    relay_started,
};
use p2pcall_netlab::{Host, Impair, Lab, Nat, RELAY_IP};

/// The file of the CI matrix, and its links' rate.
const FILE_BYTES: u64 = 48 << 20;
const RATE_KBIT: u32 = 80_000;
/// Verified chunks a receiver killed with SIGKILL may not have recorded yet (its
/// `RECORD_BYTES`): they are sent again.
const UNRECORDED: u64 = 8 << 20;
/// Chunks in flight when a transfer stops gracefully (verified, counted as progress a
/// moment before the stop): one per data stream.
const IN_FLIGHT: u64 = 4 << 20;
/// Exit code of an interrupted command (`p2pcall --help`).
const EXIT_INTERRUPTED: i32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    CtrlCSender,
    CtrlCReceiver,
    KillSender,
    KillReceiver,
    PathCut,
}

impl Stop {
    const ALL: [Stop; 5] = [
        Stop::CtrlCSender,
        Stop::CtrlCReceiver,
        Stop::KillSender,
        Stop::KillReceiver,
        Stop::PathCut,
    ];
}

struct Matrix {
    lab: Lab,
    size: u64,
    bin: PathBuf,
    bob: String,
    inbox: PathBuf,
    b_pid: u32,
    b_out: Lines,
}

/// Pseudo-random content (no all-zero chunks: those travel without payload).
fn write_file(path: &Path, seed: u64, size: u64) {
    use std::io::Write;
    let mut x = seed | 1;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for _ in 0..size / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f.write_all(&x.to_le_bytes()).unwrap();
    }
    f.flush().unwrap();
}

/// What one interrupted-then-resumed transfer cost.
#[derive(Debug)]
struct Row {
    text: String,
    /// Bytes router A sent to the internet over both runs.
    wire_bytes: u64,
}

fn parts_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            parts_under(&p, out);
        } else if p.to_string_lossy().ends_with(".part") {
            out.push(p);
        }
    }
}

impl Matrix {
    fn new(size: u64, rate_kbit: u32) -> Option<Matrix> {
        if let Some(why) = p2pcall_netlab::unavailable() {
            eprintln!("SKIPPED: {why}");
            return None;
        }
        let bin = p2pcall();
        let mut lab = Lab::new(Nat::Cone, Nat::Cone, Impair::default(), &delayer()).unwrap();
        lab.set_rate(rate_kbit).unwrap();
        let dir = lab.dir.clone();
        let mut relay = lab.command(Host::Relay, &bin);
        relay_args(&mut relay, &dir.join("relay"), &format!("{RELAY_IP}:7700"));
        // The relay's per-peer limits (100 Mbit/s, 10,000 packets/s by default) must not be
        // what is measured.
        relay.args(["--mbit-rate", "10000", "--packet-rate", "1000000"]);
        relay_started(lab.spawn(&mut relay).unwrap());
        let bob = identity(&dir.join("b"));
        let inbox = dir.join("inbox");
        let (b_pid, b_out) = start_receiver(&mut lab, &bin, &inbox);
        Some(Matrix {
            lab,
            size,
            bin,
            bob,
            inbox,
            b_pid,
            b_out,
        })
    }

    fn restart_receiver(&mut self) {
        let (pid, out) = start_receiver(&mut self.lab, &self.bin, &self.inbox);
        self.b_pid = pid;
        self.b_out = out;
    }

    fn send(&mut self, file: &Path, relayed: bool) -> (u32, Lines) {
        let mut cmd = self.lab.command(Host::PeerA, &self.bin);
        cmd.arg("--data-dir")
            .arg(self.lab.dir.join("a"))
            .args(["--relay", &format!("{RELAY_IP}:7700"), "--name", "alice"])
            .args(["--json", "--no-port-mapping"]);
        if relayed {
            cmd.arg("--relay-only");
        }
        cmd.args(["send", &self.bob])
            .arg(file)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let child = self.lab.spawn(&mut cmd).unwrap();
        (child.id(), Lines::new(child.stdout.take().unwrap()))
    }

    /// Forgets what the receiver printed so far (earlier transfers).
    fn drain(&self) {
        while self.b_out.next(Duration::ZERO).is_some() {}
    }

    /// Waits until the receiver reports at least `bytes` verified of the transfer it was
    /// offered next; returns what it reported.
    fn wait_verified(&self, bytes: u64) -> u64 {
        let end = Instant::now() + Duration::from_secs(60);
        let mut id = None;
        while Instant::now() < end {
            let Some(v) = self.b_out.next(Duration::from_millis(500)) else {
                continue;
            };
            if v["event"] == "transfer_offer" || v["event"] == "transfer_resumed" {
                id = Some(v["id"].clone());
            }
            if v["event"] == "transfer_progress"
                && Some(&v["id"]) == id.as_ref()
                && let Some(done) = v["done_bytes"].as_u64()
                && done >= bytes
            {
                return done;
            }
        }
        panic!("the receiver never verified {bytes} bytes");
    }

    /// Bytes router A has sent to the internet so far (its tbf's counter).
    fn wire_bytes(&self) -> u64 {
        let out = self
            .lab
            .command(Host::RouterA, "tc")
            .args(["-s", "qdisc", "show", "dev", "wan"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "Sent")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no byte counter in {text}"))
    }

    /// One uninterrupted transfer of a fresh file: the bytes it puts on the wire.
    fn baseline(&mut self, relayed: bool, n: u64) -> u64 {
        let file = self.lab.dir.join(format!("f{n}.bin"));
        write_file(&file, n, self.size);
        let before = self.wire_bytes();
        let (_, out) = self.send(&file, relayed);
        let lines = out.collect(Duration::from_secs(600));
        assert!(
            lines.iter().any(|v| v["event"] == "transfer_done"),
            "{lines:?}"
        );
        self.wire_bytes() - before
    }

    fn case(&mut self, stop: Stop, relayed: bool, n: u64) -> Row {
        let file = self.lab.dir.join(format!("f{n}.bin"));
        write_file(&file, n, self.size);
        self.drain();
        let before = self.wire_bytes();
        let (a_pid, a_out) = self.send(&file, relayed);
        let verified = self.wait_verified(self.size / 2);
        match stop {
            Stop::CtrlCSender => kill(a_pid, "-INT"),
            Stop::KillSender => kill(a_pid, "-KILL"),
            Stop::CtrlCReceiver | Stop::KillReceiver => {
                kill(
                    self.b_pid,
                    if stop == Stop::KillReceiver {
                        "-KILL"
                    } else {
                        "-INT"
                    },
                );
                assert!(gone(self.b_pid, Duration::from_secs(10)), "receiver stuck");
                self.restart_receiver();
            }
            Stop::PathCut => {
                self.lab.cut_a(true).unwrap();
                std::thread::sleep(Duration::from_secs(1));
                // The user gives up on the stalled transfer.
                kill(a_pid, "-INT");
            }
        }
        // The first `send` ends (at once, or when it learns the receiver restarted).
        assert!(
            gone(a_pid, Duration::from_secs(30)),
            "{stop:?}: the first send did not end"
        );
        if stop == Stop::PathCut {
            self.lab.cut_a(false).unwrap();
        }
        if stop != Stop::KillSender {
            let lines = a_out.collect(Duration::from_secs(1));
            let err = lines.iter().find(|v| v["event"] == "error");
            // Progress lines left out: CI shows the start and end of a long message only.
            let told: Vec<_> = lines
                .iter()
                .filter(|v| v["event"] != "transfer_progress")
                .collect();
            assert!(
                err.is_some_and(|e| e["exit_code"] == EXIT_INTERRUPTED),
                "{stop:?} relayed={relayed}: the first send did not exit as interrupted: {told:?}"
            );
        }
        let (_, out) = self.send(&file, relayed);
        let lines = out.collect(Duration::from_secs(600));
        let done = lines
            .iter()
            .find(|v| v["event"] == "transfer_done")
            .unwrap_or_else(|| {
                panic!("{stop:?} relayed={relayed}: the second send failed: {lines:?}")
            });
        let wire_bytes = self.wire_bytes() - before;
        let resumed = done["resumed_bytes"].as_u64().unwrap();
        let sent_again = self.size - resumed;
        let allowed = self.size - verified
            + if stop == Stop::KillReceiver {
                UNRECORDED
            } else {
                IN_FLIGHT
            };
        let row = format!(
            "{stop:?} {}: verified {:.1} MiB at the stop, resumed {:.1} MiB, second run sent {:.1} MiB ({:.1} % of the file)",
            if relayed { "relayed" } else { "direct" },
            verified as f64 / 1048576.0,
            resumed as f64 / 1048576.0,
            sent_again as f64 / 1048576.0,
            100.0 * sent_again as f64 / self.size as f64,
        );
        println!("{row}");
        assert!(sent_again <= allowed, "{row}: more than {allowed} bytes");
        let landed = self.inbox.join(format!("f{n}.bin"));
        assert_eq!(
            std::fs::read(&landed).unwrap(),
            std::fs::read(&file).unwrap(),
            "{row}: the received file differs"
        );
        let mut parts = Vec::new();
        parts_under(&self.inbox, &mut parts);
        assert!(parts.is_empty(), "{row}: partial files left: {parts:?}");
        Row {
            text: row,
            wire_bytes,
        }
    }
}

fn start_receiver(lab: &mut Lab, bin: &Path, inbox: &Path) -> (u32, Lines) {
    let mut cmd = lab.command(Host::PeerB, bin);
    let relay = format!("{RELAY_IP}:7700");
    listener_args(&mut cmd, &lab.dir.join("b"), &relay, "bob", inbox);
    listener_started(lab.spawn(&mut cmd).unwrap())
}

#[test]
fn every_interruption_resumes_from_the_verified_chunks() {
    let Some(mut m) = Matrix::new(FILE_BYTES, RATE_KBIT) else {
        return;
    };
    let mut n = 0;
    let mut rows = Vec::new();
    for relayed in [false, true] {
        for stop in Stop::ALL {
            n += 1;
            rows.push(m.case(stop, relayed, n).text);
        }
    }
    for r in rows {
        println!("{r}");
    }

    // A transfer nobody resumes: the receiver lists it with its partial file, and
    // `transfers clean` gives it up and removes the file.
    // At 8 Mbit/s the transfer is surely still running when its sender is stopped, however
    // slowly this test is scheduled.
    m.lab.set_rate(8_000).unwrap();
    let file = m.lab.dir.join("abandoned.bin");
    write_file(&file, 77, FILE_BYTES);
    m.drain();
    let (pid, _out) = m.send(&file, false);
    m.wait_verified(FILE_BYTES / 16);
    let stopped = Instant::now();
    kill(pid, "-INT");
    // Before its data streams were reset, the sender sent what quinn held (up to 32 MiB:
    // 34 s at this rate, longer on a loaded machine) before its `Abort`.
    assert!(gone(pid, Duration::from_secs(60)));
    println!(
        "a sender stopped with Ctrl-C at 8 Mbit/s exited after {:?}",
        stopped.elapsed()
    );
    let transfers = |args: &[&str]| -> Value {
        let out = m
            .lab
            .command(Host::PeerB, &m.bin)
            .arg("--data-dir")
            .arg(m.lab.dir.join("b"))
            .args(["--json", "transfers"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // The receiver records the interruption a moment after the sender has gone.
    let end = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let listed = transfers(&[]);
        if listed["incoming"].as_array().is_some_and(|i| !i.is_empty()) {
            break listed;
        }
        if Instant::now() > end {
            let said: Vec<Value> = std::iter::from_fn(|| m.b_out.next(Duration::from_millis(200)))
                .filter(|v| v["event"] != "transfer_progress")
                .collect();
            panic!("the receiver lists no unfinished transfer: {listed}; it said {said:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let incoming = listed["incoming"].as_array().unwrap();
    assert_eq!(incoming.len(), 1, "{listed}");
    assert_eq!(incoming[0]["state"], "interrupted", "{listed}");
    assert_eq!(incoming[0]["partial_files"].as_array().unwrap().len(), 1);
    assert!(incoming[0]["partial_bytes"].as_u64().unwrap() >= FILE_BYTES / 16);
    let cleaned = transfers(&["clean"]);
    assert_eq!(
        (cleaned["transfers"].as_u64(), cleaned["files"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(transfers(&[])["incoming"].as_array().unwrap().is_empty());
    let mut parts = Vec::new();
    parts_under(&m.inbox, &mut parts);
    assert!(parts.is_empty(), "{parts:?}");
}

/// `RESUME_MIB` (default 1,024) MiB interrupted half-way and resumed, at 400 Mbit/s: the
/// bytes put on the wire over both runs against an uninterrupted transfer of the same size
/// measured in the same run (so headers and acknowledgements cancel out). `RESUME_PATHS`
/// (`direct,relayed` by default) picks the paths.
#[test]
#[ignore = "benchmark: scripts/bench.sh resume"]
fn resume_benchmark() {
    let mib: u64 = std::env::var("RESUME_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let Some(mut m) = Matrix::new(mib << 20, 400_000) else {
        return;
    };
    let paths = std::env::var("RESUME_PATHS").unwrap_or_else(|_| "direct,relayed".into());
    let mut n = 100;
    for relayed in [false, true] {
        if !paths.contains(if relayed { "relayed" } else { "direct" }) {
            continue;
        }
        n += 1;
        let base = m.baseline(relayed, n);
        println!(
            "{}: an uninterrupted {mib} MiB transfer puts {:.1} MiB on the wire ({:.3}x the file)",
            if relayed { "relayed" } else { "direct" },
            base as f64 / 1048576.0,
            base as f64 / (mib << 20) as f64
        );
        for stop in Stop::ALL {
            n += 1;
            let r = m.case(stop, relayed, n);
            let extra = r.wire_bytes as f64 - base as f64;
            println!(
                "  {}; both runs on the wire: {:.1} MiB, {:+.1} MiB = {:+.2} % of the file sent again",
                r.text,
                r.wire_bytes as f64 / 1048576.0,
                extra / 1048576.0,
                100.0 * extra / (mib << 20) as f64
            );
        }
    }
}

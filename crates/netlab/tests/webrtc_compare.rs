#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Benchmark (not run by CI: `scripts/bench.sh webrtc-compare`, ~4 minutes): Chromium's WebRTC
//! and p2pcall on the same shaped link, one after the other in one lab. RFC 8867 test case
//! 5.1: the capacity of both routers' internet links steps 1 → 2.5 → 0.6 → 1 Mbit/s
//! (40/20/20/20 s), 50 ms one way, a 300 ms drop-tail bottleneck (tbf's latency; its 16 kB
//! burst adds to it). Both send video both ways from the same 640×360 30 fps y4m clip (capped
//! at 3 Mbit/s) and audio. Prints per phase the same figures for both, side by side, then the
//! whole schedule's and p2pcall's targets (printed, not asserted).
//!
//! The link is measured the same way for both: the bottleneck's tbf (each router's `wan`)
//! sampled ten times a second for the bytes it sent, its backlog (queue delay = backlog /
//! rate) and drops; nft counters on each router count the small packets (IP length ≤ 150
//! bytes: acknowledgements, feedback) it sends, and those of them that are RTP media
//! (Chromium's audio packets are that small). The calls' own figures (freezes, RTT, audio
//! concealment) come from Chromium's `getStats()` and p2pcall's `--stats-json`.
//!
//! The two Chromiums (headless, fake devices, one per peer namespace) load their page from
//! `webrtc/signal.py` over a side link of their own to the relay host, so signaling and
//! statistics never cross the measured link; their ICE uses host candidates only (both peers
//! are public in the lab, so no STUN server is needed), and an nft rule in each peer
//! namespace drops anything addressed outside the lab. `CALL_KEEP=DIR` keeps both runs'
//! statistics.

mod common;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{delayer, relay_and_listener, run_a};
use p2pcall_netlab::{Host, Impair, Lab, Nat};
use serde_json::Value;

/// RFC 8867 5.1: (from second, kbit/s).
const STEPS: [(f64, u32); 4] = [(0.0, 1000), (40.0, 2500), (60.0, 600), (80.0, 1000)];
/// The schedule's length, s.
const SECS: f64 = 100.0;
/// The bottleneck's drop-tail buffer, ms at the current rate.
const QUEUE_MS: u32 = 300;
/// Both systems' video cap, kbit/s.
const MAX_KBPS: u32 = 3000;
/// The start of each phase left out of its steady figures, s.
const SETTLE: f64 = 2.0;
/// How long after the fall (2.5 → 0.6 Mbit/s) its drops are counted, s.
const FALL_WINDOW: f64 = 5.0;
/// The signaling server's port (on the relay host, reached over the side links).
const PORT: u16 = 8080;
/// The side links: (peer, device, server end, peer end).
const SIDE: [(Host, &str, &str, &str); 2] = [
    (Host::PeerA, "sa", "192.168.250.1", "192.168.250.2"),
    (Host::PeerB, "sb", "192.168.250.5", "192.168.250.6"),
];

fn capacity(t: f64) -> u32 {
    STEPS
        .iter()
        .rev()
        .find(|(s, _)| t >= *s)
        .map_or(STEPS[0].1, |x| x.1)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn sleep_until(t: f64) {
    let left = t - unix_now();
    if left > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(left));
    }
}

/// Runs `cmd`, panicking with its error output if it fails.
fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `nft -f -` with `rules` inside `h`.
fn nft(lab: &Lab, h: Host, rules: &str) {
    use std::io::Write;
    let mut child = lab
        .command(h, "nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft failed:\n{rules}");
}

/// Why this benchmark cannot run here.
fn unavailable() -> Option<String> {
    if let Some(why) = p2pcall_netlab::unavailable() {
        return Some(why);
    }
    for (tool, version) in [
        ("chromium", "--version"),
        ("ffmpeg", "-version"),
        ("python3", "--version"),
    ] {
        let found = Command::new(tool)
            .arg(version)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!(
                "`{tool}` is missing; run scripts/setup.sh --bench as root"
            ));
        }
    }
    None
}

/// The lab: both peers public (Chromium's ICE needs no STUN server: host candidates reach),
/// 50 ms one way, the first capacity with a 300 ms queue; nft counters of small packets on
/// the routers, the guard in the peers' namespaces.
fn build_lab() -> Lab {
    let impair = Impair {
        one_way_delay: Duration::from_millis(50),
        ..Impair::default()
    };
    let lab = Lab::new(Nat::Public, Nat::Public, impair, &delayer()).unwrap();
    lab.set_rate_queue(STEPS[0].1, QUEUE_MS).unwrap();
    for router in [Host::RouterA, Host::RouterB] {
        // Small packets, and those of them that are RTP media (version 2, not one of RTCP's
        // packet types): Chromium's audio packets are this small; QUIC never looks like RTP.
        nft(
            &lab,
            router,
            "table ip bench {
  counter small {}
  counter media {}
  chain post {
    type filter hook postrouting priority 100; policy accept;
    oifname != \"wan\" return
    meta length > 150 return
    counter name \"small\"
    meta l4proto udp @th,64,2 2 @th,72,8 != 192-223 counter name \"media\"
  }
}
",
        );
    }
    // Nothing a peer sends may leave the lab (Chromium looks for Google's services): the
    // lab has no route out, and this drops it before it could find one.
    for peer in [Host::PeerA, Host::PeerB] {
        nft(
            &lab,
            peer,
            "table inet guard {
  counter outside {}
  chain out {
    type filter hook output priority 0; policy accept;
    oifname \"lo\" accept
    ip daddr { 10.1.0.0/24, 10.2.0.0/24, 198.51.100.0/24, 203.0.113.0/24, 192.168.250.0/24 } accept
    counter name \"outside\" drop
  }
}
",
        );
    }
    lab
}

/// Packets the guard of `peer` dropped.
fn guard_drops(lab: &Lab, peer: Host) -> u64 {
    let out = sh(lab
        .command(peer, "nft")
        .args(["-j", "list", "counter", "inet", "guard", "outside"]));
    let v: Value = serde_json::from_str(&out).unwrap_or_default();
    v["nftables"]
        .as_array()
        .and_then(|a| a.iter().find_map(|x| x["counter"]["packets"].as_u64()))
        .unwrap_or(0)
}

/// The test clip both systems send as their camera, in the lab's directory.
fn make_clip(lab: &Lab) -> std::path::PathBuf {
    let clip = lab.dir.join("clip.y4m");
    sh(Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg("mandelbrot=size=640x360:rate=30")
        .args(["-t", "20", "-pix_fmt", "yuv420p"])
        .arg(&clip));
    clip
}

/// One router's bottleneck (tbf on `wan`) at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Tbf {
    bytes: u64,
    backlog: u64,
    drops: u64,
}

/// Packets of at most 150 bytes (IP) a router sent to the internet so far.
#[derive(Debug, Clone, Copy, Default)]
struct Small {
    packets: u64,
    bytes: u64,
    /// Those of them that are RTP media.
    media_packets: u64,
    media_bytes: u64,
}

/// The link at one moment: [0] is router A's `wan` (A → B), [1] router B's (B → A).
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Seconds since the schedule started.
    t: f64,
    tbf: [Tbf; 2],
    /// Read once a second.
    small: Option<[Small; 2]>,
}

fn read_tbf(ns: &str) -> Option<Tbf> {
    let out = Command::new("tc")
        .args(["-n", ns, "-j", "-s", "qdisc", "show", "dev", "wan"])
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let q = v.as_array()?.iter().find(|q| q["kind"] == "tbf")?;
    Some(Tbf {
        bytes: q["bytes"].as_u64()?,
        backlog: q["backlog"].as_u64()?,
        drops: q["drops"].as_u64()?,
    })
}

fn read_small(ns: &str) -> Option<Small> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-j", "list", "counters"])
        .args(["table", "ip", "bench"])
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let counters = v["nftables"].as_array()?;
    let get = |name: &str| {
        let c = counters
            .iter()
            .find_map(|x| x.get("counter").filter(|c| c["name"] == name))?;
        Some((c["packets"].as_u64()?, c["bytes"].as_u64()?))
    };
    let ((packets, bytes), (media_packets, media_bytes)) = (get("small")?, get("media")?);
    Some(Small {
        packets,
        bytes,
        media_packets,
        media_bytes,
    })
}

/// Samples both routers' bottlenecks every 100 ms (the small-packet counters every second)
/// until stopped; times are Unix seconds.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    fn start(lab: &Lab) -> Sampler {
        let ns = [lab.ns(Host::RouterA), lab.ns(Host::RouterB)];
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let due = unix_now() + 0.1;
                let t = unix_now();
                if let (Some(a), Some(b)) = (read_tbf(&ns[0]), read_tbf(&ns[1])) {
                    let small = if n.is_multiple_of(10) {
                        read_small(&ns[0])
                            .zip(read_small(&ns[1]))
                            .map(|(a, b)| [a, b])
                    } else {
                        None
                    };
                    out.push(Sample {
                        t,
                        tbf: [a, b],
                        small,
                    });
                }
                n += 1;
                sleep_until(due);
            }
            out
        });
        Sampler { stop, thread }
    }

    /// The samples, their times made relative to `t0`.
    fn finish(self, t0: f64) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut v = self.thread.join().unwrap();
        for s in &mut v {
            s.t -= t0;
        }
        v
    }
}

/// What one peer's receiver saw up to one moment (counters are cumulative).
#[derive(Debug, Clone, Copy, Default)]
struct App {
    /// Seconds since the schedule started.
    t: f64,
    /// Video frames per second received (rendered).
    fps: f64,
    rtt_ms: Option<f64>,
    freezes: f64,
    freeze_ms: f64,
    /// Audio concealed and in all (samples or frames).
    concealed: f64,
    audio: f64,
}

/// One system's run.
struct Run {
    name: &'static str,
    link: Vec<Sample>,
    /// What peer A and peer B received.
    app: [Vec<App>; 2],
}

/// Steps the capacity from `t0` (Unix seconds) on, returning at the schedule's end.
fn follow_schedule(lab: &Lab, t0: f64) {
    for &(at, kbit) in &STEPS[1..] {
        sleep_until(t0 + at);
        lab.set_rate_queue(kbit, QUEUE_MS).unwrap();
    }
    sleep_until(t0 + SECS);
}

/// Side links from each peer to the relay host, for the pages and their signaling.
fn side_links(lab: &Lab, up: bool) {
    for (peer, dev, server, client) in SIDE {
        let (relay, peer_ns) = (lab.ns(Host::Relay), lab.ns(peer));
        if !up {
            sh(Command::new("ip").args(["-n", &relay, "link", "del", dev]));
            continue;
        }
        sh(Command::new("ip").args([
            "link", "add", dev, "netns", &peer_ns, "type", "veth", "peer", "name", dev, "netns",
            &relay,
        ]));
        for (ns, addr) in [(&relay, server), (&peer_ns, client)] {
            sh(Command::new("ip").args([
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/30"),
                "dev",
                dev,
            ]));
            sh(Command::new("ip").args(["-n", ns, "link", "set", dev, "up"]));
        }
    }
}

/// A headless Chromium in `peer`'s namespace opening the call page as `me`.
fn chromium(lab: &Lab, peer: Host, me: &str, server: &str, clip: &Path) -> Command {
    let origin = format!("http://{server}:{PORT}");
    let (to, offer) = if me == "a" { ("b", 1) } else { ("a", 0) };
    let log = std::fs::File::create(lab.dir.join(format!("chromium-{me}.log"))).unwrap();
    let mut c = lab.command(peer, "chromium");
    c.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
        // ICE on the default route's interface only (not the side link), host candidates
        // with their real (private) addresses, no mDNS names.
        "--force-webrtc-ip-handling-policy=default_public_and_private_interfaces",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!(
        "--user-data-dir={}",
        lab.dir.join(format!("chromium-{me}")).display()
    ))
    .arg(format!(
        "--use-file-for-fake-video-capture={}",
        clip.display()
    ))
    .arg(format!(
        "--unsafely-treat-insecure-origin-as-secure={origin}"
    ))
    .arg(format!(
        "{origin}/call.html?me={me}&to={to}&offer={offer}&max={}&skip=192.168.250.",
        MAX_KBPS * 1000
    ))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(log);
    c
}

/// The JSON lines of a peer's statistics so far.
fn stats_lines(out: &Path, me: &str) -> Vec<Value> {
    std::fs::read_to_string(out.join(format!("stats-{me}.jsonl")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Whether both pages receive video.
fn both_receive(out: &Path) -> bool {
    ["a", "b"].iter().all(|me| {
        stats_lines(out, me)
            .iter()
            .any(|v| v["in_video"]["bytesReceived"].as_u64().unwrap_or(0) > 0)
    })
}

/// The pages' and browsers' logs, for a failure.
fn chromium_logs(lab: &Lab, out: &Path) -> String {
    let server = std::fs::read_to_string(out.join("signal.log")).unwrap_or_default();
    let mut s = format!("--- signal.py:\n{server}\n");
    for me in ["a", "b"] {
        let page = std::fs::read_to_string(out.join(format!("log-{me}.txt"))).unwrap_or_default();
        let browser =
            std::fs::read_to_string(lab.dir.join(format!("chromium-{me}.log"))).unwrap_or_default();
        let tail: Vec<&str> = browser.lines().rev().take(30).collect();
        let _ = write!(
            s,
            "--- page {me}:\n{page}\n--- chromium {me} (last lines):\n"
        );
        for l in tail.iter().rev() {
            let _ = writeln!(s, "{l}");
        }
    }
    s
}

/// Ends every process in `peer`'s namespace (Chromium and its helpers, all started here).
fn stop_namespace(lab: &Lab, peer: Host) {
    let pids = || sh(Command::new("ip").args(["netns", "pids", &lab.ns(peer)]));
    for signal in ["-TERM", "-KILL"] {
        for pid in pids().split_whitespace() {
            // (Chromium's helpers may be gone already, with their browser.)
            let _ = Command::new("kill")
                .args([signal, pid])
                .stderr(Stdio::null())
                .status();
        }
        for _ in 0..50 {
            if pids().trim().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Chromium's call: the signaling server, a browser per peer, the schedule once both
/// receive video; then the browsers stopped and the side links removed.
fn chromium_run(lab: &mut Lab, clip: &Path) -> Run {
    side_links(lab, true);
    let out = lab.dir.join("webrtc");
    std::fs::create_dir_all(&out).unwrap();
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("webrtc");
    let mut cmd = lab.command(Host::Relay, "python3");
    cmd.arg(page.join("signal.py"))
        .args(["--listen", &format!("0.0.0.0:{PORT}"), "--page"])
        .arg(&page)
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(out.join("signal.log")).unwrap());
    let server = lab.spawn(&mut cmd).unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("serving"), "signal.py: {line:?}");
    let sampler = Sampler::start(lab);
    for (i, (peer, _, server, _)) in SIDE.into_iter().enumerate() {
        let mut cmd = chromium(lab, peer, ["a", "b"][i], server, clip);
        lab.spawn(&mut cmd).unwrap();
    }
    let deadline = unix_now() + 60.0;
    while !both_receive(&out) {
        assert!(
            unix_now() < deadline,
            "the Chromium call did not connect within 60 s\n{}",
            chromium_logs(lab, &out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let t0 = unix_now();
    follow_schedule(lab, t0);
    let link = sampler.finish(t0);
    for peer in [Host::PeerA, Host::PeerB] {
        stop_namespace(lab, peer);
    }
    side_links(lab, false);
    println!(
        "chromium: packets addressed outside the lab, dropped in the peers' namespaces: \
         A {}, B {}",
        guard_drops(lab, Host::PeerA),
        guard_drops(lab, Host::PeerB)
    );
    if let Ok(dir) = std::env::var("CALL_KEEP") {
        for f in ["stats-a.jsonl", "stats-b.jsonl", "log-a.txt", "log-b.txt"] {
            let _ = std::fs::copy(out.join(f), format!("{dir}/webrtc-compare-chromium-{f}"));
        }
    }
    let app = ["a", "b"].map(|me| chromium_app(&stats_lines(&out, me), t0));
    Run {
        name: "chromium",
        link,
        app,
    }
}

/// A page's statistics lines as receiver figures.
fn chromium_app(lines: &[Value], t0: f64) -> Vec<App> {
    lines
        .iter()
        .filter(|v| v["in_video"].is_object())
        .map(|v| {
            let f = |o: &str, k: &str| v[o][k].as_f64().unwrap_or(0.0);
            App {
                t: v["t"].as_f64().unwrap_or(0.0) - t0,
                fps: f("in_video", "framesPerSecond"),
                rtt_ms: v["pair"]["currentRoundTripTime"].as_f64().map(|s| s * 1e3),
                freezes: f("in_video", "freezeCount"),
                freeze_ms: f("in_video", "totalFreezesDuration") * 1e3,
                concealed: f("in_audio", "concealedSamples"),
                audio: f("in_audio", "totalSamplesReceived"),
            }
        })
        .collect()
}

/// p2pcall's call: a relay, B listening and answering, A calling for the schedule's length.
fn p2pcall_run(lab: &mut Lab, clip: &Path) -> Run {
    let dir = lab.dir.clone();
    let (a_json, b_json) = (dir.join("a.json"), dir.join("b.json"));
    let (clip, kbps) = (clip.to_str().unwrap(), MAX_KBPS.to_string());
    let media = [
        "--video",
        clip,
        "--audio",
        "tone",
        "--bitrate",
        kbps.as_str(),
    ];
    let mut listen = vec!["--answer"];
    listen.extend(media);
    listen.extend(["--stats-json", b_json.to_str().unwrap()]);
    let (id, _b_out) = relay_and_listener(lab, &listen);
    let sampler = Sampler::start(lab);
    let secs = format!("{}", SECS + 1.0);
    let mut args = vec![
        "call",
        id.as_str(),
        "--duration",
        secs.as_str(),
        "--stats-json",
    ];
    args.push(a_json.to_str().unwrap());
    args.extend(media);
    let (_, out) = run_a(lab, &args);
    out.wait_event("call_started", Duration::from_secs(30));
    let t0 = unix_now();
    follow_schedule(lab, t0);
    let lines = out.collect(Duration::from_secs(30));
    let link = sampler.finish(t0);
    assert!(
        lines.iter().any(|l| l["event"] == "call_ended"),
        "the p2pcall call did not end: {lines:?}"
    );
    std::thread::sleep(Duration::from_secs(2)); // the callee writes its summary
    if let Ok(keep) = std::env::var("CALL_KEEP") {
        let _ = std::fs::copy(&a_json, format!("{keep}/webrtc-compare-p2pcall-a.json"));
        let _ = std::fs::copy(&b_json, format!("{keep}/webrtc-compare-p2pcall-b.json"));
    }
    let app = [&a_json, &b_json].map(|p| {
        let v: Value =
            serde_json::from_slice(&std::fs::read(p).unwrap_or_default()).unwrap_or_default();
        p2pcall_app(&v)
    });
    Run {
        name: "p2pcall",
        link,
        app,
    }
}

/// A `--stats-json` file's seconds as receiver figures (times: the call's, which starts
/// with the schedule). Audio concealment is cumulative there (concealed / played): the
/// counts are rebuilt from it and the frames played each second.
fn p2pcall_app(v: &Value) -> Vec<App> {
    let mut out = Vec::new();
    let (mut played, mut prev_t) = (0.0, 0.0);
    for s in v["seconds"].as_array().into_iter().flatten() {
        let recv = |kind: &str| {
            s["recv"]
                .as_array()
                .and_then(|a| a.iter().find(|r| r["kind"] == kind))
                .cloned()
                .unwrap_or_default()
        };
        let (video, audio) = (recv("video"), recv("audio"));
        let t = s["elapsed_s"].as_f64().unwrap_or(0.0);
        played += audio["fps"].as_f64().unwrap_or(0.0) * (t - prev_t);
        prev_t = t;
        let p = (audio["concealed_pct"].as_f64().unwrap_or(0.0) / 100.0).min(0.999);
        let concealed = p * played / (1.0 - p);
        out.push(App {
            t,
            fps: video["fps"].as_f64().unwrap_or(0.0),
            rtt_ms: s["rtt_ms"].as_f64(),
            freezes: video["freezes"].as_f64().unwrap_or(0.0),
            freeze_ms: video["freeze_ms"].as_f64().unwrap_or(0.0),
            concealed,
            audio: played + concealed,
        });
    }
    out
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// How much counter `f` grew over the samples in (`from`, `to`], and over how many seconds
/// (a counter that went back was reset: it grew by its new value).
fn growth<T>(
    v: &[T],
    time: impl Fn(&T) -> f64,
    f: impl Fn(&T) -> Option<u64>,
    from: f64,
    to: f64,
) -> (u64, f64) {
    let points: Vec<(f64, u64)> = v.iter().filter_map(|x| Some((time(x), f(x)?))).collect();
    let (mut sum, mut secs) = (0, 0.0);
    for w in points.windows(2) {
        let ((t0, a), (t1, b)) = (w[0], w[1]);
        if t1 > from && t1 <= to && t0 >= from - 1.5 {
            sum += if b >= a { b - a } else { b };
            secs += t1 - t0;
        }
    }
    (sum, secs)
}

/// The link's figures over (`from`, `to`], per direction.
#[derive(Debug, Default, Clone, Copy)]
struct LinkFigures {
    kbps: [f64; 2],
    queue_p95_ms: f64,
    queue_max_ms: f64,
    drops: u64,
    /// Small packets: all, and all but RTP media (acknowledgements and feedback).
    small_pps: [f64; 2],
    small_kbps: [f64; 2],
    feedback_pps: [f64; 2],
    feedback_kbps: [f64; 2],
}

fn link_figures(s: &[Sample], from: f64, to: f64) -> LinkFigures {
    let mut f = LinkFigures::default();
    let mut queue = Vec::new();
    for d in 0..2 {
        let (bytes, secs) = growth(s, |x| x.t, |x| Some(x.tbf[d].bytes), from, to);
        f.kbps[d] = bytes as f64 * 8.0 / secs / 1e3;
        f.drops += growth(s, |x| x.t, |x| Some(x.tbf[d].drops), from, to).0;
        let small =
            |f: fn(&Small) -> u64| growth(s, |x| x.t, |x| x.small.map(|c| f(&c[d])), from, to);
        let ((n, secs), (bytes, _)) = (small(|c| c.packets), small(|c| c.bytes));
        let (media, media_bytes) = (small(|c| c.media_packets).0, small(|c| c.media_bytes).0);
        f.small_pps[d] = n as f64 / secs;
        f.small_kbps[d] = bytes as f64 * 8.0 / secs / 1e3;
        f.feedback_pps[d] = n.saturating_sub(media) as f64 / secs;
        f.feedback_kbps[d] = bytes.saturating_sub(media_bytes) as f64 * 8.0 / secs / 1e3;
        queue.extend(
            s.iter()
                .filter(|x| x.t > from && x.t <= to)
                .map(|x| x.tbf[d].backlog as f64 * 8.0 / f64::from(capacity(x.t))),
        );
    }
    f.queue_max_ms = queue.iter().copied().fold(f64::NAN, f64::max);
    f.queue_p95_ms = percentile(queue, 0.95);
    f
}

/// The receivers' figures over (`from`, `to`], both peers together.
#[derive(Debug, Default, Clone, Copy)]
struct AppFigures {
    freezes: f64,
    longest_freeze_ms: f64,
    fps: f64,
    rtt_p95_ms: f64,
    concealed_pct: f64,
}

fn app_figures(app: &[Vec<App>; 2], from: f64, to: f64) -> AppFigures {
    let mut f = AppFigures::default();
    let (mut fps, mut rtt) = (Vec::new(), Vec::new());
    let (mut concealed, mut audio) = (0.0, 0.0);
    for v in app {
        for w in v.windows(2) {
            let (a, b) = (w[0], w[1]);
            if b.t <= from || b.t > to {
                continue;
            }
            let n = b.freezes - a.freezes;
            f.freezes += n;
            if n > 0.0 {
                // More than one freeze in a second: their sum, an upper bound of the longest.
                f.longest_freeze_ms = f.longest_freeze_ms.max(b.freeze_ms - a.freeze_ms);
            }
            concealed += b.concealed - a.concealed;
            audio += b.audio - a.audio;
            fps.push(b.fps);
            rtt.extend(b.rtt_ms);
        }
    }
    f.fps = fps.iter().sum::<f64>() / fps.len() as f64;
    f.rtt_p95_ms = percentile(rtt, 0.95);
    f.concealed_pct = 100.0 * concealed / audio;
    f
}

/// Seconds from the rise (1 → 2.5 Mbit/s) until the link delivers 0.85 of the new capacity
/// (1 s mean of both directions).
fn ramp_up(s: &[Sample]) -> Option<f64> {
    let (rise, kbit) = (STEPS[1].0, f64::from(STEPS[1].1));
    s.iter()
        .filter(|x| x.t > rise + 1.0 && x.t <= STEPS[2].0)
        .find(|x| link_figures(s, x.t - 1.0, x.t).kbps.iter().sum::<f64>() / 2.0 >= 0.85 * kbit)
        .map(|x| x.t - rise)
}

/// Delivered / capacity over the whole schedule, mean of both directions.
fn utilisation(s: &[Sample]) -> f64 {
    let l = link_figures(s, 0.0, SECS);
    let cap: f64 = STEPS
        .iter()
        .enumerate()
        .map(|(k, &(from, kbit))| {
            let to = STEPS.get(k + 1).map_or(SECS, |x| x.0);
            f64::from(kbit) * (to - from)
        })
        .sum();
    (l.kbps[0] + l.kbps[1]) / 2.0 * SECS / cap
}

fn print_header() {
    let buffer: Vec<String> = STEPS
        .iter()
        .map(|&(_, kbit)| {
            let bytes = f64::from(kbit) / 8.0 * f64::from(QUEUE_MS) + 16384.0;
            format!("{:.0}", bytes * 8.0 / f64::from(kbit))
        })
        .collect();
    println!(
        "\nRFC 8867 5.1 in the NAT lab, both peers public, 50 ms one way: capacity {} kbit/s \
         for 40/20/20/20 s on both routers' internet links (tbf latency {QUEUE_MS} ms, drop-tail; \
         with its 16 kB burst the queue holds {} ms). Video both ways from the same 640x360 \
         30 fps y4m clip, capped at {MAX_KBPS} kbit/s, plus audio; Chromium first, then p2pcall.",
        STEPS.map(|s| s.1.to_string()).join(" -> "),
        buffer.join(" / ")
    );
    println!(
        "Link: each router's tbf sampled 10/s (bytes sent, backlog -> queue delay at the \
         current rate, drops); small packets = IP length <= 150 bytes (nft), \"not RTP media\" \
         leaves out RTP packets (Chromium's audio packets are this small; p2pcall sends none). \
         Calls: Chromium's getStats() (RTT: the candidate pair's currentRoundTripTime), \
         p2pcall's --stats-json (its audio concealment rebuilt from the running percentage); \
         longest freeze from per-second counts (several in one second: their sum)."
    );
}

/// One row: a label and each run's cell.
fn row(label: &str, cells: &[String]) {
    let mut s = format!("  {label:<34}");
    for c in cells {
        let _ = write!(s, "{c:>28}");
    }
    println!("{s}");
}

fn pair(v: [f64; 2]) -> String {
    format!("{:.0} / {:.0}", v[0], v[1])
}

/// A link figure per direction: steady, then the whole phase's in parentheses.
fn link_pairs(f: &Phase, x: fn(&LinkFigures) -> [f64; 2]) -> String {
    format!("{} ({})", pair(x(&f.link)), pair(x(&f.link_all)))
}

/// One run's figures of one phase: steady (without its first SETTLE s) and whole.
struct Phase {
    link: LinkFigures,
    link_all: LinkFigures,
    app: AppFigures,
    app_all: AppFigures,
}

/// The phase table: steady figures (from SETTLE s into the phase), the whole phase's in
/// parentheses where they differ in kind.
fn print_phase(runs: &[Run], k: usize) {
    let (from, kbit) = STEPS[k];
    let to = STEPS.get(k + 1).map_or(SECS, |x| x.0);
    println!(
        "\nphase {}: {kbit} kbit/s, {from:.0}-{to:.0} s (steady: from {:.0} s; whole phase in \
         parentheses)",
        k + 1,
        from + SETTLE
    );
    let names: Vec<String> = runs.iter().map(|r| r.name.to_string()).collect();
    row("", &names);
    let figs: Vec<Phase> = runs
        .iter()
        .map(|r| Phase {
            link: link_figures(&r.link, from + SETTLE, to),
            link_all: link_figures(&r.link, from, to),
            app: app_figures(&r.app, from + SETTLE, to),
            app_all: app_figures(&r.app, from, to),
        })
        .collect();
    let cells = |f: &dyn Fn(&Phase) -> String| figs.iter().map(f).collect::<Vec<_>>();
    let cap = f64::from(kbit);
    let mean = |l: &LinkFigures| (l.kbps[0] + l.kbps[1]) / 2.0;
    row(
        "delivered kbit/s A>B / B>A",
        &cells(&|f| link_pairs(f, |l| l.kbps)),
    );
    row(
        "delivered kbit/s, mean",
        &cells(&|f| format!("{:.0} ({:.0})", mean(&f.link), mean(&f.link_all))),
    );
    row(
        "utilisation",
        &cells(&|f| {
            format!(
                "{:.2} ({:.2})",
                mean(&f.link) / cap,
                mean(&f.link_all) / cap
            )
        }),
    );
    row(
        "bottleneck queue p95 / max ms",
        &cells(&|f| {
            format!(
                "{:.0} / {:.0} ({:.0} / {:.0})",
                f.link.queue_p95_ms,
                f.link.queue_max_ms,
                f.link_all.queue_p95_ms,
                f.link_all.queue_max_ms
            )
        }),
    );
    row(
        "drops",
        &cells(&|f| format!("{} ({})", f.link.drops, f.link_all.drops)),
    );
    row(
        "video freezes, longest ms",
        &cells(&|f| {
            format!(
                "{:.0}, {:.0} ({:.0}, {:.0})",
                f.app.freezes,
                f.app.longest_freeze_ms,
                f.app_all.freezes,
                f.app_all.longest_freeze_ms
            )
        }),
    );
    row(
        "video frames/s received",
        &cells(&|f| format!("{:.1} ({:.1})", f.app.fps, f.app_all.fps)),
    );
    row(
        "RTT p95 ms",
        &cells(&|f| format!("{:.0} ({:.0})", f.app.rtt_p95_ms, f.app_all.rtt_p95_ms)),
    );
    row(
        "small packets/s A>B / B>A",
        &cells(&|f| link_pairs(f, |l| l.small_pps)),
    );
    row(
        "small packets kbit/s A>B / B>A",
        &cells(&|f| link_pairs(f, |l| l.small_kbps)),
    );
    row(
        "  not RTP media: packets/s",
        &cells(&|f| link_pairs(f, |l| l.feedback_pps)),
    );
    row(
        "  not RTP media: kbit/s",
        &cells(&|f| link_pairs(f, |l| l.feedback_kbps)),
    );
    row(
        "audio concealed %",
        &cells(&|f| {
            format!(
                "{:.2} ({:.2})",
                f.app.concealed_pct, f.app_all.concealed_pct
            )
        }),
    );
}

/// The whole schedule's figures of one run.
struct Whole {
    utilisation: f64,
    ramp_up: Option<f64>,
    fall_drops: u64,
    freezes: f64,
    longest_freeze_ms: f64,
    small_pps: [f64; 2],
    feedback_pps: [f64; 2],
    /// Steady queue p95 at 1 Mbit/s (phases 1 and 4 without their first SETTLE s).
    queue_p95_1m: f64,
}

fn whole(r: &Run) -> Whole {
    let fall = STEPS[2].0;
    let app = app_figures(&r.app, 0.0, SECS);
    let mut queue = Vec::new();
    for (from, to) in [(STEPS[0].0, STEPS[1].0), (STEPS[3].0, SECS)] {
        for d in 0..2 {
            queue.extend(
                r.link
                    .iter()
                    .filter(|x| x.t > from + SETTLE && x.t <= to)
                    .map(|x| x.tbf[d].backlog as f64 * 8.0 / f64::from(capacity(x.t))),
            );
        }
    }
    let all = link_figures(&r.link, 0.0, SECS);
    Whole {
        utilisation: utilisation(&r.link),
        ramp_up: ramp_up(&r.link),
        fall_drops: link_figures(&r.link, fall, fall + FALL_WINDOW).drops,
        freezes: app.freezes,
        longest_freeze_ms: app.longest_freeze_ms,
        small_pps: all.small_pps,
        feedback_pps: all.feedback_pps,
        queue_p95_1m: percentile(queue, 0.95),
    }
}

fn print_whole(runs: &[Run]) {
    let w: Vec<Whole> = runs.iter().map(whole).collect();
    println!("\nwhole schedule (0-{SECS:.0} s)");
    let names: Vec<String> = runs.iter().map(|r| r.name.to_string()).collect();
    row("", &names);
    let cells = |f: &dyn Fn(&Whole) -> String| w.iter().map(f).collect::<Vec<_>>();
    let secs = |x: Option<f64>| x.map_or("never".into(), |s| format!("{s:.1} s"));
    row("utilisation", &cells(&|w| format!("{:.2}", w.utilisation)));
    row(
        "steady queue p95 at 1 Mbit/s ms",
        &cells(&|w| format!("{:.0}", w.queue_p95_1m)),
    );
    row("ramp-up to 0.85 x 2.5 Mbit/s", &cells(&|w| secs(w.ramp_up)));
    row(
        &format!("drops in the {FALL_WINDOW:.0} s after the fall"),
        &cells(&|w| w.fall_drops.to_string()),
    );
    row(
        "video freezes, longest ms",
        &cells(&|w| format!("{:.0}, {:.0}", w.freezes, w.longest_freeze_ms)),
    );
    row("small packets/s A>B / B>A", &cells(&|w| pair(w.small_pps)));
    row(
        "  not RTP media: packets/s",
        &cells(&|w| pair(w.feedback_pps)),
    );
    let (c, o) = (&w[0], &w[1]);
    let verdict = |ok: bool| if ok { "pass" } else { "FAIL" };
    println!("\ntargets (p2pcall)");
    let targets = [
        (
            format!(
                "steady queue p95 at 1 Mbit/s <= Chromium's: {:.0} ms vs {:.0} ms",
                o.queue_p95_1m, c.queue_p95_1m
            ),
            o.queue_p95_1m <= c.queue_p95_1m,
        ),
        (
            format!("utilisation >= 0.85: {:.2}", o.utilisation),
            o.utilisation >= 0.85,
        ),
        (
            format!("ramp-up <= 5 s: {}", secs(o.ramp_up)),
            o.ramp_up.is_some_and(|s| s <= 5.0),
        ),
        (
            format!(
                "drops at the fall <= Chromium's: {} vs {}",
                o.fall_drops, c.fall_drops
            ),
            o.fall_drops <= c.fall_drops,
        ),
        (
            format!("longest freeze <= 500 ms: {:.0} ms", o.longest_freeze_ms),
            o.longest_freeze_ms <= 500.0,
        ),
        (
            format!(
                "small packets <= 40/s per direction: {} (Chromium: {}, not RTP media {})",
                pair(o.small_pps),
                pair(c.small_pps),
                pair(c.feedback_pps)
            ),
            o.small_pps.iter().all(|&p| p <= 40.0),
        ),
    ];
    for (what, ok) in targets {
        println!("  {:<4} {what}", verdict(ok));
    }
}

/// Both calls ran the whole schedule and reported their figures.
fn check(r: &Run) {
    assert!(
        r.link.iter().filter(|x| x.t > 0.0 && x.t <= SECS).count() > (SECS * 5.0) as usize,
        "{}: too few link samples",
        r.name
    );
    for (peer, v) in ["A", "B"].iter().zip(&r.app) {
        let late = v.iter().filter(|x| x.t > SECS - 10.0).count();
        let seen = v.iter().any(|x| x.fps > 0.0);
        assert!(
            late > 0 && seen,
            "{}: peer {peer}'s statistics are missing or show no video ({} seconds)",
            r.name,
            v.len()
        );
    }
}

#[test]
#[ignore = "benchmark: scripts/bench.sh webrtc-compare"]
fn webrtc_compare() {
    if let Some(why) = unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let mut lab = build_lab();
    let clip = make_clip(&lab);
    let chromium = chromium_run(&mut lab, &clip);
    check(&chromium);
    lab.set_rate_queue(STEPS[0].1, QUEUE_MS).unwrap();
    std::thread::sleep(Duration::from_secs(2)); // the queue drains
    let ours = p2pcall_run(&mut lab, &clip);
    check(&ours);
    print_header();
    let runs = [chromium, ours];
    for k in 0..STEPS.len() {
        print_phase(&runs, k);
    }
    print_whole(&runs);
}

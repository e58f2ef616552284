//! Screen sharing at 1080p60 on this machine: a private Xvfb (1920×1080) where a painter
//! process scrolls a window full of text like a terminal or a browser (every frame changes),
//! and the call's capture path — `p2pcall_core::call::media::start_video`: X11 grabs (MIT-SHM,
//! XDamage, cursor) on the grabber thread at the target frame rate, H264 in screen-content
//! mode on the capture thread — then the packetizer and UDP datagrams to a loopback receiver
//! here, as the call task does. Then the same with the painter stopped: what an idle screen
//! costs.
//!
//! Baselines from the same run: the X server painting alone (its own CPU share), capture
//! alone and encode alone as fast as they go (1 and N encoder threads). CPU is utime + stime
//! from `/proc/PID/stat` (all threads), in % of one core.

use std::io::{BufRead, BufReader, Write as _};
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use p2pcall_codec::{VideoConfig, VideoEncoder};
use p2pcall_core::call::media::{VideoParams, start_video};
use p2pcall_core::call::{SCREEN_THREADS, ScreenTarget, VideoSource};
use p2pcall_media::packetize::Packetizer;
use p2pcall_media_io::Frame;
use p2pcall_proto::media::MediaDatagram;
use p2pcall_screen::xvfb::Xvfb;
use p2pcall_screen::{CaptureOptions, Capturer, Grab};
use x11rb::connection::Connection as _;
use x11rb::protocol::xproto::{
    ConnectionExt as _, CreateGCAux, CreateWindowAux, Rectangle, WindowClass,
};
use x11rb::rust_connection::RustConnection;

const WIDTH: u16 = 1920;
const HEIGHT: u16 = 1080;
/// Datagram size the packetizer cuts frames to (a typical QUIC datagram payload).
const DATAGRAM: usize = 1200;

/// CPU seconds (user + system, all threads) of process `pid`.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line; here 12 and 13 (state is 0).
    (ticks(11) + ticks(12)) / rustix::param::clock_ticks_per_second() as f64
}

/// CPU use of two processes over a stretch of time, % of one core.
struct CpuMeter {
    pids: [u32; 2],
    start: [f64; 2],
    at: Instant,
}

impl CpuMeter {
    fn start(pids: [u32; 2]) -> Self {
        Self {
            pids,
            start: pids.map(cpu_secs),
            at: Instant::now(),
        }
    }

    fn percent(&self) -> [f64; 2] {
        let dt = self.at.elapsed().as_secs_f64().max(1e-3);
        [0, 1].map(|i| (cpu_secs(self.pids[i]) - self.start[i]) / dt * 100.0)
    }
}

fn mean_p95(v: &mut [f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    v.sort_by(f64::total_cmp);
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    (mean, v[(v.len() * 95 / 100).min(v.len() - 1)])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The painter process (this binary, `screen-painter`), which scrolls text until killed.
struct Painter(Child);

impl Painter {
    fn start(display: &str, hz: u32) -> Result<Painter> {
        let exe = std::env::current_exe().context("finding this benchmark's binary")?;
        let mut child = Command::new(exe)
            .args(["screen-painter", "--display", display, "--hz"])
            .arg(hz.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the painter")?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("painter: no stdout"))?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the painter did not start: {line:?}");
        }
        Ok(Painter(child))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Painter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Words for the scrolling text.
const WORDS: &[&str] = &[
    "the", "call", "screen", "share", "frame", "packet", "encoder", "latency", "relay", "peer",
    "scroll", "window", "terminal", "browser", "cargo", "build", "release", "thread", "slice",
    "bitrate", "keyframe", "0x1f3a", "fn", "main()", "let", "mut", "match", "Ok(())", "=>", "impl",
    "struct", "pub", "async", "await", "tokio", "quinn", "H264", "1080p60", "{", "}",
];

/// The painter: a full-screen white window with black text that scrolls `step` pixels per
/// paint at `hz` paints per second (a new line of text appears at the bottom every 16
/// pixels), like `cat` in a terminal or a scrolling web page. Runs until killed.
pub fn paint(display: &str, hz: u32) -> Result<()> {
    let (conn, screen) = RustConnection::connect(Some(display)).context("painter: connect")?;
    let root = conn.setup().roots[screen].root;
    let win = conn.generate_id()?;
    conn.create_window(
        0,
        win,
        root,
        0,
        0,
        WIDTH,
        HEIGHT,
        0,
        WindowClass::INPUT_OUTPUT,
        0,
        &CreateWindowAux::new().background_pixel(0xff_ffff),
    )?;
    conn.map_window(win)?;
    // The server's built-in "fixed" font (6×13); without it, glyphs are drawn as boxes.
    let font = conn.generate_id()?;
    let has_font = conn.open_font(font, b"fixed")?.check().is_ok();
    let gc = conn.generate_id()?;
    let mut aux = CreateGCAux::new()
        .foreground(0x20_2020)
        .background(0xff_ffff)
        .graphics_exposures(0);
    if has_font {
        aux = aux.font(font);
    }
    conn.create_gc(gc, win, &aux)?;
    let white = conn.generate_id()?;
    conn.create_gc(white, win, &CreateGCAux::new().foreground(0xff_ffff))?;
    const LINE: i16 = 16;
    let step = (240 / hz.max(1)).clamp(1, 16) as i16; // 240 px/s whatever the paint rate
    let mut seed = 0x2545_f491_u32;
    let mut next_line = move || {
        let mut s = String::new();
        // Indented like code or a paragraph, 60..200 characters.
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let indent = (seed >> 28) as usize * 2;
        let len = 60 + (seed >> 8) as usize % 140;
        s.push_str(&" ".repeat(indent));
        while s.len() < len {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            s.push_str(WORDS[(seed >> 16) as usize % WORDS.len()]);
            s.push(' ');
        }
        s.truncate(250);
        s
    };
    let draw = |text: &str, top: i16| -> Result<()> {
        if has_font {
            // Baseline = top + ascent (11 for "fixed").
            conn.image_text8(win, gc, 8, top + 11, text.as_bytes())?;
        } else {
            let boxes: Vec<Rectangle> = text
                .bytes()
                .enumerate()
                .filter(|(_, b)| *b != b' ')
                .map(|(i, _)| Rectangle {
                    x: 8 + 6 * i as i16,
                    y: top + 2,
                    width: 5,
                    height: 9,
                })
                .collect();
            conn.poly_fill_rectangle(win, gc, &boxes)?;
        }
        Ok(())
    };
    // A full page first.
    for row in 0..(HEIGHT as i16 / LINE) {
        draw(&next_line(), row * LINE)?;
    }
    conn.get_input_focus()?.reply()?;
    println!("ready");
    std::io::stdout().flush()?;
    let interval = Duration::from_secs_f64(1.0 / f64::from(hz.max(1)));
    let (mut current, mut shown) = (next_line(), 0i16);
    let mut next = Instant::now();
    loop {
        // Scroll up by `step`, blank the band that appears, draw the bottom line into it.
        conn.copy_area(win, win, gc, 0, step, 0, 0, WIDTH, HEIGHT - step as u16)?;
        let band = Rectangle {
            x: 0,
            y: HEIGHT as i16 - step,
            width: WIDTH,
            height: step as u16,
        };
        conn.poly_fill_rectangle(win, white, &[band])?;
        shown += step;
        draw(&current, HEIGHT as i16 - shown)?;
        if shown >= LINE {
            (current, shown) = (next_line(), 0);
        }
        conn.get_input_focus()?.reply()?;
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > interval * 4 {
            next = now;
        }
    }
}

/// A loopback UDP receiver counting what arrives.
struct Sink {
    addr: std::net::SocketAddr,
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Sink {
    fn start() -> Result<Sink> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = sock.local_addr()?;
        let (bytes, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (b, s) = (bytes.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    b.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        });
        Ok(Sink { addr, bytes, stop })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn encoder(kbps: u32, fps: u32, threads: u16, skip_frames: bool) -> Result<VideoEncoder> {
    Ok(VideoEncoder::new(VideoConfig {
        bitrate: kbps * 1000,
        fps: fps as f32,
        screen: true,
        threads,
        skip_frames,
    })?)
}

/// Capture alone, as fast as it goes, for `secs`; keeps up to `keep` distinct frames.
fn capture_alone(display: &str, secs: f64, keep: usize) -> Result<(f64, f64, f64, Vec<Frame>)> {
    let mut cap = Capturer::open(
        Some(display),
        &ScreenTarget::Screen(0),
        CaptureOptions::default(),
    )?;
    cap.grab()?;
    let (mut times, mut frames) = (Vec::new(), Vec::new());
    let t0 = Instant::now();
    let mut n = 0u32;
    while t0.elapsed().as_secs_f64() < secs {
        let t = Instant::now();
        let g = cap.grab()?;
        if let Grab::Frame(f) = g {
            times.push(ms(t.elapsed()));
            n += 1;
            if frames.len() < keep {
                frames.push(f);
            }
        }
    }
    let (mean, p95) = mean_p95(&mut times);
    Ok((f64::from(n) / t0.elapsed().as_secs_f64(), mean, p95, frames))
}

/// Encode alone (every frame coded), as fast as it goes, over `frames` repeated.
fn encode_alone(
    frames: &[Frame],
    kbps: u32,
    fps: u32,
    threads: u16,
    n: usize,
) -> Result<(f64, f64, f64, f64)> {
    let mut enc = encoder(kbps, fps, threads, false)?;
    enc.encode(&frames[0], 0, false)?;
    let (mut times, mut bytes) = (Vec::new(), 0usize);
    let t0 = Instant::now();
    for i in 1..=n {
        let t = Instant::now();
        let ts = (i as f64 * 1000.0 / f64::from(fps)) as u64;
        bytes += enc.encode(&frames[i % frames.len()], ts, false)?.data.len();
        times.push(ms(t.elapsed()));
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    let (mean, p95) = mean_p95(&mut times);
    let kbps_out = bytes as f64 * 8.0 / (n as f64 / f64::from(fps)) / 1e3;
    Ok((rate, mean, p95, kbps_out))
}

#[derive(Default)]
struct Phase {
    secs: f64,
    sent: u64,
    grab_ms: Vec<f64>,
    encode_ms: Vec<f64>,
    send_ms: Vec<f64>,
    bytes: u64,
    per_second: Vec<u64>,
    cpu: [f64; 2],
}

/// A call's screen capture (`p2pcall_core::call::media::start_video`: the grabber thread,
/// the capture thread with the encoder) for `secs`; what it encodes is packetized and sent
/// to the loopback receiver here, as the call task would.
fn share(
    display: &str,
    xvfb_pid: u32,
    secs: f64,
    kbps: u32,
    fps: u32,
    sink: &Sink,
) -> Result<Phase> {
    let src = VideoSource::Screen {
        target: ScreenTarget::Screen(0),
        display: Some(display.to_owned()),
    };
    let params = VideoParams {
        width: usize::from(WIDTH),
        height: usize::from(HEIGHT),
        fps,
        kbps,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let (etx, mut erx) = tokio::sync::mpsc::channel(4);
    let mut pk = Packetizer::new(1);
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.connect(sink.addr)?;
    let mut buf = Vec::with_capacity(DATAGRAM + 64);
    let mut p = Phase {
        per_second: vec![0; secs.ceil() as usize + 1],
        ..Phase::default()
    };
    let meter = CpuMeter::start([std::process::id(), xvfb_pid]);
    let t0 = Instant::now();
    let capture = start_video(&src, params, true, t0, tx, etx, None)?;
    let end = t0 + Duration::from_secs_f64(secs);
    let next = |rx: &mut tokio::sync::mpsc::Receiver<_>| {
        rt.block_on(async { tokio::time::timeout_at(end.into(), rx.recv()).await })
    };
    while let Ok(Some(e)) = next(&mut rx) {
        let t = Instant::now();
        p.grab_ms.push(ms(e.capture_time));
        p.encode_ms.push(ms(e.encode_time));
        let n = e.data.len();
        for pkt in pk.packetize(e.data, e.timestamp, e.keyframe, DATAGRAM)? {
            buf.clear();
            MediaDatagram::Packet(pkt).encode(&mut buf);
            // Loopback: a full socket buffer drops, like a full QUIC datagram queue.
            let _ = sock.send(&buf);
        }
        p.send_ms.push(ms(t.elapsed()));
        p.sent += 1;
        p.bytes += n as u64;
        let second = (t - t0).as_secs() as usize;
        if let Some(s) = p.per_second.get_mut(second) {
            *s += 1;
        }
    }
    p.secs = t0.elapsed().as_secs_f64();
    p.cpu = meter.percent();
    drop(capture);
    if let Ok(e) = erx.try_recv() {
        bail!("screen capture failed: {}", e.message);
    }
    p.per_second.truncate(p.secs.floor() as usize);
    Ok(p)
}

fn report(label: &str, p: &mut Phase, fps: u32) {
    let (gm, gp) = mean_p95(&mut p.grab_ms);
    let (em, ep) = mean_p95(&mut p.encode_ms);
    let (sm, sp) = mean_p95(&mut p.send_ms);
    let achieved = p.sent as f64 / p.secs;
    // Sustained: the worst whole second after the first.
    let worst = p.per_second.iter().skip(1).min().copied().unwrap_or(0);
    println!(
        "  {label}: {achieved:.1} fps sent ({:.2}x the {fps} fps target), worst second {worst} \
         frames, {} frames",
        achieved / f64::from(fps),
        p.sent,
    );
    println!(
        "    per frame: capture {gm:.2} ms (p95 {gp:.2}), encode {em:.2} ms (p95 {ep:.2}), \
         packetize+send {sm:.3} ms (p95 {sp:.3}); {:.0} kbit/s",
        p.bytes as f64 * 8.0 / p.secs / 1e3
    );
    println!(
        "    CPU: this process {:.1} % of one core, Xvfb {:.1} %",
        p.cpu[0], p.cpu[1]
    );
}

pub fn run(secs: f64, fps: u32, kbps: u32) -> Result<()> {
    let Some(xvfb) = Xvfb::start(u32::from(WIDTH), u32::from(HEIGHT))? else {
        bail!("Xvfb is not installed (apt-get install xvfb, or scripts/setup.sh)");
    };
    let display = xvfb.display().to_owned();
    println!(
        "screen share: Xvfb {WIDTH}x{HEIGHT}, scrolling text (240 px/s, painted at {} Hz), \
         {fps} fps target, {kbps} kbit/s, screen content, {SCREEN_THREADS} encoder threads as \
         in calls, {} cores",
        2 * fps,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let painter = Painter::start(&display, 2 * fps)?;
    let sink = Sink::start()?;

    println!("baselines (same run):");
    let m = CpuMeter::start([painter.pid(), xvfb.pid()]);
    std::thread::sleep(Duration::from_secs(3));
    let [paint_cpu, xvfb_paint] = m.percent();
    println!(
        "  painting alone: Xvfb {xvfb_paint:.1} % of one core, painter {paint_cpu:.1} % \
         (the shared application's own cost)"
    );
    let (cap_fps, cap_ms, cap_p95, frames) = capture_alone(&display, 3.0, 120)?;
    println!(
        "  capture alone (as fast as it goes): {cap_fps:.1} fps, {cap_ms:.2} ms per frame \
         (p95 {cap_p95:.2})"
    );
    let (mut enc_fps, mut one) = (0.0, 0.0);
    for t in [1, 2, 4] {
        let (rate, mean, p95, out) = encode_alone(&frames, kbps, fps, t, 240)?;
        println!(
            "  encode alone, {t} thread(s), every frame coded: {rate:.1} fps, {mean:.2} ms per \
             frame (p95 {p95:.2}), {out:.0} kbit/s{}",
            if t == 1 {
                String::new()
            } else {
                format!(" ({:.2}x 1 thread)", rate / one)
            }
        );
        if t == 1 {
            one = rate;
        }
        if t == SCREEN_THREADS {
            enc_fps = rate;
        }
    }
    let serial = 1.0 / (1.0 / cap_fps + 1.0 / enc_fps);
    let overlapped = cap_fps.min(enc_fps);
    println!(
        "  capture then encode on one thread: {serial:.1} fps; overlapped on two: {overlapped:.1} fps"
    );

    println!("sharing ({secs} s each):");
    let mut scrolling = share(&display, xvfb.pid(), secs, kbps, fps, &sink)?;
    report("scrolling text", &mut scrolling, fps);
    let achieved = scrolling.sent as f64 / scrolling.secs;
    println!(
        "    {:.2}x the overlapped baseline ({:.1} fps); Xvfb minus painting alone: {:.1} %",
        achieved / overlapped.min(f64::from(fps)),
        overlapped.min(f64::from(fps)),
        scrolling.cpu[1] - xvfb_paint
    );
    drop(painter);
    std::thread::sleep(Duration::from_millis(300));
    let mut idle = share(&display, xvfb.pid(), secs, kbps, fps, &sink)?;
    report("idle screen", &mut idle, fps);
    println!(
        "received on loopback: {:.1} MB",
        sink.bytes.load(Ordering::Relaxed) as f64 / 1e6
    );
    println!(
        "targets: >= 55 fps scrolling: {} ({achieved:.1}); idle < 5 % of a core: {} ({:.1} %)",
        if achieved >= 55.0 { "met" } else { "NOT met" },
        if idle.cpu[0] < 5.0 { "met" } else { "NOT met" },
        idle.cpu[0]
    );
    Ok(())
}

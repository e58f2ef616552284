//! How fast screen capture is at 1080p under a private Xvfb: wall time per grab (and the fps
//! that allows), CPU time of this thread per grab, and CPU time of the X server per grab, for
//! changed and unchanged screens, with and without MIT-SHM / XDamage, full size and scaled.
//!
//!     cargo run --release -p p2pcall-screen --example screen_speed [-- FRAMES [FILTER]]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a measurement tool: a failed step ends it

use std::time::Instant;

use p2pcall_media_io::convert;
use p2pcall_screen::xvfb::Xvfb;
use p2pcall_screen::{CaptureOptions, Capturer, Grab, Target};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{
    ConnectionExt as _, CreateGCAux, CreateWindowAux, Rectangle, WindowClass,
};
use x11rb::rust_connection::RustConnection;

/// Nanoseconds this thread has run (first field of /proc/thread-self/schedstat).
fn thread_cpu_ns() -> u64 {
    schedstat("/proc/thread-self/schedstat")
}

fn schedstat(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

struct Painter {
    conn: RustConnection,
    win: u32,
    gc: u32,
    n: u32,
}

impl Painter {
    /// A full-screen window with a busy picture (so the frames are not trivially flat).
    fn new(display: &str) -> Painter {
        let (conn, screen) = RustConnection::connect(Some(display)).unwrap();
        let root = conn.setup().roots[screen].root;
        let win = conn.generate_id().unwrap();
        conn.create_window(
            0,
            win,
            root,
            0,
            0,
            1920,
            1080,
            0,
            WindowClass::INPUT_OUTPUT,
            0,
            &CreateWindowAux::new().background_pixel(0x20_3040),
        )
        .unwrap();
        conn.map_window(win).unwrap();
        let gc = conn.generate_id().unwrap();
        conn.create_gc(gc, win, &CreateGCAux::new()).unwrap();
        let p = Painter {
            conn,
            win,
            gc,
            n: 0,
        };
        for i in 0..2000u32 {
            let colour = i.wrapping_mul(2_654_435_761) & 0xff_ffff;
            let (x, y) = ((i * 97 % 1900) as i16, (i * 53 % 1060) as i16);
            p.rect(colour, x, y, 20 + (i % 60) as u16, 8 + (i % 30) as u16);
        }
        p.sync();
        p
    }

    fn rect(&self, colour: u32, x: i16, y: i16, width: u16, height: u16) {
        self.conn
            .change_gc(
                self.gc,
                &x11rb::protocol::xproto::ChangeGCAux::new().foreground(colour),
            )
            .unwrap();
        self.conn
            .poly_fill_rectangle(
                self.win,
                self.gc,
                &[Rectangle {
                    x,
                    y,
                    width,
                    height,
                }],
            )
            .unwrap();
    }

    /// A small change (a blinking-caret-sized box), then wait until the server drew it.
    fn change(&mut self) {
        self.n += 1;
        let colour = if self.n.is_multiple_of(2) {
            0xff_ffff
        } else {
            0
        };
        self.rect(colour, 700, 500, 8, 16);
        self.sync();
    }

    fn sync(&self) {
        self.conn.get_input_focus().unwrap().reply().unwrap();
    }
}

fn measure(
    xvfb: &Xvfb,
    painter: &mut Painter,
    label: &str,
    opts: CaptureOptions,
    change: bool,
    frames: usize,
) {
    let mut cap = Capturer::open(Some(xvfb.display()), &Target::Screen(0), opts).unwrap();
    // The first grab maps pages and fetches the cursor: not part of the steady state.
    cap.grab().unwrap();
    let server = format!("/proc/{}/schedstat", xvfb.pid());
    let (mut wall, mut cpu, mut srv) = (Vec::new(), 0u64, 0u64);
    let (mut got_frames, mut size) = (0, (0, 0));
    for _ in 0..frames {
        if change {
            painter.change();
        }
        let (s0, c0, t0) = (schedstat(&server), thread_cpu_ns(), Instant::now());
        let g = cap.grab().unwrap();
        wall.push(t0.elapsed().as_secs_f64() * 1e3);
        cpu += thread_cpu_ns() - c0;
        srv += schedstat(&server) - s0;
        if let Grab::Frame(f) = g {
            got_frames += 1;
            size = (f.width, f.height);
        }
    }
    wall.sort_by(f64::total_cmp);
    let mean = wall.iter().sum::<f64>() / wall.len() as f64;
    let p95 = wall[wall.len() * 95 / 100];
    let n = frames as f64;
    println!(
        "{label:<44} {:>9} {mean:>7.2} {p95:>7.2} {:>7.0} {:>8.2} {:>8.2}   {got_frames}/{frames} frames{}",
        format!("{}x{}", size.0, size.1),
        1e3 / mean,
        cpu as f64 / n / 1e6,
        srv as f64 / n / 1e6,
        if (cap.uses_shm(), cap.uses_damage()) == (opts.shm, opts.damage) {
            ""
        } else {
            " (fallback in use!)"
        },
    );
}

fn main() {
    let frames: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(300);
    let Some(xvfb) = Xvfb::start(1920, 1080).unwrap() else {
        eprintln!("Xvfb is not installed (apt-get install xvfb)");
        return;
    };
    let mut painter = Painter::new(xvfb.display());
    println!(
        "{:<44} {:>9} {:>7} {:>7} {:>7} {:>8} {:>8}",
        "1920x1080 screen, per grab", "out", "ms", "p95 ms", "fps", "cpu ms", "Xvfb ms"
    );
    let full = CaptureOptions::default();
    let scaled = CaptureOptions::fit(1280, 720);
    let no_shm = CaptureOptions { shm: false, ..full };
    let no_damage = CaptureOptions {
        damage: false,
        ..full
    };
    let no_cursor = CaptureOptions {
        cursor: false,
        ..full
    };
    let cases = [
        ("changed, SHM + damage + cursor", full, true),
        ("unchanged, SHM + damage + cursor", full, false),
        ("unchanged, SHM + damage, no cursor", no_cursor, false),
        ("changed, scaled to 1280x720", scaled, true),
        ("changed, plain GetImage (no SHM)", no_shm, true),
        ("unchanged, plain GetImage (no SHM)", no_shm, false),
        ("changed, no XDamage (frame compare)", no_damage, true),
        ("unchanged, no XDamage (frame compare)", no_damage, false),
    ];
    let filter = std::env::args().nth(2).unwrap_or_default();
    for (label, opts, change) in cases {
        if !label.contains(filter.as_str()) {
            continue;
        }
        measure(&xvfb, &mut painter, label, opts, change, frames);
    }
    // The conversion alone, on a 1080p BGRX buffer.
    let bgrx: Vec<u8> = (0..1920 * 1080 * 4).map(|i| (i * 7 % 251) as u8).collect();
    let (t0, c0) = (Instant::now(), thread_cpu_ns());
    let n = 100;
    for _ in 0..n {
        std::hint::black_box(convert::from_bgrx(&bgrx, 1920, 1080, 1920 * 4).unwrap());
    }
    println!(
        "from_bgrx 1920x1080 alone: {:.2} ms wall, {:.2} ms cpu",
        t0.elapsed().as_secs_f64() * 1e3 / f64::from(n),
        (thread_cpu_ns() - c0) as f64 / 1e6 / f64::from(n)
    );
    let f = convert::from_bgrx(&bgrx, 1920, 1080, 1920 * 4).unwrap();
    let t0 = Instant::now();
    for _ in 0..n {
        std::hint::black_box(convert::scale(&f, 1280, 720).unwrap());
    }
    println!(
        "media-io convert::scale (bilinear) 1080p -> 720p, for comparison: {:.2} ms",
        t0.elapsed().as_secs_f64() * 1e3 / f64::from(n)
    );
}

//! Capture against a real X server: each test starts its own Xvfb (1920×1080×24), draws with
//! its own X connection and checks the captured I420 pixels. Without the `Xvfb` binary
//! (`scripts/setup.sh` installs it) the tests say so and pass.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use p2pcall_screen::xvfb::Xvfb;
use p2pcall_screen::{
    CaptureOptions, Capturer, Frame, Grab, ScreenError, ScreenInfo, Target, list,
};
use x11rb::connection::Connection;
use x11rb::protocol::randr::{self, ConnectionExt as _};
use x11rb::protocol::xproto::{
    AtomEnum, ChangeWindowAttributesAux, ConfigureWindowAux, ConnectionExt as _, CreateGCAux,
    CreateWindowAux, PropMode, Rectangle, Window, WindowClass,
};
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

const RED: u32 = 0xff_0000;
const GREEN: u32 = 0x00_ff00;
const BLUE: u32 = 0x00_00ff;
const GREY: u32 = 0x80_8080;

/// An Xvfb and a client connection to draw with.
struct Desk {
    conn: RustConnection,
    root: Window,
    // Dropped last: the server goes after the client.
    xvfb: Xvfb,
}

fn desk(test: &str) -> Option<Desk> {
    let xvfb = match Xvfb::start(1920, 1080) {
        Ok(Some(x)) => x,
        Ok(None) => {
            eprintln!("skipping {test}: Xvfb is not installed (scripts/setup.sh installs it)");
            return None;
        }
        Err(e) => panic!("Xvfb: {e}"),
    };
    let (conn, screen) = RustConnection::connect(Some(xvfb.display())).unwrap();
    let root = conn.setup().roots[screen].root;
    Some(Desk { conn, root, xvfb })
}

impl Desk {
    fn display(&self) -> Option<&str> {
        Some(self.xvfb.display())
    }

    /// A mapped top-level window with a solid background.
    fn window(&self, x: i16, y: i16, w: u16, h: u16, background: u32) -> Window {
        let id = self.conn.generate_id().unwrap();
        self.conn
            .create_window(
                0,
                id,
                self.root,
                x,
                y,
                w,
                h,
                0,
                WindowClass::INPUT_OUTPUT,
                0,
                &CreateWindowAux::new().background_pixel(background),
            )
            .unwrap();
        self.conn.map_window(id).unwrap();
        self.sync();
        id
    }

    fn fill(&self, drawable: u32, colour: u32, x: i16, y: i16, w: u16, h: u16) {
        let gc = self.conn.generate_id().unwrap();
        self.conn
            .create_gc(gc, drawable, &CreateGCAux::new().foreground(colour))
            .unwrap();
        self.conn
            .poly_fill_rectangle(
                drawable,
                gc,
                &[Rectangle {
                    x,
                    y,
                    width: w,
                    height: h,
                }],
            )
            .unwrap();
        self.conn.free_gc(gc).unwrap();
        self.sync();
    }

    /// Waits until the server has handled everything sent so far.
    fn sync(&self) {
        self.conn.get_input_focus().unwrap().reply().unwrap();
    }
}

/// BT.601 limited range, as the converter computes it.
fn yuv_of(colour: u32) -> (i32, i32, i32) {
    let (r, g, b) = (
        (colour >> 16) as i32 & 0xff,
        (colour >> 8) as i32 & 0xff,
        colour as i32 & 0xff,
    );
    (
        ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16,
        ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128,
        ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128,
    )
}

fn yuv_at(f: &Frame, x: usize, y: usize) -> (i32, i32, i32) {
    let c = (y / 2) * (f.width / 2) + x / 2;
    (
        i32::from(f.y[y * f.width + x]),
        i32::from(f.u[c]),
        i32::from(f.v[c]),
    )
}

#[track_caller]
fn assert_colour(f: &Frame, x: usize, y: usize, colour: u32, what: &str) {
    let (got, want) = (yuv_at(f, x, y), yuv_of(colour));
    let close =
        (got.0 - want.0).abs() <= 3 && (got.1 - want.1).abs() <= 3 && (got.2 - want.2).abs() <= 3;
    assert!(
        close,
        "{what}: at ({x}, {y}) of {}x{} YUV {got:?}, want {want:?} (#{colour:06x})",
        f.width, f.height
    );
}

#[track_caller]
fn frame(g: Grab) -> Frame {
    match g {
        Grab::Frame(f) => f,
        Grab::Unchanged => panic!("expected a frame, got Unchanged"),
    }
}

fn no_cursor() -> CaptureOptions {
    CaptureOptions {
        cursor: false,
        ..CaptureOptions::default()
    }
}

/// Drawing shows up at its place with its colour; nothing drawn → Unchanged; drawn → Frame.
fn screen_capture_round(d: &Desk, opts: CaptureOptions, shm: bool, damage: bool) {
    let win = d.window(100, 100, 400, 300, RED);
    d.fill(win, GREEN, 200, 150, 100, 100);
    let mut cap = Capturer::open(d.display(), &Target::Screen(0), opts).unwrap();
    assert_eq!((cap.uses_shm(), cap.uses_damage()), (shm, damage));
    assert_eq!(cap.size(), (1920, 1080));
    let f = frame(cap.grab().unwrap());
    assert_eq!((f.width, f.height), (1920, 1080));
    assert_colour(&f, 120, 120, RED, "window background");
    assert_colour(&f, 350, 300, GREEN, "filled rectangle");
    assert_colour(&f, 498, 398, RED, "window's last pixel");
    assert_colour(&f, 500, 400, 0, "root just outside the window");
    assert_colour(&f, 1900, 1000, 0, "root");
    assert_eq!(cap.grab().unwrap(), Grab::Unchanged, "nothing drawn");
    assert_eq!(cap.grab().unwrap(), Grab::Unchanged, "still nothing drawn");
    // A small change anywhere is a new frame.
    d.fill(win, BLUE, 10, 10, 4, 4);
    let f = frame(cap.grab().unwrap());
    assert_colour(&f, 112, 112, BLUE, "new small rectangle");
    assert_colour(&f, 350, 300, GREEN, "old rectangle");
    assert_eq!(cap.grab().unwrap(), Grab::Unchanged);
    // A window mapped on top, one drawn into a window below another: both are changes.
    let top = d.window(1000, 500, 200, 200, GREY);
    let f = frame(cap.grab().unwrap());
    assert_colour(&f, 1100, 600, GREY, "new window");
    assert_eq!(cap.grab().unwrap(), Grab::Unchanged);
    d.conn.destroy_window(top).unwrap();
    d.sync();
    let f = frame(cap.grab().unwrap());
    assert_colour(&f, 1100, 600, 0, "root where the window was");
}

#[test]
fn screen_capture_sees_colours_and_changes_with_shm_and_damage() {
    let Some(d) = desk("screen_capture_sees_colours_and_changes_with_shm_and_damage") else {
        return;
    };
    screen_capture_round(&d, no_cursor(), true, true);
}

#[test]
fn screen_capture_without_shm_and_damage_compares_frames() {
    let Some(d) = desk("screen_capture_without_shm_and_damage_compares_frames") else {
        return;
    };
    let opts = CaptureOptions {
        shm: false,
        damage: false,
        ..no_cursor()
    };
    screen_capture_round(&d, opts, false, false);
    // Each fallback on its own too.
    let shm_only = CaptureOptions {
        damage: false,
        ..no_cursor()
    };
    let mut cap = Capturer::open(d.display(), &Target::Screen(0), shm_only).unwrap();
    assert!(cap.uses_shm() && !cap.uses_damage());
    frame(cap.grab().unwrap());
    assert_eq!(cap.grab().unwrap(), Grab::Unchanged);
    d.fill(d.root, GREEN, 1500, 20, 2, 2);
    assert_colour(
        &frame(cap.grab().unwrap()),
        1500,
        20,
        GREEN,
        "2×2 on the root",
    );
    let damage_only = CaptureOptions {
        shm: false,
        ..no_cursor()
    };
    let mut cap = Capturer::open(d.display(), &Target::Screen(0), damage_only).unwrap();
    assert!(!cap.uses_shm() && cap.uses_damage());
    frame(cap.grab().unwrap());
    assert_eq!(cap.grab().unwrap(), Grab::Unchanged);
}

#[test]
fn scaled_capture_fits_the_limit_and_keeps_the_picture() {
    let Some(d) = desk("scaled_capture_fits_the_limit_and_keeps_the_picture") else {
        return;
    };
    let win = d.window(300, 300, 600, 450, BLUE);
    d.fill(win, GREEN, 300, 0, 300, 450);
    let opts = CaptureOptions {
        max_width: 1280,
        max_height: 720,
        ..no_cursor()
    };
    let mut cap = Capturer::open(d.display(), &Target::Screen(0), opts).unwrap();
    assert_eq!(cap.size(), (1280, 720));
    let f = frame(cap.grab().unwrap());
    assert_eq!((f.width, f.height), (1280, 720));
    // Two thirds: the window spans (200, 200)–(600, 500), its right half green.
    assert_colour(&f, 300, 350, BLUE, "left half");
    assert_colour(&f, 500, 350, GREEN, "right half");
    assert_colour(&f, 100, 100, 0, "root");
    // Width-limited on a 16:9 screen: the height follows.
    let opts = CaptureOptions {
        max_width: 640,
        max_height: 640,
        ..no_cursor()
    };
    let mut cap = Capturer::open(d.display(), &Target::Screen(0), opts).unwrap();
    let f = frame(cap.grab().unwrap());
    assert_eq!((f.width, f.height), (640, 360));
    assert_colour(&f, 130, 150, BLUE, "left half at a third");
    // A new limit while capturing: the next grab is a frame of the new size although
    // nothing changed, then the screen is unchanged again; lifting the limit goes back.
    assert_eq!(cap.grab().unwrap(), Grab::Unchanged);
    cap.set_max_size(320, 0);
    assert_eq!(cap.size(), (320, 180));
    let f = frame(cap.grab().unwrap());
    assert_eq!((f.width, f.height), (320, 180));
    assert_eq!(cap.grab().unwrap(), Grab::Unchanged);
    cap.set_max_size(0, 0);
    let f = frame(cap.grab().unwrap());
    assert_eq!((f.width, f.height), (1920, 1080));
    assert_eq!(p2pcall_screen::fit(1920, 1080, 320, 0), (320, 180));
    // The same without XDamage (frames compared).
    let opts = CaptureOptions {
        damage: false,
        ..no_cursor()
    };
    let mut cap = Capturer::open(d.display(), &Target::Screen(0), opts).unwrap();
    frame(cap.grab().unwrap());
    assert_eq!(cap.grab().unwrap(), Grab::Unchanged);
    cap.set_max_size(960, 540);
    assert_eq!(frame(cap.grab().unwrap()).width, 960);
    assert_eq!(cap.grab().unwrap(), Grab::Unchanged);
}

#[test]
fn window_capture_follows_its_size_and_reports_when_it_is_closed() {
    let Some(d) = desk("window_capture_follows_its_size_and_reports_when_it_is_closed") else {
        return;
    };
    let _below = d.window(0, 0, 1920, 1080, GREY);
    let win = d.window(100, 100, 400, 300, RED);
    d.conn
        .change_property8(
            PropMode::REPLACE,
            win,
            AtomEnum::WM_NAME,
            AtomEnum::STRING,
            b"p2pcall test window",
        )
        .unwrap();
    d.fill(win, GREEN, 0, 0, 40, 30);
    let listed = list(d.display()).unwrap();
    assert!(
        listed.iter().any(|i| matches!(i, ScreenInfo::Window(w)
            if w.id == win && w.name == "p2pcall test window"
                && (w.x, w.y, w.width, w.height) == (100, 100, 400, 300))),
        "{listed:?}"
    );
    assert!(
        matches!(&listed[0], ScreenInfo::Monitor(m) if (m.width, m.height) == (1920, 1080)),
        "{listed:?}"
    );
    // By name (a unique part of it, any case) and by id: the same window.
    let named = Target::WindowNamed("TEST window".to_owned());
    let mut cap = Capturer::open(d.display(), &named, no_cursor()).unwrap();
    assert_eq!(cap.size(), (400, 300));
    let f = frame(cap.grab().unwrap());
    assert_eq!((f.width, f.height), (400, 300));
    assert_colour(&f, 10, 10, GREEN, "window's own corner");
    assert_colour(&f, 200, 150, RED, "window background");
    assert_colour(&f, 398, 298, RED, "window's last pixel");
    let mut cap = Capturer::open(d.display(), &Target::Window(win), no_cursor()).unwrap();
    frame(cap.grab().unwrap());
    assert_eq!(cap.grab().unwrap(), Grab::Unchanged);
    // Drawing on another window is no change of this one.
    d.fill(d.window(1000, 800, 50, 50, BLUE), GREEN, 0, 0, 10, 10);
    assert_eq!(cap.grab().unwrap(), Grab::Unchanged);
    // Resized (odd sizes round down to even): the frames follow.
    d.conn
        .configure_window(win, &ConfigureWindowAux::new().width(321).height(201))
        .unwrap();
    d.sync();
    let f = frame(cap.grab().unwrap());
    assert_eq!((f.width, f.height, cap.size()), (320, 200, (320, 200)));
    assert_colour(&f, 300, 180, RED, "resized window");
    // Moved half off the screen: same size, the hidden part black.
    d.conn
        .configure_window(win, &ConfigureWindowAux::new().x(1800).y(900))
        .unwrap();
    d.sync();
    // (Resizing cleared the window to its background: paint the corner again.)
    d.fill(win, GREEN, 0, 0, 40, 30);
    let f = frame(cap.grab().unwrap());
    assert_eq!((f.width, f.height), (320, 200));
    assert_colour(&f, 10, 10, GREEN, "visible corner");
    assert_colour(&f, 100, 150, RED, "visible part");
    assert_colour(&f, 200, 100, 0, "part beyond the right edge");
    assert_colour(&f, 100, 190, 0, "part beyond the bottom edge");
    // Unmapped: no new frames; mapped again: a frame.
    d.conn.unmap_window(win).unwrap();
    d.sync();
    assert_eq!(cap.grab().unwrap(), Grab::Unchanged);
    d.conn.map_window(win).unwrap();
    d.sync();
    frame(cap.grab().unwrap());
    // Closed: a clear error, and it stays.
    d.conn.destroy_window(win).unwrap();
    d.sync();
    for _ in 0..2 {
        match cap.grab() {
            Err(ScreenError::WindowGone { id }) => assert_eq!(id, win),
            other => panic!("expected WindowGone, got {other:?}"),
        }
    }
    let e = Capturer::open(d.display(), &Target::Window(win), no_cursor()).unwrap_err();
    assert!(matches!(e, ScreenError::WindowNotFound { .. }), "{e:?}");
}

#[test]
fn cursor_is_drawn_only_when_asked_and_its_moves_are_changes() {
    let Some(d) = desk("cursor_is_drawn_only_when_asked_and_its_moves_are_changes") else {
        return;
    };
    let c = &d.conn;
    let win = d.window(100, 100, 400, 300, BLUE);
    // A solid green 16×16 cursor with its hot spot at the top-left corner.
    let bits = c.generate_id().unwrap();
    c.create_pixmap(1, bits, d.root, 16, 16).unwrap();
    d.fill(bits, 1, 0, 0, 16, 16);
    let cursor = c.generate_id().unwrap();
    c.create_cursor(cursor, bits, bits, 0, 0xffff, 0, 0, 0, 0, 0, 0)
        .unwrap();
    c.change_window_attributes(win, &ChangeWindowAttributesAux::new().cursor(cursor))
        .unwrap();
    c.warp_pointer(x11rb::NONE, win, 0, 0, 0, 0, 50, 50)
        .unwrap();
    d.sync();
    let mut with =
        Capturer::open(d.display(), &Target::Screen(0), CaptureOptions::default()).unwrap();
    let mut without = Capturer::open(d.display(), &Target::Screen(0), no_cursor()).unwrap();
    assert!(with.draws_cursor() && !without.draws_cursor());
    let f = frame(with.grab().unwrap());
    assert_colour(&f, 158, 158, GREEN, "cursor");
    assert_colour(&f, 180, 180, BLUE, "beyond the cursor");
    let plain = frame(without.grab().unwrap());
    assert_colour(&plain, 158, 158, BLUE, "no cursor asked for");
    assert_eq!(with.grab().unwrap(), Grab::Unchanged);
    // The pointer moves: a change with the cursor, none without.
    c.warp_pointer(x11rb::NONE, win, 0, 0, 0, 0, 200, 150)
        .unwrap();
    d.sync();
    let f = frame(with.grab().unwrap());
    assert_colour(&f, 308, 258, GREEN, "cursor moved");
    assert_colour(&f, 158, 158, BLUE, "where the cursor was");
    assert_eq!(without.grab().unwrap(), Grab::Unchanged);
    // Window capture draws it in window coordinates.
    let mut cap =
        Capturer::open(d.display(), &Target::Window(win), CaptureOptions::default()).unwrap();
    let f = frame(cap.grab().unwrap());
    assert_colour(&f, 208, 158, GREEN, "cursor in the window");
    assert_colour(&f, 50, 50, BLUE, "rest of the window");
    // Half outside the window's left edge: clipped, no panic.
    c.warp_pointer(x11rb::NONE, win, 0, 0, 0, 0, -8, 20)
        .unwrap();
    d.sync();
    let f = frame(cap.grab().unwrap());
    assert_colour(&f, 4, 26, GREEN, "clipped cursor");
}

#[test]
fn monitors_are_listed_and_captured_one_by_one() {
    let Some(d) = desk("monitors_are_listed_and_captured_one_by_one") else {
        return;
    };
    // Two RandR 1.5 monitors side by side on the one Xvfb screen.
    for (name, x, colour) in [(&b"LEFT"[..], 0, RED), (&b"RIGHT"[..], 960, GREEN)] {
        let atom = d
            .conn
            .intern_atom(false, name)
            .unwrap()
            .reply()
            .unwrap()
            .atom;
        let set = d.conn.randr_set_monitor(
            d.root,
            randr::MonitorInfo {
                name: atom,
                primary: x == 0,
                automatic: false,
                x,
                y: 0,
                width: 960,
                height: 1080,
                width_in_millimeters: 250,
                height_in_millimeters: 280,
                outputs: Vec::new(),
            },
        );
        if let Err(e) = set.unwrap().check() {
            eprintln!("skipping the monitor test: this Xvfb refuses RRSetMonitor ({e})");
            return;
        }
        d.window(x, 0, 960, 1080, colour);
    }
    let monitors: Vec<_> = list(d.display())
        .unwrap()
        .into_iter()
        .filter_map(|i| match i {
            ScreenInfo::Monitor(m) => Some(m),
            ScreenInfo::Window(_) => None,
        })
        .collect();
    let names: Vec<_> = monitors.iter().map(|m| m.name.as_str()).collect();
    assert!(
        names.contains(&"LEFT") && names.contains(&"RIGHT"),
        "{monitors:?}"
    );
    for m in monitors
        .iter()
        .filter(|m| m.name == "LEFT" || m.name == "RIGHT")
    {
        let want = if m.name == "LEFT" { RED } else { GREEN };
        let mut cap = Capturer::open(d.display(), &Target::Screen(m.index), no_cursor()).unwrap();
        let f = frame(cap.grab().unwrap());
        assert_eq!((f.width, f.height), (960, 1080), "{m:?}");
        assert_colour(&f, 10, 10, want, &m.name);
        assert_colour(&f, 950, 1070, want, &m.name);
        // A change on the other monitor is no change of this one.
        let other = if m.x == 0 { 1400 } else { 400 };
        d.window(other, 500, 20, 20, BLUE);
        assert_eq!(cap.grab().unwrap(), Grab::Unchanged, "{m:?}");
    }
    let e = Capturer::open(d.display(), &Target::Screen(monitors.len()), no_cursor());
    assert!(
        matches!(e, Err(ScreenError::ScreenOutOfRange { .. })),
        "{e:?}"
    );
}

#[test]
fn bad_targets_are_clear_errors() {
    let Some(d) = desk("bad_targets_are_clear_errors") else {
        return;
    };
    let e = Capturer::open(d.display(), &Target::Screen(3), no_cursor()).unwrap_err();
    assert!(
        matches!(e, ScreenError::ScreenOutOfRange { index: 3, count: 1 }),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("there is no screen 3") && text.contains("has 1"),
        "{text}"
    );
    let e = Capturer::open(d.display(), &Target::Window(0x07ff_fff0), no_cursor()).unwrap_err();
    assert!(matches!(e, ScreenError::WindowNotFound { .. }), "{e:?}");
    let named = Target::WindowNamed("no such window".to_owned());
    let e = Capturer::open(d.display(), &named, no_cursor()).unwrap_err();
    assert!(matches!(e, ScreenError::WindowNotFound { .. }), "{e:?}");
    // Two windows match: the error names both.
    for title in [&b"editor one"[..], b"editor two"] {
        let w = d.window(10, 10, 50, 50, GREY);
        d.conn
            .change_property8(
                PropMode::REPLACE,
                w,
                AtomEnum::WM_NAME,
                AtomEnum::STRING,
                title,
            )
            .unwrap();
    }
    d.sync();
    let named = Target::WindowNamed("editor".to_owned());
    let e = Capturer::open(d.display(), &named, no_cursor()).unwrap_err();
    assert!(
        matches!(&e, ScreenError::WindowAmbiguous { matches, .. } if matches.len() == 2),
        "{e:?}"
    );
    let named = Target::WindowNamed("editor two".to_owned());
    Capturer::open(d.display(), &named, no_cursor()).unwrap();
    let e = Capturer::open(Some(":4093"), &Target::Screen(0), no_cursor()).unwrap_err();
    assert!(matches!(e, ScreenError::Connect { .. }), "{e:?}");
}

/// `$DISPLAY` unset (and no Wayland): run in a child process, since the environment is
/// process-wide.
#[test]
fn no_display_is_a_clear_error() {
    const CHILD: &str = "P2PCALL_SCREEN_TEST_CHILD";
    if let Ok(mode) = std::env::var(CHILD) {
        let e = Capturer::open(None, &Target::Screen(0), no_cursor()).unwrap_err();
        let listed = list(None).unwrap_err();
        if mode == "wayland" {
            assert!(matches!(e, ScreenError::WaylandWithoutX11 { .. }), "{e:?}");
        } else {
            assert!(matches!(e, ScreenError::NoDisplay), "{e:?}");
            assert!(matches!(listed, ScreenError::NoDisplay), "{listed:?}");
            let text = e.to_string();
            assert!(
                text.contains("$DISPLAY is not set") && text.contains("X11 session"),
                "{text}"
            );
        }
        return;
    }
    for mode in ["plain", "wayland"] {
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "no_display_is_a_clear_error", "--test-threads=1"])
            .env(CHILD, mode)
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("XDG_SESSION_TYPE");
        if mode == "wayland" {
            cmd.env("WAYLAND_DISPLAY", "wayland-0");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{mode}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The child really ran the test (and did not filter it away).
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

//! Screen sharing source for X11: a whole screen (a RandR monitor) or one window, captured
//! with MIT-SHM (plain `GetImage` when the server has no MIT-SHM 1.2 or is remote), with the
//! mouse cursor composited (XFixes), converted to I420 and scaled down to fit the size a call
//! sends. XDamage tells when nothing changed, so an idle screen costs one round trip per grab;
//! without XDamage a whole-frame compare does the same job.
//!
//! ```no_run
//! use p2pcall_screen::{CaptureOptions, Capturer, Grab, Target};
//! let mut cap = Capturer::open(None, &Target::Screen(0), CaptureOptions::fit(1280, 720))?;
//! if let Grab::Frame(frame) = cap.grab()? {
//!     println!("{}x{}", frame.width, frame.height);
//! }
//! # Ok::<(), p2pcall_screen::ScreenError>(())
//! ```
//!
//! Wayland sessions are not supported yet (that needs the desktop portal and PipeWire); under
//! XWayland only X11 windows can be seen.
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod capture;
mod cursor;
mod display;
mod error;
mod scale;
mod shm;
mod windows;
pub mod xvfb;

pub use capture::Capturer;
pub use error::ScreenError;
pub use p2pcall_media_io::Frame;

/// The largest even size within `max_width × max_height` (0: no limit) with the aspect ratio
/// of `width × height`, never larger than that: the size [`CaptureOptions::fit`] gives frames.
pub fn fit(width: usize, height: usize, max_width: u32, max_height: u32) -> (usize, usize) {
    scale::fit(width & !1, height & !1, max_width, max_height)
}

/// What to capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A monitor, by its index in [`list`] (0 is the first monitor of the first X screen).
    Screen(usize),
    /// A window by its X11 id (as [`list`] shows it, or as `xwininfo` prints it).
    Window(u32),
    /// The one top-level window with this name: an exact match, or else the only window
    /// whose name contains it (case-insensitive).
    WindowNamed(String),
}

/// How to capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureOptions {
    /// Frames wider than this are scaled down (aspect ratio kept); 0 means no limit.
    pub max_width: u32,
    /// Frames taller than this are scaled down (aspect ratio kept); 0 means no limit.
    pub max_height: u32,
    /// Draw the mouse cursor into the frames.
    pub cursor: bool,
    /// Use MIT-SHM when the server offers it (`false` forces plain `GetImage`: for tests and
    /// measurements).
    pub shm: bool,
    /// Use XDamage when the server offers it (`false` forces the whole-frame compare: for
    /// tests and measurements).
    pub damage: bool,
}

impl Default for CaptureOptions {
    /// Full size, with the cursor, MIT-SHM and XDamage.
    fn default() -> Self {
        Self {
            max_width: 0,
            max_height: 0,
            cursor: true,
            shm: true,
            damage: true,
        }
    }
}

impl CaptureOptions {
    /// The defaults, scaled down to fit `max_width × max_height`.
    pub fn fit(max_width: u32, max_height: u32) -> Self {
        Self {
            max_width,
            max_height,
            ..Self::default()
        }
    }
}

/// The result of one [`Capturer::grab`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grab {
    /// Nothing visible changed since the last grab (the last frame still holds).
    Unchanged,
    /// A new frame.
    Frame(Frame),
}

/// A monitor that [`Target::Screen`] can capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorInfo {
    /// The index for [`Target::Screen`].
    pub index: usize,
    /// The RandR monitor name (an output name such as `DP-1`), or `screen N` without RandR.
    pub name: String,
    /// The X screen it belongs to (almost always 0).
    pub screen: usize,
    /// Position on that screen's root window.
    pub x: i32,
    /// Position on that screen's root window.
    pub y: i32,
    /// Size in pixels.
    pub width: u32,
    /// Size in pixels.
    pub height: u32,
    /// The primary monitor.
    pub primary: bool,
}

/// A top-level window that [`Target::Window`] can capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowInfo {
    /// The X11 window id for [`Target::Window`].
    pub id: u32,
    /// `_NET_WM_NAME` or `WM_NAME`; empty when it has none.
    pub name: String,
    /// Position on the root window.
    pub x: i32,
    /// Position on the root window.
    pub y: i32,
    /// Size in pixels (without window-manager decorations).
    pub width: u32,
    /// Size in pixels (without window-manager decorations).
    pub height: u32,
}

/// One thing that can be shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScreenInfo {
    /// A monitor.
    Monitor(MonitorInfo),
    /// A top-level window.
    Window(WindowInfo),
}

/// The monitors, then the visible top-level windows, of `display` (`None`: `$DISPLAY`). Works
/// without a window manager: top-level windows are then the root's mapped children.
pub fn list(display: Option<&str>) -> Result<Vec<ScreenInfo>, ScreenError> {
    use x11rb::connection::Connection as _;
    let conn = display::connect(display)?;
    let monitors = windows::monitors(&conn.conn)?;
    let mut out: Vec<ScreenInfo> = monitors.into_iter().map(ScreenInfo::Monitor).collect();
    for screen in &conn.conn.setup().roots {
        out.extend(
            windows::top_level(&conn.conn, screen.root)?
                .into_iter()
                .map(ScreenInfo::Window),
        );
    }
    Ok(out)
}

//! The one error type of this crate, and how X11 errors are turned into it.

use x11rb::errors::{ConnectionError, ReplyError, ReplyOrIdError};
use x11rb::protocol::ErrorKind;
use x11rb::x11_utils::X11Error;

/// Why a screen could not be listed or captured.
#[derive(Debug, thiserror::Error)]
pub enum ScreenError {
    /// Neither `$DISPLAY` nor an explicit display name.
    #[error(
        "no X11 display: $DISPLAY is not set; screen sharing needs an X11 session (Wayland via \
         the desktop portal is not supported yet)"
    )]
    NoDisplay,
    /// A Wayland session with no X11 display to reach (XWayland not running or not exported).
    #[error(
        "this is a Wayland session ({wayland}) and $DISPLAY is not set, so there is no XWayland \
         to capture from; screen sharing needs an X11 session (Wayland via the desktop portal \
         is not supported yet)"
    )]
    WaylandWithoutX11 {
        /// `$WAYLAND_DISPLAY` (or `XDG_SESSION_TYPE=wayland`).
        wayland: String,
    },
    /// The X server did not accept the connection.
    #[error("cannot connect to X11 display {display:?}: {reason}{hint}")]
    Connect {
        /// The display name tried.
        display: String,
        /// What x11rb said.
        reason: String,
        /// A hint for Wayland sessions (empty otherwise).
        hint: &'static str,
    },
    /// [`crate::Target::Screen`] with an index past the last monitor.
    #[error("there is no screen {index}: this display has {count} (0..={last})", last = count.saturating_sub(1))]
    ScreenOutOfRange {
        /// The index asked for.
        index: usize,
        /// How many monitors there are.
        count: usize,
    },
    /// No window with this id or name.
    #[error("no window {what} on this display (see the list of windows)")]
    WindowNotFound {
        /// `0x1a00003` or `named "…"`.
        what: String,
    },
    /// Several windows match the name.
    #[error("{} windows are named like {name:?}: {}; give the id instead", .matches.len(), describe(.matches))]
    WindowAmbiguous {
        /// The name asked for.
        name: String,
        /// `(id, name)` of the candidates.
        matches: Vec<(u32, String)>,
    },
    /// The captured window was closed (destroyed) while sharing.
    #[error("window 0x{id:x} is gone (it was closed)")]
    WindowGone {
        /// Its id.
        id: u32,
    },
    /// Pixels this crate cannot read (anything but 32-bit little-endian TrueColor).
    #[error(
        "unsupported X11 pixel format: depth {depth}, {bits_per_pixel} bits per pixel, \
         {byte_order}; need 24/32-bit TrueColor"
    )]
    UnsupportedFormat {
        /// Colour depth.
        depth: u8,
        /// Bits per pixel of the depth's pixmap format.
        bits_per_pixel: u8,
        /// The server's image byte order.
        byte_order: &'static str,
    },
    /// The X server answered a request with an error, or the connection broke.
    #[error("X11 {during}: {reason}")]
    X11 {
        /// The request or step.
        during: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A frame could not be converted (a bug: sizes are checked before).
    #[error("converting a captured frame: {0}")]
    Convert(#[from] p2pcall_media_io::IoError),
}

fn describe(matches: &[(u32, String)]) -> String {
    let shown: Vec<String> = matches
        .iter()
        .take(8)
        .map(|(id, name)| format!("0x{id:x} {name:?}"))
        .collect();
    let more = matches.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// An X11 protocol error in words.
pub(crate) fn x11_error(e: &X11Error) -> String {
    let ext = e
        .extension_name
        .as_deref()
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    format!(
        "{:?} error, bad value 0x{:x}, request {}.{}{ext}",
        e.error_kind, e.bad_value, e.major_opcode, e.minor_opcode
    )
}

/// Errors from x11rb that can become a [`ScreenError`] with the step they happened in.
pub(crate) trait X11Failure {
    /// The X11 error, when the server sent one.
    fn x11(&self) -> Option<&X11Error>;
    /// The error in words.
    fn words(&self) -> String;
}

impl X11Failure for ReplyError {
    fn x11(&self) -> Option<&X11Error> {
        match self {
            ReplyError::X11Error(e) => Some(e),
            ReplyError::ConnectionError(_) => None,
        }
    }
    fn words(&self) -> String {
        match self {
            ReplyError::X11Error(e) => x11_error(e),
            ReplyError::ConnectionError(e) => format!("connection: {e}"),
        }
    }
}

impl X11Failure for ReplyOrIdError {
    fn x11(&self) -> Option<&X11Error> {
        match self {
            ReplyOrIdError::X11Error(e) => Some(e),
            _ => None,
        }
    }
    fn words(&self) -> String {
        match self {
            ReplyOrIdError::X11Error(e) => x11_error(e),
            ReplyOrIdError::ConnectionError(e) => format!("connection: {e}"),
            ReplyOrIdError::IdsExhausted => "X11 ids exhausted".to_owned(),
        }
    }
}

impl X11Failure for ConnectionError {
    fn x11(&self) -> Option<&X11Error> {
        None
    }
    fn words(&self) -> String {
        format!("connection: {self}")
    }
}

/// `.during("GetImage")` on any x11rb result.
pub(crate) trait During<T> {
    fn during(self, during: &'static str) -> Result<T, ScreenError>;
}

impl<T, E: X11Failure> During<T> for Result<T, E> {
    fn during(self, during: &'static str) -> Result<T, ScreenError> {
        self.map_err(|e| ScreenError::X11 {
            during,
            reason: e.words(),
        })
    }
}

/// Whether the error says the window (or drawable) no longer exists.
pub(crate) fn is_gone(e: &impl X11Failure) -> bool {
    e.x11()
        .is_some_and(|e| matches!(e.error_kind, ErrorKind::Window | ErrorKind::Drawable))
}

/// Whether the error is a `BadMatch` (e.g. `GetImage` of an unmapped window).
pub(crate) fn is_match(e: &impl X11Failure) -> bool {
    e.x11()
        .is_some_and(|e| matches!(e.error_kind, ErrorKind::Match))
}

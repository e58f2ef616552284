//! Finding and connecting to the X server, with errors that say what to do.

use x11rb::rust_connection::RustConnection;

use crate::ScreenError;

/// A connection and what it was made with.
pub(crate) struct Conn {
    pub conn: RustConnection,
    /// The display name connected to.
    pub name: String,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("name", &self.name).finish()
    }
}

impl Conn {
    /// Whether the server runs on this machine (MIT-SHM fd passing needs a Unix socket).
    pub fn is_local(&self) -> bool {
        is_local(&self.name)
    }
}

/// Whether a display name points at this machine (`:0`, `unix:0`, a socket path), not at a
/// host (`host:0`, `tcp/host:0`).
pub(crate) fn is_local(name: &str) -> bool {
    if name.starts_with('/') {
        return true;
    }
    let host = name.rsplit_once(':').map_or("", |(h, _)| h);
    let host = host.rsplit_once('/').map_or(host, |(_, h)| h);
    host.is_empty() || host == "unix"
}

fn set(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// The display to use: the explicit one, else `$DISPLAY`; a missing one is explained, Wayland
/// sessions included. `env` reads a variable (a parameter so that tests need not touch the
/// process environment).
pub(crate) fn resolve(
    explicit: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, ScreenError> {
    if let Some(name) = set(explicit.map(str::to_owned)) {
        return Ok(name);
    }
    if let Some(name) = set(env("DISPLAY")) {
        return Ok(name);
    }
    let wayland = set(env("WAYLAND_DISPLAY")).or_else(|| {
        set(env("XDG_SESSION_TYPE"))
            .filter(|t| t.eq_ignore_ascii_case("wayland"))
            .map(|_| "XDG_SESSION_TYPE=wayland".to_owned())
    });
    Err(match wayland {
        Some(wayland) => ScreenError::WaylandWithoutX11 { wayland },
        None => ScreenError::NoDisplay,
    })
}

/// Connects to `explicit` or `$DISPLAY`.
pub(crate) fn connect(explicit: Option<&str>) -> Result<Conn, ScreenError> {
    let name = resolve(explicit, |k| std::env::var(k).ok())?;
    match RustConnection::connect(Some(&name)) {
        Ok((conn, _screen)) => Ok(Conn { conn, name }),
        Err(e) => {
            let wayland = set(std::env::var("WAYLAND_DISPLAY").ok()).is_some();
            Err(ScreenError::Connect {
                display: name,
                reason: e.to_string(),
                hint: if wayland {
                    " (this is a Wayland session: is XWayland running for this display?)"
                } else {
                    ""
                },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn display_comes_from_the_argument_then_the_environment() {
        assert_eq!(
            resolve(Some(":7"), env(&[("DISPLAY", ":1")])).unwrap(),
            ":7"
        );
        assert_eq!(resolve(None, env(&[("DISPLAY", ":1")])).unwrap(), ":1");
        assert_eq!(resolve(Some(""), env(&[("DISPLAY", ":1")])).unwrap(), ":1");
    }

    #[test]
    fn a_missing_display_is_explained() {
        let e = resolve(None, env(&[("DISPLAY", "")])).unwrap_err();
        assert!(matches!(e, ScreenError::NoDisplay), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("$DISPLAY is not set"), "{text}");
        assert!(text.contains("Wayland via the desktop portal"), "{text}");
        let e = resolve(None, env(&[("WAYLAND_DISPLAY", "wayland-0")])).unwrap_err();
        assert!(
            matches!(&e, ScreenError::WaylandWithoutX11 { wayland } if wayland == "wayland-0"),
            "{e:?}"
        );
        let e = resolve(None, env(&[("XDG_SESSION_TYPE", "wayland")])).unwrap_err();
        assert!(matches!(e, ScreenError::WaylandWithoutX11 { .. }), "{e:?}");
        let e = resolve(None, env(&[("XDG_SESSION_TYPE", "x11")])).unwrap_err();
        assert!(matches!(e, ScreenError::NoDisplay), "{e:?}");
    }

    #[test]
    fn local_displays_are_recognised() {
        let local = is_local;
        assert!(local(":0"));
        assert!(local("unix:1.0"));
        assert!(local("/tmp/.X11-unix/X3"));
        assert!(!local("remote.example:0"));
        assert!(!local("tcp/10.0.0.1:0"));
    }
}

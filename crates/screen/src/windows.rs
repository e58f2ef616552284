//! What can be shared: monitors (RandR 1.5, or whole X screens) and top-level windows (the
//! window manager's `_NET_CLIENT_LIST`, or without one the root's mapped children). Requests
//! are pipelined: one round trip per step, not per window.

use x11rb::connection::{Connection, RequestConnection as _};
use x11rb::protocol::randr::{self, ConnectionExt as _};
use x11rb::protocol::xproto::{
    AtomEnum, ConnectionExt as _, GetPropertyReply, MapState, Window, WindowClass,
};
use x11rb::rust_connection::RustConnection;

use crate::error::During;
use crate::{MonitorInfo, ScreenError, WindowInfo};

/// Whether the server has RandR 1.5 (monitors).
fn has_monitors(conn: &RustConnection) -> Result<bool, ScreenError> {
    if conn
        .extension_information(randr::X11_EXTENSION_NAME)
        .during("QueryExtension RANDR")?
        .is_none()
    {
        return Ok(false);
    }
    let v = conn
        .randr_query_version(1, 5)
        .during("RRQueryVersion")?
        .reply()
        .during("RRQueryVersion")?;
    Ok((v.major_version, v.minor_version) >= (1, 5))
}

/// Every monitor of every X screen, numbered in that order.
pub(crate) fn monitors(conn: &RustConnection) -> Result<Vec<MonitorInfo>, ScreenError> {
    let randr = has_monitors(conn)?;
    let mut out = Vec::new();
    for (screen_no, screen) in conn.setup().roots.iter().enumerate() {
        let (rw, rh) = (
            i32::from(screen.width_in_pixels),
            i32::from(screen.height_in_pixels),
        );
        let mut found = Vec::new();
        if randr {
            // An error here (a broken RandR) just means "the whole screen".
            if let Ok(reply) = conn
                .randr_get_monitors(screen.root, true)
                .during("RRGetMonitors")?
                .reply()
            {
                let names: Vec<_> = reply
                    .monitors
                    .iter()
                    .map(|m| conn.get_atom_name(m.name))
                    .collect::<Result<_, _>>()
                    .during("GetAtomName")?;
                for (m, name) in reply.monitors.iter().zip(names) {
                    let name = name
                        .reply()
                        .map(|n| String::from_utf8_lossy(&n.name).into_owned())
                        .unwrap_or_default();
                    // Clipped to the root window, which is all that can be read.
                    let (x0, y0) = (i32::from(m.x).max(0), i32::from(m.y).max(0));
                    let x1 = (i32::from(m.x) + i32::from(m.width)).min(rw);
                    let y1 = (i32::from(m.y) + i32::from(m.height)).min(rh);
                    if x1 - x0 >= 2 && y1 - y0 >= 2 {
                        found.push((name, x0, y0, x1 - x0, y1 - y0, m.primary));
                    }
                }
            }
        }
        if found.is_empty() {
            found.push((format!("screen {screen_no}"), 0, 0, rw, rh, screen_no == 0));
        }
        for (name, x, y, w, h, primary) in found {
            out.push(MonitorInfo {
                index: out.len(),
                name,
                screen: screen_no,
                x,
                y,
                width: w as u32,
                height: h as u32,
                primary,
            });
        }
    }
    Ok(out)
}

struct Atoms {
    client_list: u32,
    net_wm_name: u32,
    utf8_string: u32,
    wm_state: u32,
}

fn atoms(conn: &RustConnection) -> Result<Atoms, ScreenError> {
    let names: [&[u8]; 4] = [
        b"_NET_CLIENT_LIST",
        b"_NET_WM_NAME",
        b"UTF8_STRING",
        b"WM_STATE",
    ];
    let cookies: Vec<_> = names
        .iter()
        .map(|n| conn.intern_atom(false, n))
        .collect::<Result<_, _>>()
        .during("InternAtom")?;
    let mut ids = Vec::with_capacity(4);
    for c in cookies {
        ids.push(c.reply().during("InternAtom")?.atom);
    }
    Ok(Atoms {
        client_list: ids[0],
        net_wm_name: ids[1],
        utf8_string: ids[2],
        wm_state: ids[3],
    })
}

fn has_property(reply: Option<&GetPropertyReply>) -> bool {
    reply.is_some_and(|r| r.type_ != u32::from(AtomEnum::NONE))
}

/// The windows among `windows` that carry `WM_STATE` (ICCCM client windows).
fn with_wm_state(
    conn: &RustConnection,
    atoms: &Atoms,
    windows: &[Window],
) -> Result<Vec<bool>, ScreenError> {
    let cookies: Vec<_> = windows
        .iter()
        .map(|&w| conn.get_property(false, w, atoms.wm_state, AtomEnum::ANY, 0, 0))
        .collect::<Result<_, _>>()
        .during("GetProperty WM_STATE")?;
    Ok(cookies
        .into_iter()
        .map(|c| has_property(c.reply().ok().as_ref()))
        .collect())
}

/// Top-level windows of the root, topmost first.
fn candidates(
    conn: &RustConnection,
    atoms: &Atoms,
    root: Window,
) -> Result<Vec<Window>, ScreenError> {
    let list = conn
        .get_property(false, root, atoms.client_list, AtomEnum::WINDOW, 0, 1 << 16)
        .during("GetProperty _NET_CLIENT_LIST")?
        .reply()
        .during("GetProperty _NET_CLIENT_LIST")?;
    let managed: Vec<Window> = list.value32().map(Iterator::collect).unwrap_or_default();
    if !managed.is_empty() {
        return Ok(managed);
    }
    // No (EWMH) window manager: the root's mapped, ordinary children; under a reparenting
    // manager that is not EWMH, the client window inside each frame.
    let tree = conn
        .query_tree(root)
        .during("QueryTree")?
        .reply()
        .during("QueryTree")?;
    let attrs: Vec<_> = tree
        .children
        .iter()
        .map(|&w| conn.get_window_attributes(w))
        .collect::<Result<_, _>>()
        .during("GetWindowAttributes")?;
    let mut top = Vec::new();
    for (&w, a) in tree.children.iter().zip(attrs) {
        if let Ok(a) = a.reply()
            && a.map_state == MapState::VIEWABLE
            && a.class == WindowClass::INPUT_OUTPUT
            && !a.override_redirect
        {
            top.push(w);
        }
    }
    let clients = with_wm_state(conn, atoms, &top)?;
    let mut out = Vec::with_capacity(top.len());
    for (&w, is_client) in top.iter().zip(clients) {
        if is_client {
            out.push(w);
            continue;
        }
        let inner = conn
            .query_tree(w)
            .during("QueryTree")?
            .reply()
            .map(|t| t.children)
            .unwrap_or_default();
        let marks = with_wm_state(conn, atoms, &inner)?;
        let client = inner.iter().zip(marks).find(|(_, m)| *m).map(|(&c, _)| c);
        out.push(client.unwrap_or(w));
    }
    out.reverse();
    Ok(out)
}

fn decode_name(reply: &GetPropertyReply) -> Option<String> {
    if reply.type_ == u32::from(AtomEnum::NONE) || reply.value.is_empty() {
        return None;
    }
    Some(if reply.type_ == u32::from(AtomEnum::STRING) {
        // ICCCM STRING is Latin-1.
        reply.value.iter().map(|&b| char::from(b)).collect()
    } else {
        String::from_utf8_lossy(&reply.value).into_owned()
    })
}

/// The top-level windows of `root` with names and sizes; windows that vanish meanwhile are
/// left out.
pub(crate) fn top_level(
    conn: &RustConnection,
    root: Window,
) -> Result<Vec<WindowInfo>, ScreenError> {
    let atoms = atoms(conn)?;
    let windows = candidates(conn, &atoms, root)?;
    let mut cookies = Vec::with_capacity(windows.len());
    for &w in &windows {
        cookies.push((
            conn.get_property(false, w, atoms.net_wm_name, atoms.utf8_string, 0, 1024)
                .during("GetProperty _NET_WM_NAME")?,
            conn.get_property(false, w, AtomEnum::WM_NAME, AtomEnum::ANY, 0, 1024)
                .during("GetProperty WM_NAME")?,
            conn.get_geometry(w).during("GetGeometry")?,
            conn.translate_coordinates(w, root, 0, 0)
                .during("TranslateCoordinates")?,
        ));
    }
    let mut out = Vec::with_capacity(windows.len());
    for (&id, (net_name, wm_name, geometry, position)) in windows.iter().zip(cookies) {
        let net_name = net_name.reply().ok();
        let wm_name = wm_name.reply().ok();
        let (Ok(geometry), Ok(position)) = (geometry.reply(), position.reply()) else {
            continue;
        };
        let name = net_name
            .as_ref()
            .and_then(decode_name)
            .or_else(|| wm_name.as_ref().and_then(decode_name))
            .unwrap_or_default();
        out.push(WindowInfo {
            id,
            name,
            x: i32::from(position.dst_x),
            y: i32::from(position.dst_y),
            width: u32::from(geometry.width),
            height: u32::from(geometry.height),
        });
    }
    Ok(out)
}

/// The one window named `name` (exact, else the only case-insensitive substring match).
pub(crate) fn find_named(conn: &RustConnection, name: &str) -> Result<Window, ScreenError> {
    let mut all = Vec::new();
    for screen in &conn.setup().roots {
        all.extend(top_level(conn, screen.root)?);
    }
    let pick = |matches: Vec<&WindowInfo>| -> Option<Result<Window, ScreenError>> {
        match matches.as_slice() {
            [] => None,
            [one] => Some(Ok(one.id)),
            many => Some(Err(ScreenError::WindowAmbiguous {
                name: name.to_owned(),
                matches: many.iter().map(|w| (w.id, w.name.clone())).collect(),
            })),
        }
    };
    if let Some(found) = pick(all.iter().filter(|w| w.name == name).collect()) {
        return found;
    }
    let lower = name.to_lowercase();
    let contains = all
        .iter()
        .filter(|w| !lower.is_empty() && w.name.to_lowercase().contains(&lower))
        .collect();
    pick(contains).unwrap_or_else(|| {
        Err(ScreenError::WindowNotFound {
            what: format!("named {name:?}"),
        })
    })
}

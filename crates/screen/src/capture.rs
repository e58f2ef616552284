//! The capturer: one X connection, one target, grabs on demand.
//!
//! A grab sends its queries pipelined (window geometry, pointer position: one round trip),
//! which also brings in every XDamage event the server generated before it. When nothing was
//! damaged and neither the geometry nor the cursor moved, the grab ends there
//! ([`Grab::Unchanged`]). Otherwise the damage is reset *before* the image is read (a change
//! racing with the read shows up as damage at the next grab), the pixels are read through
//! the MIT-SHM segment (or with plain `GetImage`), the cursor is drawn in, and the BGRX
//! pixels are converted to I420 and scaled down.

use x11rb::connection::{Connection, RequestConnection as _};
use x11rb::protocol::Event;
use x11rb::protocol::damage::{self, ConnectionExt as _};
use x11rb::protocol::shm::ConnectionExt as _;
use x11rb::protocol::xfixes::{self, ConnectionExt as _};
use x11rb::protocol::xproto::{
    ChangeWindowAttributesAux, ConnectionExt as _, EventMask, ImageFormat, ImageOrder, MapState,
    VisualClass, Window,
};
use x11rb::rust_connection::RustConnection;

use crate::cursor::{CursorImage, overlaps};
use crate::display::{self, Conn};
use crate::error::{During, X11Failure, is_gone, is_match, x11_error};
use crate::shm::Segment;
use crate::{CaptureOptions, Frame, Grab, ScreenError, Target, scale, windows};
use p2pcall_media_io::convert;

/// A rectangle `(x, y, width, height)` on the root window.
type Rect = (i32, i32, i32, i32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A fixed part of the root window (a monitor).
    Monitor(Rect),
    /// A window, wherever it is.
    Window(Window),
}

/// What a frame showed; a grab whose view differs from the last one's is a new frame even
/// without damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct View {
    /// The whole captured area on the root (a window may reach beyond the screen).
    full: Rect,
    /// The part of it on the screen.
    visible: Rect,
    viewable: bool,
    /// Pointer position and cursor serial, when a cursor is drawn over the area.
    cursor: Option<(i32, i32, u32)>,
}

#[derive(Debug)]
struct CursorTrack {
    image: CursorImage,
    /// XFixes said the cursor image changed (or none was fetched yet).
    stale: bool,
}

/// Captures one monitor or window of an X display. See the crate documentation.
#[derive(Debug)]
pub struct Capturer {
    conn: Conn,
    root: Window,
    root_size: (i32, i32),
    source: Source,
    opts: CaptureOptions,
    /// Bytes per row for a given width.
    pad_bits: usize,
    shm: Option<Segment>,
    damage: Option<damage::Damage>,
    /// Damage arrived in the captured area since the last frame (starts true).
    damaged: bool,
    /// Damage arrived anywhere: the damage object is to be reset.
    reset: bool,
    cursor: Option<CursorTrack>,
    /// Without XDamage: the pixels of the last frame, to compare with.
    previous: Vec<u8>,
    last: Option<View>,
    size: (usize, usize),
    gone: bool,
}

fn window_id(source: Source) -> Option<Window> {
    match source {
        Source::Window(id) => Some(id),
        Source::Monitor(_) => None,
    }
}

fn intersect(a: Rect, b: Rect) -> Rect {
    let (x0, y0) = (a.0.max(b.0), a.1.max(b.1));
    let (x1, y1) = ((a.0 + a.2).min(b.0 + b.2), (a.1 + a.3).min(b.1 + b.3));
    (x0, y0, (x1 - x0).max(0), (y1 - y0).max(0))
}

/// The visible part of an area (`pixels`, rows `stride` bytes apart) placed on a black
/// canvas of the whole area's even size.
fn on_canvas(pixels: &[u8], stride: usize, view: &View) -> Vec<u8> {
    let (ew, eh) = even_size(view.full);
    let (vw, vh) = (view.visible.2 as usize, view.visible.3 as usize);
    let mut canvas = vec![0u8; ew * 4 * eh];
    let (dx, dy) = (
        (view.visible.0 - view.full.0) as usize,
        (view.visible.1 - view.full.1) as usize,
    );
    for row in 0..vh.min(eh.saturating_sub(dy)) {
        let n = vw.min(ew.saturating_sub(dx)) * 4;
        let dst = (dy + row) * ew * 4 + dx * 4;
        canvas[dst..dst + n].copy_from_slice(&pixels[row * stride..row * stride + n]);
    }
    canvas
}

/// What `target` captures, and the root window of its screen.
fn resolve(c: &RustConnection, target: &Target) -> Result<(Source, Window), ScreenError> {
    Ok(match target {
        Target::Screen(index) => {
            let monitors = windows::monitors(c)?;
            let Some(m) = monitors.get(*index) else {
                return Err(ScreenError::ScreenOutOfRange {
                    index: *index,
                    count: monitors.len(),
                });
            };
            let rect = (m.x, m.y, m.width as i32, m.height as i32);
            (Source::Monitor(rect), c.setup().roots[m.screen].root)
        }
        Target::Window(id) => (Source::Window(*id), window_root(c, *id)?),
        Target::WindowNamed(name) => {
            let id = windows::find_named(c, name)?;
            (Source::Window(id), window_root(c, id)?)
        }
    })
}

/// Asks for the window's structure events: its DestroyNotify tells that it is gone.
fn watch_window(c: &RustConnection, id: Window) -> Result<(), ScreenError> {
    let aux = ChangeWindowAttributesAux::new().event_mask(EventMask::STRUCTURE_NOTIFY);
    let checked = c
        .change_window_attributes(id, &aux)
        .during("ChangeWindowAttributes")?
        .check();
    checked.map_err(|e| {
        if is_gone(&e) {
            not_found(id)
        } else {
            ScreenError::X11 {
                during: "ChangeWindowAttributes",
                reason: e.words(),
            }
        }
    })
}

/// The even frame size of an area (at least 2×2).
fn even_size(r: Rect) -> (usize, usize) {
    ((r.2.max(2) as usize) & !1, (r.3.max(2) as usize) & !1)
}

impl Capturer {
    /// Connects to `display` (`None`: `$DISPLAY`) and prepares to capture `target`.
    pub fn open(
        display: Option<&str>,
        target: &Target,
        opts: CaptureOptions,
    ) -> Result<Capturer, ScreenError> {
        let conn = display::connect(display)?;
        let c = &conn.conn;
        let (source, root) = resolve(c, target)?;
        let Some(screen) = c.setup().roots.iter().find(|s| s.root == root) else {
            return Err(ScreenError::X11 {
                during: "finding the window's screen",
                reason: format!("no screen has root 0x{root:x}"),
            });
        };
        let pad_bits = check_format(c, screen)?;
        let root_size = (
            i32::from(screen.width_in_pixels),
            i32::from(screen.height_in_pixels),
        );
        if let Source::Window(id) = source {
            watch_window(c, id)?;
        }
        let drawable = window_id(source).unwrap_or(root);
        let damage = if opts.damage {
            start_damage(c, drawable)?
        } else {
            None
        };
        let cursor = if opts.cursor {
            start_cursor(c, root)?
        } else {
            None
        };
        let mut cap = Capturer {
            root,
            root_size,
            source,
            opts,
            pad_bits,
            shm: None,
            damage,
            damaged: true,
            reset: false,
            cursor,
            previous: Vec::new(),
            last: None,
            size: (2, 2),
            gone: false,
            conn,
        };
        if opts.shm {
            cap.shm = cap.shared_segment();
        }
        let full = match source {
            Source::Monitor(r) => r,
            Source::Window(id) => {
                let g = cap
                    .conn
                    .conn
                    .get_geometry(id)
                    .during("GetGeometry")?
                    .reply()
                    .map_err(|e| {
                        if is_gone(&e) {
                            not_found(id)
                        } else {
                            x11(e, "GetGeometry")
                        }
                    })?;
                (0, 0, i32::from(g.width), i32::from(g.height))
            }
        };
        cap.size = cap.output_size(full);
        cap.conn.conn.flush().during("flush")?;
        Ok(cap)
    }

    /// Whether the area may have changed since the last grab (always, without XDamage);
    /// re-arms the damage report.
    fn changed(&mut self, view: View) -> Result<bool, ScreenError> {
        let changed = self.last != Some(view) || self.damaged || self.damage.is_none();
        if let Some(damage) = self.damage
            && self.reset
        {
            self.conn
                .conn
                .damage_subtract(damage, x11rb::NONE, x11rb::NONE)
                .during("DamageSubtract")?;
            self.reset = false;
        }
        if changed {
            self.damaged = false;
        }
        Ok(changed)
    }

    /// The area is unmapped (minimised) or off screen: the last frame stays shown (a black
    /// one if there was none).
    fn hidden(&mut self, view: View) -> Grab {
        let first = self.last.is_none();
        self.last = Some(view);
        if !first {
            return Grab::Unchanged;
        }
        let (w, h) = even_size(view.full);
        let f = black(w, h);
        self.size = self.output_size(view.full);
        Grab::Frame(scale::down(&f, self.size.0, self.size.1))
    }

    /// A shared-memory segment for the largest area ever read (the monitor, or for a window
    /// the whole screen); `None` on a remote display or without MIT-SHM.
    fn shared_segment(&self) -> Option<Segment> {
        let (w, h) = match self.source {
            Source::Monitor(r) => (r.2, r.3),
            Source::Window(_) => self.root_size,
        };
        let size = self.stride(w as usize) * h as usize;
        if !self.conn.is_local() {
            tracing::debug!("screen capture without MIT-SHM: remote display");
            return None;
        }
        Segment::create(&self.conn.conn, size)
            .inspect_err(|why| tracing::debug!("screen capture without MIT-SHM: {why}"))
            .ok()
    }

    /// The size of the frames [`Capturer::grab`] returns now (it follows a window's size).
    pub fn size(&self) -> (usize, usize) {
        self.size
    }

    /// Scales frames down to fit `max_width × max_height` from the next grab on (0: no
    /// limit; aspect ratio kept, even sizes). A new size makes the next grab a frame even if
    /// nothing changed on the screen.
    pub fn set_max_size(&mut self, max_width: u32, max_height: u32) {
        if (self.opts.max_width, self.opts.max_height) == (max_width, max_height) {
            return;
        }
        self.opts.max_width = max_width;
        self.opts.max_height = max_height;
        if let Some(view) = self.last {
            let size = self.output_size(view.full);
            if size != self.size {
                self.size = size;
                self.damaged = true;
                // Without XDamage the pixels are compared: make the compare fail too.
                self.previous.clear();
            }
        }
    }

    /// Whether pixels come through MIT-SHM (else plain `GetImage`).
    pub fn uses_shm(&self) -> bool {
        self.shm.is_some()
    }

    /// Whether XDamage tells about changes (else the pixels are compared).
    pub fn uses_damage(&self) -> bool {
        self.damage.is_some()
    }

    /// Whether the cursor is drawn (asked for, and the server has XFixes).
    pub fn draws_cursor(&self) -> bool {
        self.cursor.is_some()
    }

    fn stride(&self, width: usize) -> usize {
        (width * 32).div_ceil(self.pad_bits) * self.pad_bits / 8
    }

    fn output_size(&self, full: Rect) -> (usize, usize) {
        let (w, h) = even_size(full);
        scale::fit(w, h, self.opts.max_width, self.opts.max_height)
    }

    /// The next frame, or [`Grab::Unchanged`] when nothing visible changed since the last one.
    /// A closed window is [`ScreenError::WindowGone`] (from then on).
    pub fn grab(&mut self) -> Result<Grab, ScreenError> {
        let window = window_id(self.source);
        if self.gone {
            return Err(ScreenError::WindowGone {
                id: window.unwrap_or(0),
            });
        }
        let view = self.query()?;
        self.drain_events()?;
        if self.gone {
            return Err(ScreenError::WindowGone {
                id: window.unwrap_or(0),
            });
        }
        if !self.changed(view)? {
            self.conn.conn.flush().during("flush")?;
            return Ok(Grab::Unchanged);
        }
        if !view.viewable || view.visible.2 < 1 || view.visible.3 < 1 {
            return Ok(self.hidden(view));
        }
        let c = &self.conn.conn;
        // Where to read: a monitor from the root, a window from itself.
        let (drawable, ox, oy) = match self.source {
            Source::Monitor(_) => (self.root, view.visible.0, view.visible.1),
            Source::Window(id) => (
                id,
                view.visible.0 - view.full.0,
                view.visible.1 - view.full.1,
            ),
        };
        let (vw, vh) = (view.visible.2 as usize, view.visible.3 as usize);
        let stride = self.stride(vw);
        let mut owned;
        let pixels: &mut [u8] = match &mut self.shm {
            Some(seg) if stride * vh <= seg.len() => {
                let reply = c
                    .shm_get_image(
                        drawable,
                        ox as i16,
                        oy as i16,
                        vw as u16,
                        vh as u16,
                        !0,
                        ImageFormat::Z_PIXMAP.into(),
                        seg.seg,
                        0,
                    )
                    .during("ShmGetImage")?
                    .reply();
                match reply {
                    Ok(r) => check_depth(c, r.depth)?,
                    Err(e) => return self.read_failed(e, view, "ShmGetImage"),
                }
                seg.bytes(stride * vh)
            }
            _ => {
                let reply = c
                    .get_image(
                        ImageFormat::Z_PIXMAP,
                        drawable,
                        ox as i16,
                        oy as i16,
                        vw as u16,
                        vh as u16,
                        !0,
                    )
                    .during("GetImage")?
                    .reply();
                match reply {
                    Ok(r) => {
                        check_depth(c, r.depth)?;
                        owned = r.data;
                    }
                    Err(e) => return self.read_failed(e, view, "GetImage"),
                }
                if owned.len() < stride * vh {
                    return Err(ScreenError::X11 {
                        during: "GetImage",
                        reason: format!("{} bytes for {vw}x{vh}", owned.len()),
                    });
                }
                &mut owned[..]
            }
        };
        if self.damage.is_none() {
            // No XDamage: compare with the last frame's pixels (before the cursor is drawn).
            let same = self.last == Some(view) && self.previous.as_slice() == &pixels[..];
            if same {
                return Ok(Grab::Unchanged);
            }
            self.previous.clear();
            self.previous.extend_from_slice(pixels);
        }
        // The area as a frame: the visible part, or a black canvas with it inside.
        let (ew, eh) = even_size(view.full);
        let mut canvas;
        let (buf, buf_stride): (&mut [u8], usize) = if view.visible == view.full {
            (pixels, stride)
        } else {
            canvas = on_canvas(pixels, stride, &view);
            (&mut canvas[..], ew * 4)
        };
        if let (Some(track), Some((px, py, _))) = (&self.cursor, view.cursor) {
            track
                .image
                .draw(buf, buf_stride, ew, eh, px - view.full.0, py - view.full.1);
        }
        let frame = convert::from_bgrx(buf, ew, eh, buf_stride)?;
        self.size = self.output_size(view.full);
        self.last = Some(view);
        Ok(Grab::Frame(scale::down(&frame, self.size.0, self.size.1)))
    }

    /// Where the source is now and where the pointer is: one pipelined round trip, which also
    /// brings in the damage events generated before it.
    fn query(&mut self) -> Result<View, ScreenError> {
        let c = &self.conn.conn;
        let root_rect = (0, 0, self.root_size.0, self.root_size.1);
        let pointer = match self.cursor {
            Some(_) => Some(c.query_pointer(self.root).during("QueryPointer")?),
            None => None,
        };
        let (full, viewable) = match self.source {
            Source::Monitor(r) => {
                if pointer.is_none() {
                    // Only to sync: events generated before it are in once it is answered.
                    c.get_input_focus()
                        .during("GetInputFocus")?
                        .reply()
                        .during("GetInputFocus")?;
                }
                (r, true)
            }
            Source::Window(id) => {
                let geometry = c.get_geometry(id).during("GetGeometry")?;
                let position = c
                    .translate_coordinates(id, self.root, 0, 0)
                    .during("TranslateCoordinates")?;
                let attributes = c.get_window_attributes(id).during("GetWindowAttributes")?;
                let gone = |e: x11rb::errors::ReplyError, during| {
                    if is_gone(&e) {
                        ScreenError::WindowGone { id }
                    } else {
                        x11(e, during)
                    }
                };
                let g = geometry.reply().map_err(|e| gone(e, "GetGeometry"))?;
                let p = position
                    .reply()
                    .map_err(|e| gone(e, "TranslateCoordinates"))?;
                let a = attributes
                    .reply()
                    .map_err(|e| gone(e, "GetWindowAttributes"))?;
                (
                    (
                        i32::from(p.dst_x),
                        i32::from(p.dst_y),
                        i32::from(g.width),
                        i32::from(g.height),
                    ),
                    a.map_state == MapState::VIEWABLE,
                )
            }
        };
        let pointer = match pointer {
            Some(p) => Some(p.reply().during("QueryPointer")?),
            None => None,
        };
        let mut cursor = None;
        if let (Some(p), Some(track)) = (pointer, self.cursor.as_mut())
            && p.same_screen
        {
            if track.stale {
                let img = c
                    .xfixes_get_cursor_image()
                    .during("XFixesGetCursorImage")?
                    .reply()
                    .during("XFixesGetCursorImage")?;
                track.image = CursorImage {
                    width: usize::from(img.width),
                    height: usize::from(img.height),
                    xhot: i32::from(img.xhot),
                    yhot: i32::from(img.yhot),
                    serial: img.cursor_serial,
                    argb: img.cursor_image,
                };
                track.stale = false;
            }
            let (px, py) = (i32::from(p.root_x), i32::from(p.root_y));
            if overlaps(track.image.rect_at(px, py), full) {
                cursor = Some((px, py, track.image.serial));
            }
        }
        Ok(View {
            full,
            visible: intersect(full, root_rect),
            viewable,
            cursor,
        })
    }

    fn drain_events(&mut self) -> Result<(), ScreenError> {
        let window = window_id(self.source);
        while let Some(event) = self.conn.conn.poll_for_event().during("reading events")? {
            match event {
                Event::DamageNotify(n) if Some(n.damage) == self.damage => {
                    self.reset = true;
                    let area = (
                        i32::from(n.area.x),
                        i32::from(n.area.y),
                        i32::from(n.area.width),
                        i32::from(n.area.height),
                    );
                    match self.source {
                        Source::Monitor(r) => self.damaged |= overlaps(area, r),
                        Source::Window(_) => self.damaged = true,
                    }
                }
                Event::XfixesCursorNotify(_) => {
                    if let Some(track) = &mut self.cursor {
                        track.stale = true;
                    }
                }
                Event::DestroyNotify(d) if Some(d.window) == window => self.gone = true,
                Event::Error(e) => {
                    if window.is_some_and(|w| w == e.bad_value)
                        && matches!(
                            e.error_kind,
                            x11rb::protocol::ErrorKind::Window
                                | x11rb::protocol::ErrorKind::Drawable
                        )
                    {
                        self.gone = true;
                    } else {
                        tracing::debug!("screen capture: {}", x11_error(&e));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A failed image read: the window vanished, was unmapped meanwhile, or a real error.
    fn read_failed(
        &mut self,
        e: x11rb::errors::ReplyError,
        view: View,
        during: &'static str,
    ) -> Result<Grab, ScreenError> {
        if let Source::Window(id) = self.source {
            if is_gone(&e) {
                self.gone = true;
                return Err(ScreenError::WindowGone { id });
            }
            if is_match(&e) {
                // Unmapped between the query and the read: try again at the next grab.
                self.damaged = true;
                self.last = Some(View {
                    viewable: false,
                    ..view
                });
                return Ok(Grab::Unchanged);
            }
        }
        Err(x11(e, during))
    }
}

impl Drop for Capturer {
    fn drop(&mut self) {
        let c = &self.conn.conn;
        if let Some(seg) = &self.shm {
            seg.detach(c);
        }
        if let Some(damage) = self.damage {
            let _ = c.damage_destroy(damage);
        }
        let _ = c.flush();
    }
}

fn x11(e: impl X11Failure, during: &'static str) -> ScreenError {
    ScreenError::X11 {
        during,
        reason: e.words(),
    }
}

fn not_found(id: Window) -> ScreenError {
    ScreenError::WindowNotFound {
        what: format!("0x{id:x}"),
    }
}

fn black(width: usize, height: usize) -> Frame {
    let mut f = Frame::new(width, height);
    f.y.iter_mut().for_each(|p| *p = 16);
    f
}

/// The root window of the screen `id` is on; `WindowNotFound` when there is no such window.
fn window_root(c: &RustConnection, id: Window) -> Result<Window, ScreenError> {
    let reply = c.get_geometry(id).during("GetGeometry")?.reply();
    match reply {
        Ok(g) => Ok(g.root),
        Err(e) if is_gone(&e) => Err(not_found(id)),
        Err(e) => Err(x11(e, "GetGeometry")),
    }
}

/// Checks that the screen's pixels are 32-bit little-endian TrueColor (BGRX in memory);
/// returns the scanline pad in bits.
fn check_format(
    c: &RustConnection,
    screen: &x11rb::protocol::xproto::Screen,
) -> Result<usize, ScreenError> {
    let setup = c.setup();
    let order = setup.image_byte_order;
    let bpp = setup
        .pixmap_formats
        .iter()
        .find(|f| f.depth == screen.root_depth)
        .map(|f| (f.bits_per_pixel, usize::from(f.scanline_pad)));
    let visual = screen
        .allowed_depths
        .iter()
        .flat_map(|d| &d.visuals)
        .find(|v| v.visual_id == screen.root_visual);
    let true_colour = visual.is_some_and(|v| {
        v.class == VisualClass::TRUE_COLOR
            && (v.red_mask, v.green_mask, v.blue_mask) == (0xff_0000, 0xff00, 0xff)
    });
    match bpp {
        Some((32, pad)) if order == ImageOrder::LSB_FIRST && true_colour && pad >= 8 => Ok(pad),
        other => Err(ScreenError::UnsupportedFormat {
            depth: screen.root_depth,
            bits_per_pixel: other.map_or(0, |(b, _)| b),
            byte_order: if order == ImageOrder::LSB_FIRST {
                "little-endian"
            } else {
                "big-endian"
            },
        }),
    }
}

/// An image's depth must have 32 bits per pixel too (a window may have its own visual).
fn check_depth(c: &RustConnection, depth: u8) -> Result<(), ScreenError> {
    let bpp = c
        .setup()
        .pixmap_formats
        .iter()
        .find(|f| f.depth == depth)
        .map_or(0, |f| f.bits_per_pixel);
    if bpp == 32 && (depth == 24 || depth == 32) {
        Ok(())
    } else {
        Err(ScreenError::UnsupportedFormat {
            depth,
            bits_per_pixel: bpp,
            byte_order: "little-endian",
        })
    }
}

/// A damage object on `drawable`, or `None` when the server has no XDamage.
fn start_damage(
    c: &RustConnection,
    drawable: Window,
) -> Result<Option<damage::Damage>, ScreenError> {
    if c.extension_information(damage::X11_EXTENSION_NAME)
        .during("QueryExtension DAMAGE")?
        .is_none()
    {
        tracing::debug!("screen capture without XDamage: comparing frames");
        return Ok(None);
    }
    // The protocol requires the version exchange before any other request.
    c.damage_query_version(1, 1)
        .during("DamageQueryVersion")?
        .reply()
        .during("DamageQueryVersion")?;
    let id = c.generate_id().during("allocating an id")?;
    c.damage_create(id, drawable, damage::ReportLevel::DELTA_RECTANGLES)
        .during("DamageCreate")?
        .check()
        .during("DamageCreate")?;
    Ok(Some(id))
}

/// Cursor tracking (XFixes), or `None` when the server has no XFixes.
fn start_cursor(c: &RustConnection, root: Window) -> Result<Option<CursorTrack>, ScreenError> {
    if c.extension_information(xfixes::X11_EXTENSION_NAME)
        .during("QueryExtension XFIXES")?
        .is_none()
    {
        tracing::debug!("screen capture without the cursor: no XFixes");
        return Ok(None);
    }
    c.xfixes_query_version(5, 0)
        .during("XFixesQueryVersion")?
        .reply()
        .during("XFixesQueryVersion")?;
    c.xfixes_select_cursor_input(root, xfixes::CursorNotifyMask::DISPLAY_CURSOR)
        .during("XFixesSelectCursorInput")?;
    Ok(Some(CursorTrack {
        image: CursorImage::default(),
        stale: true,
    }))
}

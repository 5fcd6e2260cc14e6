//! Screen capture: the root window of an X display, through MIT-SHM (a
//! SysV shared memory segment the X server writes into) or, where SHM is
//! unavailable, plain `GetImage`.
//!
//! Changes are learnt from the DAMAGE extension (one `DamageNotify` per
//! change since the last capture, report level non-empty), so an idle
//! screen costs nothing. Without DAMAGE the capturer polls every
//! [`POLL_INTERVAL`] and compares the picture with the previous one.
//! Resizes (RandR, `xrandr -s`) arrive as `ConfigureNotify` on the root.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use thiserror::Error;
use x11rb::connection::{Connection, RequestConnection};
use x11rb::protocol::damage::{self, ConnectionExt as _};
use x11rb::protocol::shm::{self, ConnectionExt as _};
use x11rb::protocol::xfixes::ConnectionExt as _;
use x11rb::protocol::xproto::{self, ConnectionExt as _};
use x11rb::protocol::Event;
use x11rb::rust_connection::RustConnection;

use crate::convert::PixelFormat;

/// How often the screen is compared when the server has no DAMAGE.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Something went wrong talking to the X server.
#[derive(Debug, Error)]
pub enum X11Error {
    /// No connection to the display.
    #[error("connecting to X display {display}: {message}")]
    Connect {
        /// The display name.
        display: String,
        /// Why.
        message: String,
    },
    /// A request failed.
    #[error("X display {display}: {what}: {message}")]
    Request {
        /// The display name.
        display: String,
        /// What was being done.
        what: String,
        /// Why it failed.
        message: String,
    },
    /// The screen's pixels are not 32-bit BGRX or RGBX.
    #[error("X display {display}: unsupported pixel format: {message}")]
    Format {
        /// The display name.
        display: String,
        /// What was found.
        message: String,
    },
}

/// Connects to `display` (e.g. `:1`) and returns the connection and the
/// default screen's number.
pub fn connect(display: &str) -> Result<(RustConnection, usize), X11Error> {
    x11rb::connect(Some(display)).map_err(|e| X11Error::Connect {
        display: display.to_owned(),
        message: e.to_string(),
    })
}

/// Builds a closure turning any error into [`X11Error::Request`].
pub(crate) fn req_err<E: std::fmt::Display>(
    display: &str,
    what: impl Into<String>,
) -> impl FnOnce(E) -> X11Error {
    let display = display.to_owned();
    let what = what.into();
    move |e| X11Error::Request {
        display,
        what,
        message: e.to_string(),
    }
}

/// A captured screen.
#[derive(Debug)]
pub struct Frame<'a> {
    /// Width in pixels.
    pub width: u16,
    /// Height in pixels.
    pub height: u16,
    /// Bytes from one row to the next.
    pub stride: usize,
    /// 32-bit pixels, `stride * height` bytes.
    pub data: &'a [u8],
    /// Byte order of a pixel.
    pub format: PixelFormat,
    /// False only when polling (no DAMAGE) found the same picture as the
    /// last capture.
    pub changed: bool,
}

struct ShmSegment {
    seg: shm::Seg,
    addr: *mut u8,
    size: usize,
}

impl ShmSegment {
    /// Creates a private segment of `size` bytes and attaches it to us and
    /// to the server. The segment is marked for removal at once, so it
    /// disappears with its last user even if we crash.
    fn new(conn: &RustConnection, display: &str, size: usize) -> Result<Self, X11Error> {
        let fail = |what: &str, message: String| X11Error::Request {
            display: display.to_owned(),
            what: what.to_owned(),
            message,
        };
        // SAFETY: plain SysV calls; the mapping is released in Drop.
        let (id, addr) = unsafe {
            let id = libc::shmget(libc::IPC_PRIVATE, size, libc::IPC_CREAT | 0o600);
            if id < 0 {
                return Err(fail("shmget", std::io::Error::last_os_error().to_string()));
            }
            let addr = libc::shmat(id, std::ptr::null(), 0);
            if addr as isize == -1 {
                let e = std::io::Error::last_os_error();
                libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
                return Err(fail("shmat", e.to_string()));
            }
            (id, addr as *mut u8)
        };
        let cleanup = || unsafe {
            libc::shmdt(addr as *const libc::c_void);
            libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
        };
        let seg = match conn.generate_id() {
            Ok(s) => s,
            Err(e) => {
                cleanup();
                return Err(fail("allocating an id", e.to_string()));
            }
        };
        let attached = conn
            .shm_attach(seg, id as u32, false)
            .map_err(|e| e.to_string())
            .and_then(|c| c.check().map_err(|e| e.to_string()));
        // Attached by both sides (or failed): nobody else needs the id.
        // SAFETY: id is our segment.
        unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
        if let Err(e) = attached {
            // SAFETY: our mapping.
            unsafe { libc::shmdt(addr as *const libc::c_void) };
            return Err(fail("MIT-SHM attach", e));
        }
        Ok(Self { seg, addr, size })
    }

    fn release(&mut self, conn: &RustConnection) {
        let _ = conn.shm_detach(self.seg);
        let _ = conn.flush();
        // SAFETY: our mapping, detached once.
        unsafe { libc::shmdt(self.addr as *const libc::c_void) };
        self.addr = std::ptr::null_mut();
    }
}

/// Captures the root window of one display.
pub struct Capturer {
    conn: RustConnection,
    display: String,
    root: xproto::Window,
    width: u16,
    height: u16,
    stride: usize,
    bytes_per_line_pad: u32,
    format: PixelFormat,
    shm: Option<ShmSegment>,
    shm_usable: bool,
    damage: Option<damage::Damage>,
    dirty: bool,
    resized: bool,
    buf: Vec<u8>,
    last: Vec<u8>,
    next_poll: Instant,
}

// The raw segment address is only used through &mut self.
unsafe impl Send for Capturer {}

impl std::fmt::Debug for Capturer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capturer")
            .field("display", &self.display)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("shm", &self.shm.is_some())
            .field("damage", &self.damage.is_some())
            .finish()
    }
}

fn stride_for(width: u16, pad_bits: u32) -> usize {
    let bits = width as u32 * 32;
    (bits.div_ceil(pad_bits) * pad_bits / 8) as usize
}

impl Capturer {
    /// Connects to `display` and sets up SHM and DAMAGE where the server
    /// has them (logging when it does not).
    pub fn open(display: &str) -> Result<Self, X11Error> {
        let (conn, screen_num) = connect(display)?;
        let setup = conn.setup();
        let screen = &setup.roots[screen_num];
        let root = screen.root;
        let depth = screen.root_depth;
        let pf = setup
            .pixmap_formats
            .iter()
            .find(|f| f.depth == depth)
            .ok_or_else(|| X11Error::Format {
                display: display.to_owned(),
                message: format!("no pixmap format for the root depth {depth}"),
            })?;
        if pf.bits_per_pixel != 32 {
            return Err(X11Error::Format {
                display: display.to_owned(),
                message: format!(
                    "depth {depth} uses {} bits per pixel; only 32 is supported",
                    pf.bits_per_pixel
                ),
            });
        }
        let visual = screen
            .allowed_depths
            .iter()
            .flat_map(|d| d.visuals.iter())
            .find(|v| v.visual_id == screen.root_visual)
            .ok_or_else(|| X11Error::Format {
                display: display.to_owned(),
                message: "the root visual is not listed".into(),
            })?;
        let lsb = setup.image_byte_order == xproto::ImageOrder::LSB_FIRST;
        let format = match (visual.red_mask, visual.blue_mask, lsb) {
            (0xff0000, 0xff, true) | (0xff, 0xff0000, false) => PixelFormat::Bgrx,
            (0xff, 0xff0000, true) | (0xff0000, 0xff, false) => PixelFormat::Rgbx,
            (r, b, _) => {
                return Err(X11Error::Format {
                    display: display.to_owned(),
                    message: format!("red mask {r:#x}, blue mask {b:#x}"),
                })
            }
        };
        let (width, height) = (screen.width_in_pixels, screen.height_in_pixels);
        let pad = pf.scanline_pad as u32;
        conn.change_window_attributes(
            root,
            &xproto::ChangeWindowAttributesAux::new()
                .event_mask(xproto::EventMask::STRUCTURE_NOTIFY),
        )
        .map_err(req_err(display, "selecting root window events"))?;

        let mut cap = Self {
            conn,
            display: display.to_owned(),
            root,
            width,
            height,
            stride: stride_for(width, pad),
            bytes_per_line_pad: pad,
            format,
            shm: None,
            shm_usable: false,
            damage: None,
            dirty: true,
            resized: false,
            buf: Vec::new(),
            last: Vec::new(),
            next_poll: Instant::now(),
        };
        match cap.setup_shm() {
            Ok(()) => cap.shm_usable = true,
            Err(why) => tracing::warn!(
                "X display {}: MIT-SHM unavailable ({why}); capturing with plain GetImage (slower)",
                cap.display
            ),
        }
        match cap.setup_damage() {
            Ok(d) => cap.damage = Some(d),
            Err(why) => tracing::warn!(
                "X display {}: DAMAGE unavailable ({why}); polling the screen every {} ms",
                cap.display,
                POLL_INTERVAL.as_millis()
            ),
        }
        cap.conn
            .flush()
            .map_err(req_err(display, "flushing requests"))?;
        Ok(cap)
    }

    fn setup_shm(&mut self) -> Result<(), String> {
        if self
            .conn
            .extension_information(shm::X11_EXTENSION_NAME)
            .map_err(|e| e.to_string())?
            .is_none()
        {
            return Err("the server has no MIT-SHM extension".into());
        }
        self.conn
            .shm_query_version()
            .map_err(|e| e.to_string())?
            .reply()
            .map_err(|e| e.to_string())?;
        let size = self.stride * self.height as usize;
        let seg = ShmSegment::new(&self.conn, &self.display, size).map_err(|e| e.to_string())?;
        self.shm = Some(seg);
        Ok(())
    }

    fn setup_damage(&mut self) -> Result<damage::Damage, String> {
        if self
            .conn
            .extension_information(damage::X11_EXTENSION_NAME)
            .map_err(|e| e.to_string())?
            .is_none()
        {
            return Err("the server has no DAMAGE extension".into());
        }
        // DAMAGE needs XFixes (its regions) initialised first.
        self.conn
            .xfixes_query_version(5, 0)
            .map_err(|e| e.to_string())?
            .reply()
            .map_err(|e| e.to_string())?;
        self.conn
            .damage_query_version(1, 1)
            .map_err(|e| e.to_string())?
            .reply()
            .map_err(|e| e.to_string())?;
        let id = self.conn.generate_id().map_err(|e| e.to_string())?;
        self.conn
            .damage_create(id, self.root, damage::ReportLevel::NON_EMPTY)
            .map_err(|e| e.to_string())?
            .check()
            .map_err(|e| e.to_string())?;
        Ok(id)
    }

    /// The display name.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// The screen size now.
    pub fn size(&self) -> (u16, u16) {
        (self.width, self.height)
    }

    /// Whether frames come through MIT-SHM.
    pub fn uses_shm(&self) -> bool {
        self.shm.is_some()
    }

    /// Whether changes come from DAMAGE (else: polling).
    pub fn uses_damage(&self) -> bool {
        self.damage.is_some()
    }

    /// Whether the screen changed since the last capture.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Whether the screen was resized since the last call (clears it).
    pub fn take_resized(&mut self) -> bool {
        std::mem::take(&mut self.resized)
    }

    /// Handles the server's events, waiting up to `timeout` for the first
    /// one. Returns whether the screen changed (or, without DAMAGE, whether
    /// it is time to look again).
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, X11Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut any = false;
            while let Some(ev) = self
                .conn
                .poll_for_event()
                .map_err(req_err(&self.display, "reading events"))?
            {
                any = true;
                self.handle_event(ev)?;
            }
            if self.damage.is_none() {
                let now = Instant::now();
                if now >= self.next_poll {
                    self.next_poll = now + POLL_INTERVAL;
                    self.dirty = true;
                }
            }
            if self.dirty || self.resized {
                return Ok(true);
            }
            if any {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let mut wait = deadline - now;
            if self.damage.is_none() {
                wait = wait.min(self.next_poll.saturating_duration_since(now));
            }
            let mut pfd = libc::pollfd {
                fd: self.conn.stream().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = wait.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(req_err(&self.display, "waiting for events")(e));
                }
            }
        }
    }

    fn handle_event(&mut self, ev: Event) -> Result<(), X11Error> {
        match ev {
            Event::DamageNotify(_) => self.dirty = true,
            Event::ConfigureNotify(c)
                if c.window == self.root && (c.width, c.height) != (self.width, self.height) =>
            {
                self.resize(c.width, c.height)?;
            }
            Event::Error(e) => tracing::debug!(display = %self.display, "X error event: {e:?}"),
            _ => {}
        }
        Ok(())
    }

    fn resize(&mut self, width: u16, height: u16) -> Result<(), X11Error> {
        tracing::info!(display = %self.display, "screen resized to {width}x{height}");
        self.width = width;
        self.height = height;
        self.stride = stride_for(width, self.bytes_per_line_pad);
        self.resized = true;
        self.dirty = true;
        self.last.clear();
        if let Some(mut old) = self.shm.take() {
            old.release(&self.conn);
        }
        if self.shm_usable {
            let size = self.stride * height as usize;
            match ShmSegment::new(&self.conn, &self.display, size) {
                Ok(s) => self.shm = Some(s),
                Err(e) => {
                    tracing::warn!("MIT-SHM segment for the new size failed ({e}); using GetImage");
                    self.shm_usable = false;
                }
            }
        }
        Ok(())
    }

    /// Re-reads the root window's size (after a failed capture: a resize
    /// may be on its way).
    pub fn refresh_geometry(&mut self) -> Result<(), X11Error> {
        let g = self
            .conn
            .get_geometry(self.root)
            .map_err(req_err(&self.display, "GetGeometry"))?
            .reply()
            .map_err(req_err(&self.display, "GetGeometry"))?;
        if (g.width, g.height) != (self.width, self.height) {
            self.resize(g.width, g.height)?;
        }
        Ok(())
    }

    /// Captures the whole screen. Clears the damage first, so a change
    /// while capturing is reported again.
    pub fn capture(&mut self) -> Result<Frame<'_>, X11Error> {
        if let Some(d) = self.damage {
            self.conn
                .damage_subtract(d, x11rb::NONE, x11rb::NONE)
                .map_err(req_err(&self.display, "DamageSubtract"))?;
        }
        self.dirty = false;
        let (w, h) = (self.width, self.height);
        let len = self.stride * h as usize;
        let data: &[u8] = if let Some(seg) = &self.shm {
            let reply = self
                .conn
                .shm_get_image(
                    self.root,
                    0,
                    0,
                    w,
                    h,
                    !0,
                    xproto::ImageFormat::Z_PIXMAP.into(),
                    seg.seg,
                    0,
                )
                .map_err(req_err(&self.display, "ShmGetImage"))?
                .reply()
                .map_err(req_err(&self.display, "ShmGetImage"))?;
            if (reply.size as usize) < len || seg.size < len {
                return Err(X11Error::Request {
                    display: self.display.clone(),
                    what: "ShmGetImage".into(),
                    message: format!("got {} bytes, expected {len}", reply.size),
                });
            }
            // SAFETY: the segment holds seg.size >= len bytes, written by
            // the server before its reply.
            unsafe { std::slice::from_raw_parts(seg.addr, len) }
        } else {
            let reply = self
                .conn
                .get_image(xproto::ImageFormat::Z_PIXMAP, self.root, 0, 0, w, h, !0)
                .map_err(req_err(&self.display, "GetImage"))?
                .reply()
                .map_err(req_err(&self.display, "GetImage"))?;
            if reply.data.len() < len {
                return Err(X11Error::Request {
                    display: self.display.clone(),
                    what: "GetImage".into(),
                    message: format!("got {} bytes, expected {len}", reply.data.len()),
                });
            }
            self.buf = reply.data;
            &self.buf[..len]
        };
        let changed = if self.damage.is_some() {
            true
        } else {
            let same = self.last.len() == len && self.last[..] == data[..];
            if !same {
                self.last.clear();
                self.last.extend_from_slice(data);
            }
            !same
        };
        Ok(Frame {
            width: w,
            height: h,
            stride: self.stride,
            data,
            format: self.format,
            changed,
        })
    }
}

impl Drop for Capturer {
    fn drop(&mut self) {
        if let Some(mut seg) = self.shm.take() {
            seg.release(&self.conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_follow_the_scanline_pad() {
        assert_eq!(stride_for(1280, 32), 5120);
        assert_eq!(stride_for(3, 32), 12);
        assert_eq!(stride_for(3, 64), 16);
    }

    #[test]
    fn connect_errors_name_the_display() {
        let e = connect(":4321").unwrap_err().to_string();
        assert!(e.starts_with("connecting to X display :4321: "), "{e}");
    }
}

//! Helpers shared by the integration tests: a full-screen test window on
//! its own X connection whose events (keys as text, buttons) are collected
//! by a thread, decoding keys with the keymap current at the time (the
//! keymap is re-read on every MappingNotify, like a real client).

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use x11rb::connection::Connection;
use x11rb::protocol::xproto::{self, ConnectionExt as _};
use x11rb::protocol::Event;
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

/// What the window saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Text typed (KeyPress decoded with Shift).
    pub text: String,
    /// Keycodes pressed.
    pub keycodes: Vec<u8>,
    /// Buttons pressed.
    pub buttons: Vec<u8>,
    /// Keyboard MappingNotify events.
    pub mapping_notifies: usize,
}

pub struct TestWindow {
    pub conn: Arc<RustConnection>,
    pub window: xproto::Window,
    pub root: xproto::Window,
    pub seen: Arc<Mutex<Seen>>,
}

fn keymap(conn: &RustConnection) -> (u8, usize, Vec<u32>) {
    let s = conn.setup();
    let r = conn
        .get_keyboard_mapping(s.min_keycode, s.max_keycode - s.min_keycode + 1)
        .unwrap()
        .reply()
        .unwrap();
    (s.min_keycode, r.keysyms_per_keycode as usize, r.keysyms)
}

fn keysym_char(sym: u32) -> Option<char> {
    match sym {
        0xff0d => Some('\n'),
        0xff09 => Some('\t'),
        0x20..=0x7e | 0xa0..=0xff => char::from_u32(sym),
        0x0100_0000..=0x0110_ffff => char::from_u32(sym - 0x0100_0000),
        _ => None,
    }
}

impl TestWindow {
    /// Maps a full-screen override-redirect window, focuses it and starts
    /// collecting its key and button events.
    pub fn open(display: &str) -> Self {
        let (conn, n) = x11rb::connect(Some(display)).unwrap();
        let screen = &conn.setup().roots[n];
        let (root, w, h) = (screen.root, screen.width_in_pixels, screen.height_in_pixels);
        let window = conn.generate_id().unwrap();
        conn.create_window(
            x11rb::COPY_DEPTH_FROM_PARENT,
            window,
            root,
            0,
            0,
            w,
            h,
            0,
            xproto::WindowClass::INPUT_OUTPUT,
            x11rb::COPY_FROM_PARENT,
            &xproto::CreateWindowAux::new()
                .override_redirect(1)
                .background_pixel(screen.black_pixel)
                .event_mask(
                    xproto::EventMask::KEY_PRESS
                        | xproto::EventMask::BUTTON_PRESS
                        | xproto::EventMask::EXPOSURE,
                ),
        )
        .unwrap();
        conn.map_window(window).unwrap();
        conn.sync().unwrap();
        conn.set_input_focus(
            xproto::InputFocus::POINTER_ROOT,
            window,
            x11rb::CURRENT_TIME,
        )
        .unwrap();
        conn.sync().unwrap();
        let conn = Arc::new(conn);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (c2, s2) = (conn.clone(), seen.clone());
        std::thread::spawn(move || {
            let mut km = keymap(&c2);
            while let Ok(ev) = c2.wait_for_event() {
                match ev {
                    Event::MappingNotify(m) if m.request == xproto::Mapping::KEYBOARD => {
                        km = keymap(&c2);
                        s2.lock().unwrap().mapping_notifies += 1;
                    }
                    Event::KeyPress(k) => {
                        let shift = u16::from(k.state) & u16::from(xproto::KeyButMask::SHIFT) != 0;
                        let (min, per, syms) = (km.0, km.1, &km.2);
                        let base = (k.detail - min) as usize * per;
                        let col = if shift && per > 1 && syms[base + 1] != 0 {
                            1
                        } else {
                            0
                        };
                        let mut sym = syms[base + col];
                        if shift && col == 0 && (0x61..=0x7a).contains(&sym) {
                            sym -= 0x20;
                        }
                        let mut s = s2.lock().unwrap();
                        s.keycodes.push(k.detail);
                        if let Some(c) = keysym_char(sym) {
                            s.text.push(c);
                        }
                    }
                    Event::ButtonPress(b) => s2.lock().unwrap().buttons.push(b.detail),
                    _ => {}
                }
            }
        });
        Self {
            conn,
            window,
            root,
            seen,
        }
    }

    /// Fills a rectangle of the window with `color` (0xRRGGBB).
    pub fn fill(&self, color: u32, x: i16, y: i16, w: u16, h: u16) {
        let gc = self.conn.generate_id().unwrap();
        self.conn
            .create_gc(
                gc,
                self.window,
                &xproto::CreateGCAux::new().foreground(color),
            )
            .unwrap();
        self.conn
            .poly_fill_rectangle(
                self.window,
                gc,
                &[xproto::Rectangle {
                    x,
                    y,
                    width: w,
                    height: h,
                }],
            )
            .unwrap();
        self.conn.free_gc(gc).unwrap();
        self.conn.sync().unwrap();
    }

    /// The pointer's position and button mask.
    pub fn pointer(&self) -> (i16, i16, u16) {
        let r = self.conn.query_pointer(self.root).unwrap().reply().unwrap();
        (r.root_x, r.root_y, u16::from(r.mask))
    }

    /// Waits until `f` holds for what was seen, up to `timeout`.
    pub fn wait_for(&self, timeout: Duration, f: impl Fn(&Seen) -> bool) -> Seen {
        let end = Instant::now() + timeout;
        loop {
            let s = self.seen.lock().unwrap().clone();
            if f(&s) || Instant::now() >= end {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Starts Xvfb, or None (printing SKIPPED) when it is not installed and
/// `CI` is unset.
pub fn xvfb(w: u16, h: u16) -> Option<polydev_stream::xvfb::Xvfb> {
    if !polydev_stream::xvfb::Xvfb::available() {
        if std::env::var_os("CI").is_some() {
            panic!("Xvfb is not installed (apt-get install xvfb)");
        }
        eprintln!("SKIPPED: Xvfb is not installed (apt-get install xvfb)");
        return None;
    }
    Some(polydev_stream::xvfb::Xvfb::start(w, h).expect("starting Xvfb"))
}

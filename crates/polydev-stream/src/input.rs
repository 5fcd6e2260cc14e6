//! Input injection with XTest: the viewer's data-channel messages (see
//! `docs/LIVE_VIEW.md`) become pointer motion, button and key events on
//! the display.
//!
//! Keys are found by keysym in the server's core keyboard mapping
//! (`GetKeyboardMapping`, refreshed on `MappingNotify`); a keysym in
//! column 1 of its keycode is typed with Shift. A keysym the keymap lacks
//! (`é` on a US keymap, `€`, emoji) is typed the way `xdotool` does it: a
//! spare keycode (one with no keysyms) is temporarily mapped to it with
//! `ChangeKeyboardMapping`, pressed, released and mapped back.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{self, ConnectionExt as _};
use x11rb::protocol::xtest::ConnectionExt as _;
use x11rb::protocol::Event;
use x11rb::rust_connection::RustConnection;

use crate::capture::{connect, req_err, X11Error};

/// Longest text a `paste` may type.
pub const MAX_PASTE_CHARS: usize = 10_000;
/// Wheel distance (CSS pixels) per button click.
pub const WHEEL_STEP: f64 = 100.0;
/// Most wheel clicks one message may produce.
pub const MAX_WHEEL_CLICKS: u32 = 50;
/// How long a temporary key mapping stays before and after typing with it,
/// so clients re-read the keymap in time.
pub const REMAP_SETTLE: Duration = Duration::from_millis(40);

const NO_SYMBOL: u32 = 0;
const XK_SHIFT_L: u32 = 0xffe1;
const XK_SHIFT_R: u32 = 0xffe2;

/// One message from the viewer's `input` channel.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase", deny_unknown_fields)]
pub enum InputMessage {
    /// Pointer to (x, y), guest pixels.
    Move {
        /// Column.
        x: f64,
        /// Row.
        y: f64,
    },
    /// Button 1–3 pressed.
    Down {
        /// The button.
        b: u8,
    },
    /// Button 1–3 released.
    Up {
        /// The button.
        b: u8,
    },
    /// Scrolling by (dx, dy) pixels: one click per [`WHEEL_STEP`].
    Wheel {
        /// Horizontal distance, positive to the right.
        #[serde(default)]
        dx: f64,
        /// Vertical distance, positive downwards.
        #[serde(default)]
        dy: f64,
    },
    /// A key pressed or released.
    Key {
        /// DOM `KeyboardEvent.key`.
        key: String,
        /// DOM `KeyboardEvent.code` (identifies the physical key, so the
        /// release matches the press).
        #[serde(default)]
        code: String,
        /// Pressed (true) or released.
        down: bool,
    },
    /// Text typed into the focused window.
    Paste {
        /// The text.
        text: String,
    },
}

impl InputMessage {
    /// Parses one channel message.
    pub fn parse(text: &str) -> Result<Self, InputError> {
        serde_json::from_str(text).map_err(|e| InputError::BadMessage(e.to_string()))
    }
}

/// An input message that could not be carried out.
#[derive(Debug, Error)]
pub enum InputError {
    /// Not a message of the protocol.
    #[error("input message is not valid: {0}")]
    BadMessage(String),
    /// A value out of range.
    #[error("input message: {0}")]
    Unsupported(String),
    /// The X server failed.
    #[error(transparent)]
    X11(#[from] X11Error),
}

/// The keysym for one character of text; `None` for control characters
/// other than newline and tab.
pub fn char_keysym(c: char) -> Option<u32> {
    let u = c as u32;
    match c {
        '\n' | '\r' => Some(0xff0d),
        '\t' => Some(0xff09),
        '\u{8}' => Some(0xff08),
        _ if c.is_control() => None,
        _ if (0x20..=0x7e).contains(&u) || (0xa0..=0xff).contains(&u) => Some(u),
        _ => Some(0x0100_0000 | u),
    }
}

/// The keysym for a DOM `KeyboardEvent.key` (with its `code` to tell left
/// from right modifiers); `None` for keys it does not know.
pub fn dom_key_keysym(key: &str, code: &str) -> Option<u32> {
    let mut chars = key.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        return char_keysym(c);
    }
    let right = code.ends_with("Right");
    Some(match key {
        "Enter" => 0xff0d,
        "Backspace" => 0xff08,
        "Tab" => 0xff09,
        "Escape" => 0xff1b,
        "Delete" => 0xffff,
        "Insert" => 0xff63,
        "Home" => 0xff50,
        "End" => 0xff57,
        "PageUp" => 0xff55,
        "PageDown" => 0xff56,
        "ArrowLeft" => 0xff51,
        "ArrowUp" => 0xff52,
        "ArrowRight" => 0xff53,
        "ArrowDown" => 0xff54,
        "Shift" if right => XK_SHIFT_R,
        "Shift" => XK_SHIFT_L,
        "Control" if right => 0xffe4,
        "Control" => 0xffe3,
        "Alt" if right => 0xffea,
        "Alt" => 0xffe9,
        "AltGraph" => 0xfe03,
        "Meta" | "OS" | "Super" if right => 0xffec,
        "Meta" | "OS" | "Super" => 0xffeb,
        "CapsLock" => 0xffe5,
        "ContextMenu" => 0xff67,
        "PrintScreen" => 0xff61,
        "Pause" => 0xff13,
        "ScrollLock" => 0xff14,
        "NumLock" => 0xff7f,
        _ => {
            let n: u32 = key.strip_prefix('F')?.parse().ok()?;
            if !(1..=24).contains(&n) {
                return None;
            }
            0xffbe + n - 1
        }
    })
}

/// The server's core keyboard mapping.
#[derive(Debug, Clone)]
struct Keymap {
    min: u8,
    per: usize,
    syms: Vec<u32>,
}

impl Keymap {
    fn keycodes(&self) -> impl Iterator<Item = (u8, &[u32])> {
        self.syms
            .chunks(self.per.max(1))
            .enumerate()
            .map(|(i, s)| (self.min.wrapping_add(i as u8), s))
    }

    /// (keycode, column) for `sym` in column 0 or 1, column 0 first.
    fn find(&self, sym: u32) -> Option<(u8, usize)> {
        for col in 0..self.per.min(2) {
            if let Some((kc, _)) = self.keycodes().find(|(_, s)| s[col] == sym) {
                return Some((kc, col));
            }
        }
        // A keymap may list only the lowercase letter (X then derives the
        // uppercase one for column 1).
        if let Some(c) = char::from_u32(sym).filter(|c| c.is_ascii_uppercase()) {
            let lower = c.to_ascii_lowercase() as u32;
            if let Some((kc, _)) = self
                .keycodes()
                .find(|(_, s)| s[0] == lower && (self.per < 2 || s[1] == NO_SYMBOL))
            {
                return Some((kc, 1));
            }
        }
        None
    }

    /// Keycodes with no keysym at all, highest first.
    fn spare(&self) -> Vec<u8> {
        let mut v: Vec<u8> = self
            .keycodes()
            .filter(|(_, s)| s.iter().all(|&k| k == NO_SYMBOL))
            .map(|(kc, _)| kc)
            .collect();
        v.reverse();
        v
    }
}

/// Injects input into one display.
pub struct Injector {
    conn: RustConnection,
    display: String,
    root: xproto::Window,
    width: u16,
    height: u16,
    keymap: Keymap,
    held_keys: HashMap<String, u8>,
    held_buttons: [bool; 3],
    shift_held: u32,
    wheel: (f64, f64),
}

impl std::fmt::Debug for Injector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injector")
            .field("display", &self.display)
            .field("size", &(self.width, self.height))
            .finish()
    }
}

impl Injector {
    /// Connects to `display` and checks it has XTest.
    pub fn open(display: &str) -> Result<Self, X11Error> {
        let (conn, screen_num) = connect(display)?;
        let screen = &conn.setup().roots[screen_num];
        let (root, width, height) = (screen.root, screen.width_in_pixels, screen.height_in_pixels);
        conn.xtest_get_version(2, 2)
            .map_err(req_err(display, "XTest (is the extension missing?)"))?
            .reply()
            .map_err(req_err(display, "XTest (is the extension missing?)"))?;
        let keymap = load_keymap(&conn, display)?;
        Ok(Self {
            conn,
            display: display.to_owned(),
            root,
            width,
            height,
            keymap,
            held_keys: HashMap::new(),
            held_buttons: [false; 3],
            shift_held: 0,
            wheel: (0.0, 0.0),
        })
    }

    /// Tells the injector the screen's size (pointer positions are clamped
    /// to it).
    pub fn set_size(&mut self, width: u16, height: u16) {
        self.width = width;
        self.height = height;
    }

    /// Carries out one message.
    pub fn handle(&mut self, msg: &InputMessage) -> Result<(), InputError> {
        self.drain_events()?;
        match msg {
            InputMessage::Move { x, y } => {
                let (x, y) = self.clamp(*x, *y);
                self.fake(xproto::MOTION_NOTIFY_EVENT, 0, x, y)?;
            }
            InputMessage::Down { b } | InputMessage::Up { b } => {
                if !(1..=3).contains(b) {
                    return Err(InputError::Unsupported(format!(
                        "button {b} (only 1 to 3; the wheel has its own message)"
                    )));
                }
                let down = matches!(msg, InputMessage::Down { .. });
                self.button(*b, down)?;
                self.held_buttons[*b as usize - 1] = down;
            }
            InputMessage::Wheel { dx, dy } => {
                if !dx.is_finite() || !dy.is_finite() {
                    return Err(InputError::Unsupported(
                        "wheel distance is not a number".into(),
                    ));
                }
                self.wheel.0 += dx;
                self.wheel.1 += dy;
                let mut clicks = 0;
                while self.wheel.1.abs() >= WHEEL_STEP && clicks < MAX_WHEEL_CLICKS {
                    let b = if self.wheel.1 > 0.0 { 5 } else { 4 };
                    self.click(b)?;
                    self.wheel.1 -= WHEEL_STEP.copysign(self.wheel.1);
                    clicks += 1;
                }
                while self.wheel.0.abs() >= WHEEL_STEP && clicks < MAX_WHEEL_CLICKS {
                    let b = if self.wheel.0 > 0.0 { 7 } else { 6 };
                    self.click(b)?;
                    self.wheel.0 -= WHEEL_STEP.copysign(self.wheel.0);
                    clicks += 1;
                }
                if clicks == MAX_WHEEL_CLICKS {
                    self.wheel = (0.0, 0.0);
                }
            }
            InputMessage::Key { key, code, down } => self.key(key, code, *down)?,
            InputMessage::Paste { text } => self.type_text(text)?,
        }
        self.conn
            .flush()
            .map_err(req_err(&self.display, "sending input"))?;
        Ok(())
    }

    /// Releases every key and button this injector holds (the viewer left
    /// or was replaced: no stuck modifiers).
    pub fn release_all(&mut self) {
        let keys: Vec<u8> = self.held_keys.drain().map(|(_, kc)| kc).collect();
        for kc in keys {
            let _ = self.fake(xproto::KEY_RELEASE_EVENT, kc, 0, 0);
        }
        self.shift_held = 0;
        for b in 1..=3u8 {
            if std::mem::take(&mut self.held_buttons[b as usize - 1]) {
                let _ = self.button(b, false);
            }
        }
        self.wheel = (0.0, 0.0);
        let _ = self.conn.flush();
    }

    fn clamp(&self, x: f64, y: f64) -> (i16, i16) {
        let cl = |v: f64, max: u16| {
            if v.is_finite() {
                v.round().clamp(0.0, max.saturating_sub(1) as f64) as i16
            } else {
                0
            }
        };
        (cl(x, self.width), cl(y, self.height))
    }

    fn fake(&self, type_: u8, detail: u8, x: i16, y: i16) -> Result<(), X11Error> {
        self.conn
            .xtest_fake_input(type_, detail, x11rb::CURRENT_TIME, self.root, x, y, 0)
            .map_err(req_err(&self.display, "XTestFakeInput"))?;
        Ok(())
    }

    fn button(&self, b: u8, down: bool) -> Result<(), X11Error> {
        let t = if down {
            xproto::BUTTON_PRESS_EVENT
        } else {
            xproto::BUTTON_RELEASE_EVENT
        };
        self.fake(t, b, 0, 0)
    }

    fn click(&self, b: u8) -> Result<(), X11Error> {
        self.button(b, true)?;
        self.button(b, false)
    }

    fn key_event(&self, kc: u8, down: bool) -> Result<(), X11Error> {
        let t = if down {
            xproto::KEY_PRESS_EVENT
        } else {
            xproto::KEY_RELEASE_EVENT
        };
        self.fake(t, kc, 0, 0)
    }

    /// Reads pending events: a `MappingNotify` reloads the keymap.
    fn drain_events(&mut self) -> Result<(), X11Error> {
        let mut reload = false;
        while let Some(ev) = self
            .conn
            .poll_for_event()
            .map_err(req_err(&self.display, "reading events"))?
        {
            match ev {
                Event::MappingNotify(m) if m.request == xproto::Mapping::KEYBOARD => reload = true,
                Event::Error(e) => {
                    tracing::warn!(display = %self.display, "X error after input: {e:?}")
                }
                _ => {}
            }
        }
        if reload {
            self.keymap = load_keymap(&self.conn, &self.display)?;
        }
        Ok(())
    }

    fn shift_keycode(&self) -> Option<u8> {
        self.keymap
            .find(XK_SHIFT_L)
            .or_else(|| self.keymap.find(XK_SHIFT_R))
            .map(|(kc, _)| kc)
    }

    fn key(&mut self, key: &str, code: &str, down: bool) -> Result<(), InputError> {
        let id = if code.is_empty() { key } else { code }.to_owned();
        if !down {
            if let Some(kc) = self.held_keys.remove(&id) {
                self.key_event(kc, false)?;
                if matches!(dom_key_keysym(key, code), Some(XK_SHIFT_L | XK_SHIFT_R)) {
                    self.shift_held = self.shift_held.saturating_sub(1);
                }
            }
            return Ok(());
        }
        let Some(sym) = dom_key_keysym(key, code) else {
            return Err(InputError::Unsupported(format!("unknown key {key:?}")));
        };
        match self.keymap.find(sym) {
            Some((kc, col)) => {
                let shift = if col == 1 && self.shift_held == 0 {
                    self.shift_keycode()
                } else {
                    None
                };
                if let Some(s) = shift {
                    self.key_event(s, true)?;
                }
                self.key_event(kc, true)?;
                if let Some(s) = shift {
                    self.key_event(s, false)?;
                }
                if self.held_keys.insert(id, kc).is_none() && matches!(sym, XK_SHIFT_L | XK_SHIFT_R)
                {
                    self.shift_held += 1;
                }
            }
            // Not on the keymap: type it through a spare keycode (press and
            // release now; the release message finds nothing held).
            None => self.type_keysyms(&[sym])?,
        }
        Ok(())
    }

    /// Types `text` into the focused window.
    pub fn type_text(&mut self, text: &str) -> Result<(), InputError> {
        let n = text.chars().count();
        if n > MAX_PASTE_CHARS {
            return Err(InputError::Unsupported(format!(
                "paste of {n} characters (at most {MAX_PASTE_CHARS})"
            )));
        }
        let text = text.replace("\r\n", "\n");
        let syms: Vec<u32> = text.chars().filter_map(char_keysym).collect();
        self.type_keysyms(&syms)?;
        Ok(())
    }

    /// Types keysyms, mapping spare keycodes for those the keymap lacks.
    fn type_keysyms(&mut self, syms: &[u32]) -> Result<(), InputError> {
        self.drain_events()?;
        let spare = self.keymap.spare();
        let mut rest = syms;
        while !rest.is_empty() {
            // The longest prefix whose missing keysyms fit in the spare
            // keycodes.
            let mut missing: Vec<u32> = Vec::new();
            let mut end = 0;
            for &s in rest {
                if self.keymap.find(s).is_none() && !missing.contains(&s) {
                    if missing.len() == spare.len() {
                        break;
                    }
                    missing.push(s);
                }
                end += 1;
            }
            if end == 0 {
                return Err(InputError::Unsupported(format!(
                    "no spare keycode to type keysym {:#x}",
                    rest[0]
                )));
            }
            let (chunk, tail) = rest.split_at(end);
            let mapped: Vec<(u8, u32)> =
                spare.iter().copied().zip(missing.iter().copied()).collect();
            if !mapped.is_empty() {
                for &(kc, s) in &mapped {
                    self.remap(kc, s)?;
                }
                self.sync()?;
                std::thread::sleep(REMAP_SETTLE);
            }
            let result = self.type_chunk(chunk, &mapped);
            if !mapped.is_empty() {
                let _ = self.sync();
                std::thread::sleep(REMAP_SETTLE);
                for &(kc, _) in &mapped {
                    self.remap(kc, NO_SYMBOL)?;
                }
                self.sync()?;
            }
            result?;
            rest = tail;
        }
        Ok(())
    }

    fn type_chunk(&mut self, chunk: &[u32], mapped: &[(u8, u32)]) -> Result<(), InputError> {
        let shift_kc = self.shift_keycode();
        for (i, &s) in chunk.iter().enumerate() {
            let (kc, col) = match mapped.iter().find(|(_, m)| *m == s) {
                Some(&(kc, _)) => (kc, 0),
                None => self.keymap.find(s).ok_or_else(|| {
                    InputError::Unsupported(format!("keysym {s:#x} has no keycode"))
                })?,
            };
            let shift = if col == 1 && self.shift_held == 0 {
                shift_kc
            } else {
                None
            };
            if let Some(sk) = shift {
                self.key_event(sk, true)?;
            }
            self.key_event(kc, true)?;
            self.key_event(kc, false)?;
            if let Some(sk) = shift {
                self.key_event(sk, false)?;
            }
            // Let the server and clients keep up with long pastes.
            if i % 32 == 31 {
                self.sync()?;
            }
        }
        Ok(())
    }

    fn remap(&mut self, kc: u8, sym: u32) -> Result<(), X11Error> {
        let per = self.keymap.per.max(1);
        // Both columns, so Shift does not matter.
        let syms = vec![sym; per];
        self.conn
            .change_keyboard_mapping(1, kc, per as u8, &syms)
            .map_err(req_err(&self.display, "ChangeKeyboardMapping"))?;
        let idx = (kc - self.keymap.min) as usize * per;
        if let Some(slot) = self.keymap.syms.get_mut(idx..idx + per) {
            slot.copy_from_slice(&syms);
        }
        Ok(())
    }

    /// A round trip: everything sent so far has been processed.
    fn sync(&self) -> Result<(), X11Error> {
        self.conn
            .get_input_focus()
            .map_err(req_err(&self.display, "GetInputFocus"))?
            .reply()
            .map_err(req_err(&self.display, "GetInputFocus"))?;
        Ok(())
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        self.release_all();
    }
}

fn load_keymap(conn: &RustConnection, display: &str) -> Result<Keymap, X11Error> {
    let setup = conn.setup();
    let (min, max) = (setup.min_keycode, setup.max_keycode);
    let reply = conn
        .get_keyboard_mapping(min, max - min + 1)
        .map_err(req_err(display, "GetKeyboardMapping"))?
        .reply()
        .map_err(req_err(display, "GetKeyboardMapping"))?;
    Ok(Keymap {
        min,
        per: reply.keysyms_per_keycode as usize,
        syms: reply.keysyms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_messages() {
        assert_eq!(
            InputMessage::parse(r#"{"t":"move","x":10,"y":20.6}"#).unwrap(),
            InputMessage::Move { x: 10.0, y: 20.6 }
        );
        assert_eq!(
            InputMessage::parse(r#"{"t":"key","key":"a","code":"KeyA","down":true}"#).unwrap(),
            InputMessage::Key {
                key: "a".into(),
                code: "KeyA".into(),
                down: true
            }
        );
        assert_eq!(
            InputMessage::parse(r#"{"t":"wheel","dy":-120}"#).unwrap(),
            InputMessage::Wheel {
                dx: 0.0,
                dy: -120.0
            }
        );
        assert!(InputMessage::parse(r#"{"t":"fly"}"#).is_err());
        assert!(InputMessage::parse(r#"{"t":"down"}"#).is_err());
        assert!(InputMessage::parse("not json").is_err());
    }

    #[test]
    fn dom_keys_map_to_keysyms() {
        assert_eq!(dom_key_keysym("a", "KeyA"), Some(0x61));
        assert_eq!(dom_key_keysym("A", "KeyA"), Some(0x41));
        assert_eq!(dom_key_keysym("!", "Digit1"), Some(0x21));
        assert_eq!(dom_key_keysym(" ", "Space"), Some(0x20));
        assert_eq!(dom_key_keysym("Enter", "Enter"), Some(0xff0d));
        assert_eq!(dom_key_keysym("Shift", "ShiftLeft"), Some(XK_SHIFT_L));
        assert_eq!(dom_key_keysym("Shift", "ShiftRight"), Some(XK_SHIFT_R));
        assert_eq!(dom_key_keysym("Control", "ControlLeft"), Some(0xffe3));
        assert_eq!(dom_key_keysym("Meta", "MetaLeft"), Some(0xffeb));
        assert_eq!(dom_key_keysym("F1", "F1"), Some(0xffbe));
        assert_eq!(dom_key_keysym("F12", "F12"), Some(0xffc9));
        assert_eq!(dom_key_keysym("ArrowDown", ""), Some(0xff54));
        assert_eq!(dom_key_keysym("PageUp", ""), Some(0xff55));
        assert_eq!(dom_key_keysym("é", ""), Some(0xe9));
        assert_eq!(dom_key_keysym("€", ""), Some(0x0100_20ac));
        assert_eq!(dom_key_keysym("Dead", ""), None);
        assert_eq!(dom_key_keysym("F0", ""), None);
        assert_eq!(dom_key_keysym("Unidentified", ""), None);
    }

    #[test]
    fn keymap_lookup_prefers_column_zero() {
        // keycodes 10..=13, 2 per keycode
        let km = Keymap {
            min: 10,
            per: 2,
            syms: vec![0x31, 0x21, 0x61, 0x41, 0, 0, 0x62, 0],
        };
        assert_eq!(km.find(0x31), Some((10, 0)));
        assert_eq!(km.find(0x21), Some((10, 1)));
        assert_eq!(km.find(0x41), Some((11, 1)));
        assert_eq!(km.find(0x42), Some((13, 1)), "derived uppercase");
        assert_eq!(km.find(0xe9), None);
        assert_eq!(km.spare(), vec![12]);
    }
}

//! What `polydev image check` runs inside a booted image, and how it judges
//! the answers. The booting itself (through the controller's runtime) lives
//! in the `polydev` binary; everything here is pure and unit-tested.

use base64::Engine;

use crate::flavour::{Flavour, NpmCli, CHECK_PAGE, DISPLAY, GUEST_USER, OPEN_URL_HOOK, VNC_PORT};

/// Where the render check writes its screenshot inside the guest.
pub const SCREENSHOT: &str = "/tmp/polydev-check.png";
/// Fewest distinct colours a screenshot of [`CHECK_PAGE`] must have.
pub const MIN_COLOURS: usize = 32;
/// Largest share of the pixels one colour may cover.
pub const MAX_DOMINANT_SHARE: f64 = 0.9;

/// One command the check runs in the guest through the agent's `/exec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestCommand {
    /// What it shows, in words ("X display :1 up").
    pub name: String,
    /// `argv` for `/exec`.
    pub argv: Vec<String>,
    /// Run as this user (`None`: root).
    pub user: Option<&'static str>,
    /// Time limit of one attempt in milliseconds.
    pub timeout_ms: u64,
    /// Keep retrying until this many seconds have passed (services that
    /// start after the agent).
    pub retry_for_secs: u64,
}

fn sh(script: &str) -> Vec<String> {
    vec!["bash".into(), "-c".into(), script.into()]
}

/// `xdpyinfo` against the display.
pub fn x_display() -> GuestCommand {
    GuestCommand {
        name: format!("X display {DISPLAY} up"),
        argv: vec!["xdpyinfo".into(), "-display".into(), DISPLAY.into()],
        user: Some(GUEST_USER),
        timeout_ms: 30_000,
        retry_for_secs: 120,
    }
}

/// The window manager's unit is active.
pub fn window_manager() -> GuestCommand {
    GuestCommand {
        name: "window manager running".into(),
        argv: vec![
            "systemctl".into(),
            "is-active".into(),
            "polydev-wm.service".into(),
        ],
        user: None,
        timeout_ms: 10_000,
        retry_for_secs: 60,
    }
}

/// Reads the VNC server's 12-byte protocol banner from inside the guest.
pub fn vnc_banner() -> GuestCommand {
    GuestCommand {
        name: format!("VNC answers an RFB handshake on {VNC_PORT}"),
        argv: sh(&format!(
            "exec 3<>/dev/tcp/127.0.0.1/{VNC_PORT} && head -c 12 <&3"
        )),
        user: None,
        timeout_ms: 15_000,
        retry_for_secs: 120,
    }
}

/// Headless Chromium renders [`CHECK_PAGE`] and prints the PNG as base64.
pub fn chromium_screenshot() -> GuestCommand {
    GuestCommand {
        name: "Chromium renders a page".into(),
        argv: sh(&format!(
            "rm -f {SCREENSHOT} && chromium --headless --no-sandbox --disable-gpu \
             --disable-dev-shm-usage --no-first-run --hide-scrollbars \
             --user-data-dir=/tmp/polydev-check-profile --screenshot={SCREENSHOT} \
             --window-size=800,600 file://{CHECK_PAGE} >/tmp/polydev-check.log 2>&1; \
             rc=$?; if [ ! -s {SCREENSHOT} ]; then tail -n 20 /tmp/polydev-check.log >&2; \
             echo \"chromium exited $rc without a screenshot\" >&2; exit 1; fi; base64 -w0 {SCREENSHOT}"
        )),
        user: Some(GUEST_USER),
        timeout_ms: 300_000,
        retry_for_secs: 0,
    }
}

/// `<cli> --version` as the guest user.
pub fn cli_version(cli: &NpmCli) -> GuestCommand {
    GuestCommand {
        name: format!("{} --version", cli.command),
        argv: vec![cli.command.into(), "--version".into()],
        user: Some(GUEST_USER),
        timeout_ms: 180_000,
        retry_for_secs: 0,
    }
}

/// The guest user's home exists and belongs to it.
pub fn guest_home() -> GuestCommand {
    GuestCommand {
        name: format!("home of {GUEST_USER} is writable by it"),
        argv: sh("touch \"$HOME/.polydev-check\" && rm \"$HOME/.polydev-check\" && stat -c '%U %a' \"$HOME\""),
        user: Some(GUEST_USER),
        timeout_ms: 15_000,
        retry_for_secs: 0,
    }
}

/// Developer tools of the CLI flavour.
pub fn dev_tools() -> GuestCommand {
    GuestCommand {
        name: "git, make and gcc run".into(),
        argv: sh("git --version && make --version | head -n 1 && gcc --version | head -n 1"),
        user: Some(GUEST_USER),
        timeout_ms: 60_000,
        retry_for_secs: 0,
    }
}

/// The `$BROWSER` hook reaches the agent (run as the guest user in a login
/// shell, like a CLI; `xdg-open` must resolve to the hook too).
pub fn open_url_hook(url: &str) -> GuestCommand {
    GuestCommand {
        name: "BROWSER hook hands a URL to the agent".into(),
        argv: vec![
            "bash".into(),
            "-lc".into(),
            format!(
                "[ \"$BROWSER\" = {OPEN_URL_HOOK} ] || {{ echo \"BROWSER is '$BROWSER'\" >&2; exit 1; }}; \
                 [ \"$(command -v xdg-open)\" = /usr/local/bin/xdg-open ] || {{ echo 'xdg-open is not the hook' >&2; exit 1; }}; \
                 \"$BROWSER\" '{url}'"
            ),
        ],
        user: Some(GUEST_USER),
        timeout_ms: 30_000,
        retry_for_secs: 0,
    }
}

/// A Chromium opened by the agent (through the wrapper's profile) runs as
/// the guest user.
pub fn chromium_on_display() -> GuestCommand {
    GuestCommand {
        name: format!("Chromium runs on display {DISPLAY}"),
        argv: vec![
            "pgrep".into(),
            "-u".into(),
            GUEST_USER.into(),
            "-f".into(),
            "--".into(),
            "--user-data-dir=.*/polydev-chromium".into(),
        ],
        user: None,
        timeout_ms: 10_000,
        retry_for_secs: 60,
    }
}

/// Whether `flavour` gets the display checks.
pub fn wants_display(flavour: Flavour) -> bool {
    flavour.has_display()
}

/// Parses an RFB banner (`RFB 003.008\n`) into (major, minor).
pub fn parse_rfb_banner(text: &str) -> Option<(u32, u32)> {
    let rest = text.strip_prefix("RFB ")?;
    let (major, minor) = rest.get(..7)?.split_once('.')?;
    if major.len() != 3 || minor.len() != 3 || rest.as_bytes().get(7) != Some(&b'\n') {
        return None;
    }
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// What a screenshot looks like.
#[derive(Debug, Clone, PartialEq)]
pub struct Screenshot {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Distinct RGB colours.
    pub colours: usize,
    /// Share of the pixels the most common colour covers.
    pub dominant_share: f64,
}

impl Screenshot {
    /// Whether it shows a rendered page rather than a blank one.
    pub fn is_rendered(&self) -> bool {
        self.colours >= MIN_COLOURS && self.dominant_share <= MAX_DOMINANT_SHARE
    }
}

/// Decodes a base64 PNG and measures its colours.
pub fn analyse_png_base64(b64: &str) -> Result<Screenshot, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim().as_bytes())
        .map_err(|e| format!("the screenshot is not valid base64: {e}"))?;
    analyse_png(&bytes)
}

/// Decodes a PNG and measures its colours.
pub fn analyse_png(bytes: &[u8]) -> Result<Screenshot, String> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder
        .read_info()
        .map_err(|e| format!("the screenshot is not a PNG: {e}"))?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("cannot decode the screenshot: {e}"))?;
    let channels = info.color_type.samples();
    let data = &buf[..info.buffer_size()];
    let mut counts: std::collections::HashMap<[u8; 3], u64> = std::collections::HashMap::new();
    for px in data.chunks_exact(channels) {
        let rgb = match channels {
            1 | 2 => [px[0], px[0], px[0]],
            _ => [px[0], px[1], px[2]],
        };
        *counts.entry(rgb).or_default() += 1;
    }
    let total = (data.len() / channels).max(1) as f64;
    let dominant = counts.values().copied().max().unwrap_or(0) as f64;
    Ok(Screenshot {
        width: info.width,
        height: info.height,
        colours: counts.len(),
        dominant_share: dominant / total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_of(width: u32, height: u32, pixel: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, width, height);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().unwrap();
            let mut data = Vec::new();
            for y in 0..height {
                for x in 0..width {
                    data.extend_from_slice(&pixel(x, y));
                }
            }
            w.write_image_data(&data).unwrap();
        }
        out
    }

    #[test]
    fn blank_and_rendered_screenshots() {
        let blank = analyse_png(&png_of(80, 60, |_, _| [255, 255, 255])).unwrap();
        assert_eq!(blank.colours, 1);
        assert!(!blank.is_rendered());
        let colourful =
            analyse_png(&png_of(80, 60, |x, y| [x as u8 * 3, y as u8 * 4, 128])).unwrap();
        assert!(colourful.is_rendered(), "{colourful:?}");
        assert_eq!((colourful.width, colourful.height), (80, 60));
        let b64 = base64::engine::general_purpose::STANDARD.encode(png_of(4, 4, |_, _| [0, 0, 0]));
        assert_eq!(analyse_png_base64(&b64).unwrap().colours, 1);
        assert!(analyse_png_base64("not base64!").is_err());
        assert!(analyse_png(b"GIF89a").is_err());
    }

    #[test]
    fn parses_rfb_banners() {
        assert_eq!(parse_rfb_banner("RFB 003.008\n"), Some((3, 8)));
        assert_eq!(parse_rfb_banner("RFB 003.003\n"), Some((3, 3)));
        assert_eq!(parse_rfb_banner("RFB 003.008"), None);
        assert_eq!(parse_rfb_banner("HTTP/1.1 400"), None);
        assert_eq!(parse_rfb_banner(""), None);
    }

    #[test]
    fn screenshot_command_uses_the_baked_page() {
        let c = chromium_screenshot();
        assert!(c.argv[2].contains(CHECK_PAGE));
        assert!(c.argv[2].contains("base64 -w0"));
        assert!(vnc_banner().argv[2].contains("/dev/tcp/127.0.0.1/5901"));
    }
}

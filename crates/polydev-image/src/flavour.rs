//! Image flavours: what each golden image contains.
//!
//! Every flavour boots the same way (the guest init, systemd, the agent). The
//! `browser` flavour adds Chromium on an X display served over VNC, the
//! `cli` flavour adds developer tools; both carry the three provider CLIs from
//! the npm registry at the versions pinned in [`NPM_CLIS`], installed for the
//! [`GUEST_USER`].

use crate::error::{Error, Result};

/// The non-root user the CLIs run as; its home holds their credentials.
pub const GUEST_USER: &str = "polydev";
/// [`GUEST_USER`]'s uid and gid (fixed, so a per-user home disk made on the
/// host has the right owner).
pub const GUEST_UID: u32 = 1000;
/// [`GUEST_USER`]'s home directory.
pub const GUEST_HOME: &str = "/home/polydev";
/// Filesystem label the per-user home disk (`/dev/vdc`) must carry.
pub const HOME_LABEL: &str = "polydev-home";
/// The X display of browser images.
pub const DISPLAY: &str = ":1";
/// TCP port of the VNC server in browser images.
pub const VNC_PORT: u16 = polydev_core::guest::VNC_PORT;
/// The `BROWSER` / `xdg-open` hook script.
pub const OPEN_URL_HOOK: &str = "/usr/local/bin/polydev-open-url";
/// Chromium wrapper with the flags a guest needs.
pub const BROWSER_WRAPPER: &str = "/usr/local/bin/polydev-browser";
/// Kernel settings of browser images (Chromium's sandboxed renderers need
/// overcommitted reservations).
pub const BROWSER_SYSCTL: &str = "/etc/sysctl.d/60-polydev-browser.conf";
/// The DevTools client for the guest's Chromium (loopback port [`CDP_PORT`]).
pub const CDP_TOOL: &str = "/usr/local/bin/polydev-cdp";
/// The port Chromium's DevTools protocol listens on, on the guest's loopback.
pub const CDP_PORT: u16 = 9222;
/// A colourful page baked into browser images for the render check.
pub const CHECK_PAGE: &str = "/usr/share/polydev/check.html";
/// Where the build records each CLI's `--version` output in the image.
pub const CLI_VERSIONS_FILE: &str = "/usr/share/polydev/cli-versions";

/// One provider CLI installed from the npm registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NpmCli {
    /// The command it installs.
    pub command: &'static str,
    /// The npm package.
    pub package: &'static str,
    /// The pinned version (checked against the registry, Nov 2026).
    pub version: &'static str,
}

impl NpmCli {
    /// `package@version`, as `npm install` takes it.
    pub fn spec(&self) -> String {
        format!("{}@{}", self.package, self.version)
    }
}

/// The provider CLIs, pinned. Claude Code must be pinned: an unpinned install
/// with an old Node silently resolves to an old release.
pub const NPM_CLIS: &[NpmCli] = &[
    NpmCli {
        command: "claude",
        package: "@anthropic-ai/claude-code",
        version: "2.1.330",
    },
    NpmCli {
        command: "codex",
        package: "@openai/codex",
        version: "0.169.0",
    },
    NpmCli {
        command: "gemini",
        package: "@google/gemini-cli",
        version: "0.61.0",
    },
];

/// A systemd unit shipped in an image, enabled and verified at build time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    /// Unit file name.
    pub name: &'static str,
    /// Unit file text.
    pub text: &'static str,
    /// The target whose `.wants` directory `systemctl enable` links it into.
    pub wanted_by: &'static str,
}

/// The X display with its VNC server.
pub const XVNC_UNIT: Unit = Unit {
    name: "polydev-xvnc.service",
    text: include_str!("../guest/polydev-xvnc.service"),
    wanted_by: "multi-user.target",
};
/// The window manager on the display.
pub const WM_UNIT: Unit = Unit {
    name: "polydev-wm.service",
    text: include_str!("../guest/polydev-wm.service"),
    wanted_by: "multi-user.target",
};

/// A file baked into an image: (path in the image, content, mode).
pub type ImageFile = (&'static str, &'static str, u32);

/// Packages every non-minimal flavour needs besides its own.
const BASE: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "iproute2",
    "procps",
    "passwd",
    "bsdutils",
    "ca-certificates",
    "nodejs",
    "npm",
];

/// What an image is for; each flavour has its own package list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Flavour {
    /// systemd and the agent: the smallest bootable guest.
    Minimal,
    /// Chromium on an X display with VNC, the three CLIs: provider logins.
    Browser,
    /// The three CLIs, git and build tools: running prompts.
    Cli,
}

impl Flavour {
    /// Every flavour, for listings.
    pub const ALL: &'static [Flavour] = &[Flavour::Minimal, Flavour::Browser, Flavour::Cli];

    /// The name used on the command line and in paths.
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Minimal => "minimal",
            Flavour::Browser => "browser",
            Flavour::Cli => "cli",
        }
    }

    /// Packages installed on top of mmdebstrap's `minbase` variant.
    pub fn packages(self) -> Vec<&'static str> {
        match self {
            // curl and ping: the network checks of the egress tests; tmux:
            // the agent's terminal (a CLI VM on this image in tests).
            Flavour::Minimal => vec![
                "systemd",
                "systemd-sysv",
                "iproute2",
                "procps",
                "curl",
                "iputils-ping",
                "tmux",
            ],
            Flavour::Browser => [
                BASE,
                &[
                    "chromium",
                    "tigervnc-standalone-server",
                    "x11-utils",
                    "matchbox-window-manager",
                    "fonts-dejavu-core",
                ],
            ]
            .concat(),
            Flavour::Cli => [
                BASE,
                &[
                    "git",
                    "openssh-client",
                    "curl",
                    "less",
                    "jq",
                    "ripgrep",
                    "python3",
                    "make",
                    "gcc",
                    "libc6-dev",
                    "unzip",
                    "xz-utils",
                    // The agent's terminal (`GET /terminal`) runs tmux.
                    "tmux",
                ],
            ]
            .concat(),
        }
    }

    /// Whether the flavour has the guest user and the npm CLIs.
    pub fn has_clis(self) -> bool {
        !matches!(self, Flavour::Minimal)
    }

    /// The CLIs installed from the npm registry.
    pub fn npm_clis(self) -> &'static [NpmCli] {
        if self.has_clis() {
            NPM_CLIS
        } else {
            &[]
        }
    }

    /// Whether the flavour has the X display, VNC and Chromium.
    pub fn has_display(self) -> bool {
        matches!(self, Flavour::Browser)
    }

    /// Units besides the agent's, started at boot.
    pub fn units(self) -> &'static [Unit] {
        if self.has_display() {
            &[XVNC_UNIT, WM_UNIT]
        } else {
            &[]
        }
    }

    /// Files besides the agent, init and units.
    pub fn files(self) -> Vec<ImageFile> {
        let mut files: Vec<ImageFile> = Vec::new();
        if self.has_clis() {
            files.push((
                OPEN_URL_HOOK,
                include_str!("../guest/polydev-open-url"),
                0o755,
            ));
            files.push((
                "/etc/profile.d/polydev.sh",
                include_str!("../guest/profile.sh"),
                0o644,
            ));
        }
        if self.has_display() {
            files.push((
                BROWSER_WRAPPER,
                include_str!("../guest/polydev-browser"),
                0o755,
            ));
            files.push((
                BROWSER_SYSCTL,
                include_str!("../guest/polydev-browser-sysctl.conf"),
                0o644,
            ));
            files.push((CHECK_PAGE, include_str!("../guest/check.html"), 0o644));
            files.push((CDP_TOOL, include_str!("../guest/polydev-cdp"), 0o755));
        }
        files
    }
}

impl std::fmt::Display for Flavour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Flavour {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Flavour::ALL
            .iter()
            .copied()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Flavour::ALL.iter().map(|f| f.name()).collect();
                Error::InvalidInput(format!(
                    "unknown image flavour {s:?} (known: {})",
                    names.join(", ")
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavours_parse() {
        for f in Flavour::ALL {
            assert_eq!(f.name().parse::<Flavour>().unwrap(), *f);
        }
        assert!("nope".parse::<Flavour>().is_err());
    }

    #[test]
    fn clis_are_pinned() {
        for c in NPM_CLIS {
            assert!(
                c.version.split('.').count() == 3
                    && c.version.split('.').all(|p| p.parse::<u32>().is_ok()),
                "{} must be pinned to an exact version",
                c.package
            );
        }
        assert_eq!(Flavour::Minimal.npm_clis().len(), 0);
        assert_eq!(Flavour::Cli.npm_clis().len(), 3);
    }

    #[test]
    fn units_match_the_contract() {
        assert!(XVNC_UNIT.text.contains(&format!("-rfbport {VNC_PORT}")));
        assert!(XVNC_UNIT.text.contains(&format!("Xtigervnc {DISPLAY} ")));
        assert!(WM_UNIT.text.contains(&format!("DISPLAY={DISPLAY}")));
        for u in Flavour::Browser.units() {
            assert!(
                u.text.contains(&format!("WantedBy={}", u.wanted_by)),
                "{}",
                u.name
            );
            assert!(u.text.contains(&format!("User={GUEST_USER}")), "{}", u.name);
        }
    }

    #[test]
    fn browser_speaks_devtools_on_the_cdp_port() {
        let files = Flavour::Browser.files();
        let wrapper = files.iter().find(|f| f.0 == BROWSER_WRAPPER).unwrap();
        assert!(wrapper
            .1
            .contains(&format!("--remote-debugging-port={CDP_PORT}")));
        let cdp = files.iter().find(|f| f.0 == CDP_TOOL).unwrap();
        assert!(cdp.1.contains(&format!("|| {CDP_PORT}")));
    }

    #[test]
    fn browser_runs_chromium_with_its_own_sandbox() {
        let files = Flavour::Browser.files();
        let wrapper = files.iter().find(|f| f.0 == BROWSER_WRAPPER).unwrap();
        assert!(
            !wrapper.1.contains("--no-sandbox"),
            "Chromium's sandbox is on (no warning bar)"
        );
        // Its renderers' reservations are granted in a small VM.
        let sysctl = files.iter().find(|f| f.0 == BROWSER_SYSCTL).unwrap();
        assert!(sysctl.1.contains("\nvm.overcommit_memory = 1\n"));
        assert!(!Flavour::Cli.files().iter().any(|f| f.0 == BROWSER_SYSCTL));
    }

    #[test]
    fn hook_calls_the_agent() {
        let hook = Flavour::Browser
            .files()
            .into_iter()
            .find(|f| f.0 == OPEN_URL_HOOK)
            .unwrap();
        assert!(hook
            .1
            .contains(&format!("{} open-url", polydev_core::guest::AGENT_BIN)));
    }
}

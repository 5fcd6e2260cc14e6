//! The controller's configuration: one struct, filled from command-line flags
//! and environment variables (the table in the README lists them all).

use polydev_core::vm::VmType;
use polydev_vmm::accel::Accel;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How big a VM of one type is.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct VmSize {
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mb: u32,
}

/// Controller configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Where the controller keeps its database (SQLite) and VM directories.
    pub data_dir: PathBuf,
    /// Database URL; `None` means SQLite at `<data_dir>/polydev.db`.
    pub database_url: Option<String>,
    /// Where built kernels and images are cached.
    pub cache_dir: PathBuf,
    /// Explicit guest kernel, instead of the cached build.
    pub kernel: Option<PathBuf>,
    /// Explicit golden root filesystem, instead of the cached build.
    pub rootfs: Option<PathBuf>,
    /// Root filesystem for browser VMs only (the stand-in test image, say),
    /// instead of the cached browser image.
    pub browser_rootfs: Option<PathBuf>,
    /// Force KVM or TCG instead of probing.
    pub accel: Option<Accel>,
    /// Force a VMM instead of choosing (Firecracker when usable, else QEMU).
    pub vmm: Option<polydev_vmm::VmmKind>,
    /// How long a VM may take to announce readiness.
    pub boot_timeout: Duration,
    /// Size of browser VMs.
    pub browser_size: VmSize,
    /// Size of CLI VMs.
    pub cli_size: VmSize,
    /// Size of each VM's writable state disk in MiB (sparse).
    pub state_disk_mb: u64,
    /// Size of each user's persistent home disk in MiB (sparse).
    pub home_disk_mb: u64,
    /// Extra kernel arguments for every VM.
    pub extra_kernel_args: Vec<String>,
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
    /// The live view (noVNC, WebRTC): see [`LiveConfig`].
    pub live: LiveConfig,
    /// Egress: uplink, DNS, default policies, source pool.
    pub egress: crate::egress::EgressSettings,
    /// A CLI VM with no run and no terminal this long hibernates
    /// (`POLYDEV_CLI_IDLE_SECS`, default 600).
    pub cli_idle: Duration,
    /// Prompt runs: providers file, limits, deadlines.
    pub runs: crate::runs::RunsConfig,
    /// Host capacity, per-user caps and rate limits.
    pub admission: crate::admission::AdmissionConfig,
    /// How much of each VM's console log is kept and served: its first
    /// bytes (`POLYDEV_CONSOLE_HEAD_BYTES`, default 1 MiB) and its last
    /// (`POLYDEV_CONSOLE_TAIL_BYTES`, default 4 MiB).
    pub console: polydev_vmm::console::Limits,
    /// End users' accounts: sessions, sign-in limits, OIDC providers.
    pub accounts: crate::accounts::AccountsConfig,
}

impl Config {
    /// Defaults for a data directory (used by tests and benchmarks).
    pub fn with_data_dir(data_dir: PathBuf) -> Config {
        Config {
            listen: "127.0.0.1:4000".parse().expect("constant address"),
            data_dir,
            database_url: None,
            cache_dir: PathBuf::from(default_cache_dir()),
            kernel: None,
            rootfs: None,
            browser_rootfs: None,
            accel: None,
            vmm: None,
            boot_timeout: Duration::from_secs(180),
            browser_size: VmSize {
                vcpus: 2,
                memory_mb: 4096,
            },
            cli_size: VmSize {
                vcpus: 2,
                memory_mb: 2048,
            },
            state_disk_mb: 1024,
            home_disk_mb: 4096,
            extra_kernel_args: Vec::new(),
            max_body_bytes: 64 * 1024,
            live: LiveConfig::default(),
            egress: crate::egress::EgressSettings::default(),
            cli_idle: Duration::from_secs(600),
            runs: crate::runs::RunsConfig::default(),
            admission: crate::admission::AdmissionConfig::default(),
            console: polydev_vmm::console::Limits::default(),
            accounts: crate::accounts::AccountsConfig::default(),
        }
    }

    /// The size for a VM type.
    pub fn size(&self, t: VmType) -> VmSize {
        match t {
            VmType::Browser => self.browser_size,
            VmType::Cli => self.cli_size,
        }
    }

    /// Directory holding every VM's directory.
    pub fn vms_dir(&self) -> PathBuf {
        self.data_dir.join("vms")
    }

    /// The database URL actually used.
    pub fn effective_database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("polydev.db").display()))
    }

    /// A short tag derived from the data directory, so that two controllers on
    /// one host (or two test runs) never share namespace names.
    pub fn host_tag(&self) -> String {
        use sha2::Digest;
        let d = sha2::Sha256::digest(self.data_dir.to_string_lossy().as_bytes());
        hex::encode(&d[..2])
    }

    /// Prefix of the network namespace names of this controller's VMs.
    pub fn netns_prefix(&self) -> String {
        format!("pd{}-", self.host_tag())
    }
}

/// `/var/cache/polydev`, or `POLYDEV_CACHE_DIR` when set.
pub fn default_cache_dir() -> String {
    std::env::var("POLYDEV_CACHE_DIR").unwrap_or_else(|_| "/var/cache/polydev".into())
}

/// A secret string: never printed (its `Debug` says only whether it is set).
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: String) -> Secret {
        Secret(s)
    }
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Settings of the live view (`live` module): noVNC files, view tokens,
/// allowed origins, ICE servers, the media relay. Read from the environment
/// by [`LiveConfig::from_env`]; the README lists the variables.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// The noVNC client's files (`POLYDEV_NOVNC_DIR`, default the Debian
    /// `novnc` package's `/usr/share/novnc`).
    pub novnc_dir: PathBuf,
    /// The controller's public base URL, e.g. `https://polydev.example.com`
    /// (`POLYDEV_PUBLIC_URL`): used in the URLs handed out and as its own
    /// origin. Unset: taken from each request's `Host` header (http).
    pub public_url: Option<String>,
    /// Further origins allowed to open the VNC WebSocket and to frame the
    /// viewer (`POLYDEV_ALLOWED_ORIGINS`, comma-separated).
    pub allowed_origins: Vec<String>,
    /// Default and largest lifetime of a view token
    /// (`POLYDEV_VIEW_TOKEN_TTL_SECS`, default 600).
    pub view_token_ttl: Duration,
    /// STUN server URLs (`POLYDEV_STUN_URLS`, comma-separated).
    pub stun_urls: Vec<String>,
    /// TURN server URLs (`POLYDEV_TURN_URLS`, comma-separated).
    pub turn_urls: Vec<String>,
    /// The TURN server's shared secret (coturn `static-auth-secret`), from
    /// `POLYDEV_TURN_SECRET` or the file named by `POLYDEV_TURN_SECRET_FILE`.
    pub turn_secret: Option<Secret>,
    /// Lifetime of minted TURN credentials (`POLYDEV_TURN_TTL_SECS`, default 3600).
    pub turn_ttl: Duration,
    /// Address the per-session UDP media relays bind (`POLYDEV_MEDIA_ADDR`,
    /// default 127.0.0.1; production sets the host's public IP, and the
    /// answer's candidate carries it).
    pub media_addr: std::net::IpAddr,
    /// How long the viewer waits for WebRTC frames before it falls back to
    /// noVNC (`POLYDEV_WEBRTC_TIMEOUT_SECS`, default 15).
    pub webrtc_timeout: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            novnc_dir: PathBuf::from("/usr/share/novnc"),
            public_url: None,
            allowed_origins: Vec::new(),
            view_token_ttl: Duration::from_secs(600),
            stun_urls: Vec::new(),
            turn_urls: Vec::new(),
            turn_secret: None,
            turn_ttl: Duration::from_secs(3600),
            media_addr: std::net::Ipv4Addr::LOCALHOST.into(),
            webrtc_timeout: Duration::from_secs(15),
        }
    }
}

impl LiveConfig {
    /// Reads the `POLYDEV_*` variables above; unset or empty ones keep their
    /// defaults. A malformed value is an error naming the variable.
    pub fn from_env() -> Result<LiveConfig, String> {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    /// [`LiveConfig::from_env`] over any lookup (for tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<LiveConfig, String> {
        let mut c = LiveConfig::default();
        let list = |k: &str| -> Vec<String> {
            get(k)
                .map(|v| {
                    v.split(',')
                        .map(|x| x.trim().trim_end_matches('/').to_string())
                        .filter(|x| !x.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        let secs = |k: &str, d: Duration| -> Result<Duration, String> {
            match get(k) {
                None => Ok(d),
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(n) if n > 0 => Ok(Duration::from_secs(n)),
                    _ => Err(format!(
                        "{k} must be a positive number of seconds, not {v:?}"
                    )),
                },
            }
        };
        if let Some(d) = get("POLYDEV_NOVNC_DIR") {
            c.novnc_dir = PathBuf::from(d);
        }
        if let Some(u) = get("POLYDEV_PUBLIC_URL") {
            let u = u.trim().trim_end_matches('/').to_string();
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(format!(
                    "POLYDEV_PUBLIC_URL must start with http:// or https://, not {u:?}"
                ));
            }
            c.public_url = Some(u);
        }
        c.allowed_origins = list("POLYDEV_ALLOWED_ORIGINS");
        c.view_token_ttl = secs("POLYDEV_VIEW_TOKEN_TTL_SECS", c.view_token_ttl)?;
        c.stun_urls = list("POLYDEV_STUN_URLS");
        c.turn_urls = list("POLYDEV_TURN_URLS");
        for u in &c.stun_urls {
            if !u.starts_with("stun:") && !u.starts_with("stuns:") {
                return Err(format!(
                    "POLYDEV_STUN_URLS: {u:?} is not a stun: or stuns: URL"
                ));
            }
        }
        for u in &c.turn_urls {
            if !u.starts_with("turn:") && !u.starts_with("turns:") {
                return Err(format!(
                    "POLYDEV_TURN_URLS: {u:?} is not a turn: or turns: URL"
                ));
            }
        }
        c.turn_secret = match (get("POLYDEV_TURN_SECRET"), get("POLYDEV_TURN_SECRET_FILE")) {
            (Some(s), _) => Some(Secret(s.trim().to_string())),
            (None, Some(f)) => {
                let s = std::fs::read_to_string(&f)
                    .map_err(|e| format!("POLYDEV_TURN_SECRET_FILE {f}: {e}"))?;
                let s = s.trim().to_string();
                if s.is_empty() {
                    return Err(format!("POLYDEV_TURN_SECRET_FILE {f} is empty"));
                }
                Some(Secret(s))
            }
            (None, None) => None,
        };
        if !c.turn_urls.is_empty() && c.turn_secret.is_none() {
            return Err("POLYDEV_TURN_URLS is set but neither POLYDEV_TURN_SECRET nor POLYDEV_TURN_SECRET_FILE: TURN credentials are minted per session from the shared secret".into());
        }
        c.turn_ttl = secs("POLYDEV_TURN_TTL_SECS", c.turn_ttl)?;
        if let Some(a) = get("POLYDEV_MEDIA_ADDR") {
            c.media_addr = a
                .trim()
                .parse()
                .map_err(|_| format!("POLYDEV_MEDIA_ADDR must be an IP address, not {a:?}"))?;
            if c.media_addr.is_unspecified() {
                return Err(format!(
                    "POLYDEV_MEDIA_ADDR must be the address viewers can reach (it goes into the WebRTC answer), not {a:?}"
                ));
            }
        }
        c.webrtc_timeout = secs("POLYDEV_WEBRTC_TIMEOUT_SECS", c.webrtc_timeout)?;
        Ok(c)
    }
}

#[cfg(test)]
mod live_config_tests {
    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<LiveConfig, String> {
        let m: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        LiveConfig::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_and_values() {
        let d = from(&[]).unwrap();
        assert_eq!(d.novnc_dir, PathBuf::from("/usr/share/novnc"));
        assert_eq!(d.view_token_ttl, Duration::from_secs(600));
        assert_eq!(d.media_addr.to_string(), "127.0.0.1");
        let c = from(&[
            ("POLYDEV_STUN_URLS", "stun:a.example:3478, stun:b.example"),
            ("POLYDEV_TURN_URLS", "turn:t.example:3478?transport=udp"),
            ("POLYDEV_TURN_SECRET", "s3cret"),
            (
                "POLYDEV_ALLOWED_ORIGINS",
                "https://app.example/,https://b.example",
            ),
            ("POLYDEV_MEDIA_ADDR", "203.0.113.7"),
            ("POLYDEV_VIEW_TOKEN_TTL_SECS", "60"),
        ])
        .unwrap();
        assert_eq!(c.stun_urls, ["stun:a.example:3478", "stun:b.example"]);
        assert_eq!(
            c.allowed_origins,
            ["https://app.example", "https://b.example"]
        );
        assert_eq!(c.turn_secret.as_ref().unwrap().expose(), "s3cret");
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "the secret is never printed"
        );
        assert_eq!(c.view_token_ttl, Duration::from_secs(60));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("POLYDEV_MEDIA_ADDR", "nope"),
            ("POLYDEV_VIEW_TOKEN_TTL_SECS", "0"),
            ("POLYDEV_STUN_URLS", "http://x"),
            ("POLYDEV_PUBLIC_URL", "example.com"),
            ("POLYDEV_MEDIA_ADDR", "0.0.0.0"),
        ] {
            let e = from(&[(k, v)]).unwrap_err();
            assert!(e.contains(k), "{e}");
        }
        let e = from(&[("POLYDEV_TURN_URLS", "turn:t.example")]).unwrap_err();
        assert!(e.contains("POLYDEV_TURN_SECRET"), "{e}");
    }
}

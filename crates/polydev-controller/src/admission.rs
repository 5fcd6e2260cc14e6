//! Admission: whether the host has room for one more VM (memory, disk,
//! slots), whether a user is within their caps, and how fast a key or a user
//! may change things — checked before anything is recorded or started.

use crate::error::ApiError;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Limits of the host and of each user (environment variables in the README).
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// Live VMs (creating, running, hibernated or failed holding a slot) on
    /// this controller (`POLYDEV_MAX_VMS`, default 64).
    pub max_vms: usize,
    /// Memory left to the host after a new VM's (`POLYDEV_MEMORY_RESERVE_MB`,
    /// default 512).
    pub memory_reserve_mb: u64,
    /// Disk left free in the data directory after a new VM's disks and
    /// snapshot (`POLYDEV_DISK_RESERVE_MB`, default 1024).
    pub disk_reserve_mb: u64,
    /// Live VMs per user (`POLYDEV_USER_MAX_VMS`, default 8).
    pub user_max_vms: usize,
    /// Sign-in sessions in progress per user (`POLYDEV_USER_MAX_SIGNINS`,
    /// default 2).
    pub user_max_signins: usize,
    /// Runs queued or running per user (`POLYDEV_USER_MAX_RUNS`, default 16).
    pub user_max_runs: usize,
    /// Changing requests (POST, PUT, PATCH, DELETE) per minute per API key
    /// (`POLYDEV_RATE_PER_KEY`, default 600).
    pub rate_per_key: u32,
    /// Changing requests per minute per user named by the request
    /// (`POLYDEV_RATE_PER_USER`, default 120).
    pub rate_per_user: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            max_vms: 64,
            memory_reserve_mb: 512,
            disk_reserve_mb: 1024,
            user_max_vms: 8,
            user_max_signins: 2,
            user_max_runs: 16,
            rate_per_key: 600,
            rate_per_user: 120,
        }
    }
}

impl AdmissionConfig {
    /// From the process environment.
    pub fn from_env() -> Result<AdmissionConfig, String> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// From any lookup (tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<AdmissionConfig, String> {
        let mut c = AdmissionConfig::default();
        let num = |k: &str, d: u64| -> Result<u64, String> {
            match get(k).filter(|v| !v.trim().is_empty()) {
                None => Ok(d),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| format!("{k}: {v:?} is not a whole number")),
            }
        };
        c.max_vms = num("POLYDEV_MAX_VMS", c.max_vms as u64)? as usize;
        c.memory_reserve_mb = num("POLYDEV_MEMORY_RESERVE_MB", c.memory_reserve_mb)?;
        c.disk_reserve_mb = num("POLYDEV_DISK_RESERVE_MB", c.disk_reserve_mb)?;
        c.user_max_vms = num("POLYDEV_USER_MAX_VMS", c.user_max_vms as u64)? as usize;
        c.user_max_signins = num("POLYDEV_USER_MAX_SIGNINS", c.user_max_signins as u64)? as usize;
        c.user_max_runs = num("POLYDEV_USER_MAX_RUNS", c.user_max_runs as u64)? as usize;
        c.rate_per_key = num("POLYDEV_RATE_PER_KEY", c.rate_per_key as u64)? as u32;
        c.rate_per_user = num("POLYDEV_RATE_PER_USER", c.rate_per_user as u64)? as u32;
        for (k, v) in [
            ("POLYDEV_MAX_VMS", c.max_vms),
            ("POLYDEV_USER_MAX_VMS", c.user_max_vms),
            ("POLYDEV_USER_MAX_SIGNINS", c.user_max_signins),
            ("POLYDEV_USER_MAX_RUNS", c.user_max_runs),
            ("POLYDEV_RATE_PER_KEY", c.rate_per_key as usize),
            ("POLYDEV_RATE_PER_USER", c.rate_per_user as usize),
        ] {
            if v == 0 {
                return Err(format!("{k} must be at least 1"));
            }
        }
        Ok(c)
    }
}

/// What the host has free now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFree {
    /// `MemAvailable` of /proc/meminfo, MiB.
    pub memory_mb: u64,
    /// Space an unprivileged writer may use in the data directory, MiB.
    pub disk_mb: u64,
}

/// Reads what the host has free for VMs whose files live in `data_dir`.
pub fn host_free(data_dir: &Path) -> Result<HostFree, String> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| format!("reading /proc/meminfo: {e}"))?;
    let memory_mb = meminfo_available_mb(&meminfo)
        .ok_or_else(|| "/proc/meminfo has no MemAvailable line".to_string())?;
    let disk_mb = disk_free_mb(data_dir)?;
    Ok(HostFree { memory_mb, disk_mb })
}

/// Space an unprivileged writer may use on the file system of `dir`, MiB.
fn disk_free_mb(dir: &Path) -> Result<u64, String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| format!("{} has a NUL byte", dir.display()))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(format!(
            "statvfs {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64) >> 20)
}

/// `MemAvailable` in MiB from the text of /proc/meminfo.
pub fn meminfo_available_mb(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

/// What one more VM needs and what the host already owes.
#[derive(Debug, Clone, Copy)]
pub struct Demand {
    /// The new VM's memory, MiB.
    pub memory_mb: u64,
    /// Its disks (state disk, a home disk not yet made) and a snapshot of
    /// its memory, MiB.
    pub disk_mb: u64,
    /// Memory of VMs being created that the host has not yet given them, MiB.
    pub pending_memory_mb: u64,
    /// VMs holding a slot now.
    pub live_vms: usize,
}

/// Whether the host can take the VM: `Err` says what is short, in words.
pub fn check_host(cfg: &AdmissionConfig, free: HostFree, d: Demand) -> Result<(), String> {
    let mut short = Vec::new();
    if d.live_vms >= cfg.max_vms {
        short.push(format!(
            "slots: {} of {} VMs are live (POLYDEV_MAX_VMS)",
            d.live_vms, cfg.max_vms
        ));
    }
    let mem_need = d.memory_mb + d.pending_memory_mb + cfg.memory_reserve_mb;
    if free.memory_mb < mem_need {
        short.push(format!(
            "memory: {} MiB available, {} MiB needed ({} for the VM, {} promised to VMs starting, {} kept for the host)",
            free.memory_mb, mem_need, d.memory_mb, d.pending_memory_mb, cfg.memory_reserve_mb
        ));
    }
    let disk_need = d.disk_mb + cfg.disk_reserve_mb;
    if free.disk_mb < disk_need {
        short.push(format!(
            "disk: {} MiB free in the data directory, {} MiB needed ({} for the VM's disks and snapshot, {} kept free)",
            free.disk_mb, disk_need, d.disk_mb, cfg.disk_reserve_mb
        ));
    }
    if short.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the host has no room for this VM: {}",
            short.join("; ")
        ))
    }
}

/// 503 `capacity`, saying what is short.
pub fn capacity_error(why: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "capacity", why)
}

/// A sliding-window counter per key: at most `limit` events per `window`.
#[derive(Default)]
pub struct RateLimiter {
    seen: Mutex<HashMap<String, Vec<Instant>>>,
}

impl RateLimiter {
    /// Counts one event for `key`; `Err(seconds)` to wait when over.
    pub fn check(&self, key: &str, limit: u32, window: Duration) -> Result<(), u64> {
        let now = Instant::now();
        let mut m = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() > 50_000 {
            m.retain(|_, v| v.last().is_some_and(|t| now.duration_since(*t) < window));
        }
        let v = m.entry(key.to_string()).or_default();
        v.retain(|t| now.duration_since(*t) < window);
        if v.len() as u32 >= limit {
            let wait = window.saturating_sub(now.duration_since(v[0]));
            return Err(wait.as_secs().max(1));
        }
        v.push(now);
        Ok(())
    }
}

/// 429 `rate_limited` with `Retry-After`.
pub fn rate_limited(what: String, retry_after_s: u64) -> Response {
    let mut r = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("{what}; retry in {retry_after_s} s"),
    )
    .into_response();
    r.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        HeaderValue::from(retry_after_s),
    );
    r
}

/// The user a request names: in its path (`/api/users/:u/…`,
/// `/api/credentials/:u/…`), its query (`userId=`) or its JSON body.
pub fn named_user(path: &str, query: Option<&str>, body: &[u8]) -> Option<String> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    if let ["api", "users" | "credentials", user, ..] = segs.as_slice() {
        return Some((*user).to_string());
    }
    if let Some(q) = query {
        for pair in q.split('&') {
            if let Some(v) = pair.strip_prefix("userId=") {
                return Some(v.to_string());
            }
        }
    }
    if body.first().is_some_and(|b| *b == b'{') {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
            if let Some(u) = v.get("userId").and_then(|u| u.as_str()) {
                return Some(u.to_string());
            }
        }
    }
    None
}

/// Middleware after authentication: changing requests are counted per API
/// key and per user they name; over either limit → 429 with Retry-After.
pub async fn limit_changes(
    axum::extract::State(state): axum::extract::State<crate::AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use axum::http::Method;
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let cfg = &state.runtime.config().admission;
    let window = Duration::from_secs(60);
    let limits = &state.limits;
    if let Some(c) = req.extensions().get::<crate::auth::Caller>() {
        let who = c.label();
        if let Err(wait) = limits.check(&format!("key:{who}"), cfg.rate_per_key, window) {
            let who = match &c.key_id {
                Some(k) => format!("API key {k}"),
                None => format!("the session of {}", c.user_id.as_deref().unwrap_or("?")),
            };
            return rate_limited(
                format!(
                    "{who} made more than {} changing requests in a minute",
                    cfg.rate_per_key
                ),
                wait,
            );
        }
    }
    let (parts, body) = req.into_parts();
    let max = state.runtime.config().max_body_bytes;
    let bytes = match axum::body::to_bytes(body, max).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body is larger than {max} bytes"),
            )
            .into_response()
        }
    };
    if let Some(user) = named_user(parts.uri.path(), parts.uri.query(), &bytes) {
        if let Err(wait) = limits.check(&format!("user:{user}"), cfg.rate_per_user, window) {
            return rate_limited(
                format!(
                    "more than {} changing requests for user {user} in a minute",
                    cfg.rate_per_user
                ),
                wait,
            );
        }
    }
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_env_and_bad_values() {
        let c = AdmissionConfig::from_lookup(|k| (k == "POLYDEV_MAX_VMS").then(|| "3".to_string()))
            .unwrap();
        assert_eq!(c.max_vms, 3);
        assert_eq!(c.user_max_vms, 8);
        let e = AdmissionConfig::from_lookup(|k| {
            (k == "POLYDEV_USER_MAX_RUNS").then(|| "many".to_string())
        })
        .unwrap_err();
        assert!(e.contains("POLYDEV_USER_MAX_RUNS"), "{e}");
        assert!(
            AdmissionConfig::from_lookup(|k| (k == "POLYDEV_RATE_PER_KEY").then(|| "0".into()))
                .is_err()
        );
    }

    #[test]
    fn host_check_names_what_is_short() {
        let cfg = AdmissionConfig::default();
        let free = HostFree {
            memory_mb: 4096,
            disk_mb: 10_000,
        };
        let d = Demand {
            memory_mb: 2048,
            disk_mb: 3000,
            pending_memory_mb: 0,
            live_vms: 0,
        };
        assert!(check_host(&cfg, free, d).is_ok());
        let e = check_host(
            &cfg,
            free,
            Demand {
                pending_memory_mb: 2048,
                ..d
            },
        )
        .unwrap_err();
        assert!(
            e.contains("memory: 4096 MiB available, 4608 MiB needed"),
            "{e}"
        );
        assert!(!e.contains("disk:"), "{e}");
        let e = check_host(
            &cfg,
            HostFree {
                disk_mb: 100,
                ..free
            },
            d,
        )
        .unwrap_err();
        assert!(e.contains("disk: 100 MiB free"), "{e}");
        let e = check_host(&cfg, free, Demand { live_vms: 64, ..d }).unwrap_err();
        assert!(e.contains("slots: 64 of 64"), "{e}");
    }

    #[test]
    fn meminfo_is_read() {
        let t = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2097152 kB\n";
        assert_eq!(meminfo_available_mb(t), Some(2048));
        assert_eq!(meminfo_available_mb("MemTotal: 1 kB\n"), None);
        let real = host_free(Path::new("/tmp")).unwrap();
        assert!(real.memory_mb > 0 && real.disk_mb > 0, "{real:?}");
    }

    #[test]
    fn rate_limiter_counts_per_key_and_says_when_to_retry() {
        let r = RateLimiter::default();
        let w = Duration::from_secs(60);
        assert!(r.check("a", 2, w).is_ok());
        assert!(r.check("a", 2, w).is_ok());
        let retry = r.check("a", 2, w).unwrap_err();
        assert!((1..=60).contains(&retry), "{retry}");
        assert!(r.check("b", 2, w).is_ok(), "another key is not limited");
    }

    #[test]
    fn the_named_user_is_found_in_path_query_or_body() {
        assert_eq!(
            named_user("/api/users/u1/terminal/token", None, b"").as_deref(),
            Some("u1")
        );
        assert_eq!(
            named_user("/api/credentials/u2/codex", None, b"").as_deref(),
            Some("u2")
        );
        assert_eq!(
            named_user("/api/runs", Some("x=1&userId=u3"), b"").as_deref(),
            Some("u3")
        );
        assert_eq!(
            named_user("/api/vms", None, br#"{"type":"cli","userId":"u4"}"#).as_deref(),
            Some("u4")
        );
        assert_eq!(named_user("/api/vms/x/hibernate", None, b""), None);
        assert_eq!(named_user("/api/vms", None, b"not json"), None);
    }
}

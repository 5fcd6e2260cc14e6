//! Reading the guest's uptime from `/proc/uptime`.

/// Parses the first field of `/proc/uptime` content into milliseconds.
pub fn parse_ms(text: &str) -> Option<u64> {
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    if secs.is_finite() && secs >= 0.0 {
        Some((secs * 1000.0) as u64)
    } else {
        None
    }
}

/// The system uptime in milliseconds, or 0 when `/proc/uptime` is unreadable.
pub fn uptime_ms() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| parse_ms(&t))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_uptime() {
        assert_eq!(parse_ms("12.34 56.78\n"), Some(12340));
        assert_eq!(parse_ms("garbage"), None);
        assert_eq!(parse_ms(""), None);
    }
}

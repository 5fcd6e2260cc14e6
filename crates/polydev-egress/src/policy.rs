//! What a VM may reach: the per-VM policy, its validation and its matching.
//!
//! ```json
//! {"internet": true, "allowCidrs": [], "denyCidrs": [], "allowDomains": [], "denyDomains": []}
//! ```
//!
//! - `internet: false` stops everything, DNS included.
//! - `denyCidrs` are always dropped; a non-empty `allowCidrs` (without
//!   domain rules) drops every other destination.
//! - Domain rules: `example.com` names exactly that name, `*.example.com`
//!   every name below it (not the apex). With `allowDomains`, only allowed
//!   names resolve, and only addresses those answers gave (or `allowCidrs`)
//!   are reachable; `denyDomains` never resolve. Both are also checked
//!   against the TLS SNI / HTTP Host of TCP 443/80.

use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

/// Most entries a list of a policy may hold.
pub const MAX_ENTRIES: usize = 256;

/// A per-VM egress policy, as the API takes and shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// False: nothing leaves the VM, DNS included.
    #[serde(default = "yes")]
    pub internet: bool,
    /// When non-empty, the only destinations (besides domain-allowed ones).
    #[serde(default)]
    pub allow_cidrs: Vec<String>,
    /// Destinations always dropped.
    #[serde(default)]
    pub deny_cidrs: Vec<String>,
    /// When non-empty, the only names that resolve.
    #[serde(default)]
    pub allow_domains: Vec<String>,
    /// Names that never resolve.
    #[serde(default)]
    pub deny_domains: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            internet: true,
            allow_cidrs: Vec::new(),
            deny_cidrs: Vec::new(),
            allow_domains: Vec::new(),
            deny_domains: Vec::new(),
        }
    }
}

/// A policy entry that is not acceptable, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}[{index}] {entry:?}: {message}")]
pub struct PolicyError {
    /// The list (`allowCidrs`, …).
    pub field: &'static str,
    /// Position in the list.
    pub index: usize,
    /// The entry as given (cut to 100 characters).
    pub entry: String,
    /// What is wrong.
    pub message: String,
}

/// A name rule: exact, or every name below a suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameRule {
    /// Exactly this name.
    Exact(String),
    /// Any name ending in `.` + this suffix.
    Below(String),
}

impl NameRule {
    /// True if `name` (normalised) matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            NameRule::Exact(n) => name == n,
            NameRule::Below(s) => {
                name.len() > s.len() + 1
                    && name.ends_with(s.as_str())
                    && name.as_bytes()[name.len() - s.len() - 1] == b'.'
            }
        }
    }
}

/// A validated policy, in the forms the firewall and the DNS forwarder use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// Internet on at all.
    pub internet: bool,
    /// Allowed networks (empty: no CIDR restriction).
    pub allow: Vec<Ipv4Net>,
    /// Denied networks.
    pub deny: Vec<Ipv4Net>,
    /// Allowed names (empty: no name restriction).
    pub allow_names: Vec<NameRule>,
    /// Denied names.
    pub deny_names: Vec<NameRule>,
}

impl Compiled {
    /// Whether domain rules restrict what is reachable (allowlist mode).
    pub fn domain_mode(&self) -> bool {
        !self.allow_names.is_empty()
    }

    /// Whether names are checked at all (allow- or denylist).
    pub fn names_checked(&self) -> bool {
        !self.allow_names.is_empty() || !self.deny_names.is_empty()
    }

    /// Whether `name` may be resolved and contacted.
    pub fn name_allowed(&self, name: &str) -> bool {
        let name = normalise_name(name);
        if !self.internet || self.deny_names.iter().any(|r| r.matches(&name)) {
            return false;
        }
        self.allow_names.is_empty() || self.allow_names.iter().any(|r| r.matches(&name))
    }

    /// Whether an address is in `allowCidrs`.
    pub fn cidr_allowed(&self, ip: Ipv4Addr) -> bool {
        self.allow.iter().any(|n| n.contains(&ip))
    }

    /// Whether an address is in `denyCidrs`.
    pub fn cidr_denied(&self, ip: Ipv4Addr) -> bool {
        self.deny.iter().any(|n| n.contains(&ip))
    }
}

/// Lower case, no trailing dot.
pub fn normalise_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn entry_err(field: &'static str, index: usize, entry: &str, message: &str) -> PolicyError {
    PolicyError {
        field,
        index,
        entry: entry.chars().take(100).collect(),
        message: message.to_string(),
    }
}

/// Parses an IPv4 network (`a.b.c.d/n`, or an address for a /32).
pub fn parse_cidr(s: &str) -> Result<Ipv4Net, String> {
    let s = s.trim();
    if s.contains(':') {
        return Err("IPv6 is off for VMs: give an IPv4 network".into());
    }
    if let Ok(ip) = s.parse::<Ipv4Addr>() {
        return Ok(Ipv4Net::new(ip, 32).expect("32 is a valid prefix"));
    }
    s.parse::<Ipv4Net>()
        .map(|n| n.trunc())
        .map_err(|_| "not an IPv4 network (a.b.c.d/n) or address".into())
}

fn parse_name_rule(s: &str) -> Result<NameRule, String> {
    let (below, rest) = match s.strip_prefix("*.") {
        Some(r) => (true, r),
        None => (false, s),
    };
    let name = normalise_name(rest);
    if name.is_empty() || name.len() > 253 {
        return Err("a domain name has 1 to 253 characters".into());
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!(
                "label {label:?} is not a DNS label (letters, digits, '-', at most 63); a wildcard is only '*.' in front"
            ));
        }
    }
    Ok(if below {
        NameRule::Below(name)
    } else {
        NameRule::Exact(name)
    })
}

impl Policy {
    /// Checks every entry; the first bad one is named.
    pub fn compile(&self) -> Result<Compiled, PolicyError> {
        fn cidrs(field: &'static str, v: &[String]) -> Result<Vec<Ipv4Net>, PolicyError> {
            if v.len() > MAX_ENTRIES {
                return Err(entry_err(
                    field,
                    MAX_ENTRIES,
                    &v[MAX_ENTRIES],
                    &format!("too many entries: at most {MAX_ENTRIES}"),
                ));
            }
            v.iter()
                .enumerate()
                .map(|(i, s)| parse_cidr(s).map_err(|m| entry_err(field, i, s, &m)))
                .collect()
        }
        fn names(field: &'static str, v: &[String]) -> Result<Vec<NameRule>, PolicyError> {
            if v.len() > MAX_ENTRIES {
                return Err(entry_err(
                    field,
                    MAX_ENTRIES,
                    &v[MAX_ENTRIES],
                    &format!("too many entries: at most {MAX_ENTRIES}"),
                ));
            }
            v.iter()
                .enumerate()
                .map(|(i, s)| parse_name_rule(s).map_err(|m| entry_err(field, i, s, &m)))
                .collect()
        }
        Ok(Compiled {
            internet: self.internet,
            allow: cidrs("allowCidrs", &self.allow_cidrs)?,
            deny: cidrs("denyCidrs", &self.deny_cidrs)?,
            allow_names: names("allowDomains", &self.allow_domains)?,
            deny_names: names("denyDomains", &self.deny_domains)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(json: &str) -> Policy {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_allow_everything() {
        let c = p("{}").compile().unwrap();
        assert!(c.internet && !c.domain_mode() && c.name_allowed("example.com"));
    }

    #[test]
    fn bad_entries_are_named() {
        let e = p(r#"{"denyCidrs": ["10.0.0.0/8", "10.0.0.300/8"]}"#)
            .compile()
            .unwrap_err();
        assert_eq!((e.field, e.index), ("denyCidrs", 1));
        assert!(e.to_string().contains("10.0.0.300/8"), "{e}");
        let e = p(r#"{"allowDomains": ["ok.example", "bad name"]}"#)
            .compile()
            .unwrap_err();
        assert_eq!((e.field, e.index), ("allowDomains", 1));
        let e = p(r#"{"allowCidrs": ["2001:db8::/32"]}"#)
            .compile()
            .unwrap_err();
        assert!(e.message.contains("IPv6"));
        let many: Vec<String> = (0..300).map(|i| format!("h{i}.example")).collect();
        let e = Policy {
            deny_domains: many,
            ..Policy::default()
        }
        .compile()
        .unwrap_err();
        assert!(e.message.contains("too many"));
        assert!(serde_json::from_str::<Policy>(r#"{"internet": true, "allowCidr": []}"#).is_err());
    }

    #[test]
    fn names_match_exactly_or_below() {
        let c = p(r#"{"allowDomains": ["api.example.com", "*.cdn.example"], "denyDomains": ["bad.cdn.example"]}"#)
            .compile()
            .unwrap();
        assert!(c.domain_mode());
        assert!(c.name_allowed("API.example.com."));
        assert!(!c.name_allowed("www.api.example.com"));
        assert!(c.name_allowed("a.cdn.example"));
        assert!(!c.name_allowed("cdn.example"));
        assert!(!c.name_allowed("bad.cdn.example"));
        assert!(!c.name_allowed("xcdn.example"));
        let off = p(r#"{"internet": false}"#).compile().unwrap();
        assert!(!off.name_allowed("api.example.com"));
    }

    #[test]
    fn cidrs_normalise() {
        let c = p(r#"{"allowCidrs": ["203.0.113.7", "198.51.100.9/24"]}"#)
            .compile()
            .unwrap();
        assert_eq!(c.allow[1].to_string(), "198.51.100.0/24");
        assert!(c.cidr_allowed("203.0.113.7".parse().unwrap()));
        assert!(!c.cidr_allowed("203.0.113.8".parse().unwrap()));
    }
}

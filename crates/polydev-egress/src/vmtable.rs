//! The firewall inside one VM's namespace (`ip polydev_vm`): the guest's
//! address SNATed to the VM's link address, the VM's policy, TCP sent to the
//! controller's gate when policy needs it, and the VM's counters.
//!
//! A policy change rewrites the chains and the CIDR sets in one transaction
//! and keeps the counters and the DNS-learned addresses.

use crate::nft::{self, Target};
use crate::policy::Compiled;
use crate::Result;
use polydev_core::guest::{GATE_PORT, GUEST_ADDR, HOST_ADDR, TAP_NAME};
use polydev_net::veth::NS_IF;
use std::net::Ipv4Addr;
use std::time::Duration;

/// The table's name inside every VM namespace.
pub const TABLE: &str = "polydev_vm";

/// Which guest TCP goes through the controller's gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateMode {
    /// None: the kernel forwards everything policy allows.
    Off,
    /// TCP 80 and 443, for SNI/Host checks of domain rules.
    Web,
    /// All TCP, for a per-user upstream proxy.
    AllTcp,
}

/// What decides a VM's ruleset.
#[derive(Debug, Clone)]
pub struct VmRules<'a> {
    /// The VM's link address (SNAT source).
    pub ns_addr: Ipv4Addr,
    /// Its policy.
    pub policy: &'a Compiled,
    /// Whether a per-user upstream proxy carries its TCP.
    pub proxied: bool,
}

impl VmRules<'_> {
    /// The gate mode these rules need.
    pub fn gate(&self) -> GateMode {
        if !self.policy.internet {
            GateMode::Off
        } else if self.proxied {
            GateMode::AllTcp
        } else if self.policy.names_checked() {
            GateMode::Web
        } else {
            GateMode::Off
        }
    }

    /// The script that installs or updates the table.
    pub fn script(&self) -> String {
        let t = TABLE;
        let tap = format!("\"{TAP_NAME}\"");
        let up = format!("\"{NS_IF}\"");
        let p = self.policy;
        let mut s = format!(
            "add table ip {t}\n\
add counter ip {t} out\n\
add counter ip {t} dropped\n\
add set ip {t} allow_net {{ type ipv4_addr; flags interval; auto-merge; }}\n\
add set ip {t} deny_net {{ type ipv4_addr; flags interval; auto-merge; }}\n\
add set ip {t} dns_allowed {{ type ipv4_addr; flags timeout; }}\n\
add chain ip {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n\
add chain ip {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
add chain ip {t} input {{ type filter hook input priority filter; policy drop; }}\n\
add chain ip {t} forward {{ type filter hook forward priority filter; policy drop; }}\n\
add chain ip {t} count_out {{ type filter hook postrouting priority filter; policy accept; }}\n\
add chain ip {t} out\n"
        );
        for c in [
            "prerouting",
            "postrouting",
            "input",
            "forward",
            "count_out",
            "out",
        ] {
            s.push_str(&format!("flush chain ip {t} {c}\n"));
        }
        s.push_str(&format!(
            "flush set ip {t} allow_net\nflush set ip {t} deny_net\n"
        ));
        if !p.domain_mode() {
            s.push_str(&format!("flush set ip {t} dns_allowed\n"));
        }
        let join = |v: &[ipnet::Ipv4Net]| {
            v.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !p.allow.is_empty() {
            s.push_str(&format!(
                "add element ip {t} allow_net {{ {} }}\n",
                join(&p.allow)
            ));
        }
        if !p.deny.is_empty() {
            s.push_str(&format!(
                "add element ip {t} deny_net {{ {} }}\n",
                join(&p.deny)
            ));
        }
        let rule = |s: &mut String, chain: &str, r: &str| {
            s.push_str(&format!("add rule ip {t} {chain} {r}\n"));
        };
        rule(
            &mut s,
            "postrouting",
            &format!(
                "oifname {up} ip saddr {GUEST_ADDR} snat ip to {}",
                self.ns_addr
            ),
        );
        match self.gate() {
            GateMode::Off => {}
            GateMode::Web => rule(
                &mut s,
                "prerouting",
                &format!("iifname {tap} ip daddr != {HOST_ADDR} tcp dport {{ 80, 443 }} redirect to :{GATE_PORT}"),
            ),
            GateMode::AllTcp => rule(
                &mut s,
                "prerouting",
                &format!("iifname {tap} ip daddr != {HOST_ADDR} meta l4proto tcp redirect to :{GATE_PORT}"),
            ),
        }
        rule(
            &mut s,
            "count_out",
            &format!("oifname {up} counter name out"),
        );
        rule(&mut s, "input", "iifname \"lo\" accept");
        rule(&mut s, "input", "ct state established,related accept");
        rule(
            &mut s,
            "input",
            &format!("iifname {tap} ip daddr {HOST_ADDR} udp dport 53 accept"),
        );
        rule(
            &mut s,
            "input",
            &format!("iifname {tap} ip daddr {HOST_ADDR} tcp dport 53 accept"),
        );
        if self.gate() != GateMode::Off {
            rule(
                &mut s,
                "input",
                &format!("iifname {tap} ip daddr {HOST_ADDR} tcp dport {GATE_PORT} accept"),
            );
        }
        rule(&mut s, "input", "counter name dropped drop");
        rule(
            &mut s,
            "forward",
            &format!("iifname {up} oifname {tap} ct state established,related accept"),
        );
        rule(
            &mut s,
            "forward",
            &format!("iifname {tap} oifname {up} jump out"),
        );
        rule(&mut s, "forward", "counter name dropped drop");
        if !p.internet || self.proxied {
            rule(&mut s, "out", "counter name dropped drop");
        } else {
            rule(
                &mut s,
                "out",
                "ip daddr @deny_net counter name dropped drop",
            );
            if p.domain_mode() {
                rule(&mut s, "out", "udp dport 443 counter name dropped drop");
                rule(&mut s, "out", "ip daddr @allow_net accept");
                rule(&mut s, "out", "ip daddr @dns_allowed accept");
                rule(&mut s, "out", "counter name dropped drop");
            } else if !p.allow.is_empty() {
                rule(
                    &mut s,
                    "out",
                    "ip daddr != @allow_net counter name dropped drop",
                );
            }
            rule(&mut s, "out", "accept");
        }
        s
    }

    /// Applies the rules inside namespace `ns`.
    pub fn apply(&self, ns: &str) -> Result<()> {
        nft::apply(Target::Netns(ns), &self.script())
    }
}

/// Lets the VM reach `addrs` for `ttl` (answers of an allowed name).
pub fn allow_learned(ns: &str, addrs: &[Ipv4Addr], ttl: Duration) -> Result<()> {
    if addrs.is_empty() {
        return Ok(());
    }
    let secs = ttl.as_secs().max(1);
    let elems: Vec<String> = addrs
        .iter()
        .map(|a| format!("{a} timeout {secs}s"))
        .collect();
    // `add` keeps an element's old timeout: delete first so the new one counts.
    let plain: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let s = format!(
        "add element ip {TABLE} dns_allowed {{ {} }}\ndelete element ip {TABLE} dns_allowed {{ {} }}\nadd element ip {TABLE} dns_allowed {{ {} }}\n",
        elems.join(", "),
        plain.join(", "),
        elems.join(", ")
    );
    nft::apply(Target::Netns(ns), &s)
}

/// The VM's counters: (out packets, out bytes, dropped packets).
pub fn counters(ns: &str) -> Result<(u64, u64, u64)> {
    let c = nft::counters(Target::Netns(ns), "ip", TABLE)?;
    let out = c.get("out").copied().unwrap_or((0, 0));
    Ok((out.0, out.1, c.get("dropped").map(|x| x.0).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    fn rules(json: &str, proxied: bool) -> String {
        let c = serde_json::from_str::<Policy>(json)
            .unwrap()
            .compile()
            .unwrap();
        VmRules {
            ns_addr: "10.231.0.2".parse().unwrap(),
            policy: &c,
            proxied,
        }
        .script()
    }

    #[test]
    fn modes() {
        let open = rules("{}", false);
        assert!(open.contains("snat ip to 10.231.0.2"));
        assert!(!open.contains("redirect"));
        let off = rules(r#"{"internet": false}"#, false);
        assert!(off.contains("add rule ip polydev_vm out counter name dropped drop"));
        let dom = rules(r#"{"allowDomains": ["a.example"]}"#, false);
        assert!(dom.contains("tcp dport { 80, 443 } redirect to :15001"));
        assert!(dom.contains("udp dport 443 counter name dropped drop"));
        assert!(!dom.contains("flush set ip polydev_vm dns_allowed"));
        let prox = rules("{}", true);
        assert!(prox.contains("meta l4proto tcp redirect to :15001"));
        let cidr = rules(
            r#"{"allowCidrs": ["203.0.113.0/24"], "denyCidrs": ["203.0.113.9"]}"#,
            false,
        );
        assert!(cidr.contains("allow_net { 203.0.113.0/24 }"));
        assert!(cidr.contains("deny_net { 203.0.113.9/32 }"));
        assert!(cidr.contains("ip daddr != @allow_net"));
    }
}

//! The host's firewall for VM egress: one nftables table owned by this
//! controller (`ip polydev_<tag>`), never any other. Its rules match VM
//! links by name prefix and use sets and a map, so the rule count does not
//! grow with the number of VMs:
//!
//! - forward: a VM link may reach only the uplink; VM → VM and anything into
//!   a VM that is not a reply are dropped; destinations in `always_deny`
//!   (private, link-local with the cloud metadata address, multicast,
//!   reserved, the host's own addresses) are dropped unless in `exempt`;
//! - input: nothing from a VM link reaches the host (each VM's DNS is
//!   answered inside its own namespace);
//! - postrouting: VM traffic leaving by the uplink is SNATed to the user's
//!   pool address (`source_map`) or masqueraded.

use crate::nft::{self, quote, Target};
use crate::Result;
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

/// Destinations no VM reaches unless the operator exempts them.
pub const ALWAYS_DENY: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// The host side of egress.
#[derive(Debug, Clone)]
pub struct HostFirewall {
    /// Table name (`polydev_<tag>`).
    pub table: String,
    /// Prefix of the host ends of VM links.
    pub link_prefix: String,
    /// The interface VM traffic leaves by; `None`: nothing leaves.
    pub uplink: Option<String>,
    /// The VM links' addresses.
    pub subnet: Ipv4Net,
    /// Ranges taken out of the always-deny set.
    pub exempt: Vec<Ipv4Net>,
    /// The host's own addresses, denied too.
    pub host_addrs: Vec<Ipv4Addr>,
}

fn set_elements(v: &[String]) -> String {
    if v.is_empty() {
        String::new()
    } else {
        format!(" elements = {{ {} }};", v.join(", "))
    }
}

impl HostFirewall {
    /// The whole table as one script that replaces any earlier version,
    /// with `sources` (VM address → pool address) as the map's elements.
    pub fn script(&self, sources: &[(Ipv4Addr, Ipv4Addr)]) -> String {
        let t = &self.table;
        let links = quote(&format!("{}*", self.link_prefix));
        let mut deny: Vec<String> = ALWAYS_DENY.iter().map(|s| s.to_string()).collect();
        deny.extend(self.host_addrs.iter().map(|a| a.to_string()));
        let exempt: Vec<String> = self.exempt.iter().map(|n| n.to_string()).collect();
        let keys: Vec<String> = sources.iter().map(|(k, _)| k.to_string()).collect();
        let pairs: Vec<String> = sources.iter().map(|(k, v)| format!("{k} : {v}")).collect();
        let leave = match &self.uplink {
            Some(u) => format!(
                "oifname != {u} counter name dropped drop\n    ip daddr @exempt counter name forwarded accept\n    ip daddr @always_deny counter name dropped drop\n    counter name forwarded accept",
                u = quote(u)
            ),
            None => "counter name dropped drop".to_string(),
        };
        let nat = match &self.uplink {
            Some(u) => format!(
                "oifname {u} ip saddr {net} ip saddr @sourced snat ip to ip saddr map @source_map\n    oifname {u} ip saddr {net} masquerade",
                u = quote(u),
                net = self.subnet
            ),
            None => String::new(),
        };
        format!(
            "table ip {t}\ndelete table ip {t}\n\
table ip {t} {{\n\
  set always_deny {{ type ipv4_addr; flags interval; auto-merge;{deny} }}\n\
  set exempt {{ type ipv4_addr; flags interval; auto-merge;{exempt} }}\n\
  set sourced {{ type ipv4_addr;{keys} }}\n\
  map source_map {{ type ipv4_addr : ipv4_addr;{pairs} }}\n\
  counter forwarded {{ }}\n\
  counter dropped {{ }}\n\
  chain forward {{\n    type filter hook forward priority filter; policy accept;\n\
    iifname {links} jump from_vm\n\
    oifname {links} ct state established,related accept\n\
    oifname {links} counter name dropped drop\n  }}\n\
  chain from_vm {{\n    {leave}\n  }}\n\
  chain input {{\n    type filter hook input priority filter; policy accept;\n\
    iifname {links} counter name dropped drop\n  }}\n\
  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    {nat}\n  }}\n\
}}\n",
            deny = set_elements(&deny),
            exempt = set_elements(&exempt),
            keys = set_elements(&keys),
            pairs = set_elements(&pairs),
        )
    }

    /// Installs (or replaces) the table in one transaction.
    pub fn install(&self, sources: &[(Ipv4Addr, Ipv4Addr)]) -> Result<()> {
        nft::apply(Target::Host, &self.script(sources))
    }

    /// Sets or clears the pool address of one VM address, in one transaction
    /// (the map is read first: nft 1.0.6 has no idempotent delete).
    pub fn set_source(&self, vm_addr: Ipv4Addr, pool: Option<Ipv4Addr>) -> Result<()> {
        let t = &self.table;
        let current = self
            .sources()?
            .into_iter()
            .find(|(k, _)| *k == vm_addr)
            .map(|x| x.1);
        if current == pool {
            return Ok(());
        }
        let mut s = String::new();
        if current.is_some() {
            s.push_str(&format!(
                "delete element ip {t} source_map {{ {vm_addr} }}\ndelete element ip {t} sourced {{ {vm_addr} }}\n"
            ));
        }
        if let Some(p) = pool {
            s.push_str(&format!(
                "add element ip {t} source_map {{ {vm_addr} : {p} }}\nadd element ip {t} sourced {{ {vm_addr} }}\n"
            ));
        }
        nft::apply(Target::Host, &s)
    }

    /// The map's elements as the kernel holds them.
    pub fn sources(&self) -> Result<Vec<(Ipv4Addr, Ipv4Addr)>> {
        let v = nft::list_json(Target::Host, &["map", "ip", &self.table, "source_map"])?;
        let mut out = Vec::new();
        for item in v["nftables"].as_array().into_iter().flatten() {
            for e in item["map"]["elem"].as_array().into_iter().flatten() {
                let (Some(k), Some(val)) = (e[0].as_str(), e[1].as_str()) else {
                    continue;
                };
                if let (Ok(k), Ok(val)) = (k.parse(), val.parse()) {
                    out.push((k, val));
                }
            }
        }
        Ok(out)
    }

    /// (forwarded, dropped) packet counts of the table.
    pub fn counts(&self) -> Result<(u64, u64)> {
        let c = nft::counters(Target::Host, "ip", &self.table)?;
        Ok((
            c.get("forwarded").map(|x| x.0).unwrap_or(0),
            c.get("dropped").map(|x| x.0).unwrap_or(0),
        ))
    }

    /// Removes the table.
    pub fn remove(&self) -> Result<()> {
        nft::delete_table(Target::Host, "ip", &self.table)
    }
}

/// The host's IPv4 addresses (every interface), for the always-deny set.
pub fn host_addresses() -> Vec<Ipv4Addr> {
    let Ok(out) = std::process::Command::new("ip")
        .args(["-j", "-4", "addr", "show"])
        .output()
    else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut addrs = Vec::new();
    for link in v.as_array().into_iter().flatten() {
        for a in link["addr_info"].as_array().into_iter().flatten() {
            if let Some(ip) = a["local"].as_str().and_then(|s| s.parse().ok()) {
                addrs.push(ip);
            }
        }
    }
    addrs.sort();
    addrs.dedup();
    addrs
}

/// The interface of the IPv4 default route, if any.
pub fn default_route_interface() -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["-j", "-4", "route", "show", "default"])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.as_array()?
        .iter()
        .find_map(|r| r["dev"].as_str().map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_keeps_rules_constant_and_quotes_names() {
        let fw = HostFirewall {
            table: "polydev_ab12".into(),
            link_prefix: "peab12-".into(),
            uplink: Some("eth9".into()),
            subnet: "10.231.0.0/16".parse().unwrap(),
            exempt: vec!["10.9.0.0/16".parse().unwrap()],
            host_addrs: vec!["192.0.2.2".parse().unwrap()],
        };
        let one = fw.script(&[(
            "10.231.0.2".parse().unwrap(),
            "198.51.100.11".parse().unwrap(),
        )]);
        let many: Vec<_> = (0..50u8)
            .map(|i| {
                (
                    Ipv4Addr::new(10, 231, 0, 4 * i + 2),
                    Ipv4Addr::new(198, 51, 100, 11),
                )
            })
            .collect();
        let fifty = fw.script(&many);
        let rules = |s: &str| {
            s.lines()
                .filter(|l| {
                    l.contains(" drop")
                        || l.contains(" accept")
                        || l.contains("snat")
                        || l.contains("masquerade")
                })
                .count()
        };
        assert_eq!(rules(&one), rules(&fifty));
        assert!(one.contains("iifname \"peab12-*\" jump from_vm"));
        assert!(one.contains("oifname != \"eth9\""));
        assert!(one.contains("192.0.2.2"));
        assert!(one.contains("10.231.0.2 : 198.51.100.11"));
        let none = HostFirewall { uplink: None, ..fw };
        assert!(!none.script(&[]).contains("masquerade"));
    }
}

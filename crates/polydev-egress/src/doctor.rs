//! Host checks for egress, for `polydev doctor`: each says what it found and,
//! when something is wrong, what to do.

use crate::nft::{self, Target};

/// One finding.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// Whether it is fine.
    pub ok: bool,
    /// What was found, and what to do when it is not fine.
    pub detail: String,
}

fn check(name: &'static str, ok: bool, detail: String) -> Check {
    Check { name, ok, detail }
}

/// Checks nft, IPv4 forwarding, the uplink and other tables' forward
/// chains. `uplink` is the configured one (`None`: egress off).
pub fn run(uplink: Option<&str>, own_table: &str) -> Vec<Check> {
    let mut out = Vec::new();
    match nft::run(Target::Host, &["--version"], None) {
        Ok(v) => out.push(check("nft", true, v.trim().to_string())),
        Err(e) => {
            out.push(check(
                "nft",
                false,
                format!("{e}; install the nftables package (apt-get install nftables)"),
            ));
            return out;
        }
    }
    let fwd = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
    out.push(if fwd.trim() == "1" {
        check("ip_forward", true, "net.ipv4.ip_forward = 1".into())
    } else {
        check(
            "ip_forward",
            uplink.is_none(),
            "net.ipv4.ip_forward = 0: `polydev serve` turns it on when it has an uplink; to keep it across reboots, put net.ipv4.ip_forward=1 in /etc/sysctl.d/".into(),
        )
    });
    match uplink {
        None => out.push(check(
            "uplink",
            true,
            "none: VMs reach nothing beyond their namespace (POLYDEV_EGRESS_UPLINK=none, or no default route)".into(),
        )),
        Some(u) => {
            let state = std::fs::read_to_string(format!("/sys/class/net/{u}/operstate"));
            out.push(match state {
                Ok(s) if s.trim() == "up" || s.trim() == "unknown" => {
                    check("uplink", true, format!("{u} ({})", s.trim()))
                }
                Ok(s) => check("uplink", false, format!("{u} is {}: bring it up (ip link set {u} up)", s.trim())),
                Err(_) => check(
                    "uplink",
                    false,
                    format!("{u} does not exist: set POLYDEV_EGRESS_UPLINK to an interface of `ip link`"),
                ),
            });
        }
    }
    // A forward chain of another table (Docker's, a distribution
    // firewall) whose policy is drop drops VM traffic whatever polydev's
    // own table accepts.
    if let Ok(v) = nft::list_json(Target::Host, &["chains"]) {
        let mut drops = Vec::new();
        for item in v["nftables"].as_array().into_iter().flatten() {
            let ch = &item["chain"];
            if ch["hook"] == "forward" && ch["policy"] == "drop" && ch["table"] != own_table {
                drops.push(format!(
                    "{} {} chain {}",
                    ch["family"].as_str().unwrap_or("?"),
                    ch["table"].as_str().unwrap_or("?"),
                    ch["name"].as_str().unwrap_or("?")
                ));
            }
        }
        out.push(if drops.is_empty() {
            check("forward policy", true, "no other table drops forwarded traffic by default".into())
        } else {
            check(
                "forward policy",
                false,
                format!(
                    "{} drop(s) forwarded traffic by default (Docker sets iptables FORWARD to DROP): VM traffic will not leave; allow the VM links, e.g. `iptables -I FORWARD -i pe+ -j ACCEPT; iptables -I FORWARD -o pe+ -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT` (or DOCKER-USER under Docker)",
                    drops.join(", ")
                ),
            )
        });
    }
    out
}

//! The VM's link to the host: a veth pair from the VM's namespace to the
//! host namespace, addressed per slot, plus the namespace settings egress
//! needs (forwarding on, IPv6 off, a default route to the host end).
//!
//! Made with iproute2 like the namespaces themselves ([`crate::cmd`]): one
//! tool for every link, the reference for its conventions, and errors that
//! carry the exact command that failed.

use crate::{cmd, netns, NetError, Result};
use std::net::Ipv4Addr;

/// Name of the namespace end of the pair, inside every VM's namespace.
pub const NS_IF: &str = "veth0";

/// One VM's link: the host end's name and both ends' addresses (a /30).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethLink {
    /// Name of the host end (at most 15 characters).
    pub host_if: String,
    /// Address of the host end.
    pub host_addr: Ipv4Addr,
    /// Address of the namespace end: the VM's address on the host's side,
    /// to which the guest's traffic is SNATed.
    pub ns_addr: Ipv4Addr,
    /// Prefix length of the link.
    pub prefix: u8,
}

fn check_if_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(NetError::BadName(name.to_string()))
    }
}

/// True if a link named `name` exists in the host namespace.
pub fn host_link_exists(name: &str) -> bool {
    check_if_name(name).is_ok() && std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Names of the host links whose name starts with `prefix`.
pub fn list_host_links(prefix: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// Deletes a host link (and with it its veth peer). Succeeds if it is gone.
pub fn delete_host_link(name: &str) -> Result<()> {
    check_if_name(name)?;
    if !host_link_exists(name) {
        return Ok(());
    }
    match cmd::ip(&["link", "del", name]) {
        Ok(_) => Ok(()),
        Err(_) if !host_link_exists(name) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes a sysctl of the named namespace (from a thread inside it:
/// `/proc/sys/net` follows the opener's network namespace).
pub fn sysctl_in(ns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let value = value.to_string();
    netns::run_in(ns, move || {
        std::fs::write(&path, value.as_bytes()).map_err(|e| NetError::Sys {
            what: format!("writing {path}"),
            source: e,
        })
    })
}

/// Makes the pair: the host end `link.host_if` in the host namespace, the
/// peer [`NS_IF`] inside `ns`, both addressed and up; forwarding on and IPv6
/// off in `ns`; the namespace's default route through the host end. A stale
/// host end of the same name is replaced. On failure nothing is left.
pub fn create(ns: &str, link: &VethLink) -> Result<()> {
    check_if_name(&link.host_if)?;
    if !netns::exists(ns) {
        return Err(NetError::Command {
            command: format!("veth {} into {ns}", link.host_if),
            detail: "the namespace does not exist".into(),
        });
    }
    if host_link_exists(&link.host_if) {
        tracing::warn!(link = %link.host_if, "replacing a stale veth");
        delete_host_link(&link.host_if)?;
    }
    let r = (|| {
        for (k, v) in [
            ("net.ipv6.conf.all.disable_ipv6", "1"),
            ("net.ipv6.conf.default.disable_ipv6", "1"),
            ("net.ipv4.ip_forward", "1"),
        ] {
            // A host without IPv6 has no such keys: nothing to turn off.
            match sysctl_in(ns, k, v) {
                Err(_)
                    if k.contains("ipv6")
                        && !std::path::Path::new("/proc/sys/net/ipv6").exists() => {}
                r => r?,
            }
        }
        cmd::ip(&[
            "link",
            "add",
            &link.host_if,
            "type",
            "veth",
            "peer",
            "name",
            NS_IF,
            "netns",
            ns,
        ])?;
        cmd::ip(&[
            "addr",
            "add",
            &format!("{}/{}", link.host_addr, link.prefix),
            "dev",
            &link.host_if,
        ])?;
        // IPv6 off on the host end too: no router or listener chatter on the link.
        let v6 = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", link.host_if);
        if std::path::Path::new(&v6).exists() {
            std::fs::write(&v6, "1").map_err(|e| NetError::Sys {
                what: format!("writing {v6}"),
                source: e,
            })?;
        }
        cmd::ip(&["link", "set", &link.host_if, "up"])?;
        cmd::ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/{}", link.ns_addr, link.prefix),
            "dev",
            NS_IF,
        ])?;
        cmd::ip(&["-n", ns, "link", "set", NS_IF, "up"])?;
        cmd::ip(&[
            "-n",
            ns,
            "route",
            "replace",
            "default",
            "via",
            &link.host_addr.to_string(),
            "dev",
            NS_IF,
        ])?;
        Ok(())
    })();
    if r.is_err() {
        let _ = delete_host_link(&link.host_if);
    }
    r
}

//! TAP devices, created with the `TUNSETIFF` ioctl so that `IFF_VNET_HDR` is
//! always set (without it a virtio-net guest sees ARP work and IP fail).

use crate::{netns, NetError, Result};
use std::os::fd::AsRawFd;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str, flags: libc::c_short) -> Result<IfReq> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(NetError::BadName(name.to_string()));
        }
        let mut r = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags,
            _pad: [0; 22],
        };
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        Ok(r)
    }
}

fn sys(what: String) -> NetError {
    NetError::Sys {
        what,
        source: std::io::Error::last_os_error(),
    }
}

/// The flags every polydev TAP is created with.
pub const TAP_FLAGS: libc::c_short = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;

/// Creates a persistent TAP named `name` inside namespace `ns`, with
/// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`. The VMM attaches to it by name.
pub fn create_persistent(ns: &str, name: &str) -> Result<()> {
    let name = name.to_string();
    netns::run_in(ns, move || {
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(|e| NetError::Sys {
                what: "opening /dev/net/tun".into(),
                source: e,
            })?;
        let mut req = IfReq::new(&name, TAP_FLAGS)?;
        // SAFETY: `req` is a properly sized, initialised `struct ifreq` and the
        // fd is a valid, open tun device for the duration of the call.
        if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            return Err(sys(format!(
                "TUNSETIFF {name} (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR)"
            )));
        }
        // SAFETY: plain integer argument on a valid tun fd.
        if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
            return Err(sys(format!("TUNSETPERSIST {name}")));
        }
        Ok(())
    })
}

/// What the kernel reports about an existing TAP (from `ip -d link show`,
/// which works while a VMM holds the device, unlike re-attaching to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapInfo {
    /// `IFF_VNET_HDR` is set.
    pub vnet_hdr: bool,
    /// The device outlives its file descriptors.
    pub persist: bool,
    /// It is a TAP (layer 2), not a TUN.
    pub is_tap: bool,
}

/// Reads a TAP's flags in namespace `ns`.
pub fn info(ns: &str, name: &str) -> Result<TapInfo> {
    let out = crate::cmd::ip(&["-n", ns, "-d", "link", "show", "dev", name])?;
    let has = |w: &str| {
        out.split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .any(|p| p[0] == w && p[1] == "on")
    };
    Ok(TapInfo {
        vnet_hdr: has("vnet_hdr"),
        persist: has("persist"),
        is_tap: out.contains("tun type tap"),
    })
}

/// True if a device `name` exists in namespace `ns`.
pub fn exists(ns: &str, name: &str) -> bool {
    crate::netns::exists(ns) && crate::cmd::ip(&["-n", ns, "link", "show", "dev", name]).is_ok()
}

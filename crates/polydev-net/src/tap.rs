//! TAP devices, created with the `TUNSETIFF` ioctl so that `IFF_VNET_HDR` is
//! always set (without it a virtio-net guest sees ARP work and IP fail).

use crate::{netns, NetError, Result};
use std::os::fd::AsRawFd;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
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

/// Reads the flags of an existing TAP in namespace `ns` by attaching to it.
/// Used by tests and `doctor` to prove `IFF_VNET_HDR` is set.
pub fn flags(ns: &str, name: &str) -> Result<libc::c_short> {
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
        // SAFETY: as in `create_persistent`.
        if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            return Err(sys(format!("attaching to TAP {name}")));
        }
        let mut out = IfReq::new(&name, 0)?;
        // SAFETY: `out` is a valid `struct ifreq` the kernel fills in.
        if unsafe { libc::ioctl(tun.as_raw_fd(), TUNGETIFF, &mut out) } < 0 {
            return Err(sys(format!("TUNGETIFF {name}")));
        }
        Ok(out.flags)
    })
}

/// True if `name` exists in namespace `ns`.
pub fn exists(ns: &str, name: &str) -> bool {
    let name = name.to_string();
    netns::run_in(ns, move || {
        Ok(std::path::Path::new("/sys/class/net").join(&name).exists())
    })
    .unwrap_or(false)
}

/// True if the flags include `IFF_VNET_HDR`.
pub fn has_vnet_hdr(flags: libc::c_short) -> bool {
    flags & IFF_VNET_HDR != 0
}

//! Named network namespaces (`/run/netns/<name>`, the iproute2 convention) and
//! doing work inside one from a dedicated thread.

use crate::{cmd, NetError, Result};
use nix::sched::{setns, CloneFlags};
use std::fs::File;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

/// Directory holding the bind mounts of named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(NetError::BadName(name.to_string()))
    }
}

/// Path of a named namespace.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// True if the named namespace exists.
pub fn exists(name: &str) -> bool {
    check_name(name).is_ok() && path(name).exists()
}

/// Serialises `ip netns add/delete` within this process: on first use
/// iproute2 turns `/run/netns` into a shared bind mount, and two concurrent
/// first calls can stack two mounts and hide each other's namespaces.
static NETNS_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Creates a named namespace.
pub fn create(name: &str) -> Result<()> {
    check_name(name)?;
    let _g = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    cmd::ip(&["netns", "add", name]).map(|_| ())
}

/// Deletes a named namespace (and with it every virtual device inside).
pub fn delete(name: &str) -> Result<()> {
    check_name(name)?;
    let _g = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if !exists(name) {
        return Ok(());
    }
    cmd::ip(&["netns", "delete", name]).map(|_| ())
}

/// Names of the namespaces whose name starts with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// Opens the namespace file, for `setns`.
pub fn open(name: &str) -> Result<File> {
    check_name(name)?;
    File::open(path(name)).map_err(|e| NetError::Sys {
        what: format!("opening network namespace {name}"),
        source: e,
    })
}

/// Runs `f` on a fresh thread that has entered the named namespace. Sockets
/// made there belong to that namespace for their whole life, wherever they are
/// used afterwards.
pub fn run_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let file = open(name)?;
    let owned = name.to_string();
    std::thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| NetError::Sys {
                what: format!("entering network namespace {owned}"),
                source: e.into(),
            })?;
            f()
        })
        .map_err(|e| NetError::Sys {
            what: "spawning a namespace thread".into(),
            source: e,
        })?
        .join()
        .unwrap_or_else(|_| {
            Err(NetError::Sys {
                what: format!("namespace thread for {name}"),
                source: std::io::Error::other("panicked"),
            })
        })
}

/// Connects a TCP socket to `addr` from inside the named namespace.
pub fn connect_tcp(name: &str, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    run_in(name, move || {
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| NetError::Sys {
            what: format!("connecting to {addr}"),
            source: e,
        })
    })
}

/// Binds a UDP socket to `addr` inside the named namespace (port 0: any free
/// port). The socket stays in that namespace: what it sends leaves from there.
pub fn udp_bind_in(name: &str, addr: SocketAddr) -> Result<UdpSocket> {
    run_in(name, move || {
        UdpSocket::bind(addr).map_err(|e| NetError::Sys {
            what: format!("binding UDP {addr}"),
            source: e,
        })
    })
}

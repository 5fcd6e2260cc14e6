//! Host networking for VMs: one network namespace per VM holding its TAP.
//!
//! Every VM lives in its own namespace with the same TAP name and the same
//! link-local addresses (see [`polydev_core::guest`]), which makes VMs
//! clone-safe for snapshots. The controller never routes to a guest: it opens
//! sockets *inside* the VM's namespace ([`netns::connect_tcp`]).
//!
//! Namespaces and addresses are managed with iproute2 (`ip`), the TAP itself
//! is created in code so that `IFF_VNET_HDR` is always set ([`tap`]).
#![warn(missing_docs)]

pub mod netns;
pub mod tap;
pub mod veth;

mod cmd;

/// Errors from host networking.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A command (`ip ...`) failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line that was run.
        command: String,
        /// Exit status and stderr.
        detail: String,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A namespace name that could be dangerous on a command line or a path.
    #[error("invalid network namespace name {0:?}: use [a-z0-9-], at most 15 characters")]
    BadName(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, NetError>;

/// Sets up a VM's namespace: creates it (replacing a stale one of the same
/// name), brings up loopback, creates the TAP with `IFF_VNET_HDR` and gives it
/// the host side address of the guest link.
pub fn setup_vm_network(ns: &str) -> Result<()> {
    use polydev_core::guest::{HOST_ADDR, LINK_PREFIX, TAP_MAC, TAP_NAME};
    if netns::exists(ns) {
        tracing::warn!(netns = ns, "replacing stale network namespace");
        netns::delete(ns)?;
    }
    netns::create(ns)?;
    let r = (|| {
        cmd::ip(&["-n", ns, "link", "set", "lo", "up"])?;
        tap::create_persistent(ns, TAP_NAME)?;
        // A fixed MAC: a guest restored from a snapshot keeps its ARP entry
        // for the gateway.
        cmd::ip(&["-n", ns, "link", "set", TAP_NAME, "address", TAP_MAC])?;
        cmd::ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{HOST_ADDR}/{LINK_PREFIX}"),
            "dev",
            TAP_NAME,
        ])?;
        cmd::ip(&["-n", ns, "link", "set", TAP_NAME, "up"])?;
        Ok(())
    })();
    if r.is_err() {
        let _ = netns::delete(ns);
    }
    r
}

/// Removes a VM's namespace and its TAP. Succeeds if they are already gone.
pub fn teardown_vm_network(ns: &str) -> Result<()> {
    if !netns::exists(ns) {
        return Ok(());
    }
    if tap::exists(ns, polydev_core::guest::TAP_NAME) {
        cmd::ip(&["-n", ns, "link", "del", polydev_core::guest::TAP_NAME])?;
    }
    netns::delete(ns)
}

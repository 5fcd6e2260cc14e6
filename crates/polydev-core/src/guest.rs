//! The contract between the host and a guest: addresses, ports, paths and the
//! readiness announcement. The image builder bakes these into images, the VMM
//! drivers put them on the kernel command line, and the agent reads them.

/// Name of the TAP device inside every VM's network namespace. Every VM uses
/// the same name because each lives in its own namespace (clone-safe).
pub const TAP_NAME: &str = "tap0";
/// Host-side address of the TAP, inside the VM's namespace.
pub const HOST_ADDR: &str = "169.254.0.21";
/// The guest's address. Identical for every VM: each sits in its own namespace.
pub const GUEST_ADDR: &str = "169.254.0.22";
/// Prefix length of the host/guest link.
pub const LINK_PREFIX: u8 = 30;
/// Netmask matching [`LINK_PREFIX`], as the kernel's `ip=` parameter wants it.
pub const LINK_NETMASK: &str = "255.255.255.252";
/// MAC address of the host end of the TAP (the guest's gateway), fixed so a
/// guest restored from a snapshot keeps its ARP entry.
pub const TAP_MAC: &str = "06:00:a9:fe:00:15";
/// MAC address of the guest's network interface.
pub const GUEST_MAC: &str = "06:00:a9:fe:00:16";
/// TCP port the agent listens on inside the guest.
pub const AGENT_PORT: u16 = 7070;
/// TCP port of the VNC server in browser images (display `:1`).
pub const VNC_PORT: u16 = 5901;
/// UDP port the screen streamer (`polydev-streamer`, browser images) listens
/// on inside the guest for WebRTC media.
pub const STREAM_PORT: u16 = 7071;
/// The streamer's binary inside browser images.
pub const STREAMER_BIN: &str = "/usr/local/bin/polydev-streamer";

/// Path of the init the golden image runs first: it mounts the per-VM state
/// disk, builds the overlay root and hands over to systemd.
pub const GUEST_INIT: &str = "/usr/sbin/polydev-init";
/// Where the per-VM state disk (`/dev/vdb`) is mounted in the running guest.
pub const STATE_MOUNT: &str = "/polydev/state";
/// Per-VM agent configuration file, inside the state disk (path relative to
/// the disk's root).
pub const AGENT_CONFIG_REL: &str = "config/agent.json";
/// The agent's binary inside the image.
pub const AGENT_BIN: &str = "/usr/local/bin/polydev-agent";
/// The agent's systemd unit name.
pub const AGENT_UNIT: &str = "polydev-agent.service";

/// Marker the agent writes on the serial console once it is listening.
/// The full line is `POLYDEV-AGENT-READY vm=<id> port=<port> uptime_ms=<ms>`.
pub const READY_MARKER: &str = "POLYDEV-AGENT-READY";
/// Marker the guest init writes on the console when it starts (before systemd).
pub const INIT_MARKER: &str = "POLYDEV-INIT";

/// The kernel `ip=` argument that fixes the guest's address (no DHCP) and
/// names its DNS server: the gateway, where the controller's forwarder
/// answers (the guest's `/etc/resolv.conf` links `/proc/net/pnp`).
pub fn kernel_ip_arg() -> String {
    format!("ip={GUEST_ADDR}::{HOST_ADDR}:{LINK_NETMASK}::eth0:off:{HOST_ADDR}")
}

/// Port of the controller's egress gate inside each VM's namespace: guest
/// TCP that policy sends through the controller (SNI/Host checks, per-user
/// proxies) is redirected there.
pub const GATE_PORT: u16 = 15001;

/// The per-VM configuration the agent reads at start-up from the state disk.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct AgentConfig {
    /// The VM's id, echoed by the agent's health answer.
    pub vm_id: String,
    /// Bearer token every agent request must carry.
    pub token: String,
    /// TCP port to listen on.
    pub port: u16,
}

/// A parsed readiness line from the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyLine {
    /// VM id the agent announced.
    pub vm_id: String,
    /// Port it listens on.
    pub port: u16,
    /// Guest uptime (ms) when the agent became ready.
    pub uptime_ms: u64,
}

impl ReadyLine {
    /// Formats the line the agent writes.
    pub fn render(&self) -> String {
        format!(
            "{READY_MARKER} vm={} port={} uptime_ms={}",
            self.vm_id, self.port, self.uptime_ms
        )
    }

    /// Finds and parses a readiness line anywhere in `text` (the console log).
    pub fn find(text: &str) -> Option<ReadyLine> {
        let start = text.find(READY_MARKER)?;
        let line = text[start..].lines().next()?;
        let mut vm_id = None;
        let mut port = None;
        let mut uptime_ms = None;
        for field in line.split_whitespace().skip(1) {
            match field.split_once('=') {
                Some(("vm", v)) => vm_id = Some(v.to_string()),
                Some(("port", v)) => port = v.parse().ok(),
                Some(("uptime_ms", v)) => uptime_ms = v.parse().ok(),
                _ => {}
            }
        }
        Some(ReadyLine {
            vm_id: vm_id?,
            port: port?,
            uptime_ms: uptime_ms?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_round_trips() {
        let l = ReadyLine {
            vm_id: "vm-1".into(),
            port: 7070,
            uptime_ms: 4321,
        };
        let console = format!("[    1.0] boot\r\n{}\r\nmore\n", l.render());
        assert_eq!(ReadyLine::find(&console), Some(l));
    }

    #[test]
    fn partial_ready_line_is_not_ready() {
        assert_eq!(ReadyLine::find("POLYDEV-AGENT-READY vm=x port="), None);
        assert_eq!(ReadyLine::find("nothing here"), None);
    }

    #[test]
    fn ip_arg_has_no_dhcp() {
        assert_eq!(
            kernel_ip_arg(),
            "ip=169.254.0.22::169.254.0.21:255.255.255.252::eth0:off:169.254.0.21"
        );
    }
}

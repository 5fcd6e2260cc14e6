//! What may leave a VM, and how: the host firewall ([`host`]), each VM's
//! link and namespace firewall ([`vmtable`], over [`polydev_net::veth`]),
//! its policy ([`policy`]), its DNS forwarder ([`dns`]), the gate that
//! checks names and carries TCP through per-user proxies ([`gate`],
//! [`upstream`]).
//!
//! ```text
//! guest 169.254.0.22 ─tap0─▶ [VM netns: polydev_vm table, DNS :53, gate :15001]
//!        SNAT to slot address ─veth0══pe<tag>-<slot>─▶ [host: polydev_<tag> table] ─uplink─▶
//! ```
//!
//! [`Egress`] owns the per-VM services of this controller and is the only
//! way the rest of the controller changes them.
#![warn(missing_docs)]

pub mod dns;
pub mod doctor;
pub mod gate;
pub mod host;
pub mod nft;
pub mod policy;
pub mod state;
pub mod testnet;
pub mod upstream;
pub mod vmtable;

use ipnet::Ipv4Net;
use policy::Policy;
use polydev_core::guest::{GATE_PORT, HOST_ADDR};
use polydev_net::veth::VethLink;
use state::VmState;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use upstream::ProxyUrl;

/// Errors from egress.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// `nft` failed.
    #[error("nftables: {0}")]
    Nft(String),
    /// A link or namespace operation failed.
    #[error(transparent)]
    Net(#[from] polydev_net::NetError),
    /// A bad setting.
    #[error("{0}")]
    Config(String),
    /// A policy entry is not acceptable.
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    /// Not known here.
    #[error("{0}")]
    NotFound(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, EgressError>;

/// How egress is set up on this host.
#[derive(Debug, Clone)]
pub struct EgressConfig {
    /// This controller's tag (names its table and links).
    pub tag: String,
    /// The uplink; `None`: VMs reach nothing beyond their namespace.
    pub uplink: Option<String>,
    /// Where VM link addresses come from (a /30 per slot).
    pub subnet: Ipv4Net,
    /// Ranges taken out of the always-deny set.
    pub allow_private: Vec<Ipv4Net>,
    /// DNS upstreams.
    pub dns: dns::Upstreams,
    /// Host addresses users' traffic may leave from.
    pub source_pool: Vec<Ipv4Addr>,
}

impl EgressConfig {
    /// Name of the host table.
    pub fn table(&self) -> String {
        format!("polydev_{}", self.tag)
    }
    /// Prefix of the host ends of VM links.
    pub fn link_prefix(&self) -> String {
        format!("pe{}-", self.tag)
    }
    /// How many slots the subnet holds.
    pub fn max_slots(&self) -> u64 {
        1u64 << (32 - self.subnet.prefix_len()).saturating_sub(2)
    }
    /// The link of a slot.
    pub fn link(&self, slot: i64) -> Result<VethLink> {
        if slot < 0 || slot as u64 >= self.max_slots() {
            return Err(EgressError::Config(format!(
                "slot {slot} does not fit in the egress subnet {} ({} slots); give POLYDEV_EGRESS_SUBNET a shorter prefix",
                self.subnet,
                self.max_slots()
            )));
        }
        let base = u32::from(self.subnet.network()) + 4 * slot as u32;
        Ok(VethLink {
            host_if: format!("{}{slot}", self.link_prefix()),
            host_addr: Ipv4Addr::from(base + 1),
            ns_addr: Ipv4Addr::from(base + 2),
            prefix: 30,
        })
    }
}

/// A VM's service task (DNS, gate), stopped when its VM is detached.
pub(crate) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A user's egress identity, as the controller holds it (proxy opened).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// Upstream proxy for all of the user's TCP.
    pub proxy: Option<ProxyUrl>,
    /// The host address the user's traffic leaves from.
    pub source: Option<Ipv4Addr>,
}

/// A VM to attach.
#[derive(Debug, Clone)]
pub struct VmNet {
    /// Its id.
    pub vm_id: String,
    /// Its namespace.
    pub netns: String,
    /// Its slot.
    pub slot: i64,
}

struct Attached {
    state: Arc<VmState>,
    slot: i64,
    identity: Identity,
    _tasks: Vec<AbortOnDrop>,
}

/// What `GET /api/vms/:id/egress` reports besides the policy.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VmEgressReport {
    /// The VM's address as the host sees it.
    pub address: Ipv4Addr,
    /// Host end of its link.
    pub link: String,
    /// The address third parties see, when the user has one.
    pub source_address: Option<Ipv4Addr>,
    /// The user's proxy, without credentials.
    pub proxy: Option<String>,
    /// Packets out (forwarded and through the gate).
    pub packets_out: u64,
    /// Bytes out.
    pub bytes_out: u64,
    /// Packets dropped by policy.
    pub dropped_packets: u64,
    /// Counts kept in memory since the controller started.
    #[serde(flatten)]
    pub soft: state::SoftCounts,
    /// The last failure (an unreachable proxy, say).
    pub last_error: Option<String>,
}

/// This controller's egress: the host table and every attached VM.
pub struct Egress {
    cfg: EgressConfig,
    host: host::HostFirewall,
    upstreams: Arc<dns::Upstreams>,
    vms: Mutex<HashMap<String, Attached>>,
}

impl Egress {
    /// Installs the host table (replacing this controller's earlier one),
    /// with the source addresses of `sources` (VM address → pool address).
    pub fn start(cfg: EgressConfig, sources: &[(Ipv4Addr, Ipv4Addr)]) -> Result<Arc<Egress>> {
        let fw = host::HostFirewall {
            table: cfg.table(),
            link_prefix: cfg.link_prefix(),
            uplink: cfg.uplink.clone(),
            subnet: cfg.subnet,
            exempt: cfg.allow_private.clone(),
            host_addrs: host::host_addresses(),
        };
        if let Some(u) = &cfg.uplink {
            if !polydev_net::veth::host_link_exists(u) {
                return Err(EgressError::Config(format!(
                    "the egress uplink {u} does not exist (POLYDEV_EGRESS_UPLINK; `ip link` lists the host's interfaces; `none` turns egress off)"
                )));
            }
            let fwd = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
            if fwd.trim() != "1" {
                std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| {
                    EgressError::Config(format!(
                        "turning on net.ipv4.ip_forward for VM egress: {e}"
                    ))
                })?;
                tracing::warn!("turned on net.ipv4.ip_forward for VM egress");
            }
        }
        fw.install(sources)?;
        tracing::info!(table = %fw.table, uplink = ?cfg.uplink, subnet = %cfg.subnet, dns = ?cfg.dns.addrs, "egress firewall installed");
        Ok(Arc::new(Egress {
            upstreams: Arc::new(cfg.dns.clone()),
            host: fw,
            cfg,
            vms: Mutex::new(HashMap::new()),
        }))
    }

    /// The configuration.
    pub fn config(&self) -> &EgressConfig {
        &self.cfg
    }

    /// The host firewall.
    pub fn host(&self) -> &host::HostFirewall {
        &self.host
    }

    /// The DNS upstreams.
    pub fn upstreams(&self) -> &dns::Upstreams {
        &self.upstreams
    }

    fn state(&self, vm_id: &str) -> Result<Arc<VmState>> {
        self.vms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(vm_id)
            .map(|a| a.state.clone())
            .ok_or_else(|| EgressError::NotFound(format!("VM {vm_id} has no egress attached")))
    }

    /// Whether a VM is attached.
    pub fn is_attached(&self, vm_id: &str) -> bool {
        self.vms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(vm_id)
    }

    /// Gives a VM its link (made when missing), its namespace firewall, its
    /// source address, its DNS forwarder and gate. Idempotent: a VM found
    /// after a restart is attached the same way. Returns the time it took.
    pub async fn attach(
        &self,
        vm: &VmNet,
        policy: &Policy,
        identity: Identity,
    ) -> Result<Duration> {
        let started = Instant::now();
        let compiled = policy.compile()?;
        let link = self.cfg.link(vm.slot)?;
        let rules_proxied = identity.proxy.is_some();
        let (udp, tcp, gate) = {
            let ns = vm.netns.clone();
            let link = link.clone();
            let c = compiled.clone();
            tokio::task::spawn_blocking(move || -> Result<_> {
                let ns_ok = polydev_net::tap::exists(&ns, polydev_net::veth::NS_IF);
                if !ns_ok || !polydev_net::veth::host_link_exists(&link.host_if) {
                    polydev_net::veth::create(&ns, &link)?;
                }
                vmtable::VmRules {
                    ns_addr: link.ns_addr,
                    policy: &c,
                    proxied: rules_proxied,
                }
                .apply(&ns)?;
                let sockets = polydev_net::netns::run_in(&ns, || {
                    let dns: SocketAddr = format!("{HOST_ADDR}:53").parse().expect("constant");
                    let gate: SocketAddr = format!("{HOST_ADDR}:{GATE_PORT}")
                        .parse()
                        .expect("constant");
                    let sys = |what: &str, e: std::io::Error| polydev_net::NetError::Sys {
                        what: what.to_string(),
                        source: e,
                    };
                    let udp =
                        std::net::UdpSocket::bind(dns).map_err(|e| sys("binding DNS (UDP)", e))?;
                    let tcp = std::net::TcpListener::bind(dns)
                        .map_err(|e| sys("binding DNS (TCP)", e))?;
                    let g = std::net::TcpListener::bind(gate)
                        .map_err(|e| sys("binding the egress gate", e))?;
                    udp.set_nonblocking(true)
                        .map_err(|e| sys("DNS socket", e))?;
                    tcp.set_nonblocking(true)
                        .map_err(|e| sys("DNS socket", e))?;
                    g.set_nonblocking(true).map_err(|e| sys("gate socket", e))?;
                    Ok((udp, tcp, g))
                })?;
                Ok(sockets)
            })
            .await
            .map_err(|e| EgressError::Config(format!("egress set-up task: {e}")))??
        };
        let io = |e: std::io::Error| EgressError::Config(format!("egress sockets: {e}"));
        let udp = tokio::net::UdpSocket::from_std(udp).map_err(io)?;
        let tcp = tokio::net::TcpListener::from_std(tcp).map_err(io)?;
        let gate = tokio::net::TcpListener::from_std(gate).map_err(io)?;
        let state = Arc::new(VmState::new(
            &vm.vm_id,
            &vm.netns,
            link.ns_addr,
            policy.clone(),
            compiled,
            identity.proxy.clone(),
        ));
        {
            let host = self.host.clone();
            let src = identity.source;
            let addr = link.ns_addr;
            tokio::task::spawn_blocking(move || host.set_source(addr, src))
                .await
                .map_err(|e| EgressError::Nft(e.to_string()))??;
        }
        let tasks = vec![
            AbortOnDrop(tokio::spawn(dns::serve(
                state.clone(),
                self.upstreams.clone(),
                udp,
                tcp,
            ))),
            AbortOnDrop(tokio::spawn(gate::serve(state.clone(), gate))),
        ];
        self.vms.lock().unwrap_or_else(|e| e.into_inner()).insert(
            vm.vm_id.clone(),
            Attached {
                state,
                slot: vm.slot,
                identity,
                _tasks: tasks,
            },
        );
        let took = started.elapsed();
        tracing::info!(vm_id = %vm.vm_id, link = %link.host_if, address = %link.ns_addr, ms = took.as_millis() as u64, "egress attached");
        Ok(took)
    }

    /// Replaces a running VM's policy at once (one nft transaction).
    pub async fn set_policy(&self, vm_id: &str, policy: &Policy) -> Result<()> {
        let compiled = policy.compile()?;
        let st = self.state(vm_id)?;
        let proxied = st.proxy().is_some();
        let (ns, addr) = (st.netns.clone(), st.ns_addr);
        let c = compiled.clone();
        tokio::task::spawn_blocking(move || {
            vmtable::VmRules {
                ns_addr: addr,
                policy: &c,
                proxied,
            }
            .apply(&ns)
        })
        .await
        .map_err(|e| EgressError::Nft(e.to_string()))??;
        st.set_policy(policy.clone(), compiled);
        tracing::info!(vm_id, "egress policy replaced");
        Ok(())
    }

    /// Changes the identity (proxy, source address) of an attached VM.
    pub async fn set_identity(&self, vm_id: &str, identity: Identity) -> Result<()> {
        let st = self.state(vm_id)?;
        let c = st.policy();
        let (ns, addr) = (st.netns.clone(), st.ns_addr);
        let proxied = identity.proxy.is_some();
        let host = self.host.clone();
        let src = identity.source;
        tokio::task::spawn_blocking(move || -> Result<()> {
            vmtable::VmRules {
                ns_addr: addr,
                policy: &c,
                proxied,
            }
            .apply(&ns)?;
            host.set_source(addr, src)
        })
        .await
        .map_err(|e| EgressError::Nft(e.to_string()))??;
        st.set_proxy(identity.proxy.clone());
        if let Some(a) = self
            .vms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(vm_id)
        {
            a.identity = identity;
        }
        Ok(())
    }

    /// Stops a VM's services, removes its source element and its link.
    /// Succeeds when they are already gone.
    pub async fn detach(&self, vm_id: &str, slot: i64) -> Result<()> {
        let attached = self
            .vms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(vm_id);
        drop(attached);
        let link = self.cfg.link(slot)?;
        let host = self.host.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            host.set_source(link.ns_addr, None)?;
            polydev_net::veth::delete_host_link(&link.host_if)?;
            Ok(())
        })
        .await
        .map_err(|e| EgressError::Nft(e.to_string()))?
    }

    /// Policy, counters and identity of an attached VM.
    pub async fn report(&self, vm_id: &str) -> Result<(Policy, VmEgressReport)> {
        let (st, slot, identity) = {
            let g = self.vms.lock().unwrap_or_else(|e| e.into_inner());
            let a = g.get(vm_id).ok_or_else(|| {
                EgressError::NotFound(format!("VM {vm_id} has no egress attached"))
            })?;
            (a.state.clone(), a.slot, a.identity.clone())
        };
        let ns = st.netns.clone();
        let (p, b, d) = tokio::task::spawn_blocking(move || vmtable::counters(&ns))
            .await
            .map_err(|e| EgressError::Nft(e.to_string()))??;
        let link = self.cfg.link(slot)?;
        Ok((
            st.policy_doc(),
            VmEgressReport {
                address: link.ns_addr,
                link: link.host_if,
                source_address: identity.source,
                proxy: identity.proxy.as_ref().map(|p| p.redacted()),
                packets_out: p,
                bytes_out: b,
                dropped_packets: d,
                soft: st.soft_counts(),
                last_error: st.last_error(),
            },
        ))
    }

    /// The last egress failure of a VM (an unreachable proxy, say).
    pub fn last_error(&self, vm_id: &str) -> Option<String> {
        self.state(vm_id).ok().and_then(|s| s.last_error())
    }

    /// Removes host links and source elements no slot in `owned` holds.
    pub async fn sweep(&self, owned: &[i64]) -> Vec<String> {
        let mut keep_links = Vec::new();
        let mut keep_addrs = Vec::new();
        for s in owned {
            if let Ok(l) = self.cfg.link(*s) {
                keep_links.push(l.host_if);
                keep_addrs.push(l.ns_addr);
            }
        }
        let prefix = self.cfg.link_prefix();
        let host = self.host.clone();
        tokio::task::spawn_blocking(move || {
            let mut removed = Vec::new();
            for l in polydev_net::veth::list_host_links(&prefix) {
                if !keep_links.contains(&l) && polydev_net::veth::delete_host_link(&l).is_ok() {
                    removed.push(format!("veth {l}"));
                }
            }
            for (k, _) in host.sources().unwrap_or_default() {
                if !keep_addrs.contains(&k) && host.set_source(k, None).is_ok() {
                    removed.push(format!("source element {k}"));
                }
            }
            removed
        })
        .await
        .unwrap_or_default()
    }

    /// Checks that a proxy answers from inside a VM's namespace (or from
    /// the host when `ns` is `None`): an error names the proxy.
    pub async fn check_proxy(
        &self,
        proxy: &ProxyUrl,
        ns: Option<&str>,
    ) -> std::result::Result<(), String> {
        let addr = proxy.resolve().await?;
        if let std::net::IpAddr::V4(ip) = addr.ip() {
            let exempt = self.cfg.allow_private.iter().any(|n| n.contains(&ip));
            let denied = host::ALWAYS_DENY
                .iter()
                .filter_map(|s| s.parse::<Ipv4Net>().ok())
                .any(|n| n.contains(&ip))
                || self.host.host_addrs.contains(&ip);
            if denied && !exempt {
                return Err(format!(
                    "the egress proxy {} is at {ip}, an address VMs may not reach (exempt its range with POLYDEV_EGRESS_ALLOW_PRIVATE)",
                    proxy.redacted()
                ));
            }
        }
        let r = match ns {
            Some(ns) => gate::dial_in(ns, addr).await,
            None => tokio::time::timeout(
                Duration::from_secs(10),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer in 10s",
                ))
            }),
        };
        r.map(|_| ()).map_err(|e| {
            format!(
                "the egress proxy {} cannot be reached: {e}",
                proxy.redacted()
            )
        })
    }
}

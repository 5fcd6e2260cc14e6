//! What the controller knows of one VM's egress while it runs: its policy,
//! its upstream proxy, the addresses DNS let through, its last failure.
//! Shared by the VM's DNS forwarder and its gate.

use crate::policy::{Compiled, Policy};
use crate::upstream::ProxyUrl;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// One VM's egress state.
#[derive(Debug)]
pub struct VmState {
    /// The VM.
    pub vm_id: String,
    /// Its network namespace.
    pub netns: String,
    /// Its link address (what the host sees).
    pub ns_addr: Ipv4Addr,
    policy: RwLock<(Policy, Arc<Compiled>)>,
    proxy: RwLock<Option<Arc<ProxyUrl>>>,
    learned: Mutex<HashMap<Ipv4Addr, Instant>>,
    last_error: Mutex<Option<String>>,
    refused_names: AtomicU64,
    gate_refused: AtomicU64,
    gate_connections: AtomicU64,
}

/// Counts kept in memory (since the controller started).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SoftCounts {
    /// DNS questions answered NXDOMAIN by policy.
    pub dns_refused: u64,
    /// Connections the gate refused (name or address not allowed, proxy failed).
    pub gate_refused: u64,
    /// Connections the gate carried.
    pub gate_connections: u64,
}

impl VmState {
    /// State for a VM with a checked policy.
    pub fn new(
        vm_id: &str,
        netns: &str,
        ns_addr: Ipv4Addr,
        policy: Policy,
        compiled: Compiled,
        proxy: Option<ProxyUrl>,
    ) -> VmState {
        VmState {
            vm_id: vm_id.into(),
            netns: netns.into(),
            ns_addr,
            policy: RwLock::new((policy, Arc::new(compiled))),
            proxy: RwLock::new(proxy.map(Arc::new)),
            learned: Mutex::new(HashMap::new()),
            last_error: Mutex::new(None),
            refused_names: AtomicU64::new(0),
            gate_refused: AtomicU64::new(0),
            gate_connections: AtomicU64::new(0),
        }
    }

    /// The compiled policy in force.
    pub fn policy(&self) -> Arc<Compiled> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    /// The policy in force, as given.
    pub fn policy_doc(&self) -> Policy {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    pub(crate) fn set_policy(&self, p: Policy, c: Compiled) {
        if !c.domain_mode() {
            self.learned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = (p, Arc::new(c));
    }

    /// The upstream proxy carrying the VM's TCP, if any.
    pub fn proxy(&self) -> Option<Arc<ProxyUrl>> {
        self.proxy.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_proxy(&self, p: Option<ProxyUrl>) {
        *self.proxy.write().unwrap_or_else(|e| e.into_inner()) = p.map(Arc::new);
    }

    /// Lets `addrs` through the VM's firewall for `ttl`, and remembers them
    /// for the gate.
    pub async fn learn(&self, addrs: &[Ipv4Addr], ttl: Duration) -> crate::Result<()> {
        {
            let mut m = self.learned.lock().unwrap_or_else(|e| e.into_inner());
            let until = Instant::now() + ttl;
            m.retain(|_, t| *t > Instant::now());
            for a in addrs {
                m.insert(*a, until);
            }
        }
        let ns = self.netns.clone();
        let addrs = addrs.to_vec();
        tokio::task::spawn_blocking(move || crate::vmtable::allow_learned(&ns, &addrs, ttl))
            .await
            .map_err(|e| crate::EgressError::Nft(e.to_string()))?
    }

    /// Whether DNS let `ip` through (and it has not expired).
    pub fn learned(&self, ip: Ipv4Addr) -> bool {
        self.learned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ip)
            .is_some_and(|t| *t > Instant::now())
    }

    /// The last thing that went wrong with this VM's egress, in words.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_error(&self, e: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
    }

    pub(crate) fn note_refused_name(&self) {
        self.refused_names.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn note_gate(&self, refused: bool) {
        if refused {
            self.gate_refused.fetch_add(1, Ordering::Relaxed);
        } else {
            self.gate_connections.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts kept in memory.
    pub fn soft_counts(&self) -> SoftCounts {
        SoftCounts {
            dns_refused: self.refused_names.load(Ordering::Relaxed),
            gate_refused: self.gate_refused.load(Ordering::Relaxed),
            gate_connections: self.gate_connections.load(Ordering::Relaxed),
        }
    }
}

//! The rulesets against the real `nft`, inside network namespaces the test
//! makes (never the host's own tables): both tables load, policy changes
//! keep counters and learned addresses, source elements come and go.
//! Needs root and the nftables package; skipped (with a message) without.

use polydev_egress::host::HostFirewall;
use polydev_egress::nft::{self, Target};
use polydev_egress::policy::Policy;
use polydev_egress::vmtable::{self, VmRules};
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

struct Ns(String);
impl Ns {
    fn new(tag: &str) -> Option<Ns> {
        if !nix::unistd::Uid::effective().is_root()
            || Command::new("nft").arg("-v").output().is_err()
        {
            eprintln!("skipped: needs root and nft");
            return None;
        }
        let name = format!("pdt{tag}-{}", std::process::id() % 100000);
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        assert!(Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success());
        Some(Ns(name))
    }
}
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn policy(json: &str) -> polydev_egress::policy::Compiled {
    serde_json::from_str::<Policy>(json)
        .unwrap()
        .compile()
        .unwrap()
}

#[test]
fn vm_table_loads_updates_and_keeps_state() {
    let Some(ns) = Ns::new("vt") else { return };
    let learned = || {
        nft::run(
            Target::Netns(&ns.0),
            &["list", "set", "ip", "polydev_vm", "dns_allowed"],
            None,
        )
        .unwrap()
    };
    let addr = "10.231.0.2".parse().unwrap();
    let open = policy("{}");
    VmRules {
        ns_addr: addr,
        policy: &open,
        proxied: false,
    }
    .apply(&ns.0)
    .unwrap();
    let dom = policy(r#"{"allowDomains": ["a.example"], "denyCidrs": ["203.0.113.9"]}"#);
    VmRules {
        ns_addr: addr,
        policy: &dom,
        proxied: false,
    }
    .apply(&ns.0)
    .unwrap();
    vmtable::allow_learned(
        &ns.0,
        &["203.0.113.10".parse().unwrap()],
        Duration::from_secs(60),
    )
    .unwrap();
    // Again: the timeout is renewed, not refused as a duplicate.
    vmtable::allow_learned(
        &ns.0,
        &["203.0.113.10".parse().unwrap()],
        Duration::from_secs(90),
    )
    .unwrap();
    let set = learned();
    assert!(set.contains("203.0.113.10"), "{set}");
    // A policy change in domain mode keeps what DNS taught.
    let dom2 = policy(r#"{"allowDomains": ["a.example", "b.example"]}"#);
    VmRules {
        ns_addr: addr,
        policy: &dom2,
        proxied: true,
    }
    .apply(&ns.0)
    .unwrap();
    let set = learned();
    assert!(set.contains("203.0.113.10"), "{set}");
    let rules = nft::run(
        Target::Netns(&ns.0),
        &["list", "table", "ip", "polydev_vm"],
        None,
    )
    .unwrap();
    assert!(rules.contains("redirect to :15001"), "{rules}");
    assert!(
        !rules.contains("203.0.113.9"),
        "old deny list kept: {rules}"
    );
    // Leaving domain mode forgets learned addresses.
    let off = policy(r#"{"internet": false}"#);
    VmRules {
        ns_addr: addr,
        policy: &off,
        proxied: false,
    }
    .apply(&ns.0)
    .unwrap();
    let set = learned();
    assert!(!set.contains("203.0.113.10"), "{set}");
    let (p, b, d) = vmtable::counters(&ns.0).unwrap();
    assert_eq!((p, b, d), (0, 0, 0));
}

#[test]
fn host_table_sources_come_and_go() {
    let Some(ns) = Ns::new("ht") else { return };
    let fw = HostFirewall {
        table: "polydev_test".into(),
        link_prefix: "petest-".into(),
        uplink: Some("lo".into()),
        subnet: "10.231.0.0/16".parse().unwrap(),
        exempt: vec!["10.9.0.0/16".parse().unwrap()],
        host_addrs: vec!["192.0.2.2".parse().unwrap()],
    };
    // Each step runs in the test's namespace ("host" there is its own).
    let step = |f: fn(&HostFirewall) -> polydev_egress::Result<Vec<(Ipv4Addr, Ipv4Addr)>>| {
        let fw = fw.clone();
        polydev_net::netns::run_in(&ns.0, move || Ok(f(&fw)))
            .unwrap()
            .unwrap()
    };
    let a = |s: &str| -> Ipv4Addr { s.parse().unwrap() };
    step(|fw| {
        fw.install(&[(
            "10.231.0.2".parse().unwrap(),
            "198.51.100.11".parse().unwrap(),
        )])
        .map(|_| vec![])
    });
    step(|fw| {
        fw.set_source(
            "10.231.0.6".parse().unwrap(),
            Some("198.51.100.12".parse().unwrap()),
        )
        .map(|_| vec![])
    });
    step(|fw| {
        fw.set_source(
            "10.231.0.2".parse().unwrap(),
            Some("198.51.100.13".parse().unwrap()),
        )
        .map(|_| vec![])
    });
    step(|fw| {
        fw.set_source("10.231.0.6".parse().unwrap(), None)
            .map(|_| vec![])
    });
    assert_eq!(
        step(|fw| fw.sources()),
        vec![(a("10.231.0.2"), a("198.51.100.13"))]
    );
    // Installing again replaces the table whole.
    step(|fw| fw.install(&[]).map(|_| vec![]));
    assert!(step(|fw| fw.sources()).is_empty());
    // Removing is idempotent.
    step(|fw| fw.remove().map(|_| vec![]));
    step(|fw| fw.remove().map(|_| vec![]));
}

//! A stand-in "provider network" for the connect-flow tests: a network
//! namespace the test creates, holding the OAuth 2.0 stand-in server
//! (`polydev_login::oauth_standin`) at `TEST_PROVIDER_ADDR:TEST_PROVIDER_PORT`,
//! which a browser VM's namespace reaches over a veth pair made by
//! [`ProviderNet::attach`]. Nothing leaves the machine: the only routes lead
//! between the two namespaces. Dropping it deletes the namespace (and with it
//! every veth pair) and stops the server.

use polydev_login::standins::{TEST_PROVIDER_ADDR, TEST_PROVIDER_PORT};
use std::process::Command;

/// The provider side of the link.
const PROVIDER_LINK_ADDR: &str = "10.253.0.5";
/// The VM namespace's side of the link.
const VM_LINK_ADDR: &str = "10.253.0.6";

pub struct ProviderNet {
    pub ns: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<std::thread::JoinHandle<()>>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl ProviderNet {
    /// Creates the namespace and starts the OAuth stand-in in it.
    pub fn start() -> ProviderNet {
        let ns = format!("pdtprov-{:04x}", std::process::id() & 0xffff);
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ip(&["netns", "add", &ns]);
        let mut me = ProviderNet {
            ns: ns.clone(),
            stop: None,
            server: None,
        };
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{TEST_PROVIDER_ADDR}/32"),
            "dev",
            "lo",
        ]);
        let listener = polydev_net::netns::run_in(&ns, || {
            std::net::TcpListener::bind((TEST_PROVIDER_ADDR, TEST_PROVIDER_PORT)).map_err(|e| {
                polydev_net::NetError::Sys {
                    what: "binding the OAuth stand-in".into(),
                    source: e,
                }
            })
        })
        .expect("bind the OAuth stand-in inside the provider namespace");
        listener.set_nonblocking(true).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        me.stop = Some(tx);
        me.server = Some(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                tokio::select! {
                    r = polydev_login::oauth_standin::serve(l) => { r.unwrap(); }
                    _ = rx => {}
                }
            });
        }));
        me
    }

    /// Links the browser VM's namespace `vm_ns` to the provider: a veth
    /// pair, forwarding in the VM's namespace, routes both ways. Each VM has
    /// the same guest address, so attach one VM at a time (the pair goes
    /// away with the VM's namespace).
    pub fn attach(&self, vm_ns: &str) {
        let ns = &self.ns;
        // A pair left from an earlier VM (its namespace already gone) has gone with it.
        let _ = Command::new("ip")
            .args(["-n", ns, "link", "del", "pdtp0"])
            .output();
        ip(&[
            "-n", ns, "link", "add", "pdtp0", "type", "veth", "peer", "name", "pdtv0", "netns",
            vm_ns,
        ]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{PROVIDER_LINK_ADDR}/30"),
            "dev",
            "pdtp0",
        ]);
        ip(&["-n", ns, "link", "set", "pdtp0", "up"]);
        ip(&[
            "-n",
            vm_ns,
            "addr",
            "add",
            &format!("{VM_LINK_ADDR}/30"),
            "dev",
            "pdtv0",
        ]);
        ip(&["-n", vm_ns, "link", "set", "pdtv0", "up"]);
        ip(&[
            "-n",
            vm_ns,
            "route",
            "add",
            &format!("{TEST_PROVIDER_ADDR}/32"),
            "via",
            PROVIDER_LINK_ADDR,
        ]);
        let guest_net = format!("{}/30", "169.254.0.20");
        ip(&[
            "-n",
            ns,
            "route",
            "replace",
            &guest_net,
            "via",
            VM_LINK_ADDR,
        ]);
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                vm_ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "enabling forwarding in {vm_ns}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for ProviderNet {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.server.take() {
            let _ = h.join();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

//! Creates real namespaces and TAPs (needs root), and removes them.

use polydev_net::{netns, setup_vm_network, tap, teardown_vm_network};

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", std::process::id() % 100000)
}

#[test]
fn vm_network_has_vnet_hdr_tap_and_is_removed() {
    let ns = unique("pdt-a");
    struct Guard(String);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = teardown_vm_network(&self.0);
        }
    }
    let _g = Guard(ns.clone());
    setup_vm_network(&ns).expect("setup");
    assert!(netns::exists(&ns));
    let info = tap::info(&ns, "tap0").expect("tap info");
    assert_eq!(
        info,
        tap::TapInfo {
            vnet_hdr: true,
            persist: true,
            is_tap: true
        }
    );
    assert!(tap::exists(&ns, "tap0"));
    assert!(!tap::exists(&ns, "tap1"));
    // Setting up again over a stale namespace replaces it.
    setup_vm_network(&ns).expect("setup over stale");
    teardown_vm_network(&ns).expect("teardown");
    assert!(!netns::exists(&ns));
    assert!(!tap::exists(&ns, "tap0"));
    teardown_vm_network(&ns).expect("teardown is idempotent");
}

#[test]
fn sockets_made_inside_a_namespace_stay_there() {
    let ns = unique("pdt-b");
    netns::create(&ns).unwrap();
    struct Guard(String);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = netns::delete(&self.0);
        }
    }
    let _g = Guard(ns.clone());
    // Loopback is down in a fresh namespace: connecting must fail there even
    // though the host's loopback has a listener on that port.
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = host.local_addr().unwrap();
    let r = netns::connect_tcp(&ns, addr, std::time::Duration::from_millis(300));
    assert!(
        r.is_err(),
        "connect from inside the namespace reached the host"
    );
    assert!(netns::create("Bad Name").is_err());
}

#[test]
fn udp_sockets_bound_inside_a_namespace_stay_there() {
    let ns = unique("pdt-c");
    netns::create(&ns).unwrap();
    struct Guard(String);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = netns::delete(&self.0);
        }
    }
    let _g = Guard(ns.clone());
    polydev_net::netns::run_in(&ns, || {
        std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .map(|_| ())
            .map_err(|e| polydev_net::NetError::Sys {
                what: "ip link set lo up".into(),
                source: e,
            })
    })
    .unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let a = netns::udp_bind_in(&ns, any).unwrap();
    let b = netns::udp_bind_in(&ns, any).unwrap();
    b.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    a.send_to(b"in-ns", b.local_addr().unwrap()).unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = b.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"in-ns"[..], a.local_addr().unwrap()));
    // The host's loopback does not see it: a host socket on the same port
    // number is another socket.
    let host = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    host.set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    let _ = a.send_to(b"stray", host.local_addr().unwrap());
    assert!(
        host.recv_from(&mut buf).is_err(),
        "a datagram left the namespace"
    );
}

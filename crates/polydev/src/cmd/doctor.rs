//! `polydev doctor`: what this host offers and what polydev will use.

use super::common::Common;
use std::process::Command;

fn tool_version(bin: &str, arg: &str) -> String {
    match Command::new(bin).arg(arg).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string(),
        Ok(o) => format!("present but `{bin} {arg}` failed ({})", o.status),
        Err(_) => "NOT FOUND".into(),
    }
}

/// Prints the host check.
pub async fn run(common: Common) -> anyhow::Result<()> {
    let cfg = common.config();
    let qemu = polydev_vmm::qemu::default_binary();
    println!("polydev {}", env!("CARGO_PKG_VERSION"));
    println!("qemu:          {}", tool_version(&qemu, "--version"));
    let fc = polydev_vmm::firecracker::find_binary();
    match &fc {
        Some(p) => println!(
            "firecracker:   {} ({})",
            p.display(),
            tool_version(&p.to_string_lossy(), "--version")
        ),
        None => println!("firecracker:   not found (set POLYDEV_FIRECRACKER or put it on PATH)"),
    }
    println!("mmdebstrap:    {}", tool_version("mmdebstrap", "--version"));
    println!(
        "mkfs.ext4:     {}",
        if Command::new("mkfs.ext4").arg("-V").output().is_ok() {
            "present"
        } else {
            "NOT FOUND"
        }
    );
    println!("ip (iproute2): {}", tool_version("ip", "-V"));
    println!(
        "/dev/kvm:      {}",
        if std::path::Path::new("/dev/kvm").exists() {
            "present"
        } else {
            "absent"
        }
    );
    println!(
        "/dev/net/tun:  {}",
        if std::path::Path::new("/dev/net/tun").exists() {
            "present"
        } else {
            "ABSENT (VM networking will fail)"
        }
    );
    let arts = polydev_controller::artifacts::locate(&cfg, None);
    match &arts {
        Ok(a) => {
            println!("kernel:        {}", a.kernel.display());
            println!("image:         {}", a.rootfs.display());
        }
        Err(e) => println!("artifacts:     {e}"),
    }
    let kernel = arts.ok().map(|a| a.kernel);
    std::fs::create_dir_all(&cfg.data_dir).ok();
    let cache = polydev_vmm::accel::cache_path(&cfg.data_dir);
    let force = cfg.accel;
    let q = qemu.clone();
    let choice = tokio::task::spawn_blocking(move || {
        polydev_vmm::accel::choose(&q, kernel.as_deref(), Some(&cache), force)
    })
    .await?;
    let vmm = polydev_vmm::choice::choose_vmm(cfg.vmm, fc, &choice);
    println!("VMM:           {}", vmm.kind);
    println!("  why:         {}", vmm.reason);
    println!("acceleration:  {}", choice.accel.as_str());
    println!("  why:         {}", choice.reason);
    match polydev_controller::open_store(&cfg).await {
        Ok(s) => println!(
            "store:         {} ({})",
            s.kind(),
            polydev_store::redact_url(&cfg.effective_database_url())
        ),
        Err(e) => println!("store:         ERROR {e:#}"),
    }
    let loose = polydev_controller::private::loose_modes(&cfg.data_dir);
    if loose.is_empty() {
        println!(
            "file modes:    {} and below: private (0600 files, 0700 directories)",
            cfg.data_dir.display()
        );
    } else {
        println!(
            "file modes:    FIX readable by other accounts (chmod -R go-rwx {}):",
            cfg.data_dir.display()
        );
        for l in loose.iter().take(20) {
            println!("  {l}");
        }
    }
    println!("egress:");
    match polydev_controller::egress::EgressSettings::from_env() {
        Err(e) => println!("  settings:    ERROR {e}"),
        Ok(settings) => {
            let uplink = match &settings.uplink {
                polydev_controller::egress::Uplink::None => None,
                polydev_controller::egress::Uplink::Named(n) => Some(n.clone()),
                polydev_controller::egress::Uplink::DefaultRoute => {
                    polydev_egress::host::default_route_interface()
                }
            };
            let table = format!("polydev_{}", cfg.host_tag());
            for c in polydev_egress::doctor::run(uplink.as_deref(), &table) {
                let mark = if c.ok { "ok  " } else { "FIX " };
                println!("  {mark}{:<15} {}", c.name, c.detail);
            }
            match polydev_egress::dns::Upstreams::from_spec(settings.dns_upstream.as_deref()) {
                Ok(u) => println!("  ok  {:<15} {:?}", "dns upstream", u.addrs),
                Err(e) => println!("  FIX {:<15} {e}", "dns upstream"),
            }
        }
    }
    Ok(())
}

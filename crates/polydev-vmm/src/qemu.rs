//! The QEMU `microvm` driver. Boots the guest kernel directly (PVH), with the
//! golden image read-only as the first virtio-mmio disk, the per-VM state
//! disk as the second, a virtio-net device on the namespace's TAP (opened
//! with `vnet_hdr=on`), virtio-rng, the serial console captured to a file
//! and a QMP socket for control.

use crate::accel::Accel;
use crate::process::{self, VmmProcess};
use crate::{Result, VmSpec, Vmm, VmmKind};
use std::path::PathBuf;
use std::process::Command;

/// File name of the QMP socket inside a VM's directory.
pub const QMP_SOCKET: &str = "qmp.sock";

/// The QEMU driver.
#[derive(Debug, Clone)]
pub struct Qemu {
    /// Path of `qemu-system-x86_64`.
    pub binary: PathBuf,
    /// KVM or TCG, decided by [`crate::accel::choose`].
    pub accel: Accel,
}

impl Qemu {
    /// The driver with the default binary name.
    pub fn new(accel: Accel) -> Qemu {
        Qemu {
            binary: PathBuf::from(default_binary()),
            accel,
        }
    }

    /// The full argument list for `spec` (without the binary).
    pub fn args(&self, spec: &VmSpec) -> Vec<String> {
        use polydev_core::guest::{GUEST_MAC, TAP_NAME};
        let d = |p: &std::path::Path| p.display().to_string();
        let (accel, cpu) = match self.accel {
            Accel::Kvm => ("kvm", "host"),
            Accel::Tcg => ("tcg,thread=multi", "max"),
        };
        let mut a: Vec<String> = vec![
            "-name".into(),
            format!("polydev-{},process=polydev-{}", spec.vm_id, spec.vm_id),
            "-M".into(),
            "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=off".into(),
            "-accel".into(),
            accel.into(),
            "-cpu".into(),
            cpu.into(),
            "-smp".into(),
            spec.vcpus.to_string(),
            "-m".into(),
            format!("{}M", spec.memory_mb),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-nographic".into(),
            "-no-reboot".into(),
            "-kernel".into(),
            d(&spec.kernel),
            "-append".into(),
            spec.kernel_cmdline(),
            "-drive".into(),
            format!(
                "id=root,file={},format=raw,if=none,readonly=on",
                d(&spec.rootfs)
            ),
            "-device".into(),
            "virtio-blk-device,drive=root".into(),
            "-drive".into(),
            format!(
                "id=state,file={},format=raw,if=none,cache=unsafe",
                d(&spec.state_disk)
            ),
            "-device".into(),
            "virtio-blk-device,drive=state".into(),
            "-netdev".into(),
            format!("tap,id=net0,ifname={TAP_NAME},script=no,downscript=no,vnet_hdr=on"),
            "-device".into(),
            format!("virtio-net-device,netdev=net0,mac={GUEST_MAC}"),
            "-object".into(),
            "rng-random,id=rng0,filename=/dev/urandom".into(),
            "-device".into(),
            "virtio-rng-device,rng=rng0".into(),
            "-serial".into(),
            format!("file:{}", d(&spec.console_path())),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", d(&spec.dir.join(QMP_SOCKET))),
        ];
        a.shrink_to_fit();
        a
    }
}

/// `qemu-system-x86_64`, or `POLYDEV_QEMU` when set.
pub fn default_binary() -> String {
    std::env::var("POLYDEV_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into())
}

impl Vmm for Qemu {
    fn kind(&self) -> VmmKind {
        VmmKind::Qemu
    }

    fn start(&self, spec: &VmSpec) -> Result<VmmProcess> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.args(spec)).current_dir(&spec.dir);
        process::spawn_in_netns(
            cmd,
            &spec.netns,
            &spec.vmm_log_path(),
            Some(spec.dir.join(QMP_SOCKET)),
        )
    }

    fn describe(&self) -> String {
        format!(
            "qemu microvm ({}) with {}",
            self.binary.display(),
            self.accel.as_str()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            vm_id: "vm_1".into(),
            dir: "/var/lib/polydev/vms/vm_1".into(),
            kernel: "/k/vmlinux".into(),
            rootfs: "/i/rootfs.ext4".into(),
            state_disk: "/var/lib/polydev/vms/vm_1/state.ext4".into(),
            vcpus: 2,
            memory_mb: 512,
            netns: "pd0".into(),
            extra_kernel_args: vec!["systemd.mask=x.service".into()],
        }
    }

    #[test]
    fn command_line_has_readonly_root_vnet_hdr_and_console_file() {
        let a = Qemu::new(Accel::Tcg).args(&spec()).join(" ");
        assert!(
            a.contains("file=/i/rootfs.ext4,format=raw,if=none,readonly=on"),
            "{a}"
        );
        assert!(a.contains("vnet_hdr=on"), "{a}");
        assert!(
            a.contains("-serial file:/var/lib/polydev/vms/vm_1/console.log"),
            "{a}"
        );
        assert!(a.contains("-accel tcg,thread=multi -cpu max"), "{a}");
        assert!(a.contains("init=/usr/sbin/polydev-init"), "{a}");
        assert!(a.contains("ip=169.254.0.22::169.254.0.21"), "{a}");
        assert!(a.ends_with("server=on,wait=off"), "{a}");
        assert!(a.contains("systemd.mask=x.service"), "{a}");
        // The root disk is declared before the state disk: vda, then vdb.
        assert!(a.find("drive=root").unwrap() < a.find("drive=state").unwrap());
        let k = Qemu::new(Accel::Kvm).args(&spec()).join(" ");
        assert!(k.contains("-accel kvm -cpu host"), "{k}");
    }
}

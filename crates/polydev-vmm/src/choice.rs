//! Choosing the VMM for this host: Firecracker when its binary is found and
//! the KVM probe ([`crate::accel`]) showed that KVM runs ordinary guests,
//! QEMU otherwise; an operator can force either. The reason is returned in
//! words for logs, `/health` and `polydev doctor`.

use crate::accel::{Accel, AccelChoice};
use crate::VmmKind;
use std::path::PathBuf;

/// The VMM chosen and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmmChoice {
    /// What will be used.
    pub kind: VmmKind,
    /// Why, in words.
    pub reason: String,
    /// The Firecracker binary, when one was found.
    pub firecracker: Option<PathBuf>,
}

/// Decides between Firecracker and QEMU. `force` (from `--vmm`) wins;
/// `firecracker_bin` is the binary found by
/// [`crate::firecracker::find_binary`]; `kvm` is the KVM probe's verdict.
pub fn choose_vmm(
    force: Option<VmmKind>,
    firecracker_bin: Option<PathBuf>,
    kvm: &AccelChoice,
) -> VmmChoice {
    let fc_text = match &firecracker_bin {
        Some(p) => format!("firecracker binary {}", p.display()),
        None => "no firecracker binary (set POLYDEV_FIRECRACKER or put it on PATH)".into(),
    };
    let kvm_ok = kvm.accel == Accel::Kvm;
    if let Some(kind) = force {
        let mut reason = format!("{kind} forced by configuration");
        if kind == VmmKind::Firecracker {
            if firecracker_bin.is_none() {
                reason.push_str(&format!("; warning: {fc_text}"));
            }
            if !kvm_ok {
                reason.push_str(&format!(
                    "; warning: KVM does not run guests here ({})",
                    kvm.reason
                ));
            }
        }
        return VmmChoice {
            kind,
            reason,
            firecracker: firecracker_bin,
        };
    }
    let (kind, reason) = match (&firecracker_bin, kvm_ok) {
        (Some(_), true) => (
            VmmKind::Firecracker,
            format!(
                "firecracker: {fc_text} and KVM runs guests ({})",
                kvm.reason
            ),
        ),
        (Some(_), false) => (
            VmmKind::Qemu,
            format!(
                "qemu: {fc_text} found but KVM does not run guests ({}), and Firecracker needs KVM",
                kvm.reason
            ),
        ),
        (None, _) => (
            VmmKind::Qemu,
            format!("qemu: {fc_text}; qemu uses {}", kvm.accel.as_str()),
        ),
    };
    VmmChoice {
        kind,
        reason,
        firecracker: firecracker_bin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kvm(accel: Accel) -> AccelChoice {
        AccelChoice {
            accel,
            reason: "probe".into(),
        }
    }

    #[test]
    fn firecracker_needs_both_binary_and_kvm() {
        let fc = Some(PathBuf::from("/usr/bin/firecracker"));
        let c = choose_vmm(None, fc.clone(), &kvm(Accel::Kvm));
        assert_eq!(c.kind, VmmKind::Firecracker);
        assert!(c.reason.contains("/usr/bin/firecracker"), "{}", c.reason);
        let c = choose_vmm(None, fc.clone(), &kvm(Accel::Tcg));
        assert_eq!(c.kind, VmmKind::Qemu);
        assert!(c.reason.contains("KVM does not run guests"), "{}", c.reason);
        let c = choose_vmm(None, None, &kvm(Accel::Kvm));
        assert_eq!(c.kind, VmmKind::Qemu);
        assert!(c.reason.contains("no firecracker binary"), "{}", c.reason);
    }

    #[test]
    fn operator_can_force_either_and_is_warned() {
        let c = choose_vmm(Some(VmmKind::Qemu), Some("/fc".into()), &kvm(Accel::Kvm));
        assert_eq!(c.kind, VmmKind::Qemu);
        assert_eq!(c.reason, "qemu forced by configuration");
        let c = choose_vmm(Some(VmmKind::Firecracker), None, &kvm(Accel::Tcg));
        assert_eq!(c.kind, VmmKind::Firecracker);
        assert!(
            c.reason.contains("warning: no firecracker binary")
                && c.reason.contains("warning: KVM does not run guests"),
            "{}",
            c.reason
        );
        assert_eq!("Firecracker".parse::<VmmKind>(), Ok(VmmKind::Firecracker));
        assert!("xen".parse::<VmmKind>().is_err());
    }
}

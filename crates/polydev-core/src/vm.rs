//! What a VM is, as the API and the store speak of it.

pub use crate::ParseEnumError;

/// The two kinds of VM polydev runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmType {
    /// Ephemeral VM running a provider login in Chromium.
    Browser,
    /// A user's persistent VM where prompts run.
    Cli,
}

/// Lifecycle status of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmStatus {
    /// Resources recorded, VMM starting, agent not yet ready.
    Creating,
    /// Agent ready and answering.
    Running,
    /// Snapshotted to disk, VMM stopped.
    Hibernated,
    /// Failed; `failure_reason` says why, the console log is kept.
    Failed,
    /// Stopped and every resource reclaimed.
    Destroyed,
}

str_enum!(VmType, "vm type", Browser => "browser", Cli => "cli");
str_enum!(VmStatus, "vm status", Creating => "creating", Running => "running", Hibernated => "hibernated", Failed => "failed", Destroyed => "destroyed");

impl VmStatus {
    /// True once the VM can no longer change on its own (failed or destroyed).
    pub fn is_terminal(&self) -> bool {
        matches!(self, VmStatus::Failed | VmStatus::Destroyed)
    }
}

/// Milliseconds since the Unix epoch, the one time format the store keeps.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_parse_and_print() {
        assert_eq!("browser".parse::<VmType>().unwrap(), VmType::Browser);
        assert_eq!(VmStatus::Running.to_string(), "running");
        let err = "vnc".parse::<VmType>().unwrap_err().to_string();
        assert!(err.contains("\"vnc\"") && err.contains("browser"), "{err}");
    }
}

//! Prompt runs: their statuses and credential kinds, shared by the store and
//! the controller.

/// Status of a run:
/// `queued → starting → running → completed`, or `failed`, `cancelled`, `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting for the user's previous run.
    Queued,
    /// The user's CLI VM is being created or resumed.
    Starting,
    /// The CLI runs.
    Running,
    /// The CLI exited 0 and reported success.
    Completed,
    /// The CLI, its VM or the controller failed; the run's error says how.
    Failed,
    /// Cancelled by the caller.
    Cancelled,
    /// The run's deadline passed.
    Timeout,
}

str_enum!(RunStatus, "run status",
    Queued => "queued", Starting => "starting", Running => "running",
    Completed => "completed", Failed => "failed", Cancelled => "cancelled", Timeout => "timeout");

impl RunStatus {
    /// True once the run can no longer change.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled | RunStatus::Timeout
        )
    }
}

/// What a stored credential is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// The CLI's own credential file, from signing in.
    Oauth,
    /// An API key, given to runs through the environment.
    ApiKey,
}

str_enum!(CredentialKind, "credential kind", Oauth => "oauth", ApiKey => "api_key");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in [
            "queued",
            "starting",
            "running",
            "completed",
            "failed",
            "cancelled",
            "timeout",
        ] {
            assert_eq!(s.parse::<RunStatus>().unwrap().as_str(), s);
        }
        assert!(RunStatus::Timeout.is_terminal() && !RunStatus::Starting.is_terminal());
        assert_eq!(
            "api_key".parse::<CredentialKind>().unwrap(),
            CredentialKind::ApiKey
        );
        assert!("token".parse::<CredentialKind>().is_err());
    }
}

//! Provider sign-in sessions, as the API and the store speak of them.

/// The AI coding CLIs a user can connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// Anthropic's Claude Code.
    ClaudeCode,
    /// OpenAI's Codex CLI.
    Codex,
    /// Google's Gemini CLI.
    GeminiCli,
}

str_enum!(Provider, "provider", ClaudeCode => "claude_code", Codex => "codex", GeminiCli => "gemini_cli");

/// Status of a sign-in session:
/// `initializing → vm_created → ready → awaiting_user_auth → completed`, or
/// `failed`, `timeout`, `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    /// Recorded; the browser VM is being created.
    Initializing,
    /// The browser VM exists and is booting.
    VmCreated,
    /// The VM's agent (and display) answer; the login is starting.
    Ready,
    /// The provider's sign-in page is on the VM's screen; the user acts.
    AwaitingUserAuth,
    /// Credentials are stored and installed.
    Completed,
    /// Something failed; `error_message` says what.
    Failed,
    /// The user did not finish in time.
    Timeout,
    /// Cancelled by the user or operator.
    Cancelled,
}

str_enum!(SessionStatus, "session status",
    Initializing => "initializing", VmCreated => "vm_created", Ready => "ready",
    AwaitingUserAuth => "awaiting_user_auth", Completed => "completed", Failed => "failed",
    Timeout => "timeout", Cancelled => "cancelled");

impl SessionStatus {
    /// True once the session can no longer change.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            SessionStatus::Completed
                | SessionStatus::Failed
                | SessionStatus::Timeout
                | SessionStatus::Cancelled
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_ids_are_the_api_ids() {
        for (p, s) in [
            (Provider::ClaudeCode, "claude_code"),
            (Provider::Codex, "codex"),
            (Provider::GeminiCli, "gemini_cli"),
        ] {
            assert_eq!(p.as_str(), s);
            assert_eq!(s.parse::<Provider>().unwrap(), p);
            assert_eq!(serde_json::to_value(p).unwrap(), s);
        }
        assert!("claude"
            .parse::<Provider>()
            .unwrap_err()
            .to_string()
            .contains("claude_code"));
        assert!(
            SessionStatus::Timeout.is_terminal() && !SessionStatus::AwaitingUserAuth.is_terminal()
        );
        assert_eq!(
            "awaiting_user_auth".parse::<SessionStatus>().unwrap(),
            SessionStatus::AwaitingUserAuth
        );
    }
}

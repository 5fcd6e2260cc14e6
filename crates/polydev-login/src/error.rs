//! The errors of this crate, each naming what failed.

use std::path::PathBuf;

use crate::Provider;

/// Why a login operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// A codex login already holds the VM's fixed callback port.
    #[error("a codex login is already running in this VM (it needs the fixed port 127.0.0.1:1455); cancel it first")]
    CodexBusy,
    /// The pseudo-terminal could not be created or set up.
    #[error("pseudo-terminal: {what}: {source}")]
    Pty {
        /// The step that failed.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The CLI could not be started.
    #[error("start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A file or directory the session needs could not be written.
    #[error("{what} {path}: {source}")]
    File {
        /// What was done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// No authorization URL has been captured yet, so there is no redirect
    /// target to forward to.
    #[error("no authorization URL captured yet for {0}: nothing to forward the callback to")]
    NoUrlYet(Provider),
    /// The captured URL has no usable localhost `redirect_uri`.
    #[error("the {provider} authorization URL has no localhost redirect_uri ({redirect_uri:?}); use the pasted-code path")]
    NoLocalListener {
        /// The provider.
        provider: Provider,
        /// What the URL's redirect_uri was, if any.
        redirect_uri: Option<String>,
    },
    /// The callback the caller gave is not a callback.
    #[error("callback {0:?}: expected a URL, a path with a query, or a query string")]
    BadCallback(String),
    /// Forwarding the callback to the CLI's listener failed.
    #[error("forward the callback to the CLI's listener at {target}: {source}")]
    Forward {
        /// `host:port/path`.
        target: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A pasted code holds characters a terminal would act on.
    #[error("the pasted code holds control characters or is empty")]
    BadCode,
    /// The login process has already ended; nothing can be typed into it.
    #[error("the {0} login has already ended")]
    Ended(Provider),
    /// Writing to the pseudo-terminal failed.
    #[error("type into the {provider} login's terminal: {source}")]
    Type {
        /// The provider.
        provider: Provider,
        /// The cause.
        source: std::io::Error,
    },
    /// Waiting ran out of time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(std::time::Duration, &'static str),
}

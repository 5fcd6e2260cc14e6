//! The crate's error type: every variant names what failed and why.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while building or locating an artifact.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted ("create directory", "copy" ...).
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An external program could not be started.
    #[error("cannot run `{command}`: {source} (is it installed?)")]
    Spawn {
        /// The command line.
        command: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An external program ran and failed.
    #[error("`{command}` failed ({status}); last output:\n{tail}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The last lines it printed.
        tail: String,
    },
    /// mmdebstrap could not download from the Debian mirror.
    #[error("mmdebstrap cannot reach the Debian mirror{mirror} (check network access or set POLYDEV_DEBIAN_MIRROR); last output:\n{tail}")]
    MirrorUnreachable {
        /// `" <url>"` when an override was used, else empty.
        mirror: String,
        /// The last lines mmdebstrap printed.
        tail: String,
    },
    /// npm could not download the CLIs from the npm registry.
    #[error("npm cannot reach the npm registry{registry} (check network access and the certificate authorities npm trusts (its `cafile`), or set POLYDEV_NPM_REGISTRY); last output:\n{tail}")]
    NpmUnreachable {
        /// `" <url>"` of the registry used, else empty.
        registry: String,
        /// The last lines of the build output.
        tail: String,
    },
    /// Kconfig dropped options the fragment asks for (unmet dependencies).
    #[error("kernel config: these options of the fragment did not survive `make olddefconfig` (check their dependencies): {}", .0.join(", "))]
    ConfigDropped(Vec<String>),
    /// A tool printed something this crate could not understand.
    #[error("unexpected output from `{command}`: {detail}")]
    UnexpectedOutput {
        /// The command line.
        command: String,
        /// What was wrong.
        detail: String,
    },
    /// The built image does not meet a requirement.
    #[error("image check failed: {0}")]
    ImageCheck(String),
    /// The input given by the caller is not usable.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A manifest could not be read or written.
    #[error("manifest {path}: {detail}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

impl Error {
    /// Builds an [`Error::Io`] from an operation name and path.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}

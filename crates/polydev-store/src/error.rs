//! Errors of the store.
//!
//! Every variant names the database (its kind and, where it helps, its URL with
//! any password replaced by `***`) and the operation that failed, so a log line
//! alone says what to look at.

use std::path::PathBuf;

use crate::StoreKind;

/// Result type of every store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What went wrong talking to the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is neither `sqlite:` nor `postgres:`/`postgresql:`.
    #[error(
        "unsupported database URL {url:?}: expected sqlite:///PATH or postgres://USER@HOST/DB"
    )]
    UnsupportedUrl {
        /// The URL, password redacted.
        url: String,
    },
    /// The directory meant to hold the SQLite file could not be created.
    #[error("cannot create data directory {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Opening (or creating) the database failed.
    #[error("cannot open {kind} database {url}: {source}")]
    Connect {
        /// Which backend.
        kind: StoreKind,
        /// The URL, password redacted.
        url: String,
        /// Why.
        source: sqlx::Error,
    },
    /// Applying the schema migrations failed.
    #[error("cannot migrate {kind} database {url}: {source}")]
    Migrate {
        /// Which backend.
        kind: StoreKind,
        /// The URL, password redacted.
        url: String,
        /// Why.
        source: sqlx::migrate::MigrateError,
    },
    /// A query failed.
    #[error("{kind} store: {op}: {source}")]
    Query {
        /// Which backend.
        kind: StoreKind,
        /// What was being done, e.g. `insert VM vm-1`.
        op: String,
        /// Why.
        source: sqlx::Error,
    },
    /// A row with the same unique key already exists.
    #[error("{kind} store: {what} already exists")]
    Conflict {
        /// Which backend.
        kind: StoreKind,
        /// The thing that exists, e.g. `VM vm-1`.
        what: String,
    },
    /// Concurrent inserts kept taking the slot this VM was about to get.
    #[error("no network slot could be allocated for VM {vm_id} after {attempts} attempts: concurrent inserts kept taking the lowest free slot")]
    SlotContention {
        /// The VM that got no slot.
        vm_id: String,
        /// How many times it tried.
        attempts: u32,
    },
}

impl StoreError {
    /// True when the error is a unique-constraint violation reported by the database.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            StoreError::Conflict { .. } => true,
            StoreError::Query { source, .. } => is_unique_violation(source),
            _ => false,
        }
    }
}

/// True when `e` is a database-reported unique-constraint violation.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

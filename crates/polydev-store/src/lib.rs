//! The polydev store: users, API keys, VMs, auth sessions, credentials and the
//! VM cleanup queue, kept in SQLite (the embedded default) or PostgreSQL (for
//! several hosts sharing one database) behind one API.
//!
//! There is one set of queries, run through sqlx's `Any` driver with `$N`
//! placeholders, which both backends accept. The schema differs only in types
//! (`BLOB`/`BYTEA`, `INTEGER`/`BIGINT`, integer/boolean flags), so each backend has
//! its own migration folder (`migrations/sqlite`, `migrations/postgres`), embedded
//! at build time and applied by [`Store::connect`]. Times are `i64` Unix
//! milliseconds ([`polydev_core::vm::now_ms`]).
//!
//! State changes are compare-and-set on the current status: each returns whether
//! it changed a row, so a destroy racing a "ready" cannot bring a VM back.

#![warn(missing_docs)]

pub mod accounts;
pub mod api_keys;
pub mod auth_sessions;
pub mod cleanup;
pub mod credentials;
pub mod egress;
pub mod error;
pub mod runs;
pub mod url;
pub mod vms;
pub mod webrtc;

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{AnyPool, ConnectOptions, Connection, Row};

pub use accounts::{Account, OidcLogin, WebSession};
pub use api_keys::ApiKey;
pub use auth_sessions::AuthSession;
pub use cleanup::{CleanupStatus, CleanupTask};
pub use credentials::{CredentialRow, SealedParts};
pub use egress::UserEgressRow;
pub use error::{Result, StoreError};
pub use runs::{NewRun, RunEvent, RunOutcome, RunRecord, RunSummary};
pub use url::redact_url;
pub use vms::{NewVm, VmRecord};
pub use webrtc::WebrtcSignal;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// File name of the SQLite database inside a data directory.
pub const SQLITE_FILE_NAME: &str = "polydev.db";

/// How long SQLite waits for a competing writer before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Default of [`Store::set_cleanup_lease_ms`]: a cleanup task left `processing`
/// this long is taken to belong to a crashed worker and is handed out again.
pub const DEFAULT_CLEANUP_LEASE_MS: i64 = 5 * 60 * 1000;

/// Which database backs a [`Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        })
    }
}

impl StoreKind {
    /// The backend a URL names, from its scheme.
    pub fn from_url(url: &str) -> Option<StoreKind> {
        let scheme = url.split(':').next()?.to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Some(StoreKind::Sqlite),
            "postgres" | "postgresql" => Some(StoreKind::Postgres),
            _ => None,
        }
    }
}

/// A handle on the database; cheap to clone (it shares one connection pool).
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    kind: StoreKind,
    url: String,
    cleanup_lease_ms: i64,
}

impl Store {
    /// Opens the database at `url` and brings its schema up to date.
    ///
    /// `sqlite:///abs/path/polydev.db` (or `sqlite://relative.db`) creates the
    /// file if it is missing and turns on WAL, a busy timeout and foreign keys.
    /// `postgres://user[:password]@host[:port]/db` connects to an existing
    /// database. Either way the migrations run (a no-op when already applied).
    pub async fn connect(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let shown = redact_url(url);
        let kind = StoreKind::from_url(url)
            .ok_or_else(|| StoreError::UnsupportedUrl { url: shown.clone() })?;
        let connect_err = |source| StoreError::Connect {
            kind,
            url: shown.clone(),
            source,
        };
        let pool = match kind {
            StoreKind::Sqlite => {
                // The Any driver reads only a few SQLite URL options, so create the
                // file and switch it to WAL (a persistent setting) natively first.
                let opts = SqliteConnectOptions::from_str(url)
                    .map_err(connect_err)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .foreign_keys(true)
                    .busy_timeout(SQLITE_BUSY_TIMEOUT);
                let conn = opts.connect().await.map_err(connect_err)?;
                conn.close().await.map_err(connect_err)?;
                let any_url = opts.to_url_lossy();
                AnyPoolOptions::new()
                    .max_connections(8)
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            // SQLite defaults, stated so they cannot drift.
                            sqlx::query(&format!(
                                "PRAGMA busy_timeout = {}",
                                SQLITE_BUSY_TIMEOUT.as_millis()
                            ))
                            .execute(&mut *conn)
                            .await?;
                            sqlx::query("PRAGMA foreign_keys = ON")
                                .execute(&mut *conn)
                                .await?;
                            Ok(())
                        })
                    })
                    .connect(any_url.as_str())
                    .await
                    .map_err(connect_err)?
            }
            StoreKind::Postgres => {
                // One plain connection first: an unreachable server or a refused
                // login fails here at once, where the pool would keep retrying
                // until its acquire timeout.
                let conn = sqlx::AnyConnection::connect(url)
                    .await
                    .map_err(connect_err)?;
                conn.close().await.map_err(connect_err)?;
                AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect(url)
                    .await
                    .map_err(connect_err)?
            }
        };
        let migrator = match kind {
            StoreKind::Sqlite => &SQLITE_MIGRATIONS,
            StoreKind::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                kind,
                url: shown.clone(),
                source,
            })?;
        tracing::debug!(%kind, url = %shown, "store ready");
        Ok(Store {
            pool,
            kind,
            url: shown,
            cleanup_lease_ms: DEFAULT_CLEANUP_LEASE_MS,
        })
    }

    /// Opens (creating if needed) `data_dir/polydev.db`, creating `data_dir` too.
    pub async fn sqlite_in(data_dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        // Built through sqlx so characters such as '?' or '#' in the path are escaped.
        let url = SqliteConnectOptions::new()
            .filename(data_dir.join(SQLITE_FILE_NAME))
            .to_url_lossy();
        Store::connect(url.as_str()).await
    }

    /// Which backend this store uses.
    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    /// The URL this store was opened with, password redacted.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sets how long a cleanup task may stay `processing` before
    /// [`Store::claim_due_cleanups`] treats its worker as crashed and hands it out again.
    pub fn set_cleanup_lease_ms(&mut self, lease_ms: i64) {
        self.cleanup_lease_ms = lease_ms.max(0);
    }

    /// The underlying pool, for tests and one-off maintenance. Prefer the typed
    /// methods: they keep the invariants (slots, compare-and-set status changes).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Records a user if not yet known (idempotent).
    pub async fn ensure_user(&self, user_id: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO users (user_id, created_at) VALUES ($1, $2) \
             ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(user_id)
        .bind(polydev_core::vm::now_ms())
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("ensure user {user_id:?}"), e))?;
        Ok(())
    }

    /// Wraps a sqlx error with what was being done.
    pub(crate) fn query_err(&self, op: String, source: sqlx::Error) -> StoreError {
        StoreError::Query {
            kind: self.kind,
            op,
            source,
        }
    }
}

/// Reads a boolean column, stored as BOOLEAN (PostgreSQL) or INTEGER 0/1 (SQLite).
pub(crate) fn get_flag(row: &AnyRow, col: &str) -> std::result::Result<bool, sqlx::Error> {
    match row.try_get::<bool, _>(col) {
        Ok(b) => Ok(b),
        Err(sqlx::Error::ColumnDecode { .. }) => Ok(row.try_get::<i64, _>(col)? != 0),
        Err(e) => Err(e),
    }
}

/// Reads a text column holding an enum's name.
pub(crate) fn get_enum<T>(row: &AnyRow, col: &str) -> std::result::Result<T, sqlx::Error>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let s: String = row.try_get(col)?;
    s.parse().map_err(|e: T::Err| sqlx::Error::ColumnDecode {
        index: col.to_string(),
        source: Box::new(e),
    })
}

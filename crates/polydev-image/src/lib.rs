//! Builds what every polydev microVM boots: the guest kernel and the golden,
//! read-only root filesystem images.
//!
//! Both artifacts are content-addressed under a cache directory (default
//! [`DEFAULT_CACHE_DIR`], overridable with `POLYDEV_CACHE_DIR`): a build whose
//! inputs did not change returns the cached file at once. All functions
//! block; they run external tools (`make`, `mmdebstrap`, `mkfs.ext4`) and
//! report what they do through a [`Progress`].

#![warn(missing_docs)]

pub mod check;
pub mod command;
pub mod derived;
pub mod error;
pub mod flavour;
pub mod hashing;
pub mod home_disk;
pub mod kernel;
pub mod lock;
pub mod manifest;
pub mod progress;
pub mod rootfs;
pub mod state_disk;

use std::path::PathBuf;

pub use error::{Error, Result};
pub use progress::{NoProgress, Progress, StderrProgress};

/// Where artifacts are cached when `POLYDEV_CACHE_DIR` is not set.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/polydev";

/// The cache directory: `POLYDEV_CACHE_DIR` if set and not empty, else
/// [`DEFAULT_CACHE_DIR`].
pub fn cache_dir_from_env() -> PathBuf {
    match std::env::var_os("POLYDEV_CACHE_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_CACHE_DIR),
    }
}

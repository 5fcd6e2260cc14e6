//! An exclusive advisory lock so two builds of the same artifact do not run
//! at once in one cache directory.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{Error, Result};

/// Holds a `flock(2)` lock until dropped.
#[derive(Debug)]
pub struct BuildLock {
    _file: File,
}

impl BuildLock {
    /// Waits for and takes the exclusive lock on `path` (created if needed).
    pub fn acquire(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(Error::io("open lock file", path))?;
        // SAFETY: `file` owns a valid open descriptor for the duration of the
        // call; flock does not touch memory we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(Error::Io {
                op: "lock",
                path: path.to_owned(),
                source: std::io::Error::last_os_error(),
            });
        }
        // The lock is released when the descriptor is closed (on drop).
        Ok(Self { _file: file })
    }
}

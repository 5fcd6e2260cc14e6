//! polydev-store

//! polydev-image

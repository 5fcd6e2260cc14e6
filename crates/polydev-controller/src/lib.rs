//! polydev-controller

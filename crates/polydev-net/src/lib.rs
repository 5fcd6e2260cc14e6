//! polydev-net

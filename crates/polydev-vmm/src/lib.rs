//! polydev-vmm

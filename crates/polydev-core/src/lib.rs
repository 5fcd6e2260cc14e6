//! Types and constants shared by every part of polydev: the controller, the VM
//! runtime, the image builder and the guest agent.
//!
//! This crate holds no behaviour beyond parsing and formatting; it is the one
//! place where a fact both sides of a wall must agree on (the guest's address,
//! the agent's port, the readiness marker) is written down.
#![warn(missing_docs)]

pub mod guest;
pub mod vm;

//! The polydev guest agent.
//!
//! One native binary that runs inside every microVM, started very early by
//! systemd. It reads its per-VM configuration from the state disk, listens on
//! the guest address and announces readiness on the serial console with
//! [`polydev_core::guest::ReadyLine`]. The HTTP surface is deliberately
//! narrow; every request must carry the VM's bearer token.

#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod config;
pub mod exec;
pub mod files;
pub mod login;
pub mod open_url;
pub mod procs;
pub mod ready;
pub mod terminal;
pub mod uptime;
pub mod users;
pub mod webrtc;

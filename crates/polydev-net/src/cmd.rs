//! Running iproute2 with errors that carry the command and its stderr.

use crate::{NetError, Result};
use std::process::Command;

/// Runs `ip ARGS...`, returning stdout.
pub(crate) fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetError::Sys {
            what: "running `ip` (is iproute2 installed?)".into(),
            source: e,
        })?;
    if !out.status.success() {
        return Err(NetError::Command {
            command: format!("ip {}", args.join(" ")),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

//! Running `nft`: a script is one atomic transaction (`nft -f -`), in the host
//! namespace or inside a VM's; listings come back as JSON (`nft -j`).
//!
//! Why `nft` itself and not a netlink library: the ruleset language is nft's
//! documented input, a whole script commits or fails as one transaction, its
//! errors point at the offending line, and `nft -j` gives a stable JSON
//! schema for reading counters back. The `nftables` crate wraps the same
//! binary with a typed JSON schema that would triple the size of every rule
//! here without changing what runs.

use crate::{EgressError, Result};
use std::io::Write;
use std::process::{Command, Stdio};

/// Where a script runs: the host, or a VM's namespace.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// The host (the controller's own namespace).
    Host,
    /// Inside the named network namespace.
    Netns(&'a str),
}

fn run_here(args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            EgressError::Nft(format!(
                "running `nft` (is the nftables package installed?): {e}"
            ))
        })?;
    if let Some(s) = stdin {
        let mut i = child.stdin.take().expect("piped");
        i.write_all(s.as_bytes())
            .map_err(|e| EgressError::Nft(format!("writing to `nft`: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| EgressError::Nft(format!("waiting for `nft`: {e}")))?;
    if !out.status.success() {
        return Err(EgressError::Nft(format!(
            "`nft {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `nft ARGS` (with `stdin` as its input) in `target`.
pub fn run(target: Target<'_>, args: &[&str], stdin: Option<&str>) -> Result<String> {
    match target {
        Target::Host => run_here(args, stdin),
        Target::Netns(ns) => {
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            let stdin = stdin.map(str::to_string);
            polydev_net::netns::run_in(ns, move || {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                Ok(run_here(&a, stdin.as_deref()))
            })
            .map_err(EgressError::Net)?
        }
    }
}

/// Applies a script as one transaction.
pub fn apply(target: Target<'_>, script: &str) -> Result<()> {
    run(target, &["-f", "-"], Some(script)).map(|_| ())
}

/// `nft -j list ...` parsed.
pub fn list_json(target: Target<'_>, what: &[&str]) -> Result<serde_json::Value> {
    let mut args = vec!["-j", "list"];
    args.extend_from_slice(what);
    let out = run(target, &args, None)?;
    serde_json::from_str(&out)
        .map_err(|e| EgressError::Nft(format!("parsing `nft -j list {}`: {e}", what.join(" "))))
}

/// Named counters of a table: name → (packets, bytes).
pub fn counters(
    target: Target<'_>,
    family: &str,
    table: &str,
) -> Result<std::collections::BTreeMap<String, (u64, u64)>> {
    let v = list_json(target, &["counters", "table", family, table])?;
    let mut m = std::collections::BTreeMap::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        if let Some(c) = item.get("counter") {
            if let Some(name) = c["name"].as_str() {
                m.insert(
                    name.to_string(),
                    (
                        c["packets"].as_u64().unwrap_or(0),
                        c["bytes"].as_u64().unwrap_or(0),
                    ),
                );
            }
        }
    }
    Ok(m)
}

/// True if `table` of `family` exists in `target`.
pub fn table_exists(target: Target<'_>, family: &str, table: &str) -> bool {
    run(target, &["list", "table", family, table], None).is_ok()
}

/// Deletes a table if it exists.
pub fn delete_table(target: Target<'_>, family: &str, table: &str) -> Result<()> {
    // `destroy` (nft ≥ 1.0.8) is idempotent; `add` then `delete` works everywhere.
    apply(
        target,
        &format!("add table {family} {table}\ndelete table {family} {table}\n"),
    )
}

/// Quotes an interface name for a ruleset (names are checked to be plain).
pub fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', ""))
}

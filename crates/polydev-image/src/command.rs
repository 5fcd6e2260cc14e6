//! Running external programs with their output captured.
//!
//! stdout and stderr are merged line by line, handed to a callback (for
//! progress) and the last [`TAIL_LINES`] are kept for error messages.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use crate::error::{Error, Result};

/// How many trailing output lines an error message shows.
pub const TAIL_LINES: usize = 40;

/// The output of a successful run.
#[derive(Debug, Default)]
pub struct Output {
    /// The captured stdout, in full (stderr is not included).
    pub stdout: String,
    /// The last lines of stdout and stderr together.
    pub tail: Vec<String>,
}

/// Renders a command as a shell-like line for messages.
pub fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

fn pump(
    reader: impl Read + Send + 'static,
    is_stdout: bool,
    tx: mpsc::Sender<(bool, String)>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                    if tx.send((is_stdout, line)).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// Runs `cmd` to completion, calling `on_line` for every output line.
/// Fails with [`Error::CommandFailed`] (including the output's tail) when the
/// program exits unsuccessfully.
pub fn run(cmd: &mut Command, on_line: &mut dyn FnMut(&str)) -> Result<Output> {
    let command = display(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    let (tx, rx) = mpsc::channel();
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(pump(out, true, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(pump(err, false, tx.clone()));
    }
    drop(tx);
    let mut output = Output::default();
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    for (is_stdout, line) in rx {
        on_line(&line);
        if is_stdout {
            output.stdout.push_str(&line);
            output.stdout.push('\n');
        }
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    for p in pumps {
        let _ = p.join();
    }
    let status = child.wait().map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    output.tail = tail.into();
    if status.success() {
        Ok(output)
    } else {
        Err(Error::CommandFailed {
            command,
            status: status.to_string(),
            tail: output.tail.join("\n"),
        })
    }
}

/// Runs `cmd` quietly; see [`run`].
pub fn run_quiet(cmd: &mut Command) -> Result<Output> {
    run(cmd, &mut |_| {})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_stdout_and_tail() {
        let out = run_quiet(Command::new("sh").args(["-c", "echo a; echo b >&2"])).unwrap();
        assert_eq!(out.stdout, "a\n");
        assert_eq!(out.tail.len(), 2);
    }

    #[test]
    fn failure_names_command_and_tail() {
        let err = run_quiet(Command::new("sh").args(["-c", "echo boom >&2; exit 3"])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sh -c"), "{msg}");
        assert!(msg.contains("boom"), "{msg}");
    }

    #[test]
    fn missing_program_is_spawn_error() {
        let err = run_quiet(&mut Command::new("/nonexistent/tool")).unwrap_err();
        assert!(matches!(err, Error::Spawn { .. }));
    }
}

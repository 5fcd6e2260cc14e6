//! Each CLI's non-interactive run, as measured on the pinned versions
//! (claude-code 2.1.330, codex 0.169.0, gemini-cli 0.61.0):
//!
//! | | run | resume |
//! |---|---|---|
//! | Claude Code | `claude -p P --output-format stream-json --verbose` (without `--verbose` it exits 1) | `--resume <session_id>` |
//! | Codex | `codex exec --json --skip-git-repo-check -s workspace-write P`, stdin closed (piped stdin makes it wait) | `codex exec resume <thread_id> …` with `-c sandbox_mode="workspace-write"` (resume has no `-s`) |
//! | Gemini CLI | `gemini -p P --output-format stream-json --skip-trust` (without it: exit 55) | `--resume <session_id>`, from the same directory (else exit 42) |
//!
//! An API key goes in the environment: `ANTHROPIC_API_KEY`, `CODEX_API_KEY`
//! (`OPENAI_API_KEY` is ignored by `exec`), `GEMINI_API_KEY`. Every run is
//! the guest's `polydev` user in its home: Claude refuses its bypass modes
//! as root.

use crate::settings::ProviderSettings;
use polydev_core::auth::Provider;
use std::collections::BTreeMap;

/// What a run asks for.
#[derive(Debug, Clone, Default)]
pub struct RunSpec<'a> {
    /// The prompt.
    pub prompt: &'a str,
    /// The CLI's conversation id to continue.
    pub resume: Option<&'a str>,
    /// A model other than the settings' default.
    pub model: Option<&'a str>,
    /// An API key (instead of the signed-in credential file).
    pub api_key: Option<&'a str>,
}

/// The command: program and arguments, and its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCommand {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Environment (on top of the agent's clean one).
    pub env: BTreeMap<String, String>,
}

/// The environment variable that carries a provider's API key.
pub fn api_key_var(p: Provider) -> &'static str {
    match p {
        Provider::ClaudeCode => "ANTHROPIC_API_KEY",
        Provider::Codex => "CODEX_API_KEY",
        Provider::GeminiCli => "GEMINI_API_KEY",
    }
}

/// The command line of a run.
pub fn run_command(p: Provider, spec: &RunSpec<'_>, s: &ProviderSettings) -> RunCommand {
    let model = spec.model.map(str::to_string).or_else(|| s.model.clone());
    let mut argv: Vec<String> = Vec::new();
    let push = |v: &mut Vec<String>, items: &[&str]| v.extend(items.iter().map(|x| x.to_string()));
    match p {
        Provider::ClaudeCode => {
            push(
                &mut argv,
                &[
                    "claude",
                    "-p",
                    spec.prompt,
                    "--output-format",
                    "stream-json",
                    "--verbose",
                ],
            );
            if let Some(m) = &model {
                push(&mut argv, &["--model", m]);
            }
            if let Some(pm) = &s.permission_mode {
                push(&mut argv, &["--permission-mode", pm]);
            }
            if let Some(r) = spec.resume {
                push(&mut argv, &["--resume", r]);
            }
            argv.extend(s.args.iter().cloned());
        }
        Provider::Codex => {
            push(&mut argv, &["codex", "exec"]);
            match spec.resume {
                Some(r) => push(
                    &mut argv,
                    &["resume", r, "-c", "sandbox_mode=\"workspace-write\""],
                ),
                None => push(&mut argv, &["-s", "workspace-write"]),
            }
            push(&mut argv, &["--json", "--skip-git-repo-check"]);
            if let Some(m) = &model {
                push(&mut argv, &["-m", m]);
            }
            for c in &s.config {
                push(&mut argv, &["-c", c]);
            }
            argv.extend(s.args.iter().cloned());
            argv.push(spec.prompt.to_string());
        }
        Provider::GeminiCli => {
            push(
                &mut argv,
                &[
                    "gemini",
                    "-p",
                    spec.prompt,
                    "--output-format",
                    "stream-json",
                    "--skip-trust",
                ],
            );
            if let Some(m) = &model {
                push(&mut argv, &["-m", m]);
            }
            if let Some(r) = spec.resume {
                push(&mut argv, &["--resume", r]);
            }
            argv.extend(s.args.iter().cloned());
        }
    }
    let mut env = s.env.clone();
    if let Some(k) = spec.api_key {
        env.insert(api_key_var(p).to_string(), k.to_string());
    }
    RunCommand { argv, env }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_command_lines() {
        let s = ProviderSettings::default();
        let c = run_command(
            Provider::ClaudeCode,
            &RunSpec {
                prompt: "hi",
                ..Default::default()
            },
            &s,
        );
        assert_eq!(
            c.argv,
            [
                "claude",
                "-p",
                "hi",
                "--output-format",
                "stream-json",
                "--verbose"
            ]
        );
        let c = run_command(
            Provider::ClaudeCode,
            &RunSpec {
                prompt: "again",
                resume: Some("sess-1"),
                api_key: Some("sk-x"),
                ..Default::default()
            },
            &ProviderSettings {
                permission_mode: Some("acceptEdits".into()),
                ..Default::default()
            },
        );
        assert!(c.argv.ends_with(&[
            "--permission-mode".to_string(),
            "acceptEdits".into(),
            "--resume".into(),
            "sess-1".into()
        ]));
        assert_eq!(c.env["ANTHROPIC_API_KEY"], "sk-x");
        let gw = ProviderSettings {
            config: vec!["openai_base_url=\"http://api.test/v1\"".into()],
            args: vec!["--oss".into()],
            ..Default::default()
        };
        let c = run_command(
            Provider::Codex,
            &RunSpec {
                prompt: "p",
                ..Default::default()
            },
            &gw,
        );
        assert_eq!(
            c.argv,
            [
                "codex",
                "exec",
                "-s",
                "workspace-write",
                "--json",
                "--skip-git-repo-check",
                "-c",
                "openai_base_url=\"http://api.test/v1\"",
                "--oss",
                "p"
            ]
        );
        let c = run_command(
            Provider::Codex,
            &RunSpec {
                prompt: "p",
                resume: Some("th-1"),
                api_key: Some("k"),
                ..Default::default()
            },
            &s,
        );
        assert_eq!(
            &c.argv[..6],
            [
                "codex",
                "exec",
                "resume",
                "th-1",
                "-c",
                "sandbox_mode=\"workspace-write\""
            ]
        );
        assert!(!c.argv.contains(&"-s".to_string()), "resume has no -s");
        assert_eq!(c.env["CODEX_API_KEY"], "k");
        let c = run_command(
            Provider::GeminiCli,
            &RunSpec {
                prompt: "p",
                model: Some("m2"),
                ..Default::default()
            },
            &s,
        );
        assert_eq!(
            c.argv,
            [
                "gemini",
                "-p",
                "p",
                "--output-format",
                "stream-json",
                "--skip-trust",
                "-m",
                "m2"
            ]
        );
    }
}

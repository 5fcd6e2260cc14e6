//! What is known about each provider's CLI login (SPEC §3, checked against
//! the real CLIs in Nov 2026): the command, its environment, the shape of its
//! authorization URL, where its listener waits, and its credential files.

use std::path::PathBuf;

pub use polydev_core::auth::Provider;

/// How Gemini CLI is asked to sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeminiMode {
    /// `NO_BROWSER=true`: the URL is printed and the code is pasted into the
    /// terminal. Works without a display and without a reachable listener.
    Paste,
    /// The URL goes to `xdg-open`/`$BROWSER`; the redirect reaches
    /// `127.0.0.1:<callback_port>/oauth2callback` (`OAUTH_CALLBACK_PORT`).
    Browser {
        /// The port the CLI listens on.
        callback_port: u16,
    },
}

/// Choices for one login's environment.
#[derive(Debug, Clone)]
pub struct LoginOptions {
    /// The program to run; `None` runs the provider's usual name from `PATH`.
    pub program: Option<PathBuf>,
    /// `DISPLAY` for the CLI (and the browser it opens), if the VM has one.
    pub display: Option<String>,
    /// Gemini's sign-in mode (ignored for the other providers).
    pub gemini_mode: GeminiMode,
    /// `PATH` for the CLI.
    pub path: String,
    /// Extra environment (a proxy, `POLYDEV_STANDIN_OAUTH` in tests, ...).
    pub extra_env: Vec<(String, String)>,
    /// Command the `$BROWSER` hook runs after recording a URL, e.g.
    /// `["polydev-agent", "open-url"]`; empty for none.
    pub opener: Vec<String>,
    /// Where each session's hook directory is made.
    pub runtime_dir: PathBuf,
}

impl Default for LoginOptions {
    fn default() -> Self {
        Self {
            program: None,
            display: None,
            gemini_mode: GeminiMode::Paste,
            path: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            extra_env: Vec::new(),
            opener: Vec::new(),
            runtime_dir: std::env::temp_dir(),
        }
    }
}

/// Where a provider's authorization endpoint is: the real host, and the path
/// (the same on the stand-in OAuth server, which only replaces the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthorizeEndpoint {
    /// Host of the real endpoint.
    pub host: &'static str,
    /// Path of the endpoint.
    pub path: &'static str,
}

/// The provider's CLI as found on `PATH`.
pub fn program_name(provider: Provider) -> &'static str {
    match provider {
        Provider::ClaudeCode => "claude",
        Provider::Codex => "codex",
        Provider::GeminiCli => "gemini",
    }
}

/// Arguments after the program name that start a login. Gemini has no login
/// command: its interactive screen signs in on first start.
pub fn login_args(provider: Provider) -> &'static [&'static str] {
    match provider {
        Provider::ClaudeCode => &["auth", "login"],
        Provider::Codex => &["login"],
        Provider::GeminiCli => &[],
    }
}

/// Provider-specific environment for a login, not counting the `$BROWSER`
/// hook, `HOME` and friends (the session adds those).
pub fn login_env(provider: Provider, options: &LoginOptions) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| env.push((k.to_string(), v.to_string()));
    if let Some(display) = &options.display {
        set("DISPLAY", display);
    }
    match provider {
        // Without it the paste-code link on stdout is shortened and cannot be
        // recognised as an authorization URL.
        Provider::ClaudeCode => set("CLAUDE_CODE_FULL_SIGN_IN_LINK", "1"),
        Provider::Codex => {}
        Provider::GeminiCli => {
            // "Login with Google" when the CLI runs without a terminal; with
            // one (as here) the choice comes from ~/.gemini/settings.json,
            // which `prepare::prepare_home` writes.
            set("GOOGLE_GENAI_USE_GCA", "true");
            match options.gemini_mode {
                GeminiMode::Paste => set("NO_BROWSER", "true"),
                GeminiMode::Browser { callback_port } => {
                    set("OAUTH_CALLBACK_PORT", &callback_port.to_string())
                }
            }
        }
    }
    env
}

/// The real authorization endpoint.
pub fn authorize_endpoint(provider: Provider) -> AuthorizeEndpoint {
    match provider {
        Provider::ClaudeCode => AuthorizeEndpoint {
            host: "claude.com",
            path: "/cai/oauth/authorize",
        },
        Provider::Codex => AuthorizeEndpoint {
            host: "auth.openai.com",
            path: "/oauth/authorize",
        },
        Provider::GeminiCli => AuthorizeEndpoint {
            host: "accounts.google.com",
            path: "/o/oauth2/v2/auth",
        },
    }
}

/// The hosts a provider's authorization URL may point at (`https`, port
/// 443): its [`authorize_endpoint`] and the other sign-in pages its CLI is
/// known to send users to (Claude's account and console logins).
pub fn authorize_hosts(provider: Provider) -> &'static [&'static str] {
    match provider {
        Provider::ClaudeCode => &[
            "claude.com",
            "claude.ai",
            "platform.claude.com",
            "console.anthropic.com",
        ],
        Provider::Codex => &["auth.openai.com"],
        Provider::GeminiCli => &["accounts.google.com"],
    }
}

/// A listener whose address does not depend on the URL: codex always waits
/// on `127.0.0.1:1455/auth/callback`. The others put theirs in `redirect_uri`.
pub fn fixed_callback(provider: Provider) -> Option<(u16, &'static str)> {
    match provider {
        Provider::Codex => Some((CODEX_CALLBACK_PORT, "/auth/callback")),
        _ => None,
    }
}

/// Codex's fixed callback port: one codex login per VM at a time.
pub const CODEX_CALLBACK_PORT: u16 = 1455;

/// The credential file, relative to the CLI user's home.
pub fn credential_file(provider: Provider) -> &'static str {
    match provider {
        Provider::ClaudeCode => ".claude/.credentials.json",
        Provider::Codex => ".codex/auth.json",
        Provider::GeminiCli => ".gemini/oauth_creds.json",
    }
}

/// The most bytes a credential file may have when it is taken from the VM
/// it was written in (the real files are a few KiB).
pub const CREDENTIAL_MAX_BYTES: usize = 64 << 10;

/// A file written next to the credential file that belongs with it when the
/// credentials are moved to another VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompanionFile {
    /// Path relative to the CLI user's home.
    pub path: &'static str,
    /// The most bytes it may have.
    pub max_bytes: usize,
    /// What is installed in the other VM.
    pub install: Install,
}

/// What is installed for a companion file in the VM the credentials move to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Install {
    /// The file as the CLI wrote it (it must be JSON).
    AsWritten,
    /// Gemini's settings with nothing but the auth type the sign-in used
    /// ([`crate::prepare::gemini_signed_in_settings`]), whatever the file said.
    GeminiAuthType,
}

/// Files written next to the credential file that belong with it when the
/// credentials are moved to another VM (may be absent). Nothing else is
/// taken from the VM a login ran in.
pub fn companion_files(provider: Provider) -> &'static [CompanionFile] {
    match provider {
        Provider::GeminiCli => &[
            CompanionFile {
                path: ".gemini/google_accounts.json",
                max_bytes: 16 << 10,
                install: Install::AsWritten,
            },
            CompanionFile {
                path: ".gemini/settings.json",
                max_bytes: 64 << 10,
                install: Install::GeminiAuthType,
            },
        ],
        _ => &[],
    }
}

/// Command (after the program name) that reports the login state offline,
/// where the CLI has one.
pub fn status_args(provider: Provider) -> Option<&'static [&'static str]> {
    match provider {
        Provider::Codex => Some(&["login", "status"]),
        Provider::ClaudeCode | Provider::GeminiCli => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for (s, p) in [
            ("claude_code", Provider::ClaudeCode),
            ("codex", Provider::Codex),
            ("gemini_cli", Provider::GeminiCli),
        ] {
            assert_eq!(s.parse::<Provider>().unwrap(), p);
            assert_eq!(p.to_string(), s);
        }
        assert!("claude".parse::<Provider>().is_err());
    }

    #[test]
    fn the_real_endpoint_is_an_allowed_host_and_files_are_bounded() {
        for p in [Provider::ClaudeCode, Provider::Codex, Provider::GeminiCli] {
            assert!(
                authorize_hosts(p).contains(&authorize_endpoint(p).host),
                "{p}"
            );
            for f in companion_files(p) {
                assert!(f.max_bytes > 0 && f.max_bytes <= CREDENTIAL_MAX_BYTES);
                assert_ne!(f.path, credential_file(p));
                assert!(!f.path.starts_with('/') && !f.path.contains(".."));
            }
        }
        assert_eq!(
            companion_files(Provider::GeminiCli)
                .iter()
                .find(|f| f.path == crate::prepare::GEMINI_SETTINGS)
                .map(|f| f.install),
            Some(Install::GeminiAuthType)
        );
    }

    #[test]
    fn gemini_env_follows_mode() {
        let mut o = LoginOptions::default();
        let env = login_env(Provider::GeminiCli, &o);
        assert!(env.contains(&("NO_BROWSER".into(), "true".into())));
        o.gemini_mode = GeminiMode::Browser {
            callback_port: 8085,
        };
        o.display = Some(":1".into());
        let env = login_env(Provider::GeminiCli, &o);
        assert!(env.contains(&("OAUTH_CALLBACK_PORT".into(), "8085".into())));
        assert!(env.contains(&("DISPLAY".into(), ":1".into())));
        assert!(!env.iter().any(|(k, _)| k == "NO_BROWSER"));
    }
}

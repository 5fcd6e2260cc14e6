//! The providers file (`POLYDEV_PROVIDERS_FILE`, TOML): per provider, extra
//! environment and CLI configuration for runs, a default model and
//! permission mode. Companies send these CLIs through their own gateways:
//!
//! ```toml
//! [claude_code]
//! env = { ANTHROPIC_BASE_URL = "https://llm-gateway.example.com" }
//! model = "claude-sonnet-4-5"
//! permission_mode = "acceptEdits"
//!
//! [codex]
//! config = ['openai_base_url="https://llm-gateway.example.com/v1"']
//!
//! [gemini_cli]
//! env = { GOOGLE_GEMINI_BASE_URL = "https://llm-gateway.example.com" }
//! selected_auth_type = "gemini-api-key"
//! args = ["--approval-mode", "yolo"]
//! ```
//!
//! Unknown providers and keys are errors, which name the line.

use polydev_core::auth::Provider;
use std::collections::BTreeMap;

/// One provider's run settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    /// Extra environment of every run.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Codex `-c key=value` overrides.
    #[serde(default)]
    pub config: Vec<String>,
    /// Extra arguments of every run, before the prompt (e.g. Gemini CLI's
    /// `["--approval-mode", "yolo"]` so tools run without asking).
    #[serde(default)]
    pub args: Vec<String>,
    /// Default model (a run may ask for another).
    #[serde(default)]
    pub model: Option<String>,
    /// Claude Code's `--permission-mode`.
    #[serde(default)]
    pub permission_mode: Option<String>,
    /// Gemini CLI's `security.auth.selectedType` for runs (it must match
    /// how the CLI reaches its API: `oauth-personal`, `gemini-api-key`, …).
    #[serde(default)]
    pub selected_auth_type: Option<String>,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvidersFile {
    /// Claude Code.
    #[serde(default)]
    pub claude_code: ProviderSettings,
    /// Codex CLI.
    #[serde(default)]
    pub codex: ProviderSettings,
    /// Gemini CLI.
    #[serde(default)]
    pub gemini_cli: ProviderSettings,
}

impl ProvidersFile {
    /// Parses the file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<ProvidersFile, String> {
        let f: ProvidersFile = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            match line {
                Some(l) => format!("{origin}, line {l}: {}", e.message()),
                None => format!("{origin}: {}", e.message()),
            }
        })?;
        for (p, s) in [
            ("claude_code", &f.claude_code),
            ("codex", &f.codex),
            ("gemini_cli", &f.gemini_cli),
        ] {
            for k in s.env.keys() {
                let ok = !k.is_empty()
                    && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && !k.as_bytes()[0].is_ascii_digit();
                if !ok {
                    return Err(format!(
                        "{origin}: [{p}] env: {k:?} is not an environment variable name"
                    ));
                }
            }
            for c in &s.config {
                if !c.contains('=') {
                    return Err(format!("{origin}: [{p}] config: {c:?} is not key=value"));
                }
            }
        }
        Ok(f)
    }

    /// Reads and parses a file.
    pub fn load(path: &std::path::Path) -> Result<ProvidersFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading the providers file {}: {e}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The settings of one provider.
    pub fn get(&self, p: Provider) -> &ProviderSettings {
        match p {
            Provider::ClaudeCode => &self.claude_code,
            Provider::Codex => &self.codex,
            Provider::GeminiCli => &self.gemini_cli,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_the_bad_line() {
        let f = ProvidersFile::parse(
            "[claude_code]\nenv = { ANTHROPIC_BASE_URL = \"http://api.test\" }\nmodel = \"m\"\n\n[codex]\nconfig = ['openai_base_url=\"http://api.test/v1\"']\n",
            "providers.toml",
        )
        .unwrap();
        assert_eq!(
            f.get(Provider::ClaudeCode).env["ANTHROPIC_BASE_URL"],
            "http://api.test"
        );
        assert_eq!(f.get(Provider::Codex).config.len(), 1);
        assert_eq!(f.get(Provider::GeminiCli), &ProviderSettings::default());
        let e =
            ProvidersFile::parse("[codex]\nconfig = []\nmodle = \"x\"\n", "p.toml").unwrap_err();
        assert!(e.contains("line 3") && e.contains("modle"), "{e}");
        let e = ProvidersFile::parse("[cursor]\n", "p.toml").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        let e = ProvidersFile::parse("[codex]\nconfig = [\"nokey\"]\n", "p.toml").unwrap_err();
        assert!(e.contains("key=value"), "{e}");
        let e = ProvidersFile::parse("[gemini_cli]\nenv = { \"A-B\" = \"x\" }\n", "p.toml")
            .unwrap_err();
        assert!(e.contains("A-B"), "{e}");
    }
}

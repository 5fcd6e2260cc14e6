//! The stand-in CLIs (`standins/*.js`, Node.js), as the files a test image
//! installs in place of the real `claude`, `codex` and `gemini`.
//!
//! They are test doubles, not the real programs: they imitate each CLI's
//! login (ports, paths, output, credential file formats) against the OAuth
//! stand-in server at [`TEST_PROVIDER_URL`], the address where the tests
//! serve it from a network namespace of their own (see the connect-flow
//! tests).

use crate::Provider;

/// Name of the test "provider", which the tests' DNS server answers and
/// guests reach through egress.
pub const TEST_PROVIDER_HOST: &str = "auth.provider.test";
/// Its address in the tests' "internet" (a documentation range).
pub const TEST_PROVIDER_IP: &str = "203.0.113.40";
/// Port the OAuth stand-in listens on there.
pub const TEST_PROVIDER_PORT: u16 = 8080;
/// The OAuth stand-in's base URL baked into the stand-in image.
pub const TEST_PROVIDER_URL: &str = "http://auth.provider.test:8080";
/// Where the stand-in scripts live in a test image.
pub const SCRIPT_DIR: &str = "/usr/local/lib/polydev-standins";
/// Where the commands that run them live (first on the guest's `PATH`).
pub const BIN_DIR: &str = "/usr/local/bin";

/// The stand-in script of `provider`.
pub fn script(provider: Provider) -> &'static str {
    match provider {
        Provider::ClaudeCode => include_str!("../standins/claude.js"),
        Provider::Codex => include_str!("../standins/codex.js"),
        Provider::GeminiCli => include_str!("../standins/gemini.js"),
    }
}

/// The command that replaces the real CLI: runs the stand-in with the test
/// provider's URL unless the environment names another.
pub fn wrapper(provider: Provider) -> String {
    let cmd = crate::provider::program_name(provider);
    format!(
        "#!/bin/sh\n\
         # polydev TEST IMAGE: a stand-in for `{cmd}`, not the real CLI.\n\
         : \"${{POLYDEV_STANDIN_OAUTH:={TEST_PROVIDER_URL}}}\"\n\
         export POLYDEV_STANDIN_OAUTH\n\
         exec node {SCRIPT_DIR}/{cmd}.js \"$@\"\n"
    )
}

/// Every file a stand-in image adds: (path, content, mode).
pub fn image_files() -> Vec<(String, String, u32)> {
    let mut files = Vec::new();
    for p in [Provider::ClaudeCode, Provider::Codex, Provider::GeminiCli] {
        let cmd = crate::provider::program_name(p);
        files.push((
            format!("{SCRIPT_DIR}/{cmd}.js"),
            script(p).to_owned(),
            0o644,
        ));
        files.push((format!("{BIN_DIR}/{cmd}"), wrapper(p), 0o755));
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrappers_run_the_scripts_against_the_test_provider() {
        let w = wrapper(Provider::Codex);
        assert!(w.starts_with("#!/bin/sh\n"));
        assert!(w.contains("exec node /usr/local/lib/polydev-standins/codex.js \"$@\""));
        assert!(w.contains(TEST_PROVIDER_URL));
        assert_eq!(
            TEST_PROVIDER_URL,
            format!("http://{TEST_PROVIDER_HOST}:{TEST_PROVIDER_PORT}")
        );
        assert_eq!(image_files().len(), 6);
        assert!(script(Provider::GeminiCli).contains("STAND-IN"));
    }
}

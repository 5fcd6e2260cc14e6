//! The real CLIs (`claude`, `codex`, `gemini` at the versions pinned in the
//! browser image) in a real browser VM, offline: the agent must capture a
//! well-formed authorization URL from each, and the provider that cannot be
//! reached must end the session as `failed`, saying so, with the VM destroyed.
//!
//! There is no internet here, so after the URL the test does what a user's
//! sign-in would make happen next, and the CLI then has to reach its
//! provider: for Codex and Claude Code the VM's Chromium follows the
//! redirect to the CLI's localhost listener (with a code no provider issued);
//! for Gemini a code is pasted through the API.

mod common;
use common::connect::{browser_vm, cdp, wait_browser_vm_gone, wait_status};
use common::{token_of, Controller};
use polydev_login::url::Url;
use polydev_login::Provider;
use serde_json::json;
use std::time::{Duration, Instant};

fn real_cli_session(c: &Controller, provider: Provider) {
    let started = Instant::now();
    let (st, v) = c.call(
        "POST",
        "/api/auth/start",
        Some(&format!(
            r#"{{"userId":"real-cli","provider":"{provider}"}}"#
        )),
    );
    assert_eq!(st, 200, "{v}");
    let sid = v["sessionId"].as_str().unwrap().to_string();
    let (vm, ns) = browser_vm(c, &sid);
    let s = wait_status(c, &sid, "awaiting_user_auth", Duration::from_secs(600));
    eprintln!(
        "{provider}: awaiting_user_auth after {:?}",
        started.elapsed()
    );
    let raw = s["authUrl"].as_str().expect("authUrl");
    let url = Url::parse(raw).unwrap_or_else(|| panic!("{provider}: not a URL: {raw}"));
    let want = polydev_login::provider::authorize_endpoint(provider);
    assert_eq!(url.host, want.host, "{provider}: {raw}");
    assert_eq!(url.path, want.path, "{provider}: {raw}");
    assert_eq!(url.scheme, "https", "{provider}: {raw}");
    let q = |k: &str| {
        url.param(k)
            .unwrap_or_else(|| panic!("{provider}: no {k} in {raw}"))
            .to_string()
    };
    assert!(!q("client_id").is_empty());
    assert_eq!(q("response_type"), "code");
    assert!(q("code_challenge").len() >= 43, "{raw}");
    assert_eq!(q("code_challenge_method"), "S256");
    let state = q("state");
    assert!(state.len() >= 8, "{raw}");
    let redirect = q("redirect_uri");
    let loopback =
        redirect.starts_with("http://localhost:") || redirect.starts_with("http://127.0.0.1:");
    match provider {
        Provider::Codex => assert!(
            loopback && redirect.ends_with(":1455/auth/callback"),
            "{redirect}"
        ),
        Provider::ClaudeCode => assert!(loopback && redirect.ends_with("/callback"), "{redirect}"),
        Provider::GeminiCli => assert!(redirect.starts_with("https://"), "{redirect}"),
    }

    // What the user's sign-in would cause next; the CLI must then reach its provider.
    match provider {
        Provider::GeminiCli => {
            let token = token_of(c, &vm);
            // Gemini only prints its URL: the agent put it on the screen.
            cdp(
                &ns,
                &token,
                &["wait", &state, "300"],
                Duration::from_secs(400),
            );
            let paste = || {
                c.call(
                    "POST",
                    &format!("/api/auth/session/{sid}/code"),
                    Some(&json!({"code": "4/polydev-test-code-no-provider-issued"}).to_string()),
                )
            };
            let (st, v) = paste();
            assert_eq!(st, 200, "{v}");
            // The code fails (no provider); Gemini asks once more, with a
            // new URL, which the session shows and the VM's screen too.
            let start = Instant::now();
            let again = loop {
                let s = common::connect::session(c, &sid);
                let now = s["authUrl"].as_str().unwrap_or_default().to_string();
                if now != raw {
                    break now;
                }
                assert_eq!(s["status"], "awaiting_user_auth", "{provider}: {s}");
                assert!(
                    start.elapsed() < Duration::from_secs(300),
                    "{provider}: no new URL after a failed code: {s}"
                );
                std::thread::sleep(Duration::from_millis(500));
            };
            assert!(
                polydev_login::url::is_authorize_url(provider, &again),
                "{provider}: {again}"
            );
            let state2 = Url::parse(&again)
                .unwrap()
                .param("state")
                .unwrap()
                .to_string();
            assert_ne!(state2, state, "{provider}: the retry has a new state");
            cdp(
                &ns,
                &token,
                &["wait", &state2, "300"],
                Duration::from_secs(400),
            );
            let (st, v) = paste();
            assert_eq!(st, 200, "{v}");
        }
        _ => {
            let token = token_of(c, &vm);
            let back = format!("{redirect}?code=polydev-test-code&state={state}");
            cdp(&ns, &token, &["wait", ":", "100"], Duration::from_secs(400));
            // Not Page.navigate: the CLI may hold the redirect's answer
            // while it tries its provider.
            // The CLI then fails and the VM is destroyed, maybe before this
            // call returns: do not wait for it.
            let go = format!("location.href = {}; true", json!(back));
            let (ns2, token2) = (ns.clone(), token.clone());
            std::thread::spawn(move || {
                let _ = common::connect::exec(
                    &ns2,
                    &token2,
                    &[
                        "node",
                        "--experimental-websocket",
                        "--no-warnings",
                        "/usr/local/bin/polydev-cdp",
                        "eval",
                        ":",
                        &go,
                    ],
                    Some("polydev"),
                );
            });
        }
    }
    let start = Instant::now();
    let s = loop {
        let s = common::connect::session(c, &sid);
        if ["failed", "completed", "timeout", "cancelled"].contains(&s["status"].as_str().unwrap())
        {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "{provider}: session still {} : {s}",
            s["status"]
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!("{provider}: {} — {}", s["status"], s["errorMessage"]);
    assert_eq!(s["status"], "failed", "{provider}: {s}");
    let msg = s["errorMessage"].as_str().unwrap_or_default();
    assert!(
        msg.contains("cannot reach the provider"),
        "{provider}: the error must say the provider cannot be reached: {msg}"
    );
    wait_browser_vm_gone(c, &vm, &ns);
}

#[test]
fn real_clis_show_a_well_formed_url_and_fail_clearly_offline() {
    let c = Controller::start(&[
        ("POLYDEV_BROWSER_MEMORY_MB", "1536"),
        ("POLYDEV_AUTH_TIMEOUT_SECS", "1200"),
        // The real Gemini CLI (Node.js) is slow to start under TCG.
        ("POLYDEV_AUTH_URL_TIMEOUT_SECS", "600"),
    ]);
    for p in [Provider::Codex, Provider::ClaudeCode] {
        real_cli_session(&c, p);
    }
}

/// The real Gemini CLI in its paste mode; a test of its own so that it runs
/// beside the other two.
#[test]
fn real_gemini_shows_a_well_formed_url_and_fails_clearly_offline() {
    let c = Controller::start(&[
        ("POLYDEV_BROWSER_MEMORY_MB", "1536"),
        ("POLYDEV_AUTH_TIMEOUT_SECS", "1200"),
        ("POLYDEV_AUTH_URL_TIMEOUT_SECS", "600"),
    ]);
    real_cli_session(&c, Provider::GeminiCli);
}

//! The connect flow end to end, in real VMs, with stand-ins where the
//! internet would be: the browser VM boots the stand-in test image
//! (`polydev image standins`: the browser image whose `claude`, `codex` and
//! `gemini` are stand-ins that behave like the real CLIs' logins), and the
//! OAuth 2.0 stand-in runs at `auth.provider.test` in the test's own
//! "internet" (`common::internet`: a namespace behind a veth that is the
//! controller's egress uplink, with a DNS server for the name). The browser
//! VM reaches it the way it reaches a real provider: the controller's DNS
//! forwarder, the VM's link and the host firewall.
//!
//! For each provider the test drives the VM's Chromium through the agent
//! (`polydev-cdp` over `/exec`, the DevTools protocol on the guest's
//! loopback): it signs in and approves on the stand-in's page; Claude and
//! Codex then get the redirect on their localhost listener inside the VM,
//! Gemini shows a code that the test pastes through the API. It then checks:
//! the session is `completed`; the stored row decrypts (with the controller's
//! master key) to exactly the file in the user's CLI VM, and its plaintext
//! appears nowhere in the database files; the file has mode 0600 and belongs
//! to the CLI user; where the CLI can check offline (`codex login status`,
//! the real Codex in the CLI image), it says it is logged in; the browser VM
//! is gone.

mod common;
use common::connect::{browser_vm, cdp, exec, standin_image, wait_browser_vm_gone, wait_status};
use common::internet::TestInternet;
use common::{token_of, Controller};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const USER: &str = "e2e-user";

/// Signs in on the stand-in's page in the VM's Chromium and approves.
fn approve_in_chromium(ns: &str, token: &str, auth_url: &str) {
    // Chromium was opened on the URL by the CLI's `$BROWSER`; load it again
    // in case the provider link came up after the first attempt.
    cdp(ns, token, &["wait", ":", "100"], Duration::from_secs(400));
    cdp(
        ns,
        token,
        &["navigate", ":", auth_url],
        Duration::from_secs(30),
    );
    let approve = r#"new Promise((ok, fail) => {
        const until = Date.now() + 60000;
        const go = () => {
            const b = document.getElementById('approve');
            if (!b) return Date.now() > until ? fail(new Error('no approve button: ' + document.title)) : setTimeout(go, 250);
            document.getElementById('username').value = 'e2e';
            b.click();
            ok(document.title);
        };
        go();
    })"#;
    cdp(
        ns,
        token,
        &["eval", polydev_login::standins::TEST_PROVIDER_HOST, approve],
        Duration::from_secs(60),
    );
}

/// The code a paste page shows (Gemini's `/authcode`, Claude's
/// `/oauth/code/callback`), read from the VM's Chromium.
fn pasted_code(ns: &str, token: &str, page: &str) -> String {
    let read = r#"new Promise((ok, fail) => {
        const until = Date.now() + 60000;
        const go = () => {
            const c = document.getElementById('code');
            if (!c) return Date.now() > until ? fail(new Error('no code on ' + location.href)) : setTimeout(go, 250);
            ok(c.textContent.trim());
        };
        go();
    })"#;
    let out = cdp(ns, token, &["eval", page, read], Duration::from_secs(90));
    serde_json::from_str::<String>(&out).expect("the code as a JSON string")
}

struct Connected {
    plaintext: Vec<u8>,
}

/// How the user finishes signing in.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Finish {
    /// The provider redirects to the CLI's localhost listener in the VM
    /// (Codex, Claude Code), or shows a code to paste (Gemini).
    Usual,
    /// Claude Code's other way: the link the CLI prints (redirect to the
    /// provider's code page, same PKCE and state), then `code#state` pasted.
    ClaudePaste,
}

/// Claude's printed paste link: its browser link with the provider's code
/// page as `redirect_uri` (the CLI prints both with one PKCE pair and state).
fn claude_paste_link(auth_url: &str) -> String {
    let start = auth_url.find("redirect_uri=").expect("a redirect_uri") + "redirect_uri=".len();
    let end = auth_url[start..]
        .find('&')
        .map_or(auth_url.len(), |e| start + e);
    let page = format!(
        "{}/oauth/code/callback",
        polydev_login::standins::TEST_PROVIDER_URL
    );
    let encoded: String = page
        .chars()
        .map(|ch| match ch {
            ':' => "%3A".to_string(),
            '/' => "%2F".to_string(),
            c => c.to_string(),
        })
        .collect();
    format!("{}{}{}", &auth_url[..start], encoded, &auth_url[end..])
}

fn connect(c: &Controller, net: &TestInternet, provider: &str, finish: Finish) -> Connected {
    let started = Instant::now();
    let (st, v) = c.call(
        "POST",
        "/api/auth/start",
        Some(&format!(r#"{{"userId":"{USER}","provider":"{provider}"}}"#)),
    );
    assert_eq!(st, 200, "{v}");
    let sid = v["sessionId"].as_str().unwrap().to_string();
    let (vm, ns) = browser_vm(c, &sid);
    let s = wait_status(c, &sid, "awaiting_user_auth", Duration::from_secs(600));
    let auth_url = s["authUrl"].as_str().expect("authUrl").to_string();
    eprintln!(
        "{provider}: awaiting_user_auth after {:?}: {auth_url}",
        started.elapsed()
    );
    assert!(
        auth_url.starts_with(polydev_login::standins::TEST_PROVIDER_URL),
        "{auth_url}"
    );
    let token = token_of(c, &vm);
    net.clear();
    let paste_page = match (provider, finish) {
        ("gemini_cli", _) => {
            approve_in_chromium(&ns, &token, &auth_url);
            Some("/authcode")
        }
        (_, Finish::ClaudePaste) => {
            approve_in_chromium(&ns, &token, &claude_paste_link(&auth_url));
            Some("/oauth/code/callback")
        }
        _ => {
            approve_in_chromium(&ns, &token, &auth_url);
            None
        }
    };
    if let Some(page) = paste_page {
        let code = pasted_code(&ns, &token, page);
        if finish == Finish::ClaudePaste {
            assert!(
                code.contains('#'),
                "Claude's paste page shows code#state: {code}"
            );
        }
        let (st, v) = c.call(
            "POST",
            &format!("/api/auth/session/{sid}/code"),
            Some(&json!({ "code": code }).to_string()),
        );
        assert_eq!(st, 200, "{v}");
    }
    // Chromium found the provider by name, through the VM's DNS forwarder.
    let host = polydev_login::standins::TEST_PROVIDER_HOST;
    assert!(
        net.lines()
            .iter()
            .any(|l| l.starts_with(&format!("dns {host} A"))),
        "{provider}: no DNS question for {host} reached the test internet: {:?}",
        net.lines()
    );
    let s = wait_status(c, &sid, "completed", Duration::from_secs(600));
    eprintln!("{provider}: completed after {:?}", started.elapsed());
    assert!(s["errorMessage"].is_null(), "{s}");

    wait_browser_vm_gone(c, &vm, &ns);

    // The row decrypts, with the controller's key, to the credentials.
    let plaintext = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = polydev_store::Store::sqlite_in(c.data_dir()).await.unwrap();
        let row = store
            .get_credential(USER, provider)
            .await
            .unwrap()
            .expect("a credential row");
        let key = polydev_vault::MasterKey::from_file(&c.data_dir().join("master.key")).unwrap();
        let ring = polydev_vault::Keyring::new(key);
        let sealed = polydev_vault::Sealed {
            ciphertext: row.encrypted_data.clone(),
            iv: row.iv.clone(),
            tag: row.tag.clone(),
            salt: row.salt.clone(),
            key_id: row.key_id.clone(),
        };
        ring.open(USER, provider, &sealed)
            .expect("the row decrypts")
    });
    Connected {
        plaintext: plaintext.to_vec(),
    }
}

/// The database files hold no trace of `secret`.
fn assert_not_in_database(c: &Controller, secret: &str) {
    for f in std::fs::read_dir(c.data_dir()).unwrap() {
        let p = f.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("polydev.db") {
            let bytes = std::fs::read(&p).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret:?} appears in plain text in {}",
                p.display()
            );
        }
    }
}

#[test]
fn connect_three_providers_end_to_end_with_standins_then_reconnect_claude_by_paste() {
    let image = standin_image();
    let net = common::internet::start_with_provider();
    let env = net.controller_env();
    let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    vars.extend([
        ("POLYDEV_BROWSER_ROOTFS", image.as_str()),
        ("POLYDEV_BROWSER_MEMORY_MB", "1536"),
        // Under TCG on a loaded host the test's own steps take minutes.
        ("POLYDEV_AUTH_TIMEOUT_SECS", "1200"),
        ("POLYDEV_AUTH_URL_TIMEOUT_SECS", "600"),
        // The stand-in OAuth server is not a provider's sign-in host.
        (
            "POLYDEV_AUTH_URL_ORIGINS",
            polydev_login::standins::TEST_PROVIDER_URL,
        ),
    ]);
    let c = Controller::start(&vars);
    let claude = "/home/polydev/.claude/.credentials.json";
    let cases = [
        (
            "codex",
            "/home/polydev/.codex/auth.json",
            "access_token",
            Finish::Usual,
        ),
        ("claude_code", claude, "accessToken", Finish::Usual),
        (
            "gemini_cli",
            "/home/polydev/.gemini/oauth_creds.json",
            "access_token",
            Finish::Usual,
        ),
        // Reconnecting Claude, by its paste path: the row is replaced.
        ("claude_code", claude, "accessToken", Finish::ClaudePaste),
    ];
    let mut first_claude: Option<Vec<u8>> = None;
    for (provider, path, token_field, finish) in cases {
        let got = connect(&c, &net, provider, finish);
        assert_eq!(
            net.leaked_packets(),
            0,
            "VM packets went to the host's real uplink"
        );
        if provider == "claude_code" {
            match &first_claude {
                None => first_claude = Some(got.plaintext.clone()),
                Some(before) => {
                    assert_ne!(
                        before, &got.plaintext,
                        "the reconnect stored the old credentials"
                    );
                    let rows = tokio::runtime::Runtime::new().unwrap().block_on(async {
                        let store = polydev_store::Store::sqlite_in(c.data_dir()).await.unwrap();
                        let all = store.list_credentials(Some(USER)).await.unwrap();
                        all.iter().filter(|r| r.provider == provider).count()
                    });
                    assert_eq!(rows, 1, "one row per user and provider");
                }
            }
        }
        let text = String::from_utf8(got.plaintext.clone()).unwrap();
        let v: Value = serde_json::from_str(&text).expect("credentials are JSON");
        let find = |v: &Value| -> Option<String> {
            let mut stack = vec![v.clone()];
            while let Some(x) = stack.pop() {
                if let Some(o) = x.as_object() {
                    if let Some(t) = o.get(token_field).and_then(|t| t.as_str()) {
                        return Some(t.to_string());
                    }
                    stack.extend(o.values().cloned());
                }
            }
            None
        };
        let access = find(&v).unwrap_or_else(|| panic!("no {token_field} in {text}"));
        assert!(access.len() > 16, "{access}");
        assert_not_in_database(&c, &access);

        // The file in the user's CLI VM: same bytes, 0600, the CLI user's.
        let (st, vms) = c.call("GET", &format!("/api/vms?userId={USER}"), None);
        assert_eq!(st, 200, "{vms}");
        let cli = vms["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["type"] == "cli" && v["status"] == "running")
            .unwrap_or_else(|| panic!("no running CLI VM for {USER}: {vms}"))
            .clone();
        let cli_id = cli["vmId"].as_str().unwrap();
        let cli_ns = cli["netns"].as_str().unwrap();
        let cli_token = token_of(&c, cli_id);
        let (code, out, err) = exec(cli_ns, &cli_token, &["stat", "-c", "%a %U", path], None);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.trim(), "600 polydev", "{provider}: {path}");
        let (code, content, err) = exec(cli_ns, &cli_token, &["cat", path], None);
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            content, text,
            "{provider}: the file differs from the sealed row"
        );
        if provider == "codex" {
            // The real Codex CLI in the CLI image checks the file offline.
            let (code, out, err) = exec(
                cli_ns,
                &cli_token,
                &["codex", "login", "status"],
                Some("polydev"),
            );
            assert_eq!(code, 0, "codex login status: {out} {err}");
            assert!(
                format!("{out}{err}").contains("Logged in"),
                "codex login status: {out} {err}"
            );
        }
        if provider == "gemini_cli" {
            let (code, out, err) = exec(
                cli_ns,
                &cli_token,
                &[
                    "stat",
                    "-c",
                    "%a %U",
                    "/home/polydev/.gemini/google_accounts.json",
                ],
                None,
            );
            assert_eq!((code, out.trim()), (0, "600 polydev"), "{err}");
        }
    }
}

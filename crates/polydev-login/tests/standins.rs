//! Drives the stand-in CLIs (`standins/*.js`, Node.js) through
//! [`LoginSession`] against the OAuth stand-in server, on the host: no VM,
//! no internet. The stand-ins imitate the real CLIs; they are not them.
//!
//! Needs `node` on `PATH`: without it the tests fail when `CI` is set and
//! print SKIPPED otherwise.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use polydev_login::credentials;
use polydev_login::session::LoginStatus;
use polydev_login::url::Url;
use polydev_login::{GeminiMode, LoginError, LoginOptions, LoginSession, Provider, RunAs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);

/// `node`'s directory, or `None` (SKIPPED) outside CI.
fn node_dir() -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .map(|d| Path::new(d).join("node"))
        .find(|p| p.is_file());
    match found {
        Some(p) => Some(p.parent().unwrap().to_path_buf()),
        None if std::env::var_os("CI").is_some() => {
            panic!("node (Node.js 20) is not on PATH: the stand-in CLI tests need it")
        }
        None => {
            eprintln!("SKIPPED: node is not on PATH; the stand-in CLI tests need Node.js");
            None
        }
    }
}

/// A test's world: a home, a bin directory with the stand-ins installed
/// under the real names, a runtime directory, and the OAuth stand-in.
struct World {
    _tmp: tempfile::TempDir,
    home: PathBuf,
    options: LoginOptions,
    oauth: String,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
        }
    }
}

async fn world(oauth_up: bool) -> Option<World> {
    let node = node_dir()?;
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let bin = tmp.path().join("bin");
    let run = tmp.path().join("run");
    for d in [&home, &bin, &run] {
        std::fs::create_dir_all(d).unwrap();
    }
    let standins = Path::new(env!("CARGO_MANIFEST_DIR")).join("standins");
    for name in ["claude", "codex", "gemini"] {
        std::os::unix::fs::symlink(standins.join(format!("{name}.js")), bin.join(name)).unwrap();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = if oauth_up {
        Some(tokio::spawn(async move {
            let _ = polydev_login::oauth_standin::serve(listener).await;
        }))
    } else {
        drop(listener); // nothing listens there now: "cannot reach the provider"
        None
    };
    let oauth = format!("http://{addr}");
    let options = LoginOptions {
        path: format!("{}:{}:/usr/bin:/bin", bin.display(), node.display()),
        extra_env: vec![("POLYDEV_STANDIN_OAUTH".into(), oauth.clone())],
        runtime_dir: run,
        ..LoginOptions::default()
    };
    Some(World {
        _tmp: tmp,
        home,
        options,
        oauth,
        server,
    })
}

impl World {
    fn start(&self, provider: Provider) -> Result<LoginSession, LoginError> {
        LoginSession::start(provider, &RunAs::current(&self.home), &self.options)
    }
}

/// A minimal HTTP/1.1 client: `(status, location, body)`.
async fn http(method: &str, url: &str, form: Option<&str>) -> (u16, Option<String>, String) {
    let u = Url::parse(url).unwrap();
    let mut s = tokio::net::TcpStream::connect((u.host.as_str(), u.port))
        .await
        .unwrap();
    let target = if u.raw_query.is_empty() {
        u.path.clone()
    } else {
        format!("{}?{}", u.path, u.raw_query)
    };
    let body = form.unwrap_or("");
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        u.host,
        u.port,
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let location = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("location")
            .then(|| v.trim().to_string())
    });
    (status, location, body.to_string())
}

/// Does what the user does in the browser: opens the sign-in page, fills in
/// a username and presses Approve. Returns where the server redirects.
async fn approve(authorize_url: &str) -> String {
    let (status, _, page) = http("GET", authorize_url, None).await;
    assert_eq!(status, 200, "sign-in page: {page}");
    assert!(page.contains("id=\"approve\""), "no Approve button: {page}");
    let u = Url::parse(authorize_url).unwrap();
    let mut form = form_urlencoded::Serializer::new(String::new());
    for k in [
        "client_id",
        "redirect_uri",
        "state",
        "scope",
        "code_challenge",
        "code_challenge_method",
    ] {
        form.append_pair(k, u.param(k).unwrap_or(""));
    }
    form.append_pair("username", "alice")
        .append_pair("action", "approve");
    let approve_url = format!("http://{}:{}/approve", u.host, u.port);
    let (status, location, body) = http("POST", &approve_url, Some(&form.finish())).await;
    assert_eq!(status, 303, "approve: {body}");
    location.expect("approve redirects")
}

/// The code shown on a paste-code page.
async fn pasted_code(page_url: &str) -> String {
    let (status, _, page) = http("GET", page_url, None).await;
    assert_eq!(status, 200, "{page}");
    let start = page.find("<pre id=\"code\">").unwrap() + "<pre id=\"code\">".len();
    let end = page[start..].find("</pre>").unwrap();
    page[start..start + end].to_string()
}

/// The URL found in the terminal output (it may arrive after the hook's).
async fn stdout_url(s: &LoginSession) -> String {
    for _ in 0..200 {
        if let Some(u) = s.urls().output {
            return u;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "no authorization URL in the output: {:?}",
        s.output_tail(20)
    );
}

fn assert_shape(url: &str, oauth: &str, path: &str, client_id: &str, redirect: &str, pkce: bool) {
    let u = Url::parse(url).unwrap();
    let server = Url::parse(oauth).unwrap();
    assert_eq!(
        (u.host.as_str(), u.port),
        (server.host.as_str(), server.port),
        "{url}"
    );
    assert_eq!(u.path, path, "{url}");
    assert_eq!(u.param("client_id"), Some(client_id), "{url}");
    assert_eq!(u.param("response_type"), Some("code"), "{url}");
    let r = u.param("redirect_uri").unwrap();
    assert!(
        r.starts_with(redirect),
        "redirect_uri {r} should start with {redirect}"
    );
    assert!(u.param("state").is_some_and(|s| s.len() >= 32), "{url}");
    if pkce {
        assert_eq!(u.param("code_challenge_method"), Some("S256"), "{url}");
        assert_eq!(u.param("code_challenge").map(str::len), Some(43), "{url}");
    }
}

fn assert_credentials(provider: Provider, home: &Path) {
    let path = credentials::path_in(provider, home);
    let content = std::fs::read(&path).unwrap();
    credentials::validate(provider, &content).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", path.display());
}

/// Every process in process group `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.get(2).and_then(|f| f.parse::<i32>().ok()) == Some(pgid) && fields[0] != "Z" {
            pids.push(pid);
        }
    }
    pids
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_via_browser_hook_and_localhost_callback() {
    let Some(w) = world(true).await else { return };
    let s = w.start(Provider::ClaudeCode).unwrap();
    let url = s.wait_for_url(WAIT).await.expect("URL captured");
    assert_eq!(
        s.urls().hook.first(),
        Some(&url),
        "the hook URL is preferred"
    );
    assert_shape(
        &url,
        &w.oauth,
        "/cai/oauth/authorize",
        "9d1c250a-e61b-44d9-88ed-5944d1962f5e",
        "http://localhost:",
        true,
    );
    // The paste-code link from stdout is captured too, full length.
    let printed = stdout_url(&s).await;
    assert_shape(
        &printed,
        &w.oauth,
        "/cai/oauth/authorize",
        "9d1c250a-e61b-44d9-88ed-5944d1962f5e",
        &format!("{}/oauth/code/callback", w.oauth),
        true,
    );

    let redirect = approve(&url).await;
    assert!(redirect.starts_with("http://localhost:"), "{redirect}");
    let answer = s.forward_callback(&redirect).await.unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(s.wait_for_outcome(WAIT).await, LoginStatus::Authenticated);
    assert_credentials(Provider::ClaudeCode, &w.home);
    let creds = s.credentials().unwrap();
    assert!(creds.primary_json()["claudeAiOauth"]["accessToken"]
        .as_str()
        .unwrap()
        .starts_with("at-"));
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_via_pasted_code_and_state() {
    let Some(w) = world(true).await else { return };
    let s = w.start(Provider::ClaudeCode).unwrap();
    s.wait_for_url(WAIT).await.expect("URL captured");
    let printed = stdout_url(&s).await;
    let page = approve(&printed).await;
    let code = pasted_code(&page).await;
    assert!(code.contains('#'), "claude shows code#state: {code}");
    s.type_code(&code).await.unwrap();
    assert_eq!(s.wait_for_outcome(WAIT).await, LoginStatus::Authenticated);
    assert_credentials(Provider::ClaudeCode, &w.home);
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_fixed_port_one_at_a_time_and_offline_status() {
    let Some(w) = world(true).await else { return };
    let s = w.start(Provider::Codex).unwrap();
    let second = w.start(Provider::Codex);
    assert!(matches!(second, Err(LoginError::CodexBusy)), "{second:?}");
    let url = s.wait_for_url(WAIT).await.expect("URL captured");
    assert_shape(
        &url,
        &w.oauth,
        "/oauth/authorize",
        "app_EMoamEEZ73f0CkXaXp7hrann",
        "http://127.0.0.1:1455/auth/callback",
        true,
    );
    assert_eq!(stdout_url(&s).await, url, "same URL on stdout and $BROWSER");

    let redirect = approve(&url).await;
    let answer = s.forward_callback(&redirect).await.unwrap();
    assert_eq!(answer.status, 302, "{answer:?}");
    assert_eq!(s.wait_for_outcome(WAIT).await, LoginStatus::Authenticated);
    assert_credentials(Provider::Codex, &w.home);
    let creds = s.credentials().unwrap().primary_json();
    assert!(creds["tokens"]["account_id"]
        .as_str()
        .unwrap()
        .starts_with("acct-"));

    // `codex login status` works offline.
    let out = std::process::Command::new("codex")
        .args(["login", "status"])
        .env("PATH", &w.options.path)
        .env("HOME", &w.home)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Logged in using ChatGPT"));

    // The slot is free again once the first login has ended.
    let mut again = None;
    for _ in 0..50 {
        match w.start(Provider::Codex) {
            Ok(s) => {
                again = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let again = again.expect("a new codex login after the first ended");
    again.cancel(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gemini_paste_mode_on_a_tty() {
    let Some(w) = world(true).await else { return };
    let s = w.start(Provider::GeminiCli).unwrap();
    let url = s.wait_for_url(WAIT).await.expect("URL captured");
    assert_shape(
        &url,
        &w.oauth,
        "/o/oauth2/v2/auth",
        "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com",
        &format!("{}/authcode", w.oauth),
        true,
    );
    let page = approve(&url).await;
    let code = pasted_code(&page).await;
    s.type_code(&code).await.unwrap();
    assert_eq!(s.wait_for_outcome(WAIT).await, LoginStatus::Authenticated);
    assert_credentials(Provider::GeminiCli, &w.home);
    let files: Vec<&str> = s
        .credentials()
        .unwrap()
        .files
        .iter()
        .map(|f| f.path)
        .collect();
    assert_eq!(
        files,
        [
            ".gemini/oauth_creds.json",
            ".gemini/google_accounts.json",
            ".gemini/settings.json"
        ]
    );
    // Gemini stays in its interactive screen: the caller ends it.
    let pid = s.pid();
    assert!(!group_members(pid).is_empty());
    s.cancel(Duration::from_secs(2)).await;
    assert_eq!(
        s.status(),
        LoginStatus::Authenticated,
        "cancel after success keeps it"
    );
    assert!(group_members(pid).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn gemini_browser_mode_via_xdg_open() {
    let Some(mut w) = world(true).await else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    w.options.gemini_mode = GeminiMode::Browser {
        callback_port: port,
    };
    w.options.display = Some(":99".into());
    let s = w.start(Provider::GeminiCli).unwrap();
    let url = s.wait_for_url(WAIT).await.expect("URL captured");
    assert_eq!(s.urls().hook.first(), Some(&url), "came through xdg-open");
    assert_shape(
        &url,
        &w.oauth,
        "/o/oauth2/v2/auth",
        "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com",
        &format!("http://127.0.0.1:{port}/oauth2callback"),
        false,
    );
    let redirect = approve(&url).await;
    s.forward_callback(&redirect).await.unwrap();
    assert_eq!(s.wait_for_outcome(WAIT).await, LoginStatus::Authenticated);
    assert_credentials(Provider::GeminiCli, &w.home);
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_provider_fails_with_the_clis_exit_and_message() {
    let Some(w) = world(false).await else { return };
    // claude: the redirect arrives, the token exchange cannot connect.
    let s = w.start(Provider::ClaudeCode).unwrap();
    let url = s.wait_for_url(WAIT).await.unwrap();
    let state = Url::parse(&url)
        .unwrap()
        .param("state")
        .unwrap()
        .to_string();
    let _ = s
        .forward_callback(&format!("code=anything&state={state}"))
        .await;
    match s.wait_for_outcome(WAIT).await {
        LoginStatus::Failed {
            exit_code,
            message,
            output,
            ..
        } => {
            assert_eq!(exit_code, Some(1));
            assert!(
                message.contains("Couldn't log in: connect ECONNREFUSED"),
                "{message}"
            );
            assert!(
                output.iter().any(|l| l.contains("Couldn't log in")),
                "{output:?}"
            );
        }
        other => panic!("expected failed, got {other:?}"),
    }
    // gemini: exit 41 with FatalAuthenticationError.
    let g = w.start(Provider::GeminiCli).unwrap();
    g.wait_for_url(WAIT).await.unwrap();
    g.type_code("some-code").await.unwrap();
    match g.wait_for_outcome(WAIT).await {
        LoginStatus::Failed {
            exit_code, message, ..
        } => {
            assert_eq!(exit_code, Some(41));
            assert!(message.contains("FatalAuthenticationError"), "{message}");
        }
        other => panic!("expected failed, got {other:?}"),
    }
    assert!(matches!(g.type_code("x").await, Err(LoginError::Ended(_))));
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_kills_the_process_group() {
    let Some(w) = world(true).await else { return };
    let s = w.start(Provider::ClaudeCode).unwrap();
    s.wait_for_url(WAIT).await.unwrap();
    let pid = s.pid();
    assert!(!group_members(pid).is_empty());
    s.cancel(Duration::from_secs(2)).await;
    assert_eq!(s.status(), LoginStatus::Cancelled);
    assert!(
        group_members(pid).is_empty(),
        "left behind: {:?}",
        group_members(pid)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn gemini_refuses_without_a_tty() {
    let Some(w) = world(true).await else { return };
    let out = std::process::Command::new("gemini")
        .env("PATH", &w.options.path)
        .env("HOME", &w.home)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TTY"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oauth_standin_enforces_pkce_and_single_use_codes() {
    let Some(w) = world(true).await else { return };
    let verifier = "v".repeat(43);
    let challenge = polydev_login::oauth_standin::s256(&verifier);
    let authorize = format!(
        "{}/oauth/authorize?response_type=code&client_id=c1&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb&code_challenge={challenge}&code_challenge_method=S256&state=s",
        w.oauth
    );
    let token = |code: &str, verifier: &str, client: &str| {
        format!("grant_type=authorization_code&code={code}&client_id={client}&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb&code_verifier={verifier}")
    };
    let code_of = |loc: String| Url::parse(&loc).unwrap().param("code").unwrap().to_string();

    let code = code_of(approve(&authorize).await);
    let (st, _, body) = http(
        "POST",
        &format!("{}/oauth/token", w.oauth),
        Some(&token(&code, &"w".repeat(43), "c1")),
    )
    .await;
    assert_eq!(st, 400);
    assert!(body.contains("\"invalid_grant\""), "{body}");
    // The failed attempt used the code up.
    let (st, _, body) = http(
        "POST",
        &format!("{}/oauth/token", w.oauth),
        Some(&token(&code, &verifier, "c1")),
    )
    .await;
    assert_eq!(st, 400, "{body}");

    let code = code_of(approve(&authorize).await);
    let (st, _, body) = http(
        "POST",
        &format!("{}/oauth/token", w.oauth),
        Some(&token(&code, &verifier, "c2")),
    )
    .await;
    assert!(st == 400 && body.contains("invalid_grant"), "{body}");

    let code = code_of(approve(&authorize).await);
    let (st, _, body) = http(
        "POST",
        &format!("{}/oauth/token", w.oauth),
        Some(&token(&code, &verifier, "c1")),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert!(
        body.contains("access_token") && body.contains("refresh_token"),
        "{body}"
    );
    let (st, _, body) = http(
        "POST",
        &format!("{}/oauth/token", w.oauth),
        Some(&token(&code, &verifier, "c1")),
    )
    .await;
    assert!(
        st == 400 && body.contains("invalid_grant"),
        "single use: {body}"
    );

    let (st, _, body) = http(
        "POST",
        &format!("{}/oauth/token", w.oauth),
        Some("grant_type=password"),
    )
    .await;
    assert!(
        st == 400 && body.contains("unsupported_grant_type"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_as_the_cli_user_when_root() {
    let Some(w) = world(true).await else { return };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: switching users needs root");
        return;
    }
    let (uid, gid) = (65534, 65534);
    std::fs::set_permissions(w._tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&w.home, Some(uid), Some(gid)).unwrap();
    let user = RunAs {
        name: "nobody".into(),
        home: w.home.clone(),
        ids: Some((uid, gid)),
    };
    let s = LoginSession::start(Provider::GeminiCli, &user, &w.options).unwrap();
    let url = s.wait_for_url(WAIT).await.expect("URL captured");
    let proc_status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    let uid_line = proc_status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().skip(1).all(|f| f == "65534"),
        "{uid_line}"
    );
    let code = pasted_code(&approve(&url).await).await;
    s.type_code(&code).await.unwrap();
    assert_eq!(s.wait_for_outcome(WAIT).await, LoginStatus::Authenticated);
    assert_credentials(Provider::GeminiCli, &w.home);
    let meta = std::fs::metadata(credentials::path_in(Provider::GeminiCli, &w.home)).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), uid);
    s.cancel(Duration::from_secs(2)).await;
}

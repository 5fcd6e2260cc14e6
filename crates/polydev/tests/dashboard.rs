//! The dashboard through real headless Chromium (Debian's, driven by
//! playwright-core from `tests/browser/dashboard.mjs`) against a real
//! controller, and its rules through the API:
//!
//! - `accounts_scopes_and_cross_site` (no VM): sign-up is closed; a password
//!   sign-in; a wrong password and an unknown user get the same page;
//!   attempts are limited per account; an OpenID Connect sign-in through a
//!   stand-in provider the test runs (discovery, PKCE, a signed ID token),
//!   and an identity with no account refused; a user's API key made on the
//!   Account page acts for that user only (another `userId` → 403); a
//!   cross-site form post and a cross-site WebSocket upgrade are refused
//!   with the session cookie; sign-out ends the session on the server.
//! - `connect_run_and_terminal_from_the_pages` (real VMs under TCG): Codex
//!   connected from the Connections page, approving in the embedded live
//!   view (keys typed into the viewer reach the provider's page in the
//!   browser VM); a Claude Code run from the Runs page streams text before
//!   it ends, and a second one is cancelled; the Terminal page echoes; a
//!   second user sees none of the first user's objects in pages and API.
//!
//! Both write a screenshot of every page to `docs/screenshots/`.

mod common;
use common::connect::{browser_vm, cdp, standin_image, wait_status};
use common::{browser_dir, npm_ready, token_of, Controller};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

fn shots_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One headless Chromium driven step by step by `dashboard.mjs`.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Browser {
    fn start(base: &str) -> Browser {
        npm_ready();
        let mut child = Command::new("timeout")
            .args(["-k", "10", "3000", "node", "dashboard.mjs", base])
            .arg(shots_dir())
            .current_dir(browser_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("running node");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Browser {
            child,
            stdin,
            stdout,
        }
    }

    /// Runs one step; panics with the browser's own words when it fails.
    fn step(&mut self, cmd: Value) -> Value {
        let v = self.try_step(&cmd);
        assert_eq!(v["ok"], true, "browser step {cmd} failed: {v}");
        v
    }

    fn try_step(&mut self, cmd: &Value) -> Value {
        let t = Instant::now();
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|_| json!({"ok": false, "unparsed": line}));
        eprintln!(
            "browser {} ({:.1} s): {}",
            cmd["op"],
            t.elapsed().as_secs_f64(),
            trim(&v)
        );
        v
    }
}

fn trim(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 600 {
        format!(
            "{}…",
            &s[..s
                .char_indices()
                .take_while(|(i, _)| *i < 600)
                .last()
                .map_or(0, |x| x.0)]
        )
    } else {
        s
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"op": "quit"}));
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client that does not follow redirects and keeps no cookies.
fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().redirects(0).build()
}

/// A request with optional bearer key, cookie and extra headers: (status,
/// headers we look at, body).
fn req(
    method: &str,
    url: &str,
    key: Option<&str>,
    cookie: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<(&str, String)>,
) -> (u16, Option<String>, String) {
    let mut r = agent().request(method, url);
    if let Some(k) = key {
        r = r.set("Authorization", &format!("Bearer {k}"));
    }
    if let Some(c) = cookie {
        r = r.set("Cookie", &format!("polydev_session={c}"));
    }
    for (k, v) in headers {
        r = r.set(k, v);
    }
    let resp = match body {
        Some((ty, b)) => r.set("Content-Type", ty).send_string(&b),
        None => r.call(),
    };
    let resp = match resp {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let set_cookie = resp.header("set-cookie").map(str::to_string);
    (status, set_cookie, resp.into_string().unwrap_or_default())
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or(Value::String(body.to_string()))
}

/// Signs in with a password over plain HTTP: the session cookie's value.
fn password_session(c: &Controller, user: &str, password: &str) -> String {
    let form = format!(
        "user={user}&password={}",
        polydev_controller::accounts::oidc_standin::pct(password)
    );
    let (st, set, body) = req(
        "POST",
        &c.url("/signin"),
        None,
        None,
        &[],
        Some(("application/x-www-form-urlencoded", form)),
    );
    assert_eq!(st, 303, "sign-in of {user}: {body}");
    let set = set.expect("a session cookie");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax"),
        "{set}"
    );
    set.split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_string()
}

/// Makes an account on the command line; its printed password.
fn make_user(c: &Controller, args: &[&str]) -> String {
    let mut a = vec!["user", "create"];
    a.extend_from_slice(args);
    c.cli(&a).trim().to_string()
}

/// Checks a page's screenshot step: 200 and every control named.
fn check_shot(v: &Value, what: &str) {
    assert_eq!(v["status"], 200, "{what}: {v}");
    assert_eq!(
        v["unlabelled"],
        json!([]),
        "{what} has controls without a label: {v}"
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[test]
fn accounts_scopes_and_cross_site() {
    let t0 = Instant::now();
    // The stand-in OpenID Connect provider, on loopback.
    let rt = tokio::runtime::Runtime::new().unwrap();
    use polydev_controller::accounts::oidc_standin::{OidcStandin, StandinClient, StandinUser};
    let secret = "standin-client-secret-5b1e";
    let idp = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        OidcStandin::start(
            l,
            StandinClient {
                id: "polydev-test".into(),
                secret: secret.into(),
            },
            vec![
                StandinUser {
                    username: "carol".into(),
                    subject: "sub-carol-1".into(),
                    email: "Carol@Example.test".into(),
                    email_verified: true,
                },
                StandinUser {
                    username: "mallory".into(),
                    subject: "sub-mallory".into(),
                    email: "mallory@example.test".into(),
                    email_verified: true,
                },
                StandinUser {
                    username: "unverified".into(),
                    subject: "sub-u".into(),
                    email: "dave@example.test".into(),
                    email_verified: false,
                },
            ],
        )
        .await
        .unwrap()
    });
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("oidc.secret");
    std::fs::write(&secret_file, secret).unwrap();
    let oidc_file = dir.path().join("oidc.toml");
    std::fs::write(
        &oidc_file,
        format!(
            "[[provider]]\nid = \"standin\"\nname = \"Stand-in SSO\"\nissuer = \"{}\"\nclient_id = \"polydev-test\"\nclient_secret_file = \"{}\"\n",
            idp.issuer(),
            secret_file.display()
        ),
    )
    .unwrap();
    let oidc = oidc_file.display().to_string();
    let c = Controller::start(&[
        ("POLYDEV_OIDC_FILE", oidc.as_str()),
        ("POLYDEV_SIGNIN_PER_ADDRESS", "1000"),
        ("POLYDEV_SIGNIN_PER_ACCOUNT", "20"),
    ]);
    let alice_pw = make_user(&c, &["alice"]);
    let root_pw = make_user(&c, &["root", "--admin"]);
    make_user(&c, &["bob"]);
    make_user(&c, &["dave"]);
    make_user(
        &c,
        &["carol", "--email", "carol@example.test", "--no-password"],
    );
    make_user(
        &c,
        &["dave2", "--email", "dave@example.test", "--no-password"],
    );
    assert!(
        alice_pw.len() >= 16,
        "a generated password is printed once: {alice_pw:?}"
    );

    // Sign-up is closed.
    for p in ["/signup", "/register", "/api/accounts"] {
        let (st, _, _) = req("GET", &c.url(p), None, None, &[], None);
        assert_eq!(st, 404, "{p}");
    }
    let (_, _, page) = req("GET", &c.url("/signin"), None, None, &[], None);
    assert!(page.contains("There is no sign-up"), "{page}");

    // A wrong password and an unknown user: the same answer, after the same
    // work (the figures are printed; the check is loose, the host is busy).
    let attempt = |user: &str| {
        let t = Instant::now();
        let (st, set, body) = req(
            "POST",
            &c.url("/signin"),
            None,
            None,
            &[],
            Some((
                "application/x-www-form-urlencoded",
                format!("user={user}&password=not-the-password"),
            )),
        );
        (
            st,
            set,
            body.replace(user, "USER"),
            t.elapsed().as_secs_f64() * 1000.0,
        )
    };
    let (mut wrong, mut unknown) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        let a = attempt("alice");
        let b = attempt("nosuchuser");
        assert_eq!(a.0, 401);
        assert_eq!(
            (a.0, &a.1, &a.2),
            (b.0, &b.1, &b.2),
            "same status, no cookie, same page"
        );
        assert!(a.2.contains("wrong user name or password"));
        wrong.push(a.3);
        unknown.push(b.3);
    }
    let (mw, mu) = (median(wrong), median(unknown));
    println!(
        "sign-in refusal: wrong password p50 {mw:.1} ms, unknown user p50 {mu:.1} ms (ratio {:.2})",
        mu / mw
    );
    assert!(
        mu > mw / 3.0 && mu < mw * 3.0,
        "an unknown user is answered after the same work: {mu:.1} vs {mw:.1} ms"
    );
    // Attempts are limited per account (20 here), whatever the password.
    for _ in 0..20 {
        attempt("dave");
    }
    let (st, _, body) = req(
        "POST",
        &c.url("/signin"),
        None,
        None,
        &[],
        Some((
            "application/x-www-form-urlencoded",
            "user=dave&password=x".into(),
        )),
    );
    assert_eq!(st, 429, "{body}");

    // Scoped API keys.
    let op = &c.key;
    let alice_key = c
        .cli(&["apikey", "create", "--name", "alice-cli", "--user", "alice"])
        .trim()
        .to_string();
    let get = |path: &str, key: &str| {
        let (st, _, b) = req("GET", &c.url(path), Some(key), None, &[], None);
        (st, json_of(&b))
    };
    let post = |path: &str, key: &str, body: Value| {
        let (st, _, b) = req(
            "POST",
            &c.url(path),
            Some(key),
            None,
            &[],
            Some(("application/json", body.to_string())),
        );
        (st, json_of(&b))
    };
    assert_eq!(get("/api/vms?userId=bob", &alice_key).0, 403);
    assert_eq!(get("/api/vms?userId=alice", &alice_key).0, 200);
    assert_eq!(get("/api/runs?userId=bob", &alice_key).0, 403);
    assert_eq!(get("/api/credentials?userId=bob", &alice_key).0, 403);
    assert_eq!(get("/api/users/bob/egress", &alice_key).0, 403);
    let (st, v) = post(
        "/api/runs",
        &alice_key,
        json!({"userId": "bob", "provider": "codex", "prompt": "hi"}),
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    let (st, v) = post(
        "/api/auth/start",
        &alice_key,
        json!({"userId": "bob", "provider": "codex"}),
    );
    assert_eq!(st, 403, "{v}");
    let (st, v) = post(
        "/api/vms",
        &alice_key,
        json!({"userId": "bob", "type": "cli"}),
    );
    assert_eq!(st, 403, "{v}");
    let (st, v) = post("/api/users/bob/terminal/token", &alice_key, json!({}));
    assert_eq!(st, 403, "{v}");
    let (st, v) = post(
        "/api/keys",
        &alice_key,
        json!({"name": "for bob", "userId": "bob"}),
    );
    assert_eq!(st, 403, "{v}");
    let (st, v) = post("/api/keys", &alice_key, json!({"name": "second"}));
    assert_eq!(
        (st, v["userId"].as_str(), v["scope"].as_str()),
        (201, Some("alice"), Some("user")),
        "{v}"
    );
    let (_, v) = get("/api/keys", &alice_key);
    assert!(
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["userId"] == "alice"),
        "{v}"
    );
    assert_eq!(get("/api/admin/overview", &alice_key).0, 403);
    let (st, v) = get("/api/admin/overview", op);
    assert_eq!(st, 200, "{v}");
    assert!(
        v["users"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["userId"] == "carol"),
        "{v}"
    );
    assert!(v["capacity"]["memoryTotalMb"].as_u64().unwrap() > 0, "{v}");
    // A session acts like a user key; a cross-site changing request with
    // it is refused, as is one without Origin but marked cross-site.
    let cookie = password_session(&c, "alice", &alice_pw);
    let (st, _, b) = req(
        "GET",
        &c.url("/api/vms?userId=bob"),
        None,
        Some(&cookie),
        &[],
        None,
    );
    assert_eq!(st, 403, "{b}");
    let (st, _, b) = req(
        "POST",
        &c.url("/api/keys"),
        None,
        Some(&cookie),
        &[
            ("Origin", "https://evil.example"),
            ("Sec-Fetch-Site", "cross-site"),
        ],
        Some(("application/json", json!({"name": "x"}).to_string())),
    );
    assert_eq!(
        (st, json_of(&b)["error"]["code"].as_str()),
        (403, Some("cross_site")),
        "{b}"
    );
    let own = c.url("");
    let (st, _, b) = req(
        "POST",
        &c.url("/api/keys"),
        None,
        Some(&cookie),
        &[("Origin", own.as_str()), ("Sec-Fetch-Site", "same-origin")],
        Some((
            "application/json",
            json!({"name": "from the page"}).to_string(),
        )),
    );
    assert_eq!(
        (st, json_of(&b)["userId"].as_str()),
        (201, Some("alice")),
        "{b}"
    );

    // The pages, in a real browser.
    let mut br = Browser::start(&c.url(""));
    let v = br.step(json!({"op": "shot", "path": "/signin", "name": "signin"}));
    check_shot(&v, "sign-in page");
    let v = br.step(json!({"op": "goto", "path": "/runs"}));
    assert!(
        v["url"].as_str().unwrap().contains("/signin?next=/runs"),
        "pages need a session: {v}"
    );
    let v = br.step(json!({"op": "signin", "user": "alice", "password": "wrong password here"}));
    assert_eq!(v["error"], "wrong user name or password", "{v}");
    let v = br.step(json!({"op": "signin", "user": "alice", "password": alice_pw}));
    assert_eq!(v["who"], "alice", "{v}");
    assert!(v["url"].as_str().unwrap().ends_with("/connections"), "{v}");
    for (path, name) in [
        ("/connections", "connections-empty"),
        ("/runs", "runs-empty"),
        ("/vms", "vms-empty"),
    ] {
        let v = br.step(json!({"op": "shot", "path": path, "name": name}));
        check_shot(&v, path);
    }
    let v = br.step(json!({"op": "goto", "path": "/admin"}));
    assert_eq!(v["status"], 404, "not an admin: {v}");
    // A key made on the Account page, shown once, acts for alice only.
    let v = br.step(json!({"op": "apikey", "name": "from the account page"}));
    let page_key = v["key"].as_str().unwrap().to_string();
    assert!(page_key.starts_with("pdk_"), "{v}");
    assert_eq!(get("/api/runs?userId=alice", &page_key).0, 200);
    assert_eq!(get("/api/runs?userId=bob", &page_key).0, 403);
    let v = br.step(json!({"op": "shot", "path": "/account", "name": "account"}));
    check_shot(&v, "account page");
    // Another origin of this host, with alice's cookie in the browser: its
    // form post and its WebSocket are refused, and the session lives on.
    let (_, tok) = post("/api/users/alice/terminal/token", op, json!({}));
    let ws_path = format!(
        "/api/users/alice/terminal?token={}",
        tok["token"].as_str().unwrap()
    );
    let v = br.step(json!({"op": "cross_site", "formPath": "/api/keys", "wsPath": ws_path}));
    assert_eq!(v["ws"], "refused", "a cross-site WebSocket upgrade: {v}");
    assert_eq!(v["form"]["status"], 403, "a cross-site form post: {v}");
    assert!(
        v["form"]["body"].as_str().unwrap().contains("cross_site"),
        "{v}"
    );
    let v = br.step(json!({"op": "goto", "path": "/connections"}));
    assert_eq!(v["who"], "alice", "{v}");
    // Sign-out ends the session on the server: its cookie is refused.
    let before = cookie.clone();
    let v = br.step(json!({"op": "signout"}));
    assert!(v["url"].as_str().unwrap().ends_with("/signin"), "{v}");
    let (st, _, _) = req("GET", &c.url("/api/vms"), None, Some(&before), &[], None);
    assert_eq!(st, 200, "another session of alice is not affected");
    let (st, _, _) = req("POST", &c.url("/signout"), None, Some(&before), &[], None);
    assert_eq!(st, 303);
    let (st, _, b) = req("GET", &c.url("/api/vms"), None, Some(&before), &[], None);
    assert_eq!(st, 401, "a signed-out session is refused: {b}");

    // OpenID Connect: carol's verified e-mail address finds her account.
    let v = br.step(json!({"op": "oidc", "provider": "standin", "username": "carol"}));
    assert!(
        v["providerPage"]
            .as_str()
            .unwrap()
            .starts_with(idp.issuer()),
        "{v}"
    );
    assert_eq!(v["who"], "carol", "{v}");
    let v = br.step(json!({"op": "goto", "path": "/account"}));
    assert!(v["body"].as_str().unwrap().contains("oidc:standin"), "{v}");
    br.step(json!({"op": "signout"}));
    for who in ["mallory", "unverified"] {
        let v = br.step(json!({"op": "oidc", "provider": "standin", "username": who}));
        assert!(v["who"].is_null(), "{who} has no account: {v}");
        assert!(
            v["error"].as_str().unwrap_or("").contains("no account"),
            "{who}: {v}"
        );
    }
    // The admin's page.
    let v = br.step(json!({"op": "signin", "user": "root", "password": root_pw}));
    assert_eq!(v["who"], "root", "{v}");
    let v = br.step(json!({"op": "shot", "path": "/admin", "name": "admin"}));
    check_shot(&v, "admin page");
    let v = br.step(json!({"op": "shot", "path": "/connections", "name": "connections-phone", "width": 390, "height": 844}));
    check_shot(&v, "connections on a phone");
    drop(br);
    drop(idp);
    println!(
        "dashboard accounts test: {:.0} s",
        t0.elapsed().as_secs_f64()
    );
}

const MODEL_PORT: u16 = 8090;

/// The providers file: Claude Code talks to the model stand-in.
fn providers_file(dir: &Path) -> String {
    let base = format!("http://api.provider.test:{MODEL_PORT}");
    let text = format!(
        r#"
[claude_code]
env = {{ ANTHROPIC_BASE_URL = "{base}", DISABLE_TELEMETRY = "1", CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = "1", CLAUDE_CODE_MAX_RETRIES = "1" }}
permission_mode = "bypassPermissions"
"#
    );
    let path = dir.join("providers.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn connect_run_and_terminal_from_the_pages() {
    let t0 = Instant::now();
    let image = standin_image();
    // The test internet: the OAuth stand-in (the providers' sign-in pages)
    // and the model stand-in (their APIs), both at *.provider.test.
    let model = std::sync::Arc::new(polydev_runs::model_standin::ModelStandin::new());
    let served = model.clone();
    let net = common::internet::TestInternet::start(Some(Box::new(move || {
        Box::pin(async move {
            use polydev_login::standins::{TEST_PROVIDER_IP, TEST_PROVIDER_PORT};
            let oauth = async {
                match tokio::net::TcpListener::bind((TEST_PROVIDER_IP, TEST_PROVIDER_PORT)).await {
                    Ok(l) => {
                        let _ = polydev_login::oauth_standin::serve(l).await;
                    }
                    Err(e) => eprintln!("the OAuth stand-in could not listen: {e}"),
                }
            };
            let api = async {
                match tokio::net::TcpListener::bind((common::internet::EXTRA_ADDR, MODEL_PORT))
                    .await
                {
                    Ok(l) => polydev_runs::model_standin::serve(l, served).await,
                    Err(e) => eprintln!("the model stand-in could not listen: {e}"),
                }
            };
            tokio::join!(oauth, api);
        })
    })))
    .unwrap_or_else(|e| panic!("the test internet: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let providers = providers_file(dir.path());
    let env = net.controller_env();
    let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    vars.extend([
        ("POLYDEV_BROWSER_ROOTFS", image.as_str()),
        ("POLYDEV_BROWSER_MEMORY_MB", "1536"),
        ("POLYDEV_AUTH_TIMEOUT_SECS", "1200"),
        ("POLYDEV_AUTH_URL_TIMEOUT_SECS", "600"),
        (
            "POLYDEV_AUTH_URL_ORIGINS",
            polydev_login::standins::TEST_PROVIDER_URL,
        ),
        ("POLYDEV_WEBRTC_TIMEOUT_SECS", "60"),
        ("POLYDEV_PROVIDERS_FILE", providers.as_str()),
        ("POLYDEV_CLI_VCPUS", "2"),
        ("POLYDEV_CLI_MEMORY_MB", "2048"),
        ("POLYDEV_CLI_IDLE_SECS", "3600"),
    ]);
    let c = Controller::start(&vars);
    let ann_pw = make_user(&c, &["ann"]);
    make_user(&c, &["bob"]);
    let mut br = Browser::start(&c.url(""));
    let v = br.step(json!({"op": "signin", "user": "ann", "password": ann_pw}));
    assert_eq!(v["who"], "ann", "{v}");

    // Connect Codex from the Connections page; approve in the live view.
    let v = br.step(json!({"op": "connect", "provider": "codex"}));
    let sid = v["sessionId"].as_str().unwrap().to_string();
    let (vm, ns) = browser_vm(&c, &sid);
    let s = wait_status(&c, &sid, "awaiting_user_auth", Duration::from_secs(900));
    let auth_url = s["authUrl"].as_str().expect("authUrl").to_string();
    let agent = token_of(&c, &vm);
    // The provider's page on the VM's screen with its user field focused
    // (the CLI opened it; load it again in case that raced the display).
    cdp(&ns, &agent, &["wait", ":", "100"], Duration::from_secs(400));
    cdp(
        &ns,
        &agent,
        &["navigate", ":", &auth_url],
        Duration::from_secs(60),
    );
    let focus = r#"new Promise((ok, fail) => { const until = Date.now() + 60000; const go = () => {
        const u = document.getElementById('username');
        if (!u) return Date.now() > until ? fail(new Error('no username field')) : setTimeout(go, 250);
        u.focus(); ok(document.title); }; go(); })"#;
    cdp(
        &ns,
        &agent,
        &["eval", polydev_login::standins::TEST_PROVIDER_HOST, focus],
        Duration::from_secs(90),
    );
    let v = br.step(json!({"op": "await_live"}));
    eprintln!("live view in the Connections page: {v}");
    let v = br.step(json!({"op": "shot", "name": "connections-live"}));
    assert_eq!(v["unlabelled"], json!([]), "{v}");
    // Typed into the embedded viewer: the user name, then Enter submits
    // the provider's form in the browser VM.
    let v = br.step(json!({"op": "type_live", "text": "e2e"}));
    assert!(
        v["inputSent"].as_u64().unwrap_or(0) > 0 || v["mode"] == "novnc",
        "{v}"
    );
    let v = br.step(json!({"op": "await_connected", "provider": "codex"}));
    assert_eq!(v["status"], "completed", "the sign-in: {v}");
    assert_eq!(v["state"], "connected", "{v}");
    let steps: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        steps.contains(&"awaiting_user_auth") && steps.last() == Some(&"completed"),
        "each step shown: {steps:?}"
    );
    println!("connect from the page: {:.0} s", t0.elapsed().as_secs_f64());

    // Claude Code by API key (the form on the Connections page), then runs.
    let v = br.step(
        json!({"op": "set_api_key", "provider": "claude_code", "key": "sk-good-claude_code"}),
    );
    assert_eq!(v["state"], "connected", "{v}");
    let v = br.step(json!({"op": "shot", "path": "/connections", "name": "connections"}));
    check_shot(&v, "connections");
    let v = br.step(json!({"op": "run", "provider": "claude_code", "prompt": "SLOW say hello"}));
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(
        v["early"]["ended"], false,
        "text shown before the run ended: {v}"
    );
    assert!(
        v["text"].as_str().unwrap().contains("standin answer"),
        "{v}"
    );
    let run_id = v["runId"].as_str().unwrap().to_string();
    let v = br.step(json!({"op": "shot", "path": format!("/runs?run={run_id}"), "name": "runs", "waitFor": "window.polydevRuns && window.polydevRuns.ended"}));
    assert_eq!(v["unlabelled"], json!([]), "{v}");
    let v = br.step(json!({"op": "run", "provider": "claude_code", "prompt": "SLOW a long answer to cancel", "cancel": true}));
    assert_eq!(v["status"], "cancelled", "{v}");
    println!("runs from the page: {:.0} s", t0.elapsed().as_secs_f64());

    // The Terminal page.
    let v = br.step(json!({"op": "terminal"}));
    assert_eq!(v["found"], true, "{v}");
    let v = br.step(json!({"op": "shot", "name": "terminal"}));
    assert_eq!(v["unlabelled"], json!([]), "{v}");
    let (_, vms) = c.call("GET", "/api/vms?userId=ann", None);
    let cli_vm = vms["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["type"] == "cli")
        .expect("ann's CLI VM")["vmId"]
        .as_str()
        .unwrap()
        .to_string();
    for (path, name) in [
        ("/vms".to_string(), "vms"),
        (format!("/vms/{cli_vm}"), "vm"),
    ] {
        let v = br.step(json!({"op": "shot", "path": path, "name": name}));
        check_shot(&v, &path);
    }

    // Another user sees none of ann's objects: pages and API alike.
    let bob_key = c
        .cli(&["apikey", "create", "--name", "bob", "--user", "bob"])
        .trim()
        .to_string();
    for path in [
        format!("/api/vms/{cli_vm}"),
        format!("/api/vms/{vm}"),
        format!("/api/runs/{run_id}"),
        format!("/api/runs/{run_id}/events"),
        format!("/api/auth/session/{sid}"),
        format!("/api/vms/{cli_vm}/console"),
    ] {
        let (st, _, b) = req("GET", &c.url(&path), Some(&bob_key), None, &[], None);
        assert_eq!(st, 404, "bob reads {path}: {b}");
        let (st, _, _) = req("GET", &c.url(&path), Some(&c.key), None, &[], None);
        assert_eq!(st, 200, "the operator reads {path}");
    }
    for (method, path) in [
        ("POST", format!("/api/vms/{cli_vm}/hibernate")),
        ("DELETE", format!("/api/vms/{cli_vm}")),
        ("POST", format!("/api/runs/{run_id}/cancel")),
    ] {
        let (st, _, b) = req(
            method,
            &c.url(&path),
            Some(&bob_key),
            None,
            &[],
            Some(("application/json", "{}".into())),
        );
        assert_eq!(st, 404, "bob {method} {path}: {b}");
    }
    let (st, _, b) = req("GET", &c.url("/api/runs"), Some(&bob_key), None, &[], None);
    assert_eq!(
        (st, json_of(&b)["runs"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{b}"
    );
    let (st, _, b) = req("GET", &c.url("/api/vms"), Some(&bob_key), None, &[], None);
    assert_eq!(
        (st, json_of(&b)["vms"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{b}"
    );
    let (st, _, b) = req(
        "POST",
        &c.url("/api/runs"),
        Some(&bob_key),
        None,
        &[],
        Some((
            "application/json",
            json!({"userId": "ann", "provider": "claude_code", "prompt": "x"}).to_string(),
        )),
    );
    assert_eq!(st, 403, "bob's key for ann: {b}");
    let bob_pw = c.cli(&["user", "reset-password", "bob"]).trim().to_string();
    br.step(json!({"op": "signout"}));
    let v = br.step(json!({"op": "signin", "user": "bob", "password": bob_pw}));
    assert_eq!(v["who"], "bob", "{v}");
    let v = br.step(json!({"op": "goto", "path": format!("/vms/{cli_vm}")}));
    assert_eq!(v["status"], 404, "bob's page of ann's VM: {v}");
    let v = br.step(json!({"op": "goto", "path": format!("/runs?run={run_id}")}));
    assert!(
        !v["body"].as_str().unwrap().contains(&run_id),
        "bob's runs page: {v}"
    );
    let v = br.step(json!({"op": "goto", "path": "/connections"}));
    assert_eq!(
        v["body"].as_str().unwrap().matches("not connected").count(),
        3,
        "bob has no connection: {v}"
    );
    drop(br);
    drop(net);
    println!("dashboard VM test: {:.0} s", t0.elapsed().as_secs_f64());
}

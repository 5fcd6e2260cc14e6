//! Prompt runs end to end: the real CLIs (claude-code, codex, gemini-cli, as
//! pinned in the CLI image) in one user's CLI VM, against the model
//! stand-in (`polydev_runs::model_standin`: Anthropic Messages, OpenAI
//! Responses and Gemini APIs, streaming) served in the test internet at
//! `api.provider.test:8090`, reached through egress and DNS; the providers
//! file points each CLI there. One controller and one CLI VM serve every
//! check, in order:
//!
//! - per CLI: a prompt's text deltas reach an SSE client in order and the
//!   run ends `completed` with usage; a shell tool call the stand-in asks for
//!   runs in the VM and its output streams; a second run with the
//!   conversation id continues the conversation (the stand-in sees the
//!   history); a 401 fails the run with the CLI's message and marks the
//!   credential invalid;
//! - cancel leaves no CLI process in the guest;
//! - offline (the VM's internet off), three runs of one user at once: codex
//!   ends `timeout` at the deadline, Claude and Gemini give up `failed`;
//! - a controller SIGKILL mid-run: the SSE stream resumes with
//!   `Last-Event-ID`, no event lost or repeated, the run ends `completed`;
//! - an idle CLI VM hibernates; the next run resumes it (one kernel boot).
//!
//! Needs root, nftables, the guest kernel and the CLI image.

mod common;
use common::connect::exec;
use common::{token_of, Controller};
use polydev_runs::model_standin::{self, ModelStandin};
use serde_json::{json, Value};
use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant};

const STANDIN_PORT: u16 = 8090;
const RUN_WAIT: Duration = Duration::from_secs(900);

fn providers_file(dir: &std::path::Path) -> String {
    let base = format!("http://api.provider.test:{STANDIN_PORT}");
    let text = format!(
        r#"
[claude_code]
env = {{ ANTHROPIC_BASE_URL = "{base}", DISABLE_TELEMETRY = "1", CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = "1", CLAUDE_CODE_MAX_RETRIES = "1" }}
permission_mode = "bypassPermissions"

[codex]
config = ['openai_base_url="{base}/v1"', 'chatgpt_base_url="https://chatgpt.provider.test/backend-api"']
env = {{ CODEX_REFRESH_TOKEN_URL_OVERRIDE = "{base}/oauth/token", CODEX_CA_CERTIFICATE = "/home/polydev/.standin-ca.pem" }}

[gemini_cli]
env = {{ GOOGLE_GEMINI_BASE_URL = "{base}" }}
selected_auth_type = "gemini-api-key"
args = ["--approval-mode", "yolo"]
"#
    );
    let path = dir.join("providers.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// One SSE event: (id, event, data).
type Sse = (i64, String, Value);

/// Reads `/api/runs/:id/events` from `after`; stops after `stop_after`
/// events when given (dropping the connection), else at the stream's end.
fn sse(c: &Controller, run: &str, after: i64, stop_after: Option<usize>) -> Vec<Sse> {
    let resp = ureq::get(&c.url(&format!("/api/runs/{run}/events")))
        .set("Authorization", &format!("Bearer {}", c.key))
        .set("Last-Event-ID", &after.to_string())
        .timeout(RUN_WAIT)
        .call()
        .unwrap_or_else(|e| panic!("SSE for {run}: {e}"));
    assert_eq!(resp.content_type(), "text/event-stream");
    let mut out = Vec::new();
    let (mut id, mut ev, mut data) = (None, String::new(), String::new());
    for line in std::io::BufReader::new(resp.into_reader()).lines() {
        let Ok(line) = line else { break };
        if line.is_empty() {
            if let Some(i) = id.take() {
                out.push((
                    i,
                    std::mem::take(&mut ev),
                    serde_json::from_str(&data).unwrap(),
                ));
                data.clear();
                if stop_after.is_some_and(|n| out.len() >= n) {
                    return out;
                }
            }
            continue;
        }
        if let Some(v) = line.strip_prefix("id:") {
            id = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("event:") {
            ev = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    out
}

fn start_run(c: &Controller, body: Value) -> String {
    let (st, v) = c.call("POST", "/api/runs", Some(&body.to_string()));
    assert_eq!(st, 202, "POST /api/runs {body}: {v}");
    assert_eq!(v["status"], "queued", "{v}");
    v["runId"].as_str().unwrap().to_string()
}

fn run_of(c: &Controller, id: &str) -> Value {
    let (st, v) = c.call("GET", &format!("/api/runs/{id}"), None);
    assert_eq!(st, 200, "{v}");
    v
}

fn texts(evs: &[Sse]) -> String {
    evs.iter()
        .filter(|e| e.1 == "text")
        .map(|e| e.2["text"].as_str().unwrap_or_default())
        .collect()
}

fn kinds(evs: &[Sse]) -> Vec<&str> {
    evs.iter().map(|e| e.1.as_str()).collect()
}

/// Runs a prompt to its end: (the run, its events).
fn prompt(
    c: &Controller,
    user: &str,
    provider: &str,
    text: &str,
    extra: Value,
) -> (Value, Vec<Sse>) {
    let t = Instant::now();
    let mut body = json!({"userId": user, "provider": provider, "prompt": text});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            body[k] = v;
        }
    }
    let id = start_run(c, body);
    let evs = sse(c, &id, 0, None);
    let r = run_of(c, &id);
    let seqs: Vec<i64> = evs.iter().map(|e| e.0).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "events numbered from 1 without gaps: {seqs:?}"
    );
    eprintln!(
        "  {provider}: {:?} → {} in {:.1} s ({} events)",
        text.chars().take(40).collect::<String>(),
        r["status"],
        t.elapsed().as_secs_f64(),
        evs.len()
    );
    (r, evs)
}

fn put_key(c: &Controller, user: &str, provider: &str, key: &str) {
    let (st, v) = c.call(
        "PUT",
        &format!("/api/credentials/{user}/{provider}"),
        Some(&json!({"apiKey": key}).to_string()),
    );
    assert_eq!(st, 200, "{v}");
}

fn credential(c: &Controller, user: &str, provider: &str) -> Value {
    let (_, v) = c.call("GET", &format!("/api/credentials?userId={user}"), None);
    v["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["provider"] == provider)
        .cloned()
        .unwrap_or(Value::Null)
}

struct Guest {
    ns: String,
    token: String,
    vm_id: String,
}

fn guest(c: &Controller, vm_id: &str) -> Guest {
    let v = c.vm(vm_id);
    Guest {
        ns: v["netns"].as_str().unwrap().to_string(),
        token: token_of(c, vm_id),
        vm_id: vm_id.to_string(),
    }
}

fn cli_processes(g: &Guest) -> String {
    let (_, out, _) = exec(
        &g.ns,
        &g.token,
        &[
            "bash",
            "-c",
            "pgrep -a -u polydev -f 'claude|codex|gemini' || true",
        ],
        None,
    );
    out.trim().to_string()
}

/// The three checks of one CLI: text, tool, conversation, then a 401.
fn one_cli(c: &Controller, std: &ModelStandin, provider: &str) {
    let user = "ann";
    put_key(c, user, provider, &format!("sk-good-{provider}"));
    // Text deltas in order, completed with usage.
    let (r, evs) = prompt(c, user, provider, "say hello", json!({}));
    assert_eq!(r["status"], "completed", "{r}\nevents: {evs:?}");
    let text = texts(&evs);
    assert!(
        text.contains("standin answer 1"),
        "{provider} text {text:?}\n{evs:?}"
    );
    let first_text = kinds(&evs)
        .iter()
        .position(|k| *k == "text")
        .expect("text events");
    let end = evs
        .iter()
        .position(|e| e.1 == "status" && e.2["status"] == "completed")
        .unwrap();
    assert!(first_text < end, "text streamed before the end");
    assert!(
        evs.iter()
            .filter(|e| e.1 == "text")
            .all(|e| e.2["raw"].is_object()),
        "raw lines attached"
    );
    assert!(
        r["usage"]["inputTokens"].as_i64().unwrap_or(0) > 0,
        "usage: {r}"
    );
    assert!(
        r["answer"]
            .as_str()
            .unwrap_or_default()
            .contains("standin answer 1"),
        "{r}"
    );
    let conv = r["conversationId"]
        .as_str()
        .expect("a conversation id")
        .to_string();
    let t = &r["timings"];
    for k in [
        "queuedAt",
        "vmReadyAt",
        "cliStartedAt",
        "firstOutputAt",
        "finishedAt",
    ] {
        assert!(t[k].is_i64(), "timing {k}: {r}");
    }
    // A tool call the stand-in asks for runs in the VM; its output streams.
    let (r, evs) = prompt(c, user, provider, "RUN_SHELL: echo tool-$HOME", json!({}));
    assert_eq!(r["status"], "completed", "{r}\nevents: {evs:?}");
    assert!(
        kinds(&evs).contains(&"tool_use"),
        "{provider}: {:?}",
        kinds(&evs)
    );
    let results: String = evs
        .iter()
        .filter(|e| e.1 == "tool_result")
        .map(|e| e.2.to_string())
        .collect();
    assert!(
        results.contains("tool-/home/polydev"),
        "{provider} tool results: {results}"
    );
    assert!(
        r["answer"]
            .as_str()
            .unwrap_or_default()
            .contains("tool said: tool-/home/polydev"),
        "{r}"
    );
    // The conversation continues: the stand-in sees two user turns.
    let (r, evs) = prompt(
        c,
        user,
        provider,
        "and again",
        json!({"conversationId": conv}),
    );
    assert_eq!(r["status"], "completed", "{r}\nevents: {evs:?}");
    assert!(
        texts(&evs).contains("standin answer 2"),
        "{provider}: {}",
        texts(&evs)
    );
    assert_eq!(r["conversationId"], conv.as_str());
    let last = std
        .requests()
        .into_iter()
        .rev()
        .find(|q| q.provider.map(|p| p.as_str() == provider).unwrap_or(false));
    assert!(
        last.is_some_and(|q| q.user_turns >= 2),
        "the stand-in saw the history"
    );
    // A 401: the run fails with the CLI's message, the credential is invalid.
    put_key(c, user, provider, model_standin::BAD_KEY);
    let (r, _) = prompt(c, user, provider, "say hello", json!({"timeoutSecs": 600}));
    assert_eq!(r["status"], "failed", "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap_or_default()
            .contains("reconnect"),
        "{r}"
    );
    let cr = credential(c, user, provider);
    assert_eq!(cr["valid"], false, "{cr}");
    let (st, v) = c.call(
        "POST",
        "/api/runs",
        Some(&json!({"userId": user, "provider": provider, "prompt": "x"}).to_string()),
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("credential_invalid")),
        "{v}"
    );
    put_key(c, user, provider, &format!("sk-good-{provider}"));
}

#[test]
fn the_real_clis_run_prompts_streamed_from_the_users_cli_vm() {
    let t0 = Instant::now();
    let std = Arc::new(ModelStandin::new());
    let served = std.clone();
    let net = common::internet::TestInternet::start(Some(Box::new(move || {
        Box::pin(async move {
            match tokio::net::TcpListener::bind((common::internet::EXTRA_ADDR, STANDIN_PORT)).await
            {
                Ok(l) => model_standin::serve(l, served).await,
                Err(e) => eprintln!("the model stand-in could not listen: {e}"),
            }
        })
    })))
    .unwrap_or_else(|e| panic!("the test internet: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let providers = providers_file(dir.path());
    let env = net.controller_env();
    let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    vars.extend([
        ("POLYDEV_PROVIDERS_FILE", providers.as_str()),
        ("POLYDEV_CLI_VCPUS", "2"),
        ("POLYDEV_CLI_MEMORY_MB", "2048"),
        ("POLYDEV_CLI_IDLE_SECS", "3600"),
        ("POLYDEV_RUNS_PER_USER", "3"),
    ]);
    let mut c = Controller::start(&vars);

    // The stand-in's TLS face (ChatGPT sign-in needs https), and its CA in
    // the user's home before any run.
    let tls = StandinTls::start(&net.ns, dir.path());
    let first_vm = c.create_vm("cli", "ann");
    let v = c.wait_settled(&first_vm, Duration::from_secs(600));
    assert_eq!(v["status"], "running", "{v}");
    write_ca(&guest(&c, &first_vm), &tls.ca_pem);
    for p in ["codex", "claude_code", "gemini_cli"] {
        one_cli(&c, &std, p);
    }
    let vm_id = run_of(
        &c,
        &c.call("GET", "/api/runs?userId=ann&limit=1", None).1["runs"][0]["runId"]
            .as_str()
            .unwrap()
            .to_string(),
    )["vmId"]
        .as_str()
        .unwrap()
        .to_string();
    let g = guest(&c, &vm_id);
    eprintln!("three CLIs done at {:.0} s", t0.elapsed().as_secs_f64());

    // Cancel: the CLI and everything it started are gone from the guest.
    let id = start_run(
        &c,
        json!({"userId": "ann", "provider": "codex", "prompt": "SLOW answer please"}),
    );
    let first = sse(&c, &id, 0, Some(1));
    assert!(!first.is_empty());
    let until = Instant::now() + RUN_WAIT;
    while Instant::now() < until && !texts(&sse_so_far(&c, &id)).contains("standin") {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (st, v) = c.call("POST", &format!("/api/runs/{id}/cancel"), None);
    assert_eq!(st, 202, "{v}");
    let evs = sse(&c, &id, 0, None);
    assert_eq!(run_of(&c, &id)["status"], "cancelled");
    assert_eq!(evs.last().unwrap().2["status"], "cancelled", "{evs:?}");
    assert_eq!(cli_processes(&g), "", "no CLI process is left after cancel");

    // Offline (the VM's internet off), three runs of one user at once:
    // Codex never gives up, so the deadline ends it (`timeout`); Claude and
    // Gemini give up on their own (`failed`, with their message), and no
    // credential is called refused for it.
    let (st, v) = c.call(
        "PUT",
        &format!("/api/vms/{vm_id}/egress"),
        Some(r#"{"internet":false}"#),
    );
    assert_eq!(st, 200, "{v}");
    let t = Instant::now();
    let offline: Vec<(&str, String)> = [("codex", 25), ("claude_code", 900), ("gemini_cli", 900)]
        .into_iter()
        .map(|(p, secs)| {
            let body =
                json!({"userId": "ann", "provider": p, "prompt": "say hello", "timeoutSecs": secs});
            (p, start_run(&c, body))
        })
        .collect();
    for (p, id) in &offline {
        sse(&c, id, 0, None);
        let r = run_of(&c, id);
        eprintln!(
            "  {p} offline: {} at {:.0} s: {}",
            r["status"],
            t.elapsed().as_secs_f64(),
            r["error"]
        );
        let want = if *p == "codex" { "timeout" } else { "failed" };
        assert_eq!(r["status"], want, "{p} offline: {r}");
        let err = r["error"].as_str().unwrap_or_default();
        assert!(!err.is_empty() && !err.contains("reconnect"), "{p}: {r}");
        assert_eq!(credential(&c, "ann", p)["valid"], true, "{p} still valid");
    }
    assert!(
        run_of(&c, &offline[0].1)["error"]
            .as_str()
            .unwrap_or_default()
            .contains("deadline"),
        "codex ends at the deadline"
    );
    assert_eq!(cli_processes(&g), "", "nothing left after the deadline");
    let (st, v) = c.call(
        "PUT",
        &format!("/api/vms/{vm_id}/egress"),
        Some(r#"{"internet":true}"#),
    );
    assert_eq!(st, 200, "{v}");

    // A controller SIGKILL mid-run: the stream resumes exactly.
    let id = start_run(
        &c,
        json!({"userId": "ann", "provider": "codex", "prompt": "SLOW answer please"}),
    );
    let mut got = Vec::new();
    let until = Instant::now() + RUN_WAIT;
    while Instant::now() < until && !got.iter().any(|e: &Sse| e.1 == "text") {
        got = sse_so_far(&c, &id);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        got.iter().any(|e| e.1 == "text"),
        "text before the kill: {got:?}"
    );
    c.kill();
    std::thread::sleep(Duration::from_secs(2));
    c.spawn();
    let last = got.last().unwrap().0;
    let rest = sse(&c, &id, last, None);
    got.extend(rest);
    let seqs: Vec<i64> = got.iter().map(|e| e.0).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "none lost or repeated: {seqs:?}"
    );
    let r = run_of(&c, &id);
    assert_eq!(r["status"], "completed", "{r}\n{}", c.log());
    assert!(
        r["answer"]
            .as_str()
            .unwrap_or_default()
            .contains("standin answer"),
        "{r}"
    );
    assert_eq!(
        texts(&got),
        r["answer"].as_str().unwrap_or_default(),
        "the deltas make the answer"
    );

    // Idle: the VM hibernates, the next run resumes it (no second boot).
    c.kill();
    c.env.retain(|(k, _)| k != "POLYDEV_CLI_IDLE_SECS");
    c.env.push(("POLYDEV_CLI_IDLE_SECS".into(), "5".into()));
    c.spawn();
    let until = Instant::now() + Duration::from_secs(300);
    while Instant::now() < until && c.vm(&vm_id)["status"] != "hibernated" {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        c.vm(&vm_id)["status"],
        "hibernated",
        "idle CLI VM hibernates"
    );
    let (r, _) = prompt(&c, "ann", "codex", "say hello", json!({}));
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(
        (r["vmId"].as_str(), r["vm"].as_str()),
        (Some(vm_id.as_str()), Some("resumed")),
        "{r}"
    );
    let console = c
        .call("GET", &format!("/api/vms/{vm_id}/console"), None)
        .1
        .to_string();
    assert_eq!(
        console.matches("Linux version").count(),
        1,
        "one kernel boot"
    );
    refresh_then_fresh_vm(&mut c, &std, &vm_id);
    assert_eq!(
        net.leaked_packets(),
        0,
        "VM packets went to the host's real uplink"
    );
    drop(tls);
    let _ = g.vm_id;
    eprintln!("runs test: {:.0} s", t0.elapsed().as_secs_f64());
}

/// A TLS terminator for `chatgpt.provider.test:443` in front of the
/// stand-in (socat, in the test internet's namespace), with a throwaway CA.
struct StandinTls {
    child: std::process::Child,
    ca_pem: String,
}

impl StandinTls {
    fn start(ns: &str, dir: &std::path::Path) -> StandinTls {
        let sh = |script: &str| {
            let out = std::process::Command::new("bash")
                .args(["-c", script])
                .current_dir(dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{script}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        sh("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=standin-ca -keyout ca.key -out ca.pem 2>/dev/null");
        sh("openssl req -newkey rsa:2048 -nodes -subj /CN=chatgpt.provider.test -keyout srv.key -out srv.csr 2>/dev/null \
            && printf 'subjectAltName=DNS:chatgpt.provider.test\nbasicConstraints=CA:FALSE\n' > ext.cnf \
            && openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out srv.pem 2>/dev/null");
        let listen = format!(
            "OPENSSL-LISTEN:443,bind={},reuseaddr,fork,cert={},key={},verify=0",
            common::internet::EXTRA_ADDR,
            dir.join("srv.pem").display(),
            dir.join("srv.key").display()
        );
        let to = format!("TCP:{}:{STANDIN_PORT}", common::internet::EXTRA_ADDR);
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "socat", &listen, &to])
            .spawn()
            .expect("socat (scripts/setup.sh installs it)");
        StandinTls {
            child,
            ca_pem: std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
        }
    }
}

impl Drop for StandinTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_ca(g: &Guest, pem: &str) {
    use base64::Engine;
    let body = json!({
        "path": "/home/polydev/.standin-ca.pem",
        "contentBase64": base64::engine::general_purpose::STANDARD.encode(pem),
        "mode": "0644",
        "owner": "polydev",
    });
    let (code, v) = common::agent_post(&g.ns, &g.token, "/files", &body);
    assert_eq!(code, 200, "{v}");
}

/// Codex signed in with ChatGPT refreshes its token during a run (the
/// stand-in's token endpoint rotates it); the vault gets the new file, and a
/// fresh CLI VM with a fresh home gets it from the vault.
fn refresh_then_fresh_vm(c: &mut Controller, std: &ModelStandin, vm_id: &str) {
    c.kill();
    c.env.retain(|(k, _)| k != "POLYDEV_CLI_IDLE_SECS");
    c.env.push(("POLYDEV_CLI_IDLE_SECS".into(), "3600".into()));
    c.spawn();
    let file = model_standin::codex_auth_file(0, "2026-01-01T00:00:00Z");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let data = c.data_dir().to_path_buf();
    let sealed_row = |store: &polydev_store::Store| {
        let store = store.clone();
        async move { store.get_credential("ann", "codex").await.unwrap().unwrap() }
    };
    let store = rt.block_on(async {
        let store = polydev_store::Store::connect(&format!(
            "sqlite://{}",
            data.join("polydev.db").display()
        ))
        .await
        .unwrap();
        let vault = polydev_vault::Keyring::new(
            polydev_vault::MasterKey::from_file(&data.join("master.key")).unwrap(),
        );
        let s = vault.seal("ann", "codex", file.as_bytes());
        store
            .put_credential(
                "ann",
                "codex",
                polydev_core::run::CredentialKind::Oauth,
                None,
                &polydev_store::SealedParts {
                    encrypted_data: &s.ciphertext,
                    iv: &s.iv,
                    tag: &s.tag,
                    salt: &s.salt,
                    key_id: &s.key_id,
                },
            )
            .await
            .unwrap();
        store
    });
    let before = rt.block_on(sealed_row(&store)).encrypted_data;
    let refreshes = std.refreshes();
    let (r, evs) = prompt(c, "ann", "codex", "say hello", json!({}));
    assert_eq!(r["status"], "completed", "{r}\n{evs:?}");
    assert!(std.refreshes() > refreshes, "the CLI refreshed its token");
    let row = rt.block_on(sealed_row(&store));
    if row.encrypted_data == before {
        let g = guest(c, vm_id);
        let (_, file, _) = exec(
            &g.ns,
            &g.token,
            &["cat", "/home/polydev/.codex/auth.json"],
            None,
        );
        let log: Vec<String> = c
            .log()
            .lines()
            .filter(|l| l.contains("credential"))
            .map(str::to_string)
            .collect();
        panic!("the vault row did not change; the VM's file: {file}\nlog: {log:#?}");
    }
    let cr = credential(c, "ann", "codex");
    assert_eq!(
        (cr["kind"].as_str(), cr["valid"].as_bool()),
        (Some("oauth"), Some(true)),
        "{cr}"
    );
    let used = std
        .requests()
        .into_iter()
        .rev()
        .find(|q| q.path.contains("backend-api/codex"));
    assert!(
        used.and_then(|q| q.api_key)
            .is_some_and(|k| k.starts_with("standin-access-") && k != "standin-access-0"),
        "the turn used the rotated token"
    );
    // A fresh CLI VM on a fresh home gets the vault's (rotated) file.
    let (st, v) = c.call("DELETE", &format!("/api/vms/{vm_id}"), None);
    assert_eq!(st, 200, "{v}");
    std::fs::remove_file(data.join("users/ann/home.ext4")).unwrap();
    let (r, _) = prompt(c, "ann", "claude_code", "say hello", json!({}));
    assert_eq!(
        (r["status"].as_str(), r["vm"].as_str()),
        (Some("completed"), Some("booted")),
        "{r}"
    );
    let g = guest(c, r["vmId"].as_str().unwrap());
    let (_, out, _) = exec(
        &g.ns,
        &g.token,
        &["cat", "/home/polydev/.codex/auth.json"],
        None,
    );
    assert!(
        out.contains("standin-access-") && !out.contains("standin-access-0\""),
        "the fresh VM has the rotated file: {out}"
    );
    // Disconnecting removes the credential from the vault and the VM.
    let (st, v) = c.call("DELETE", "/api/credentials/ann/codex", None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["removedFromVm"], r["vmId"], "{v}");
    let (code, _, _) = exec(
        &g.ns,
        &g.token,
        &["test", "-e", "/home/polydev/.codex/auth.json"],
        None,
    );
    assert_eq!(code, 1, "the file is gone from the CLI VM");
    assert!(credential(c, "ann", "codex").is_null());
}

/// The events stored so far, without waiting for the end.
fn sse_so_far(c: &Controller, run: &str) -> Vec<Sse> {
    let r = run_of(c, run);
    let n = r["eventCount"].as_i64().unwrap_or(0) as usize;
    if n == 0 {
        return Vec::new();
    }
    sse(c, run, 0, Some(n))
}

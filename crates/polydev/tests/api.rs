//! The HTTP API's edges: authentication, bad input and the error shape.
//! No VM is booted here, and nothing may be left behind.

mod common;
use common::Controller;

fn assert_error(status: u16, body: &serde_json::Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .map(|m| !m.is_empty())
            .unwrap_or(false),
        "{body}"
    );
}

#[test]
fn health_is_open_and_says_which_vmm_and_why() {
    let c = Controller::start(&[("POLYDEV_ACCEL", "tcg")]);
    let v: serde_json::Value = ureq::get(&c.url("/health"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["vmm"]["kind"], "qemu");
    assert_eq!(v["vmm"]["accel"], "tcg");
    assert!(
        v["vmm"]["accelReason"].as_str().unwrap().contains("forced"),
        "{v}"
    );
    assert!(
        v["vmm"]["reason"].as_str().unwrap().contains("firecracker"),
        "{v}"
    );
    assert_eq!(v["store"], "sqlite");
    assert!(v["version"].is_string());
}

#[test]
fn every_api_route_needs_a_valid_key() {
    let c = Controller::start(&[("POLYDEV_ACCEL", "tcg")]);
    for (method, path) in [
        ("GET", "/api/vms"),
        ("POST", "/api/vms"),
        ("GET", "/api/vms/x"),
        ("DELETE", "/api/vms/x"),
    ] {
        let r = ureq::request(method, &c.url(path)).call();
        let Err(ureq::Error::Status(st, resp)) = r else {
            panic!("{method} {path} without a key succeeded")
        };
        let body: serde_json::Value = resp.into_json().unwrap();
        assert_error(st, &body, 401, "unauthorized");
        let r = ureq::request(method, &c.url(path))
            .set("Authorization", "Bearer pdk_wrong")
            .call();
        let Err(ureq::Error::Status(st, _)) = r else {
            panic!("{method} {path} with a wrong key succeeded")
        };
        assert_eq!(st, 401);
    }
    // A revoked key stops working.
    let id = c
        .cli(&["apikey", "ls"])
        .split('\t')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(c.call("GET", "/api/vms", None).0, 200);
    // Its use is recorded, but not at every request (once a minute).
    let last_used = || {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let store = polydev_store::Store::sqlite_in(c.data_dir()).await.unwrap();
            let k = store.list_api_keys().await.unwrap();
            store.close().await;
            k[0].last_used_at
        })
    };
    // Written in the background: give it a moment on a busy host.
    let mut first = last_used();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while first.is_none() && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(50));
        first = last_used();
    }
    assert!(first.is_some(), "the key's use was not recorded");
    std::thread::sleep(std::time::Duration::from_millis(20));
    for _ in 0..5 {
        assert_eq!(c.call("GET", "/api/vms", None).0, 200);
    }
    assert_eq!(
        last_used(),
        first,
        "last_used_at was written again within the minute"
    );
    // A key made and revoked through the API is refused from the next
    // request on (keys are checked from memory, revocation empties it).
    let (st, made) = c.call("POST", "/api/keys", Some(r#"{"name":"second"}"#));
    assert_eq!(st, 201, "{made}");
    let second = made["key"].as_str().unwrap().to_string();
    let with_second = || match ureq::get(&c.url("/api/vms"))
        .set("Authorization", &format!("Bearer {second}"))
        .call()
    {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(s, _)) => s,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(with_second(), 200);
    let (_, listed) = c.call("GET", "/api/keys", None);
    assert_eq!(listed["keys"].as_array().unwrap().len(), 2, "{listed}");
    assert!(!listed.to_string().contains(&second), "no secret is listed");
    assert!(!listed.to_string().contains("keyHash"), "{listed}");
    let path = format!("/api/keys/{}", made["keyId"].as_str().unwrap());
    assert_eq!(c.call("DELETE", &path, None).0, 204);
    assert_eq!(
        with_second(),
        401,
        "revoked through the API: refused at once"
    );
    let (st, b) = c.call("DELETE", &path, None);
    assert_error(st, &b, 404, "not_found");
    let (st, b) = c.call("POST", "/api/keys", Some(r#"{"name":""}"#));
    assert_error(st, &b, 422, "invalid_name");
    // Revoked straight in the store (the CLI): refused within a second.
    c.cli(&["apikey", "revoke", &id]);
    let t = std::time::Instant::now();
    while c.call("GET", "/api/vms", None).0 != 401 {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(3),
            "a key revoked by the CLI still works after 3 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn bad_input_gets_a_json_4xx_and_leaves_nothing_behind() {
    let c = Controller::start(&[("POLYDEV_ACCEL", "tcg"), ("POLYDEV_MAX_BODY_BYTES", "1024")]);
    let (st, b) = c.call("POST", "/api/vms", Some(r#"{"type":"vnc","userId":"u1"}"#));
    assert_error(st, &b, 422, "invalid_vm_type");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("browser"),
        "{b}"
    );
    let (st, b) = c.call("POST", "/api/vms", Some(r#"{"type":"cli","userId":"#));
    assert_error(st, &b, 400, "malformed_json");
    let (st, b) = c.call("POST", "/api/vms", Some(r#"{"type":"cli"}"#));
    assert_error(st, &b, 422, "invalid_body");
    let (st, b) = c.call(
        "POST",
        "/api/vms",
        Some(r#"{"type":"cli","userId":"../etc"}"#),
    );
    assert_error(st, &b, 422, "invalid_user_id");
    // `.` and `..` would put a user's home disk in the data directory itself.
    for u in [".", ".."] {
        let (st, b) = c.call(
            "POST",
            "/api/vms",
            Some(&format!(r#"{{"type":"cli","userId":"{u}"}}"#)),
        );
        assert_error(st, &b, 422, "invalid_user_id");
        let (st, b) = c.call("PUT", &format!("/api/users/{u}/egress"), Some("{}"));
        assert!(st == 422 || st == 404, "{u}: {st} {b}");
    }
    // Egress bodies: unknown fields and a VM that does not exist.
    let (st, b) = c.call(
        "PUT",
        "/api/vms/vm_nope/egress",
        Some(r#"{"internet": true}"#),
    );
    assert_error(st, &b, 404, "not_found");
    let (st, b) = c.call(
        "PUT",
        "/api/vms/vm_nope/egress",
        Some(r#"{"internets": true}"#),
    );
    assert_error(st, &b, 422, "invalid_policy");
    let big = format!(r#"{{"type":"cli","userId":"{}"}}"#, "a".repeat(4096));
    let (st, b) = c.call("POST", "/api/vms", Some(&big));
    assert_error(st, &b, 413, "payload_too_large");
    let (st, b) = c.call("GET", "/api/vms/vm_nope", None);
    assert_error(st, &b, 404, "not_found");
    let (st, b) = c.call("DELETE", "/api/vms/vm_nope", None);
    assert_error(st, &b, 404, "not_found");
    let (st, b) = c.call("GET", "/api/vms/vm_nope/console", None);
    assert_error(st, &b, 404, "not_found");
    let (st, b) = c.call("GET", "/no/such/route", None);
    assert_error(st, &b, 404, "not_found");
    // Nothing was recorded or made.
    let (st, b) = c.call("GET", "/api/vms?all=true", None);
    assert_eq!(st, 200);
    assert_eq!(b["vms"].as_array().unwrap().len(), 0, "{b}");
    assert!(polydev_net::netns::list(&c.netns_prefix()).is_empty());
    let vms = c.data_dir().join("vms");
    assert_eq!(std::fs::read_dir(vms).map(|d| d.count()).unwrap_or(0), 0);
}

#[test]
fn missing_artifacts_are_a_clear_503() {
    let c = Controller::start(&[
        ("POLYDEV_ACCEL", "tcg"),
        ("POLYDEV_KERNEL", "/nonexistent/vmlinux"),
    ]);
    let (st, b) = c.call("POST", "/api/vms", Some(r#"{"type":"cli","userId":"u1"}"#));
    assert_error(st, &b, 503, "artifacts_missing");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/vmlinux"),
        "{b}"
    );
    let (_, b) = c.call("GET", "/api/vms?all=true", None);
    assert_eq!(b["vms"].as_array().unwrap().len(), 0, "{b}");
}

#[test]
fn a_host_without_room_refuses_a_vm_saying_what_is_short() {
    let dir = tempfile::tempdir().unwrap();
    let (kernel, rootfs) = (dir.path().join("vmlinux"), dir.path().join("rootfs.ext4"));
    std::fs::write(&kernel, b"not booted").unwrap();
    std::fs::write(&rootfs, b"not booted").unwrap();
    let c = Controller::start(&[
        ("POLYDEV_ACCEL", "tcg"),
        ("POLYDEV_KERNEL", kernel.to_str().unwrap()),
        ("POLYDEV_ROOTFS", rootfs.to_str().unwrap()),
        // More memory kept for the host than any machine has.
        ("POLYDEV_MEMORY_RESERVE_MB", "100000000"),
    ]);
    let (st, b) = c.call("POST", "/api/vms", Some(r#"{"type":"cli","userId":"u1"}"#));
    assert_error(st, &b, 503, "capacity");
    let m = b["error"]["message"].as_str().unwrap();
    assert!(m.contains("memory:") && m.contains("MiB available"), "{m}");
    assert!(!m.contains("disk:"), "the disk is not short: {m}");
    let (_, b) = c.call("GET", "/api/vms?all=true", None);
    assert_eq!(
        b["vms"].as_array().unwrap().len(),
        0,
        "nothing recorded: {b}"
    );
}

#[test]
fn changing_requests_are_rate_limited_per_user_and_per_key() {
    let c = Controller::start(&[
        ("POLYDEV_ACCEL", "tcg"),
        ("POLYDEV_RATE_PER_USER", "3"),
        ("POLYDEV_RATE_PER_KEY", "6"),
    ]);
    let bad_vm = |user: &str| {
        c.call(
            "POST",
            "/api/vms",
            Some(&format!(r#"{{"type":"bogus","userId":"{user}"}}"#)),
        )
    };
    for _ in 0..3 {
        assert_eq!(bad_vm("u9").0, 422);
    }
    let r = ureq::post(&c.url("/api/vms"))
        .set("Authorization", &format!("Bearer {}", c.key))
        .set("Content-Type", "application/json")
        .send_string(r#"{"type":"bogus","userId":"u9"}"#);
    let Err(ureq::Error::Status(429, resp)) = r else {
        panic!("the 4th change for u9 in a minute was not refused")
    };
    let retry: u64 = resp.header("Retry-After").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let b: serde_json::Value = resp.into_json().unwrap();
    assert_error(429, &b, 429, "rate_limited");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("u9"),
        "{b}"
    );
    // Reads are not counted; another user is not held back, until the key
    // itself is over its limit.
    for _ in 0..5 {
        assert_eq!(c.call("GET", "/api/vms", None).0, 200);
    }
    assert_eq!(bad_vm("u10").0, 422);
    assert_eq!(bad_vm("u10").0, 422);
    let (st, b) = bad_vm("u11");
    assert_error(st, &b, 429, "rate_limited");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("API key"),
        "{b}"
    );
}

#[test]
fn runs_and_credentials_refuse_bad_input_in_words() {
    let c = Controller::start(&[
        ("POLYDEV_ACCEL", "tcg"),
        ("POLYDEV_MAX_PROMPT_BYTES", "1000"),
    ]);
    let run = |body: serde_json::Value| c.call("POST", "/api/runs", Some(&body.to_string()));
    let ok = |p: &str| serde_json::json!({"userId": "alice", "provider": p, "prompt": "hi"});
    let (st, b) = run(serde_json::json!({"userId": "alice", "provider": "claude", "prompt": "hi"}));
    assert_error(st, &b, 422, "invalid_provider");
    let (st, b) = run(serde_json::json!({"userId": "..", "provider": "codex", "prompt": "hi"}));
    assert_error(st, &b, 422, "invalid_user_id");
    let (st, b) = run(serde_json::json!({"userId": "alice", "provider": "codex"}));
    assert_error(st, &b, 422, "invalid_body");
    let (st, b) = run(
        serde_json::json!({"userId": "alice", "provider": "codex", "prompt": "x".repeat(1001)}),
    );
    assert_error(st, &b, 413, "prompt_too_large");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("1000"),
        "{b}"
    );
    let mut bad_conv = ok("codex");
    bad_conv["conversationId"] = "--help".into();
    let (st, b) = run(bad_conv);
    assert_error(st, &b, 422, "invalid_conversation_id");
    let mut bad_timeout = ok("codex");
    bad_timeout["timeoutSecs"] = 0.into();
    let (st, b) = run(bad_timeout);
    assert_error(st, &b, 422, "invalid_timeout");
    // A provider the user has not connected: 409 that says what to do.
    let (st, b) = run(ok("gemini_cli"));
    assert_error(st, &b, 409, "not_connected");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/api/credentials/alice/gemini_cli"),
        "{b}"
    );
    let (st, b) = c.call("GET", "/api/runs/run_nope", None);
    assert_error(st, &b, 404, "not_found");
    let (st, b) = c.call("GET", "/api/runs/run_nope/events", None);
    assert_error(st, &b, 404, "not_found");
    let (st, b) = c.call("POST", "/api/runs/run_nope/cancel", None);
    assert_error(st, &b, 404, "not_found");
    // Credentials: an API key is stored, listed without the secret, removed.
    let put =
        |p: &str, body: &str| c.call("PUT", &format!("/api/credentials/alice/{p}"), Some(body));
    let (st, b) = put("codex", r#"{"apiKey":""}"#);
    assert_error(st, &b, 422, "invalid_api_key");
    let (st, b) = put("nope", r#"{"apiKey":"sk-1"}"#);
    assert_error(st, &b, 422, "invalid_provider");
    let (st, b) = put("codex", r#"{"apiKey":"sk-test-secret-123"}"#);
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        (b["kind"].as_str(), b["valid"].as_bool()),
        (Some("api_key"), Some(true)),
        "{b}"
    );
    let (st, list) = c.call("GET", "/api/credentials?userId=alice", None);
    assert_eq!(st, 200, "{list}");
    assert_eq!(list["credentials"].as_array().unwrap().len(), 1, "{list}");
    assert!(
        !list.to_string().contains("sk-test-secret"),
        "never a secret: {list}"
    );
    assert!(!c.log().contains("sk-test-secret"), "never in the log");
    // Queued behind nothing, the run starts; cancel it before it can boot a VM.
    let (st, b) = run(ok("codex"));
    assert_eq!(st, 202, "{b}");
    let id = b["runId"].as_str().unwrap().to_string();
    let (st, b) = c.call("POST", &format!("/api/runs/{id}/cancel"), None);
    assert_eq!(st, 202, "{b}");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut r = serde_json::Value::Null;
    while std::time::Instant::now() < until {
        r = c.call("GET", &format!("/api/runs/{id}"), None).1;
        if r["status"] != "queued" && r["status"] != "starting" && r["status"] != "running" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(r["status"], "cancelled", "{r}");
    let (st, b) = c.call("POST", &format!("/api/runs/{id}/cancel"), None);
    assert_error(st, &b, 409, "run_ended");
    let (_, runs) = c.call("GET", "/api/runs?userId=alice", None);
    assert_eq!(runs["runs"][0]["runId"], id.as_str(), "{runs}");
    let (st, b) = c.call("DELETE", "/api/credentials/alice/codex", None);
    assert_eq!(st, 200, "{b}");
    let (st, b) = c.call("DELETE", "/api/credentials/alice/codex", None);
    assert_error(st, &b, 404, "not_found");
}

#[test]
fn a_malformed_providers_file_stops_the_start_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("providers.toml");
    std::fs::write(
        &f,
        "[codex]\nconfig = [\"a=1\"]\n\n[claude_code]\nnot_a_key = 1\n",
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["serve"])
        .env("POLYDEV_DATA_DIR", data.path())
        .env(
            "POLYDEV_LISTEN",
            format!("127.0.0.1:{}", common::free_port()),
        )
        .env("POLYDEV_PROVIDERS_FILE", &f)
        .env("POLYDEV_EGRESS_UPLINK", "none")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("providers.toml, line 5") && err.contains("not_a_key"),
        "{err}"
    );
}

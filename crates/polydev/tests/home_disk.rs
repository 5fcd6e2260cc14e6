//! A user's home in the CLI image lives on a per-user disk that outlives
//! their VMs. Needs the CLI image (`polydev image build cli`): skipped without
//! it, except in CI where it fails.

mod common;
use common::{agent_post, token_of, Controller};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(600);

fn exec(c: &Controller, vm: &serde_json::Value, argv: &[&str]) -> serde_json::Value {
    let id = vm["vmId"].as_str().unwrap();
    let (code, out) = agent_post(
        vm["netns"].as_str().unwrap(),
        &token_of(c, id),
        "/exec",
        &serde_json::json!({"argv": argv, "user": "polydev", "timeoutMs": 60000}),
    );
    assert_eq!(code, 200, "{out}");
    out
}

#[test]
fn home_survives_the_vm_and_one_disk_serves_one_vm() {
    let c = Controller::start(&[]);
    let id = c.create_vm("cli", "hanna");
    let v = c.wait_settled(&id, BOOT);
    assert_eq!(v["status"], "running", "{v}");
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.vm_dir(&id).join("spec.json")).unwrap()).unwrap();
    if spec["home_disk"].is_null() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the CLI image is not built: run `polydev image build cli`"
        );
        eprintln!("SKIPPED: the CLI image is not built (polydev image build cli)");
        return;
    }
    let home = c.data_dir().join("users/hanna/home.ext4");
    assert!(home.exists());
    // A second CLI VM for the same user would share the disk: refused.
    let (st, b) = c.call(
        "POST",
        "/api/vms",
        Some(r#"{"type":"cli","userId":"hanna"}"#),
    );
    assert_eq!(
        (st, b["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{b}"
    );

    let out = exec(
        &c,
        &v,
        &[
            "sh",
            "-c",
            "echo kept > ~/note.txt && stat -c %U ~/note.txt && findmnt -no SOURCE ~",
        ],
    );
    assert_eq!(out["exitCode"], 0, "{out}");
    let stdout = out["stdout"].as_str().unwrap();
    assert!(
        stdout.contains("polydev") && stdout.contains("/dev/vdc"),
        "{stdout}"
    );
    assert_eq!(c.call("DELETE", &format!("/api/vms/{id}"), None).0, 200);
    assert!(home.exists(), "destroying the VM removed the home disk");

    let id2 = c.create_vm("cli", "hanna");
    let v2 = c.wait_settled(&id2, BOOT);
    assert_eq!(v2["status"], "running", "{v2}");
    let out = exec(&c, &v2, &["cat", "/home/polydev/note.txt"]);
    assert_eq!(out["stdout"].as_str().unwrap().trim(), "kept", "{out}");
    assert_eq!(c.call("DELETE", &format!("/api/vms/{id2}"), None).0, 200);
}

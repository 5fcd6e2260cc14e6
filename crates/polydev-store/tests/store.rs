//! Store behaviour, each test body run against SQLite (a temporary directory) and
//! PostgreSQL (a fresh database per test, created through the server named by
//! `POLYDEV_TEST_POSTGRES_URL`; see `scripts/with-postgres.sh`). Without that
//! variable the PostgreSQL variants are skipped, unless `CI` is set, where they fail.

use std::collections::HashSet;
use std::sync::Arc;

use polydev_core::vm::{now_ms, VmStatus, VmType};
use polydev_store::{CleanupStatus, NewVm, Store, StoreError, StoreKind};
use sqlx::Connection;

/// A store on a throwaway database, and what is needed to open it again or drop it.
struct TestDb {
    store: Store,
    url: String,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>, // (admin URL, database name)
}

impl TestDb {
    async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::sqlite_in(dir.path())
            .await
            .expect("open sqlite store");
        let url = format!("sqlite://{}", dir.path().join("polydev.db").display());
        TestDb {
            store,
            url,
            _dir: Some(dir),
            pg: None,
        }
    }

    async fn postgres() -> Option<TestDb> {
        let admin = match std::env::var("POLYDEV_TEST_POSTGRES_URL") {
            Ok(u) if !u.is_empty() => u,
            _ => {
                if std::env::var_os("CI").is_some() {
                    panic!("POLYDEV_TEST_POSTGRES_URL must be set when CI is set (run under scripts/with-postgres.sh)");
                }
                eprintln!("SKIPPED: POLYDEV_TEST_POSTGRES_URL not set");
                return None;
            }
        };
        let name = format!("polydev_t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("connect to POLYDEV_TEST_POSTGRES_URL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        conn.close().await.ok();
        let url = with_database(&admin, &name);
        let store = Store::connect(&url).await.expect("open postgres store");
        Some(TestDb {
            store,
            url,
            _dir: None,
            pg: Some((admin, name)),
        })
    }

    async fn finish(self) {
        self.store.close().await;
        if let Some((admin, name)) = self.pg {
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("admin connect");
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await
                .expect("drop test database");
        }
    }
}

/// `url` with its database name replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let auth_start = url.find("://").map(|i| i + 3).unwrap_or(0);
    let (head, rest) = url.split_at(auth_start);
    let path_start = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(path_start);
    let query = path.find('?').map(|q| &path[q..]).unwrap_or("");
    format!("{head}{authority}/{db}{query}")
}

/// One test body, run on both backends.
macro_rules! both {
    ($body:ident) => {
        mod $body {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let db = super::TestDb::sqlite().await;
                super::$body(&db).await;
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                let Some(db) = super::TestDb::postgres().await else {
                    return;
                };
                super::$body(&db).await;
                db.finish().await;
            }
        }
    };
}

fn new_vm(id: &str, user: &str) -> NewVm {
    NewVm {
        vm_id: id.to_string(),
        user_id: user.to_string(),
        vm_type: VmType::Cli,
        vcpu_count: 2,
        memory_mb: 2048,
        vmm: "qemu".to_string(),
        dir: format!("/var/lib/polydev/vms/{id}"),
        home_disk: false,
    }
}

fn names(slot: i64) -> (String, String) {
    (format!("pd-{slot}"), format!("pdtap{slot}"))
}

async fn count(store: &Store, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .expect("count")
}

both!(migrations_idempotent);
async fn migrations_idempotent(db: &TestDb) {
    db.store.ensure_user("alice").await.unwrap();
    let again = Store::connect(&db.url).await.expect("second connect");
    assert_eq!(again.kind(), db.store.kind());
    assert_eq!(count(&again, "SELECT COUNT(*) FROM users").await, 1);
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
        .unwrap()
        .count() as i64;
    assert_eq!(
        count(&again, "SELECT COUNT(*) FROM _sqlx_migrations").await,
        migrations
    );
    again.close().await;
    match db.store.kind() {
        StoreKind::Sqlite => {
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(db.store.pool())
                .await
                .unwrap();
            assert_eq!(mode, "wal");
            assert_eq!(count(&db.store, "PRAGMA foreign_keys").await, 1);
            assert!(db.store.url().starts_with("sqlite:"));
        }
        StoreKind::Postgres => assert!(db.store.url().starts_with("postgres")),
    }
}

both!(ensure_user_idempotent);
async fn ensure_user_idempotent(db: &TestDb) {
    let s = &db.store;
    s.ensure_user("alice").await.unwrap();
    s.ensure_user("alice").await.unwrap();
    s.ensure_user("bob").await.unwrap();
    assert_eq!(count(s, "SELECT COUNT(*) FROM users").await, 2);
}

both!(api_keys);
async fn api_keys(db: &TestDb) {
    let s = &db.store;
    let k = s.insert_api_key("k1", "laptop", "aa11").await.unwrap();
    assert!(!k.revoked);
    s.insert_api_key("k2", "ci", "bb22").await.unwrap();
    let dup = s.insert_api_key("k3", "dup", "aa11").await.unwrap_err();
    assert!(matches!(dup, StoreError::Conflict { .. }), "{dup}");

    let found = s
        .find_api_key_by_hash("aa11")
        .await
        .unwrap()
        .expect("found");
    assert_eq!(found.key_id, "k1");
    assert_eq!(found.last_used_at, None);
    assert!(s.find_api_key_by_hash("nope").await.unwrap().is_none());

    assert!(s.touch_api_key("k1").await.unwrap());
    assert!(!s.touch_api_key("missing").await.unwrap());
    let found = s.find_api_key_by_hash("aa11").await.unwrap().unwrap();
    assert!(found.last_used_at.is_some());

    assert!(s.revoke_api_key("k1").await.unwrap());
    assert!(!s.revoke_api_key("k1").await.unwrap());
    assert!(s.find_api_key_by_hash("aa11").await.unwrap().is_none());
    let all = s.list_api_keys().await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().any(|k| k.key_id == "k1" && k.revoked));
    assert!(all.iter().any(|k| k.key_id == "k2" && !k.revoked));
}

both!(accounts_sessions_identities);
async fn accounts_sessions_identities(db: &TestDb) {
    use polydev_store::OidcLogin;
    let s = &db.store;
    let a = s
        .insert_account("ann", Some("ann@example.test"), "user", Some("$argon2id$x"))
        .await
        .unwrap();
    assert!(a.has_password && !a.disabled);
    let dup = s
        .insert_account("ann", None, "user", None)
        .await
        .unwrap_err();
    assert!(matches!(dup, StoreError::Conflict { .. }), "{dup}");
    let dup = s
        .insert_account("ann2", Some("ann@example.test"), "user", None)
        .await
        .unwrap_err();
    assert!(
        matches!(dup, StoreError::Conflict { .. }),
        "one account per e-mail address: {dup}"
    );
    s.insert_account("oidc-only", None, "admin", None)
        .await
        .unwrap();
    s.insert_account("other", None, "user", None).await.unwrap();
    let (acc, hash) = s.account_password("ann").await.unwrap().unwrap();
    assert_eq!(
        (acc.role.as_str(), hash.as_deref()),
        ("user", Some("$argon2id$x"))
    );
    assert_eq!(
        s.account_password("oidc-only").await.unwrap().unwrap().1,
        None
    );
    assert!(s.account_password("nobody").await.unwrap().is_none());
    assert_eq!(
        s.find_account_by_email("ann@example.test")
            .await
            .unwrap()
            .unwrap()
            .user_id,
        "ann"
    );
    assert_eq!(s.list_accounts().await.unwrap().len(), 3);

    // Sessions: found until they expire, gone when ended or the account is
    // disabled or its password changes.
    let far = polydev_core::vm::now_ms() + 3_600_000;
    s.insert_web_session("h1", "ann", "password", far)
        .await
        .unwrap();
    s.insert_web_session("h2", "ann", "password", far)
        .await
        .unwrap();
    s.insert_web_session("old", "ann", "password", 1)
        .await
        .unwrap();
    s.insert_web_session("o1", "other", "password", far)
        .await
        .unwrap();
    assert_eq!(
        s.find_web_session("h1")
            .await
            .unwrap()
            .unwrap()
            .account
            .user_id,
        "ann"
    );
    assert!(
        s.find_web_session("old").await.unwrap().is_none(),
        "expired"
    );
    assert!(s.delete_web_session("h1").await.unwrap());
    assert!(s.find_web_session("h1").await.unwrap().is_none());
    assert!(s.set_account_disabled("ann", true).await.unwrap());
    assert!(
        s.find_web_session("h2").await.unwrap().is_none(),
        "disabling ends sessions"
    );
    assert!(
        s.find_web_session("o1").await.unwrap().is_some(),
        "other accounts keep theirs"
    );
    assert!(s
        .set_account_password("other", "$argon2id$y")
        .await
        .unwrap());
    assert!(
        s.find_web_session("o1").await.unwrap().is_none(),
        "a new password ends sessions"
    );
    assert!(!s.set_account_disabled("nobody", true).await.unwrap());

    // OIDC identities and sign-ins in flight (taken once).
    assert!(s
        .find_identity("https://idp", "sub1")
        .await
        .unwrap()
        .is_none());
    s.link_identity("https://idp", "sub1", "oidc-only")
        .await
        .unwrap();
    s.link_identity("https://idp", "sub1", "oidc-only")
        .await
        .unwrap();
    assert_eq!(
        s.find_identity("https://idp", "sub1")
            .await
            .unwrap()
            .as_deref(),
        Some("oidc-only")
    );
    let l = OidcLogin {
        provider: "corp".into(),
        nonce: "n".into(),
        pkce_verifier: "v".into(),
        created_at: polydev_core::vm::now_ms(),
    };
    s.insert_oidc_login("state1", &l).await.unwrap();
    assert_eq!(
        s.take_oidc_login("state1", 600_000).await.unwrap(),
        Some(l.clone())
    );
    assert_eq!(
        s.take_oidc_login("state1", 600_000).await.unwrap(),
        None,
        "a replayed callback finds nothing"
    );
    let stale = OidcLogin { created_at: 1, ..l };
    s.insert_oidc_login("state2", &stale).await.unwrap();
    assert_eq!(
        s.take_oidc_login("state2", 600_000).await.unwrap(),
        None,
        "too old"
    );

    // Keys bound to a user.
    let k = s
        .insert_scoped_api_key("ku", "mine", "cc33", Some("ann"))
        .await
        .unwrap();
    assert_eq!(k.user_id.as_deref(), Some("ann"));
    assert_eq!(
        s.find_api_key_by_hash("cc33")
            .await
            .unwrap()
            .unwrap()
            .user_id
            .as_deref(),
        Some("ann")
    );
    s.insert_api_key("ko", "op", "dd44").await.unwrap();
    assert_eq!(
        s.find_api_key_by_hash("dd44")
            .await
            .unwrap()
            .unwrap()
            .user_id,
        None
    );
}

both!(run_summaries);
async fn run_summaries(db: &TestDb) {
    let s = &db.store;
    s.ensure_user("rs").await.unwrap();
    assert!(s.list_run_summaries("rs", 10).await.unwrap().is_empty());
    let long = "p".repeat(500);
    for i in 0..3 {
        s.insert_run(&polydev_store::NewRun {
            run_id: &format!("run_s{i}"),
            user_id: "rs",
            provider: "codex",
            prompt: &long,
            model: None,
            resume_id: None,
            timeout_secs: 60,
        })
        .await
        .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let l = s.list_run_summaries("rs", 2).await.unwrap();
    assert_eq!(
        l.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(),
        ["run_s2", "run_s1"]
    );
    assert_eq!(l[0].prompt.len(), 200, "cut to 200 characters");
    assert_eq!(l[0].status.as_str(), "queued");
    assert!(s.list_failed_runs_since(0, 10).await.unwrap().is_empty());
}

both!(slot_allocation);
async fn slot_allocation(db: &TestDb) {
    let s = Arc::new(db.store.clone());
    let mut handles = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            s.insert_vm_allocating_slot(&new_vm(&format!("vm-{i}"), "alice"), names)
                .await
        }));
    }
    let mut slots = Vec::new();
    for h in handles {
        let rec = h.await.unwrap().expect("insert");
        assert_eq!(rec.status, VmStatus::Creating);
        assert_eq!(rec.netns, format!("pd-{}", rec.slot));
        assert_eq!(rec.tap_device, format!("pdtap{}", rec.slot));
        slots.push(rec.slot);
    }
    slots.sort();
    assert_eq!(slots, (0..8).collect::<Vec<i64>>());

    let dup = s
        .insert_vm_allocating_slot(&new_vm("vm-0", "alice"), names)
        .await
        .unwrap_err();
    assert!(matches!(dup, StoreError::Conflict { .. }), "{dup}");

    let holder = |slot: i64| {
        let s = s.clone();
        async move {
            s.list_vms(None, false)
                .await
                .unwrap()
                .into_iter()
                .find(|v| v.slot == slot)
                .unwrap()
                .vm_id
        }
    };

    // A destroyed VM's slot is reused.
    let three = holder(3).await;
    assert!(s.mark_vm_destroyed(&three).await.unwrap());
    let r = s
        .insert_vm_allocating_slot(&new_vm("vm-a", "bob"), names)
        .await
        .unwrap();
    assert_eq!(r.slot, 3);
    assert_eq!(r.netns, "pd-3");

    // A failed VM keeps its slot until released.
    let five = holder(5).await;
    assert!(s
        .mark_vm_failed(&five, "agent never started")
        .await
        .unwrap());
    let r = s
        .insert_vm_allocating_slot(&new_vm("vm-b", "bob"), names)
        .await
        .unwrap();
    assert_eq!(r.slot, 8);
    assert!(s.release_slot(&five).await.unwrap());
    assert!(!s.release_slot(&five).await.unwrap());
    let failed = s.get_vm(&five).await.unwrap().unwrap();
    assert!(failed.slot_released);
    assert_eq!(failed.slot, 5, "the slot value is kept for the record");
    assert_eq!(
        failed.failure_reason.as_deref(),
        Some("agent never started")
    );
    let r = s
        .insert_vm_allocating_slot(&new_vm("vm-c", "bob"), names)
        .await
        .unwrap();
    assert_eq!(r.slot, 5);

    // A live VM's slot cannot be released.
    assert!(!s.release_slot("vm-c").await.unwrap());
}

both!(one_live_home_disk_per_user);
async fn one_live_home_disk_per_user(db: &TestDb) {
    let s = Arc::new(db.store.clone());
    let with_home = |id: &str, user: &str| NewVm {
        home_disk: true,
        ..new_vm(id, user)
    };
    // Concurrent creates for one user: exactly one wins.
    let mut handles = Vec::new();
    for i in 0..8 {
        let (s, v) = (s.clone(), with_home(&format!("home-{i}"), "carol"));
        handles.push(tokio::spawn(async move {
            s.insert_vm_allocating_slot(&v, names).await
        }));
    }
    let mut won = Vec::new();
    for h in handles {
        match h.await.unwrap() {
            Ok(rec) => won.push(rec.vm_id),
            Err(e @ StoreError::Conflict { .. }) => {
                assert!(e.to_string().contains("home disk"), "{e}")
            }
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!(won.len(), 1, "{won:?}");
    // Another user, and VMs without the home disk, are not held back.
    s.insert_vm_allocating_slot(&with_home("home-dave", "dave"), names)
        .await
        .unwrap();
    s.insert_vm_allocating_slot(&new_vm("plain-carol", "carol"), names)
        .await
        .unwrap();
    // Once the holder is destroyed (or failed), the disk is free again.
    let holder = s.get_vm(&won[0]).await.unwrap().unwrap();
    s.mark_vm_destroyed(&holder.vm_id).await.unwrap();
    s.insert_vm_allocating_slot(&with_home("home-again", "carol"), names)
        .await
        .unwrap();
}

both!(status_compare_and_set);
async fn status_compare_and_set(db: &TestDb) {
    let s = &db.store;
    s.insert_vm_allocating_slot(&new_vm("v1", "alice"), names)
        .await
        .unwrap();
    assert!(s
        .set_vm_pid("v1", 4242, Some("/run/v1.sock"))
        .await
        .unwrap());
    assert!(s
        .mark_vm_running("v1", now_ms(), Some(2300), Some(2900))
        .await
        .unwrap());
    let v = s.get_vm("v1").await.unwrap().unwrap();
    assert_eq!(v.status, VmStatus::Running);
    assert_eq!(v.vmm_pid, Some(4242));
    assert_eq!(v.socket_path.as_deref(), Some("/run/v1.sock"));
    assert_eq!(v.kernel_boot_ms, Some(2300));
    assert!(v.ready_at.is_some());
    // running → hibernated → running
    assert!(s.mark_vm_hibernated("v1").await.unwrap());
    assert!(!s.mark_vm_hibernated("v1").await.unwrap());
    assert!(
        !s.mark_vm_failed("v1", "x").await.unwrap(),
        "hibernated cannot fail"
    );
    assert!(s.mark_vm_running("v1", now_ms(), None, None).await.unwrap());
    assert!(!s.mark_vm_running("v1", now_ms(), None, None).await.unwrap());

    // A destroyed VM can never become running (destroy raced ready).
    s.insert_vm_allocating_slot(&new_vm("v2", "alice"), names)
        .await
        .unwrap();
    assert!(s.mark_vm_destroyed("v2").await.unwrap());
    assert!(!s.mark_vm_running("v2", now_ms(), None, None).await.unwrap());
    assert!(!s.mark_vm_failed("v2", "late").await.unwrap());
    assert!(!s.set_vm_pid("v2", 1, None).await.unwrap());
    assert!(!s.mark_vm_destroyed("v2").await.unwrap());
    let v2 = s.get_vm("v2").await.unwrap().unwrap();
    assert_eq!(v2.status, VmStatus::Destroyed);
    assert!(v2.destroyed_at.is_some());
    assert!(v2.slot_released);
    assert_eq!(v2.failure_reason, None);

    // failed is terminal except for destroy.
    s.insert_vm_allocating_slot(&new_vm("v3", "alice"), names)
        .await
        .unwrap();
    assert!(s.mark_vm_failed("v3", "kernel panic").await.unwrap());
    assert!(!s.mark_vm_failed("v3", "again").await.unwrap());
    assert!(!s.mark_vm_running("v3", now_ms(), None, None).await.unwrap());
    assert!(s.mark_vm_destroyed("v3").await.unwrap());
    let v3 = s.get_vm("v3").await.unwrap().unwrap();
    assert_eq!(v3.failure_reason.as_deref(), Some("kernel panic"));

    // Unknown VMs change nothing.
    assert!(!s.mark_vm_destroyed("nope").await.unwrap());
    assert!(s.get_vm("nope").await.unwrap().is_none());
}

both!(list_filters);

async fn claim_hibernated(db: &TestDb) {
    use polydev_core::auth::Provider;
    let s = &db.store;
    for u in ["_pool", "alice", "bob", "carol"] {
        s.ensure_user(u).await.unwrap();
        s.insert_auth_session(&format!("as_{u}"), u, Provider::Codex, now_ms() + 60_000)
            .await
            .unwrap();
    }
    let browser = |id: &str| {
        let mut v = new_vm(id, "_pool");
        v.vm_type = VmType::Browser;
        v
    };
    for id in ["p1", "p2"] {
        s.insert_vm_allocating_slot(&browser(id), names)
            .await
            .unwrap();
        s.set_vm_pid(id, 1, None).await.unwrap();
        assert!(s.mark_vm_running(id, now_ms(), None, None).await.unwrap());
    }
    // Running pooled VMs are not yet ready to be given away.
    assert_eq!(
        s.claim_hibernated_vm_for_session("_pool", "alice", VmType::Browser, "as_alice")
            .await
            .unwrap(),
        None
    );
    assert!(s.mark_vm_hibernated("p1").await.unwrap());
    assert!(s.mark_vm_hibernated("p2").await.unwrap());
    // Only of the type asked for.
    assert_eq!(
        s.claim_hibernated_vm_for_session("_pool", "alice", VmType::Cli, "as_alice")
            .await
            .unwrap(),
        None
    );
    // A session that is no longer initializing takes nothing.
    assert_eq!(
        s.claim_hibernated_vm_for_session("_pool", "alice", VmType::Browser, "as_nope")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.get_vm("p1").await.unwrap().unwrap().user_id,
        "_pool",
        "rolled back"
    );
    // Concurrent claims never share a VM.
    let (a, b, c) = tokio::join!(
        s.claim_hibernated_vm_for_session("_pool", "alice", VmType::Browser, "as_alice"),
        s.claim_hibernated_vm_for_session("_pool", "bob", VmType::Browser, "as_bob"),
        s.claim_hibernated_vm_for_session("_pool", "carol", VmType::Browser, "as_carol"),
    );
    let mut got: Vec<String> = [a, b, c].into_iter().filter_map(|r| r.unwrap()).collect();
    got.sort();
    assert_eq!(got, vec!["p1".to_string(), "p2".to_string()]);
    let owners: Vec<String> = vec![
        s.get_vm("p1").await.unwrap().unwrap().user_id,
        s.get_vm("p2").await.unwrap().unwrap().user_id,
    ];
    assert!(owners.iter().all(|o| o != "_pool"), "{owners:?}");
    assert_ne!(owners[0], owners[1]);
    // Each taken VM is named by its new owner's session, in the same step.
    for (vm, owner) in ["p1", "p2"].iter().zip(&owners) {
        let sess = s
            .get_auth_session(&format!("as_{owner}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sess.browser_vm_id.as_deref(), Some(*vm));
        assert_eq!(sess.status.as_str(), "vm_created");
    }
}

both!(claim_hibernated);
async fn list_filters(db: &TestDb) {
    let s = &db.store;
    for (id, user) in [
        ("a1", "alice"),
        ("b1", "bob"),
        ("a2", "alice"),
        ("a3", "alice"),
        ("b2", "bob"),
    ] {
        let mut v = new_vm(id, user);
        if id == "b1" {
            v.vm_type = VmType::Browser;
        }
        s.insert_vm_allocating_slot(&v, names).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    assert!(s.mark_vm_destroyed("a2").await.unwrap());
    assert!(s.mark_vm_failed("a3", "timeout").await.unwrap());
    assert!(s.mark_vm_failed("b2", "timeout").await.unwrap());
    assert!(s.release_slot("b2").await.unwrap());

    let ids = |v: Vec<polydev_store::VmRecord>| v.into_iter().map(|r| r.vm_id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.list_vms(None, true).await.unwrap()),
        ["b2", "a3", "a2", "b1", "a1"]
    );
    assert_eq!(
        ids(s.list_vms(None, false).await.unwrap()),
        ["b2", "a3", "b1", "a1"]
    );
    assert_eq!(
        ids(s.list_vms(Some("alice"), true).await.unwrap()),
        ["a3", "a2", "a1"]
    );
    assert_eq!(
        ids(s.list_vms(Some("alice"), false).await.unwrap()),
        ["a3", "a1"]
    );
    assert!(s.list_vms(Some("carol"), true).await.unwrap().is_empty());
    let b1 = s.get_vm("b1").await.unwrap().unwrap();
    assert_eq!(b1.vm_type, VmType::Browser);

    // Live: creating/running/hibernated, and failed with the slot still held.
    let mut live = ids(s.list_live_vms().await.unwrap());
    live.sort();
    assert_eq!(live, ["a1", "a3", "b1"]);
}

both!(cleanup_claim_exclusive);
async fn cleanup_claim_exclusive(db: &TestDb) {
    let s = Arc::new(db.store.clone());
    let now = now_ms();
    let mut all = HashSet::new();
    for i in 0..40 {
        let t = s
            .enqueue_cleanup(&format!("vm-{i}"), Some("sess"), now - 1000 + i)
            .await
            .unwrap();
        assert_eq!(t.status, CleanupStatus::Pending);
        all.insert(t.task_id);
    }
    let later = s
        .enqueue_cleanup("vm-later", None, now + 60_000)
        .await
        .unwrap();

    let mut handles = Vec::new();
    for _ in 0..4 {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = s.claim_due_cleanups(now, 3).await.expect("claim");
                if batch.is_empty() {
                    // Another claimer may hold the rest; stop once nothing is pending.
                    let pending: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM vm_cleanup_tasks WHERE status = 'pending' AND cleanup_at <= $1",
                    )
                    .bind(now)
                    .fetch_one(s.pool())
                    .await
                    .unwrap();
                    if pending == 0 {
                        break;
                    }
                    continue;
                }
                for t in batch {
                    assert_eq!(t.status, CleanupStatus::Processing);
                    assert_eq!(t.attempts, 1);
                    got.push(t.task_id);
                }
            }
            got
        }));
    }
    let mut claimed = Vec::new();
    for h in handles {
        claimed.extend(h.await.unwrap());
    }
    let unique: HashSet<_> = claimed.iter().cloned().collect();
    assert_eq!(unique.len(), claimed.len(), "a task was claimed twice");
    assert_eq!(unique, all);
    let later = s.get_cleanup(&later.task_id).await.unwrap().unwrap();
    assert_eq!(later.status, CleanupStatus::Pending, "not yet due");
}

both!(cleanup_crash_and_retry);
async fn cleanup_crash_and_retry(db: &TestDb) {
    let s = &db.store;
    let now = now_ms();
    let t = s.enqueue_cleanup("vm-1", None, now).await.unwrap();
    let got = s.claim_due_cleanups(now, 10).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].task_id, t.task_id);
    // Still within the lease: nobody else gets it.
    assert!(s
        .claim_due_cleanups(now + 1000, 10)
        .await
        .unwrap()
        .is_empty());
    // The worker "crashed": past the lease the task is handed out again.
    let after = now + polydev_store::DEFAULT_CLEANUP_LEASE_MS + 1;
    let got = s.claim_due_cleanups(after, 10).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].attempts, 2);
    assert_eq!(got[0].updated_at, after);

    // Failure with a retry puts it back, due at the retry time.
    assert!(s
        .fail_cleanup(&t.task_id, "netns busy", Some(after + 500))
        .await
        .unwrap());
    assert!(!s
        .fail_cleanup(&t.task_id, "not processing", None)
        .await
        .unwrap());
    assert!(s
        .claim_due_cleanups(after + 100, 10)
        .await
        .unwrap()
        .is_empty());
    let got = s.claim_due_cleanups(after + 500, 10).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].error.as_deref(), Some("netns busy"));
    assert!(s.complete_cleanup(&t.task_id).await.unwrap());
    assert!(!s.complete_cleanup(&t.task_id).await.unwrap());
    let done = s.get_cleanup(&t.task_id).await.unwrap().unwrap();
    assert_eq!(done.status, CleanupStatus::Completed);
    assert_eq!(done.error, None);
    assert!(s
        .claim_due_cleanups(after + 10_000_000, 10)
        .await
        .unwrap()
        .is_empty());

    // Failure without a retry is final.
    let t2 = s.enqueue_cleanup("vm-2", None, now).await.unwrap();
    assert_eq!(s.claim_due_cleanups(now, 10).await.unwrap().len(), 1);
    assert!(s.fail_cleanup(&t2.task_id, "gave up", None).await.unwrap());
    let t2 = s.get_cleanup(&t2.task_id).await.unwrap().unwrap();
    assert_eq!(t2.status, CleanupStatus::Failed);
    assert!(s
        .claim_due_cleanups(now + 10_000_000, 10)
        .await
        .unwrap()
        .is_empty());

    // Begun by a worker that then dies: due again once the lease runs out,
    // not before; a failed attempt with a retry time comes back then.
    let t3 = s.begin_cleanup("vm-3", Some("as_3")).await.unwrap();
    assert_eq!(t3.status, CleanupStatus::Processing);
    assert!(s.claim_due_cleanups(now_ms(), 10).await.unwrap().is_empty());
    let later = now_ms() + 10 * 60_000;
    let again = s.claim_due_cleanups(later, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].task_id.as_str(), again[0].attempts),
        (t3.task_id.as_str(), 2)
    );
    assert!(s
        .fail_cleanup(&t3.task_id, "busy", Some(later + 5_000))
        .await
        .unwrap());
    assert!(s.claim_due_cleanups(later, 10).await.unwrap().is_empty());
    assert_eq!(
        s.claim_due_cleanups(later + 5_000, 10).await.unwrap().len(),
        1
    );
    assert!(s.complete_cleanup(&t3.task_id).await.unwrap());
}

both!(credentials_unique_per_user_provider);
async fn credentials_unique_per_user_provider(db: &TestDb) {
    let s = &db.store;
    s.ensure_user("alice").await.unwrap();
    let insert = |provider: &'static str| async move {
        sqlx::query(
            "INSERT INTO credentials (user_id, provider, encrypted_data, iv, tag, salt, key_id, \
             is_valid, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind("alice")
        .bind(provider)
        .bind(vec![1u8, 2, 3, 0, 255])
        .bind(vec![0u8; 12])
        .bind(vec![0u8; 16])
        .bind(vec![9u8; 16])
        .bind("master-1")
        .bind(true)
        .bind(now_ms())
        .execute(s.pool())
        .await
    };
    insert("claude").await.unwrap();
    insert("codex").await.unwrap();
    let err = insert("claude").await.unwrap_err();
    assert!(
        matches!(&err, sqlx::Error::Database(d) if d.is_unique_violation()),
        "{err}"
    );
    let blob: Vec<u8> = sqlx::query_scalar(
        "SELECT encrypted_data FROM credentials WHERE user_id = $1 AND provider = $2",
    )
    .bind("alice")
    .bind("claude")
    .fetch_one(s.pool())
    .await
    .unwrap();
    assert_eq!(blob, [1, 2, 3, 0, 255]);
    // Foreign key: credentials need a known user.
    let fk = sqlx::query(
        "INSERT INTO credentials (user_id, provider, encrypted_data, iv, tag, salt, key_id, \
         created_at) VALUES ('ghost', 'claude', $1, $1, $1, $1, 'k', 0)",
    )
    .bind(vec![0u8])
    .execute(s.pool())
    .await;
    assert!(fk.is_err(), "foreign keys must be enforced");
}

#[tokio::test]
async fn bad_urls_say_why_without_the_password() {
    let err = Store::connect("mysql://root:hunter2@localhost/x")
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::UnsupportedUrl { .. }), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");

    // Port 1 on loopback: refused at once.
    let err = Store::connect("postgres://bob:hunter2@127.0.0.1:1/polydev")
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            StoreError::Connect {
                kind: StoreKind::Postgres,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("postgres://bob:***@127.0.0.1:1/polydev"),
        "{msg}"
    );
    assert!(!msg.contains("hunter2"), "{msg}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, b"").unwrap();
    let err = Store::sqlite_in(&file.join("sub")).await.unwrap_err();
    assert!(matches!(err, StoreError::DataDir { .. }), "{err}");
}

#[tokio::test]
async fn vm_record_serializes_camel_case() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::sqlite_in(dir.path()).await.unwrap();
    assert_eq!(s.kind().to_string(), "sqlite");
    let v = s
        .insert_vm_allocating_slot(&new_vm("v", "u"), names)
        .await
        .unwrap();
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["vmId"], "v");
    assert_eq!(json["vmType"], "cli");
    assert_eq!(json["status"], "creating");
    assert_eq!(json["tapDevice"], "pdtap0");
    assert!(json["vmmPid"].is_null());
}

both!(credential_upsert_replace_and_reseal);
async fn credential_upsert_replace_and_reseal(db: &TestDb) {
    use polydev_store::SealedParts;
    let s = &db.store;
    let parts = |data: &'static [u8], key: &'static str| SealedParts {
        encrypted_data: data,
        iv: &[1; 12],
        tag: &[2; 16],
        salt: &[3; 16],
        key_id: key,
    };
    assert!(s.get_credential("u1", "codex").await.unwrap().is_none());
    s.upsert_credential("u1", "codex", &parts(b"first", "mk_a"))
        .await
        .unwrap();
    s.upsert_credential("u1", "codex", &parts(b"second", "mk_a"))
        .await
        .unwrap();
    s.upsert_credential("u1", "claude_code", &parts(b"other", "mk_a"))
        .await
        .unwrap();
    let row = s.get_credential("u1", "codex").await.unwrap().unwrap();
    assert_eq!(row.encrypted_data, b"second");
    assert_eq!(row.iv, vec![1; 12]);
    assert!(row.is_valid);
    assert_eq!(s.list_credentials(Some("u1")).await.unwrap().len(), 2);
    assert_eq!(s.list_credentials(Some("u2")).await.unwrap().len(), 0);
    // Reseal is compare-and-set on the key id.
    assert!(!s
        .reseal_credential("u1", "codex", "mk_wrong", &parts(b"x", "mk_b"))
        .await
        .unwrap());
    assert!(s
        .reseal_credential("u1", "codex", "mk_a", &parts(b"third", "mk_b"))
        .await
        .unwrap());
    let row = s.get_credential("u1", "codex").await.unwrap().unwrap();
    assert_eq!(
        (row.encrypted_data.as_slice(), row.key_id.as_str()),
        (&b"third"[..], "mk_b")
    );
    assert!(s.delete_credential("u1", "codex").await.unwrap());
    assert!(!s.delete_credential("u1", "codex").await.unwrap());
}

both!(auth_session_lifecycle);
async fn auth_session_lifecycle(db: &TestDb) {
    use polydev_core::auth::{Provider, SessionStatus as S};
    let s = &db.store;
    let a = s
        .insert_auth_session("as_1", "u1", Provider::Codex, now_ms() + 300_000)
        .await
        .unwrap();
    assert_eq!(a.status, S::Initializing);
    assert!(s
        .advance_auth_session(
            "as_1",
            S::Initializing,
            S::VmCreated,
            Some("vm_1"),
            None,
            None
        )
        .await
        .unwrap());
    // Compare-and-set: a stale `from` changes nothing.
    assert!(!s
        .advance_auth_session("as_1", S::Initializing, S::Ready, None, None, None)
        .await
        .unwrap());
    assert!(s
        .advance_auth_session("as_1", S::VmCreated, S::Ready, None, None, None)
        .await
        .unwrap());
    assert!(s
        .advance_auth_session(
            "as_1",
            S::Ready,
            S::AwaitingUserAuth,
            None,
            Some("https://auth.example/authorize?x=1"),
            None
        )
        .await
        .unwrap());
    let got = s.get_auth_session("as_1").await.unwrap().unwrap();
    assert_eq!(got.browser_vm_id.as_deref(), Some("vm_1"));
    assert_eq!(
        got.auth_url.as_deref(),
        Some("https://auth.example/authorize?x=1")
    );
    assert_eq!(got.provider, Provider::Codex);
    assert_eq!(s.list_active_auth_sessions().await.unwrap().len(), 1);
    assert_eq!(
        s.end_auth_session("as_1", S::Cancelled, "cancelled by the user")
            .await
            .unwrap(),
        Some(S::AwaitingUserAuth)
    );
    // Ending twice is a no-op, and a late success cannot overwrite it.
    assert_eq!(
        s.end_auth_session("as_1", S::Timeout, "late")
            .await
            .unwrap(),
        None
    );
    assert!(!s
        .advance_auth_session("as_1", S::AwaitingUserAuth, S::Completed, None, None, None)
        .await
        .unwrap());
    let got = s.get_auth_session("as_1").await.unwrap().unwrap();
    assert_eq!(
        (got.status, got.error_message.as_deref()),
        (S::Cancelled, Some("cancelled by the user"))
    );
    assert!(got.completed_at.is_some());
    assert!(s.list_active_auth_sessions().await.unwrap().is_empty());
    assert_eq!(s.list_auth_sessions("u1").await.unwrap().len(), 1);
}

both!(webrtc_offer_answer);
async fn webrtc_offer_answer(db: &TestDb) {
    use polydev_core::auth::{Provider, SessionStatus as S};
    let s = &db.store;
    assert_eq!(s.get_webrtc("as_nope").await.unwrap(), None);
    assert!(!s.set_webrtc_offer("as_nope", "v=0").await.unwrap());
    s.insert_auth_session("as_w", "u1", Provider::Codex, now_ms() + 300_000)
        .await
        .unwrap();
    let empty = s.get_webrtc("as_w").await.unwrap().unwrap();
    assert_eq!(empty, polydev_store::WebrtcSignal::default());
    // An offer before the VM exists is kept.
    assert!(s.set_webrtc_offer("as_w", "offer-1").await.unwrap());
    // An answer to another offer is not recorded.
    assert!(!s
        .set_webrtc_answer("as_w", "offer-0", "answer-0", "[]")
        .await
        .unwrap());
    assert!(s
        .set_webrtc_answer("as_w", "offer-1", "answer-1", "[{\"candidate\":\"c\"}]")
        .await
        .unwrap());
    let got = s.get_webrtc("as_w").await.unwrap().unwrap();
    assert_eq!(got.offer.as_deref(), Some("offer-1"));
    assert_eq!(got.answer.as_deref(), Some("answer-1"));
    assert_eq!(got.candidates.as_deref(), Some("[{\"candidate\":\"c\"}]"));
    // A new offer clears the answer.
    assert!(s.set_webrtc_offer("as_w", "offer-2").await.unwrap());
    let got = s.get_webrtc("as_w").await.unwrap().unwrap();
    assert_eq!(
        (got.offer.as_deref(), got.answer, got.candidates),
        (Some("offer-2"), None, None)
    );
    // The session's own columns are untouched.
    assert_eq!(
        s.get_auth_session("as_w").await.unwrap().unwrap().status,
        S::Initializing
    );
    // An ended session takes no offer and no answer; clearing forgets all.
    s.end_auth_session("as_w", S::Cancelled, "cancelled")
        .await
        .unwrap();
    assert!(!s.set_webrtc_offer("as_w", "offer-3").await.unwrap());
    assert!(!s
        .set_webrtc_answer("as_w", "offer-2", "answer-2", "[]")
        .await
        .unwrap());
    s.clear_webrtc("as_w").await.unwrap();
    assert_eq!(
        s.get_webrtc("as_w").await.unwrap().unwrap(),
        polydev_store::WebrtcSignal::default()
    );
}

both!(runs_and_events);
async fn runs_and_events(db: &TestDb) {
    use polydev_core::run::RunStatus as R;
    use polydev_store::{NewRun, RunOutcome};
    let s = &db.store;
    let new = |id: &'static str, resume: Option<&'static str>| NewRun {
        run_id: id,
        user_id: "u1",
        provider: "codex",
        prompt: "hello",
        model: None,
        resume_id: resume,
        timeout_secs: 60,
    };
    let r = s.insert_run(&new("run-1", None)).await.unwrap();
    assert_eq!((r.status, r.event_count), (R::Queued, 0));
    // Status changes are compare-and-set.
    assert!(!s
        .set_run_status("run-1", R::Starting, R::Running)
        .await
        .unwrap());
    assert!(s
        .set_run_status("run-1", R::Queued, R::Starting)
        .await
        .unwrap());
    s.set_run_vm("run-1", "vm-1", "booted").await.unwrap();
    assert!(s.set_run_started("run-1", "p1").await.unwrap());
    assert!(
        !s.set_run_started("run-1", "p2").await.unwrap(),
        "only from starting"
    );
    // Events: numbered from 1, appended only at the next number.
    s.append_run_events(
        "run-1",
        1,
        &[("status", "{}".into()), ("text", "{\"t\":1}".into())],
        Some("{\"agentSeq\":4}"),
    )
    .await
    .unwrap();
    let dup = s
        .append_run_events("run-1", 2, &[("text", "{}".into())], None)
        .await;
    assert!(dup.is_err(), "a sequence number is never given twice");
    s.append_run_events("run-1", 3, &[("result", "{}".into())], None)
        .await
        .unwrap();
    let r = s.get_run("run-1").await.unwrap().unwrap();
    assert_eq!(
        r.checkpoint.as_deref(),
        Some("{\"agentSeq\":4}"),
        "kept when none is given"
    );
    let evs = s.run_events("run-1", 1, 100).await.unwrap();
    assert_eq!(
        evs.iter()
            .map(|e| (e.seq, e.kind.as_str()))
            .collect::<Vec<_>>(),
        [(2, "text"), (3, "result")]
    );
    assert_eq!(s.get_run("run-1").await.unwrap().unwrap().event_count, 3);
    let done = RunOutcome {
        exit_code: Some(0),
        answer: Some("hi"),
        conversation_id: Some("th-1"),
        input_tokens: Some(10),
        output_tokens: Some(5),
        cost_usd: Some(0.25),
        totals: Some("{\"inputTokens\":10}"),
        ..Default::default()
    };
    assert!(s.finish_run("run-1", R::Completed, &done).await.unwrap());
    assert!(
        !s.finish_run("run-1", R::Failed, &done).await.unwrap(),
        "ended once"
    );
    let r = s.get_run("run-1").await.unwrap().unwrap();
    assert_eq!(
        (
            r.status,
            r.exit_code,
            r.cost_usd,
            r.conversation_id.as_deref()
        ),
        (R::Completed, Some(0), Some(0.25), Some("th-1"))
    );
    assert_eq!(
        s.conversation_totals("u1", "codex", "th-1")
            .await
            .unwrap()
            .as_deref(),
        Some("{\"inputTokens\":10}")
    );
    s.insert_run(&new("run-2", Some("th-1"))).await.unwrap();
    let unfinished = s.list_unfinished_runs().await.unwrap();
    assert_eq!(unfinished.len(), 1);
    assert_eq!(unfinished[0].resume_id.as_deref(), Some("th-1"));
    let mine = s.list_runs(Some("u1"), 10).await.unwrap();
    assert_eq!(mine.len(), 2);
    // A listed run is the whole record, as read alone, newest first.
    for r in &mine {
        assert_eq!(Some(r), s.get_run(&r.run_id).await.unwrap().as_ref());
    }
    assert!(mine[0].created_at >= mine[1].created_at);
    assert_eq!(s.list_runs(None, 10).await.unwrap(), mine);
    assert_eq!(s.list_runs(Some("u1"), 1).await.unwrap()[..], mine[..1]);
    assert!(s.list_runs(Some("u2"), 10).await.unwrap().is_empty());
}

both!(credential_kinds_refresh_and_validity);
async fn credential_kinds_refresh_and_validity(db: &TestDb) {
    use polydev_core::run::CredentialKind;
    use polydev_store::SealedParts;
    let s = &db.store;
    let parts = |data: &'static [u8]| SealedParts {
        encrypted_data: data,
        iv: &[1; 12],
        tag: &[2; 16],
        salt: &[3; 16],
        key_id: "mk_a",
    };
    s.upsert_credential("u1", "codex", &parts(b"file-1"))
        .await
        .unwrap();
    let row = s.get_credential("u1", "codex").await.unwrap().unwrap();
    assert_eq!((row.kind, row.expires_at), (CredentialKind::Oauth, None));
    // A refresh is compare-and-set on the old ciphertext.
    assert!(!s
        .refresh_credential("u1", "codex", b"other", Some(5), &parts(b"file-2"))
        .await
        .unwrap());
    assert!(s
        .refresh_credential("u1", "codex", b"file-1", Some(5), &parts(b"file-2"))
        .await
        .unwrap());
    let row = s.get_credential("u1", "codex").await.unwrap().unwrap();
    assert_eq!(
        (row.encrypted_data.as_slice(), row.expires_at),
        (&b"file-2"[..], Some(5))
    );
    s.mark_credential("u1", "codex", Some("401 from the provider"))
        .await
        .unwrap();
    let row = s.get_credential("u1", "codex").await.unwrap().unwrap();
    assert!(!row.is_valid && row.invalid_reason.is_some() && row.last_validated_at.is_some());
    s.put_credential("u1", "codex", CredentialKind::ApiKey, None, &parts(b"key"))
        .await
        .unwrap();
    let row = s.get_credential("u1", "codex").await.unwrap().unwrap();
    assert!(row.is_valid && row.invalid_reason.is_none());
    assert_eq!(row.kind, CredentialKind::ApiKey);
}

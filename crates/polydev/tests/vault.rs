//! `polydev vault`: key files and rotation of every stored credential.

use polydev_vault::{Keyring, MasterKey, Sealed};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_polydev");

fn sealed(r: &polydev_store::CredentialRow) -> Sealed {
    Sealed {
        ciphertext: r.encrypted_data.clone(),
        iv: r.iv.clone(),
        tag: r.tag.clone(),
        salt: r.salt.clone(),
        key_id: r.key_id.clone(),
    }
}

#[tokio::test]
async fn rotate_reencrypts_every_row_and_plaintext_never_hits_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let old_file = dir.path().join("old.key");
    let new_file = dir.path().join("new.key");
    for f in [&old_file, &new_file] {
        let out = Command::new(BIN)
            .args(["vault", "keygen", "--out"])
            .arg(f)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // keygen refuses to overwrite, and writes a private file.
    assert!(!Command::new(BIN)
        .args(["vault", "keygen", "--out"])
        .arg(&old_file)
        .status()
        .unwrap()
        .success());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&old_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let old = MasterKey::from_file(&old_file).unwrap();
    let new = MasterKey::from_file(&new_file).unwrap();
    let store = polydev_store::Store::sqlite_in(dir.path()).await.unwrap();
    let secret = br#"{"tokens":{"access_token":"polydev-test-plaintext-marker"}}"#;
    let ring_old = Keyring::new(old.clone());
    for (user, provider) in [("alice", "codex"), ("bob", "claude_code")] {
        let s = ring_old.seal(user, provider, secret);
        let parts = polydev_store::SealedParts {
            encrypted_data: &s.ciphertext,
            iv: &s.iv,
            tag: &s.tag,
            salt: &s.salt,
            key_id: &s.key_id,
        };
        store
            .upsert_credential(user, provider, &parts)
            .await
            .unwrap();
    }
    // A user's egress proxy is sealed the same way and rotates too.
    let proxy = b"http://u:polydev-test-proxy-password@203.0.113.30:3128";
    let s = ring_old.seal("carol", "egress_proxy", proxy);
    let parts = polydev_store::SealedParts {
        encrypted_data: &s.ciphertext,
        iv: &s.iv,
        tag: &s.tag,
        salt: &s.salt,
        key_id: &s.key_id,
    };
    store
        .put_user_egress(
            "carol",
            Some(("http://u:***@203.0.113.30:3128", &parts)),
            None,
        )
        .await
        .unwrap();
    store.close().await;

    let rotate = |with_old: bool| {
        let mut c = Command::new(BIN);
        c.args(["vault", "rotate"])
            .env("POLYDEV_DATA_DIR", dir.path())
            .env("POLYDEV_MASTER_KEY_FILE", &new_file)
            .env_remove("POLYDEV_MASTER_KEY")
            .env_remove("DATABASE_URL");
        if with_old {
            c.env("POLYDEV_OLD_MASTER_KEY_FILES", &old_file);
        } else {
            c.env_remove("POLYDEV_OLD_MASTER_KEY_FILES");
        }
        c.output().unwrap()
    };
    // Without the old key the rows cannot be read: rotation fails and says why.
    let out = rotate(false);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(old.id()) && !err.contains("polydev-test-plaintext-marker"),
        "{err}"
    );
    let out = rotate(true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("rotated 2"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rotated 1 egress"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let store = polydev_store::Store::sqlite_in(dir.path()).await.unwrap();
    let ring_new = Keyring::new(new.clone());
    for r in store.list_credentials(None).await.unwrap() {
        assert_eq!(r.key_id, new.id());
        assert_eq!(
            &ring_new.open(&r.user_id, &r.provider, &sealed(&r)).unwrap()[..],
            &secret[..]
        );
    }
    let row = store.get_user_egress("carol").await.unwrap().unwrap();
    let (c, iv, tag, salt, key) = row.proxy_sealed.unwrap();
    assert_eq!(key, new.id());
    let opened = ring_new
        .open(
            "carol",
            "egress_proxy",
            &Sealed {
                ciphertext: c,
                iv,
                tag,
                salt,
                key_id: key,
            },
        )
        .unwrap();
    assert_eq!(&opened[..], &proxy[..]);
    store.close().await;
    // The plaintext appears nowhere in the database files.
    for e in std::fs::read_dir(dir.path()).unwrap().flatten() {
        let bytes = std::fs::read(e.path()).unwrap_or_default();
        assert!(
            !bytes
                .windows(28)
                .any(|w| w == b"polydev-test-plaintext-marker"[..28].as_ref()),
            "{:?}",
            e.path()
        );
    }
}

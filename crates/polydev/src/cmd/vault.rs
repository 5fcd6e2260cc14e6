//! `polydev vault keygen|rotate|status`: the credential vault's master keys.

use super::common::Common;
use clap::Subcommand;
use polydev_vault::{Keyring, MasterKey, Sealed};
use std::path::PathBuf;

/// Vault subcommands.
#[derive(Subcommand, Debug)]
pub enum VaultCommand {
    /// Make a new random master key and write it to FILE (mode 0600).
    Keygen {
        /// Where to write the key; refuses to overwrite.
        #[arg(long)]
        out: PathBuf,
    },
    /// Re-encrypt every credential under the current master key
    /// (POLYDEV_MASTER_KEY or POLYDEV_MASTER_KEY_FILE), reading old rows with
    /// the keys in POLYDEV_OLD_MASTER_KEY_FILES (colon-separated files).
    Rotate {
        #[command(flatten)]
        common: Common,
    },
    /// How many credentials are sealed under each master key.
    Status {
        #[command(flatten)]
        common: Common,
    },
}

/// Runs a vault subcommand.
pub async fn run(c: VaultCommand) -> anyhow::Result<()> {
    match c {
        VaultCommand::Keygen { out } => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let k = MasterKey::generate();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .map_err(|e| anyhow::anyhow!("creating {}: {e}", out.display()))?;
            f.write_all(k.to_hex().as_bytes())?;
            eprintln!("wrote master key {} to {}", k.id(), out.display());
        }
        VaultCommand::Rotate { common } => {
            let ring = Keyring::from_env()?;
            let store = polydev_controller::open_store(&common.config()).await?;
            let rows = store.list_credentials(None).await?;
            let (mut done, mut current) = (0, 0);
            for r in &rows {
                let sealed = Sealed {
                    ciphertext: r.encrypted_data.clone(),
                    iv: r.iv.clone(),
                    tag: r.tag.clone(),
                    salt: r.salt.clone(),
                    key_id: r.key_id.clone(),
                };
                match ring.reencrypt(&r.user_id, &r.provider, &sealed)? {
                    None => current += 1,
                    Some(n) => {
                        let parts = polydev_store::SealedParts {
                            encrypted_data: &n.ciphertext,
                            iv: &n.iv,
                            tag: &n.tag,
                            salt: &n.salt,
                            key_id: &n.key_id,
                        };
                        if store
                            .reseal_credential(&r.user_id, &r.provider, &r.key_id, &parts)
                            .await?
                        {
                            done += 1;
                        }
                    }
                }
            }
            eprintln!(
                "rotated {done} credential(s) to {}; {current} already under it; {} in all",
                ring.current_id(),
                rows.len()
            );
            // Users' egress proxies are sealed the same way.
            let label = polydev_controller::egress::PROXY_LABEL;
            let (mut pdone, mut pcurrent, mut pall) = (0, 0, 0);
            for r in store.list_user_egress().await? {
                let Some((c, iv, tag, salt, key)) = &r.proxy_sealed else {
                    continue;
                };
                pall += 1;
                let sealed = Sealed {
                    ciphertext: c.clone(),
                    iv: iv.clone(),
                    tag: tag.clone(),
                    salt: salt.clone(),
                    key_id: key.clone(),
                };
                match ring.reencrypt(&r.user_id, label, &sealed)? {
                    None => pcurrent += 1,
                    Some(n) => {
                        let parts = polydev_store::SealedParts {
                            encrypted_data: &n.ciphertext,
                            iv: &n.iv,
                            tag: &n.tag,
                            salt: &n.salt,
                            key_id: &n.key_id,
                        };
                        if store.reseal_user_proxy(&r.user_id, key, &parts).await? {
                            pdone += 1;
                        }
                    }
                }
            }
            eprintln!(
                "rotated {pdone} egress prox(ies) to {}; {pcurrent} already under it; {pall} in all",
                ring.current_id()
            );
        }
        VaultCommand::Status { common } => {
            let store = polydev_controller::open_store(&common.config()).await?;
            let mut by_key = std::collections::BTreeMap::<String, usize>::new();
            for r in store.list_credentials(None).await? {
                *by_key.entry(r.key_id).or_default() += 1;
            }
            if let Ok(ring) = Keyring::from_env() {
                println!("current master key: {}", ring.current_id());
            }
            for (k, n) in by_key {
                println!("{k}\t{n}");
            }
        }
    }
    Ok(())
}

//! `polydev apikey create|ls|revoke`.

use super::common::Common;
use clap::Subcommand;

/// API key subcommands.
#[derive(Subcommand, Debug)]
pub enum ApikeyCommand {
    /// Make a new key; it is printed once and stored only as a hash.
    Create {
        #[command(flatten)]
        common: Common,
        /// A name to recognise the key by.
        #[arg(long, default_value = "default")]
        name: String,
        /// Bind the key to one user (it acts for that user only); without
        /// it the key is an operator's and acts for every user.
        #[arg(long)]
        user: Option<String>,
    },
    /// List keys (ids and names, never secrets).
    Ls {
        #[command(flatten)]
        common: Common,
    },
    /// Revoke a key by id.
    Revoke {
        #[command(flatten)]
        common: Common,
        /// The key id (`key_...`).
        key_id: String,
    },
}

/// Runs an apikey subcommand.
pub async fn run(c: ApikeyCommand) -> anyhow::Result<()> {
    match c {
        ApikeyCommand::Create { common, name, user } => {
            if let Some(u) = &user {
                polydev_controller::api::validate_user_id(u)
                    .map_err(|e| anyhow::anyhow!(e.message))?;
            }
            let store = polydev_controller::open_store(&common.config()).await?;
            let k = polydev_controller::auth::generate();
            store
                .insert_scoped_api_key(&k.key_id, &name, &k.hash, user.as_deref())
                .await?;
            eprintln!(
                "created {} API key {} ({name}); it is shown once, keep it safe:",
                match &user {
                    Some(u) => format!("user {u}'s"),
                    None => "an operator".into(),
                },
                k.key_id
            );
            println!("{}", k.secret);
        }
        ApikeyCommand::Ls { common } => {
            let store = polydev_controller::open_store(&common.config()).await?;
            for k in store.list_api_keys().await? {
                println!(
                    "{}\t{}\t{}\t{}",
                    k.key_id,
                    k.name,
                    k.user_id
                        .as_deref()
                        .map_or("operator".into(), |u| format!("user:{u}")),
                    if k.revoked { "revoked" } else { "active" }
                );
            }
        }
        ApikeyCommand::Revoke { common, key_id } => {
            let store = polydev_controller::open_store(&common.config()).await?;
            if !store.revoke_api_key(&key_id).await? {
                anyhow::bail!("no active API key {key_id}");
            }
            eprintln!("revoked {key_id} (a running controller refuses it within a second)");
        }
    }
    Ok(())
}

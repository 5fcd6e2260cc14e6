//! `polydev user create|ls|disable|enable|reset-password`: dashboard
//! accounts, straight in the store. There is no default account and no
//! default password: the first admin is made here.

use super::common::Common;
use clap::Subcommand;

/// Account subcommands.
#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Make an account. Its password is read from standard input with
    /// `--password-stdin`, else a random one is made and printed once.
    Create {
        #[command(flatten)]
        common: Common,
        /// The user id (also the sign-in name): 1-128 of letters, digits,
        /// '.', '_', '@', '-'.
        user: String,
        /// Make an admin (sees and manages every user's objects).
        #[arg(long)]
        admin: bool,
        /// E-mail address: an OIDC identity with this verified address
        /// signs in to this account.
        #[arg(long)]
        email: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long, conflicts_with = "no_password")]
        password_stdin: bool,
        /// No password: the account signs in only through an OIDC provider.
        #[arg(long)]
        no_password: bool,
    },
    /// List accounts.
    Ls {
        #[command(flatten)]
        common: Common,
    },
    /// Disable an account: it cannot sign in and its sessions end.
    Disable {
        #[command(flatten)]
        common: Common,
        /// The user id.
        user: String,
    },
    /// Enable a disabled account.
    Enable {
        #[command(flatten)]
        common: Common,
        /// The user id.
        user: String,
    },
    /// Set a new password (from standard input with `--password-stdin`,
    /// else a random one printed once) and end the account's sessions.
    ResetPassword {
        #[command(flatten)]
        common: Common,
        /// The user id.
        user: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
}

/// A password from stdin, or a random one (printed by the caller).
fn password(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let p = line.trim_end_matches(['\r', '\n']).to_string();
        polydev_controller::accounts::password::check_new(&p).map_err(anyhow::Error::msg)?;
        return Ok((p, false));
    }
    Ok((polydev_controller::accounts::password::generate(), true))
}

/// Runs a user subcommand.
pub async fn run(c: UserCommand) -> anyhow::Result<()> {
    use polydev_controller::accounts::password;
    match c {
        UserCommand::Create {
            common,
            user,
            admin,
            email,
            password_stdin,
            no_password,
        } => {
            polydev_controller::api::validate_user_id(&user)
                .map_err(|e| anyhow::anyhow!(e.message))?;
            let email = email
                .map(|e| polydev_controller::accounts::normalize_email(&e))
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let secret = if no_password {
                None
            } else {
                Some(password(password_stdin)?)
            };
            let hash = match &secret {
                Some((p, _)) => Some(
                    password::hash_async(p.clone())
                        .await
                        .map_err(anyhow::Error::msg)?,
                ),
                None => None,
            };
            let store = polydev_controller::open_store(&common.config()).await?;
            let role = if admin { "admin" } else { "user" };
            store
                .insert_account(&user, email.as_deref(), role, hash.as_deref())
                .await?;
            eprintln!("created {role} {user}");
            if let Some((p, true)) = secret {
                eprintln!("its password (shown once; change it on the Account page):");
                println!("{p}");
            }
        }
        UserCommand::Ls { common } => {
            let store = polydev_controller::open_store(&common.config()).await?;
            for a in store.list_accounts().await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    a.user_id,
                    a.role,
                    a.email.as_deref().unwrap_or("-"),
                    if a.has_password {
                        "password"
                    } else {
                        "oidc-only"
                    },
                    if a.disabled { "disabled" } else { "active" }
                );
            }
        }
        UserCommand::Disable { common, user } => {
            let store = polydev_controller::open_store(&common.config()).await?;
            if !store.set_account_disabled(&user, true).await? {
                anyhow::bail!("no account {user}");
            }
            eprintln!("disabled {user}; its sessions ended (a running controller refuses them within a second)");
        }
        UserCommand::Enable { common, user } => {
            let store = polydev_controller::open_store(&common.config()).await?;
            if !store.set_account_disabled(&user, false).await? {
                anyhow::bail!("no account {user}");
            }
            eprintln!("enabled {user}");
        }
        UserCommand::ResetPassword {
            common,
            user,
            password_stdin,
        } => {
            let (p, generated) = password(password_stdin)?;
            let hash = password::hash_async(p.clone())
                .await
                .map_err(anyhow::Error::msg)?;
            let store = polydev_controller::open_store(&common.config()).await?;
            if !store.set_account_password(&user, &hash).await? {
                anyhow::bail!("no account {user}");
            }
            eprintln!("new password set for {user}; its sessions ended");
            if generated {
                eprintln!("the password (shown once):");
                println!("{p}");
            }
        }
    }
    Ok(())
}

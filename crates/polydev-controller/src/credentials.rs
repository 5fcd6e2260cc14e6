//! Users' provider credentials after signing in: listing them (never a
//! secret), removing them (vault and CLI VM), API keys as the alternative to
//! signing in (sealed, given to runs through the environment, never written
//! to a disk), and keeping the vault's copy of a CLI's credential file
//! current when the CLI refreshes its token inside the CLI VM.

use crate::auth_flow::{credential_path, CLI_USER};
use crate::error::ApiError;
use crate::runtime::Runtime;
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use polydev_core::auth::Provider;
use polydev_core::run::CredentialKind;
use polydev_login::provider::CREDENTIAL_MAX_BYTES;
use polydev_store::{CredentialRow, SealedParts, VmRecord};
use polydev_vault::{Keyring, Sealed};
use std::time::Duration;
use zeroize::Zeroizing;

/// Largest API key accepted.
pub const MAX_API_KEY_BYTES: usize = 4096;

/// A credential opened from the vault.
pub struct Opened {
    /// What it is.
    pub kind: CredentialKind,
    /// The file's content or the key.
    pub secret: Zeroizing<Vec<u8>>,
    /// The stored row (its ciphertext is the compare-and-set token of a refresh).
    pub row: CredentialRow,
}

fn sealed_of(row: &CredentialRow) -> Sealed {
    Sealed {
        ciphertext: row.encrypted_data.clone(),
        iv: row.iv.clone(),
        tag: row.tag.clone(),
        salt: row.salt.clone(),
        key_id: row.key_id.clone(),
    }
}

fn parts(s: &Sealed) -> SealedParts<'_> {
    SealedParts {
        encrypted_data: &s.ciphertext,
        iv: &s.iv,
        tag: &s.tag,
        salt: &s.salt,
        key_id: &s.key_id,
    }
}

/// The user's credential for a provider, opened.
pub async fn open(
    rt: &Runtime,
    vault: &Keyring,
    user_id: &str,
    p: Provider,
) -> Result<Option<Opened>, String> {
    let Some(row) = rt
        .store()
        .get_credential(user_id, p.as_str())
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let secret = vault
        .open(user_id, p.as_str(), &sealed_of(&row))
        .map_err(|e| format!("opening the stored {p} credential: {e}"))?;
    Ok(Some(Opened {
        kind: row.kind,
        secret,
        row,
    }))
}

/// Reads the CLI's credential file in a running CLI VM (`None`: absent).
async fn read_in_vm(rt: &Runtime, rec: &VmRecord, p: Provider) -> Result<Option<Vec<u8>>, String> {
    let body = serde_json::json!({
        "argv": ["cat", credential_path(p)],
        "user": CLI_USER,
        "timeoutMs": 10_000,
        // One byte more than a credential file may have: a longer one shows.
        "maxOutputBytes": CREDENTIAL_MAX_BYTES + 1,
    });
    let out = rt
        .agent_call(rec, "POST", "/exec", Some(body), Duration::from_secs(15))
        .await
        .map_err(|e| {
            format!(
                "reading the {p} credential file in CLI VM {}: {e}",
                rec.vm_id
            )
        })?;
    if out["exitCode"].as_i64() != Some(0) {
        return Ok(None);
    }
    Ok(out["stdout"].as_str().map(|s| s.as_bytes().to_vec()))
}

/// Writes the credential file into a running CLI VM (0600, the CLI user's).
pub async fn install_file(
    rt: &Runtime,
    rec: &VmRecord,
    p: Provider,
    content: &[u8],
) -> Result<(), String> {
    use base64::Engine;
    let body = serde_json::json!({
        "path": credential_path(p),
        "contentBase64": base64::engine::general_purpose::STANDARD.encode(content),
        "mode": "0600",
        "owner": CLI_USER,
    });
    rt.agent_call(rec, "POST", "/files", Some(body), Duration::from_secs(30))
        .await
        .map(|_| ())
        .map_err(|e| {
            format!(
                "installing the {p} credentials in CLI VM {}: {e}",
                rec.vm_id
            )
        })
}

/// Makes the VM's credential file and the vault agree before a run: a file
/// missing from the VM is installed from the vault; a VM file that differs
/// and is well-formed is the newer one (the CLI refreshed it) and is sealed
/// into the vault.
pub async fn reconcile_file(
    rt: &Runtime,
    vault: &Keyring,
    rec: &VmRecord,
    user_id: &str,
    p: Provider,
    stored: &Opened,
) -> Result<(), String> {
    match read_in_vm(rt, rec, p).await? {
        None => install_file(rt, rec, p, &stored.secret).await,
        Some(f) if f.as_slice() == stored.secret.as_slice() => Ok(()),
        Some(_) => sync_from_vm(rt, vault, rec, user_id, p).await.map(|_| ()),
    }
}

/// Seals the CLI's credential file into the vault again when the CLI
/// changed it (a refreshed token). Returns whether the vault changed.
pub async fn sync_from_vm(
    rt: &Runtime,
    vault: &Keyring,
    rec: &VmRecord,
    user_id: &str,
    p: Provider,
) -> Result<bool, String> {
    let Some(stored) = open(rt, vault, user_id, p).await? else {
        return Ok(false);
    };
    if stored.kind != CredentialKind::Oauth {
        return Ok(false);
    }
    let Some(now) = read_in_vm(rt, rec, p).await? else {
        return Ok(false);
    };
    if now.as_slice() == stored.secret.as_slice() {
        return Ok(false);
    }
    if let Err(e) = usable(p, &now) {
        tracing::warn!(user_id, provider = %p, error = %e, "the CLI VM's credential file is not usable; the vault keeps its copy");
        return Ok(false);
    }
    let sealed = vault.seal(user_id, p.as_str(), &now);
    let expires = polydev_login::credentials::expires_at(p, &now);
    let changed = rt
        .store()
        .refresh_credential(
            user_id,
            p.as_str(),
            &stored.row.encrypted_data,
            expires,
            &parts(&sealed),
        )
        .await
        .map_err(|e| e.to_string())?;
    if changed {
        tracing::info!(user_id, provider = %p, vm_id = %rec.vm_id, "refreshed credential sealed into the vault");
    }
    Ok(changed)
}

/// Whether a credential file read from a CLI VM may replace the vault's:
/// at most [`CREDENTIAL_MAX_BYTES`] and well-formed for `p`.
fn usable(p: Provider, content: &[u8]) -> Result<(), String> {
    if content.len() > CREDENTIAL_MAX_BYTES {
        return Err(format!(
            "the file has more than {CREDENTIAL_MAX_BYTES} bytes"
        ));
    }
    polydev_login::credentials::validate(p, content).map_err(|e| e.to_string())
}

/// Seals every OAuth credential of the VM's user that its CLI refreshed.
pub async fn sync_all(rt: &Runtime, vault: &Keyring, rec: &VmRecord) {
    let Ok(rows) = rt.store().list_credentials(Some(&rec.user_id)).await else {
        return;
    };
    for row in rows.into_iter().filter(|r| r.kind == CredentialKind::Oauth) {
        let Ok(p) = row.provider.parse::<Provider>() else {
            continue;
        };
        if let Err(e) = sync_from_vm(rt, vault, rec, &rec.user_id, p).await {
            tracing::warn!(vm_id = %rec.vm_id, provider = %p, error = %e, "syncing a credential from the CLI VM");
        }
    }
}

/// Installs every signed-in credential file of the VM's user that its home
/// lacks (a new CLI VM, or a new home disk, gets the vault's current files).
pub async fn restore_missing(rt: &Runtime, vault: &Keyring, rec: &VmRecord) {
    let Ok(rows) = rt.store().list_credentials(Some(&rec.user_id)).await else {
        return;
    };
    for row in rows.into_iter().filter(|r| r.kind == CredentialKind::Oauth) {
        let Ok(p) = row.provider.parse::<Provider>() else {
            continue;
        };
        let done = async {
            if read_in_vm(rt, rec, p).await?.is_some() {
                return Ok(false);
            }
            let Some(o) = open(rt, vault, &rec.user_id, p).await? else {
                return Ok(false);
            };
            install_file(rt, rec, p, &o.secret).await.map(|_| true)
        };
        match done.await {
            Ok(true) => {
                tracing::info!(vm_id = %rec.vm_id, provider = %p, "credential file restored from the vault")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(vm_id = %rec.vm_id, provider = %p, error = %e, "restoring a credential file")
            }
        }
    }
}

fn row_json(r: &CredentialRow) -> serde_json::Value {
    serde_json::json!({
        "userId": r.user_id,
        "provider": r.provider,
        "kind": r.kind,
        "connectedAt": r.created_at,
        "lastValidatedAt": r.last_validated_at,
        "valid": r.is_valid,
        "invalidReason": r.invalid_reason,
        "expiresAt": r.expires_at,
    })
}

fn provider_of(s: &str) -> Result<Provider, ApiError> {
    s.parse::<Provider>().map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_provider",
            e.to_string(),
        )
    })
}

/// `GET /api/credentials?userId=`.
#[derive(serde::Deserialize)]
pub struct ListQuery {
    #[serde(rename = "userId")]
    user_id: String,
}

/// `GET /api/credentials?userId=`: the user's connections, never a secret.
pub async fn list(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(format!("userId is required: {e}")))?;
    crate::api::validate_user_id(&q.user_id)?;
    caller.act_for(&q.user_id)?;
    let rows = s.runtime.store().list_credentials(Some(&q.user_id)).await?;
    Ok(Json(serde_json::json!({
        "credentials": rows.iter().map(row_json).collect::<Vec<_>>()
    })))
}

/// `DELETE /api/credentials/:userId/:provider`: removed from the vault and
/// from the user's CLI VM (resumed if it sleeps).
pub async fn delete(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path((user_id, provider)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    crate::api::validate_user_id(&user_id)?;
    caller.act_for(&user_id)?;
    let p = provider_of(&provider)?;
    if !s
        .runtime
        .store()
        .delete_credential(&user_id, p.as_str())
        .await?
    {
        return Err(ApiError::not_found(format!(
            "{user_id} has no {p} credential"
        )));
    }
    let mut removed_from_vm = None;
    if s.cli
        .current(&user_id)
        .await
        .map_err(ApiError::internal)?
        .is_some()
    {
        let (rec, _hold, _) = s.cli.ensure(&user_id).await.map_err(ApiError::internal)?;
        let body = serde_json::json!({
            "argv": ["rm", "-f", credential_path(p)],
            "user": CLI_USER,
            "timeoutMs": 10_000,
        });
        s.runtime
            .agent_call(&rec, "POST", "/exec", Some(body), Duration::from_secs(15))
            .await
            .map_err(|e| {
                ApiError::internal(format!("removing the file from CLI VM {}: {e}", rec.vm_id))
            })?;
        removed_from_vm = Some(rec.vm_id);
    }
    tracing::info!(%user_id, provider = %p, "credential removed");
    Ok(Json(
        serde_json::json!({"deleted": true, "removedFromVm": removed_from_vm}),
    ))
}

/// `PUT` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutKey {
    #[serde(rename = "apiKey")]
    api_key: String,
}

/// `PUT /api/credentials/:userId/:provider {"apiKey"}`: an API key instead
/// of signing in; sealed, never written to the VM's disk.
pub async fn put_api_key(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path((user_id, provider)): Path<(String, String)>,
    body: Result<Json<PutKey>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    crate::api::validate_user_id(&user_id)?;
    caller.act_for(&user_id)?;
    let p = provider_of(&provider)?;
    let Json(body) = body?;
    let key = body.api_key.trim();
    if key.is_empty()
        || key.len() > MAX_API_KEY_BYTES
        || key.chars().any(|c| c.is_control() || c == ' ')
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_api_key",
            format!("apiKey must be 1-{MAX_API_KEY_BYTES} printable characters without spaces"),
        ));
    }
    let sealed = s.auth.vault().seal(&user_id, p.as_str(), key.as_bytes());
    s.runtime
        .store()
        .put_credential(
            &user_id,
            p.as_str(),
            CredentialKind::ApiKey,
            None,
            &parts(&sealed),
        )
        .await?;
    let row = s
        .runtime
        .store()
        .get_credential(&user_id, p.as_str())
        .await?
        .ok_or_else(|| ApiError::internal("the stored key vanished"))?;
    tracing::info!(%user_id, provider = %p, "API key stored");
    Ok((StatusCode::OK, Json(row_json(&row))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refreshed_file_replaces_the_vaults_only_within_its_limit() {
        let ok =
            br#"{"access_token":"a","refresh_token":"r","token_type":"Bearer","expiry_date":5}"#;
        usable(Provider::GeminiCli, ok).unwrap();
        assert!(usable(Provider::GeminiCli, b"{}").is_err());
        let mut big = ok[..ok.len() - 1].to_vec();
        big.extend_from_slice(
            format!(r#","pad":"{}"}}"#, "x".repeat(CREDENTIAL_MAX_BYTES)).as_bytes(),
        );
        let e = usable(Provider::GeminiCli, &big).unwrap_err();
        assert!(e.contains("more than 65536"), "{e}");
    }
}

//! Sign-in with OpenID Connect providers named in the operator's file
//! (`POLYDEV_OIDC_FILE`, TOML; errors name the line):
//!
//! ```toml
//! [[provider]]
//! id = "corp"                      # in URLs: /auth/oidc/corp
//! name = "Corp SSO"                # on the sign-in page's button
//! issuer = "https://login.example.com"
//! client_id = "polydev"
//! client_secret_file = "/etc/polydev/oidc-corp.secret"
//! ```
//!
//! The `openidconnect` crate does the protocol: discovery, the authorization
//! code flow with PKCE (S256), `state` and `nonce`, and the ID token's
//! signature, issuer, audience, expiry and nonce. State, nonce and PKCE
//! verifier are kept in the store, so a restart between the redirect and the
//! callback loses nothing, and taken once, so a replayed callback fails.
//! An identity signs in to the account it was linked to, else to the
//! account whose e-mail address the provider says is verified (and is then
//! linked); sign-up stays closed: no account, no session.

use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    TokenResponse,
};
use polydev_store::{OidcLogin, Store};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long a sign-in may take between the redirect and the callback.
pub const LOGIN_MAX_AGE: Duration = Duration::from_secs(10 * 60);
/// How long discovered metadata (endpoints, keys) is reused.
pub const METADATA_TTL: Duration = Duration::from_secs(3600);

/// One provider as the operator's file names it.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    /// Short id, used in URLs (`[a-z0-9-]`).
    pub id: String,
    /// What the sign-in button says.
    pub name: String,
    /// The issuer URL (discovery is `<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    /// The client id registered with the provider.
    pub client_id: String,
    /// The client secret, inline (prefer `client_secret_file`).
    #[serde(default)]
    pub client_secret: Option<String>,
    /// A file holding the client secret.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Scopes besides `openid`, `email` and `profile`.
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    provider: Vec<ProviderSettings>,
}

/// Parses a providers file; `source` names it in errors (which carry the
/// line and column).
pub fn parse(text: &str, source: &str) -> Result<Vec<ProviderSettings>, String> {
    let f: File = toml::from_str(text).map_err(|e| format!("{source}: {e}"))?;
    let mut seen = std::collections::HashSet::new();
    for p in &f.provider {
        let ok_id = !p.id.is_empty()
            && p.id.len() <= 32
            && p.id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok_id {
            return Err(format!(
                "{source}: provider id {:?} must be 1-32 of a-z, 0-9 and '-'",
                p.id
            ));
        }
        if !seen.insert(p.id.clone()) {
            return Err(format!("{source}: provider id {:?} appears twice", p.id));
        }
        IssuerUrl::new(p.issuer.clone())
            .map_err(|e| format!("{source}: provider {:?}: issuer {:?}: {e}", p.id, p.issuer))?;
        if p.client_secret.is_some() && p.client_secret_file.is_some() {
            return Err(format!(
                "{source}: provider {:?}: client_secret and client_secret_file are both set",
                p.id
            ));
        }
    }
    Ok(f.provider)
}

/// What a provider said about who signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The provider's id in the file.
    pub provider: String,
    /// The ID token's issuer.
    pub issuer: String,
    /// The ID token's subject.
    pub subject: String,
    /// The e-mail address, if the provider says it is verified.
    pub verified_email: Option<String>,
}

/// Why an OIDC sign-in failed, in words for the sign-in page.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// No such provider in the file.
    #[error("no sign-in provider {0:?}")]
    UnknownProvider(String),
    /// Discovery, the token request or the ID token failed.
    #[error("{0}")]
    Provider(String),
    /// The callback's state is unknown, used, or too old.
    #[error("this sign-in link is unknown, already used or older than 10 minutes; start again")]
    State,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] polydev_store::StoreError),
}

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

struct Provider {
    settings: ProviderSettings,
    secret: Option<String>,
    metadata: tokio::sync::Mutex<Option<(CoreProviderMetadata, Instant)>>,
}

/// The configured providers.
pub struct Oidc {
    providers: Vec<Provider>,
    http: openidconnect::reqwest::Client,
    store: Store,
}

impl Oidc {
    /// The providers of `settings` (client secrets already read from
    /// their files by the configuration).
    pub fn new(store: Store, settings: Vec<ProviderSettings>) -> Oidc {
        let providers = settings
            .into_iter()
            .map(|s| Provider {
                secret: s.client_secret.clone(),
                settings: s,
                metadata: Default::default(),
            })
            .collect();
        let http = openidconnect::reqwest::ClientBuilder::new()
            // A provider's answers are followed by nobody: no redirects (SSRF).
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
            .build()
            .expect("a reqwest client with rustls builds");
        Oidc {
            providers,
            http,
            store,
        }
    }

    /// `(id, name)` of each provider, in the file's order.
    pub fn providers(&self) -> Vec<(String, String)> {
        self.providers
            .iter()
            .map(|p| (p.settings.id.clone(), p.settings.name.clone()))
            .collect()
    }

    fn provider(&self, id: &str) -> Result<&Provider, OidcError> {
        self.providers
            .iter()
            .find(|p| p.settings.id == id)
            .ok_or_else(|| OidcError::UnknownProvider(id.to_string()))
    }

    async fn client(&self, p: &Provider, redirect: &str) -> Result<Client, OidcError> {
        let meta = {
            let mut m = p.metadata.lock().await;
            match &*m {
                Some((meta, at)) if at.elapsed() < METADATA_TTL => meta.clone(),
                _ => {
                    let issuer = IssuerUrl::new(p.settings.issuer.clone())
                        .map_err(|e| OidcError::Provider(format!("issuer: {e}")))?;
                    let meta = CoreProviderMetadata::discover_async(issuer, &self.http)
                        .await
                        .map_err(|e| {
                            OidcError::Provider(format!(
                                "{} ({}) could not be reached or its discovery document is not valid: {}",
                                p.settings.name,
                                p.settings.issuer,
                                error_chain(&e)
                            ))
                        })?;
                    *m = Some((meta.clone(), Instant::now()));
                    meta
                }
            }
        };
        let redirect = RedirectUrl::new(redirect.to_string())
            .map_err(|e| OidcError::Provider(format!("redirect URL {redirect:?}: {e}")))?;
        Ok(CoreClient::from_provider_metadata(
            meta,
            ClientId::new(p.settings.client_id.clone()),
            p.secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(redirect))
    }

    /// The callback URL of provider `id` under `base` (the public URL).
    pub fn redirect_url(base: &str, id: &str) -> String {
        format!("{}/auth/oidc/{id}/callback", base.trim_end_matches('/'))
    }

    /// Starts a sign-in: the provider's authorization URL to send the
    /// browser to. State, nonce and PKCE verifier are stored.
    pub async fn begin(&self, id: &str, base: &str) -> Result<String, OidcError> {
        let p = self.provider(id)?;
        let client = self.client(p, &Self::redirect_url(base, id)).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("email".into()))
            .add_scope(Scope::new("profile".into()))
            .set_pkce_challenge(challenge);
        for s in &p.settings.scopes {
            req = req.add_scope(Scope::new(s.clone()));
        }
        let (url, state, nonce) = req.url();
        self.store
            .insert_oidc_login(
                state.secret(),
                &OidcLogin {
                    provider: id.to_string(),
                    nonce: nonce.secret().clone(),
                    pkce_verifier: verifier.secret().clone(),
                    created_at: polydev_core::vm::now_ms(),
                },
            )
            .await?;
        Ok(url.to_string())
    }

    /// Finishes a sign-in from the callback's `code` and `state`: who the
    /// provider says signed in, after checking the ID token.
    pub async fn finish(
        &self,
        id: &str,
        code: &str,
        state: &str,
        base: &str,
    ) -> Result<Identity, OidcError> {
        let p = self.provider(id)?;
        let login = self
            .store
            .take_oidc_login(state, LOGIN_MAX_AGE.as_millis() as i64)
            .await?
            .filter(|l| l.provider == id)
            .ok_or(OidcError::State)?;
        let client = self.client(p, &Self::redirect_url(base, id)).await?;
        let token = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| OidcError::Provider(format!("{}: {e}", p.settings.name)))?
            .set_pkce_verifier(PkceCodeVerifier::new(login.pkce_verifier))
            .request_async(&self.http)
            .await
            .map_err(|e| {
                OidcError::Provider(format!(
                    "{} refused the sign-in code: {}",
                    p.settings.name,
                    error_chain(&e)
                ))
            })?;
        let id_token = token
            .id_token()
            .ok_or_else(|| OidcError::Provider(format!("{} sent no ID token", p.settings.name)))?;
        let claims = id_token
            .claims(&client.id_token_verifier(), &Nonce::new(login.nonce))
            .map_err(|e| {
                OidcError::Provider(format!("{}'s ID token is not valid: {e}", p.settings.name))
            })?;
        let verified_email = match (claims.email(), claims.email_verified()) {
            (Some(e), Some(true)) => super::normalize_email(e.as_str()).ok(),
            _ => None,
        };
        Ok(Identity {
            provider: id.to_string(),
            issuer: claims.issuer().to_string(),
            subject: claims.subject().to_string(),
            verified_email,
        })
    }

    /// The account an identity signs in to: the one it is linked to, else
    /// the one with its verified e-mail address (then linked). `None`: no
    /// account (sign-up is closed).
    pub async fn account_for(
        &self,
        who: &Identity,
    ) -> Result<Option<polydev_store::Account>, OidcError> {
        if let Some(user) = self.store.find_identity(&who.issuer, &who.subject).await? {
            return Ok(self.store.get_account(&user).await?);
        }
        let Some(email) = &who.verified_email else {
            return Ok(None);
        };
        let Some(a) = self.store.find_account_by_email(email).await? else {
            return Ok(None);
        };
        self.store
            .link_identity(&who.issuer, &who.subject, &a.user_id)
            .await?;
        tracing::info!(user_id = %a.user_id, provider = %who.provider, "OIDC identity linked by its verified e-mail address");
        Ok(Some(a))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_file_is_checked_and_errors_name_the_line() {
        let ok = "[[provider]]\nid = \"corp\"\nname = \"Corp\"\nissuer = \"https://login.example.com\"\nclient_id = \"c\"\n";
        assert_eq!(super::parse(ok, "f.toml").unwrap()[0].id, "corp");
        let e = super::parse("[[provider]]\nid = \"corp\"\nnmae = \"x\"\n", "f.toml").unwrap_err();
        assert!(e.contains("line 3") && e.contains("nmae"), "{e}");
        let e = super::parse(&ok.replace("corp", "Corp!"), "f.toml").unwrap_err();
        assert!(e.contains("must be"), "{e}");
        let e = super::parse(&format!("{ok}{ok}"), "f.toml").unwrap_err();
        assert!(e.contains("twice"), "{e}");
        assert!(super::parse("", "f.toml").unwrap().is_empty());
    }
}

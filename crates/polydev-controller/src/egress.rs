//! Egress in the controller: the settings (`POLYDEV_EGRESS_*`,
//! `POLYDEV_DNS_UPSTREAM`), users' egress identities (proxy sealed by the
//! vault, source address from the pool), and the API over both
//! (`GET|PUT /api/vms/:id/egress`, `GET|PUT /api/users/:userId/egress`).
//! The runtime attaches and detaches VMs ([`crate::runtime`]); everything
//! below the API is `polydev_egress`.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use ipnet::Ipv4Net;
use polydev_core::vm::VmType;
use polydev_egress::policy::Policy;
use polydev_egress::upstream::ProxyUrl;
use polydev_egress::{Egress, EgressConfig, Identity};
use polydev_store::{SealedParts, Store};
use std::net::Ipv4Addr;
use std::sync::Arc;

/// Where VM traffic leaves the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uplink {
    /// The interface of the default route.
    DefaultRoute,
    /// This interface.
    Named(String),
    /// Nowhere: VMs reach nothing beyond their namespace.
    None,
}

/// Egress settings, from the environment (the README lists the variables).
#[derive(Debug, Clone)]
pub struct EgressSettings {
    /// `POLYDEV_EGRESS_UPLINK`: an interface, `none`, or unset for the
    /// default route's interface.
    pub uplink: Uplink,
    /// `POLYDEV_EGRESS_SUBNET` (default `10.231.0.0/16`): VM link addresses.
    pub subnet: Ipv4Net,
    /// `POLYDEV_EGRESS_ALLOW_PRIVATE`: ranges taken out of the always-deny set.
    pub allow_private: Vec<Ipv4Net>,
    /// `POLYDEV_DNS_UPSTREAM`: resolvers; unset: the host's.
    pub dns_upstream: Option<String>,
    /// `POLYDEV_EGRESS_SOURCE_POOL`: host addresses users' traffic may leave from.
    pub source_pool: Vec<Ipv4Addr>,
    /// `POLYDEV_EGRESS_BROWSER_POLICY`: default policy of browser VMs (JSON).
    pub browser_policy: Policy,
    /// `POLYDEV_EGRESS_CLI_POLICY`: default policy of CLI VMs (JSON).
    pub cli_policy: Policy,
}

impl Default for EgressSettings {
    fn default() -> Self {
        EgressSettings {
            uplink: Uplink::DefaultRoute,
            subnet: "10.231.0.0/16".parse().expect("constant"),
            allow_private: Vec::new(),
            dns_upstream: None,
            source_pool: Vec::new(),
            browser_policy: Policy::default(),
            cli_policy: Policy::default(),
        }
    }
}

impl EgressSettings {
    /// Reads the variables; a malformed value is an error naming it.
    pub fn from_env() -> Result<EgressSettings, String> {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    /// [`EgressSettings::from_env`] over any lookup.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<EgressSettings, String> {
        let mut s = EgressSettings::default();
        if let Some(u) = get("POLYDEV_EGRESS_UPLINK") {
            let u = u.trim();
            s.uplink = if u == "none" {
                Uplink::None
            } else if u.is_empty()
                || u.len() > 15
                || !u
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
            {
                return Err(format!(
                    "POLYDEV_EGRESS_UPLINK {u:?} is not an interface name (or `none`)"
                ));
            } else {
                Uplink::Named(u.to_string())
            };
        }
        if let Some(n) = get("POLYDEV_EGRESS_SUBNET") {
            s.subnet = polydev_egress::policy::parse_cidr(&n)
                .map_err(|e| format!("POLYDEV_EGRESS_SUBNET {n:?}: {e}"))?;
            if s.subnet.prefix_len() > 28 {
                return Err(format!("POLYDEV_EGRESS_SUBNET {n:?} is too small: a /28 or larger (each VM takes a /30)"));
            }
        }
        if let Some(v) = get("POLYDEV_EGRESS_ALLOW_PRIVATE") {
            for x in v.split(',').map(str::trim).filter(|x| !x.is_empty()) {
                s.allow_private.push(
                    polydev_egress::policy::parse_cidr(x)
                        .map_err(|e| format!("POLYDEV_EGRESS_ALLOW_PRIVATE {x:?}: {e}"))?,
                );
            }
        }
        if let Some(v) = get("POLYDEV_DNS_UPSTREAM") {
            polydev_egress::dns::Upstreams::from_spec(Some(&v))
                .map_err(|e| format!("POLYDEV_DNS_UPSTREAM: {e}"))?;
            s.dns_upstream = Some(v);
        }
        if let Some(v) = get("POLYDEV_EGRESS_SOURCE_POOL") {
            for x in v.split(',').map(str::trim).filter(|x| !x.is_empty()) {
                s.source_pool.push(x.parse().map_err(|_| {
                    format!("POLYDEV_EGRESS_SOURCE_POOL {x:?} is not an IPv4 address")
                })?);
            }
        }
        for (k, slot) in [
            ("POLYDEV_EGRESS_BROWSER_POLICY", &mut s.browser_policy),
            ("POLYDEV_EGRESS_CLI_POLICY", &mut s.cli_policy),
        ] {
            if let Some(v) = get(k) {
                let p: Policy = serde_json::from_str(&v).map_err(|e| format!("{k}: {e}"))?;
                p.compile().map_err(|e| format!("{k}: {e}"))?;
                *slot = p;
            }
        }
        Ok(s)
    }

    /// The default policy of a VM type.
    pub fn policy_for(&self, t: VmType) -> &Policy {
        match t {
            VmType::Browser => &self.browser_policy,
            VmType::Cli => &self.cli_policy,
        }
    }

    /// The egress configuration for this host (resolves the default route
    /// and the DNS upstreams now).
    pub fn resolve(&self, tag: &str) -> Result<EgressConfig, String> {
        let uplink = match &self.uplink {
            Uplink::None => None,
            Uplink::Named(n) => Some(n.clone()),
            Uplink::DefaultRoute => {
                match polydev_egress::host::default_route_interface() {
                    Some(i) => Some(i),
                    None => {
                        tracing::warn!("no IPv4 default route: VMs get no internet (set POLYDEV_EGRESS_UPLINK)");
                        None
                    }
                }
            }
        };
        Ok(EgressConfig {
            tag: tag.to_string(),
            uplink,
            subnet: self.subnet,
            allow_private: self.allow_private.clone(),
            dns: polydev_egress::dns::Upstreams::from_spec(self.dns_upstream.as_deref())?,
            source_pool: self.source_pool.clone(),
        })
    }
}

/// The vault label proxies are sealed under (with the user id).
pub const PROXY_LABEL: &str = "egress_proxy";

/// Egress as the runtime uses it: the host's [`Egress`], the store and the
/// vault that opens users' proxies.
pub struct EgressHub {
    /// Host egress.
    pub egress: Arc<Egress>,
    store: Store,
    vault: polydev_vault::Keyring,
}

impl EgressHub {
    /// Starts host egress: installs the table with every user's source
    /// address for the VMs that hold a slot.
    pub async fn start(
        settings: &EgressSettings,
        tag: &str,
        store: Store,
        vault: polydev_vault::Keyring,
    ) -> anyhow::Result<Arc<EgressHub>> {
        let cfg = settings.resolve(tag).map_err(anyhow::Error::msg)?;
        let users: std::collections::HashMap<String, Ipv4Addr> = store
            .list_user_egress()
            .await?
            .into_iter()
            .filter_map(|r| Some((r.user_id, r.source_address?.parse().ok()?)))
            .collect();
        let mut sources = Vec::new();
        for v in store.list_live_vms().await? {
            if v.slot_released {
                continue;
            }
            if let (Some(src), Ok(link)) = (users.get(&v.user_id), cfg.link(v.slot)) {
                sources.push((link.ns_addr, *src));
            }
        }
        let egress = tokio::task::spawn_blocking(move || Egress::start(cfg, &sources)).await??;
        Ok(Arc::new(EgressHub {
            egress,
            store,
            vault,
        }))
    }

    /// A user's identity, proxy opened. An unreadable proxy is an error.
    pub async fn identity(&self, user_id: &str) -> Result<Identity, String> {
        let Some(row) = self
            .store
            .get_user_egress(user_id)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(Identity::default());
        };
        let proxy = match &row.proxy_sealed {
            None => None,
            Some((c, iv, tag, salt, key)) => {
                let sealed = polydev_vault::Sealed {
                    ciphertext: c.clone(),
                    iv: iv.clone(),
                    tag: tag.clone(),
                    salt: salt.clone(),
                    key_id: key.clone(),
                };
                let plain = self
                    .vault
                    .open(user_id, PROXY_LABEL, &sealed)
                    .map_err(|e| format!("opening the egress proxy of {user_id}: {e}"))?;
                let s = String::from_utf8_lossy(&plain).into_owned();
                Some(ProxyUrl::parse(&s)?)
            }
        };
        Ok(Identity {
            proxy,
            source: row.source_address.and_then(|s| s.parse().ok()),
        })
    }
}

/// The body of `PUT /api/users/:userId/egress`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEgressBody {
    /// `http://…`, `socks5://…` or null.
    #[serde(default)]
    pub proxy: Option<String>,
    /// An address of the pool, `auto`, or null.
    #[serde(rename = "sourceAddress", default)]
    pub source_address: Option<String>,
}

fn hub(s: &AppState) -> Result<&Arc<EgressHub>, ApiError> {
    s.runtime.egress().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "egress_off",
            "egress is not running in this controller",
        )
    })
}

fn policy_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_policy",
        e.to_string(),
    )
}

async fn vm_record(
    s: &AppState,
    caller: &crate::auth::Caller,
    id: &str,
) -> Result<polydev_store::VmRecord, ApiError> {
    crate::api::find(s, caller, id).await
}

/// `GET /api/vms/:id/egress`: the policy in force and the VM's counters.
pub async fn get_vm_egress(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let rec = vm_record(&s, &caller, &id).await?;
    let policy = s
        .runtime
        .vm_policy(&rec)
        .await
        .map_err(ApiError::internal)?;
    let mut v = serde_json::json!({
        "vmId": rec.vm_id,
        "userId": rec.user_id,
        "status": rec.status.as_str(),
        "policy": policy,
        "setupMs": rec.egress_setup_ms,
    });
    if let Some(h) = s.runtime.egress() {
        if let Ok((_, report)) = h.egress.report(&id).await {
            v["counters"] = serde_json::to_value(&report).unwrap_or_default();
        }
    }
    Ok(Json(v))
}

/// `PUT /api/vms/:id/egress`: replaces the policy whole; a running (or
/// hibernated) VM gets it at once.
pub async fn put_vm_egress(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !caller.admin {
        vm_record(&s, &caller, &id).await?;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a VM's egress policy is set by an operator or admin",
        ));
    }
    let policy: Policy = parse_named(&body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_policy",
            format!("policy: {e}"),
        )
    })?;
    policy.compile().map_err(policy_error)?;
    let rec = vm_record(&s, &caller, &id).await?;
    if rec.status.is_terminal() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("VM {id} is {}; its egress cannot change", rec.status),
        ));
    }
    s.runtime
        .set_vm_policy(&rec, &policy)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "egress_failed", e))?;
    get_vm_egress(State(s), axum::Extension(caller), Path(id)).await
}

/// Parses a JSON body; an error names the field it is about
/// (`internet: invalid type: string "yes", expected a boolean`).
fn parse_named<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        }
    })
}

fn identity_json(user_id: &str, row: Option<polydev_store::UserEgressRow>) -> serde_json::Value {
    serde_json::json!({
        "userId": user_id,
        "proxy": row.as_ref().and_then(|r| r.proxy_display.clone()),
        "sourceAddress": row.as_ref().and_then(|r| r.source_address.clone()),
    })
}

/// `GET /api/users/:userId/egress`: the user's proxy (without its
/// password) and source address.
pub async fn get_user_egress(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(user): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    crate::api::validate_user_id(&user)?;
    caller.act_for(&user)?;
    let row = s
        .runtime
        .store()
        .get_user_egress(&user)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(identity_json(&user, row)))
}

/// `PUT /api/users/:userId/egress`: sets the user's proxy and source
/// address; the user's live VMs take them at once.
pub async fn put_user_egress(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(user): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    crate::api::validate_user_id(&user)?;
    caller.act_for(&user)?;
    let b: UserEgressBody = parse_named(&body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_egress",
            format!("body: {e}"),
        )
    })?;
    let h = hub(&s)?;
    let proxy = match &b.proxy {
        None => None,
        Some(p) => Some(ProxyUrl::parse(p).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_egress",
                format!("proxy: {e}"),
            )
        })?),
    };
    let pool = &h.egress.config().source_pool;
    let source: Option<Ipv4Addr> = match b.source_address.as_deref() {
        None => None,
        Some("auto") => {
            if pool.is_empty() {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_egress",
                    "sourceAddress \"auto\": no POLYDEV_EGRESS_SOURCE_POOL is configured",
                ));
            }
            let current = s
                .runtime
                .store()
                .get_user_egress(&user)
                .await
                .map_err(ApiError::internal)?
                .and_then(|r| r.source_address)
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
                .filter(|a| pool.contains(a));
            match current {
                Some(a) => Some(a),
                None => {
                    // The pool address fewest users hold.
                    let rows = s
                        .runtime
                        .store()
                        .list_user_egress()
                        .await
                        .map_err(ApiError::internal)?;
                    pool.iter()
                        .min_by_key(|a| {
                            rows.iter()
                                .filter(|r| r.source_address.as_deref() == Some(&a.to_string()))
                                .count()
                        })
                        .copied()
                }
            }
        }
        Some(a) => {
            let ip: Ipv4Addr = a.parse().map_err(|_| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_egress",
                    format!("sourceAddress {a:?} is not an IPv4 address, \"auto\" or null"),
                )
            })?;
            if !pool.contains(&ip) {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_egress",
                    format!("sourceAddress {ip} is not in POLYDEV_EGRESS_SOURCE_POOL"),
                ));
            }
            Some(ip)
        }
    };
    let sealed = proxy.as_ref().map(|p| {
        (
            p.redacted(),
            h.vault
                .seal(&user, PROXY_LABEL, p.to_secret_string().as_bytes()),
        )
    });
    let parts = sealed.as_ref().map(|(d, s)| {
        (
            d.as_str(),
            SealedParts {
                encrypted_data: &s.ciphertext,
                iv: &s.iv,
                tag: &s.tag,
                salt: &s.salt,
                key_id: &s.key_id,
            },
        )
    });
    s.runtime
        .store()
        .put_user_egress(
            &user,
            parts.as_ref().map(|(d, p)| (*d, p)),
            source.map(|a| a.to_string()).as_deref(),
        )
        .await
        .map_err(ApiError::internal)?;
    let identity = Identity { proxy, source };
    for vm in s
        .runtime
        .store()
        .list_vms(Some(&user), false)
        .await
        .map_err(ApiError::internal)?
    {
        if h.egress.is_attached(&vm.vm_id) {
            if let Err(e) = h.egress.set_identity(&vm.vm_id, identity.clone()).await {
                tracing::error!(vm_id = %vm.vm_id, error = %e, "applying a user's egress identity");
            }
        }
    }
    tracing::info!(user_id = %user, proxy = ?identity.proxy, source = ?identity.source, "egress identity set");
    let row = s
        .runtime
        .store()
        .get_user_egress(&user)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(identity_json(&user, row)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<EgressSettings, String> {
        let m: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        EgressSettings::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn settings_parse_and_bad_values_name_the_variable() {
        let d = from(&[]).unwrap();
        assert_eq!(d.uplink, Uplink::DefaultRoute);
        assert_eq!(d.subnet.to_string(), "10.231.0.0/16");
        let s = from(&[
            ("POLYDEV_EGRESS_UPLINK", "none"),
            ("POLYDEV_DNS_UPSTREAM", "203.0.113.53, 198.51.100.9:5353"),
            ("POLYDEV_EGRESS_SOURCE_POOL", "198.51.100.11,198.51.100.12"),
            ("POLYDEV_EGRESS_ALLOW_PRIVATE", "10.9.0.0/16"),
            (
                "POLYDEV_EGRESS_CLI_POLICY",
                r#"{"allowDomains": ["api.example.com"]}"#,
            ),
        ])
        .unwrap();
        assert_eq!(s.uplink, Uplink::None);
        assert_eq!(s.source_pool.len(), 2);
        assert_eq!(s.policy_for(VmType::Cli).allow_domains, ["api.example.com"]);
        assert!(s.policy_for(VmType::Browser).allow_domains.is_empty());
        for (k, v) in [
            ("POLYDEV_EGRESS_UPLINK", "eth0; rm -rf /"),
            ("POLYDEV_EGRESS_SUBNET", "10.0.0.0/30"),
            ("POLYDEV_EGRESS_ALLOW_PRIVATE", "ten/8"),
            ("POLYDEV_DNS_UPSTREAM", "dns.example"),
            ("POLYDEV_EGRESS_SOURCE_POOL", "198.51.100.300"),
            ("POLYDEV_EGRESS_BROWSER_POLICY", r#"{"denyCidrs": ["x"]}"#),
        ] {
            let e = from(&[(k, v)]).unwrap_err();
            assert!(e.contains(k), "{k}: {e}");
        }
        let cfg = s.resolve("ab12").unwrap();
        assert_eq!(cfg.table(), "polydev_ab12");
        let l = cfg.link(3).unwrap();
        assert_eq!(
            (
                l.host_if.as_str(),
                l.host_addr.to_string(),
                l.ns_addr.to_string()
            ),
            ("peab12-3", "10.231.0.13".into(), "10.231.0.14".into())
        );
        assert!(cfg.link(16384).is_err());
    }
}

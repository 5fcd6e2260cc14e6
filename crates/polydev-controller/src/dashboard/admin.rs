//! The Admin page and `GET /api/admin/overview` behind it: accounts, every
//! live VM, host capacity (CPU, memory, disk, slots), the last day's
//! failures with their reasons, and API keys. Admins only (others: 403 from
//! the API, 404 from the page).

use super::layout::{badge, Page};
use super::{ago, html, signed_in};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use maud::html;
use polydev_core::vm::now_ms;

/// The host's capacity now.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    /// CPUs the controller may use.
    pub cpus: usize,
    /// 1, 5 and 15 minute load averages.
    pub load: [f64; 3],
    /// `MemTotal`, MiB.
    pub memory_total_mb: u64,
    /// `MemAvailable`, MiB.
    pub memory_available_mb: u64,
    /// Free space in the data directory, MiB.
    pub disk_free_mb: u64,
    /// Live VMs.
    pub slots_used: usize,
    /// `POLYDEV_MAX_VMS`.
    pub slots_max: usize,
}

/// One failure of the last day.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// `vm`, `run` or `sign_in`.
    pub kind: &'static str,
    /// Its id.
    pub id: String,
    /// Whose.
    pub user_id: String,
    /// Its status (`failed`, `timeout`).
    pub status: String,
    /// Why, in words.
    pub reason: String,
    /// When (Unix ms).
    pub at: i64,
}

/// Everything the Admin page shows.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    /// Every account.
    pub users: Vec<polydev_store::Account>,
    /// Every live VM (not destroyed).
    pub vms: Vec<serde_json::Value>,
    /// The host.
    pub capacity: Capacity,
    /// The last day's failures, newest first.
    pub failures: Vec<Failure>,
    /// Every API key (never a secret).
    pub keys: Vec<serde_json::Value>,
    /// The live VMs' records, for the page.
    #[serde(skip)]
    pub vm_records: Vec<polydev_store::VmRecord>,
}

/// The host's figures, read at most once a second (they are what `top`
/// shows: a second old at most).
fn capacity(s: &AppState, live: usize) -> Capacity {
    static LAST: std::sync::Mutex<Option<(std::time::Instant, Capacity)>> =
        std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, c)) = &*last {
        if at.elapsed() < std::time::Duration::from_secs(1) {
            let mut c = c.clone();
            c.slots_used = live;
            c.slots_max = s.runtime.config().admission.max_vms;
            return c;
        }
    }
    let c = read_capacity(s, live);
    *last = Some((std::time::Instant::now(), c.clone()));
    c
}

fn read_capacity(s: &AppState, live: usize) -> Capacity {
    let cfg = s.runtime.config();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> u64 {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    let mut load = [0.0; 3];
    if let Ok(t) = std::fs::read_to_string("/proc/loadavg") {
        for (i, v) in t.split_whitespace().take(3).enumerate() {
            load[i] = v.parse().unwrap_or(0.0);
        }
    }
    let free = crate::admission::host_free(&cfg.data_dir).ok();
    Capacity {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load,
        memory_total_mb: field("MemTotal:"),
        memory_available_mb: field("MemAvailable:"),
        disk_free_mb: free.map_or(0, |f| f.disk_mb),
        slots_used: live,
        slots_max: cfg.admission.max_vms,
    }
}

/// Changing requests served so far ([`count_changes`]): a cached overview
/// is used only while nothing changed.
pub static CHANGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Middleware over the whole application: counts every changing request
/// once it is served, so the next overview is read afresh.
pub async fn count_changes(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use axum::http::Method;
    let changing = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let r = next.run(req).await;
    if changing {
        CHANGES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    r
}

/// How long an overview is reused while nothing changes through this
/// controller: the page costs six queries, so under load it is made once a
/// second, not once a request.
pub const OVERVIEW_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// The overview: reused for [`OVERVIEW_TTL`] unless a changing request was
/// served since (an admin's own revocation shows at once).
pub async fn overview(s: &AppState) -> Result<Overview, ApiError> {
    use std::sync::atomic::Ordering;
    static LAST: std::sync::Mutex<Option<(std::time::Instant, u64, Overview)>> =
        std::sync::Mutex::new(None);
    let changes = CHANGES.load(Ordering::SeqCst);
    if let Some((at, gen, o)) = &*LAST.lock().unwrap_or_else(|e| e.into_inner()) {
        if *gen == changes && at.elapsed() < OVERVIEW_TTL {
            return Ok(o.clone());
        }
    }
    let o = gather(s).await?;
    *LAST.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((std::time::Instant::now(), changes, o.clone()));
    Ok(o)
}

/// Reads the overview from the store and the host.
async fn gather(s: &AppState) -> Result<Overview, ApiError> {
    let store = s.runtime.store();
    let since = now_ms() - 24 * 3600 * 1000;
    // One query after another: under load, a page that holds six of the
    // pool's connections at once waits longer than one that holds one.
    let users = store.list_accounts().await?;
    let vms = store.list_vms(None, false).await?;
    let failed_vms = store.list_failed_vms_since(since, 200).await?;
    let failed_runs = store.list_failed_runs_since(since, 200).await?;
    let signins = store.list_auth_sessions_since(since).await?;
    let keys = store.list_api_keys().await?;
    let mut failures: Vec<Failure> = Vec::new();
    for v in &failed_vms {
        failures.push(Failure {
            kind: "vm",
            id: v.vm_id.clone(),
            user_id: v.user_id.clone(),
            status: v.status.as_str().into(),
            reason: v.failure_reason.clone().unwrap_or_default(),
            at: v.created_at,
        });
    }
    for r in &failed_runs {
        failures.push(Failure {
            kind: "run",
            id: r.run_id.clone(),
            user_id: r.user_id.clone(),
            status: r.status.as_str().into(),
            reason: r.error.clone().unwrap_or_default(),
            at: r.finished_at.unwrap_or(r.created_at),
        });
    }
    for x in &signins {
        if matches!(x.status.as_str(), "failed" | "timeout") {
            failures.push(Failure {
                kind: "sign_in",
                id: x.session_id.clone(),
                user_id: x.user_id.clone(),
                status: x.status.as_str().into(),
                reason: x.error_message.clone().unwrap_or_default(),
                at: x.completed_at.unwrap_or(x.started_at),
            });
        }
    }
    failures.sort_by(|a, b| b.at.cmp(&a.at));
    let live = vms.iter().filter(|v| !v.slot_released).count();
    Ok(Overview {
        capacity: capacity(s, live),
        users,
        vms: vms
            .iter()
            .map(|v| {
                serde_json::json!({
                    "vmId": v.vm_id, "userId": v.user_id, "type": v.vm_type.as_str(),
                    "status": v.status, "failureReason": v.failure_reason, "createdAt": v.created_at,
                })
            })
            .collect(),
        failures,
        keys: keys.iter().map(crate::auth::key_json).collect(),
        vm_records: vms,
    })
}

/// `GET /api/admin/overview` (admins and operator keys).
pub async fn api_overview(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<Json<Overview>, ApiError> {
    if !caller.admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the overview is for admins and operator keys",
        ));
    }
    Ok(Json(overview(&s).await?))
}

/// `GET /admin`.
pub async fn page(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let who = match signed_in(&s, &headers, "/admin").await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let p = |title| Page {
        title,
        who: Some(&who),
        active: "/admin",
        script: Some("manage.js"),
        config: None,
    };
    if !who.admin {
        let body = html! { p.notice.bad { "There is no such page." } };
        return html(StatusCode::NOT_FOUND, p("Not found").render(body));
    }
    let o = match overview(&s).await {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    let c = &o.capacity;
    let vms = &o.vm_records;
    let body = html! {
        div.grid {
            div.card #capacity {
                h2 { "Host capacity" }
                dl.kv {
                    dt { "CPU" } dd { (c.cpus) " CPUs, load " (format!("{:.2} {:.2} {:.2}", c.load[0], c.load[1], c.load[2])) }
                    dt { "Memory" } dd { (c.memory_available_mb) " MiB free of " (c.memory_total_mb) " MiB" }
                    dt { "Disk" } dd { (c.disk_free_mb) " MiB free" }
                    dt { "Slots" } dd { (c.slots_used) " of " (c.slots_max) " VMs" }
                }
            }
            div.card #users {
                h2 { "Users" }
                div.table-wrap { table {
                    thead { tr { th scope="col" { "User" } th scope="col" { "Role" } th.opt scope="col" { "E-mail" } th scope="col" { "State" } } }
                    tbody { @for u in &o.users { tr {
                        td { (u.user_id) } td { (u.role) } td.opt { (u.email.as_deref().unwrap_or("—")) }
                        td { @if u.disabled { (badge("disabled")) } @else { (badge("active")) } }
                    } } }
                } }
                p.muted { "Accounts are made with " code { "polydev user create" } "." }
            }
        }
        div.card #failures {
            h2 { "Failures in the last day" }
            @if o.failures.is_empty() { p.muted { "None." } }
            @else { div.table-wrap { table {
                thead { tr { th scope="col" { "When" } th scope="col" { "What" } th scope="col" { "User" } th scope="col" { "Why" } } }
                tbody { @for f in &o.failures { tr {
                    td { (ago(f.at)) }
                    td { (f.kind.replace('_', "-")) " " @if f.kind == "vm" { a href=(format!("/vms/{}", f.id)) { code { (f.id) } } } @else { code { (f.id) } } " " (badge(&f.status)) }
                    td { (f.user_id) }
                    td { (f.reason) }
                } } }
            } } }
        }
        div.card #all-vms {
            h2 { "Every VM" }
            @if vms.is_empty() { p.muted { "No live VMs." } } @else { (super::pages::vm_table(vms, true)) }
        }
        div.card #keys {
            h2 { "API keys" }
            form.row data-path="/api/keys" {
                label.grow for="key-name" { "Name of a new operator key (acts for every user)" input #key-name name="name" required maxlength="100"; }
                button type="submit" { "Create operator key" }
            }
            div #new-key hidden { p { strong { "The new key (shown once):" } } code.secret {} }
            div.table-wrap { table {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Scope" } th.opt scope="col" { "Last used" } th scope="col" { "State" } } }
                tbody { @for k in &o.keys { tr {
                    td { (k["name"].as_str().unwrap_or("")) " " code { (k["keyId"].as_str().unwrap_or("")) } }
                    td { @match k["userId"].as_str() { Some(u) => { "user " (u) }, None => { "operator" } } }
                    td.opt { @match k["lastUsedAt"].as_i64() { Some(t) => { (ago(t)) }, None => { "never" } } }
                    td { @if k["revoked"].as_bool() == Some(true) { (badge("revoked")) } @else {
                        @let id = k["keyId"].as_str().unwrap_or("");
                        button.danger type="button" data-method="DELETE" data-path=(format!("/api/keys/{id}")) data-confirm=(format!("Revoke key {id}?")) aria-label=(format!("Revoke key {id}")) { "Revoke" }
                    } }
                } } }
            } }
        }
    };
    html(StatusCode::OK, p("Admin").render(body))
}

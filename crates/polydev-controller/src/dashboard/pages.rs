//! The pages of a signed-in user: Connections, Runs, Terminal, VMs (and one
//! VM with its console log) and Account. Each shows the account's own
//! objects only; another user's VM is a 404 as in the API.

use super::layout::{badge, Page};
use super::{ago, html, signed_in};
use crate::accounts::session::SignedIn;
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use polydev_core::auth::Provider;

/// Each provider: id, name, what its API key is called.
pub const PROVIDERS: &[(Provider, &str, &str)] = &[
    (Provider::ClaudeCode, "Claude Code", "Anthropic API key"),
    (Provider::Codex, "Codex", "OpenAI API key"),
    (Provider::GeminiCli, "Gemini CLI", "Gemini API key"),
];

fn page<'a>(title: &'a str, who: &'a SignedIn, active: &'a str) -> Page<'a> {
    Page {
        title,
        who: Some(who),
        active,
        script: None,
        config: None,
    }
}

macro_rules! signed_in_or_return {
    ($s:expr, $headers:expr, $here:expr) => {
        match signed_in(&$s, &$headers, $here).await {
            Ok(w) => w,
            Err(r) => return r,
        }
    };
}

fn internal(e: impl std::fmt::Display) -> Response {
    crate::error::ApiError::internal(e.to_string()).into_response()
}

/// `GET /connections`.
pub async fn connections(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let who = signed_in_or_return!(s, headers, "/connections");
    let rows = match s.runtime.store().list_credentials(Some(&who.user_id)).await {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let body = html! {
        div.card {
            h2 { "Providers" }
            div.table-wrap { table {
                thead { tr { th scope="col" { "Provider" } th scope="col" { "State" } th scope="col" { "Connected" } th.opt scope="col" { "Expires" } th scope="col" { "Actions" } } }
                tbody {
                    @for (p, name, key_name) in PROVIDERS {
                        @let row = rows.iter().find(|r| r.provider == p.as_str());
                        tr #(format!("provider-{}", p.as_str())) {
                            th scope="row" { (name) }
                            td {
                                @match row {
                                    Some(r) if r.is_valid => { span.badge.ok #(format!("state-{}", p.as_str())) { "connected" } " " span.muted { (r.kind) } }
                                    Some(r) => {
                                        span.badge.bad #(format!("state-{}", p.as_str())) { "invalid" }
                                        @if let Some(why) = &r.invalid_reason { div.muted { (why) } }
                                    }
                                    None => { span.badge #(format!("state-{}", p.as_str())) { "not connected" } }
                                }
                            }
                            td { @if let Some(r) = row { (ago(r.created_at)) } @else { "—" } }
                            td.opt { @if let Some(t) = row.and_then(|r| r.expires_at) { (ago_or_in(t)) } @else { "—" } }
                            td {
                                div.row {
                                    button type="button" data-connect=(p.as_str()) data-name=(name) aria-label=(format!("Connect {name}")) { "Connect" }
                                    @if row.is_some() {
                                        button.danger type="button" data-disconnect=(p.as_str()) data-confirm=(format!("Disconnect {name}? Its credentials are deleted.")) aria-label=(format!("Disconnect {name}")) { "Disconnect" }
                                    }
                                }
                                details {
                                    summary { "Use an API key instead" }
                                    form.row data-apikey=(p.as_str()) {
                                        label.grow for=(format!("key-{}", p.as_str())) { (key_name)
                                            input #(format!("key-{}", p.as_str())) type="password" autocomplete="off" required;
                                        }
                                        button.secondary type="submit" { "Save key" }
                                    }
                                }
                            }
                        }
                    }
                }
            } }
        }
        section.card #session hidden aria-labelledby="session-title" {
            h2 #session-title { "Connecting" }
            ol.steps #steps aria-live="polite" {}
            iframe.live #live title="Live view of the sign-in browser" hidden allow="clipboard-read; clipboard-write" {}
            form.row #code-form hidden {
                label.grow for="code" { "Code shown by the provider" input #code autocomplete="off"; }
                button type="submit" { "Send code" }
            }
            div #failure hidden {
                p.error #failure-text {}
                p { a #failure-console hidden { "The browser VM's console log" } }
            }
            p { button.secondary #cancel type="button" { "Cancel" } }
        }
    };
    let mut p = page("Connections", &who, "/connections");
    p.script = Some("connections.js");
    p.config = Some(serde_json::json!({"userId": who.user_id}));
    html(StatusCode::OK, p.render(body))
}

fn ago_or_in(ms: i64) -> String {
    let now = polydev_core::vm::now_ms();
    if ms >= now {
        let s = (ms - now) / 1000;
        match s {
            0..=3599 => format!("in {} min", s / 60),
            3600..=86_399 => format!("in {} h", s / 3600),
            _ => format!("in {} days", s / 86_400),
        }
    } else {
        ago(ms)
    }
}

/// Runs the Runs page lists.
pub const HISTORY: i64 = 25;

/// Query of the Runs page.
#[derive(serde::Deserialize, Default)]
pub struct RunsQuery {
    run: Option<String>,
}

/// `GET /runs`.
pub async fn runs(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let who = signed_in_or_return!(s, headers, "/runs");
    let store = s.runtime.store();
    let runs = match store.list_run_summaries(&who.user_id, HISTORY).await {
        Ok(x) => x,
        Err(e) => return internal(e),
    };
    let creds = match store.list_credentials(Some(&who.user_id)).await {
        Ok(x) => x,
        Err(e) => return internal(e),
    };
    let first_connected = PROVIDERS
        .iter()
        .map(|x| x.0)
        .find(|p| creds.iter().any(|c| c.provider == p.as_str()));
    // A run to open: the account's own only (another's is not there).
    let mut open = q.ok().and_then(|q| q.0.run);
    if let Some(id) = open.clone() {
        if !runs.iter().any(|r| r.run_id == id) {
            let mine = matches!(store.get_run(&id).await, Ok(Some(r)) if r.user_id == who.user_id);
            if !mine {
                open = None;
            }
        }
    }
    let body = html! {
        div.card {
            form #prompt-form {
                div.row {
                    div { label for="provider" { "CLI" }
                        select #provider {
                            @for (p, name, _) in PROVIDERS {
                                @let connected = creds.iter().any(|c| c.provider == p.as_str());
                                option value=(p.as_str()) selected[Some(*p) == first_connected] {
                                    (name) @if !connected { " (not connected)" }
                                }
                            }
                        }
                    }
                    div.grow {
                        label for="conversation" { "Conversation" }
                        div.row {
                            label.check { input #continue type="checkbox"; "Continue" }
                            input.grow #conversation placeholder="the id of a conversation to continue" aria-label="Conversation id";
                        }
                    }
                }
                label for="prompt" { "Prompt" }
                textarea #prompt required placeholder="What should the CLI do?" {}
                p.row { button #run type="submit" { "Run" } button.danger #cancel type="button" disabled { "Cancel" } }
            }
        }
        div.card {
            h2 { "Output " span #run-status.badge {} }
            pre.out #output aria-live="polite" {}
            p.muted #run-usage {}
        }
        div.card {
            h2 { "History" }
            @if runs.is_empty() { p.muted { "No runs yet." } }
            @else {
                div.table-wrap { table {
                    thead { tr { th scope="col" { "When" } th scope="col" { "CLI" } th scope="col" { "Prompt" } th scope="col" { "Status" } th.opt scope="col" { "Tokens" } th.opt scope="col" { "Cost" } } }
                    tbody {
                        @for r in &runs {
                            tr {
                                td { (ago(r.created_at)) }
                                td { (r.provider) }
                                td { a href=(format!("/runs?run={}", r.run_id)) data-run=(r.run_id) { (r.prompt.chars().take(80).collect::<String>()) } }
                                td { (badge(r.status.as_str())) @if let Some(e) = &r.error { div.muted { (e.chars().take(200).collect::<String>()) } } }
                                td.opt { (r.input_tokens.unwrap_or(0)) " / " (r.output_tokens.unwrap_or(0)) }
                                td.opt { @if let Some(c) = r.cost_usd { (format!("${c:.4}")) } @else { "—" } }
                            }
                        }
                    }
                } }
            }
        }
    };
    let mut p = page("Runs", &who, "/runs");
    p.script = Some("runs.js");
    p.config = Some(serde_json::json!({"userId": who.user_id, "openRun": open}));
    html(StatusCode::OK, p.render(body))
}

/// `GET /terminal`: the CLI VM's terminal in a frame, with a terminal token
/// minted for this account.
pub async fn terminal(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let who = signed_in_or_return!(s, headers, "/terminal");
    let key = crate::terminal::token::TokenKey::from_keyring(s.auth.vault());
    let claims = crate::terminal::token::Claims {
        user_id: who.user_id.clone(),
        expires_at: polydev_core::vm::now_ms()
            + crate::terminal::token::DEFAULT_TTL.as_millis() as i64,
    };
    let url = format!("/terminal/{}?token={}", who.user_id, key.mint(&claims));
    let body = html! {
        p.muted { "A shell in your CLI VM (it starts or resumes when you open this page). Reload the page for a new connection." }
        iframe.term #terminal-frame title="Terminal of your CLI VM" src=(url) {}
    };
    html(
        StatusCode::OK,
        page("Terminal", &who, "/terminal").render(body),
    )
}

/// `GET /vms`.
pub async fn vms(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let who = signed_in_or_return!(s, headers, "/vms");
    let vms = match s.runtime.store().list_vms(Some(&who.user_id), false).await {
        Ok(v) => v,
        Err(e) => return internal(e),
    };
    let body = html! {
        div.card {
            @if vms.is_empty() { p.muted { "No VMs. A CLI VM starts with your first run or terminal; a browser VM with each connection." } }
            @else { (vm_table(&vms, false)) }
        }
    };
    let mut p = page("VMs", &who, "/vms");
    p.script = Some("manage.js");
    html(StatusCode::OK, p.render(body))
}

/// A table of VMs with their actions; `owner` adds the user column.
pub fn vm_table(vms: &[polydev_store::VmRecord], owner: bool) -> Markup {
    use polydev_core::vm::VmStatus;
    html! {
        div.table-wrap { table {
            thead { tr {
                th scope="col" { "VM" }
                @if owner { th scope="col" { "User" } }
                th scope="col" { "Type" } th scope="col" { "Status" } th.opt scope="col" { "Created" } th scope="col" { "Actions" }
            } }
            tbody {
                @for v in vms {
                    tr {
                        td { a href=(format!("/vms/{}", v.vm_id)) { code { (v.vm_id) } } }
                        @if owner { td { (v.user_id) } }
                        td { (v.vm_type.as_str()) }
                        td { (badge(v.status.as_str())) @if let Some(r) = &v.failure_reason { div.error { (r) } } }
                        td.opt { (ago(v.created_at)) }
                        td { div.row {
                            a.button.secondary href=(format!("/vms/{}", v.vm_id)) aria-label=(format!("Console log of {}", v.vm_id)) { "Console" }
                            @if v.status == VmStatus::Running {
                                button.secondary type="button" data-path=(format!("/api/vms/{}/hibernate", v.vm_id)) aria-label=(format!("Hibernate {}", v.vm_id)) { "Hibernate" }
                            }
                            @if v.status == VmStatus::Hibernated {
                                button.secondary type="button" data-path=(format!("/api/vms/{}/resume", v.vm_id)) aria-label=(format!("Resume {}", v.vm_id)) { "Resume" }
                            }
                            @if v.status != VmStatus::Destroyed {
                                button.danger type="button" data-method="DELETE" data-path=(format!("/api/vms/{}", v.vm_id)) data-confirm=(format!("Destroy VM {}?", v.vm_id)) aria-label=(format!("Destroy {}", v.vm_id)) { "Destroy" }
                            }
                        } }
                    }
                }
            }
        } }
    }
}

/// `GET /vms/{id}`: one VM, its failure reason and its console log (or the
/// VMM's own log when the guest printed nothing).
pub async fn vm(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let who = signed_in_or_return!(s, headers, &format!("/vms/{id}"));
    let caller = who.caller();
    let rec = match crate::api::find(&s, &caller, &id).await {
        Ok(r) => r,
        Err(e) => {
            let body = html! { p.notice.bad { (e.message) } p { a href="/vms" { "Your VMs" } } };
            return html(
                StatusCode::NOT_FOUND,
                page("No such VM", &who, "/vms").render(body),
            );
        }
    };
    let limits = s.runtime.config().console;
    let dir = std::path::PathBuf::from(&rec.dir);
    let log = tokio::task::spawn_blocking(move || {
        let console =
            polydev_vmm::console::read_capped(&dir.join(polydev_vmm::CONSOLE_FILE), limits).ok();
        let console = console.map(|b| String::from_utf8_lossy(&b).into_owned());
        match console {
            Some(c) if !c.trim().is_empty() => Some(("console", c)),
            _ => polydev_vmm::diagnose::LOG_FILES.iter().find_map(|f| {
                let b = polydev_vmm::console::read_capped(&dir.join(f), limits).ok()?;
                Some(("VMM log", String::from_utf8_lossy(&b).into_owned()))
            }),
        }
    })
    .await
    .unwrap_or(None);
    let body = html! {
        div.card {
            dl.kv {
                dt { "Status" } dd { (badge(rec.status.as_str())) }
                dt { "Type" } dd { (rec.vm_type.as_str()) }
                dt { "VMM" } dd { (rec.vmm) }
                dt { "Size" } dd { (rec.vcpu_count) " vCPU, " (rec.memory_mb) " MiB" }
                dt { "Created" } dd { (ago(rec.created_at)) }
                @if let Some(ms) = rec.kernel_boot_ms { dt { "Kernel boot" } dd { (ms) " ms" } }
                @if let Some(r) = &rec.failure_reason { dt { "Failure" } dd.error #failure-reason { (r) } }
            }
        }
        div.card {
            h2 { @match &log { Some((what, _)) => { "The " (what) }, None => { "No log" } } }
            @if let Some((_, text)) = &log { pre.out #console { (text) } }
            @else { p.muted { "This VM has no console log (not started yet, or destroyed)." } }
        }
        p { (vm_table(std::slice::from_ref(&rec), false)) }
    };
    let title = format!("VM {}", rec.vm_id);
    let mut p = page(&title, &who, "/vms");
    p.script = Some("manage.js");
    html(StatusCode::OK, p.render(body))
}

/// Query of the Account page.
#[derive(serde::Deserialize, Default)]
pub struct AccountQuery {
    error: Option<String>,
    changed: Option<String>,
}

/// `GET /account`: who, password change, the account's API keys.
pub async fn account(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<AccountQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let who = signed_in_or_return!(s, headers, "/account");
    let q = q.map(|q| q.0).unwrap_or_default();
    let store = s.runtime.store();
    let account = match store.get_account(&who.user_id).await {
        Ok(x) => x,
        Err(e) => return internal(e),
    };
    let keys = match store.list_user_api_keys(&who.user_id).await {
        Ok(x) => x,
        Err(e) => return internal(e),
    };
    let has_password = account.as_ref().is_some_and(|a| a.has_password);
    let body = html! {
        @if let Some(e) = &q.error { p.notice.bad role="alert" { (e) } }
        @if q.changed.is_some() { p.notice role="status" { "Password changed; your other sessions were signed out." } }
        div.grid {
            div.card {
                h2 { "You" }
                dl.kv {
                    dt { "User" } dd { (who.user_id) }
                    dt { "Role" } dd { @if who.admin { "admin" } @else { "user" } }
                    dt { "E-mail" } dd { (who.email.as_deref().unwrap_or("—")) }
                    dt { "Signed in with" } dd { (who.method) }
                }
            }
            div.card {
                h2 { "Password" }
                @if has_password {
                    form method="post" action="/account/password" {
                        label for="current" { "Current password" }
                        input #current name="current" type="password" autocomplete="current-password" required;
                        label for="new" { "New password (at least " (crate::accounts::password::MIN_LEN) " characters)" }
                        input #new name="new" type="password" autocomplete="new-password" required minlength=(crate::accounts::password::MIN_LEN);
                        label for="confirm" { "New password again" }
                        input #confirm name="confirm" type="password" autocomplete="new-password" required;
                        p { button type="submit" { "Change password" } }
                    }
                } @else {
                    p.muted { "This account signs in with an identity provider; it has no password here." }
                }
            }
        }
        div.card {
            h2 { "API keys" }
            p.muted { "Keys act for you only (" (who.user_id) "), with the same rights as this session." }
            form.row data-path="/api/keys" {
                label.grow for="key-name" { "Name of a new key" input #key-name name="name" required maxlength="100"; }
                button type="submit" { "Create key" }
            }
            div #new-key hidden { p { strong { "Your new key (shown once):" } } code.secret {} }
            @if keys.is_empty() { p.muted { "No keys." } }
            @else {
                div.table-wrap { table {
                    thead { tr { th scope="col" { "Name" } th scope="col" { "Key id" } th.opt scope="col" { "Created" } th.opt scope="col" { "Last used" } th scope="col" { "State" } } }
                    tbody { @for k in &keys { tr {
                        td { (k.name) } td { code { (k.key_id) } }
                        td.opt { (ago(k.created_at)) }
                        td.opt { @if let Some(t) = k.last_used_at { (ago(t)) } @else { "never" } }
                        td { @if k.revoked { (badge("revoked")) } @else {
                            button.danger type="button" data-method="DELETE" data-path=(format!("/api/keys/{}", k.key_id)) data-confirm=(format!("Revoke key {}?", k.name)) aria-label=(format!("Revoke key {}", k.name)) { "Revoke" }
                        } }
                    } } }
                } }
            }
        }
    };
    let mut p = page("Account", &who, "/account");
    p.script = Some("manage.js");
    html(StatusCode::OK, p.render(body))
}

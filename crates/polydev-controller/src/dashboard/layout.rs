//! The page shell every dashboard page shares: a skip link, the navigation
//! (Admin only for admins), who is signed in with a sign-out button, a live
//! region for messages, the page's data for its script.

use crate::accounts::session::SignedIn;
use maud::{html, Markup, PreEscaped, DOCTYPE};

/// The pages in the navigation: path, label.
const NAV: &[(&str, &str)] = &[
    ("/connections", "Connections"),
    ("/runs", "Runs"),
    ("/terminal", "Terminal"),
    ("/vms", "VMs"),
    ("/account", "Account"),
];

/// A whole page.
pub struct Page<'a> {
    /// The `<title>` and `<h1>`.
    pub title: &'a str,
    /// Who is signed in (`None` on the sign-in page).
    pub who: Option<&'a SignedIn>,
    /// The navigation entry to mark as current.
    pub active: &'a str,
    /// The page's module script under `/assets/dashboard/`, if any.
    pub script: Option<&'a str>,
    /// Data for the script (`#page-config`).
    pub config: Option<serde_json::Value>,
}

impl Page<'_> {
    /// The page with `body` in its `<main>`.
    pub fn render(&self, body: Markup) -> Markup {
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (self.title) " · polydev" }
                    link rel="stylesheet" href="/assets/dashboard/dashboard.css";
                }
                body {
                    a.skip href="#main" { "Skip to content" }
                    header.top {
                        a.brand href="/" { "polydev" }
                        @if let Some(who) = self.who {
                            nav aria-label="Main" {
                                ul {
                                    @for (path, label) in NAV {
                                        li { a href=(path) aria-current=[(*path == self.active).then_some("page")] { (label) } }
                                    }
                                    @if who.admin {
                                        li { a href="/admin" aria-current=[("/admin" == self.active).then_some("page")] { "Admin" } }
                                    }
                                }
                            }
                            div.who {
                                span { "Signed in as " strong #who { (who.user_id) } @if who.admin { " (admin)" } }
                                form method="post" action="/signout" {
                                    button.secondary type="submit" { "Sign out" }
                                }
                            }
                        }
                    }
                    main #main {
                        h1 { (self.title) }
                        div #flash role="status" aria-live="polite" hidden {}
                        (body)
                    }
                    @if let Some(cfg) = &self.config {
                        script type="application/json" id="page-config" { (PreEscaped(crate::live::viewer::script_json(cfg))) }
                    }
                    @if let Some(s) = self.script {
                        script type="module" src=(format!("/assets/dashboard/{s}")) {}
                    }
                }
            }
        }
    }
}

/// A status as a coloured badge.
pub fn badge(status: &str) -> Markup {
    let class = match status {
        "running" | "completed" | "connected" | "ready" | "valid" => "badge ok",
        "failed" | "timeout" | "invalid" | "disabled" => "badge bad",
        "hibernated" | "queued" | "starting" | "creating" | "cancelled" | "awaiting_user_auth" => {
            "badge warn"
        }
        _ => "badge",
    };
    html! { span class=(class) { (status.replace('_', " ")) } }
}

//! Namespaces with their quota use and dominant share (those the token has
//! rights in, or all with operator read, as `GET /v1/namespaces`), and the
//! newest evaluations in the namespaces the token may read.

use super::layout::{ago, badge, bar, bytes, query_escape, short, Page};
use super::session::Viewer;
use super::UiState;
use axum::extract::State;
use axum::response::Response;
use maud::html;
use taba_types::acl::{Access, Capability};

/// `GET /ui/namespaces`.
pub async fn list(State(ui): State<UiState>, viewer: Viewer) -> Response {
    let rights = &viewer.caller.rights;
    let mut all = ui.app.state.list_namespaces().await;
    all.retain(|n| rights.operator(Access::Read) || rights.sees_namespace(&n.name));
    let live = html! {
        h1 { "Namespaces" }
        div.scroll {
            table.namespaces {
                thead { tr { th { "namespace" } th.num { "jobs" } th { "cpu" } th { "memory" } th { "allocations" } th.num { "dominant share" } } }
                tbody {
                    @for n in &all {
                        @let q = n.quota.clone().unwrap_or_default();
                        tr {
                            td { a href={"/ui/jobs?namespace=" (query_escape(&n.name))} { (n.name) }
                                 @if !n.description.is_empty() { br; small { (n.description) } } }
                            td.num { (n.jobs) }
                            td { @match q.cpu {
                                Some(max) => (bar(n.usage.cpu, max, &format!("{} / {} MHz", n.usage.cpu, max))),
                                None => { (n.usage.cpu) " MHz (no quota)" }
                            } }
                            td { @match q.memory {
                                Some(max) => (bar(n.usage.memory.0, max.0, &format!("{} / {}", bytes(n.usage.memory.0), bytes(max.0)))),
                                None => { (bytes(n.usage.memory.0)) " (no quota)" }
                            } }
                            td { @match q.allocations {
                                Some(max) => (bar(u64::from(n.usage.allocations), u64::from(max), &format!("{} / {}", n.usage.allocations, max))),
                                None => { (n.usage.allocations) " (no quota)" }
                            } }
                            td.num { (format!("{:.1}%", n.dominant_share * 100.0)) }
                        }
                    }
                    @if all.is_empty() { tr { td colspan="6" { "no namespace this token has rights in" } } }
                }
            }
        }
    };
    Page {
        title: "Namespaces".into(),
        topics: "topic=Allocation&topic=Job",
        live,
        rest: html! {},
    }
    .render(&viewer)
}

/// Evaluations listed.
const EVALS: usize = 200;

/// `GET /ui/evaluations`: the newest evaluations.
pub async fn evaluations(State(ui): State<UiState>, viewer: Viewer) -> Response {
    let rights = viewer.caller.rights.clone();
    let evals = ui
        .app
        .state
        .recent_evals(|ns| rights.allows(ns, Capability::Read), EVALS);
    let live = html! {
        h1 { "Evaluations" }
        p.hint { "The newest " (EVALS) " in the namespaces this token may read." }
        div.scroll {
            table.evals {
                thead { tr { th { "id" } th { "job" } th { "trigger" } th { "status" } th { "description" } th { "created" } } }
                tbody {
                    @for e in &evals {
                        tr {
                            td { code { (short(e.id.as_str())) } }
                            td { a href={"/ui/jobs/" (query_escape(&e.namespace)) "/" (query_escape(&e.job))} { (e.job) } " " small { (e.namespace) } }
                            td { (serde_json::to_string(&e.triggered_by).unwrap_or_default().trim_matches('"')) }
                            td { (badge(&e.status.to_string())) }
                            td { (e.status_description)
                                 @for (g, f) in &e.failed_groups { br; small.error { (g) ": " (f.summary()) } } }
                            td { (ago(e.create_time)) }
                        }
                    }
                    @if evals.is_empty() { tr { td colspan="6" { "none" } } }
                }
            }
        }
    };
    Page {
        title: "Evaluations".into(),
        topics: "topic=Evaluation",
        live,
        rest: html! {},
    }
    .render(&viewer)
}

//! An allocation's page (tasks, events, resources) with its live logs: the
//! page's script follows `/ui/allocs/{id}/logs`, which is the API's logs
//! route (`GET /v1/allocations/{id}/logs`, proxied to the node's agent)
//! called with the session's token.

use super::api::call;
use super::layout::{ago, bad_query, badge, bytes, query_escape, short, Page};
use super::session::Viewer;
use super::{UiError, UiState};
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{Method, Uri};
use axum::response::Response;
use maud::html;
use serde::Deserialize;
use taba_types::acl::Capability;

/// `?task=&type=` of the page: which log to follow.
#[derive(Deserialize)]
pub struct LogChoice {
    task: Option<String>,
    #[serde(rename = "type")]
    stream: Option<String>,
}

/// `GET /ui/allocs/{id}`.
pub async fn detail(
    State(ui): State<UiState>,
    viewer: Viewer,
    Path(id): Path<String>,
    q: Result<Query<LogChoice>, QueryRejection>,
) -> Result<Response, UiError> {
    let Query(choice) = q.map_err(bad_query)?;
    let a = ui.app.state.find_alloc(&id)?;
    viewer.caller.require(&a.namespace, Capability::Read)?;
    let tasks: Vec<&str> = a.group_spec.tasks.iter().map(|t| t.name.as_str()).collect();
    let task = choice
        .task
        .clone()
        .filter(|t| tasks.contains(&t.as_str()))
        .or_else(|| tasks.first().map(|t| t.to_string()))
        .unwrap_or_default();
    let stream = match choice.stream.as_deref() {
        Some("stderr") => "stderr",
        _ => "stdout",
    };
    let base = format!("/ui/allocs/{}", a.id);
    let live = html! {
        h1 { "Allocation " code { (short(a.id.as_str())) } " " (badge(&a.client_status.to_string())) }
        dl.facts {
            dt { "id" } dd { code { (a.id) } }
            dt { "job" } dd { a href={"/ui/jobs/" (query_escape(&a.namespace)) "/" (query_escape(&a.job))} { (a.job) } " (" (a.namespace) ", version " (a.job_version) ")" }
            dt { "name" } dd { (a.name) }
            dt { "node" } dd { a href={"/ui/nodes/" (a.node_id)} { (a.node_name) } }
            dt { "desired" } dd { (a.desired_status.to_string()) @if !a.desired_description.is_empty() { " · " (a.desired_description) } }
            @if !a.client_description.is_empty() { dt { "status" } dd { (a.client_description) } }
            dt { "resources" } dd { (a.resources.cpu) " MHz · " (bytes(a.resources.memory.0)) }
            @if let Some(u) = &a.usage { dt { "in use" } dd { (format!("{u:?}")) } }
            dt { "created" } dd { (ago(a.create_time)) }
        }
        h2 { "Tasks" }
        div.scroll {
            table.tasks {
                thead { tr { th { "task" } th { "state" } th.num { "restarts" } th { "exit" } th { "started" } } }
                tbody {
                    @for (name, t) in &a.task_states {
                        tr {
                            td { (name) }
                            td { (badge(&t.state.to_string())) @if t.failed { " failed" } @if t.oom_killed { " OOM-killed" } }
                            td.num { (t.restarts) }
                            td { @if let Some(c) = t.exit_code { (c) } @if let Some(s) = t.signal { " signal " (s) } }
                            td { (t.started_at.map(ago).unwrap_or_default()) }
                        }
                    }
                }
            }
        }
        h2 { "Events" }
        ul.events {
            @for e in a.events.iter().rev().take(50) {
                li { span.time { (ago(e.time)) } " " strong { (e.kind) } " " (e.message) @if !e.actor.is_empty() { " (" (e.actor) ")" } }
            }
        }
    };
    let src = format!(
        "{base}/logs?task={}&type={stream}&follow=true",
        query_escape(&task)
    );
    let rest = html! {
        section.logs {
            h2 { "Logs" }
            nav.tabs {
                @for t in &tasks {
                    @for s in ["stdout", "stderr"] {
                        a class=[(*t == task && s == stream).then_some("here")]
                          href={(base) "?task=" (query_escape(t)) "&type=" (s)} { (t) " " (s) }
                    }
                }
            }
            pre #logs data-src=(src) aria-live="polite" {}
        }
    };
    Ok(Page {
        title: format!("Allocation {}", short(a.id.as_str())),
        topics: "topic=Allocation",
        live,
        rest,
    }
    .render(&viewer))
}

/// `GET /ui/allocs/{id}/logs?task=&type=&follow=&offset=`: the API's logs
/// route, streamed.
pub async fn logs(
    State(ui): State<UiState>,
    viewer: Viewer,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, UiError> {
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    call(
        &ui,
        &viewer,
        Method::GET,
        &format!("/v1/allocations/{}/logs{query}", query_escape(&id)),
        None,
        Body::empty(),
    )
    .await
}

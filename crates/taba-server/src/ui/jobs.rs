//! Jobs: the list, a job's page (allocations, versions, rollout per group,
//! placement failures explained), running a job from pasted TOML, stopping
//! one.
//!
//! A job is shown only with read in its namespace (as `GET
//! /v1/jobs/{name}/status`). Running and stopping go to `POST /v1/jobs` and
//! `DELETE /v1/jobs/{name}`: the same parser, validation and rights as the CLI.

use super::api::call_json;
use super::cluster::alloc_table;
use super::layout::{ago, bad_query, badge, bytes, csrf, query_escape, Page};
use super::session::Viewer;
use super::{UiError, UiState};
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::Method;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde::Deserialize;
use taba_types::acl::{Access, Capability};
use taba_types::api::JobStatusResponse;
use taba_types::parse::{parse_job_toml, JobParseError};
use taba_types::{DesiredStatus, Job};

/// `?namespace=` of the job list.
#[derive(Deserialize)]
pub struct ListQuery {
    namespace: Option<String>,
}

/// `GET /ui/jobs`: jobs in the namespaces the token may read.
pub async fn list(
    State(ui): State<UiState>,
    viewer: Viewer,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, UiError> {
    let Query(q) = q.map_err(bad_query)?;
    let ns = q.namespace.filter(|n| !n.is_empty());
    if let Some(n) = &ns {
        viewer.caller.require(n, Capability::Read)?;
    }
    let mut jobs = ui.app.state.list_jobs(ns.as_deref());
    jobs.retain(|j| viewer.caller.rights.allows(&j.namespace, Capability::Read));
    let live = html! {
        h1 { "Jobs" @if let Some(n) = &ns { " in " (n) } }
        div.scroll {
            table.jobs {
                thead { tr { th { "job" } th { "namespace" } th { "type" } th { "status" } th.num { "version" } th { "allocations" } th { "submitted" } } }
                tbody {
                    @for j in &jobs {
                        tr {
                            td { a href={"/ui/jobs/" (query_escape(&j.namespace)) "/" (query_escape(&j.name))} { (j.name) } }
                            td { a href={"/ui/jobs?namespace=" (query_escape(&j.namespace))} { (j.namespace) } }
                            td { (j.job_type.to_string()) }
                            td { (badge(&j.status.to_string())) }
                            td.num { (j.version) }
                            td { @for (s, n) in &j.allocs { span.tag { (s) " " (n) } " " } }
                            td { (ago(j.submit_time)) }
                        }
                    }
                    @if jobs.is_empty() { tr { td colspan="7" { "no jobs" } } }
                }
            }
        }
    };
    Ok(Page {
        title: "Jobs".into(),
        topics: "topic=Job&topic=Allocation",
        live,
        rest: html! { p { a.button href="/ui/jobs/run" { "Run a job" } } },
    }
    .render(&viewer))
}

/// Per group of the current version: wanted, placed, running, and older
/// versions' allocations still live (a rollout in progress).
fn rollout(job: &Job, status: &JobStatusResponse) -> Markup {
    html! {
        div.scroll {
            table.rollout {
                thead { tr { th { "group" } th.num { "wanted" } th.num { "placed" } th.num { "running" } th.num { "older versions live" } th { "progress" } } }
                tbody {
                    @for g in &job.spec.groups {
                        @let current = status.allocations.iter().filter(|a| a.group == g.name && a.job_version == job.version && a.desired_status == DesiredStatus::Run);
                        @let placed = current.clone().filter(|a| !a.status.is_terminal()).count() as u64;
                        @let running = current.filter(|a| a.status == taba_types::ClientStatus::Running).count() as u64;
                        @let old = status.allocations.iter().filter(|a| a.group == g.name && a.job_version != job.version && a.desired_status == DesiredStatus::Run && !a.status.is_terminal()).count();
                        tr {
                            td { (g.name) }
                            td.num { (g.count) }
                            td.num { (placed) }
                            td.num { (running) }
                            td.num { (old) }
                            td { (super::layout::bar(running, u64::from(g.count), &format!("{running} of {} running", g.count))) }
                        }
                    }
                }
            }
        }
    }
}

/// The placement failures of the job's latest scheduling, each group's
/// summary with what it asks for and, for a node reader, the largest node.
fn failures(ui: &UiState, viewer: &Viewer, job: &Job, status: &JobStatusResponse) -> Markup {
    if status.placement_failures.is_empty() {
        return html! {};
    }
    let detail = status
        .latest_eval
        .as_ref()
        .and_then(|e| ui.app.state.eval(e.id.as_str()));
    let largest = viewer.caller.rights.node(Access::Read).then(|| {
        let c = ui.app.state.cluster();
        let cpu = c.nodes().map(|n| n.allocatable().cpu).max().unwrap_or(0);
        let mem = c
            .nodes()
            .map(|n| n.allocatable().memory.0)
            .max()
            .unwrap_or(0);
        (cpu, mem)
    });
    html! {
        section #placement-failures .failures {
            h2 { "Placement failures" }
            @for (group, summary) in &status.placement_failures {
                @let ask = job.spec.groups.iter().find(|g| &g.name == group).map(|g| {
                    g.tasks.iter().fold((0u64, 0u64), |a, t| (a.0 + t.resources.cpu, a.1 + t.resources.memory.0))
                });
                div.failure {
                    h3 { "group " (group) }
                    p.error { (summary) }
                    @if let Some((cpu, mem)) = ask {
                        p { "Each allocation asks for " (cpu) " MHz cpu and " (bytes(mem)) " memory."
                            @if let Some((ncpu, nmem)) = largest {
                                " The largest node offers " (ncpu) " MHz and " (bytes(nmem)) "."
                                @if mem > nmem { " " strong.explain { "No node has that much memory: lower the group's memory or add a larger node." } }
                                @else if cpu > ncpu { " " strong.explain { "No node has that much cpu: lower the group's cpu or add a larger node." } }
                            }
                        }
                    }
                    @if let Some(f) = detail.as_ref().and_then(|e| e.failed_groups.get(group)) {
                        ul {
                            li { (f.nodes_evaluated) " nodes evaluated, " (f.nodes_available) " ready and eligible" }
                            @for (dim, n) in &f.exhausted { li { (dim) " exhausted on " (n) " nodes" } }
                            @for (why, n) in &f.filtered { li { (why) ": " (n) " nodes filtered out" } }
                            @if !f.quota.is_empty() { li { (f.quota) } }
                            @if f.coalesced > 0 { li { (f.coalesced) " more placements failed the same way" } }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /ui/jobs/{ns}/{name}`.
pub async fn detail(
    State(ui): State<UiState>,
    viewer: Viewer,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Response, UiError> {
    viewer.caller.require(&ns, Capability::Read)?;
    let state = &ui.app.state;
    let job = state.job(&ns, &name)?;
    let status = state.job_status(&ns, &name)?;
    let versions = state.job_versions(&ns, &name).await?;
    let live = html! {
        h1 { "Job " (name) " " (badge(&status.status.to_string())) }
        dl.facts {
            dt { "namespace" } dd { (ns) }
            dt { "type" } dd { (status.job_type.to_string()) }
            dt { "version" } dd { (status.version) }
            dt { "priority" } dd { (job.spec.priority) }
            @if let Some(e) = &status.latest_eval {
                dt { "latest evaluation" } dd { code { (super::layout::short(e.id.as_str())) } " " (badge(&e.status.to_string())) " " (e.description) }
            }
        }
        (failures(&ui, &viewer, &job, &status))
        h2 { "Rollout" }
        (rollout(&job, &status))
        h2 { "Allocations (" (status.allocations.len()) ")" }
        (alloc_table(&status.allocations, false))
        h2 { "Versions" }
        div.scroll {
            table.versions {
                thead { tr { th.num { "version" } th { "submitted" } th { "groups" } th { "stopped" } } }
                tbody {
                    @for v in &versions {
                        tr {
                            td.num { (v.version) }
                            td { (ago(v.submit_time)) }
                            td { @for g in &v.spec.groups { span.tag { (g.name) " × " (g.count) } " " } }
                            td { @if v.stopped { "stopped" } }
                        }
                    }
                }
            }
        }
    };
    let may_write = viewer.caller.rights.allows(&ns, Capability::Write);
    let rest = html! {
        @if may_write && !status.stopped {
            section.actions {
                form method="post" action={"/ui/jobs/" (query_escape(&ns)) "/" (query_escape(&name)) "/stop"} {
                    (csrf(&viewer))
                    button.danger #stop-job type="submit" { "Stop the job" }
                }
            }
        }
    };
    Ok(Page {
        title: format!("Job {name}"),
        topics: "topic=Job&topic=Allocation&topic=Evaluation",
        live,
        rest,
    }
    .render(&viewer))
}

/// A form with only its CSRF token.
#[derive(Deserialize)]
pub struct StopForm {
    csrf: String,
}

/// `POST /ui/jobs/{ns}/{name}/stop` (`DELETE /v1/jobs/{name}?namespace=`).
pub async fn stop(
    State(ui): State<UiState>,
    viewer: Viewer,
    Path((ns, name)): Path<(String, String)>,
    Form(f): Form<StopForm>,
) -> Result<Response, UiError> {
    viewer.check_form(&f.csrf)?;
    call_json(
        &ui,
        &viewer,
        Method::DELETE,
        &format!(
            "/v1/jobs/{}?namespace={}",
            query_escape(&name),
            query_escape(&ns)
        ),
        None,
        Body::empty(),
    )
    .await?;
    Ok(Redirect::to(&format!(
        "/ui/jobs/{}/{}",
        query_escape(&ns),
        query_escape(&name)
    ))
    .into_response())
}

const EXAMPLE: &str = r#"name = "hello"
type = "service"
[[group]]
name = "web"
count = 1
  [[group.task]]
  name = "httpd"
  driver = "container"
  image = "busybox:latest"
  command = ["httpd", "-f", "-p", "8080"]
  resources = { cpu = 100, memory = "64MiB" }
"#;

/// Where a job file is wrong, for the form.
struct RunError {
    message: String,
    field: Option<String>,
    line: Option<usize>,
}

fn run_page(viewer: &Viewer, toml: &str, err: Option<&RunError>) -> Response {
    let rest = html! {
        h1 { "Run a job" }
        @if let Some(e) = err {
            div.error #run-error role="alert" {
                p { @if let Some(l) = e.line { "line " (l) ": " } (e.message) }
                @if let Some(f) = &e.field { p { "field " code { (f) } } }
                @if let Some(l) = e.line {
                    pre.excerpt {
                        @for (i, text) in toml.lines().enumerate().skip(l.saturating_sub(3)).take(5) {
                            span class=[(i + 1 == l).then_some("bad")] { (format!("{:>4} | {text}", i + 1)) } "\n"
                        }
                    }
                }
            }
        }
        form.run method="post" action="/ui/jobs/run" {
            (csrf(viewer))
            label for="job-toml" { "Job file (TOML)" }
            textarea #job-toml name="toml" rows="18" spellcheck="false" { (toml) }
            button #run-job type="submit" { "Run" }
        }
    };
    let status = match err {
        None => axum::http::StatusCode::OK,
        Some(_) => axum::http::StatusCode::BAD_REQUEST,
    };
    (
        status,
        Page {
            title: "Run a job".into(),
            topics: "",
            live: html! {},
            rest,
        }
        .render(viewer),
    )
        .into_response()
}

/// `GET /ui/jobs/run`.
pub async fn run_form(viewer: Viewer) -> Response {
    run_page(&viewer, EXAMPLE, None)
}

/// The run form.
#[derive(Deserialize)]
pub struct RunForm {
    csrf: String,
    toml: String,
}

/// `POST /ui/jobs/run`: the job goes to `POST /v1/jobs` as TOML; a syntax
/// error is shown at its line (the same parser), a refusal with its field.
pub async fn run(
    State(ui): State<UiState>,
    viewer: Viewer,
    Form(f): Form<RunForm>,
) -> Result<Response, UiError> {
    viewer.check_form(&f.csrf)?;
    // Browsers send CRLF line ends from a textarea.
    let toml = f.toml.replace("\r\n", "\n");
    if let Err(JobParseError::Syntax {
        line,
        path,
        message,
        ..
    }) = parse_job_toml(toml.as_bytes())
    {
        let e = RunError {
            message,
            field: path,
            line,
        };
        return Ok(run_page(&viewer, &toml, Some(&e)));
    }
    let reply = call_json(
        &ui,
        &viewer,
        Method::POST,
        "/v1/jobs",
        Some("application/toml"),
        Body::from(toml.clone()),
    )
    .await;
    match reply {
        Ok(v) => {
            let ns = v["namespace"].as_str().unwrap_or("default");
            let job = v["job"].as_str().unwrap_or("");
            Ok(Redirect::to(&format!(
                "/ui/jobs/{}/{}",
                query_escape(ns),
                query_escape(job)
            ))
            .into_response())
        }
        Err(UiError::Api {
            status,
            message,
            field,
        }) if status.is_client_error() => Ok(run_page(
            &viewer,
            &toml,
            Some(&RunError {
                message,
                field,
                line: None,
            }),
        )),
        Err(e) => Err(e),
    }
}

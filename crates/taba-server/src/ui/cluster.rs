//! The cluster overview (nodes as a heat map and as bars, allocations and
//! jobs by state), the node list and a node's page with its drain and
//! eligibility actions.
//!
//! Nodes are shown only to a token with node read, as `GET /v1/nodes`
//! demands; allocations only in namespaces the token may read. A drain or an
//! eligibility change goes to the API's route (node write).

use super::api::call_json;
use super::layout::{ago, bad_query, badge, bar, bytes, csrf, percent, query_escape, short, Page};
use super::session::Viewer;
use super::{UiError, UiState};
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::Method;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde::Deserialize;
use std::collections::BTreeMap;
use taba_types::acl::{Access, Capability};
use taba_types::NodeStatus;

/// One node as the pages show it.
pub struct NodeRow {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// `ready`, `draining`, `ineligible`, `down`...
    pub status: String,
    /// Ready (placements possible unless ineligible).
    pub ready: bool,
    /// CPU (MHz) held by allocations / allocatable.
    pub cpu: (u64, u64),
    /// Memory (bytes) held by allocations / allocatable.
    pub mem: (u64, u64),
    /// Allocations holding resources.
    pub allocs: u32,
}

impl NodeRow {
    /// The larger of CPU and memory held, in per cent.
    pub fn utilization(&self) -> u64 {
        percent(self.cpu.0, self.cpu.1).max(percent(self.mem.0, self.mem.1))
    }
}

/// Every node, by name.
pub fn node_rows(ui: &UiState) -> Vec<NodeRow> {
    let nodes = ui.app.state.list_nodes();
    let c = ui.app.state.cluster();
    nodes
        .into_iter()
        .map(|(n, allocs)| {
            let used = c.node_used(&n.id);
            let total = n.allocatable();
            NodeRow {
                id: n.id.to_string(),
                status: n.display_status(),
                ready: n.status == NodeStatus::Ready,
                name: n.name,
                cpu: (used.cpu, total.cpu),
                mem: (used.memory.0, total.memory.0),
                allocs,
            }
        })
        .collect()
}

fn needs_node_read(viewer: &Viewer) -> Result<(), UiError> {
    if viewer.caller.rights.node(Access::Read) {
        return Ok(());
    }
    Err(UiError::Forbidden(format!(
        "permission denied: {} lacks node read",
        viewer.caller.actor()
    )))
}

/// Allocations by client status, in the namespaces the viewer may read:
/// job by job, from the few fields the scheduler's state keeps at hand
/// (no allocation's full record is built).
fn alloc_counts(ui: &UiState, viewer: &Viewer) -> BTreeMap<String, u64> {
    let mut by: std::collections::HashMap<taba_types::ClientStatus, u64> = Default::default();
    let rights = &viewer.caller.rights;
    let c = ui.app.state.cluster();
    for j in c.jobs() {
        if rights.allows(&j.spec.namespace, Capability::Read) {
            for a in c.alloc_briefs_for_job(&j.spec.namespace, &j.spec.name) {
                *by.entry(a.client_status).or_default() += 1;
            }
        }
    }
    by.into_iter().map(|(s, n)| (s.to_string(), n)).collect()
}

/// The heat map: one cell per node, coloured by its utilization in steps of
/// ten per cent; a cell links to its node.
pub fn heat_map(rows: &[NodeRow]) -> Markup {
    html! {
        div.heat role="list" aria-label="node utilization" {
            @for r in rows {
                @let u = r.utilization();
                @let class = if r.ready { format!("cell h{}", (u / 10).min(10)) } else { "cell off".to_string() };
                a class=(class) role="listitem" href={"/ui/nodes/" (r.id)}
                    title=(format!("{}: {} · cpu {}% · memory {}%", r.name, r.status, percent(r.cpu.0, r.cpu.1), percent(r.mem.0, r.mem.1))) {}
            }
        }
        p.legend {
            "held by allocations: "
            @for i in (0..=10).step_by(2) { span class=(format!("cell h{i}")) {} " " (i * 10) "% " }
            span class="cell off" {} " not ready"
        }
    }
}

/// A table of nodes with CPU and memory bars.
pub fn node_table(rows: &[&NodeRow]) -> Markup {
    html! {
        div.scroll {
            table.nodes {
                thead { tr { th { "node" } th { "status" } th { "cpu" } th { "memory" } th.num { "allocs" } } }
                tbody {
                    @for r in rows {
                        tr {
                            td { a href={"/ui/nodes/" (r.id)} { (r.name) } }
                            td { (badge(&r.status)) }
                            td { (bar(r.cpu.0, r.cpu.1, &format!("{} / {} MHz", r.cpu.0, r.cpu.1))) }
                            td { (bar(r.mem.0, r.mem.1, &format!("{} / {}", bytes(r.mem.0), bytes(r.mem.1)))) }
                            td.num { (r.allocs) }
                        }
                    }
                }
            }
        }
    }
}

fn counts_list(counts: &BTreeMap<String, u64>) -> Markup {
    html! {
        ul.counts {
            @for (status, n) in counts { li { (badge(status)) " " strong { (n) } } }
            @if counts.is_empty() { li { "none" } }
        }
    }
}

/// How many of the hottest nodes the overview lists.
const HOTTEST: usize = 20;

/// `GET /ui/`: the cluster overview.
pub async fn overview(State(ui): State<UiState>, viewer: Viewer) -> Response {
    let allocs = alloc_counts(&ui, &viewer);
    let mut jobs: BTreeMap<String, u64> = BTreeMap::new();
    for j in ui.app.state.list_jobs(None) {
        if viewer.caller.rights.allows(&j.namespace, Capability::Read) {
            *jobs.entry(j.status.to_string()).or_default() += 1;
        }
    }
    let nodes = viewer
        .caller
        .rights
        .node(Access::Read)
        .then(|| node_rows(&ui));
    let mut node_counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut hottest: Vec<&NodeRow> = nodes.iter().flatten().collect();
    for r in &hottest {
        *node_counts.entry(r.status.clone()).or_default() += 1;
    }
    hottest.sort_by_key(|r| std::cmp::Reverse(r.utilization()));
    hottest.truncate(HOTTEST);
    let live = html! {
        h1 { "Cluster" }
        div.cards {
            section.card {
                h2 { "Allocations" }
                (counts_list(&allocs))
            }
            section.card {
                h2 { "Jobs" }
                (counts_list(&jobs))
                p { a href="/ui/jobs" { "all jobs" } }
            }
            @if let Some(rows) = &nodes {
                section.card {
                    h2 { "Nodes" }
                    (counts_list(&node_counts))
                    @let (cu, ct, mu, mt) = rows.iter().fold((0, 0, 0, 0), |a, r| (a.0 + r.cpu.0, a.1 + r.cpu.1, a.2 + r.mem.0, a.3 + r.mem.1));
                    p { "cpu " (bar(cu, ct, &format!("{}%", percent(cu, ct)))) }
                    p { "memory " (bar(mu, mt, &format!("{} / {}", bytes(mu), bytes(mt)))) }
                }
            }
        }
        @if let Some(rows) = &nodes {
            section {
                h2 { "Utilization (" (rows.len()) " nodes)" }
                (heat_map(rows))
            }
            section {
                h2 { "Hottest nodes" }
                (node_table(&hottest))
                p { a href="/ui/nodes" { "all nodes" } }
            }
        } @else {
            p.hint { "Nodes are hidden: this token lacks node read." }
        }
    };
    Page {
        title: "Overview".into(),
        topics: "*",
        live,
        rest: html! {},
    }
    .render(&viewer)
}

/// `?q=&page=&sort=` of the node list.
#[derive(Deserialize)]
pub struct NodesQuery {
    q: Option<String>,
    page: Option<usize>,
    sort: Option<String>,
}

/// Nodes per page of the node list.
const PER_PAGE: usize = 100;

/// `GET /ui/nodes`: every node, filtered and paged.
pub async fn nodes(
    State(ui): State<UiState>,
    viewer: Viewer,
    q: Result<Query<NodesQuery>, QueryRejection>,
) -> Result<Response, UiError> {
    needs_node_read(&viewer)?;
    let Query(q) = q.map_err(bad_query)?;
    let rows = node_rows(&ui);
    let filter = q.q.clone().unwrap_or_default();
    let mut shown: Vec<&NodeRow> = rows
        .iter()
        .filter(|r| filter.is_empty() || r.name.contains(&filter) || r.id.starts_with(&filter))
        .collect();
    let by_util = q.sort.as_deref() == Some("utilization");
    if by_util {
        shown.sort_by_key(|r| std::cmp::Reverse(r.utilization()));
    }
    let pages = shown.len().div_ceil(PER_PAGE).max(1);
    let page = q.page.unwrap_or(1).clamp(1, pages);
    let slice = &shown[(page - 1) * PER_PAGE..(page * PER_PAGE).min(shown.len())];
    let link = |p: usize| {
        format!(
            "/ui/nodes?q={}&page={p}{}",
            query_escape(&filter),
            if by_util { "&sort=utilization" } else { "" }
        )
    };
    let live = html! {
        h1 { "Nodes" }
        form.filter method="get" action="/ui/nodes" {
            input type="search" name="q" value=(filter) placeholder="name or id prefix" aria-label="filter nodes";
            select name="sort" aria-label="sort" {
                option value="name" selected[!by_util] { "by name" }
                option value="utilization" selected[by_util] { "by utilization" }
            }
            button type="submit" { "Filter" }
        }
        p { (shown.len()) " of " (rows.len()) " nodes · page " (page) " of " (pages) }
        (node_table(slice))
        nav.pages {
            @if page > 1 { a href=(link(page - 1)) { "previous" } }
            @if page < pages { a href=(link(page + 1)) { "next" } }
        }
    };
    Ok(Page {
        title: "Nodes".into(),
        topics: "topic=Node",
        live,
        rest: html! {},
    }
    .render(&viewer))
}

/// `GET /ui/nodes/{id}`: a node, its allocations, its drain, its actions.
pub async fn node(
    State(ui): State<UiState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    needs_node_read(&viewer)?;
    let state = &ui.app.state;
    let node = state.find_node(&id)?;
    let used = state.cluster().node_used(&node.id);
    let total = node.allocatable();
    let mut allocs = state.node_allocs(&node.id);
    allocs.retain(|a| viewer.caller.rights.allows(&a.namespace, Capability::Read));
    allocs.sort_by_key(|a| std::cmp::Reverse(a.create_time));
    let drain = if node.draining() {
        Some(state.drain_status(node.id.as_str())?)
    } else {
        None
    };
    let may_write = viewer.caller.rights.node(Access::Write);
    let live = html! {
        h1 { "Node " (node.name) " " (badge(&node.display_status())) }
        dl.facts {
            dt { "id" } dd { code { (node.id) } }
            dt { "datacenter" } dd { (node.datacenter) }
            dt { "address" } dd { (node.http_addr) }
            dt { "eligibility" } dd #eligibility { (format!("{:?}", node.eligibility).to_lowercase()) }
            dt { "last heartbeat" } dd { (ago(node.last_heartbeat)) }
            dt { "drivers" } dd { @for (d, i) in &node.drivers { @if i.detected && i.healthy { span.tag { (d) } " " } } }
            @if !node.unusable_reason.is_empty() { dt { "unusable" } dd.error { (node.unusable_reason) } }
        }
        h2 { "Resources" }
        p { "cpu held " (bar(used.cpu, total.cpu, &format!("{} / {} MHz", used.cpu, total.cpu))) }
        p { "memory held " (bar(used.memory.0, total.memory.0, &format!("{} / {}", bytes(used.memory.0), bytes(total.memory.0)))) }
        @if node.usage.at > 0 {
            p { "in use (agent): cpu " (node.usage.cpu_mhz) " MHz · memory " (bytes(node.usage.memory.0)) " · " (ago(node.usage.at)) }
        }
        @if let Some(d) = &drain {
            section #drain {
                h2 { "Drain" }
                p { @if d.done { "done" } @else { (d.left) " allocations left, " (d.starting) " starting elsewhere" } }
                @if let Some(s) = &d.strategy { p { "deadline " (ago(s.deadline)) } }
            }
        }
        h2 { "Allocations (" (allocs.len()) ")" }
        (alloc_table(&allocs.iter().map(taba_types::api::AllocListEntry::from_alloc).collect::<Vec<_>>(), true))
    };
    let rest = if may_write {
        html! {
            section.actions {
                h2 { "Actions" }
                @if node.draining() {
                    form method="post" action={"/ui/nodes/" (node.id) "/drain"} {
                        (csrf(&viewer))
                        input type="hidden" name="action" value="cancel";
                        button #cancel-drain type="submit" { "Cancel the drain" }
                    }
                } @else {
                    form.inline method="post" action={"/ui/nodes/" (node.id) "/drain"} {
                        (csrf(&viewer))
                        input type="hidden" name="action" value="start";
                        label { "deadline " input name="deadline" value="1h" size="6" aria-label="drain deadline"; }
                        label { input type="checkbox" name="ignore_system" value="true"; " leave system jobs" }
                        button #drain type="submit" { "Drain" }
                    }
                }
                form method="post" action={"/ui/nodes/" (node.id) "/eligibility"} {
                    (csrf(&viewer))
                    @let eligible = node.eligibility == taba_types::Eligibility::Eligible;
                    input type="hidden" name="eligible" value=(if eligible { "false" } else { "true" });
                    button #eligibility-toggle type="submit" {
                        @if eligible { "Mark ineligible" } @else { "Mark eligible" }
                    }
                }
            }
        }
    } else {
        html! { p.hint { "Drain and eligibility need node write." } }
    };
    Ok(Page {
        title: format!("Node {}", node.name),
        topics: "*",
        live,
        rest,
    }
    .render(&viewer))
}

/// Allocations as a table (with their node unless `on_node`).
pub fn alloc_table(allocs: &[taba_types::api::AllocListEntry], on_node: bool) -> Markup {
    html! {
        div.scroll {
            table.allocs {
                thead { tr {
                    th { "id" } th { "name" } th { "version" }
                    @if !on_node { th { "node" } }
                    th { "desired" } th { "status" } th { "created" }
                } }
                tbody {
                    @for a in allocs {
                        tr {
                            td { a href={"/ui/allocs/" (a.id)} { code { (short(a.id.as_str())) } } }
                            td { (a.name) }
                            td.num { (a.job_version) }
                            @if !on_node { td { a href={"/ui/nodes/" (a.node_id)} { (a.node) } } }
                            td { (a.desired_status.to_string()) }
                            td { (badge(&a.status.to_string()))
                                 @if !a.description.is_empty() { " " small { (a.description) } } }
                            td { (ago(a.create_time)) }
                        }
                    }
                    @if allocs.is_empty() { tr { td colspan="7" { "none" } } }
                }
            }
        }
    }
}

/// The drain form.
#[derive(Deserialize)]
pub struct DrainForm {
    csrf: String,
    action: String,
    deadline: Option<String>,
    ignore_system: Option<String>,
}

/// `POST /ui/nodes/{id}/drain`: start or cancel a drain (`POST
/// /v1/nodes/{id}/drain`).
pub async fn drain(
    State(ui): State<UiState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(f): Form<DrainForm>,
) -> Result<Response, UiError> {
    viewer.check_form(&f.csrf)?;
    let body = match f.action.as_str() {
        "cancel" => serde_json::json!({"disable": true}),
        "start" => {
            let mut b =
                serde_json::json!({"ignore_system": f.ignore_system.as_deref() == Some("true")});
            if let Some(d) = f
                .deadline
                .as_deref()
                .map(str::trim)
                .filter(|d| !d.is_empty())
            {
                b["deadline"] = d.into();
            }
            b
        }
        other => {
            return Err(UiError::BadInput {
                message: format!("unknown action {other:?}; start or cancel"),
                field: Some("action".into()),
            })
        }
    };
    call_json(
        &ui,
        &viewer,
        Method::POST,
        &format!("/v1/nodes/{}/drain", query_escape(&id)),
        Some("application/json"),
        Body::from(body.to_string()),
    )
    .await?;
    Ok(Redirect::to(&format!("/ui/nodes/{}", query_escape(&id))).into_response())
}

/// The eligibility form.
#[derive(Deserialize)]
pub struct EligibilityForm {
    csrf: String,
    eligible: bool,
}

/// `POST /ui/nodes/{id}/eligibility` (`POST /v1/nodes/{id}/eligibility`).
pub async fn eligibility(
    State(ui): State<UiState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(f): Form<EligibilityForm>,
) -> Result<Response, UiError> {
    viewer.check_form(&f.csrf)?;
    call_json(
        &ui,
        &viewer,
        Method::POST,
        &format!("/v1/nodes/{}/eligibility", query_escape(&id)),
        Some("application/json"),
        Body::from(serde_json::json!({"eligible": f.eligible}).to_string()),
    )
    .await?;
    Ok(Redirect::to(&format!("/ui/nodes/{}", query_escape(&id))).into_response())
}

//! The HTTP/JSON API under `/v1/`. One table of routes ([`routes`]) builds
//! both the axum router and the OpenAPI document, so the two cannot drift.

mod agent_client;
pub mod error;
pub mod extract;
mod handlers;
mod join;
mod namespaces;
pub mod peer;

use crate::state::ServerState;
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::Router;
use serde_json::{json, Map, Value};
use std::sync::Arc;

pub use agent_client::AgentClients;
pub use error::ApiError;
pub use peer::{verify_agent, AgentCaller, Registration};

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    /// The server's state.
    pub state: Arc<ServerState>,
    /// Clients for proxying to agents.
    pub agents: Arc<AgentClients>,
    /// The OpenAPI document.
    pub openapi: Arc<Value>,
}

/// What a route reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// No body.
    None,
    /// JSON (`schema` names the type).
    Json(&'static str),
    /// A job: JSON or TOML.
    Job,
    /// A tar archive.
    Tar,
}

/// One route.
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path in axum syntax (`{id}`, `{*rest}`).
    pub path: &'static str,
    /// One line for the OpenAPI document.
    pub summary: &'static str,
    /// Request body.
    pub body: BodyKind,
    /// Query parameters (name, description).
    pub query: &'static [(&'static str, &'static str)],
    /// Response type name (or content type for streams).
    pub response: &'static str,
    handler: MethodRouter<AppState>,
}

fn r(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    body: BodyKind,
    query: &'static [(&'static str, &'static str)],
    response: &'static str,
    handler: MethodRouter<AppState>,
) -> Route {
    Route {
        method,
        path,
        summary,
        body,
        query,
        response,
        handler,
    }
}

const NS: &[(&str, &str)] = &[("namespace", "job namespace (default: default)")];

/// Every route of the API.
pub fn routes() -> Vec<Route> {
    use handlers as h;
    use BodyKind::*;
    vec![
        r("GET", "/v1/jobs", "List jobs", None, NS, "JobListEntry[]", get(h::list_jobs)),
        r("POST", "/v1/jobs", "Register a job (JSON JobSpec, or TOML with Content-Type application/toml)", Job, &[], "RegisterJobResponse", post(h::register_job)),
        r("GET", "/v1/jobs/{name}", "The job's current version", None, NS, "Job", get(h::get_job)),
        r("DELETE", "/v1/jobs/{name}", "Stop a job", None, NS, "EvalResponse", delete(h::stop_job)),
        r("GET", "/v1/jobs/{name}/status", "Job status with allocations and placement failures", None, NS, "JobStatusResponse", get(h::job_status)),
        r("GET", "/v1/jobs/{name}/versions", "Every version of a job, newest first", None, NS, "JobHistory", get(h::job_history)),
        r("GET", "/v1/allocations", "List allocations", None, &[], "AllocListEntry[]", get(h::list_allocs)),
        r("GET", "/v1/allocations/{id}", "An allocation by id or unique id prefix", None, &[], "AllocDetail", get(h::get_alloc)),
        r("POST", "/v1/allocations/{id}/stop", "Stop an allocation (a replacement is placed)", None, &[], "EvalResponse", post(h::stop_alloc)),
        r("GET", "/v1/allocations/{id}/logs", "Stream a task's stdout or stderr (proxied to the node's agent)", None,
          &[("task", "task name (optional when the group has one task)"), ("type", "stdout or stderr"), ("follow", "keep streaming new output"), ("offset", "start at this byte")],
          "application/octet-stream", get(h::alloc_logs)),
        r("POST", "/v1/allocations/{id}/exec", "Run a command in a task and return its exit code and output (proxied to the node's agent)", Json("ExecRequest"),
          &[("task", "task name (optional when the group has one task)")], "ExecResponse", post(h::alloc_exec)),
        r("GET", "/v1/nodes", "List nodes", None, &[], "NodeListEntry[]", get(h::list_nodes)),
        r("GET", "/v1/nodes/{node}", "A node by id, id prefix or name, with its allocations", None, &[], "NodeDetail", get(h::get_node)),
        r("DELETE", "/v1/nodes/{node}", "Remove a node (409 while it is not down and has allocations, unless force=true: they are lost and replaced)", None,
          &[("force", "true: remove even a live node with allocations")], "RemoveNodeResponse", delete(h::remove_node)),
        r("POST", "/v1/nodes/{node}/eligibility", "Allow or forbid new placements on a node", Json("EligibilityRequest"), &[], "NodeDetail", post(h::node_eligibility)),
        r("GET", "/v1/images", "List images", None, &[], "ImageInfo[]", get(h::list_images)),
        r("POST", "/v1/images", "Import a docker-save or OCI-layout tar (the request body)", Tar, &[], "ImageInfo", post(h::import_image)),
        r("DELETE", "/v1/images/{*reference}", "Remove an image by reference or id", None, &[], "ImageInfo", delete(h::remove_image)),
        r("GET", "/v1/namespaces", "List namespaces with their quota and usage", None, &[], "NamespaceStatus[]", get(namespaces::list)),
        r("GET", "/v1/namespaces/{name}", "A namespace: quota and usage (cpu, memory, live allocations)", None, &[], "NamespaceStatus", get(namespaces::get)),
        r("PUT", "/v1/namespaces/{name}", "Create or update a namespace (JSON Namespace: description, quota)", Json("Namespace"), &[], "NamespaceStatus", put(namespaces::put)),
        r("DELETE", "/v1/namespaces/{name}", "Remove a namespace (409 while it has jobs that are not stopped)", None, &[], "DeleteNamespaceResponse", delete(namespaces::delete)),
        r("GET", "/v1/evaluations/{id}", "An evaluation", None, &[], "Evaluation", get(h::get_eval)),
        r("GET", "/v1/openapi.json", "This document", None, &[], "OpenAPI", get(h::openapi)),
        r("POST", "/v1/agent/register", "Agent: register a node", Json("RegisterRequest"), &[], "RegisterResponse", post(h::agent_register)),
        r("POST", "/v1/agent/heartbeat", "Agent: heartbeat", Json("HeartbeatRequest"), &[], "HeartbeatResponse", post(h::agent_heartbeat)),
        r("GET", "/v1/agent/allocations/{node_id}", "Agent: the node's allocations; blocks until they change past `index`", None,
          &[("index", "return when the allocations change past this index"), ("wait", "longest wait, e.g. 30s")],
          "NodeAllocations", get(h::agent_allocations)),
        r("POST", "/v1/agent/allocations", "Agent: allocation status updates", Json("AllocUpdateRequest"), &[], "AllocUpdateResponse", post(h::agent_update_allocs)),
        r("POST", "/v1/agent/join", "Agent: exchange a join token for an agent certificate (TLS) or a node secret", Json("JoinRequest"), &[], "JoinResponse", post(join::agent_join)),
        r("POST", "/v1/nodes/tokens", "Create a join token for new agents (shown once)", Json("JoinTokenRequest"), &[], "JoinTokenResponse", post(join::create_token)),
        r("POST", "/v1/tls/revoke", "Revoke a certificate by fingerprint or the one a node registered with", Json("RevokeCertRequest"), &[], "RevokeCertResponse", post(join::revoke_cert)),
    ]
}

/// The OpenAPI path of an axum path: `{*rest}` becomes `{rest}`.
pub fn openapi_path(path: &str) -> String {
    path.replace("{*", "{")
}

/// The OpenAPI 3 document of [`routes`].
pub fn openapi_document(routes: &[Route]) -> Value {
    let mut paths = Map::new();
    for rt in routes {
        let p = openapi_path(rt.path);
        let mut params: Vec<Value> = Vec::new();
        for seg in p.split('/') {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                params.push(json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}));
            }
        }
        for (name, desc) in rt.query {
            params.push(json!({"name": name, "in": "query", "required": false, "description": desc, "schema": {"type": "string"}}));
        }
        let mut op = json!({
            "summary": rt.summary,
            "operationId": format!("{} {}", rt.method, p),
            "parameters": params,
            "responses": {
                "200": {"description": rt.response},
                "4XX": {"description": "bad input; body {\"error\": {\"message\", \"field\"}}",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        });
        let body = match rt.body {
            BodyKind::None => Option::None,
            BodyKind::Json(schema) => Some(
                json!({"required": true, "content": {"application/json": {"schema": {"description": schema}}}}),
            ),
            BodyKind::Job => Some(json!({"required": true, "content": {
                "application/json": {"schema": {"description": "JobSpec"}},
                "application/toml": {"schema": {"description": "job file"}}}})),
            BodyKind::Tar => Some(
                json!({"required": true, "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}}),
            ),
        };
        if let Some(b) = body {
            op["requestBody"] = b;
        }
        let entry = paths.entry(p).or_insert_with(|| json!({}));
        entry[rt.method.to_lowercase()] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "taba", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"schemas": {"Error": {
            "type": "object",
            "properties": {"error": {"type": "object", "properties": {
                "message": {"type": "string"}, "field": {"type": "string", "nullable": true}}}}
        }}},
    })
}

/// The router of [`routes`]. Under TLS (`state.config.tls`) it reads the
/// server's certificate, key and CA to reach agents, and gates every route
/// by the caller's certificate ([`peer::tls_gate`]).
pub fn router(state: Arc<ServerState>) -> Result<Router, taba_tls::ConfigError> {
    let table = routes();
    let openapi = Arc::new(openapi_document(&table));
    let tls = match &state.config.tls {
        Some(t) => Some(taba_tls::ClientTls::from_files(&t.files)?),
        None => None,
    };
    let app = AppState {
        state,
        agents: Arc::new(AgentClients::new(tls)),
        openapi,
    };
    let mut router = Router::new();
    for rt in table {
        router = router.route(rt.path, rt.handler);
    }
    Ok(router
        .fallback(handlers::no_route)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            peer::tls_gate,
        ))
        .with_state(app))
}

//! The HTTP/JSON API under `/v1/`. One table of routes ([`routes`]) builds
//! both the axum router and the OpenAPI document, so the two cannot drift.

mod acl;
mod agent_client;
pub mod error;
mod events;
mod exec_session;
pub mod extract;
pub(crate) mod handlers;
mod join;
mod namespaces;
pub mod peer;
mod registry;

use crate::acl::AuthClass;
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
    /// An ACL policy: JSON or TOML.
    Policy,
}

/// One route.
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path in axum syntax (`{id}`, `{*rest}`).
    pub path: &'static str,
    /// Who may call it; checked by [`crate::acl::guard`] before the handler.
    pub auth: AuthClass,
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

#[allow(clippy::too_many_arguments)]
fn r(
    method: &'static str,
    path: &'static str,
    auth: AuthClass,
    summary: &'static str,
    body: BodyKind,
    query: &'static [(&'static str, &'static str)],
    response: &'static str,
    handler: MethodRouter<AppState>,
) -> Route {
    Route {
        method,
        path,
        auth,
        summary,
        body,
        query,
        response,
        handler,
    }
}

const NS: &[(&str, &str)] = &[("namespace", "job namespace (default: default)")];

/// Every route of the API, with its auth class.
pub fn routes() -> Vec<Route> {
    use crate::acl::AuthClass::{
        Agent, AnyToken, Bootstrap, Management, Namespace as InNs, Node as N, Operator as Op,
        Scoped,
    };
    use handlers as h;
    use taba_types::acl::Access::{Read as R, Write as W};
    use taba_types::acl::Capability::{Exec, Read, Write};
    use BodyKind::*;
    vec![
        r("GET", "/v1/jobs", Scoped(Read), "List jobs (those in namespaces the token may read)", None, NS, "JobListEntry[]", get(h::list_jobs)),
        r("POST", "/v1/jobs", Scoped(Write), "Register a job (JSON JobSpec, or TOML with Content-Type application/toml); `host` is needed to name a user for an exec task", Job, &[], "RegisterJobResponse", post(h::register_job)),
        r("POST", "/v1/job-plan", Scoped(Write), "What `job run` of a job (TOML or JSON, as for POST /v1/jobs) would do to its versions, without doing it: a changed spec, or an image tag that now resolves to another digest in its registry", Job, &[], "JobPlanResponse", post(h::plan_job)),
        r("GET", "/v1/jobs/{name}", InNs(Read), "The job's current version", None, NS, "Job", get(h::get_job)),
        r("DELETE", "/v1/jobs/{name}", InNs(Write), "Stop a job", None, NS, "EvalResponse", delete(h::stop_job)),
        r("GET", "/v1/jobs/{name}/status", InNs(Read), "Job status with allocations and placement failures", None, NS, "JobStatusResponse", get(h::job_status)),
        r("GET", "/v1/jobs/{name}/versions", InNs(Read), "Every version of a job, newest first", None, NS, "JobHistory", get(h::job_history)),
        r("GET", "/v1/allocations", Scoped(Read), "List allocations (those in namespaces the token may read)", None, &[], "AllocListEntry[]", get(h::list_allocs)),
        r("GET", "/v1/allocations/{id}", Scoped(Read), "An allocation by id or unique id prefix", None, &[], "AllocDetail", get(h::get_alloc)),
        r("POST", "/v1/allocations/{id}/stop", Scoped(Write), "Stop an allocation (a replacement is placed)", None, &[], "EvalResponse", post(h::stop_alloc)),
        r("POST", "/v1/allocations/{id}/migrate", Scoped(Write), "Move an allocation to another node: live where its driver migrates running workloads (VMs), else a restart on the target", Json("MigrateAllocRequest"), &[], "MigrateAllocResponse", post(h::migrate_alloc)),
        r("GET", "/v1/allocations/{id}/logs", Scoped(Read), "Stream a task's stdout or stderr (proxied to the node's agent)", None,
          &[("task", "task name (optional when the group has one task)"), ("type", "stdout or stderr"), ("follow", "keep streaming new output"), ("offset", "start at this byte")],
          "application/octet-stream", get(h::alloc_logs)),
        r("POST", "/v1/allocations/{id}/exec", Scoped(Exec), "Run a command in a task and return its exit code and output (proxied to the node's agent; recorded in the allocation's events)", Json("ExecRequest"),
          &[("task", "task name (optional when the group has one task)")], "ExecResponse", post(h::alloc_exec)),
        r("GET", "/v1/allocations/{id}/exec", Scoped(Exec), "Run a command in a task interactively over a WebSocket: stdin, stdout and stderr streamed, a tty on request, the exit code last (proxied to the node's agent; recorded in the allocation's events)", None,
          &[("command", "JSON array: program and arguments"), ("task", "task name (optional when the group has one task)"), ("stdin", "pass stdin through"), ("tty", "run in a pseudo-terminal"), ("user", "run as this user of the container")],
          "websocket", get(exec_session::alloc_exec_session)),
        r("GET", "/v1/allocations/{id}/console", Scoped(Exec), "Attach to a VM task's serial console over a WebSocket (the console stays in the logs too; recorded in the allocation's events)", None,
          &[("task", "task name (optional when the group has one task)")], "websocket", get(exec_session::alloc_console_session)),
        r("GET", "/v1/nodes", N(R), "List nodes", None, &[], "NodeListEntry[]", get(h::list_nodes)),
        r("GET", "/v1/nodes/{node}", N(R), "A node by id, id prefix or name, with its allocations (those the token may read)", None, &[], "NodeDetail", get(h::get_node)),
        r("DELETE", "/v1/nodes/{node}", N(W), "Remove a node (409 while it is not down and has allocations, unless force=true: they are lost and replaced)", None,
          &[("force", "true: remove even a live node with allocations")], "RemoveNodeResponse", delete(h::remove_node)),
        r("POST", "/v1/nodes/{node}/eligibility", N(W), "Allow or forbid new placements on a node", Json("EligibilityRequest"), &[], "NodeDetail", post(h::node_eligibility)),
        r("GET", "/v1/nodes/{node}/drain", N(R), "What the node's drain has left to do, per task group", None, &[], "DrainStatus", get(h::drain_status)),
        r("POST", "/v1/nodes/{node}/drain", N(W), "Drain a node (JSON DrainRequest: deadline, ignore_system), or cancel its drain (disable)", Json("DrainRequest"), &[], "DrainStatus", post(h::drain_node)),
        r("GET", "/v1/images", AnyToken, "List images", None, &[], "ImageInfo[]", get(h::list_images)),
        r("POST", "/v1/images", Op(W), "Import a docker-save or OCI-layout tar (the request body), every image it holds", Tar, &[], "ImportResponse", post(h::import_image)),
        r("GET", "/v1/images/{*reference}", AnyToken, "An image by reference or id, with its run config (user, workdir, volumes, stop signal, healthcheck...)", None, &[], "ImageDetail", get(h::inspect_image)),
        r("DELETE", "/v1/images", Op(W), "Prune: remove every image no job version names and no container uses", None, &[], "PruneResponse", delete(h::prune_images)),
        r("DELETE", "/v1/images/{*reference}", Op(W), "Remove an image by reference or id", None, &[], "ImageInfo", delete(h::remove_image)),
        r("PUT", "/v1/images/{*reference}", Op(W), "Tag: name the image of `source` (JSON TagRequest) `reference` too", Json("TagRequest"), &[], "ImageInfo", put(h::tag_image)),
        r("POST", "/v1/registry/pull", Op(W), "Pull an image from its registry into the server's image store; replies with progress as newline-delimited JSON PullEvents, the last `done` or `error`", Json("PullRequest"), &[], "application/x-ndjson", post(registry::pull)),
        r("POST", "/v1/registry/push", Op(W), "Push an image of the server's store to a registry (JSON PushRequest: reference, source), same digests as imported or pulled; progress as for a pull, the last line `pushed` or `error`", Json("PushRequest"), &[], "application/x-ndjson", post(registry::push)),
        r("POST", "/v1/image-save", Op(R), "An image of the server's store as a tar (JSON SaveRequest: reference, format oci-archive | docker-archive), streamed", Json("SaveRequest"), &[], "application/x-tar", post(registry::save)),
        r("POST", "/v1/registry/login", Op(W), "Check credentials with a registry and keep them (0600) for the server's pulls", Json("RegistryLoginRequest"), &[], "RegistryLoginResponse", post(registry::login)),
        r("POST", "/v1/registry/logout", Op(W), "Forget the server's credentials for a registry (JSON {registry})", Json("LogoutRequest"), &[], "RegistryLoginResponse", post(registry::logout)),
        r("GET", "/v1/namespaces", Scoped(Read), "List namespaces with their quota and usage (those the token has rights in, or all with operator read)", None, &[], "NamespaceStatus[]", get(namespaces::list)),
        r("GET", "/v1/namespaces/{name}", Scoped(Read), "A namespace: quota and usage (cpu, memory, live allocations)", None, &[], "NamespaceStatus", get(namespaces::get)),
        r("PUT", "/v1/namespaces/{name}", Op(W), "Create or update a namespace (JSON Namespace: description, quota)", Json("Namespace"), &[], "NamespaceStatus", put(namespaces::put)),
        r("DELETE", "/v1/namespaces/{name}", Op(W), "Remove a namespace (409 while it has jobs that are not stopped)", None, &[], "DeleteNamespaceResponse", delete(namespaces::delete)),
        r("GET", "/v1/evaluations/{id}", Scoped(Read), "An evaluation", None, &[], "Evaluation", get(h::get_eval)),
        r("GET", "/v1/event/stream", Scoped(Read), "Follow committed changes as newline-delimited JSON StreamLines (events, keep-alives, a last `end`); only namespaces the token may read, topic Node needs node read; 410 when `index` is older than the events kept", None,
          &[("topic", "Job, Allocation, Node or Evaluation; repeat for several (default: every topic the token may read)"), ("namespace", "one namespace, or * (default) for every one the token may read"), ("index", "replay the kept events after this index first (default: only new events)")],
          "application/x-ndjson", get(events::stream)),
        r("GET", "/v1/openapi.json", AnyToken, "This document", None, &[], "OpenAPI", get(h::openapi)),
        r("GET", "/v1/metrics", Op(R), "Prometheus metrics of this server (OpenMetrics text)", None, &[], "application/openmetrics-text", get(h::metrics)),
        r("POST", "/v1/acl/bootstrap", Bootstrap, "Issue the first management token (once; 409 afterwards)", None, &[], "AclTokenCreated", post(acl::bootstrap)),
        r("GET", "/v1/acl/policies", Management, "List ACL policies", None, &[], "AclPolicy[]", get(acl::list_policies)),
        r("GET", "/v1/acl/policies/{name}", Management, "An ACL policy", None, &[], "AclPolicy", get(acl::get_policy)),
        r("PUT", "/v1/acl/policies/{name}", Management, "Create or replace an ACL policy (TOML with Content-Type application/toml, or JSON AclPolicy)", Policy, &[], "AclPolicy", put(acl::put_policy)),
        r("DELETE", "/v1/acl/policies/{name}", Management, "Remove an ACL policy (tokens naming it lose its rights)", None, &[], "AclDeleteResponse", delete(acl::delete_policy)),
        r("GET", "/v1/acl/tokens", Management, "List ACL tokens (never their secrets)", None, &[], "AclTokenInfo[]", get(acl::list_tokens)),
        r("POST", "/v1/acl/tokens", Management, "Create an ACL token; its secret is in this reply only", Json("CreateTokenRequest"), &[], "AclTokenCreated", post(acl::create_token)),
        r("DELETE", "/v1/acl/tokens/{accessor}", Management, "Revoke an ACL token by accessor id or unique prefix", None, &[], "AclDeleteResponse", delete(acl::revoke_token)),
        r("GET", "/v1/acl/token/self", AnyToken, "The calling token", None, &[], "AclTokenInfo", get(acl::token_self)),
        r("POST", "/v1/agent/register", Agent, "Agent: register a node", Json("RegisterRequest"), &[], "RegisterResponse", post(h::agent_register)),
        r("POST", "/v1/agent/heartbeat", Agent, "Agent: heartbeat", Json("HeartbeatRequest"), &[], "HeartbeatResponse", post(h::agent_heartbeat)),
        r("GET", "/v1/agent/allocations/{node_id}", Agent, "Agent: the node's allocations; blocks until they change past `index`", None,
          &[("index", "return when the allocations change past this index"), ("wait", "longest wait, e.g. 30s")],
          "NodeAllocations", get(h::agent_allocations)),
        r("POST", "/v1/agent/allocations", Agent, "Agent: allocation status updates", Json("AllocUpdateRequest"), &[], "AllocUpdateResponse", post(h::agent_update_allocs)),
        r("GET", "/v1/agent/images/manifests/{*reference}", Agent, "Agent: what an image is made of (config and layer blobs with digests and sizes)", None,
          &[("node_id", "the asking node (its credential is checked)")], "ImageManifest", get(h::agent_image_manifest)),
        r("GET", "/v1/agent/images/blobs/{digest}", Agent, "Agent: one image blob by digest (sha256:<hex>), streamed", None,
          &[("node_id", "the asking node (its credential is checked)")], "application/octet-stream", get(h::agent_image_blob)),
        r("POST", "/v1/agent/join", Agent, "Agent: exchange a join token for an agent certificate (TLS) or a node secret", Json("JoinRequest"), &[], "JoinResponse", post(join::agent_join)),
        r("POST", "/v1/nodes/tokens", N(W), "Create a join token for new agents (shown once)", Json("JoinTokenRequest"), &[], "JoinTokenResponse", post(join::create_token)),
        r("POST", "/v1/tls/revoke", Op(W), "Revoke a certificate by fingerprint or the one a node registered with", Json("RevokeCertRequest"), &[], "RevokeCertResponse", post(join::revoke_cert)),
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
            "x-taba-auth": rt.auth.describe(),
            "responses": {
                "200": {"description": rt.response},
                "401": {"description": "no token, or an unknown, revoked or expired one"},
                "403": {"description": "the token lacks the right"},
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
            BodyKind::Policy => Some(json!({"required": true, "content": {
                "application/json": {"schema": {"description": "AclPolicy"}},
                "application/toml": {"schema": {"description": "policy file"}}}})),
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
        state: state.clone(),
        agents: Arc::new(AgentClients::new(tls)),
        openapi,
    };
    let mut router = Router::new();
    for rt in table {
        let guard =
            axum::middleware::from_fn_with_state((state.clone(), rt.auth), crate::acl::guard);
        router = router.route(rt.path, rt.handler.route_layer(guard));
    }
    let api = router
        .fallback(handlers::no_route)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .with_state(app.clone());
    // The web UI calls `api` in process (after its request passed the gate).
    let ui = crate::ui::router(app.clone(), api.clone());
    Ok(api
        .merge(ui)
        .layer(axum::middleware::from_fn_with_state(app, peer::tls_gate)))
}

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
pub mod openapi;
pub mod peer;
pub mod query;
mod registry;
mod strict;

use crate::acl::AuthClass;
use crate::state::ServerState;
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::Router;
use schemars::gen::SchemaGenerator;
use schemars::schema::Schema;
use schemars::JsonSchema;
use serde_json::Value;
use std::sync::Arc;

pub use agent_client::AgentClients;
pub use error::ApiError;
pub use openapi::openapi_document;
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

/// A function that writes a type's JSON Schema into the document's
/// generator (and returns a reference to it): [`s::<T>`](s).
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// The schema of `T`, for the route table.
pub fn s<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// What a route reads.
#[derive(Clone, Copy)]
pub enum BodyKind {
    /// No body.
    None,
    /// JSON of this schema.
    Json(SchemaFn),
    /// JSON of this schema, or no body at all (the defaults).
    OptionalJson(SchemaFn),
    /// A job: JSON (`JobSpec`) or TOML.
    Job,
    /// A tar archive.
    Tar,
    /// An ACL policy: JSON (`AclPolicy`) or TOML.
    Policy,
}

/// What a route answers with on success.
#[derive(Clone, Copy)]
pub enum Reply {
    /// JSON of this schema.
    Json(SchemaFn),
    /// A stream or document of this content type.
    Raw(&'static str),
    /// A WebSocket session (101).
    WebSocket,
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
    /// The query parameters: a struct whose fields are the parameters (the
    /// one the handler decodes). Any other parameter is refused (400,
    /// `unknown_parameter`) before the handler runs.
    pub query: Option<SchemaFn>,
    /// Success reply.
    pub reply: Reply,
    /// A list: `per_page` and `next_token` in the query, the next page's
    /// token in the `X-Taba-NextToken` header.
    pub paged: bool,
    /// A read that takes the blocking-query parameters `index` and `wait`
    /// and answers with `X-Taba-Index` ([`blocking`]).
    pub blocking: bool,
    handler: MethodRouter<AppState>,
}

impl Route {
    /// Mark a read as a blocking query.
    fn blocking(mut self) -> Self {
        self.blocking = true;
        self
    }
    /// Mark a list as paged (and so a blocking query).
    fn paged(mut self) -> Self {
        self.paged = true;
        self.blocking = true;
        self
    }
}

#[allow(clippy::too_many_arguments)]
fn r(
    method: &'static str,
    path: &'static str,
    auth: AuthClass,
    summary: &'static str,
    body: BodyKind,
    query: Option<SchemaFn>,
    reply: Reply,
    handler: MethodRouter<AppState>,
) -> Route {
    Route {
        method,
        path,
        auth,
        summary,
        body,
        query,
        reply,
        paged: false,
        blocking: false,
        handler,
    }
}

/// Every route of the API, with its auth class.
pub fn routes() -> Vec<Route> {
    use crate::acl::AuthClass::{
        Agent, AnyToken, Bootstrap, Management, Namespace as InNs, Node as N, Operator as Op,
        Scoped,
    };
    use handlers as h;
    use query as q;
    use taba_types::acl::Access::{Read as R, Write as W};
    use taba_types::acl::AclPolicy;
    use taba_types::acl::Capability::{Exec, Read, Write};
    use taba_types::api::*;
    use taba_types::wire::*;
    use taba_types::{Evaluation, Job, Namespace};
    use BodyKind::{Job as JobBody, Json as J, None as NoBody, Policy, Tar};
    use Reply::{Json as Js, Raw, WebSocket};
    let nsq = Some(s::<q::NsQuery> as SchemaFn);
    let list = Some(s::<q::ListQuery> as SchemaFn);
    let page = Some(s::<q::PageQuery> as SchemaFn);
    vec![
        r("GET", "/v1/jobs", Scoped(Read), "List jobs (those in namespaces the token may read)", NoBody, list, Js(s::<Vec<JobListEntry>>), get(h::list_jobs)).paged(),
        r("POST", "/v1/jobs", Scoped(Write), "Register a job (JSON JobSpec, or TOML with Content-Type application/toml); `host` is needed to name a user for an exec task; with `check_index` only if the job's modify index is that (0: only a new job), else 409 index_mismatch", JobBody, Some(s::<q::RegisterQuery>), Js(s::<RegisterJobResponse>), post(h::register_job)),
        r("POST", "/v1/job-plan", Scoped(Write), "What `job run` of a job (TOML or JSON, as for POST /v1/jobs) would do to its versions, without doing it: a changed spec, or an image tag that now resolves to another digest in its registry", JobBody, None, Js(s::<JobPlanResponse>), post(h::plan_job)),
        r("GET", "/v1/jobs/{name}", InNs(Read), "The job's current version", NoBody, nsq, Js(s::<Job>), get(h::get_job)).blocking(),
        r("DELETE", "/v1/jobs/{name}", InNs(Write), "Stop a job", NoBody, nsq, Js(s::<EvalResponse>), delete(h::stop_job)),
        r("GET", "/v1/jobs/{name}/status", InNs(Read), "Job status with allocations and placement failures", NoBody, nsq, Js(s::<JobStatusResponse>), get(h::job_status)).blocking(),
        r("GET", "/v1/jobs/{name}/versions", InNs(Read), "Every version of a job, newest first", NoBody, nsq, Js(s::<JobHistory>), get(h::job_history)).blocking(),
        r("GET", "/v1/allocations", Scoped(Read), "List allocations (those in namespaces the token may read), newest first", NoBody, list, Js(s::<Vec<AllocListEntry>>), get(h::list_allocs)).paged(),
        r("GET", "/v1/allocations/{id}", Scoped(Read), "An allocation by id or unique id prefix", NoBody, None, Js(s::<AllocDetail>), get(h::get_alloc)).blocking(),
        r("POST", "/v1/allocations/{id}/stop", Scoped(Write), "Stop an allocation (its full id; a replacement is placed)", NoBody, None, Js(s::<EvalResponse>), post(h::stop_alloc)),
        r("POST", "/v1/allocations/{id}/migrate", Scoped(Write), "Move an allocation (its full id) to another node: live where its driver migrates running workloads (VMs), else a restart on the target", BodyKind::OptionalJson(s::<MigrateAllocRequest>), None, Js(s::<MigrateAllocResponse>), post(h::migrate_alloc)),
        r("POST", "/v1/allocations/{id}/migrate/cancel", Scoped(Write), "Cancel the live migration of an allocation (its source or target full id): the source runs on where it was, the target is stopped; a move not started yet is withdrawn", NoBody, None, Js(s::<CancelMigrationResponse>), post(h::cancel_migration)),
        r("GET", "/v1/allocations/{id}/logs", Scoped(Read), "Stream a task's stdout or stderr (proxied to the node's agent)", NoBody, Some(s::<h::LogsQuery>), Raw("application/octet-stream"), get(h::alloc_logs)),
        r("POST", "/v1/allocations/{id}/exec", Scoped(Exec), "Run a command in a task (allocation by full id) and return its exit code and output (proxied to the node's agent; recorded in the allocation's events)", J(s::<ExecRequest>), Some(s::<h::ExecQuery>), Js(s::<ExecResponse>), post(h::alloc_exec)),
        r("GET", "/v1/allocations/{id}/exec", Scoped(Exec), "Run a command in a task (allocation by full id) interactively over a WebSocket: stdin, stdout and stderr streamed, a tty on request, the exit code last (proxied to the node's agent; recorded in the allocation's events)", NoBody, Some(s::<ExecSessionQuery>), WebSocket, get(crate::api::exec_session::alloc_exec_session)),
        r("GET", "/v1/allocations/{id}/console", Scoped(Exec), "Attach to a VM task's serial console (allocation by full id) over a WebSocket (the console stays in the logs too; recorded in the allocation's events)", NoBody, Some(s::<crate::api::exec_session::ConsoleQuery>), WebSocket, get(crate::api::exec_session::alloc_console_session)),
        r("GET", "/v1/nodes", N(R), "List nodes", NoBody, page, Js(s::<Vec<NodeListEntry>>), get(h::list_nodes)).paged(),
        r("GET", "/v1/nodes/{node}", N(R), "A node by id, id prefix or name, with its allocations (those the token may read)", NoBody, None, Js(s::<NodeDetail>), get(h::get_node)).blocking(),
        r("DELETE", "/v1/nodes/{node}", N(W), "Remove a node by full id or name (409 while it is not down and has allocations, unless force=true: they are lost and replaced)", NoBody, Some(s::<h::RemoveNodeQuery>), Js(s::<RemoveNodeResponse>), delete(h::remove_node)),
        r("POST", "/v1/nodes/{node}/eligibility", N(W), "Allow or forbid new placements on a node (full id or name)", J(s::<EligibilityRequest>), None, Js(s::<NodeDetail>), post(h::node_eligibility)),
        r("GET", "/v1/nodes/{node}/drain", N(R), "What the node's drain has left to do, per task group", NoBody, None, Js(s::<DrainStatus>), get(h::drain_status)).blocking(),
        r("POST", "/v1/nodes/{node}/drain", N(W), "Drain a node by full id or name (JSON DrainRequest: deadline, ignore_system), or cancel its drain (disable)", J(s::<DrainRequest>), None, Js(s::<DrainStatus>), post(h::drain_node)),
        r("GET", "/v1/images", AnyToken, "List images", NoBody, page, Js(s::<Vec<ImageInfo>>), get(h::list_images)).paged(),
        r("POST", "/v1/images", Op(W), "Import a docker-save or OCI-layout tar (the request body), every image it holds; with ?disk=NAME[&format=qcow2|raw] a VM disk image", Tar, Some(s::<ImportQuery>), Js(s::<ImportResponse>), post(h::import_image)),
        r("GET", "/v1/images/{*reference}", AnyToken, "An image by reference or id, with its run config (user, workdir, volumes, stop signal, healthcheck...)", NoBody, None, Js(s::<ImageDetail>), get(h::inspect_image)).blocking(),
        r("DELETE", "/v1/images", Op(W), "Prune: remove every image no job version names and no container uses", NoBody, None, Js(s::<PruneResponse>), delete(h::prune_images)),
        r("DELETE", "/v1/images/{*reference}", Op(W), "Remove an image by reference or id", NoBody, None, Js(s::<ImageInfo>), delete(h::remove_image)),
        r("PUT", "/v1/images/{*reference}", Op(W), "Tag: name the image of `source` (JSON TagRequest) `reference` too", J(s::<TagRequest>), None, Js(s::<ImageInfo>), put(h::tag_image)),
        r("POST", "/v1/registry/pull", Op(W), "Pull an image from its registry into the server's image store; replies with progress as newline-delimited JSON PullEvents, the last `done` or `error`", J(s::<PullRequest>), None, Raw("application/x-ndjson"), post(registry::pull)),
        r("POST", "/v1/registry/push", Op(W), "Push an image of the server's store to a registry (JSON PushRequest: reference, source), same digests as imported or pulled; progress as for a pull, the last line `pushed` or `error`", J(s::<PushRequest>), None, Raw("application/x-ndjson"), post(registry::push)),
        r("POST", "/v1/image-save", Op(R), "An image of the server's store as a tar (JSON SaveRequest: reference, format oci-archive | docker-archive), streamed", J(s::<SaveRequest>), None, Raw("application/x-tar"), post(registry::save)),
        r("POST", "/v1/registry/login", Op(W), "Check credentials with a registry and keep them (0600) for the server's pulls", J(s::<RegistryLoginRequest>), None, Js(s::<RegistryLoginResponse>), post(registry::login)),
        r("POST", "/v1/registry/logout", Op(W), "Forget the server's credentials for a registry (JSON {registry})", J(s::<registry::LogoutRequest>), None, Js(s::<RegistryLoginResponse>), post(registry::logout)),
        r("GET", "/v1/namespaces", Scoped(Read), "List namespaces with their quota and usage (those the token has rights in, or all with operator read)", NoBody, page, Js(s::<Vec<NamespaceStatus>>), get(namespaces::list)).paged(),
        r("GET", "/v1/namespaces/{name}", Scoped(Read), "A namespace: quota and usage (cpu, memory, live allocations)", NoBody, None, Js(s::<NamespaceStatus>), get(namespaces::get)).blocking(),
        r("PUT", "/v1/namespaces/{name}", Op(W), "Create or update a namespace (JSON Namespace: description, quota)", J(s::<Namespace>), None, Js(s::<NamespaceStatus>), put(namespaces::put)),
        r("DELETE", "/v1/namespaces/{name}", Op(W), "Remove a namespace (409 while it has jobs that are not stopped)", NoBody, None, Js(s::<DeleteNamespaceResponse>), delete(namespaces::delete)),
        r("GET", "/v1/evaluations", Scoped(Read), "List evaluations (those in namespaces the token may read), newest first", NoBody, list, Js(s::<Vec<Evaluation>>), get(h::list_evals)).paged(),
        r("GET", "/v1/evaluations/{id}", Scoped(Read), "An evaluation", NoBody, None, Js(s::<Evaluation>), get(h::get_eval)).blocking(),
        r("GET", "/v1/event/stream", Scoped(Read), "Follow committed changes as newline-delimited JSON StreamLines (events, keep-alives, a last `end`); only namespaces the token may read, topic Node needs node read; 410 when `index` is older than the events kept", NoBody, Some(s::<crate::api::events::StreamParams>), Raw("application/x-ndjson"), get(crate::api::events::stream)),
        r("GET", "/v1/openapi.json", AnyToken, "This document", NoBody, None, Raw("application/json"), get(h::openapi)),
        r("GET", "/v1/metrics", Op(R), "Prometheus metrics of this server (OpenMetrics text)", NoBody, None, Raw("application/openmetrics-text"), get(h::metrics)),
        r("POST", "/v1/acl/bootstrap", Bootstrap, "Issue the first management token (once; 409 afterwards)", NoBody, None, Js(s::<AclTokenCreated>), post(acl::bootstrap)),
        r("GET", "/v1/acl/policies", Management, "List ACL policies", NoBody, page, Js(s::<Vec<AclPolicy>>), get(acl::list_policies)).paged(),
        r("GET", "/v1/acl/policies/{name}", Management, "An ACL policy", NoBody, None, Js(s::<AclPolicy>), get(acl::get_policy)).blocking(),
        r("PUT", "/v1/acl/policies/{name}", Management, "Create or replace an ACL policy (TOML with Content-Type application/toml, or JSON AclPolicy)", Policy, None, Js(s::<AclPolicy>), put(acl::put_policy)),
        r("DELETE", "/v1/acl/policies/{name}", Management, "Remove an ACL policy (tokens naming it lose its rights)", NoBody, None, Js(s::<AclDeleteResponse>), delete(acl::delete_policy)),
        r("GET", "/v1/acl/tokens", Management, "List ACL tokens (never their secrets)", NoBody, page, Js(s::<Vec<AclTokenInfo>>), get(acl::list_tokens)).paged(),
        r("POST", "/v1/acl/tokens", Management, "Create an ACL token; its secret is in this reply only", J(s::<CreateTokenRequest>), None, Js(s::<AclTokenCreated>), post(acl::create_token)),
        r("DELETE", "/v1/acl/tokens/{accessor}", Management, "Revoke an ACL token by its full accessor id", NoBody, None, Js(s::<AclDeleteResponse>), delete(acl::revoke_token)),
        r("GET", "/v1/acl/token/self", AnyToken, "The calling token", NoBody, None, Js(s::<AclTokenInfo>), get(acl::token_self)),
        r("POST", "/v1/agent/register", Agent, "Agent: register a node", J(s::<RegisterRequest>), None, Js(s::<RegisterResponse>), post(h::agent_register)),
        r("POST", "/v1/agent/heartbeat", Agent, "Agent: heartbeat", J(s::<HeartbeatRequest>), None, Js(s::<HeartbeatResponse>), post(h::agent_heartbeat)),
        r("GET", "/v1/agent/allocations/{node_id}", Agent, "Agent: the node's allocations; blocks until they change past `index`", NoBody, Some(s::<h::BlockingQuery>), Js(s::<NodeAllocations>), get(h::agent_allocations)),
        r("POST", "/v1/agent/allocations", Agent, "Agent: allocation status updates", J(s::<AllocUpdateRequest>), None, Js(s::<AllocUpdateResponse>), post(h::agent_update_allocs)),
        r("GET", "/v1/agent/images/manifests/{*reference}", Agent, "Agent: what an image is made of (config and layer blobs with digests and sizes)", NoBody, Some(s::<h::NodeQuery>), Js(s::<ImageManifest>), get(h::agent_image_manifest)),
        r("GET", "/v1/agent/images/blobs/{digest}", Agent, "Agent: one image blob by digest (sha256:<hex>), streamed", NoBody, Some(s::<h::NodeQuery>), Raw("application/octet-stream"), get(h::agent_image_blob)),
        r("POST", "/v1/agent/join", Agent, "Agent: exchange a join token for an agent certificate (TLS) or a node secret", J(s::<JoinRequest>), None, Js(s::<JoinResponse>), post(join::agent_join)),
        r("POST", "/v1/nodes/tokens", N(W), "Create a join token for new agents (shown once)", BodyKind::OptionalJson(s::<JoinTokenRequest>), None, Js(s::<JoinTokenResponse>), post(join::create_token)),
        r("POST", "/v1/tls/revoke", Op(W), "Revoke a certificate by fingerprint or the one a node registered with", J(s::<RevokeCertRequest>), None, Js(s::<RevokeCertResponse>), post(join::revoke_cert)),
    ]
}

/// The OpenAPI path of an axum path: `{*rest}` becomes `{rest}`.
pub fn openapi_path(path: &str) -> String {
    path.replace("{*", "{")
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
        let gate = Arc::new(query::Gate {
            allowed: rt
                .query
                .map(|q| query::parameter_names(&openapi::query_schema(q)))
                .unwrap_or_default(),
            blocking: rt.blocking,
            state: state.clone(),
        });
        let gate = axum::middleware::from_fn_with_state(gate, query::gate);
        // The guard runs first: a caller without rights learns nothing.
        router = router.route(rt.path, rt.handler.route_layer(gate).route_layer(guard));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn documented(doc: &Value) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for method in ops.as_object().unwrap().keys() {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
        out
    }

    /// Every route of the table is in the document and nothing else is;
    /// every operation has a typed success reply, declares its errors, and
    /// every schema it names exists.
    #[test]
    fn document_has_every_route_with_schemas() {
        let table = routes();
        let doc = openapi_document(&table);
        let want: BTreeSet<(String, String)> = table
            .iter()
            .map(|r| (r.method.to_owned(), openapi_path(r.path)))
            .collect();
        assert_eq!(want.len(), table.len(), "a route is in the table twice");
        assert_eq!(documented(&doc), want);
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let mut ids = BTreeSet::new();
        for rt in &table {
            let op = &doc["paths"][openapi_path(rt.path)][rt.method.to_lowercase()];
            let what = format!("{} {}", rt.method, rt.path);
            assert!(
                ids.insert(op["operationId"].as_str().unwrap().to_owned()),
                "{what}"
            );
            let responses = op["responses"].as_object().unwrap();
            for err in ["4XX", "5XX"] {
                assert_eq!(
                    responses[err]["$ref"], "#/components/responses/Error",
                    "{what}"
                );
            }
            let ok = responses
                .iter()
                .find(|(k, _)| k.starts_with('2') || *k == "101")
                .unwrap_or_else(|| panic!("{what}: no success reply"))
                .1;
            if let Reply::Json(_) = rt.reply {
                let schema = &ok["content"]["application/json"]["schema"];
                assert!(
                    schema.get("$ref").or(schema.get("type")).is_some(),
                    "{what}: {schema}"
                );
            }
            if let BodyKind::Json(_) | BodyKind::OptionalJson(_) = rt.body {
                let schema = &op["requestBody"]["content"]["application/json"]["schema"];
                assert!(
                    schema.get("$ref").or(schema.get("type")).is_some(),
                    "{what}: {schema}"
                );
            }
            for p in op["parameters"].as_array().unwrap() {
                assert!(p["schema"].is_object(), "{what}: {p}");
            }
        }
        // Every reference resolves.
        let text = doc.to_string();
        for part in text.split("\"#/components/schemas/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(schemas.contains_key(name), "dangling reference to {name}");
        }
        let codes = schemas["ErrorCode"].to_string();
        for code in [
            "invalid_field",
            "not_found",
            "index_mismatch",
            "leader_unavailable",
        ] {
            assert!(codes.contains(&format!("\"{code}\"")), "{code}");
        }
    }

    /// Parameters carry their real types.
    #[test]
    fn parameters_are_typed() {
        let doc = openapi_document(&routes());
        let param = |path: &str, method: &str, name: &str| -> Value {
            doc["paths"][path][method]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{method} {path} has no {name}"))
                .clone()
        };
        assert_eq!(
            param("/v1/jobs", "get", "index")["schema"]["type"],
            "integer"
        );
        assert_eq!(
            param("/v1/jobs", "get", "per_page")["schema"]["type"],
            "integer"
        );
        assert_eq!(
            param("/v1/jobs/{name}", "get", "wait")["schema"]["anyOf"][1]["type"],
            "integer"
        );
        let logs = "/v1/allocations/{id}/logs";
        assert_eq!(param(logs, "get", "follow")["schema"]["type"], "boolean");
        assert_eq!(param(logs, "get", "offset")["schema"]["type"], "integer");
        assert_eq!(
            param(logs, "get", "type")["schema"]["oneOf"][1]["enum"][0],
            "stderr"
        );
        assert_eq!(
            param("/v1/jobs", "post", "check_index")["schema"]["type"],
            "integer"
        );
        assert_eq!(
            param("/v1/nodes/{node}", "delete", "force")["schema"]["type"],
            "boolean"
        );
    }

    /// `docs/openapi.json` is this document (clients are generated from it).
    /// `TABA_WRITE_OPENAPI=1` rewrites it.
    #[test]
    fn docs_copy_is_current() {
        let doc = openapi_document(&routes());
        let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        if std::env::var_os("TABA_WRITE_OPENAPI").is_some() {
            std::fs::write(path, &text).unwrap();
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == text,
            "docs/openapi.json is stale: run TABA_WRITE_OPENAPI=1 cargo test -p taba-server --lib docs_copy_is_current"
        );
    }
}

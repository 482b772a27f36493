//! The blocking client over `ureq`. One method per route; all JSON in and out
//! except job files (TOML), image tars and log streams.

use crate::api::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::Read;
use std::time::Duration;
use taba_types::wire::{
    AllocUpdateRequest, HeartbeatRequest, HeartbeatResponse, NodeAllocations, RegisterRequest,
    RegisterResponse,
};
use taba_types::{Evaluation, Job, JobSpec, Namespace, NodeId};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{}", api_message(.message, .field))]
    Api {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
        /// The field the server blames.
        field: Option<String>,
    },
    /// The server could not be reached.
    #[error("cannot reach the taba server at {addr}")]
    Transport {
        /// The address tried.
        addr: String,
        /// Why.
        #[source]
        source: Box<ureq::Transport>,
    },
    /// The reply could not be read or decoded.
    #[error("unreadable reply from the server")]
    Decode(#[source] std::io::Error),
    /// A local input could not be read.
    #[error("cannot read {what}")]
    Input {
        /// What was being read.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn api_message(message: &str, field: &Option<String>) -> String {
    match field {
        Some(f) if !message.contains(f.as_str()) => format!("{f}: {message}"),
        _ => message.to_string(),
    }
}

impl ClientError {
    /// The HTTP status, for API errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
    /// The blamed field, for API errors.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Api { field, .. } => field.as_deref(),
            _ => None,
        }
    }
}

/// A raw reply (status and body), for tests that send arbitrary bytes.
#[derive(Clone, Debug)]
pub struct RawResponse {
    /// HTTP status.
    pub status: u16,
    /// Content type.
    pub content_type: String,
    /// Body.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The body as an error reply, if it is one.
    pub fn error(&self) -> Option<ErrorDetail> {
        serde_json::from_slice::<ErrorBody>(&self.body)
            .ok()
            .map(|b| b.error)
    }
}

/// A streamed log (or any streamed body).
pub struct LogStream(Box<dyn Read + Send + Sync + 'static>);

impl Read for LogStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

/// A blocking API client.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
    streaming: ureq::Agent,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish()
    }
}

/// Escape a path segment (ids, names and image references).
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// A client for the server at `addr` (`http://host:port` or `host:port`).
    pub fn new(addr: &str, token: Option<String>) -> Self {
        let addr = addr.trim().trim_end_matches('/');
        let base = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout_read(Duration::from_secs(120))
            .timeout_write(Duration::from_secs(120))
            .build();
        let streaming = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .build();
        Self {
            base,
            token,
            agent,
            streaming,
        }
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn req(&self, method: &str, path: &str) -> ureq::Request {
        self.req_with(&self.agent, method, path)
    }

    fn req_with(&self, agent: &ureq::Agent, method: &str, path: &str) -> ureq::Request {
        let mut r = agent.request(method, &format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            r = r.set("Authorization", &format!("Bearer {t}"));
        }
        r
    }

    fn finish(
        &self,
        res: Result<ureq::Response, ureq::Error>,
    ) -> Result<ureq::Response, ClientError> {
        match res {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(status, resp)) => {
                let mut body = Vec::new();
                let _ = resp.into_reader().take(1 << 20).read_to_end(&mut body);
                let (message, field) = match serde_json::from_slice::<ErrorBody>(&body) {
                    Ok(b) => (b.error.message, b.error.field),
                    Err(_) => (
                        format!(
                            "server answered {status}: {}",
                            String::from_utf8_lossy(&body).trim()
                        ),
                        None,
                    ),
                };
                Err(ClientError::Api {
                    status,
                    message,
                    field,
                })
            }
            Err(ureq::Error::Transport(t)) => Err(ClientError::Transport {
                addr: self.base.clone(),
                source: Box::new(t),
            }),
        }
    }

    fn json<T: DeserializeOwned>(resp: ureq::Response) -> Result<T, ClientError> {
        let mut body = Vec::new();
        resp.into_reader()
            .read_to_end(&mut body)
            .map_err(ClientError::Decode)?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode(e.into()))
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        Self::json(self.finish(self.req("GET", path).call())?)
    }

    fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Decode(e.into()))?;
        Self::json(
            self.finish(
                self.req(method, path)
                    .set("Content-Type", "application/json")
                    .send_bytes(&bytes),
            )?,
        )
    }

    /// Send any bytes to any path; never fails on an HTTP error status.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<RawResponse, ClientError> {
        let mut r = self.req(method, path);
        if let Some(ct) = content_type {
            r = r.set("Content-Type", ct);
        }
        let res = if method == "GET" || method == "DELETE" && body.is_empty() {
            r.call()
        } else {
            r.send_bytes(body)
        };
        let resp = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => {
                return Err(ClientError::Transport {
                    addr: self.base.clone(),
                    source: Box::new(t),
                })
            }
        };
        let status = resp.status();
        let content_type = resp.content_type().to_string();
        let mut body = Vec::new();
        resp.into_reader()
            .read_to_end(&mut body)
            .map_err(ClientError::Decode)?;
        Ok(RawResponse {
            status,
            content_type,
            body,
        })
    }

    // ---- jobs ----

    /// `POST /v1/jobs` with a TOML job file (errors carry line and column).
    pub fn register_job_toml(&self, toml: &[u8]) -> Result<RegisterJobResponse, ClientError> {
        Self::json(
            self.finish(
                self.req("POST", "/v1/jobs")
                    .set("Content-Type", "application/toml")
                    .send_bytes(toml),
            )?,
        )
    }

    /// `POST /v1/jobs` with a JSON spec.
    pub fn register_job(&self, spec: &JobSpec) -> Result<RegisterJobResponse, ClientError> {
        self.send("POST", "/v1/jobs", spec)
    }

    /// `GET /v1/jobs`.
    pub fn list_jobs(&self) -> Result<Vec<JobListEntry>, ClientError> {
        self.get("/v1/jobs")
    }

    /// `GET /v1/jobs/{name}`: the current version.
    pub fn job(&self, name: &str) -> Result<Job, ClientError> {
        self.get(&format!("/v1/jobs/{}", seg(name)))
    }

    /// `GET /v1/jobs/{name}/status`.
    pub fn job_status(&self, name: &str) -> Result<JobStatusResponse, ClientError> {
        self.get(&format!("/v1/jobs/{}/status", seg(name)))
    }

    /// `GET /v1/jobs/{name}/versions`.
    pub fn job_history(&self, name: &str) -> Result<JobHistory, ClientError> {
        self.get(&format!("/v1/jobs/{}/versions", seg(name)))
    }

    /// `DELETE /v1/jobs/{name}`.
    pub fn stop_job(&self, name: &str) -> Result<EvalResponse, ClientError> {
        Self::json(
            self.finish(
                self.req("DELETE", &format!("/v1/jobs/{}", seg(name)))
                    .call(),
            )?,
        )
    }

    /// `GET /v1/jobs/{name}/status?namespace=NS`.
    pub fn job_status_in(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<JobStatusResponse, ClientError> {
        self.get(&format!(
            "/v1/jobs/{}/status?namespace={}",
            seg(name),
            seg(namespace)
        ))
    }

    /// `DELETE /v1/jobs/{name}?namespace=NS`.
    pub fn stop_job_in(&self, namespace: &str, name: &str) -> Result<EvalResponse, ClientError> {
        Self::json(
            self.finish(
                self.req(
                    "DELETE",
                    &format!("/v1/jobs/{}?namespace={}", seg(name), seg(namespace)),
                )
                .call(),
            )?,
        )
    }

    // ---- namespaces ----

    /// `GET /v1/namespaces`.
    pub fn list_namespaces(&self) -> Result<Vec<NamespaceStatus>, ClientError> {
        self.get("/v1/namespaces")
    }

    /// `GET /v1/namespaces/{name}`.
    pub fn namespace(&self, name: &str) -> Result<NamespaceStatus, ClientError> {
        self.get(&format!("/v1/namespaces/{}", seg(name)))
    }

    /// `PUT /v1/namespaces/{name}`: create or update.
    pub fn apply_namespace(&self, ns: &Namespace) -> Result<NamespaceStatus, ClientError> {
        self.send("PUT", &format!("/v1/namespaces/{}", seg(&ns.name)), ns)
    }

    /// `DELETE /v1/namespaces/{name}`.
    pub fn delete_namespace(&self, name: &str) -> Result<DeleteNamespaceResponse, ClientError> {
        Self::json(
            self.finish(
                self.req("DELETE", &format!("/v1/namespaces/{}", seg(name)))
                    .call(),
            )?,
        )
    }

    // ---- allocations ----

    /// `GET /v1/allocations`.
    pub fn list_allocs(&self) -> Result<Vec<AllocListEntry>, ClientError> {
        self.get("/v1/allocations")
    }

    /// `GET /v1/allocations/{id}` (a unique id prefix works).
    pub fn alloc(&self, id: &str) -> Result<AllocDetail, ClientError> {
        self.get(&format!("/v1/allocations/{}", seg(id)))
    }

    /// `POST /v1/allocations/{id}/stop`.
    pub fn stop_alloc(&self, id: &str) -> Result<EvalResponse, ClientError> {
        Self::json(
            self.finish(
                self.req("POST", &format!("/v1/allocations/{}/stop", seg(id)))
                    .send_bytes(b""),
            )?,
        )
    }

    /// `GET /v1/allocations/{id}/logs`: a stream of the task's stdout or stderr.
    /// With `follow`, the stream stays open and yields new output.
    pub fn alloc_logs(
        &self,
        id: &str,
        task: Option<&str>,
        stderr: bool,
        follow: bool,
        offset: u64,
    ) -> Result<LogStream, ClientError> {
        let mut r = self
            .req_with(
                &self.streaming,
                "GET",
                &format!("/v1/allocations/{}/logs", seg(id)),
            )
            .query("type", if stderr { "stderr" } else { "stdout" })
            .query("follow", if follow { "true" } else { "false" })
            .query("offset", &offset.to_string());
        if let Some(t) = task {
            r = r.query("task", t);
        }
        let resp = self.finish(r.call())?;
        Ok(LogStream(Box::new(resp.into_reader())))
    }

    /// `POST /v1/allocations/{id}/exec`: run `command` in the task with `stdin`,
    /// wait for it, return its exit code and output.
    pub fn alloc_exec(
        &self,
        id: &str,
        task: Option<&str>,
        command: &[String],
        stdin: &[u8],
    ) -> Result<ExecResponse, ClientError> {
        let body = ExecRequest {
            command: command.to_vec(),
            stdin_b64: b64::encode(stdin),
        };
        let bytes = serde_json::to_vec(&body).map_err(|e| ClientError::Decode(e.into()))?;
        let mut r = self
            .req_with(
                &self.streaming,
                "POST",
                &format!("/v1/allocations/{}/exec", seg(id)),
            )
            .set("Content-Type", "application/json");
        if let Some(t) = task {
            r = r.query("task", t);
        }
        Self::json(self.finish(r.send_bytes(&bytes))?)
    }

    // ---- nodes ----

    /// `GET /v1/nodes`.
    pub fn list_nodes(&self) -> Result<Vec<NodeListEntry>, ClientError> {
        self.get("/v1/nodes")
    }

    /// `GET /v1/nodes/{id-or-name}`.
    pub fn node(&self, id_or_name: &str) -> Result<NodeDetail, ClientError> {
        self.get(&format!("/v1/nodes/{}", seg(id_or_name)))
    }

    /// `DELETE /v1/nodes/{id-or-name}[?force=true]`.
    pub fn remove_node(
        &self,
        id_or_name: &str,
        force: bool,
    ) -> Result<RemoveNodeResponse, ClientError> {
        let mut r = self.req("DELETE", &format!("/v1/nodes/{}", seg(id_or_name)));
        if force {
            r = r.query("force", "true");
        }
        Self::json(self.finish(r.call())?)
    }

    /// `POST /v1/nodes/{id-or-name}/eligibility`.
    pub fn node_eligibility(
        &self,
        id_or_name: &str,
        eligible: bool,
    ) -> Result<NodeDetail, ClientError> {
        self.send(
            "POST",
            &format!("/v1/nodes/{}/eligibility", seg(id_or_name)),
            &EligibilityRequest { eligible },
        )
    }

    // ---- images ----

    /// `POST /v1/images`: import a `docker save` or OCI-layout tar.
    pub fn import_image(&self, tar: &std::path::Path) -> Result<ImageInfo, ClientError> {
        let file = std::fs::File::open(tar).map_err(|e| ClientError::Input {
            what: tar.display().to_string(),
            source: e,
        })?;
        Self::json(
            self.finish(
                self.req_with(&self.streaming, "POST", "/v1/images")
                    .set("Content-Type", "application/x-tar")
                    .send(file),
            )?,
        )
    }

    /// `GET /v1/images`.
    pub fn list_images(&self) -> Result<Vec<ImageInfo>, ClientError> {
        self.get("/v1/images")
    }

    /// `DELETE /v1/images/{ref}`.
    pub fn remove_image(&self, reference: &str) -> Result<ImageInfo, ClientError> {
        Self::json(
            self.finish(
                self.req("DELETE", &format!("/v1/images/{}", seg(reference)))
                    .call(),
            )?,
        )
    }

    // ---- evaluations ----

    /// `GET /v1/evaluations/{id}`.
    pub fn eval(&self, id: &str) -> Result<Evaluation, ClientError> {
        self.get(&format!("/v1/evaluations/{}", seg(id)))
    }

    /// `GET /v1/openapi.json`.
    pub fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.get("/v1/openapi.json")
    }

    // ---- agent endpoints ----

    /// `POST /v1/agent/register`.
    pub fn agent_register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ClientError> {
        self.send("POST", "/v1/agent/register", req)
    }

    /// `POST /v1/agent/heartbeat`.
    pub fn agent_heartbeat(
        &self,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, ClientError> {
        self.send("POST", "/v1/agent/heartbeat", req)
    }

    /// `GET /v1/agent/allocations/{node_id}?index=N&wait=W`: blocks until the
    /// node's allocations change past `index`, or `wait` passes.
    pub fn agent_allocations(
        &self,
        node: &NodeId,
        index: u64,
        wait: Duration,
    ) -> Result<NodeAllocations, ClientError> {
        Self::json(
            self.finish(
                self.req_with(
                    &self.streaming,
                    "GET",
                    &format!("/v1/agent/allocations/{}", seg(node.as_str())),
                )
                .query("index", &index.to_string())
                .query("wait", &format!("{}ms", wait.as_millis()))
                .timeout(wait + Duration::from_secs(30))
                .call(),
            )?,
        )
    }

    /// `POST /v1/agent/allocations`.
    pub fn agent_update_allocs(&self, req: &AllocUpdateRequest) -> Result<(), ClientError> {
        let _: serde_json::Value = self.send("POST", "/v1/agent/allocations", req)?;
        Ok(())
    }
}

//! The blocking client over `reqwest` (rustls). One method per route; all
//! JSON in and out except job files (TOML), image tars and log streams.

use crate::api::*;
use reqwest::blocking::{Body, RequestBuilder, Response};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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
        source: reqwest::Error,
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

/// The error a server's non-success reply carries.
pub(crate) fn api_error(status: u16, body: &[u8]) -> ClientError {
    let (message, field) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => (b.error.message, b.error.field),
        Err(_) => (
            format!(
                "server answered {status}: {}",
                String::from_utf8_lossy(body).trim()
            ),
            None,
        ),
    };
    ClientError::Api {
        status,
        message,
        field,
    }
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

/// The lines of `GET /v1/event/stream`, one at a time ([`Client::events`]).
/// Blocks until the next line; `None` once the stream ended (after its
/// `end` line, or when the connection closed).
pub struct EventStream(std::io::BufReader<Response>);

impl Iterator for EventStream {
    type Item = Result<StreamLine, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::io::BufRead;
        let mut line = String::new();
        loop {
            line.clear();
            match self.0.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) if line.trim().is_empty() => continue,
                Ok(_) => {
                    return Some(
                        serde_json::from_str(&line).map_err(|e| ClientError::Decode(e.into())),
                    )
                }
                Err(e) => return Some(Err(ClientError::Decode(e))),
            }
        }
    }
}

/// TLS for a client: the cluster CA to trust and, optionally, the client's
/// certificate and key (one PEM text, certificate first).
#[derive(Clone, Default)]
pub struct TlsOptions {
    /// The cluster CA certificate, PEM.
    pub ca_pem: Vec<u8>,
    /// Certificate then private key, PEM.
    pub identity_pem: Option<Vec<u8>>,
}

/// How a [`Client`] is set up.
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// Server addresses (`http(s)://host:port` or `host:port`), tried in
    /// turn when one cannot be connected to.
    pub addrs: Vec<String>,
    /// API token.
    pub token: Option<String>,
    /// TLS material.
    pub tls: Option<TlsOptions>,
}

/// A blocking API client.
#[derive(Clone)]
pub struct Client {
    bases: Arc<Vec<String>>,
    /// Index in `bases` of the server that answered last.
    current: Arc<AtomicUsize>,
    token: Option<String>,
    /// A node's secret, sent on every request (agent routes over plain HTTP).
    node_secret: Option<String>,
    /// Requests that end within two minutes.
    http: reqwest::blocking::Client,
    /// Streams (logs, exec, uploads, blocking queries): no overall timeout.
    streaming: reqwest::blocking::Client,
    /// TLS material, for the async client of interactive sessions.
    pub(crate) tls: Option<TlsOptions>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("bases", &self.bases)
            .finish()
    }
}

/// Escape a path segment (ids, names and image references).
pub(crate) fn seg(s: &str) -> String {
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

fn builder(timeout: Option<Duration>) -> reqwest::blocking::ClientBuilder {
    reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .tls_built_in_root_certs(false)
}

fn base_of(addr: &str) -> String {
    let addr = addr.trim().trim_end_matches('/');
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

fn with_tls(
    b: reqwest::blocking::ClientBuilder,
    tls: Option<&TlsOptions>,
) -> Result<reqwest::blocking::ClientBuilder, reqwest::Error> {
    let Some(t) = tls else { return Ok(b) };
    let mut b = b.add_root_certificate(reqwest::Certificate::from_pem(&t.ca_pem)?);
    if let Some(id) = &t.identity_pem {
        b = b.identity(reqwest::Identity::from_pem(id)?);
    }
    Ok(b)
}

impl Client {
    /// A client for the server at `addr` (`http://host:port` or `host:port`;
    /// several separated by commas).
    pub fn new(addr: &str, token: Option<String>) -> Self {
        Self::with_options(ClientOptions {
            addrs: addr.split(',').map(str::to_string).collect(),
            token,
            tls: None,
        })
        .expect("a client without TLS material always builds")
    }

    /// A client as `o` says. Fails on unusable TLS material.
    pub fn with_options(o: ClientOptions) -> Result<Self, ClientError> {
        let mut bases: Vec<String> = o
            .addrs
            .iter()
            .filter(|a| !a.trim().is_empty())
            .map(|a| base_of(a))
            .collect();
        if bases.is_empty() {
            bases.push("http://127.0.0.1:4646".into());
        }
        let tls_err = |e: reqwest::Error| ClientError::Input {
            what: "the TLS certificates".into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        };
        let http = with_tls(builder(Some(Duration::from_secs(120))), o.tls.as_ref())
            .and_then(|b| b.build())
            .map_err(tls_err)?;
        let streaming = with_tls(builder(None), o.tls.as_ref())
            .and_then(|b| b.build())
            .map_err(tls_err)?;
        Ok(Self {
            bases: Arc::new(bases),
            current: Arc::new(AtomicUsize::new(0)),
            token: o.token,
            node_secret: None,
            http,
            streaming,
            tls: o.tls,
        })
    }

    /// The base URL of the server in use.
    pub fn base_url(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()]
    }

    fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.req_with(&self.http, method, path)
    }

    fn req_with(
        &self,
        http: &reqwest::blocking::Client,
        method: Method,
        path: &str,
    ) -> RequestBuilder {
        let mut r = http.request(method, format!("{}{}", self.base_url(), path));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        if let Some(s) = &self.node_secret {
            r = r.header(taba_types::wire::NODE_SECRET_HEADER, s);
        }
        r
    }

    /// The same client sending a node's secret with every request (what an
    /// agent does over plain HTTP after its first registration).
    pub fn with_node_secret(&self, secret: Option<String>) -> Self {
        let mut c = self.clone();
        c.node_secret = secret;
        c
    }

    /// Send to the server in use; while a server cannot be connected to,
    /// to the next (requests with a streamed body go to one server only).
    /// The server that answered is used from then on.
    fn execute(&self, req: RequestBuilder) -> Result<Response, ClientError> {
        let (http, req) = req.build_split();
        let req = req.map_err(|source| ClientError::Transport {
            addr: self.base_url().to_string(),
            source,
        })?;
        let n = self.bases.len();
        let mut start = self.current.load(Ordering::Relaxed) % n;
        let mut req = req;
        if n > 1 && req.try_clone().is_none() {
            // A streamed body is sent once: pick a server that accepts
            // connections first.
            let live = self.first_reachable(start);
            if live != start {
                let moved = req
                    .url()
                    .as_str()
                    .replacen(&self.bases[start], &self.bases[live], 1);
                if let Ok(u) = reqwest::Url::parse(&moved) {
                    *req.url_mut() = u;
                    start = live;
                }
            }
        }
        let url = req.url().as_str().to_string();
        let mut attempt = Some(req);
        let mut i = 0;
        loop {
            let k = (start + i) % n;
            let Some(r) = attempt.take() else {
                unreachable!("an attempt is prepared before each try")
            };
            let next = if i + 1 < n { r.try_clone() } else { None };
            match http.execute(r) {
                Ok(resp) => {
                    self.current.store(k, Ordering::Relaxed);
                    return Ok(resp);
                }
                Err(source) if source.is_connect() && next.is_some() => {
                    i += 1;
                    let mut nr = next.expect("checked");
                    let moved = url.replacen(&self.bases[start], &self.bases[(start + i) % n], 1);
                    if let Ok(u) = reqwest::Url::parse(&moved) {
                        *nr.url_mut() = u;
                    }
                    attempt = Some(nr);
                }
                Err(source) => {
                    return Err(ClientError::Transport {
                        addr: self.bases[k].clone(),
                        source,
                    })
                }
            }
        }
    }

    /// The base URL of the first server, from the one in use on, that
    /// accepts a connection (for a connection made outside [`Self::execute`],
    /// such as an interactive session's); it is used from then on.
    pub(crate) fn reachable_base_url(&self) -> &str {
        let n = self.bases.len();
        if n > 1 {
            let live = self.first_reachable(self.current.load(Ordering::Relaxed) % n);
            self.current.store(live, Ordering::Relaxed);
        }
        self.base_url()
    }

    /// The first server from `start` on that accepts a TCP connection
    /// (`start` when none does).
    fn first_reachable(&self, start: usize) -> usize {
        let n = self.bases.len();
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&k| {
                reqwest::Url::parse(&self.bases[k])
                    .ok()
                    .and_then(|u| u.socket_addrs(|| None).ok())
                    .is_some_and(|addrs| {
                        addrs.iter().any(|a| {
                            std::net::TcpStream::connect_timeout(a, Duration::from_secs(2)).is_ok()
                        })
                    })
            })
            .unwrap_or(start)
    }

    /// Send; an error status becomes [`ClientError::Api`].
    fn finish(&self, req: RequestBuilder) -> Result<Response, ClientError> {
        let resp = self.execute(req)?;
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            return Ok(resp);
        }
        let mut body = Vec::new();
        let _ = resp.take(1 << 20).read_to_end(&mut body);
        Err(api_error(status, &body))
    }

    fn json<T: DeserializeOwned>(mut resp: Response) -> Result<T, ClientError> {
        let mut body = Vec::new();
        resp.read_to_end(&mut body).map_err(ClientError::Decode)?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode(e.into()))
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        Self::json(self.finish(self.req(Method::GET, path))?)
    }

    fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Decode(e.into()))?;
        Self::json(
            self.finish(
                self.req(method, path)
                    .header("Content-Type", "application/json")
                    .body(bytes),
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
        let method = Method::from_bytes(method.as_bytes()).map_err(|e| ClientError::Input {
            what: "the HTTP method".into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?;
        let mut r = self.req(method.clone(), path);
        if let Some(ct) = content_type {
            r = r.header("Content-Type", ct);
        }
        if !(method == Method::GET || method == Method::DELETE && body.is_empty()) {
            r = r.body(body.to_vec());
        }
        let mut resp = self.execute(r)?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let mut body = Vec::new();
        resp.read_to_end(&mut body).map_err(ClientError::Decode)?;
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
                self.req(Method::POST, "/v1/jobs")
                    .header("Content-Type", "application/toml")
                    .body(toml.to_vec()),
            )?,
        )
    }

    /// `POST /v1/job-plan` with a TOML job file: what `job run` would do to its versions.
    pub fn plan_job_toml(&self, toml: &[u8]) -> Result<JobPlanResponse, ClientError> {
        Self::json(
            self.finish(
                self.req(Method::POST, "/v1/job-plan")
                    .header("Content-Type", "application/toml")
                    .body(toml.to_vec()),
            )?,
        )
    }

    /// `POST /v1/jobs` with a JSON spec.
    pub fn register_job(&self, spec: &JobSpec) -> Result<RegisterJobResponse, ClientError> {
        self.send(Method::POST, "/v1/jobs", spec)
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
        Self::json(self.finish(self.req(Method::DELETE, &format!("/v1/jobs/{}", seg(name))))?)
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
        Self::json(self.finish(self.req(
            Method::DELETE,
            &format!("/v1/jobs/{}?namespace={}", seg(name), seg(namespace)),
        ))?)
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
        self.send(
            Method::PUT,
            &format!("/v1/namespaces/{}", seg(&ns.name)),
            ns,
        )
    }

    /// `DELETE /v1/namespaces/{name}`.
    pub fn delete_namespace(&self, name: &str) -> Result<DeleteNamespaceResponse, ClientError> {
        Self::json(self.finish(self.req(Method::DELETE, &format!("/v1/namespaces/{}", seg(name))))?)
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
            self.finish(self.req(Method::POST, &format!("/v1/allocations/{}/stop", seg(id))))?,
        )
    }

    /// `POST /v1/allocations/{id}/migrate`: move it (live where its driver can).
    pub fn migrate_alloc(
        &self,
        id: &str,
        to: Option<&str>,
    ) -> Result<MigrateAllocResponse, ClientError> {
        let body = MigrateAllocRequest {
            to: to.map(str::to_string),
        };
        let bytes = serde_json::to_vec(&body).map_err(|e| ClientError::Decode(e.into()))?;
        let r = self
            .req(
                Method::POST,
                &format!("/v1/allocations/{}/migrate", seg(id)),
            )
            .header("Content-Type", "application/json")
            .body(bytes);
        Self::json(self.finish(r)?)
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
                Method::GET,
                &format!("/v1/allocations/{}/logs", seg(id)),
            )
            .query(&[
                ("type", if stderr { "stderr" } else { "stdout" }),
                ("follow", if follow { "true" } else { "false" }),
            ])
            .query(&[("offset", offset)]);
        if let Some(t) = task {
            r = r.query(&[("task", t)]);
        }
        let resp = self.finish(r)?;
        Ok(LogStream(Box::new(resp)))
    }

    /// `GET /v1/event/stream`: follow committed changes of `topics` (empty:
    /// every topic the token may read) in `namespace` (none: every namespace
    /// the token may read), after `index` (none: only new ones).
    pub fn events(
        &self,
        topics: &[EventTopic],
        namespace: Option<&str>,
        index: Option<u64>,
    ) -> Result<EventStream, ClientError> {
        let mut r = self.req_with(&self.streaming, Method::GET, "/v1/event/stream");
        for t in topics {
            r = r.query(&[("topic", t.name())]);
        }
        if let Some(ns) = namespace {
            r = r.query(&[("namespace", ns)]);
        }
        if let Some(i) = index {
            r = r.query(&[("index", i)]);
        }
        Ok(EventStream(std::io::BufReader::new(self.finish(r)?)))
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
                Method::POST,
                &format!("/v1/allocations/{}/exec", seg(id)),
            )
            .header("Content-Type", "application/json")
            .body(bytes);
        if let Some(t) = task {
            r = r.query(&[("task", t)]);
        }
        Self::json(self.finish(r)?)
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
        let q = if force { "?force=true" } else { "" };
        Self::json(
            self.finish(self.req(Method::DELETE, &format!("/v1/nodes/{}{q}", seg(id_or_name))))?,
        )
    }

    /// `POST /v1/nodes/{id-or-name}/eligibility`.
    pub fn node_eligibility(
        &self,
        id_or_name: &str,
        eligible: bool,
    ) -> Result<NodeDetail, ClientError> {
        self.send(
            Method::POST,
            &format!("/v1/nodes/{}/eligibility", seg(id_or_name)),
            &EligibilityRequest { eligible },
        )
    }

    /// `POST /v1/nodes/{id-or-name}/drain`: start, change or cancel a drain.
    pub fn drain_node(
        &self,
        id_or_name: &str,
        req: &DrainRequest,
    ) -> Result<DrainStatus, ClientError> {
        self.send(
            Method::POST,
            &format!("/v1/nodes/{}/drain", seg(id_or_name)),
            req,
        )
    }

    /// `GET /v1/nodes/{id-or-name}/drain`: what the drain has left to do.
    pub fn drain_status(&self, id_or_name: &str) -> Result<DrainStatus, ClientError> {
        self.get(&format!("/v1/nodes/{}/drain", seg(id_or_name)))
    }

    /// `POST /v1/nodes/tokens`: a one-time join token valid for `ttl` (`1h`).
    pub fn create_join_token(&self, ttl: &str) -> Result<JoinTokenResponse, ClientError> {
        self.send(
            Method::POST,
            "/v1/nodes/tokens",
            &JoinTokenRequest {
                ttl: Some(ttl.to_string()),
            },
        )
    }

    /// `POST /v1/tls/revoke`.
    pub fn revoke_cert(&self, req: &RevokeCertRequest) -> Result<RevokeCertResponse, ClientError> {
        self.send(Method::POST, "/v1/tls/revoke", req)
    }

    // ---- images ----

    /// `POST /v1/images`: import a `docker save` or OCI-layout tar; the first image it held.
    pub fn import_image(&self, tar: &std::path::Path) -> Result<ImageInfo, ClientError> {
        self.import_images(tar).map(|r| r.image)
    }

    /// `POST /v1/images`: import every image of a `docker save` or OCI-layout tar.
    pub fn import_images(&self, tar: &std::path::Path) -> Result<ImportResponse, ClientError> {
        self.import_images_reporting(tar, |_| {})
    }

    /// [`Self::import_images`], calling `on_sent` with the bytes of the
    /// archive sent so far as the upload goes on.
    pub fn import_images_reporting(
        &self,
        tar: &std::path::Path,
        on_sent: impl FnMut(u64) + Send + 'static,
    ) -> Result<ImportResponse, ClientError> {
        let file = std::fs::File::open(tar).map_err(|e| ClientError::Input {
            what: tar.display().to_string(),
            source: e,
        })?;
        let body = CountingReader {
            inner: file,
            sent: 0,
            on_sent,
        };
        Self::json(
            self.finish(
                self.req_with(&self.streaming, Method::POST, "/v1/images")
                    .header("Content-Type", "application/x-tar")
                    .body(Body::new(body)),
            )?,
        )
    }

    /// `POST /v1/registry/pull`: pulls `reference` into the server's image store, calling
    /// `on_event` for each progress line. Returns the last event: `Done`, or `Error` when the
    /// pull failed after it began (failures before are [`ClientError::Api`]).
    pub fn pull_image(
        &self,
        reference: &str,
        on_event: impl FnMut(&PullEvent),
    ) -> Result<PullEvent, ClientError> {
        let body = serde_json::to_vec(&PullRequest {
            reference: reference.to_string(),
        })
        .expect("serialises");
        self.progress_events("/v1/registry/pull", body, "pull", on_event)
    }

    /// `POST /v1/registry/push`: pushes the stored image `source` (default: `reference`) to
    /// `reference`, calling `on_event` per progress line. Returns the last event: `Pushed`,
    /// or `Error` when the push failed after it began.
    pub fn push_image(
        &self,
        reference: &str,
        source: Option<&str>,
        on_event: impl FnMut(&PullEvent),
    ) -> Result<PullEvent, ClientError> {
        let body = serde_json::to_vec(&PushRequest {
            reference: reference.to_string(),
            source: source.map(str::to_string),
        })
        .expect("serialises");
        self.progress_events("/v1/registry/push", body, "push", on_event)
    }

    /// A POST whose reply is newline-delimited progress events, ending in a final one.
    fn progress_events(
        &self,
        path: &str,
        body: Vec<u8>,
        what: &str,
        mut on_event: impl FnMut(&PullEvent),
    ) -> Result<PullEvent, ClientError> {
        use std::io::BufRead;
        let resp = self.finish(
            self.req_with(&self.streaming, Method::POST, path)
                .header("Content-Type", "application/json")
                .body(body),
        )?;
        let mut last = None;
        for line in std::io::BufReader::new(resp).lines() {
            let line = line.map_err(ClientError::Decode)?;
            if line.trim().is_empty() {
                continue;
            }
            let e: PullEvent =
                serde_json::from_str(&line).map_err(|e| ClientError::Decode(e.into()))?;
            on_event(&e);
            last = Some(e);
        }
        match last {
            Some(
                e @ (PullEvent::Done { .. } | PullEvent::Pushed { .. } | PullEvent::Error { .. }),
            ) => Ok(e),
            _ => Err(ClientError::Decode(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the {what}'s reply ended before it said how it ended"),
            ))),
        }
    }

    /// `POST /v1/image-save`: the stored image `reference` as a tar in `format`
    /// (`oci-archive`, `docker-archive`), copied into `out`. Returns the bytes written.
    pub fn save_image(
        &self,
        reference: &str,
        format: &str,
        out: &mut dyn std::io::Write,
    ) -> Result<u64, ClientError> {
        let body = serde_json::to_vec(&SaveRequest {
            reference: reference.to_string(),
            format: Some(format.to_string()),
        })
        .expect("serialises");
        let mut resp = self.finish(
            self.req_with(&self.streaming, Method::POST, "/v1/image-save")
                .header("Content-Type", "application/json")
                .body(body),
        )?;
        std::io::copy(&mut resp, out).map_err(ClientError::Decode)
    }

    /// `PUT /v1/images/{target}`: name the image of `source` `target` too.
    pub fn tag_image(&self, source: &str, target: &str) -> Result<ImageInfo, ClientError> {
        self.send(
            Method::PUT,
            &format!("/v1/images/{}", seg(target)),
            &TagRequest {
                source: source.to_string(),
            },
        )
    }

    /// `DELETE /v1/images`: prune images no job version names.
    pub fn prune_images(&self) -> Result<PruneResponse, ClientError> {
        Self::json(self.finish(self.req(Method::DELETE, "/v1/images"))?)
    }

    /// `POST /v1/registry/login`.
    pub fn registry_login(
        &self,
        req: &RegistryLoginRequest,
    ) -> Result<RegistryLoginResponse, ClientError> {
        self.send(Method::POST, "/v1/registry/login", req)
    }

    /// `POST /v1/registry/logout`.
    pub fn registry_logout(&self, registry: &str) -> Result<RegistryLoginResponse, ClientError> {
        self.send(
            Method::POST,
            "/v1/registry/logout",
            &serde_json::json!({ "registry": registry }),
        )
    }

    /// `GET /v1/images`.
    pub fn list_images(&self) -> Result<Vec<ImageInfo>, ClientError> {
        self.get("/v1/images")
    }

    /// `GET /v1/images/{ref}`.
    pub fn inspect_image(&self, reference: &str) -> Result<ImageDetail, ClientError> {
        self.get(&format!("/v1/images/{}", seg(reference)))
    }

    /// `DELETE /v1/images/{ref}`.
    pub fn remove_image(&self, reference: &str) -> Result<ImageInfo, ClientError> {
        Self::json(
            self.finish(self.req(Method::DELETE, &format!("/v1/images/{}", seg(reference))))?,
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

    // ---- ACL ----

    /// `POST /v1/acl/bootstrap`: the first management token (once).
    pub fn acl_bootstrap(&self) -> Result<AclTokenCreated, ClientError> {
        Self::json(self.finish(self.req(Method::POST, "/v1/acl/bootstrap"))?)
    }

    /// `PUT /v1/acl/policies/{name}` with a TOML policy file.
    pub fn apply_acl_policy_toml(
        &self,
        name: &str,
        toml: &[u8],
    ) -> Result<taba_types::acl::AclPolicy, ClientError> {
        Self::json(
            self.finish(
                self.req(Method::PUT, &format!("/v1/acl/policies/{}", seg(name)))
                    .header("Content-Type", "application/toml")
                    .body(toml.to_vec()),
            )?,
        )
    }

    /// `GET /v1/acl/policies`.
    pub fn acl_policies(&self) -> Result<Vec<taba_types::acl::AclPolicy>, ClientError> {
        self.get("/v1/acl/policies")
    }

    /// `GET /v1/acl/policies/{name}`.
    pub fn acl_policy(&self, name: &str) -> Result<taba_types::acl::AclPolicy, ClientError> {
        self.get(&format!("/v1/acl/policies/{}", seg(name)))
    }

    /// `DELETE /v1/acl/policies/{name}`.
    pub fn delete_acl_policy(&self, name: &str) -> Result<AclDeleteResponse, ClientError> {
        Self::json(
            self.finish(self.req(Method::DELETE, &format!("/v1/acl/policies/{}", seg(name))))?,
        )
    }

    /// `GET /v1/acl/tokens`.
    pub fn acl_tokens(&self) -> Result<Vec<AclTokenInfo>, ClientError> {
        self.get("/v1/acl/tokens")
    }

    /// `POST /v1/acl/tokens`: the reply holds the secret, once.
    pub fn create_acl_token(
        &self,
        req: &CreateTokenRequest,
    ) -> Result<AclTokenCreated, ClientError> {
        self.send(Method::POST, "/v1/acl/tokens", req)
    }

    /// `DELETE /v1/acl/tokens/{accessor}`.
    pub fn revoke_acl_token(&self, accessor: &str) -> Result<AclDeleteResponse, ClientError> {
        Self::json(
            self.finish(self.req(Method::DELETE, &format!("/v1/acl/tokens/{}", seg(accessor))))?,
        )
    }

    /// `GET /v1/acl/token/self`: the token this client sends.
    pub fn acl_token_self(&self) -> Result<AclTokenInfo, ClientError> {
        self.get("/v1/acl/token/self")
    }

    /// The same server with another token (or none).
    pub fn with_token(&self, token: Option<String>) -> Client {
        let mut c = self.clone();
        c.token = token;
        c
    }

    /// The token this client sends, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    // ---- agent endpoints ----

    /// `POST /v1/agent/register`.
    pub fn agent_register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ClientError> {
        self.send(Method::POST, "/v1/agent/register", req)
    }

    /// `POST /v1/agent/heartbeat`.
    pub fn agent_heartbeat(
        &self,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, ClientError> {
        self.send(Method::POST, "/v1/agent/heartbeat", req)
    }

    /// `GET /v1/agent/allocations/{node_id}?index=N&wait=W`: blocks until the
    /// node's allocations change past `index`, or `wait` passes.
    pub fn agent_allocations(
        &self,
        node: &NodeId,
        index: u64,
        wait: Duration,
    ) -> Result<NodeAllocations, ClientError> {
        self.agent_allocations_query(node, index, wait, false)
    }

    /// [`Self::agent_allocations`] asking for a delta (`delta=true`,
    /// protocol 4): only the allocations changed past `index`, the others by id.
    pub fn agent_allocations_delta(
        &self,
        node: &NodeId,
        index: u64,
        wait: Duration,
    ) -> Result<NodeAllocations, ClientError> {
        self.agent_allocations_query(node, index, wait, true)
    }

    fn agent_allocations_query(
        &self,
        node: &NodeId,
        index: u64,
        wait: Duration,
        delta: bool,
    ) -> Result<NodeAllocations, ClientError> {
        let mut req = self
            .req_with(
                &self.streaming,
                Method::GET,
                &format!("/v1/agent/allocations/{}", seg(node.as_str())),
            )
            .query(&[("index", index.to_string())])
            .query(&[("wait", format!("{}ms", wait.as_millis()))])
            .timeout(wait + Duration::from_secs(30));
        if delta {
            req = req.query(&[("delta", "true")]);
        }
        Self::json(self.finish(req)?)
    }

    /// `POST /v1/agent/allocations`.
    pub fn agent_update_allocs(&self, req: &AllocUpdateRequest) -> Result<(), ClientError> {
        let _: serde_json::Value = self.send(Method::POST, "/v1/agent/allocations", req)?;
        Ok(())
    }
}

/// A reader that reports how many bytes were read through it.
struct CountingReader<R, F> {
    inner: R,
    sent: u64,
    on_sent: F,
}

impl<R: Read, F: FnMut(u64)> Read for CountingReader<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sent += n as u64;
        (self.on_sent)(self.sent);
        Ok(n)
    }
}

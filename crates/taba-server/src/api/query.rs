//! Query parameters the same way on every route: the structs that declare
//! them (the OpenAPI document reads these, the handlers decode them), the
//! gate that refuses a parameter a route does not declare, blocking
//! queries (`index`, `wait`, `X-Taba-Index`) and pages (`per_page`,
//! `next_token`, `X-Taba-NextToken`).
//!
//! ```text
//! request -> acl guard -> query gate: every name declared by the route?
//!                           (else 400 unknown_parameter)
//!                         blocking route: index/wait parsed and taken out
//!                           of the query, wait until the state passes index
//!            -> handler (decodes its declared struct)
//!            -> X-Taba-Index: the state's index before the handler read
//! ```

use super::error::ApiError;
use crate::state::ServerState;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use taba_types::DurationSpec;

/// The response header with the state's index of a blocking query.
pub const INDEX_HEADER: &str = "x-taba-index";
/// The response header with the next page's token of a list.
pub const NEXT_TOKEN_HEADER: &str = "x-taba-nexttoken";
/// Longest page a list serves.
pub const MAX_PER_PAGE: u32 = 10_000;
/// How long a blocking query waits when `wait` is not given.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);

/// `?namespace=` of a job's routes.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NsQuery {
    /// The job's namespace (default: `default`).
    pub namespace: Option<String>,
}

impl NsQuery {
    /// The namespace asked for, or `default`.
    pub fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

/// The query of a list of namespaced objects.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// One namespace, or `*` (the default) for every one the token may read.
    pub namespace: Option<String>,
    /// Most entries in the reply (1 to 10000; default: all).
    #[schemars(range(min = 1, max = 10000))]
    pub per_page: Option<u32>,
    /// Start at this entry: the `X-Taba-NextToken` of the previous page.
    #[schemars(regex(pattern = r"^([0-9a-f]{2}){0,2048}$"))]
    pub next_token: Option<String>,
}

impl ListQuery {
    /// The namespace asked for; `None` for every one (`*` or none given).
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref().filter(|n| *n != "*")
    }
    /// The page asked for.
    pub fn page(&self) -> PageQuery {
        PageQuery {
            per_page: self.per_page,
            next_token: self.next_token.clone(),
        }
    }
}

/// The query of a list of objects without a namespace.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Most entries in the reply (1 to 10000; default: all).
    #[schemars(range(min = 1, max = 10000))]
    pub per_page: Option<u32>,
    /// Start at this entry: the `X-Taba-NextToken` of the previous page.
    #[schemars(regex(pattern = r"^([0-9a-f]{2}){0,2048}$"))]
    pub next_token: Option<String>,
}

/// `POST /v1/jobs` query.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterQuery {
    /// Check-and-set: register only if the job's modify index is this (0:
    /// only if the job does not exist), else 409 `index_mismatch`.
    pub check_index: Option<u64>,
}

/// The parameters every blocking query takes (the gate reads them; the
/// handler never sees them).
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
pub struct BlockingParams {
    /// Answer once the state's index is past this one (the `X-Taba-Index`
    /// of a previous reply), or when `wait` is over; 0 or none: at once.
    pub index: Option<u64>,
    /// Longest wait of a blocking query (default 5m, at most the server's
    /// `max_blocking_wait`).
    pub wait: Option<DurationSpec>,
}

/// What the gate of one route lets through.
pub struct Gate {
    /// The declared parameter names.
    pub allowed: Vec<String>,
    /// Whether `index` and `wait` are taken (and answered with `X-Taba-Index`).
    pub blocking: bool,
    /// The state to wait on.
    pub state: Arc<ServerState>,
}

/// The names of the properties of a query struct's schema.
pub fn parameter_names(schema: &schemars::schema::RootSchema) -> Vec<String> {
    schema
        .schema
        .object
        .as_ref()
        .map(|o| o.properties.keys().cloned().collect())
        .unwrap_or_default()
}

/// The middleware of [`Gate`].
pub async fn gate(State(g): State<Arc<Gate>>, mut req: Request, next: Next) -> Response {
    let blocking = match check(&g, req.uri()) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    if g.blocking {
        if let Some(uri) = without_blocking_params(req.uri()) {
            *req.uri_mut() = uri;
        }
        let max = g.state.config.max_blocking_wait;
        wait_past(&g.state, blocking.index.unwrap_or(0), blocking.wait(max)).await;
    }
    let index = g.state.index();
    let mut resp = next.run(req).await;
    if g.blocking && resp.status().is_success() {
        resp.headers_mut().insert(
            HeaderName::from_static(INDEX_HEADER),
            HeaderValue::from(index),
        );
    }
    resp
}

impl BlockingParams {
    fn wait(&self, max: Duration) -> Duration {
        self.wait
            .map(|w| w.as_duration())
            .unwrap_or(DEFAULT_WAIT)
            .min(max)
    }
}

/// Refuse undeclared names; read `index` and `wait` of a blocking route.
fn check(g: &Gate, uri: &Uri) -> Result<BlockingParams, ApiError> {
    let mut out = BlockingParams::default();
    let pairs = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes());
    for (k, v) in pairs {
        match k.as_ref() {
            "index" if g.blocking => {
                let i = v.parse::<u64>().map_err(|_| {
                    ApiError::bad(
                        "index",
                        format!("{v:?} is not an index (a whole number >= 0)"),
                    )
                })?;
                out.index = Some(i);
            }
            "wait" if g.blocking => {
                let w = match v.parse::<u64>() {
                    Ok(secs) => DurationSpec(secs.saturating_mul(1000)),
                    Err(_) => DurationSpec::parse(&v).map_err(|e| ApiError::bad("wait", e))?,
                };
                out.wait = Some(w);
            }
            name if g.allowed.iter().any(|a| a == name) => {}
            name => {
                let mut takes: Vec<&str> = g.allowed.iter().map(String::as_str).collect();
                if g.blocking {
                    takes.extend(["index", "wait"]);
                }
                let takes = match takes.is_empty() {
                    true => "no parameters".to_owned(),
                    false => takes.join(", "),
                };
                return Err(ApiError::UnknownParameter(takes, name.to_owned()));
            }
        }
    }
    Ok(out)
}

/// `uri` without `index` and `wait` (None when it has neither).
fn without_blocking_params(uri: &Uri) -> Option<Uri> {
    let q = uri.query()?;
    let kept: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes())
        .filter(|(k, _)| k != "index" && k != "wait")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut s = form_urlencoded::Serializer::new(String::new());
    s.extend_pairs(kept);
    let query = s.finish();
    let pq = match query.is_empty() {
        true => uri.path().to_owned(),
        false => format!("{}?{query}", uri.path()),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// Return once the state's index is past `after`, the wait is over, or the
/// server shuts down.
async fn wait_past(state: &ServerState, after: u64, wait: Duration) {
    if after == 0 {
        return;
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut changes = state.watch_index();
    let mut stop = state.shutdown.subscribe();
    loop {
        if *changes.borrow_and_update() > after || *stop.borrow() {
            return;
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = stop.changed() => {}
            _ = tokio::time::sleep_until(deadline) => return,
        }
    }
}

/// One page of a list, with the next page's token (in `X-Taba-NextToken`).
pub struct Paged<T> {
    /// The entries of this page.
    pub items: Vec<T>,
    /// The token of the next page, if there is one.
    pub next_token: Option<String>,
}

/// The page `q` asks for of `items`, ordered by `key` (the token is the
/// key of the first entry of the next page, hex-encoded so any key fits a
/// header, so a page stays right when entries come and go between
/// requests).
pub fn page<T>(
    mut items: Vec<T>,
    q: &PageQuery,
    key: impl Fn(&T) -> String,
) -> Result<Paged<T>, ApiError> {
    if let Some(n) = q.per_page {
        if !(1..=MAX_PER_PAGE).contains(&n) {
            return Err(ApiError::bad(
                "per_page",
                format!("must be between 1 and {MAX_PER_PAGE}"),
            ));
        }
    }
    let mut keyed: Vec<(String, T)> = items.drain(..).map(|t| (key(&t), t)).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(token) = &q.next_token {
        let from = from_hex(token).ok_or_else(|| {
            ApiError::bad(
                "next_token",
                "not a token of this list (an X-Taba-NextToken)",
            )
        })?;
        keyed.retain(|(k, _)| k.as_bytes() >= from.as_slice());
    }
    let per_page = q.per_page.map_or(usize::MAX, |n| n as usize);
    let next_token = keyed.get(per_page).map(|(k, _)| to_hex(k.as_bytes()));
    keyed.truncate(per_page);
    Ok(Paged {
        items: keyed.into_iter().map(|(_, t)| t).collect(),
        next_token,
    })
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 4096 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A sort key that puts newer (larger `time`) first, then by `id`.
pub fn newest_first(time: u64, id: &str) -> String {
    format!("{:020}.{id}", u64::MAX - time)
}

impl<T: Serialize> IntoResponse for Paged<T> {
    fn into_response(self) -> Response {
        let mut resp = Json(self.items).into_response();
        if let Some(t) = self.next_token.and_then(|t| HeaderValue::try_from(t).ok()) {
            resp.headers_mut()
                .insert(HeaderName::from_static(NEXT_TOKEN_HEADER), t);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pq(per_page: Option<u32>, next: Option<&str>) -> PageQuery {
        PageQuery {
            per_page,
            next_token: next.map(str::to_owned),
        }
    }

    #[test]
    fn pages_walk_every_entry_once_in_key_order() {
        let items: Vec<u32> = (0..25).rev().collect();
        let key = |i: &u32| format!("{i:03}");
        let mut seen = Vec::new();
        let mut next = None;
        for _ in 0..10 {
            let p = page(items.clone(), &pq(Some(10), next.as_deref()), key).unwrap();
            seen.extend(p.items);
            next = p.next_token;
            if next.is_none() {
                break;
            }
        }
        assert_eq!(seen, (0..25).collect::<Vec<_>>());
        let all = page(items.clone(), &pq(None, None), key).unwrap();
        assert_eq!((all.items.len(), all.next_token), (25, None));
        let e = page(items.clone(), &pq(Some(2), Some("zz")), key)
            .err()
            .unwrap();
        assert_eq!(e.code(), taba_types::api::ErrorCode::BadRequest);
        for bad in [0, MAX_PER_PAGE + 1] {
            let e = page(items.clone(), &pq(Some(bad), None), key)
                .err()
                .unwrap();
            assert_eq!(e.code(), taba_types::api::ErrorCode::BadRequest);
        }
    }

    #[test]
    fn newest_first_orders_by_time_descending() {
        let mut v = [
            newest_first(5, "a"),
            newest_first(9, "b"),
            newest_first(5, "0"),
        ];
        v.sort();
        assert!(v[0].ends_with(".b") && v[1].ends_with(".0") && v[2].ends_with(".a"));
    }

    #[test]
    fn blocking_params_leave_the_query_and_others_stay() {
        let uri: Uri = "/v1/jobs?index=5&namespace=a&wait=3s".parse().unwrap();
        let u = without_blocking_params(&uri).unwrap();
        assert_eq!(u.to_string(), "/v1/jobs?namespace=a");
        let uri: Uri = "/v1/jobs?index=5".parse().unwrap();
        assert_eq!(
            without_blocking_params(&uri).unwrap().to_string(),
            "/v1/jobs"
        );
    }
}

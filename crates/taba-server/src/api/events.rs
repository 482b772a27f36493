//! `GET /v1/event/stream`: the events of committed changes as
//! newline-delimited JSON (`StreamLine`s), filtered by topic, namespace and
//! the token's rights; resumable from an index; a keep-alive line when quiet;
//! a last `end` line when the server ends it (see `crate::events`).

use super::{ApiError, AppState};
use crate::acl::{bearer, Auth};
use crate::events::{EventError, Filter, Subscription};
use crate::state::ServerState;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;
use taba_types::acl::{Access, Capability};
use taba_types::api::{EventTopic, StreamEnd, StreamHeartbeat, StreamLine};

/// Most events written in one chunk.
const CHUNK: usize = 256;

/// The query parameters of `GET /v1/event/stream`, as the OpenAPI document
/// declares them ([`parse_query`] reads them: `topic` repeats).
#[derive(schemars::JsonSchema)]
#[allow(dead_code)]
pub struct StreamParams {
    /// Job, Allocation, Node or Evaluation; repeat for several (default:
    /// every topic the token may read).
    topic: Option<Vec<EventTopic>>,
    /// One namespace, or * (default) for every one the token may read.
    namespace: Option<String>,
    /// Replay the kept events after this index first (default: only new events).
    index: Option<u64>,
}

/// What the query asks for.
#[derive(Debug, PartialEq)]
struct StreamQuery {
    topics: BTreeSet<EventTopic>,
    namespace: Option<String>,
    index: Option<u64>,
}

fn parse_query(uri: &Uri) -> Result<StreamQuery, ApiError> {
    let pairs = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|e| ApiError::bad("query", format!("bad query string: {}", e.body_text())))?
        .0;
    let mut q = StreamQuery {
        topics: BTreeSet::new(),
        namespace: None,
        index: None,
    };
    for (k, v) in pairs {
        match k.as_str() {
            "topic" => {
                let t = EventTopic::parse(&v).ok_or_else(|| {
                    ApiError::bad(
                        "topic",
                        format!(
                            "unknown topic {v:?}; one of {}",
                            EventTopic::ALL.map(EventTopic::name).join(", ")
                        ),
                    )
                })?;
                q.topics.insert(t);
            }
            "namespace" if q.namespace.is_some() => {
                return Err(ApiError::bad("namespace", "given more than once"))
            }
            "namespace" => q.namespace = Some(v),
            "index" if q.index.is_some() => {
                return Err(ApiError::bad("index", "given more than once"))
            }
            "index" => {
                q.index = Some(v.parse::<u64>().map_err(|_| {
                    ApiError::bad(
                        "index",
                        format!("{v:?} is not an index (a whole number >= 0)"),
                    )
                })?)
            }
            other => {
                return Err(ApiError::bad(
                    other,
                    "unknown query parameter; this route takes topic, namespace and index",
                ))
            }
        }
    }
    Ok(q)
}

/// The filter of a subscription, checked against the caller's rights and the
/// namespaces that exist.
async fn filter_for(state: &ServerState, auth: &Auth, q: &StreamQuery) -> Result<Filter, ApiError> {
    let rights = &auth.rights;
    let topics = if q.topics.is_empty() {
        EventTopic::ALL
            .into_iter()
            .filter(|t| *t != EventTopic::Node || rights.node(Access::Read))
            .collect()
    } else {
        if q.topics.contains(&EventTopic::Node) && !rights.node(Access::Read) {
            return Err(ApiError::forbidden(
                "topic",
                format!(
                    "permission denied: {} lacks node read (needed for topic Node)",
                    auth.actor()
                ),
            ));
        }
        q.topics.clone()
    };
    let namespace = match q.namespace.as_deref() {
        None | Some("*") => None,
        Some(ns) => {
            if let Err(e) = state.get_namespace(ns).await {
                return Err(ApiError::bad("namespace", e.to_string()));
            }
            auth.require(ns, Capability::Read)
                .map_err(|e| ApiError::forbidden("namespace", e.0))?;
            Some(ns.to_owned())
        }
    };
    Ok(Filter {
        topics,
        namespace,
        rights: rights.clone(),
    })
}

/// `GET /v1/event/stream?topic=T&namespace=N&index=I`.
pub async fn stream(
    State(app): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let q = parse_query(&uri)?;
    let filter = filter_for(&app.state, &auth, &q).await?;
    let sub = app
        .state
        .events
        .subscribe(filter, q.index)
        .map_err(|e| match e {
            EventError::TooOld { .. } => ApiError::Gone {
                message: e.to_string(),
                field: Some("index".into()),
            },
            EventError::Full(_) | EventError::Closed(_) => ApiError::Unavailable(e.to_string()),
        })?;
    let secret = bearer(&headers).ok().flatten().map(str::to_owned);
    let feed = Feed {
        state: Arc::downgrade(&app.state),
        secret,
        heartbeat: app.state.events.settings().heartbeat,
        sent: sub.start,
        sub,
        done: false,
    };
    let body = futures_util::stream::unfold(feed, |mut f| async move {
        let chunk = f.next().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), f))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/x-ndjson")
        .header("cache-control", "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(body))
        .map_err(|e| ApiError::Internal(format!("cannot build the stream's reply: {e}")))
}

/// One subscriber's side of the stream.
struct Feed {
    /// To check the token again at every keep-alive (without keeping the
    /// state alive: a replaced state ends the stream).
    state: Weak<ServerState>,
    secret: Option<String>,
    heartbeat: Duration,
    sub: Subscription,
    /// The newest index sent.
    sent: u64,
    done: bool,
}

impl Feed {
    /// The next chunk: replayed events, queued events, a keep-alive line, or
    /// the last line; `None` after that.
    async fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if !self.sub.replay.is_empty() {
            let n = self.sub.replay.len().min(CHUNK);
            let events: Vec<_> = self.sub.replay.drain(..n).collect();
            return Some(self.join(events));
        }
        match tokio::time::timeout(self.heartbeat, self.sub.rx.recv()).await {
            Ok(Some(first)) => {
                let mut events = vec![first];
                while events.len() < CHUNK {
                    match self.sub.rx.try_recv() {
                        Ok(e) => events.push(e),
                        Err(_) => break,
                    }
                }
                Some(self.join(events))
            }
            Ok(None) => {
                let end = self.sub.ending.take().unwrap_or_else(|| StreamEnd {
                    code: "server_stopping".into(),
                    message: "the server ended the stream; reconnect".into(),
                    resume_index: self.sent,
                });
                Some(self.end(end))
            }
            Err(_) => Some(self.keep_alive()),
        }
    }

    fn join(&mut self, events: Vec<Arc<crate::events::Event>>) -> Bytes {
        let mut buf = Vec::with_capacity(events.iter().map(|e| e.line.len()).sum());
        for e in events {
            buf.extend_from_slice(&e.line);
            // Only whole indexes count as sent; until the queue is seen empty the
            // last one may have more events to come.
            self.sent = self.sent.max(e.index.saturating_sub(1));
        }
        Bytes::from(buf)
    }

    /// A keep-alive line, unless the token is no longer valid or the state
    /// was replaced (then the last line).
    fn keep_alive(&mut self) -> Bytes {
        let Some(state) = self.state.upgrade() else {
            return self.end(StreamEnd {
                code: "state_replaced".into(),
                message: "this server's state was replaced; reconnect".into(),
                resume_index: self.sent,
            });
        };
        if let Err(e) = state
            .acl
            .authenticate(self.secret.as_deref(), crate::broker::now_ms())
        {
            return self.end(StreamEnd {
                code: "token_invalid".into(),
                message: format!("the stream's token is no longer valid: {e}"),
                resume_index: self.sent,
            });
        }
        // Everything released up to `last` was queued before the queue is
        // looked at; an empty queue means all of it was sent.
        let last = state.events.last_index();
        if self.sub.rx.is_empty() {
            self.sent = self.sent.max(last);
        }
        line(&StreamLine::Heartbeat {
            heartbeat: StreamHeartbeat { index: self.sent },
        })
    }

    fn end(&mut self, end: StreamEnd) -> Bytes {
        self.done = true;
        line(&StreamLine::End { end })
    }
}

fn line(l: &StreamLine) -> Bytes {
    let mut v = serde_json::to_vec(l).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Result<StreamQuery, ApiError> {
        parse_query(&format!("/v1/event/stream?{s}").parse().unwrap())
    }

    fn field(e: ApiError) -> Option<String> {
        match e {
            ApiError::BadRequest { field, .. } => field,
            other => panic!("not a 400: {other:?}"),
        }
    }

    #[test]
    fn query_is_read_strictly() {
        let ok = q("topic=Job&topic=Node&namespace=a&index=7").unwrap();
        assert_eq!(ok.topics.len(), 2);
        assert_eq!(ok.namespace.as_deref(), Some("a"));
        assert_eq!(ok.index, Some(7));
        assert_eq!(
            field(q("topic=Deployment").unwrap_err()).as_deref(),
            Some("topic")
        );
        assert_eq!(field(q("topic=job").unwrap_err()).as_deref(), Some("topic"));
        assert_eq!(field(q("index=-1").unwrap_err()).as_deref(), Some("index"));
        assert_eq!(field(q("index=x").unwrap_err()).as_deref(), Some("index"));
        assert_eq!(
            field(q("index=1&index=2").unwrap_err()).as_deref(),
            Some("index")
        );
        assert_eq!(field(q("wait=5s").unwrap_err()).as_deref(), Some("wait"));
    }
}

//! Several servers on one etcd: leader election, fencing and forwarding.
//!
//! Every server of an HA cluster serves the API. One of them, the leader, holds the leader
//! key `meta/leader` in the store, bound to an etcd lease it renews; only the leader loads the
//! state and runs the evaluation broker, the scheduler workers, the plan applier, the
//! heartbeat monitor, the drainer and the rebalancer. The others keep a copy of the state fed
//! by the store's watch (`state/replica.rs`) and serve reads (`GET`, except agent routes) from
//! it; they forward every other request to the leader's advertised API address, which the
//! leader key holds. After a forwarded write the follower waits until its copy has reached
//! the write's index (the leader's [`INDEX_HEADER`]), so a client reads its own writes
//! through the server it wrote through.
//!
//! ```text
//!  server A (leader)                 etcd                      server B (follower)
//!   grant lease, create meta/leader --> created at index L
//!   load state (fenced on L) <--------- scan
//!   run broker, workers, applier
//!   every ttl/3: renew lease ---------> ok                       <-- watch meta/leader
//!   write txn + check mod(meta/leader) == L --> watch prefix --> copy of the state (reads)
//!                                                                 write -> forward to A
//!        ... A dies: no renewals ...
//!                                      lease expires, key deleted --> B: campaign, wins at L'
//!                                                                     load state (fenced on L')
//!                                                                     run broker ... (leader)
//! ```
//!
//! Fencing: the leader's writes go through a [`FencedStore`] that adds the check "the leader
//! key still has mod index L" to every transaction, inside etcd's own atomic transaction. A
//! deposed leader (paused, partitioned, or slow to notice) cannot commit anything once its key
//! expired or another server took it; its requests get a 503 and nothing changes.
//!
//! A leader steps down when its key changes or vanishes, or when it could not renew its lease
//! for a whole TTL; it stops its background work and campaigns again. A server that shuts
//! down revokes its lease, so the next leader takes over at once.

use crate::api::{self, ApiError};
use crate::config::ServerConfig;
use crate::state::ServerState;
use crate::{spawn_background, stop_background, Listener, ServerError};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use taba_image::ImageStore;
use taba_store::{Created, EtcdStore, FencedStore, KeyChange, ReadOnlyStore, Record, Store, Table};
use taba_tls::{PeerIdentity, TlsPeer};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::ServiceExt;

/// The key of the leader record in [`Table::Meta`].
pub const LEADER_KEY: &str = "leader";
/// Header marking a request forwarded by a follower (a forwarded request is never forwarded
/// again, so two servers that disagree about the leader cannot bounce it between them).
pub const FORWARDED_HEADER: &str = "x-taba-forwarded";
/// Header in which a follower under TLS passes the client certificate it verified (DER,
/// hex; `none` when the client presented none). The leader trusts it only from a peer that
/// presents a valid, unrevoked server certificate of the cluster CA; a follower always
/// replaces whatever the client sent in it.
pub const FORWARDED_PEER_HEADER: &str = "x-taba-forwarded-peer";
/// Header on every answer of the leader, and on reads a follower serves from its copy: the
/// store index the answer reflects.
pub const INDEX_HEADER: &str = "x-taba-index";
/// Longest wait of a forwarded write for the follower's copy to catch up with it (ms
/// normally; 2 s was too short for two HA clusters sharing 2 busy cores, and a read
/// through the follower then missed the write it had just forwarded).
const CATCH_UP_WAIT: Duration = Duration::from_secs(10);
/// Longest time a request waits for an election to finish before it gets a 503.
const ELECTION_WAIT: Duration = Duration::from_secs(5);
/// How long a follower waits on one watch of the leader key before it watches again.
const FOLLOWER_WATCH: Duration = Duration::from_secs(5);

/// HA settings of a server (`[store] backend = "etcd"`).
#[derive(Clone, Debug)]
pub struct HaConfig {
    /// TTL of the leader's lease: a leader that stops renewing it is replaced after this.
    pub lease_ttl: Duration,
    /// The API address other servers forward to (`http://host:port`).
    pub advertise: String,
}

/// What the leader key holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// A random id of the leading server process.
    pub id: String,
    /// Its advertised API address (`http://host:port`).
    pub api: String,
}

/// The server's part in the cluster right now.
#[derive(Clone)]
enum Role {
    /// Between terms or elections: requests wait for a leader.
    Unknown,
    /// Another server leads; writes go there, reads to the copy while it follows.
    Follower {
        leader: LeaderRecord,
        replica: Option<Replica>,
    },
    /// This server leads: its router serves requests.
    Leader {
        app: Router,
        state: Arc<ServerState>,
    },
}

/// A follower's copy of the state and the router that serves reads from it.
#[derive(Clone)]
struct Replica {
    app: Router,
    state: Arc<ServerState>,
    /// False once the watch that feeds it ended (the copy is no longer current).
    live: Arc<std::sync::atomic::AtomicBool>,
}

impl Replica {
    fn is_live(&self) -> bool {
        self.live.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Reads of the user API; agent routes (their blocking queries drive the workloads)
    /// always go to the leader.
    fn serves(&self, req: &Request) -> bool {
        let path = req.uri().path();
        matches!(
            *req.method(),
            axum::http::Method::GET | axum::http::Method::HEAD
        ) && path.starts_with("/v1/")
            && !path.starts_with("/v1/agent/")
            && self.is_live()
    }
}

/// Leadership as the API sees it (`GET /v1/status/leader`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderStatus {
    /// The leader's API address, when one is known.
    pub leader: Option<String>,
    /// True when this server is the leader.
    pub is_leader: bool,
    /// This server's advertised API address.
    pub this: String,
}

struct Ha {
    config: ServerConfig,
    ha: HaConfig,
    store: Arc<EtcdStore>,
    images: Arc<ImageStore>,
    me: LeaderRecord,
    role: watch::Sender<Role>,
    http: reqwest::Client,
    stop: watch::Sender<bool>,
}

/// A running server of an HA cluster.
pub struct HaServerHandle {
    addr: SocketAddr,
    ha: Arc<Ha>,
    http: JoinHandle<()>,
    election: JoinHandle<()>,
}

impl crate::Server {
    /// Starts a server that shares `store` with the others: binds the API, then campaigns
    /// for leadership in the background (see the [module docs](self)).
    pub async fn start_ha(
        config: ServerConfig,
        ha: HaConfig,
        store: Arc<EtcdStore>,
        images: Arc<ImageStore>,
    ) -> Result<HaServerHandle, ServerError> {
        crate::sweep_stale_uploads(&config);
        let listener = Listener::bind(&config).await?;
        let addr = listener.addr;
        let mut ha_config = ha;
        if ha_config.advertise.is_empty() {
            ha_config.advertise = format!("{}://{addr}", listener.scheme());
        }
        let me = LeaderRecord {
            id: uuid::Uuid::new_v4().to_string(),
            api: ha_config.advertise.trim_end_matches('/').to_owned(),
        };
        let http = peer_client(&config)?;
        let ha = Arc::new(Ha {
            config,
            ha: ha_config,
            store,
            images,
            me,
            role: watch::channel(Role::Unknown).0,
            http,
            stop: watch::channel(false).0,
        });
        let election = tokio::spawn(run_election(ha.clone()));
        let app = Router::new().fallback(dispatch).with_state(ha.clone());
        let http = listener.serve(app, ha.stop.subscribe());
        tracing::info!(%addr, advertise = %ha.me.api, "HA on etcd: campaigning");
        Ok(HaServerHandle {
            addr,
            ha,
            http,
            election,
        })
    }
}

impl HaServerHandle {
    /// The bound address of the API.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// True while this server leads.
    pub fn is_leader(&self) -> bool {
        matches!(*self.ha.role.borrow(), Role::Leader { .. })
    }

    /// Steps down (revoking the lease, so another server takes over at once), stops the API.
    pub async fn shutdown(self) {
        self.ha.stop.send_replace(true);
        let mut election = self.election;
        if tokio::time::timeout(Duration::from_secs(10), &mut election)
            .await
            .is_err()
        {
            election.abort();
        }
        let mut http = self.http;
        if tokio::time::timeout(Duration::from_secs(5), &mut http)
            .await
            .is_err()
        {
            http.abort();
        }
    }
}

// ---- election ----

enum Campaign {
    Won { index: u64, lease: i64 },
    Lost { holder: Record, at: u64 },
}

fn stopped(ha: &Ha) -> bool {
    *ha.stop.borrow()
}

/// Sleeps `d` unless the server stops first.
async fn pause(ha: &Ha, d: Duration) {
    let mut stop = ha.stop.subscribe();
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

async fn run_election(ha: Arc<Ha>) {
    while !stopped(&ha) {
        match campaign(&ha).await {
            Ok(Campaign::Won { index, lease }) => lead(&ha, index, lease).await,
            Ok(Campaign::Lost { holder, at }) => follow(&ha, holder, at).await,
            Err(e) => {
                ha.role.send_replace(Role::Unknown);
                tracing::warn!(error = %e, "leader election: cannot reach the store");
                pause(&ha, Duration::from_millis(300)).await;
            }
        }
    }
    ha.role.send_replace(Role::Unknown);
}

async fn campaign(ha: &Ha) -> Result<Campaign, taba_store::StoreError> {
    let lease = ha.store.grant_lease(ha.ha.lease_ttl).await?;
    let value = taba_store::encode(&ha.me);
    match ha
        .store
        .create_with_lease(Table::Meta, LEADER_KEY, value, lease)
        .await
    {
        Ok(Created::Won(index)) => Ok(Campaign::Won { index, lease }),
        Ok(Created::Held { holder, at }) => {
            let _ = ha.store.revoke_lease(lease).await;
            Ok(Campaign::Lost { holder, at })
        }
        Err(e) => {
            let _ = ha.store.revoke_lease(lease).await;
            Err(e)
        }
    }
}

fn follower_role(ha: &Ha, holder: &Record, replica: Option<Replica>) -> Role {
    match holder.decode::<LeaderRecord>() {
        // Our own key from an earlier term whose lease has not expired yet: wait it out.
        Ok(leader) if leader.id == ha.me.id => Role::Unknown,
        Ok(leader) => Role::Follower { leader, replica },
        Err(e) => {
            tracing::error!(error = %e, "leader key holds no leader record");
            Role::Unknown
        }
    }
}

/// Follows the holder of the leader key until the key goes; then returns to campaign.
/// Watches from `at`, the index the holder was read at (not the holder's own index, which
/// etcd may have compacted away). Meanwhile it keeps a copy of the state to serve reads,
/// loaded anew whenever its watch ends.
async fn follow(ha: &Ha, holder: Record, mut at: u64) {
    let mut holder = holder;
    // Forward everything while the copy loads, then serve reads from it.
    ha.role.send_replace(follower_role(ha, &holder, None));
    let mut replica = start_replica(ha).await;
    let role = follower_role(ha, &holder, replica.clone());
    if let Role::Follower { leader, .. } = &role {
        tracing::info!(leader = %leader.api, copy = replica.is_some(), "following");
    }
    ha.role.send_replace(role);
    while !stopped(ha) {
        let change = tokio::select! {
            c = ha.store.watch_key(Table::Meta, LEADER_KEY, at, FOLLOWER_WATCH) => c,
            _ = async { let mut s = ha.stop.subscribe(); let _ = s.wait_for(|s| *s).await; } => return,
        };
        match change {
            Ok(KeyChange::Unchanged) => {}
            Ok(KeyChange::Put(next)) => {
                at = next.mod_index;
                holder = next;
            }
            Ok(KeyChange::Deleted) => {
                tracing::info!("leader key gone; campaigning");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the leader key");
                pause(ha, Duration::from_millis(200)).await;
                return;
            }
        }
        if replica.as_ref().is_none_or(|r| !r.is_live()) {
            replica = start_replica(ha).await;
        }
        ha.role
            .send_replace(follower_role(ha, &holder, replica.clone()));
    }
}

/// Loads a copy of the state through a store that refuses writes and feeds it from the
/// store's watch, starting at the index read before loading (changes seen twice are applied
/// twice, harmlessly). `None` when it cannot be loaded now: reads are forwarded meanwhile.
async fn start_replica(ha: &Ha) -> Option<Replica> {
    let store = ha.store.clone();
    let at = match tokio::task::spawn_blocking(move || store.index()).await {
        Ok(Ok(at)) => at,
        other => {
            tracing::warn!(
                ?other,
                "follower: cannot read the store's index; forwarding reads"
            );
            return None;
        }
    };
    let read_only: Arc<dyn Store> = Arc::new(ReadOnlyStore(ha.store.clone()));
    let (config, images) = (ha.config.clone(), ha.images.clone());
    let loaded =
        tokio::task::spawn_blocking(move || ServerState::load(config, read_only, images)).await;
    let state = match loaded {
        Ok(Ok(state)) => Arc::new(state),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "follower: cannot load a copy; forwarding reads");
            return None;
        }
        Err(e) => {
            tracing::warn!(error = %e, "follower: cannot load a copy; forwarding reads");
            return None;
        }
    };
    let app = api::router(state.clone()).ok()?;
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let watch = match ha.store.watch_all(at, tx) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "follower: cannot watch the store; forwarding reads");
            return None;
        }
    };
    let live = Arc::new(std::sync::atomic::AtomicBool::new(true));
    tokio::spawn(feed_replica(state.clone(), rx, watch, live.clone()));
    Some(Replica { app, state, live })
}

/// Applies the watched changes to the copy until the watch ends or the copy is dropped.
async fn feed_replica(
    state: Arc<ServerState>,
    mut rx: tokio::sync::mpsc::Receiver<Result<taba_store::ChangeBatch, taba_store::StoreError>>,
    watch: JoinHandle<()>,
    live: Arc<std::sync::atomic::AtomicBool>,
) {
    let weak = Arc::downgrade(&state);
    drop(state);
    while let Some(batch) = rx.recv().await {
        let Some(state) = weak.upgrade() else { break };
        let applied = match batch {
            Ok(b) => state.apply_replicated(&b).await.map_err(|e| e.to_string()),
            Err(e) => Err(taba_types::error_chain(&e)),
        };
        if let Err(e) = applied {
            tracing::warn!(
                error = e,
                "follower: the copy stopped following; loading anew"
            );
            break;
        }
    }
    live.store(false, std::sync::atomic::Ordering::SeqCst);
    if let Some(state) = weak.upgrade() {
        state.events.close(
            "state_replaced",
            "this server's copy of the state stopped following the store; reconnect",
        );
    }
    watch.abort();
}

/// One term as leader: load the state fenced on the leader key, run the background work,
/// renew the lease until it is lost or the server stops; then stop everything.
async fn lead(ha: &Ha, index: u64, lease: i64) {
    let started = Instant::now();
    ha.role.send_replace(Role::Unknown);
    let fenced: Arc<dyn Store> = Arc::new(FencedStore::new(
        ha.store.clone(),
        Table::Meta,
        LEADER_KEY,
        index,
    ));
    let (config, images) = (ha.config.clone(), ha.images.clone());
    let loaded =
        tokio::task::spawn_blocking(move || ServerState::load(config, fenced, images)).await;
    let state = match loaded {
        Ok(Ok(state)) => Arc::new(state),
        Ok(Err(e)) => return resign(ha, lease, &e.to_string()).await,
        Err(e) => return resign(ha, lease, &e.to_string()).await,
    };
    let app = match api::router(state.clone()) {
        Ok(app) => app,
        Err(e) => return resign(ha, lease, &e.to_string()).await,
    };
    let tasks = spawn_background(&state, ha.config.num_workers.max(1));
    ha.role.send_replace(Role::Leader {
        app,
        state: state.clone(),
    });
    tracing::info!(
        index,
        took_ms = started.elapsed().as_millis() as u64,
        "leading: state loaded"
    );
    let why = hold(ha, index, lease).await;
    ha.role.send_replace(Role::Unknown);
    tracing::warn!(reason = why, "stepping down");
    stop_background(&state, tasks).await;
    let _ = ha.store.revoke_lease(lease).await;
}

/// Keeps the lease alive while the leader key is ours; returns why leadership ended.
async fn hold(ha: &Ha, index: u64, lease: i64) -> &'static str {
    let ttl = ha.ha.lease_ttl;
    let tick = (ttl / 3).max(Duration::from_millis(100));
    let mut renewed = Instant::now();
    loop {
        let change = tokio::select! {
            c = ha.store.watch_key(Table::Meta, LEADER_KEY, index, tick) => c,
            _ = async { let mut s = ha.stop.subscribe(); let _ = s.wait_for(|s| *s).await; } => {
                return "server stopping";
            }
        };
        match change {
            Ok(KeyChange::Unchanged) => {}
            Ok(_) => return "the leader key changed",
            Err(e) => {
                // A watch from an index etcd compacted away fails: read the key instead.
                tracing::debug!(error = %e, "cannot watch the leader key; reading it");
                let store = ha.store.clone();
                let read =
                    tokio::task::spawn_blocking(move || store.get(Table::Meta, LEADER_KEY)).await;
                match read {
                    Ok(Ok(Some(rec))) if rec.mod_index == index => {}
                    Ok(Ok(_)) => return "the leader key changed",
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the leader key"),
                    Err(_) => return "server stopping",
                }
            }
        }
        match ha.store.keep_lease_alive(lease).await {
            Ok(true) => renewed = Instant::now(),
            Ok(false) => return "the lease expired",
            Err(e) => tracing::warn!(error = %e, "cannot renew the leader lease"),
        }
        if renewed.elapsed() >= ttl {
            return "the lease could not be renewed for a whole TTL";
        }
    }
}

async fn resign(ha: &Ha, lease: i64, why: &str) {
    tracing::error!(error = why, "cannot load the state as leader; resigning");
    ha.role.send_replace(Role::Unknown);
    let _ = ha.store.revoke_lease(lease).await;
    pause(ha, Duration::from_millis(500)).await;
}

// ---- requests ----

/// Waits (bounded) until the role is known.
async fn current_role(ha: &Ha) -> Role {
    let mut role = ha.role.subscribe();
    let known = tokio::time::timeout(
        ELECTION_WAIT,
        role.wait_for(|r| !matches!(r, Role::Unknown)),
    )
    .await;
    match known {
        Ok(Ok(r)) => r.clone(),
        _ => Role::Unknown,
    }
}

async fn dispatch(State(ha): State<Arc<Ha>>, req: Request) -> Response {
    if req.uri().path() == "/v1/status/leader" {
        return leader_status(&ha).await;
    }
    let forwarded = req.headers().contains_key(FORWARDED_HEADER);
    match current_role(&ha).await {
        Role::Leader { app, state } => match trust_forwarded_peer(&state, req) {
            Ok(req) => serve_with_index(app, &state, req).await,
            Err(e) => e.into_response(),
        },
        Role::Follower {
            replica: Some(r), ..
        } if !forwarded && r.serves(&req) => serve_with_index(r.app.clone(), &r.state, req).await,
        Role::Follower { leader, replica } if !forwarded => {
            let resp = forward(&ha, &leader.api, req).await;
            if let (Some(r), Some(index)) = (replica, answered_index(&resp)) {
                catch_up(&r, index).await;
            }
            resp
        }
        Role::Follower { .. } => {
            ApiError::Unavailable("forwarded to a server that is not the leader; retry".into())
                .into_response()
        }
        Role::Unknown => ApiError::Unavailable(format!(
            "no leader elected within {}s; retry",
            ELECTION_WAIT.as_secs()
        ))
        .into_response(),
    }
}

/// Serves `req` with `app` and tells the index of `state` the answer reflects.
async fn serve_with_index(app: Router, state: &ServerState, req: Request) -> Response {
    let mut resp = match app.oneshot(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    };
    resp.headers_mut()
        .insert(INDEX_HEADER, axum::http::HeaderValue::from(state.index()));
    resp
}

/// The index the leader answered at ([`INDEX_HEADER`]).
fn answered_index(resp: &Response) -> Option<u64> {
    resp.headers()
        .get(INDEX_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// After a forwarded request: waits (bounded) until the copy has reached the index the
/// leader answered at, so the next read through this server sees the write.
async fn catch_up(replica: &Replica, index: u64) {
    let mut watch = replica.state.watch_index();
    let reached = tokio::time::timeout(CATCH_UP_WAIT, watch.wait_for(|i| *i >= index)).await;
    if reached.is_err() {
        tracing::warn!(
            index,
            copy = replica.state.index(),
            "follower: copy behind the leader"
        );
    }
}

async fn leader_status(ha: &Ha) -> Response {
    let status = match &*ha.role.borrow() {
        Role::Leader { .. } => LeaderStatus {
            leader: Some(ha.me.api.clone()),
            is_leader: true,
            this: ha.me.api.clone(),
        },
        Role::Follower { leader, .. } => LeaderStatus {
            leader: Some(leader.api.clone()),
            is_leader: false,
            this: ha.me.api.clone(),
        },
        Role::Unknown => LeaderStatus {
            leader: None,
            is_leader: false,
            this: ha.me.api.clone(),
        },
    };
    axum::Json(status).into_response()
}

/// On the leader: a request a follower forwarded under TLS carries the client certificate the
/// follower verified at its handshake ([`FORWARDED_PEER_HEADER`]). Taken as the request's
/// [`TlsPeer`] only when the connection's own peer is a valid, unrevoked server certificate of
/// the cluster CA; the API's TLS gate and the node credential checks then see the original
/// client, so they apply exactly as if it had connected here. From any other caller the header
/// is refused (403). Without TLS the header is dropped.
fn trust_forwarded_peer(state: &ServerState, mut req: Request) -> Result<Request, ApiError> {
    let Some(value) = req.headers_mut().remove(FORWARDED_PEER_HEADER) else {
        return Ok(req);
    };
    if state.config.tls.is_none() {
        return Ok(req);
    }
    let sender = req.extensions().get::<TlsPeer>().and_then(|p| p.0.clone());
    let trusted = sender.as_ref().is_some_and(|p| {
        p.is_server() && !p.is_expired() && !state.credentials.is_revoked(&p.fingerprint)
    });
    if !trusted {
        let who = sender.map_or_else(|| "a client without a certificate".into(), |p| p.describe());
        tracing::warn!("refused: {who} sent {FORWARDED_PEER_HEADER} (only servers may)");
        return Err(ApiError::Forbidden {
            message: format!("{FORWARDED_PEER_HEADER}: only a server of the cluster may send it"),
            field: None,
        });
    }
    let bad = |why: &str| ApiError::BadRequest {
        message: format!("{FORWARDED_PEER_HEADER}: {why}"),
        field: None,
    };
    let text = value.to_str().map_err(|_| bad("not ASCII"))?;
    let peer = if text == "none" {
        None
    } else {
        let der = hex_decode(text).ok_or_else(|| bad("not hex"))?;
        let id = PeerIdentity::from_der(&der).map_err(|e| bad(&e.to_string()))?;
        Some(Arc::new(id))
    };
    req.extensions_mut().insert(TlsPeer(peer));
    Ok(req)
}

/// On a follower under TLS: the value of [`FORWARDED_PEER_HEADER`] for the client certificate
/// this server's handshake verified (none without TLS).
fn forwarded_peer(ha: &Ha, req: &Request) -> Option<String> {
    ha.config.tls.as_ref()?;
    let peer = req.extensions().get::<TlsPeer>().and_then(|p| p.0.clone());
    Some(match peer {
        Some(p) => p.der.iter().map(|b| format!("{b:02x}")).collect(),
        None => "none".to_owned(),
    })
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The client of forwarded requests: under TLS it trusts only the cluster CA (the leader must
/// present a server certificate valid for its advertised address) and presents this server's
/// certificate, so the leader knows the request comes from a server of the cluster.
fn peer_client(config: &ServerConfig) -> Result<reqwest::Client, ServerError> {
    let mut b = reqwest::Client::builder().connect_timeout(Duration::from_secs(2));
    if let Some(t) = &config.tls {
        let tls = taba_tls::ClientTls::from_files(&t.files).map_err(ServerError::Tls)?;
        let bad = |e: reqwest::Error| ServerError::PeerClient(e.to_string());
        b = b
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&tls.ca_pem).map_err(bad)?);
        if let Some(id) = &tls.identity_pem {
            b = b.identity(reqwest::Identity::from_pem(id).map_err(bad)?);
        }
    }
    b.build()
        .map_err(|e| ServerError::PeerClient(e.to_string()))
}

/// Headers that describe one hop of a connection, not the request (RFC 9110 7.6.1).
fn hop_by_hop(name: &axum::http::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

/// Sends `req` to the leader at `leader` and streams its answer back (blocking queries and
/// followed logs stream through unchanged).
async fn forward(ha: &Ha, leader: &str, req: Request) -> Response {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let peer = forwarded_peer(ha, &req);
    let (parts, body) = req.into_parts();
    let mut out = ha
        .http
        .request(parts.method.clone(), format!("{leader}{path}"))
        .header(FORWARDED_HEADER, "1");
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) && name.as_str() != FORWARDED_PEER_HEADER {
            out = out.header(name, value);
        }
    }
    if let Some(peer) = peer {
        out = out.header(FORWARDED_PEER_HEADER, peer);
    }
    let out = out.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    match out.send().await {
        Ok(resp) => {
            let mut back = Response::builder().status(resp.status());
            for (name, value) in resp.headers() {
                if !hop_by_hop(name) {
                    back = back.header(name, value);
                }
            }
            back.body(Body::from_stream(resp.bytes_stream()))
                .unwrap_or_else(|e| {
                    ApiError::Internal(format!("cannot relay the leader's answer: {e}"))
                        .into_response()
                })
        }
        Err(e) => {
            tracing::warn!(%leader, error = %e, "cannot forward to the leader");
            ApiError::Unavailable(format!("the leader at {leader} cannot be reached; retry"))
                .into_response()
        }
    }
}

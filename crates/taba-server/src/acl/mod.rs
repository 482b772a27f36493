//! Access control on the server: who is calling ([`Caller`]) and what they
//! may do, from the tokens and policies kept in the store (tables
//! `acl_tokens`, `acl_policies`, and the `acl_bootstrap` record in `meta`).
//!
//! Every route of the API has an [`AuthClass`] in the route table
//! (`crate::api::routes`); one middleware ([`guard`]) authenticates the
//! caller and checks the class before the handler runs. Routes whose
//! namespace is only known from the resource (an allocation, an evaluation,
//! a job body) get the [`Caller`] through the [`Auth`] extractor and check it
//! themselves; lists are filtered to what the caller may read.
//!
//! Tokens are looked up by the SHA-256 of their secret in memory: every
//! token is loaded at start, compiled with its policies into a [`Caller`]
//! once, and recompiled when a policy changes; a revoked token is removed at
//! once. A request pays one SHA-256 of ~70 bytes and one hash-map lookup.
//!
//! This module owns the in-memory model; writes go through
//! `ServerState` (`state/acl.rs`) so they are durable before they apply.

pub mod agent;
mod guard;

pub use guard::{bearer, guard, Auth, AuthClass};

use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use taba_store::{Record, Store, Table};
use taba_types::acl::{Access, AclPolicy, AclToken, Capability, TokenType, ANY_NAMESPACE};
use taba_types::UnixMillis;

/// Key of the bootstrap marker in the `meta` table.
pub const BOOTSTRAP_KEY: &str = "acl_bootstrap";

/// The SHA-256 of a token secret.
pub type SecretHash = [u8; 32];

/// Hash a secret as the store keeps it.
pub fn hash_secret(secret: &str) -> SecretHash {
    Sha256::digest(secret.as_bytes()).into()
}

/// Lower-case hex of a hash.
pub fn hex(h: &SecretHash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<SecretHash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A new secret: `taba_` and 244 random bits (two v4 UUIDs from the OS's
/// random source) in hex.
pub fn new_secret() -> String {
    format!(
        "taba_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// A new accessor id.
pub fn new_accessor() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The rights of a caller, compiled from its policies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rights {
    management: bool,
    namespaces: HashMap<String, BTreeSet<Capability>>,
    any_namespace: BTreeSet<Capability>,
    node: Option<Access>,
    operator: Option<Access>,
}

impl Rights {
    /// Every right.
    pub fn all() -> Self {
        Self {
            management: true,
            ..Self::default()
        }
    }

    /// The union of `policies` (names without a policy grant nothing).
    pub fn compile<'a>(policies: impl IntoIterator<Item = &'a AclPolicy>) -> Self {
        let mut r = Self::default();
        for p in policies {
            for (ns, rule) in &p.namespaces {
                let set = if ns == ANY_NAMESPACE {
                    &mut r.any_namespace
                } else {
                    r.namespaces.entry(ns.clone()).or_default()
                };
                set.extend(rule.capabilities.iter().copied());
            }
            r.node = r.node.max(p.node);
            r.operator = r.operator.max(p.operator);
        }
        r
    }

    /// Holds `cap` in namespace `ns`.
    pub fn allows(&self, ns: &str, cap: Capability) -> bool {
        self.management
            || self.any_namespace.contains(&cap)
            || self.namespaces.get(ns).is_some_and(|s| s.contains(&cap))
    }

    /// Holds any capability in namespace `ns`.
    pub fn sees_namespace(&self, ns: &str) -> bool {
        self.management
            || !self.any_namespace.is_empty()
            || self.namespaces.get(ns).is_some_and(|s| !s.is_empty())
    }

    /// Node access at least `a`.
    pub fn node(&self, a: Access) -> bool {
        self.management || self.node.is_some_and(|n| n.grants(a))
    }

    /// Operator access at least `a`.
    pub fn operator(&self, a: Access) -> bool {
        self.management || self.operator.is_some_and(|n| n.grants(a))
    }

    /// A management token (or ACLs off).
    pub fn management(&self) -> bool {
        self.management
    }
}

/// Who is calling, as resolved from the request's token.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Token accessor id (empty when ACLs are off).
    pub accessor_id: String,
    /// Token name.
    pub name: String,
    /// When the token expires.
    pub expire_time: Option<UnixMillis>,
    /// What it may do.
    pub rights: Rights,
}

impl Caller {
    /// The caller when ACLs are turned off: anonymous, every right.
    pub fn anonymous() -> Self {
        Self {
            accessor_id: String::new(),
            name: "anonymous (ACLs off)".into(),
            expire_time: None,
            rights: Rights::all(),
        }
    }

    /// How audit events and errors name the caller.
    pub fn actor(&self) -> String {
        if self.accessor_id.is_empty() {
            return self.name.clone();
        }
        let short: String = self.accessor_id.chars().take(8).collect();
        if self.name.is_empty() {
            format!("token {short}")
        } else {
            format!("token {:?} ({short})", self.name)
        }
    }

    /// Refuse unless the caller holds `cap` in `ns`.
    pub fn require(&self, ns: &str, cap: Capability) -> Result<(), Denied> {
        if self.rights.allows(ns, cap) {
            return Ok(());
        }
        Err(Denied(format!(
            "permission denied: {} lacks {:?} in namespace {ns:?}",
            self.actor(),
            cap.to_string()
        )))
    }
}

/// A caller lacks a right (403).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// Why a token was not accepted (401).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// ACLs are on but nobody bootstrapped them.
    #[error("ACLs are not bootstrapped yet; run `taba acl bootstrap` to get a management token")]
    NotBootstrapped,
    /// No token in the request.
    #[error("this request needs a token; pass --token or set TABA_TOKEN (header `Authorization: Bearer <secret>`)")]
    Missing,
    /// The Authorization header is not `Bearer <secret>`.
    #[error("the Authorization header must be `Bearer <secret>`")]
    Malformed,
    /// No such token (never issued, or revoked).
    #[error("token not found: it was revoked or never issued")]
    Unknown,
    /// The token is past its expiry.
    #[error("token {accessor} expired at {at} (ms since the epoch); ask for a new one")]
    Expired {
        /// Accessor id.
        accessor: String,
        /// Expiry.
        at: UnixMillis,
    },
}

#[derive(Default)]
struct Inner {
    bootstrapped: bool,
    policies: BTreeMap<String, AclPolicy>,
    tokens: BTreeMap<String, AclToken>,
    by_hash: HashMap<SecretHash, Arc<Caller>>,
}

impl Inner {
    fn caller(&self, t: &AclToken) -> Caller {
        let rights = match t.token_type {
            TokenType::Management => Rights::all(),
            TokenType::Client => {
                Rights::compile(t.policies.iter().filter_map(|p| self.policies.get(p)))
            }
        };
        Caller {
            accessor_id: t.accessor_id.clone(),
            name: t.name.clone(),
            expire_time: t.expire_time,
            rights,
        }
    }

    fn index_token(&mut self, t: &AclToken) {
        if let Some(h) = unhex(&t.secret_sha256) {
            let c = Arc::new(self.caller(t));
            self.by_hash.insert(h, c);
        }
    }

    fn rebuild(&mut self) {
        self.by_hash.clear();
        let tokens: Vec<AclToken> = self.tokens.values().cloned().collect();
        for t in &tokens {
            self.index_token(t);
        }
    }
}

/// Why the ACL records could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AclLoadError {
    /// The store failed.
    #[error("reading ACL records")]
    Store(#[from] taba_store::StoreError),
    /// A record could not be decoded.
    #[error("cannot decode ACL record {table}/{key}")]
    Decode {
        /// Table.
        table: Table,
        /// Key.
        key: String,
        /// Why.
        #[source]
        source: taba_store::StoreError,
    },
}

/// Tokens, policies and the bootstrap state, in memory.
pub struct AclState {
    enabled: bool,
    inner: RwLock<Inner>,
    anonymous: Arc<Caller>,
    /// Serialises ACL writes so memory applies them in store order.
    pub(crate) writes: tokio::sync::Mutex<()>,
}

impl AclState {
    /// A follower's copy: apply one change the leader committed (a policy, a token, or the
    /// bootstrap marker). Undecodable records are skipped with a warning: the leader wrote
    /// them, and a copy must not stop following over one record.
    pub(crate) fn apply_replicated(&self, table: Table, key: &str, record: Option<&Record>) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        match (table, record) {
            (Table::Meta, r) if key == BOOTSTRAP_KEY => inner.bootstrapped = r.is_some(),
            (Table::AclPolicies, None) => {
                inner.policies.remove(key);
            }
            (Table::AclPolicies, Some(r)) => match r.decode::<AclPolicy>() {
                Ok(p) => {
                    inner.policies.insert(p.name.clone(), p);
                }
                Err(e) => tracing::warn!(key, error = %e, "replica: undecodable ACL policy"),
            },
            (Table::AclTokens, None) => {
                inner.tokens.remove(key);
            }
            (Table::AclTokens, Some(r)) => match r.decode::<AclToken>() {
                Ok(t) => {
                    inner.tokens.insert(t.accessor_id.clone(), t);
                }
                Err(e) => tracing::warn!(key, error = %e, "replica: undecodable ACL token"),
            },
            _ => return,
        }
        inner.rebuild();
    }

    /// Load every policy and token from the store.
    pub fn load(store: &dyn Store, enabled: bool) -> Result<Self, AclLoadError> {
        let mut inner = Inner {
            bootstrapped: store.get(Table::Meta, BOOTSTRAP_KEY)?.is_some(),
            ..Inner::default()
        };
        for rec in store.scan(Table::AclPolicies, "")? {
            let p: AclPolicy = rec.decode().map_err(|source| AclLoadError::Decode {
                table: Table::AclPolicies,
                key: rec.key.clone(),
                source,
            })?;
            inner.policies.insert(p.name.clone(), p);
        }
        for rec in store.scan(Table::AclTokens, "")? {
            let t: AclToken = rec.decode().map_err(|source| AclLoadError::Decode {
                table: Table::AclTokens,
                key: rec.key.clone(),
                source,
            })?;
            inner.tokens.insert(t.accessor_id.clone(), t);
        }
        inner.rebuild();
        Ok(Self {
            enabled,
            inner: RwLock::new(inner),
            anonymous: Arc::new(Caller::anonymous()),
            writes: tokio::sync::Mutex::new(()),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// ACLs are enforced (the server's `[acl] enabled`).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// A management token has been issued.
    pub fn bootstrapped(&self) -> bool {
        self.read().bootstrapped
    }

    /// The caller a request's token stands for, at time `now`.
    pub fn authenticate(
        &self,
        secret: Option<&str>,
        now: UnixMillis,
    ) -> Result<Arc<Caller>, AuthError> {
        if !self.enabled {
            return Ok(self.anonymous.clone());
        }
        let inner = self.read();
        if !inner.bootstrapped {
            return Err(AuthError::NotBootstrapped);
        }
        let secret = secret.ok_or(AuthError::Missing)?;
        let caller = inner
            .by_hash
            .get(&hash_secret(secret))
            .ok_or(AuthError::Unknown)?;
        if let Some(at) = caller.expire_time.filter(|&at| now >= at) {
            return Err(AuthError::Expired {
                accessor: caller.accessor_id.clone(),
                at,
            });
        }
        Ok(caller.clone())
    }

    /// Whether `secret` is a known user token (valid or expired).
    pub fn is_user_token(&self, secret: &str) -> bool {
        self.read().by_hash.contains_key(&hash_secret(secret))
    }

    /// Every policy, by name.
    pub fn policies(&self) -> Vec<AclPolicy> {
        self.read().policies.values().cloned().collect()
    }

    /// A policy by name.
    pub fn policy(&self, name: &str) -> Option<AclPolicy> {
        self.read().policies.get(name).cloned()
    }

    /// Every token, by accessor id.
    pub fn tokens(&self) -> Vec<AclToken> {
        self.read().tokens.values().cloned().collect()
    }

    /// A token by accessor id.
    pub fn token(&self, accessor: &str) -> Option<AclToken> {
        self.read().tokens.get(accessor).cloned()
    }

    pub(crate) fn set_bootstrapped(&self) {
        self.write().bootstrapped = true;
    }

    pub(crate) fn put_policy(&self, p: AclPolicy) {
        let mut inner = self.write();
        inner.policies.insert(p.name.clone(), p);
        inner.rebuild();
    }

    pub(crate) fn remove_policy(&self, name: &str) {
        let mut inner = self.write();
        inner.policies.remove(name);
        inner.rebuild();
    }

    pub(crate) fn put_token(&self, t: AclToken) {
        let mut inner = self.write();
        inner.index_token(&t);
        inner.tokens.insert(t.accessor_id.clone(), t);
    }

    pub(crate) fn remove_token(&self, accessor: &str) {
        let mut inner = self.write();
        if let Some(t) = inner.tokens.remove(accessor) {
            if let Some(h) = unhex(&t.secret_sha256) {
                inner.by_hash.remove(&h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taba_types::acl::NamespaceRule;

    fn policy(name: &str, ns: &str, caps: &[Capability]) -> AclPolicy {
        AclPolicy {
            name: name.into(),
            namespaces: [(
                ns.to_string(),
                NamespaceRule {
                    capabilities: caps.iter().copied().collect(),
                },
            )]
            .into(),
            ..AclPolicy::default()
        }
    }

    #[test]
    fn rights_are_the_union_of_policies() {
        let a = policy("a", "team-a", &[Capability::Read, Capability::Write]);
        let mut b = policy("b", "*", &[Capability::Read]);
        b.node = Some(Access::Write);
        let r = Rights::compile([&a, &b]);
        assert!(r.allows("team-a", Capability::Write));
        assert!(r.allows("team-b", Capability::Read));
        assert!(!r.allows("team-b", Capability::Write));
        assert!(!r.allows("team-a", Capability::Exec));
        assert!(r.node(Access::Read) && r.node(Access::Write));
        assert!(!r.operator(Access::Read) && !r.management());
        let none = Rights::compile([&a]);
        assert!(!none.sees_namespace("team-b") && none.sees_namespace("team-a"));
    }

    #[test]
    fn hashes_round_trip_through_hex() {
        let h = hash_secret("taba_x");
        assert_eq!(unhex(&hex(&h)), Some(h));
        assert_eq!(unhex("zz"), None);
        let s = new_secret();
        assert!(s.starts_with("taba_") && s.len() == 69, "{s}");
        assert_ne!(s, new_secret());
    }
}

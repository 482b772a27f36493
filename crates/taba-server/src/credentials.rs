//! Node credentials, join tokens and revoked certificates.
//!
//! - A node id is bound to one credential at its first registration (or
//!   when it joins with a token): the name of its agent certificate under
//!   TLS, or a per-node secret over plain loopback HTTP, of which only the
//!   SHA-256 is kept. Every later agent request for that id must present it.
//! - Join tokens (`taba node token create`) are stored as their SHA-256,
//!   with an expiry; each can be exchanged once.
//! - Revoked certificates are kept by fingerprint (SHA-256 of the DER).
//!
//! All three live in the store's `meta` table (keys `node-credential/ID`,
//! `join-token/HASH`, `revoked-cert/FINGERPRINT`) and, for the checks on
//! every request, in memory.

use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use taba_store::{Store, StoreError, Table, Txn};
use taba_types::{NodeId, UnixMillis};

const NODE_PREFIX: &str = "node-credential/";
const TOKEN_PREFIX: &str = "join-token/";
const REVOKED_PREFIX: &str = "revoked-cert/";

/// Why a credential operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The store failed.
    #[error("credential store")]
    Store(#[from] StoreError),
    /// The join token is not known.
    #[error("unknown join token")]
    UnknownToken,
    /// The join token was exchanged before.
    #[error("join token was already used")]
    TokenUsed,
    /// The join token expired.
    #[error("join token expired")]
    TokenExpired,
    /// The node id already has a credential.
    #[error("node {0} already has a credential")]
    AlreadyBound(NodeId),
    /// The server is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
}

/// What a node id is bound to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NodeCredential {
    /// An agent certificate for this name (`NAME.agent.taba`).
    Cert {
        /// The agent name in the certificate.
        name: String,
        /// The certificate seen at binding (revoked with the node).
        fingerprint: String,
    },
    /// A secret issued by the server; only its SHA-256 is kept.
    Secret {
        /// SHA-256 of the secret, hex.
        sha256: String,
    },
}

/// A stored join token.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct JoinToken {
    created: UnixMillis,
    expires: UnixMillis,
    #[serde(default)]
    used: Option<UnixMillis>,
    #[serde(default)]
    used_by: Option<String>,
}

/// A revoked certificate.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Revocation {
    at: UnixMillis,
    reason: String,
}

/// SHA-256 of a secret, hex.
pub fn sha256_hex(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fresh random secret (256 bits, hex).
pub fn new_secret() -> String {
    let b: [u8; 32] = rand::random();
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal without an early exit.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

use taba_types::now_ms;

/// Credentials in memory, written through the store.
pub struct Credentials {
    store: Arc<dyn Store>,
    nodes: RwLock<HashMap<NodeId, NodeCredential>>,
    revoked: RwLock<HashSet<String>>,
}

impl Credentials {
    /// Load from the store.
    pub fn load(store: Arc<dyn Store>) -> Result<Self, CredentialError> {
        let mut nodes = HashMap::new();
        for rec in store.scan(Table::Meta, NODE_PREFIX)? {
            let id = rec.key.trim_start_matches(NODE_PREFIX);
            nodes.insert(NodeId::from(id), rec.decode::<NodeCredential>()?);
        }
        let mut revoked = HashSet::new();
        for rec in store.scan(Table::Meta, REVOKED_PREFIX)? {
            revoked.insert(rec.key.trim_start_matches(REVOKED_PREFIX).to_string());
        }
        Ok(Self {
            store,
            nodes: RwLock::new(nodes),
            revoked: RwLock::new(revoked),
        })
    }

    async fn apply(&self, txn: Txn) -> Result<u64, CredentialError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.apply(txn))
            .await
            .map_err(|_| CredentialError::ShuttingDown)?
            .map_err(CredentialError::Store)
    }

    async fn get(&self, key: String) -> Result<Option<taba_store::Record>, CredentialError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.get(Table::Meta, &key))
            .await
            .map_err(|_| CredentialError::ShuttingDown)?
            .map_err(CredentialError::Store)
    }

    /// A follower's copy: apply one change of `Table::Meta` the leader committed (a node
    /// binding or a revoked certificate; join tokens are read from the store when used).
    pub(crate) fn apply_replicated(&self, key: &str, record: Option<&taba_store::Record>) {
        if let Some(id) = key.strip_prefix(NODE_PREFIX) {
            let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
            match record.map(|r| r.decode::<NodeCredential>()) {
                Some(Ok(c)) => {
                    nodes.insert(NodeId::from(id), c);
                }
                Some(Err(e)) => tracing::warn!(key, error = %e, "replica: undecodable credential"),
                None => {
                    nodes.remove(&NodeId::from(id));
                }
            }
        } else if let Some(fp) = key.strip_prefix(REVOKED_PREFIX) {
            let mut revoked = self.revoked.write().unwrap_or_else(|p| p.into_inner());
            if record.is_some() {
                revoked.insert(fp.to_string());
            } else {
                revoked.remove(fp);
            }
        }
    }

    /// What `id` is bound to.
    pub fn binding(&self, id: &NodeId) -> Option<NodeCredential> {
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Bind `id` to `cred` if it has no credential yet (`replace` = false) or
    /// replace its credential.
    pub async fn bind(
        &self,
        id: &NodeId,
        cred: NodeCredential,
        replace: bool,
    ) -> Result<(), CredentialError> {
        let key = format!("{NODE_PREFIX}{id}");
        let mut txn = Txn::new().put_encoded(Table::Meta, key.clone(), &cred);
        if !replace {
            txn = txn.check_absent(Table::Meta, key);
        }
        match self.apply(txn).await {
            Ok(_) => {}
            Err(CredentialError::Store(StoreError::Conflict { .. })) => {
                return Err(CredentialError::AlreadyBound(id.clone()))
            }
            Err(e) => return Err(e),
        }
        self.nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), cred);
        Ok(())
    }

    /// Forget `id`'s credential (a removed node); revokes its certificate.
    pub async fn forget(&self, id: &NodeId) -> Result<(), CredentialError> {
        if let Some(NodeCredential::Cert { fingerprint, .. }) = self.binding(id) {
            self.revoke(&fingerprint, &format!("node {id} removed"))
                .await?;
        }
        self.apply(Txn::new().delete(Table::Meta, format!("{NODE_PREFIX}{id}")))
            .await?;
        self.nodes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        Ok(())
    }

    /// Whether the certificate with this fingerprint is revoked.
    pub fn is_revoked(&self, fingerprint: &str) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(fingerprint)
    }

    /// Revoke a certificate by fingerprint.
    pub async fn revoke(&self, fingerprint: &str, reason: &str) -> Result<(), CredentialError> {
        let rec = Revocation {
            at: now_ms(),
            reason: reason.to_string(),
        };
        self.apply(Txn::new().put_encoded(
            Table::Meta,
            format!("{REVOKED_PREFIX}{fingerprint}"),
            &rec,
        ))
        .await?;
        self.revoked
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fingerprint.to_string());
        Ok(())
    }

    /// The certificate fingerprint bound to the node named `name`, if any.
    pub fn fingerprint_of_agent(&self, name: &str) -> Vec<(NodeId, String)> {
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|(id, c)| match c {
                NodeCredential::Cert {
                    name: n,
                    fingerprint,
                } if n == name => Some((id.clone(), fingerprint.clone())),
                _ => None,
            })
            .collect()
    }

    /// A new join token valid for `ttl_ms`; only its hash is stored.
    pub async fn create_token(&self, ttl_ms: u64) -> Result<(String, UnixMillis), CredentialError> {
        let token = new_secret();
        let now = now_ms();
        let rec = JoinToken {
            created: now,
            expires: now.saturating_add(ttl_ms),
            used: None,
            used_by: None,
        };
        self.apply(Txn::new().put_encoded(
            Table::Meta,
            format!("{TOKEN_PREFIX}{}", sha256_hex(&token)),
            &rec,
        ))
        .await?;
        Ok((token, rec.expires))
    }

    /// Use a join token once, for `who`.
    pub async fn consume_token(&self, token: &str, who: &str) -> Result<(), CredentialError> {
        let key = format!("{TOKEN_PREFIX}{}", sha256_hex(token));
        let rec = self
            .get(key.clone())
            .await?
            .ok_or(CredentialError::UnknownToken)?;
        let mut t: JoinToken = rec.decode()?;
        if t.used.is_some() {
            return Err(CredentialError::TokenUsed);
        }
        if now_ms() >= t.expires {
            return Err(CredentialError::TokenExpired);
        }
        t.used = Some(now_ms());
        t.used_by = Some(who.to_string());
        // Only if nobody used it in between.
        let txn = Txn::new()
            .check_mod_index(Table::Meta, key.clone(), rec.mod_index)
            .put_encoded(Table::Meta, key, &t);
        match self.apply(txn).await {
            Ok(_) => Ok(()),
            Err(CredentialError::Store(StoreError::Conflict { .. })) => {
                Err(CredentialError::TokenUsed)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials::load(Arc::new(taba_store::MemoryStore::new())).unwrap()
    }

    #[tokio::test]
    async fn tokens_are_used_once_and_expire() {
        let c = creds();
        let (t, _) = c.create_token(60_000).await.unwrap();
        c.consume_token(&t, "n1").await.unwrap();
        assert!(matches!(
            c.consume_token(&t, "n2").await,
            Err(CredentialError::TokenUsed)
        ));
        let (t2, _) = c.create_token(0).await.unwrap();
        assert!(matches!(
            c.consume_token(&t2, "n1").await,
            Err(CredentialError::TokenExpired)
        ));
        assert!(matches!(
            c.consume_token("nope", "n1").await,
            Err(CredentialError::UnknownToken)
        ));
    }

    #[tokio::test]
    async fn bindings_and_revocations_survive_a_reload() {
        let store: Arc<dyn Store> = Arc::new(taba_store::MemoryStore::new());
        let c = Credentials::load(store.clone()).unwrap();
        let id = NodeId::from("a1");
        let cred = NodeCredential::Secret {
            sha256: sha256_hex("s"),
        };
        c.bind(&id, cred.clone(), false).await.unwrap();
        assert!(matches!(
            c.bind(&id, cred.clone(), false).await,
            Err(CredentialError::AlreadyBound(_))
        ));
        c.revoke("ff00", "test").await.unwrap();
        let again = Credentials::load(store).unwrap();
        assert_eq!(again.binding(&id), Some(cred));
        assert!(again.is_revoked("ff00"));
        assert!(!again.is_revoked("ff01"));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}

//! ACL writes: bootstrap, policies and tokens, each durable in the store
//! before the in-memory model ([`crate::acl::AclState`]) applies it.
//! Bootstrap is guarded by a store check (the `acl_bootstrap` record must be
//! absent), so it happens once even with several servers racing.

use super::{ServerState, StateError};
use crate::acl::{hash_secret, hex, new_accessor, new_secret, BOOTSTRAP_KEY};
use crate::broker::now_ms;
use serde::{Deserialize, Serialize};
use taba_store::{StoreError, Table, Txn};
use taba_types::acl::{AclPolicy, AclToken, TokenType};
use taba_types::DurationSpec;

/// The `acl_bootstrap` record.
#[derive(Serialize, Deserialize)]
struct Bootstrap {
    time: u64,
    accessor_id: String,
}

/// A token to create.
pub struct NewToken {
    /// Free text.
    pub name: String,
    /// Client or management.
    pub token_type: TokenType,
    /// Policies by name (checked to exist).
    pub policies: Vec<String>,
    /// Lifetime.
    pub ttl: Option<DurationSpec>,
}

fn mint(t: &NewToken) -> (AclToken, String) {
    let secret = new_secret();
    let now = now_ms();
    let token = AclToken {
        accessor_id: new_accessor(),
        name: t.name.clone(),
        token_type: t.token_type,
        policies: t.policies.clone(),
        secret_sha256: hex(&hash_secret(&secret)),
        create_time: now,
        expire_time: t.ttl.map(|d| now.saturating_add(d.0)),
    };
    (token, secret)
}

impl ServerState {
    /// Issue the first management token; refused once done.
    pub async fn bootstrap_acl(&self, name: &str) -> Result<(AclToken, String), StateError> {
        let _w = self.acl.writes.lock().await;
        self.bootstrap_locked(name).await
    }

    async fn bootstrap_locked(&self, name: &str) -> Result<(AclToken, String), StateError> {
        let (token, secret) = mint(&NewToken {
            name: name.into(),
            token_type: TokenType::Management,
            policies: vec![],
            ttl: None,
        });
        let marker = Bootstrap {
            time: token.create_time,
            accessor_id: token.accessor_id.clone(),
        };
        let txn = Txn::new()
            .check_absent(Table::Meta, BOOTSTRAP_KEY)
            .put_encoded(Table::Meta, BOOTSTRAP_KEY, &marker)
            .put_encoded(Table::AclTokens, token.accessor_id.clone(), &token);
        match self.commit(txn).await {
            Ok(_) => {}
            Err(StateError::Store(StoreError::Conflict { .. })) => {
                self.acl.set_bootstrapped();
                return Err(StateError::Conflict(
                    "ACLs are already bootstrapped; a management token can create more tokens (`taba acl token create`)".into(),
                ));
            }
            Err(e) => return Err(e),
        }
        self.acl.put_token(token.clone());
        self.acl.set_bootstrapped();
        Ok((token, secret))
    }

    /// A management token for an in-process caller (`taba dev`, tests):
    /// bootstraps when that is not done yet.
    pub async fn issue_management_token(
        &self,
        name: &str,
    ) -> Result<(AclToken, String), StateError> {
        let _w = self.acl.writes.lock().await;
        if !self.acl.bootstrapped() {
            return self.bootstrap_locked(name).await;
        }
        self.create_token_locked(NewToken {
            name: name.into(),
            token_type: TokenType::Management,
            policies: vec![],
            ttl: None,
        })
        .await
    }

    /// Create or replace a validated policy; tokens naming it change at once.
    pub async fn apply_acl_policy(&self, p: AclPolicy) -> Result<u64, StateError> {
        let _w = self.acl.writes.lock().await;
        let index = self
            .commit(Txn::new().put_encoded(Table::AclPolicies, p.name.clone(), &p))
            .await?;
        self.acl.put_policy(p);
        Ok(index)
    }

    /// Remove a policy; tokens naming it lose its rights.
    pub async fn delete_acl_policy(&self, name: &str) -> Result<u64, StateError> {
        let _w = self.acl.writes.lock().await;
        if self.acl.policy(name).is_none() {
            return Err(StateError::NotFound(format!("policy {name:?} not found")));
        }
        let index = self
            .commit(Txn::new().delete(Table::AclPolicies, name))
            .await?;
        self.acl.remove_policy(name);
        Ok(index)
    }

    /// Create a token naming existing policies.
    pub async fn create_acl_token(&self, t: NewToken) -> Result<(AclToken, String), StateError> {
        let _w = self.acl.writes.lock().await;
        self.create_token_locked(t).await
    }

    async fn create_token_locked(&self, t: NewToken) -> Result<(AclToken, String), StateError> {
        for (i, p) in t.policies.iter().enumerate() {
            if self.acl.policy(p).is_none() {
                return Err(StateError::Invalid {
                    field: format!("policies[{i}]"),
                    message: format!(
                        "no policy {p:?}; apply it first with `taba acl policy apply {p} FILE`"
                    ),
                });
            }
        }
        let (token, secret) = mint(&t);
        self.commit(Txn::new().put_encoded(Table::AclTokens, token.accessor_id.clone(), &token))
            .await?;
        self.acl.put_token(token.clone());
        Ok((token, secret))
    }

    /// Revoke a token by accessor id (a unique prefix works); it is refused
    /// from the next request on.
    pub async fn revoke_acl_token(&self, accessor: &str) -> Result<(String, u64), StateError> {
        let _w = self.acl.writes.lock().await;
        let id = self.find_token(accessor)?;
        let index = self
            .commit(Txn::new().delete(Table::AclTokens, id.clone()))
            .await?;
        self.acl.remove_token(&id);
        Ok((id, index))
    }

    fn find_token(&self, accessor: &str) -> Result<String, StateError> {
        if self.acl.token(accessor).is_some() {
            return Ok(accessor.to_string());
        }
        let m: Vec<String> = self
            .acl
            .tokens()
            .into_iter()
            .filter(|t| !accessor.is_empty() && t.accessor_id.starts_with(accessor))
            .map(|t| t.accessor_id)
            .collect();
        match m.len() {
            1 => Ok(m[0].clone()),
            0 => Err(StateError::NotFound(format!(
                "token {accessor:?} not found"
            ))),
            n => Err(StateError::Ambiguous(format!(
                "token prefix {accessor:?} matches {n} tokens; give more characters"
            ))),
        }
    }
}

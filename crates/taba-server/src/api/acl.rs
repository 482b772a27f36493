//! ACL routes: bootstrap, policies (TOML or JSON), tokens. The guard has
//! already checked the caller (management, or open for bootstrap).

use super::error::ApiError;
use super::extract::Q;
use super::extract::{parse_json, read_body};
use super::query::{page, PageQuery, Paged};
use super::AppState;
use crate::acl::Auth;
use crate::broker::now_ms;
use crate::state::NewToken;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use taba_types::acl::{
    parse_policy_toml, validate_policy, validate_token_request, AclPolicy, AclToken,
    PolicyParseError, TokenType, MAX_POLICY_BYTES,
};
use taba_types::api::{AclDeleteResponse, AclTokenCreated, AclTokenInfo, CreateTokenRequest};
use taba_types::ValidationErrors;

type R<T> = Result<Json<T>, ApiError>;

fn created(t: &AclToken, secret: String) -> AclTokenCreated {
    AclTokenCreated {
        token: AclTokenInfo::from_token(t, now_ms()),
        secret,
    }
}

fn invalid(errs: ValidationErrors) -> ApiError {
    ApiError::Invalid {
        field: errs.0.first().map(|e| e.path.clone()),
        message: errs.to_string(),
    }
}

pub async fn bootstrap(State(app): State<AppState>) -> R<AclTokenCreated> {
    let (t, secret) = app.state.bootstrap_acl("bootstrap").await?;
    Ok(Json(created(&t, secret)))
}

pub async fn list_policies(
    State(app): State<AppState>,
    Q(q): Q<PageQuery>,
) -> Result<Paged<AclPolicy>, ApiError> {
    page(app.state.acl.policies(), &q, |p| p.name.clone())
}

pub async fn get_policy(State(app): State<AppState>, Path(name): Path<String>) -> R<AclPolicy> {
    app.state
        .acl
        .policy(&name)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("policy {name:?} not found")))
}

fn policy_error(e: PolicyParseError) -> ApiError {
    match e {
        PolicyParseError::Invalid(errs) => invalid(errs),
        PolicyParseError::Syntax { ref path, .. } => ApiError::BadRequest {
            field: path.clone(),
            message: e.to_string(),
        },
    }
}

pub async fn put_policy(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> R<AclPolicy> {
    let bytes = read_body(body, MAX_POLICY_BYTES).await?;
    let policy = match super::handlers::content_type(&headers).as_str() {
        "application/toml" | "text/toml" | "text/x-toml" => {
            parse_policy_toml(&name, &bytes).map_err(policy_error)?
        }
        "application/json" | "" => {
            let mut p: AclPolicy = parse_json(&bytes)?;
            if p.name.is_empty() {
                p.name = name.clone();
            } else if p.name != name {
                return Err(ApiError::invalid(
                    "name",
                    format!(
                        "{:?} differs from the policy in the path ({name:?})",
                        p.name
                    ),
                ));
            }
            validate_policy(&p).map_err(invalid)?;
            p
        }
        other => return Err(ApiError::UnsupportedMediaType(other.to_string())),
    };
    app.state.apply_acl_policy(policy.clone()).await?;
    Ok(Json(policy))
}

pub async fn delete_policy(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> R<AclDeleteResponse> {
    let index = app.state.delete_acl_policy(&name).await?;
    Ok(Json(AclDeleteResponse { name, index }))
}

pub async fn list_tokens(
    State(app): State<AppState>,
    Q(q): Q<PageQuery>,
) -> Result<Paged<AclTokenInfo>, ApiError> {
    let now = now_ms();
    let v: Vec<AclTokenInfo> = app
        .state
        .acl
        .tokens()
        .iter()
        .map(|t| AclTokenInfo::from_token(t, now))
        .collect();
    page(v, &q, |t| {
        format!("{:020}.{}", t.create_time, t.accessor_id)
    })
}

pub async fn create_token(State(app): State<AppState>, body: Body) -> R<AclTokenCreated> {
    let req: CreateTokenRequest =
        parse_json(&read_body(body, app.state.config.limits.max_request_body).await?)?;
    validate_token_request(&req.name, &req.policies, req.management, req.ttl).map_err(invalid)?;
    let (t, secret) = app
        .state
        .create_acl_token(NewToken {
            name: req.name,
            token_type: if req.management {
                TokenType::Management
            } else {
                TokenType::Client
            },
            policies: req.policies,
            ttl: req.ttl,
        })
        .await?;
    Ok(Json(created(&t, secret)))
}

pub async fn revoke_token(
    State(app): State<AppState>,
    Path(accessor): Path<String>,
) -> R<AclDeleteResponse> {
    if app.state.acl.token(&accessor).is_none() {
        return Err(ApiError::NotFound(format!(
            "token {accessor:?} not found (this route takes a full accessor id; `taba acl token list` shows them)"
        )));
    }
    let (name, index) = app.state.revoke_acl_token(&accessor).await?;
    Ok(Json(AclDeleteResponse { name, index }))
}

pub async fn token_self(State(app): State<AppState>, auth: Auth) -> R<AclTokenInfo> {
    match app.state.acl.token(&auth.accessor_id) {
        Some(t) => Ok(Json(AclTokenInfo::from_token(&t, now_ms()))),
        None => Err(ApiError::NotFound(format!(
            "{} is not a stored token (ACLs are off)",
            auth.actor()
        ))),
    }
}

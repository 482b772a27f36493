//! Namespace routes: list, show, create or update (`PUT` with a JSON
//! [`Namespace`] body, its name taken from the path), remove.

use super::error::ApiError;
use super::extract::Q;
use super::extract::{parse_json, read_body};
use super::query::{page, PageQuery, Paged};
use super::AppState;
use crate::acl::Auth;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::Json;
use taba_types::acl::Access;
use taba_types::api::{DeleteNamespaceResponse, NamespaceStatus};
use taba_types::namespace::validate_namespace;
use taba_types::Namespace;

type R<T> = Result<Json<T>, ApiError>;

/// Operators see every namespace; others those they hold a capability in.
fn visible(auth: &Auth, ns: &str) -> bool {
    auth.rights.operator(Access::Read) || auth.rights.sees_namespace(ns)
}

pub async fn list(
    State(app): State<AppState>,
    auth: Auth,
    Q(q): Q<PageQuery>,
) -> Result<Paged<NamespaceStatus>, ApiError> {
    let mut all = app.state.list_namespaces().await;
    all.retain(|n| visible(&auth, &n.name));
    page(all, &q, |n| n.name.clone())
}

pub async fn get(
    State(app): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
) -> R<NamespaceStatus> {
    if !visible(&auth, &name) {
        return Err(ApiError::Forbidden {
            message: format!(
                "permission denied: {} has no rights in namespace {name:?} and lacks operator read",
                auth.actor()
            ),
            field: None,
        });
    }
    Ok(Json(app.state.get_namespace(&name).await?))
}

pub async fn put(
    State(app): State<AppState>,
    Path(name): Path<String>,
    body: Body,
) -> R<NamespaceStatus> {
    let bytes = read_body(body, app.state.config.limits.max_request_body).await?;
    // serde would take `[]` for a namespace with every field defaulted.
    if !bytes.trim_ascii_start().starts_with(b"{") {
        return Err(ApiError::BadRequest {
            message: "the body must be a JSON object: {\"description\": ..., \"quota\": {...}}"
                .into(),
            field: None,
        });
    }
    let mut ns: Namespace = parse_json(&bytes)?;
    if ns.name.is_empty() {
        ns.name = name;
    } else if ns.name != name {
        return Err(ApiError::invalid(
            "name",
            format!(
                "{:?} differs from the namespace in the path ({name:?})",
                ns.name
            ),
        ));
    }
    validate_namespace(&ns).map_err(|errs| ApiError::Invalid {
        field: errs.0.first().map(|e| e.path.clone()),
        message: errs.to_string(),
    })?;
    Ok(Json(app.state.apply_namespace(ns).await?))
}

pub async fn delete(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> R<DeleteNamespaceResponse> {
    let index = app.state.delete_namespace(&name).await?;
    Ok(Json(DeleteNamespaceResponse { name, index }))
}

//! Namespace routes: list, show, create or update (`PUT` with a JSON
//! [`Namespace`] body, its name taken from the path), remove.

use super::error::ApiError;
use super::extract::{parse_json, read_body, MAX_JSON_BODY};
use super::AppState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::Json;
use taba_types::api::{DeleteNamespaceResponse, NamespaceStatus};
use taba_types::namespace::validate_namespace;
use taba_types::Namespace;

type R<T> = Result<Json<T>, ApiError>;

pub async fn list(State(app): State<AppState>) -> R<Vec<NamespaceStatus>> {
    Ok(Json(app.state.list_namespaces().await))
}

pub async fn get(State(app): State<AppState>, Path(name): Path<String>) -> R<NamespaceStatus> {
    Ok(Json(app.state.get_namespace(&name).await?))
}

pub async fn put(
    State(app): State<AppState>,
    Path(name): Path<String>,
    body: Body,
) -> R<NamespaceStatus> {
    let bytes = read_body(body, MAX_JSON_BODY).await?;
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

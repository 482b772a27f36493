//! The server's use of the image store (taba-image): existence checks for job
//! submission, the import/list/remove routes, and the agent routes that hand
//! images out (manifest by reference, blobs by digest), with image errors
//! mapped to API errors.

use crate::api::ApiError;
use std::path::Path;
use taba_image::{ImageError, ImageStore, ImageSummary};
use taba_types::api::{ImageDetail, ImageInfo, ImportResponse};
use taba_types::wire::ImageManifest;

/// The summary of a stored image as the API shows it.
pub fn image_info(s: ImageSummary) -> ImageInfo {
    ImageInfo {
        id: s.id.to_string(),
        refs: s.refs.iter().map(|r| r.to_string()).collect(),
        size: s.size,
        layers: s.layers,
        created: s.created.map(|c| c.to_string()),
        kind: s.kind.to_string(),
        format: s.format.map(str::to_string),
    }
}

/// Runs `f` on the image store on a blocking thread (its calls read and write
/// files), as every image route does.
pub async fn on_store<T: Send + 'static>(
    images: &std::sync::Arc<ImageStore>,
    f: impl FnOnce(&ImageStore) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let images = images.clone();
    tokio::task::spawn_blocking(move || f(&images))
        .await
        .map_err(|_| ApiError::ShuttingDown)?
}

/// What a job version records for `reference` (see `ImageStore::pinned`); `None`: not in
/// the store. A reference the store refuses is a 422 on `field`.
pub async fn pinned(
    images: &std::sync::Arc<ImageStore>,
    reference: &str,
    field: &str,
) -> Result<Option<String>, ApiError> {
    let r = reference.to_string();
    match on_store(images, move |i| Ok(i.pinned(&r))).await? {
        Ok(p) => Ok(p),
        Err(e @ ImageError::InvalidReference { .. }) => {
            Err(ApiError::invalid(field, taba_types::error_chain(&e)))
        }
        Err(e) => Err(ApiError::Internal(format!(
            "cannot read the image store: {}",
            taba_types::error_chain(&e)
        ))),
    }
}

/// Import a tar (every image it holds).
pub fn import(images: &ImageStore, path: &Path) -> Result<ImportResponse, ApiError> {
    let all: Vec<ImageInfo> = images
        .import_all(path)
        .map_err(|e| {
            ApiError::invalid(
                "body",
                format!("cannot import image: {}", taba_types::error_chain(&e)),
            )
        })?
        .into_iter()
        .map(image_info)
        .collect();
    Ok(ImportResponse {
        image: all[0].clone(),
        images: all,
    })
}

/// Import a VM disk image (qcow2, raw) as `name`.
pub fn import_disk(
    images: &ImageStore,
    path: &Path,
    name: &str,
    format: Option<taba_types::vm::DiskFormat>,
) -> Result<ImportResponse, ApiError> {
    let info = images
        .import_disk(path, name, format)
        .map(image_info)
        .map_err(|e| match e {
            e @ ImageError::InvalidReference { .. } => {
                ApiError::invalid("disk", taba_types::error_chain(&e))
            }
            e => ApiError::invalid(
                "body",
                format!("cannot import disk image: {}", taba_types::error_chain(&e)),
            ),
        })?;
    Ok(ImportResponse {
        image: info.clone(),
        images: vec![info],
    })
}

/// The id of the image (container or disk) `reference` names.
fn id_of(images: &ImageStore, reference: &str) -> Result<String, ApiError> {
    match images.id_of(reference) {
        Ok(Some(id)) => Ok(id),
        Ok(None) => Err(ApiError::NotFound(format!("image {reference:?} not found"))),
        Err(e) => Err(ApiError::bad("reference", taba_types::error_chain(&e))),
    }
}

/// Every image.
pub fn list(images: &ImageStore) -> Result<Vec<ImageInfo>, ApiError> {
    images
        .list()
        .map(|v| v.into_iter().map(image_info).collect())
        .map_err(|e| {
            ApiError::Internal(format!(
                "cannot list images: {}",
                taba_types::error_chain(&e)
            ))
        })
}

/// An image by reference or id, with its run config.
pub fn inspect(images: &ImageStore, reference: &str) -> Result<ImageDetail, ApiError> {
    let id = id_of(images, reference)?;
    let info = list(images)?
        .into_iter()
        .find(|s| s.id == id)
        .ok_or_else(|| ApiError::NotFound(format!("image {reference:?} not found")))?;
    // A disk image has no run config.
    let config = match images.resolve(&id) {
        Ok(Some(image)) => serde_json::to_value(&image.config)
            .map_err(|e| ApiError::Internal(format!("image config of {reference:?}: {e}")))?,
        _ => serde_json::Value::Null,
    };
    Ok(ImageDetail { info, config })
}

/// Remove by reference or id; returns what the image was.
pub fn remove(images: &ImageStore, reference: &str) -> Result<ImageInfo, ApiError> {
    let id = id_of(images, reference)?;
    let summary = list(images)?.into_iter().find(|s| s.id == id);
    images.remove(reference).map_err(|e: ImageError| {
        ApiError::Internal(format!(
            "cannot remove image {reference:?}: {}",
            taba_types::error_chain(&e)
        ))
    })?;
    Ok(summary.unwrap_or(ImageInfo {
        id,
        refs: vec![reference.to_string()],
        size: 0,
        layers: 0,
        created: None,
        kind: "container".into(),
        format: None,
    }))
}

/// What the image `reference` is made of, for an agent that lacks it.
pub fn manifest(images: &ImageStore, reference: &str) -> Result<ImageManifest, ApiError> {
    match images.manifest(reference) {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(ApiError::NotFound(format!(
            "image {reference:?} not found on this server; import it with `taba image import`"
        ))),
        Err(e @ ImageError::InvalidReference { .. }) => {
            Err(ApiError::bad("reference", taba_types::error_chain(&e)))
        }
        Err(e @ ImageError::NoBlobs(_)) => Err(ApiError::Conflict(taba_types::error_chain(&e))),
        Err(e) => Err(ApiError::Internal(format!(
            "cannot read image {reference:?}: {}",
            taba_types::error_chain(&e)
        ))),
    }
}

/// Opens a blob by digest for streaming: the file and its length.
pub fn open_blob(images: &ImageStore, digest: &str) -> Result<(std::fs::File, u64), ApiError> {
    match images.open_blob(digest) {
        Ok(Some(f)) => Ok(f),
        Ok(None) => Err(ApiError::NotFound(format!(
            "blob {digest} not found on this server"
        ))),
        Err(e @ ImageError::InvalidDigest { .. }) => {
            Err(ApiError::bad("digest", taba_types::error_chain(&e)))
        }
        Err(e) => Err(ApiError::Internal(format!(
            "cannot read blob {digest}: {}",
            taba_types::error_chain(&e)
        ))),
    }
}

/// How a registry failure reaches the caller: a bad reference is a 400, a refusal by the
/// registry (credentials, platform, media types) a 422, an unknown name a 404, a registry
/// that fails or sends bytes its digests deny a 502.
pub fn registry_error(e: &taba_registry::RegistryError) -> ApiError {
    use taba_registry::RegistryError as E;
    let msg = taba_types::error_chain(e);
    match e {
        E::InvalidReference { .. } => ApiError::bad("reference", msg),
        E::Unauthorized { .. }
        | E::PushDenied { .. }
        | E::NoPlatform { .. }
        | E::Unsupported { .. } => ApiError::invalid("reference", msg),
        E::NotFound { .. } | E::Image(ImageError::NotFound(_)) => ApiError::NotFound(msg),
        E::Registry { .. } | E::Download { .. } => ApiError::Registry(msg),
        E::Image(ImageError::Io { .. }) | E::Settings(_) => ApiError::Internal(msg),
        E::Image(_) => ApiError::Registry(msg),
        E::Task => ApiError::ShuttingDown,
    }
}

/// Names the image `source` names `target` too.
pub fn tag(images: &ImageStore, source: &str, target: &str) -> Result<ImageInfo, ApiError> {
    images
        .tag(source, target)
        .map(image_info)
        .map_err(|e| match e {
            ImageError::NotFound(_) => ApiError::NotFound(format!("image {source:?} not found")),
            ImageError::InvalidReference { ref reference, .. } => {
                let field = if reference == target {
                    "reference"
                } else {
                    "source"
                };
                ApiError::bad(field, taba_types::error_chain(&e))
            }
            e => ApiError::Internal(format!("cannot tag: {}", taba_types::error_chain(&e))),
        })
}

/// Removes the images none of `referenced` (references from job versions) names.
pub fn prune(images: &ImageStore, referenced: &[String]) -> Result<Vec<ImageInfo>, ApiError> {
    let keep: std::collections::BTreeSet<String> = referenced
        .iter()
        .filter_map(|r| images.id_of(r).ok().flatten())
        .collect();
    images
        .prune(&keep)
        .map(|v| v.into_iter().map(image_info).collect())
        .map_err(|e| ApiError::Internal(format!("cannot prune: {}", taba_types::error_chain(&e))))
}

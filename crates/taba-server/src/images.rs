//! The server's use of the image store (taba-image): existence checks for job
//! submission, the import/list/remove routes, and the agent routes that hand
//! images out (manifest by reference, blobs by digest), with image errors
//! mapped to API errors.

use crate::api::ApiError;
use std::path::Path;
use taba_image::{ImageError, ImageStore, ImageSummary};
use taba_types::api::{ImageDetail, ImageInfo};
use taba_types::wire::ImageManifest;

fn info(s: ImageSummary) -> ImageInfo {
    ImageInfo {
        id: s.id.to_string(),
        refs: s.refs.iter().map(|r| r.to_string()).collect(),
        size: s.size,
        layers: s.layers,
        created: s.created.map(|c| c.to_string()),
    }
}

/// Whether `reference` resolves to an image.
pub fn exists(images: &ImageStore, reference: &str) -> bool {
    matches!(images.resolve(reference), Ok(Some(_)))
}

/// Import a tar.
pub fn import(images: &ImageStore, path: &Path) -> Result<ImageInfo, ApiError> {
    images.import(path).map(info).map_err(|e| {
        ApiError::invalid(
            "body",
            format!("cannot import image: {}", taba_types::error_chain(&e)),
        )
    })
}

/// Every image.
pub fn list(images: &ImageStore) -> Result<Vec<ImageInfo>, ApiError> {
    images
        .list()
        .map(|v| v.into_iter().map(info).collect())
        .map_err(|e| {
            ApiError::Internal(format!(
                "cannot list images: {}",
                taba_types::error_chain(&e)
            ))
        })
}

/// An image by reference or id, with its run config.
pub fn inspect(images: &ImageStore, reference: &str) -> Result<ImageDetail, ApiError> {
    let image = match images.resolve(reference) {
        Ok(Some(i)) => i,
        Ok(None) => return Err(ApiError::NotFound(format!("image {reference:?} not found"))),
        Err(e) => return Err(ApiError::bad("reference", taba_types::error_chain(&e))),
    };
    let info = list(images)?
        .into_iter()
        .find(|s| s.id == image.id)
        .ok_or_else(|| ApiError::NotFound(format!("image {reference:?} not found")))?;
    let config = serde_json::to_value(&image.config)
        .map_err(|e| ApiError::Internal(format!("image config of {reference:?}: {e}")))?;
    Ok(ImageDetail { info, config })
}

/// Remove by reference or id; returns what the image was.
pub fn remove(images: &ImageStore, reference: &str) -> Result<ImageInfo, ApiError> {
    let image = match images.resolve(reference) {
        Ok(Some(i)) => i,
        Ok(None) => return Err(ApiError::NotFound(format!("image {reference:?} not found"))),
        Err(e) => return Err(ApiError::bad("reference", taba_types::error_chain(&e))),
    };
    let summary = list(images)?.into_iter().find(|s| s.id == image.id);
    images.remove(reference).map_err(|e: ImageError| {
        ApiError::Internal(format!(
            "cannot remove image {reference:?}: {}",
            taba_types::error_chain(&e)
        ))
    })?;
    Ok(summary.unwrap_or(ImageInfo {
        id: image.id.clone(),
        refs: vec![reference.to_string()],
        size: 0,
        layers: 0,
        created: None,
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

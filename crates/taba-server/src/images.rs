//! The server's use of the image store (taba-image): existence checks for job
//! submission and the import/list/remove routes, with image errors mapped to
//! API errors.

use crate::api::ApiError;
use std::path::Path;
use taba_image::{ImageError, ImageStore, ImageSummary};
use taba_types::api::ImageInfo;

fn info(s: ImageSummary) -> ImageInfo {
    ImageInfo {
        id: s.id.to_string(),
        refs: s.refs.iter().map(|r| r.to_string()).collect(),
        size: s.size,
        layers: s.layers,
        created: s.created.map(|c| c.to_string()),
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

/// Whether `reference` resolves to an image.
pub fn exists(images: &ImageStore, reference: &str) -> bool {
    matches!(images.resolve(reference), Ok(Some(_)))
}

/// Import a tar.
pub fn import(images: &ImageStore, path: &Path) -> Result<ImageInfo, ApiError> {
    images
        .import(path)
        .map(info)
        .map_err(|e| ApiError::invalid("body", format!("cannot import image: {}", chain(&e))))
}

/// Every image.
pub fn list(images: &ImageStore) -> Result<Vec<ImageInfo>, ApiError> {
    images
        .list()
        .map(|v| v.into_iter().map(info).collect())
        .map_err(|e| ApiError::Internal(format!("cannot list images: {}", chain(&e))))
}

/// Remove by reference or id; returns what the image was.
pub fn remove(images: &ImageStore, reference: &str) -> Result<ImageInfo, ApiError> {
    let image = match images.resolve(reference) {
        Ok(Some(i)) => i,
        Ok(None) => return Err(ApiError::NotFound(format!("image {reference:?} not found"))),
        Err(e) => return Err(ApiError::bad("reference", chain(&e))),
    };
    let summary = list(images)?.into_iter().find(|s| s.id == image.id);
    images.remove(reference).map_err(|e: ImageError| {
        ApiError::Internal(format!("cannot remove image {reference:?}: {}", chain(&e)))
    })?;
    Ok(summary.unwrap_or(ImageInfo {
        id: image.id.clone(),
        refs: vec![reference.to_string()],
        size: 0,
        layers: 0,
        created: None,
    }))
}

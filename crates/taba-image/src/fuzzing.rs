//! Entry points into the store's parsers for the fuzz targets and their corpus
//! tests (`crates/taba-fuzz`). Not an API: each function runs one internal
//! step exactly as an import or a fetch does, so the checks in `taba-fuzz`
//! exercise the real code.

use std::path::Path;

use taba_types::wire::ImageManifest;

use crate::archive::{self, OuterArchive};
use crate::error::ImageError;
use crate::reference::{self, Lookup, Reference};
use crate::ImageConfig;

/// A reference's canonical and familiar forms, as the store keys and shows it.
pub fn reference(s: &str) -> Result<(String, String), ImageError> {
    let r = Reference::parse(s)?;
    Ok((r.canonical(), r.familiar()))
}

/// How a user's string is looked up: `Ok(Some(canonical))` for a name,
/// `Ok(None)` for an image id.
pub fn lookup(s: &str) -> Result<Option<String>, ImageError> {
    Ok(match reference::lookup(s)? {
        Lookup::Id(_) => None,
        Lookup::Name { canonical, .. } => Some(canonical),
    })
}

/// Unpacks one layer blob (plain, gzip or zstd tar) into the new directory
/// `dest`, as an import does; `diff_id` is the hex sha256 the tar must have.
/// Returns the bytes of file content written.
pub fn unpack_layer(blob: &[u8], dest: &Path, diff_id: &str) -> Result<u64, ImageError> {
    crate::unpack::unpack_layer(blob, dest, None, diff_id, &crate::ImageLimits::default())
        .map(|(u, _)| u.size)
}

/// Parses an image config as an import does (`layers`: the count the manifest
/// states) into what the store keeps.
pub fn image_config(bytes: &[u8], layers: usize) -> Result<ImageConfig, ImageError> {
    let c = archive::parse_config(bytes, layers)?;
    for d in &c.rootfs.diff_ids {
        archive::digest_hex(d, "image config rootfs.diff_ids")?;
    }
    Ok(c.config.map(ImageConfig::from_run).unwrap_or_default())
}

/// Checks a manifest from a server as a fetch does before any blob is read.
pub fn image_manifest(m: &ImageManifest) -> Result<(), ImageError> {
    crate::fetch::validate(m)
}

/// Indexes an image archive (`docker save` or OCI layout, plain or gzip) and
/// reads its manifests and config into an import plan, as `import` does before
/// any layer is unpacked; `scratch` is an empty directory. Returns the
/// canonical references and the number of layers, of every image.
pub fn archive_plan(tar: &Path, scratch: &Path) -> Result<(Vec<String>, usize), ImageError> {
    let outer = OuterArchive::open(tar, scratch, &crate::ImageLimits::default())?;
    let plans = archive::plans(&outer)?;
    Ok((
        plans.iter().flat_map(|p| p.refs.clone()).collect(),
        plans.iter().map(|p| p.layers.len()).sum(),
    ))
}

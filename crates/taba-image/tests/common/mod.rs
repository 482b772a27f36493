//! Builds image archives in test code: layer tars with any entry (including hostile ones),
//! wrapped as `docker save` or OCI image-layout tars.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

/// One entry of a layer tar. Names are written raw, so `..` and `/abs` are possible.
#[derive(Clone)]
pub enum E {
    Dir(&'static str, u32),
    File(&'static str, &'static [u8], u32),
    /// A file with uid, gid, mode and PAX xattrs.
    Owned(
        &'static str,
        &'static [u8],
        u32,
        u32,
        u32,
        Vec<(&'static str, &'static [u8])>,
    ),
    Symlink(&'static str, &'static str),
    Hardlink(&'static str, &'static str),
    Char(&'static str, u32, u32),
    Fifo(&'static str),
}

pub const MTIME: u64 = 1_600_000_000;

fn header(name: &str, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let raw = &mut h.as_old_mut().name;
    raw.fill(0);
    raw[..name.len()].copy_from_slice(name.as_bytes());
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h
}

/// An uncompressed layer tar.
pub fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::Dir(n, mode) => {
                let mut h = header(n, tar::EntryType::Directory, 0, *mode);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::File(n, data, mode) => {
                let mut h = header(n, tar::EntryType::Regular, data.len() as u64, *mode);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
            E::Owned(n, data, uid, gid, mode, xattrs) => {
                if !xattrs.is_empty() {
                    let keys: Vec<(String, &[u8])> = xattrs
                        .iter()
                        .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
                        .collect();
                    b.append_pax_extensions(keys.iter().map(|(k, v)| (k.as_str(), *v)))
                        .unwrap();
                }
                let mut h = header(n, tar::EntryType::Regular, data.len() as u64, *mode);
                h.set_uid(*uid as u64);
                h.set_gid(*gid as u64);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
            E::Symlink(n, target) | E::Hardlink(n, target) => {
                let kind = if matches!(e, E::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                let mut h = header(n, kind, 0, 0o777);
                h.set_link_name_literal(target.as_bytes()).unwrap();
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::Char(n, maj, min) => {
                let mut h = header(n, tar::EntryType::Char, 0, 0o666);
                h.set_device_major(*maj).unwrap();
                h.set_device_minor(*min).unwrap();
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::Fifo(n) => {
                let mut h = header(n, tar::EntryType::Fifo, 0, 0o644);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

pub fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(bytes, ruzstd::encoding::CompressionLevel::Fastest)
}

/// An image config for these (uncompressed) layers; `tweak` makes images differ.
pub fn config(layers: &[Vec<u8>], tweak: &str) -> Vec<u8> {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", sha(l)))
        .collect();
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-02T03:04:05Z",
        "config": {
            "Entrypoint": ["/bin/app"],
            "Cmd": ["--serve", tweak],
            "Env": ["PATH=/bin", "A=1"],
            "WorkingDir": "/srv",
            "User": "1000:1000",
            "ExposedPorts": {"8080/tcp": {}},
            "Labels": {"org.example.tweak": tweak},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

/// An outer tar of (name, bytes) members.
pub fn outer(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// The members of a `docker save` tar (legacy layout, uncompressed layers).
pub fn docker_members(layers: &[Vec<u8>], tags: &[&str], tweak: &str) -> Vec<(String, Vec<u8>)> {
    let cfg = config(layers, tweak);
    let mut members = vec![];
    let mut names = vec![];
    for l in layers {
        let name = format!("{}/layer.tar", sha(l));
        names.push(name.clone());
        members.push((name, l.clone()));
    }
    members.push((format!("{}.json", sha(&cfg)), cfg.clone()));
    let manifest =
        json!([{ "Config": format!("{}.json", sha(&cfg)), "RepoTags": tags, "Layers": names }]);
    members.push((
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap(),
    ));
    members
}

pub fn docker_save(layers: &[Vec<u8>], tags: &[&str], tweak: &str) -> Vec<u8> {
    outer(&docker_members(layers, tags, tweak))
}

/// How an OCI layout stores its layers.
#[derive(Clone, Copy)]
pub enum Comp {
    Plain,
    Gzip,
    Zstd,
}

/// The members of an OCI image layout; `annotations` go on the index entry.
pub fn oci_members(
    layers: &[Vec<u8>],
    comp: Comp,
    annotations: serde_json::Value,
    tweak: &str,
) -> Vec<(String, Vec<u8>)> {
    let cfg = config(layers, tweak);
    let mut members = vec![(
        "oci-layout".to_string(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )];
    let mut descs = vec![];
    for l in layers {
        let (blob, media) = match comp {
            Comp::Plain => (l.clone(), "application/vnd.oci.image.layer.v1.tar"),
            Comp::Gzip => (gzip(l), "application/vnd.oci.image.layer.v1.tar+gzip"),
            Comp::Zstd => (zstd(l), "application/vnd.oci.image.layer.v1.tar+zstd"),
        };
        descs.push(json!({"mediaType": media, "digest": format!("sha256:{}", sha(&blob)), "size": blob.len()}));
        members.push((format!("blobs/sha256/{}", sha(&blob)), blob));
    }
    members.push((format!("blobs/sha256/{}", sha(&cfg)), cfg.clone()));
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", sha(&cfg)), "size": cfg.len()},
        "layers": descs,
    }))
    .unwrap();
    members.push((format!("blobs/sha256/{}", sha(&manifest)), manifest.clone()));
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", sha(&manifest)),
            "size": manifest.len(),
            "annotations": annotations,
        }],
    });
    members.push(("index.json".into(), serde_json::to_vec(&index).unwrap()));
    members
}

pub fn oci(layers: &[Vec<u8>], comp: Comp, name: &str, tweak: &str) -> Vec<u8> {
    outer(&oci_members(
        layers,
        comp,
        json!({"org.opencontainers.image.ref.name": name}),
        tweak,
    ))
}

pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Fails loudly when not root: these tests chown, mknod and mount.
pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (chown, mknod, overlay mounts); run the suite as root"
    );
}

/// Names in a store directory (`layers`, `images`, `tmp`, `leases`).
pub fn names(root: &Path, sub: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join(sub))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

/// Asserts the store holds nothing: no layers, blobs, images, staging dirs, short links or refs.
pub fn assert_empty(root: &Path) {
    for sub in ["layers", "blobs/sha256", "images", "tmp", "l", "leases"] {
        assert!(
            names(root, sub).is_empty(),
            "{sub} not empty: {:?}",
            names(root, sub)
        );
    }
    if let Ok(refs) = std::fs::read(root.join("refs.json")) {
        let v: serde_json::Value = serde_json::from_slice(&refs).unwrap();
        assert!(v["refs"].as_object().unwrap().is_empty(), "refs left: {v}");
    }
}

/// A gzip stream of `head` then `zeros` zero bytes, compressed a MiB at a
/// time: a decompression bomb (a thousandfold) built without holding it.
pub fn gzip_zeros(head: &[u8], zeros: u64) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(head).unwrap();
    let mib = vec![0u8; 1 << 20];
    let mut left = zeros;
    while left > 0 {
        let n = left.min(mib.len() as u64) as usize;
        e.write_all(&mib[..n]).unwrap();
        left -= n as u64;
    }
    e.finish().unwrap()
}

/// A tar (layer or outer archive) of one regular file `name` of `size` zero
/// bytes, gzip-compressed: its header, then zeros to the end (the content,
/// its padding and the end-of-archive blocks are all zeros), and
/// `trailing` more zero bytes after the end of the archive.
pub fn gzip_tar_of_zeros(name: &str, size: u64, trailing: u64) -> Vec<u8> {
    let mut h = header(name, tar::EntryType::Regular, size, 0o644);
    h.set_cksum();
    let padded = size.div_ceil(512) * 512;
    gzip_zeros(h.as_bytes(), padded + 1024 + trailing)
}

/// An OCI layout whose one layer is `blob` (gzip, as stored), stating
/// `diff_id` (hex) for it: for layers too large to hash in a test.
pub fn oci_with_gzip_blob(blob: &[u8], diff_id: &str, name: &str) -> Vec<u8> {
    let cfg = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", sha(&cfg)), "size": cfg.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": format!("sha256:{}", sha(blob)), "size": blob.len()}],
    }))
    .unwrap();
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", sha(&manifest)),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": name},
        }],
    });
    outer(&[
        (
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        (format!("blobs/sha256/{}", sha(blob)), blob.to_vec()),
        (format!("blobs/sha256/{}", sha(&cfg)), cfg),
        (format!("blobs/sha256/{}", sha(&manifest)), manifest),
        ("index.json".into(), serde_json::to_vec(&index).unwrap()),
    ])
}

//! Small test images built from the busybox image of `scripts/setup.sh`:
//! its layer, plus a layer of a few files (accounts with a non-root user and
//! supplementary groups, a home, a directory to become a volume), under an
//! image config the test chooses. Written as `docker save` tars, which both
//! `taba image import` and `podman load` read; no registry, no network.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The (uncompressed) layer of the busybox image tar.
pub fn busybox_layer() -> Vec<u8> {
    let tar_path = super::busybox_tar();
    let mut members = std::collections::HashMap::new();
    let mut a = tar::Archive::new(std::fs::File::open(&tar_path).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let mut bytes = Vec::new();
        e.read_to_end(&mut bytes).unwrap();
        members.insert(name, bytes);
    }
    let manifest: serde_json::Value = serde_json::from_slice(&members["manifest.json"])
        .expect("busybox.tar is a docker save tar");
    let layer = manifest[0]["Layers"][0].as_str().unwrap();
    members.remove(layer).expect("busybox layer")
}

/// A file or directory of the extra layer: path, mode, uid, gid, content
/// (`None`: a directory).
pub type Entry<'a> = (&'a str, u32, u64, u64, Option<&'a [u8]>);

/// The accounts and files the compatibility images add to busybox: a user
/// `web` (1000, home /home/web) in groups `wheel` (10) and `adm` (4), root
/// in `wheel` too (as Docker's busybox image has it), and `/data` with a
/// file, owned by web.
pub const COMPAT_FILES: &[Entry<'static>] = &[
    ("etc/", 0o755, 0, 0, None),
    (
        "etc/passwd",
        0o644,
        0,
        0,
        Some(b"root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1000:web:/home/web:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
    ),
    (
        "etc/group",
        0o644,
        0,
        0,
        Some(b"root:x:0:\nadm:x:4:web\nwheel:x:10:root,web\nweb:x:1000:\nnogroup:x:65534:\n"),
    ),
    ("home/", 0o755, 0, 0, None),
    ("home/web/", 0o750, 1000, 1000, None),
    ("data/", 0o755, 1000, 1000, None),
    ("data/seed", 0o644, 1000, 1000, Some(b"from the image\n")),
];

/// A layer tar of `entries`.
pub fn layer(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, mode, uid, gid, content) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_mode(*mode);
        h.set_uid(*uid);
        h.set_gid(*gid);
        h.set_mtime(0);
        let data = content.unwrap_or(&[]);
        h.set_entry_type(if content.is_some() {
            tar::EntryType::Regular
        } else {
            tar::EntryType::Directory
        });
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Write `<dir>/<name>.tar`: a `docker save` tar of `layers` tagged
/// `<name>:latest`, with `run` as the config's `config` section.
pub fn docker_save(dir: &Path, name: &str, layers: &[Vec<u8>], run: serde_json::Value) -> PathBuf {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", sha(l)))
        .collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": run,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let config_name = format!("{}.json", sha(&config));
    let layer_names: Vec<String> = layers
        .iter()
        .map(|l| format!("{}/layer.tar", sha(l)))
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": [format!("{name}:latest")],
        "Layers": layer_names,
    }]))
    .unwrap();
    let mut members: Vec<(String, Vec<u8>)> =
        vec![("manifest.json".into(), manifest), (config_name, config)];
    for (n, l) in layer_names.iter().zip(layers) {
        members.push((n.clone(), l.clone()));
    }
    let mut b = tar::Builder::new(Vec::new());
    for (n, data) in &members {
        let mut h = tar::Header::new_gnu();
        h.set_path(n).unwrap();
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data.as_slice()).unwrap();
    }
    let path = dir.join(format!("{name}.tar"));
    std::fs::write(&path, b.into_inner().unwrap()).unwrap();
    path
}

/// A compatibility image: busybox plus [`COMPAT_FILES`], with `run` as its
/// config (`User`, `WorkingDir`, `StopSignal`, `Volumes`...).
pub fn compat_image(dir: &Path, name: &str, run: serde_json::Value) -> PathBuf {
    docker_save(dir, name, &[busybox_layer(), layer(COMPAT_FILES)], run)
}

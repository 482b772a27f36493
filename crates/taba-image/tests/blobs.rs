//! Original blobs kept on import, handed out by digest, and images assembled from fetched blobs
//! on another store: verified, fetched once, and nothing partial left on failure. Root: layers
//! are unpacked with their owners.

mod common;

use std::fs;
use std::io::{Read, Write};

use common::*;
use taba_image::{Fetch, ImageError, ImageStore};
use taba_types::wire::{BlobDescriptor, ImageManifest};

fn stores() -> (tempfile::TempDir, ImageStore, ImageStore) {
    require_root();
    let d = tempfile::tempdir().unwrap();
    let a = ImageStore::open(&d.path().join("server")).unwrap();
    let b = ImageStore::open(&d.path().join("agent")).unwrap();
    (d, a, b)
}

fn base_layer() -> Vec<u8> {
    layer(&[
        E::Dir("bin/", 0o755),
        E::File("bin/app", b"#!/bin/sh\necho app\n", 0o755),
        E::File("big", &[9u8; 200_000], 0o644),
    ])
}

fn blob_bytes(s: &ImageStore, digest: &str) -> Vec<u8> {
    let (mut f, len) = s.open_blob(digest).unwrap().expect("blob present");
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    assert_eq!(v.len() as u64, len);
    v
}

/// Copies every needed blob from `from` (what a server would send).
fn copy_needed(from: &ImageStore, fetch: &Fetch) {
    for b in fetch.needed() {
        let mut w = fetch.writer(b).unwrap();
        w.write_all(&blob_bytes(from, &b.digest)).unwrap();
        w.finish().unwrap();
    }
}

#[test]
fn root_imports_keep_the_original_blobs_bit_for_bit() {
    let (d, s, _) = stores();
    let layers = [base_layer(), layer(&[E::File("x", b"x", 0o644)])];
    let members = oci_members(
        &layers,
        Comp::Gzip,
        serde_json::json!({"org.opencontainers.image.ref.name": "app:1"}),
        "a",
    );
    let img = s
        .import(&write(d.path(), "oci.tar", &outer(&members)))
        .unwrap();
    let m = s.manifest("app:1").unwrap().expect("manifest");
    assert_eq!(m.id, img.id);
    assert_eq!(m.refs, vec!["app:1"]);
    assert_eq!(blob_bytes(&s, &m.id), config(&layers, "a"));
    assert_eq!(m.config.size, config(&layers, "a").len() as u64);
    for (l, raw) in m.layers.iter().zip(&layers) {
        let gz = gzip(raw);
        assert_eq!(l.digest, format!("sha256:{}", sha(&gz)));
        assert_eq!(l.diff_id, format!("sha256:{}", sha(raw)));
        assert_eq!(l.size, gz.len() as u64);
        assert_eq!(l.media_type, "application/vnd.oci.image.layer.v1.tar+gzip");
        assert_eq!(
            blob_bytes(&s, &l.digest),
            gz,
            "the blob as it was in the archive"
        );
    }
    // The OCI manifest is kept as well.
    let (_, manifest) = members
        .iter()
        .rev()
        .find(|(n, _)| n.starts_with("blobs/"))
        .unwrap();
    assert_eq!(
        blob_bytes(&s, &format!("sha256:{}", sha(manifest))),
        *manifest
    );

    // docker save: plain tar layers are their own blobs.
    let docker = s
        .import(&write(
            d.path(),
            "d.tar",
            &docker_save(&[base_layer()], &["plain:1"], "p"),
        ))
        .unwrap();
    let m = s.manifest("plain:1").unwrap().unwrap();
    assert_eq!(m.id, docker.id);
    assert_eq!(m.layers[0].digest, m.layers[0].diff_id);
    assert_eq!(
        m.layers[0].media_type,
        "application/vnd.oci.image.layer.v1.tar"
    );
    assert_eq!(blob_bytes(&s, &m.layers[0].digest), base_layer());

    // Unknown and malformed digests.
    assert!(s
        .open_blob(&format!("sha256:{}", "0".repeat(64)))
        .unwrap()
        .is_none());
    for bad in ["sha256:../../refs.json", "md5:abc", "../lock", ""] {
        assert!(matches!(
            s.open_blob(bad),
            Err(ImageError::InvalidDigest { .. })
        ));
    }
    assert!(s.manifest("nothing:here").unwrap().is_none());

    // Removing the images removes their blobs.
    s.remove("app:1").unwrap();
    s.remove("plain:1").unwrap();
    assert_empty(s.root());
}

#[test]
fn root_a_fetched_image_is_the_same_image_and_is_fetched_once() {
    let (d, server, agent) = stores();
    let base = base_layer();
    let top = layer(&[E::File("top", b"top", 0o644)]);
    server
        .import(&write(
            d.path(),
            "a.tar",
            &oci(&[base.clone(), top.clone()], Comp::Zstd, "app:1", "a"),
        ))
        .unwrap();
    let m = server.manifest("app:1").unwrap().unwrap();

    let fetch = agent.fetch(&m).unwrap();
    assert_eq!(fetch.needed().len(), 3, "config and two layers");
    copy_needed(&server, &fetch);
    let got = fetch.commit().unwrap();
    assert_eq!(got.id, m.id);
    assert_eq!(got.refs, vec!["app:1"]);
    assert_eq!(agent.manifest("app:1").unwrap().unwrap(), m);
    let img = agent.resolve("app:1").unwrap().unwrap();
    assert_eq!(fs::read(img.layers[1].join("top")).unwrap(), b"top");
    assert!(names(agent.root(), "tmp").is_empty());

    // Fetching it again needs nothing.
    let again = agent.fetch(&m).unwrap();
    assert!(again.needed().is_empty());
    assert_eq!(again.commit().unwrap().id, m.id);

    // Another image on the same base: only what is new is fetched.
    server
        .import(&write(
            d.path(),
            "b.tar",
            &oci(
                &[base.clone(), layer(&[E::File("b", b"b", 0o644)])],
                Comp::Zstd,
                "app:2",
                "b",
            ),
        ))
        .unwrap();
    let m2 = server.manifest("app:2").unwrap().unwrap();
    let fetch = agent.fetch(&m2).unwrap();
    let needed: Vec<&str> = fetch.needed().iter().map(|b| b.digest.as_str()).collect();
    assert_eq!(needed, vec![m2.id.as_str(), m2.layers[1].digest.as_str()]);
    copy_needed(&server, &fetch);
    fetch.commit().unwrap();
    assert_eq!(names(agent.root(), "layers").len(), 3);
}

/// The agent's store holds exactly what it held before: nothing partial, no staging left.
fn assert_unchanged(s: &ImageStore, before: &[Vec<String>]) {
    let now: Vec<Vec<String>> = ["layers", "blobs/sha256", "images", "tmp"]
        .iter()
        .map(|d| names(s.root(), d))
        .collect();
    assert_eq!(now, before);
}

fn snapshot(s: &ImageStore) -> Vec<Vec<String>> {
    ["layers", "blobs/sha256", "images", "tmp"]
        .iter()
        .map(|d| names(s.root(), d))
        .collect()
}

#[test]
fn root_corrupt_cut_or_lying_blobs_are_refused_and_leave_nothing() {
    let (d, server, agent) = stores();
    let layers = [base_layer()];
    server
        .import(&write(
            d.path(),
            "a.tar",
            &oci(&layers, Comp::Gzip, "app:1", "a"),
        ))
        .unwrap();
    let m = server.manifest("app:1").unwrap().unwrap();
    let layer_blob = blob_bytes(&server, &m.layers[0].digest);
    let before = snapshot(&agent);
    let layer_desc = BlobDescriptor {
        digest: m.layers[0].digest.clone(),
        size: m.layers[0].size,
    };

    // A flipped byte: refused before use.
    let fetch = agent.fetch(&m).unwrap();
    let mut w = fetch.writer(&layer_desc).unwrap();
    let mut bad = layer_blob.clone();
    bad[100] ^= 0xff;
    w.write_all(&bad).unwrap();
    assert!(matches!(w.finish(), Err(ImageError::DigestMismatch { .. })));
    drop(fetch);
    assert_unchanged(&agent, &before);

    // A download cut half way, then given up.
    let fetch = agent.fetch(&m).unwrap();
    let mut w = fetch.writer(&layer_desc).unwrap();
    w.write_all(&layer_blob[..layer_blob.len() / 2]).unwrap();
    assert!(matches!(w.finish(), Err(ImageError::SizeMismatch { .. })));
    drop(fetch);
    assert_unchanged(&agent, &before);

    // A commit with a blob missing fails and leaves nothing.
    let fetch = agent.fetch(&m).unwrap();
    let cfg = BlobDescriptor {
        digest: m.id.clone(),
        size: m.config.size,
    };
    let mut w = fetch.writer(&cfg).unwrap();
    w.write_all(&blob_bytes(&server, &m.id)).unwrap();
    w.finish().unwrap();
    assert!(fetch.commit().is_err());
    assert_unchanged(&agent, &before);

    // A manifest whose diff_id lies about the layer is refused at commit.
    let mut lying = m.clone();
    lying.layers[0].diff_id = format!("sha256:{}", "1".repeat(64));
    let fetch = agent.fetch(&lying).unwrap();
    copy_needed(&server, &fetch);
    assert!(matches!(
        fetch.commit(),
        Err(ImageError::InvalidManifest { .. })
    ));
    assert_unchanged(&agent, &before);

    // A server that sends another (well-formed) layer under the right diff_id: the blob is
    // self-consistent but does not unpack to the config's diff_id.
    let other = gzip(&layer(&[E::File("evil", b"evil", 0o644)]));
    let mut swapped = m.clone();
    swapped.layers[0].digest = format!("sha256:{}", sha(&other));
    swapped.layers[0].size = other.len() as u64;
    let fetch = agent.fetch(&swapped).unwrap();
    for b in fetch.needed().to_vec() {
        let mut w = fetch.writer(&b).unwrap();
        if b.digest == swapped.layers[0].digest {
            w.write_all(&other).unwrap();
        } else {
            w.write_all(&blob_bytes(&server, &b.digest)).unwrap();
        }
        w.finish().unwrap();
    }
    assert!(matches!(
        fetch.commit(),
        Err(ImageError::DigestMismatch { .. })
    ));
    assert_unchanged(&agent, &before);

    // Malformed manifests are refused before anything is written.
    let mut evil = m.clone();
    evil.layers[0].digest = "sha256:../../../etc".into();
    assert!(matches!(
        agent.fetch(&evil),
        Err(ImageError::InvalidManifest { .. })
    ));
    let mut evil = m.clone();
    evil.config.digest = format!("sha256:{}", "2".repeat(64));
    assert!(matches!(
        agent.fetch(&evil),
        Err(ImageError::InvalidManifest { .. })
    ));
    let mut evil = m.clone();
    evil.layers[0].media_type = "text/plain".into();
    assert!(agent.fetch(&evil).is_err());
    let evil = ImageManifest {
        protocol: 99,
        ..m.clone()
    };
    assert!(agent.fetch(&evil).is_err());
    assert_unchanged(&agent, &before);

    // A writer for a blob the fetch does not need is refused.
    let fetch = agent.fetch(&m).unwrap();
    assert!(fetch
        .writer(&BlobDescriptor {
            digest: format!("sha256:{}", "3".repeat(64)),
            size: 1
        })
        .is_err());
}

#[test]
fn root_images_from_before_blobs_were_kept_say_so_and_reimport_fixes_them() {
    let (d, s, _) = stores();
    let tar = write(
        d.path(),
        "a.tar",
        &docker_save(&[base_layer()], &["old:1"], "o"),
    );
    let img = s.import(&tar).unwrap();
    // Rewrite the record as version 1 wrote it: no blobs.
    let path = s
        .root()
        .join("images")
        .join(format!("{}.json", &img.id[7..]));
    let mut rec: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    for k in ["blobs", "config_size", "manifest"] {
        rec.as_object_mut().unwrap().remove(k);
    }
    rec["version"] = 1.into();
    fs::write(&path, serde_json::to_vec(&rec).unwrap()).unwrap();
    assert!(matches!(
        s.manifest("old:1"),
        Err(ImageError::NoBlobs(id)) if id == img.id
    ));
    assert!(s.resolve("old:1").unwrap().is_some(), "it still runs");
    s.import(&tar).unwrap();
    assert_eq!(s.manifest("old:1").unwrap().unwrap().layers.len(), 1);
}

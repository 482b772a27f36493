//! Disk images (qcow2, raw) in the image store: import, checks (corrupt
//! qcow2, backing files, size cap) that leave nothing behind, listing,
//! lookup, and handing one to another store (an agent) by its manifest.
//! Needs `qemu-img` (scripts/setup.sh).

use std::path::{Path, PathBuf};
use std::process::Command;
use taba_image::{ImageError, ImageLimits, ImageStore};
use taba_types::vm::DiskFormat;

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img (scripts/setup.sh installs qemu-utils)");
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
}

/// A qcow2 image of 64 MiB with some data in it, in `dir`.
fn qcow2(dir: &Path, name: &str) -> PathBuf {
    let raw = dir.join(format!("{name}.src"));
    std::fs::write(&raw, vec![0x5a; 1 << 20]).unwrap();
    let f = dir.join(name);
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        f.to_str().unwrap(),
    ]);
    qemu_img(&["resize", "-q", "-f", "qcow2", f.to_str().unwrap(), "64M"]);
    f
}

/// Nothing of an image in the store: no record, no blob, no staging.
fn assert_empty(store: &ImageStore) {
    for sub in ["images", "blobs/sha256", "tmp"] {
        let d = store.root().join(sub);
        let left: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{sub}: {left:?}");
    }
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn qcow2_and_raw_images_are_kept_by_content_and_listed_as_disks() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("store")).unwrap();
    let q = qcow2(t.path(), "debian.qcow2");
    let s = store.import_disk(&q, "debian:12", None).unwrap();
    assert_eq!(s.kind, "disk");
    assert_eq!(s.format, Some("qcow2"));
    assert_eq!(s.refs, vec!["debian:12".to_string()]);
    let bytes = std::fs::read(&q).unwrap();
    assert_eq!(s.id, taba_image::sha256_digest(&bytes));
    assert_eq!(s.size, bytes.len() as u64);
    let d = store.resolve_disk("debian:12").unwrap().unwrap();
    assert_eq!(d.format, DiskFormat::Qcow2);
    assert_eq!(d.virtual_size, 64 << 20);
    assert_eq!(std::fs::read(&d.path).unwrap(), bytes);
    // Not a container image.
    assert!(store.resolve("debian:12").unwrap().is_none());

    // Raw: only when asked, or by its name.
    let raw = t.path().join("disk.bin");
    std::fs::write(&raw, vec![1u8; 2 << 20]).unwrap();
    let e = store
        .import_disk(&raw, "plain", None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--format raw"), "{e}");
    let s = store
        .import_disk(&raw, "plain", Some(DiskFormat::Raw))
        .unwrap();
    assert_eq!(s.format, Some("raw"));
    let img = t.path().join("boot.img");
    std::fs::copy(&raw, &img).unwrap();
    let s2 = store.import_disk(&img, "boot", None).unwrap();
    assert_eq!(s2.id, s.id, "same content, same image");
    let list = store.list().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    // A raw file named as qcow2 is refused.
    let e = store
        .import_disk(&raw, "x", Some(DiskFormat::Qcow2))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a qcow2 image"), "{e}");

    // Handed to an agent's store by its manifest and blob.
    let agent = ImageStore::open(&t.path().join("agent")).unwrap();
    let m = store.manifest("debian:12").unwrap().unwrap();
    assert!(m.disk.is_some() && m.layers.is_empty());
    let fetch = agent.fetch(&m).unwrap();
    assert_eq!(fetch.needed().len(), 1);
    let mut w = fetch.writer(&fetch.needed()[0].clone()).unwrap();
    std::io::Write::write_all(&mut w, &bytes).unwrap();
    w.finish().unwrap();
    let got = fetch.commit().unwrap();
    assert_eq!(got.id, m.id);
    assert_eq!(
        agent
            .resolve_disk("debian:12")
            .unwrap()
            .unwrap()
            .virtual_size,
        64 << 20
    );

    // Removed with its last name.
    store.remove("debian:12").unwrap();
    store.remove("plain").unwrap();
    store.remove("boot").unwrap();
    assert_empty(&store);
}

#[test]
fn bad_disk_images_are_refused_and_leave_nothing() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("store")).unwrap();
    // A qcow2 header on garbage.
    let q = qcow2(t.path(), "good.qcow2");
    let mut bytes = std::fs::read(&q).unwrap();
    for b in bytes.iter_mut().skip(8).take(400) {
        *b = 0xff;
    }
    let corrupt = t.path().join("corrupt.qcow2");
    std::fs::write(&corrupt, &bytes).unwrap();
    let e = store.import_disk(&corrupt, "corrupt", None).unwrap_err();
    assert!(matches!(e, ImageError::InvalidDisk { .. }), "{e}");
    assert!(e.to_string().contains("qemu-img"), "{e}");
    assert_empty(&store);

    // A qcow2 whose backing file is a host file.
    let chained = t.path().join("chained.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "/etc/passwd",
        "-F",
        "raw",
        chained.to_str().unwrap(),
    ]);
    let e = store
        .import_disk(&chained, "chained", None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("backing file (/etc/passwd)"), "{e}");
    assert_empty(&store);

    // Over the store's cap.
    let small = ImageStore::open(&t.path().join("small"))
        .unwrap()
        .with_limits(ImageLimits {
            max_archive: 1 << 20,
            ..ImageLimits::default()
        });
    let e = small.import_disk(&q, "big", None).unwrap_err().to_string();
    assert!(e.contains("limits.max_image_upload"), "{e}");
    assert_empty(&small);

    // A manifest saying "disk" for a chained qcow2: the agent refuses it too.
    let evil_src = ImageStore::open(&t.path().join("evil")).unwrap();
    let good = evil_src.import_disk(&q, "good", None).unwrap();
    let mut m = evil_src.manifest("good").unwrap().unwrap();
    let chained_bytes = std::fs::read(&chained).unwrap();
    m.id = taba_image::sha256_digest(&chained_bytes);
    m.config.digest = m.id.clone();
    m.config.size = chained_bytes.len() as u64;
    assert_ne!(m.id, good.id);
    let agent = ImageStore::open(&t.path().join("agent")).unwrap();
    let fetch = agent.fetch(&m).unwrap();
    let mut w = fetch.writer(&fetch.needed()[0].clone()).unwrap();
    std::io::Write::write_all(&mut w, &chained_bytes).unwrap();
    w.finish().unwrap();
    let e = fetch.commit().unwrap_err().to_string();
    assert!(e.contains("backing file"), "{e}");
    assert_empty(&agent);
}

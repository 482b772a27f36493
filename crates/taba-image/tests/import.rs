//! Import, resolve, remove and GC against a real store on disk. Root: layers are unpacked
//! with their owners and device nodes.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;
use serde_json::json;
use taba_image::{ImageError, ImageStore};

fn store() -> (tempfile::TempDir, ImageStore) {
    require_root();
    let d = tempfile::tempdir().unwrap();
    let s = ImageStore::open(&d.path().join("store")).unwrap();
    (d, s)
}

fn base_layer() -> Vec<u8> {
    layer(&[
        E::Dir("bin/", 0o755),
        E::File("bin/app", b"#!/bin/sh\necho app\n", 0o755),
        E::Dir("etc/", 0o755),
        E::File("etc/os-release", b"ID=test\n", 0o644),
    ])
}

fn run_script(out: &Path, oci: bool) {
    let script = manifest_dir().join("../../scripts/build-busybox-image.sh");
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(&script).arg(out);
    if oci {
        cmd.arg("--oci");
    }
    let res = cmd.output().expect("run build-busybox-image.sh");
    assert!(
        res.status.success(),
        "build-busybox-image.sh failed (it needs Debian's busybox-static): {}",
        String::from_utf8_lossy(&res.stderr)
    );
}

#[test]
fn root_busybox_script_images_import_in_both_formats() {
    let (d, s) = store();
    let docker = d.path().join("busybox-docker.tar");
    let oci = d.path().join("busybox-oci.tar");
    run_script(&docker, false);
    run_script(&oci, true);
    // Deterministic: building again gives the same bytes.
    let again = d.path().join("again.tar");
    run_script(&again, false);
    assert_eq!(fs::read(&docker).unwrap(), fs::read(&again).unwrap());

    let a = s.import(&docker).unwrap();
    assert_eq!(a.refs, vec!["busybox:latest"]);
    assert_eq!(a.layers, 1);
    assert!(a.size > 500_000, "busybox binary counted: {}", a.size);
    let b = s.import(&oci).unwrap();
    assert_eq!(b.id, a.id, "same config, same id in both formats");
    assert_eq!(
        names(s.root(), "layers").len(),
        1,
        "the layer is stored once"
    );
    assert_eq!(s.list().unwrap(), vec![b.clone()]);

    for r in [
        "busybox",
        "busybox:latest",
        "docker.io/library/busybox:latest",
        "library/busybox:latest",
        &a.id,
        &a.id[..12],
        &a.id[7..15],
    ] {
        let img = s
            .resolve(r)
            .unwrap()
            .unwrap_or_else(|| panic!("{r} not found"));
        assert_eq!(img.id, a.id);
    }
    let img = s.resolve("busybox").unwrap().unwrap();
    assert_eq!(img.config.cmd, vec!["sh"]);
    assert!(img
        .config
        .env
        .iter()
        .any(|e| e.starts_with("PATH=") && e.contains("/bin")));
    let fs_root = &img.layers[0];
    let bb = fs::symlink_metadata(fs_root.join("bin/busybox")).unwrap();
    assert!(bb.is_file() && bb.permissions().mode() & 0o111 != 0);
    assert_eq!(
        fs::read_link(fs_root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert!(fs::read_to_string(fs_root.join("etc/passwd"))
        .unwrap()
        .contains("nobody"));
    assert!(fs::read_to_string(fs_root.join("etc/group"))
        .unwrap()
        .starts_with("root:"));
    assert_eq!(
        fs::metadata(fs_root.join("tmp"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o1777
    );
    // The applet really runs from the unpacked layer.
    let out = std::process::Command::new(fs_root.join("bin/busybox"))
        .arg("echo")
        .arg("hi")
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"hi\n");

    // Importing again is a no-op.
    assert_eq!(s.import(&docker).unwrap(), a);
    s.remove("busybox").unwrap();
    assert_empty(s.root());
}

#[test]
fn root_layers_keep_owners_modes_links_devices_xattrs_and_mtimes() {
    let (d, s) = store();
    let l = layer(&[
        E::Dir("./", 0o755),
        E::Dir("usr/", 0o755),
        E::Dir("usr/bin/", 0o755),
        E::Owned("usr/bin/su", b"su", 0, 0, 0o4755, vec![]),
        E::Owned(
            "home-file",
            b"mine",
            1000,
            1001,
            0o640,
            vec![
                ("user.note", b"hello"),
                ("trusted.overlay.redirect", b"/evil"),
            ],
        ),
        E::Hardlink("usr/bin/su2", "usr/bin/su"),
        E::Symlink("usr/bin/sh", "/bin/busybox"),
        E::Char("null", 1, 3),
        E::Fifo("pipe"),
        E::File("deep/er/file", b"parents made", 0o600),
        E::File("dup", b"first", 0o644),
        E::File("dup", b"second", 0o644),
    ]);
    let tar = write(d.path(), "img.tar", &docker_save(&[l], &["meta:1"], "m"));
    s.import(&tar).unwrap();
    let img = s.resolve("meta:1").unwrap().unwrap();
    let r = &img.layers[0];
    let su = fs::metadata(r.join("usr/bin/su")).unwrap();
    assert_eq!(su.mode() & 0o7777, 0o4755, "set-uid kept after chown");
    assert_eq!(su.nlink(), 2);
    assert_eq!(su.ino(), fs::metadata(r.join("usr/bin/su2")).unwrap().ino());
    let home = fs::metadata(r.join("home-file")).unwrap();
    assert_eq!(
        (home.uid(), home.gid(), home.mode() & 0o7777),
        (1000, 1001, 0o640)
    );
    assert_eq!(home.mtime(), MTIME as i64);
    let mut buf = [0u8; 64];
    let n = rustix::fs::getxattr(r.join("home-file"), "user.note", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello");
    assert!(
        rustix::fs::getxattr(r.join("home-file"), "trusted.overlay.redirect", &mut buf).is_err(),
        "overlay xattrs from the archive are dropped"
    );
    assert_eq!(
        fs::read_link(r.join("usr/bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    let null = fs::metadata(r.join("null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    assert!(fs::metadata(r.join("pipe")).unwrap().file_type().is_fifo());
    assert_eq!(fs::read(r.join("deep/er/file")).unwrap(), b"parents made");
    assert_eq!(
        fs::read(r.join("dup")).unwrap(),
        b"second",
        "a later entry replaces an earlier one"
    );
    assert_eq!(
        fs::metadata(r.join("usr")).unwrap().mtime(),
        MTIME as i64,
        "dir mtimes set last"
    );
    assert_eq!(fs::metadata(r).unwrap().mtime(), MTIME as i64);
    let cfg = &img.config;
    assert_eq!(cfg.entrypoint, vec!["/bin/app"]);
    assert_eq!(cfg.cmd, vec!["--serve", "m"]);
    assert_eq!(cfg.working_dir.as_deref(), Some("/srv"));
    assert_eq!(cfg.user.as_deref(), Some("1000:1000"));
    assert_eq!(cfg.exposed_ports, vec!["8080/tcp"]);
    assert_eq!(cfg.labels["org.example.tweak"], "m");
}

#[test]
fn root_whiteouts_become_overlay_char_devices_and_opaque_xattrs() {
    let (d, s) = store();
    let l1 = layer(&[E::File("etc/a", b"a", 0o644), E::File("d/x", b"x", 0o644)]);
    let l2 = layer(&[
        E::File("etc/.wh.a", b"", 0o644),
        E::File("d/.wh..wh..opq", b"", 0o644),
        E::File("d/.wh..wh.plnk", b"", 0o644),
    ]);
    let tar = write(d.path(), "img.tar", &docker_save(&[l1, l2], &["wh"], "w"));
    s.import(&tar).unwrap();
    let img = s.resolve("wh").unwrap().unwrap();
    let top = &img.layers[1];
    let wh = fs::symlink_metadata(top.join("etc/a")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(!top.join("etc/.wh.a").exists());
    let mut buf = [0u8; 4];
    let n = rustix::fs::getxattr(top.join("d"), "trusted.overlay.opaque", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"y");
    assert_eq!(
        names(top, "d"),
        Vec::<String>::new(),
        "no marker files left"
    );
}

#[test]
fn root_oci_layers_plain_gzip_and_zstd() {
    let (d, s) = store();
    for (i, comp) in [Comp::Plain, Comp::Gzip, Comp::Zstd]
        .into_iter()
        .enumerate()
    {
        let tweak: &'static str = Box::leak(format!("c{i}").into_boxed_str());
        let l = layer(&[E::File("f", tweak.as_bytes(), 0o644)]);
        let tar = write(
            d.path(),
            &format!("{i}.tar"),
            &oci(&[l], comp, &format!("comp:{i}"), tweak),
        );
        let sum = s.import(&tar).unwrap();
        assert_eq!(sum.refs, vec![format!("comp:{i}")]);
        let img = s.resolve(&format!("comp:{i}")).unwrap().unwrap();
        assert_eq!(fs::read(img.layers[0].join("f")).unwrap(), tweak.as_bytes());
    }
}

#[test]
fn root_oci_names_from_containerd_annotation_and_image_index_picks_amd64() {
    let (d, s) = store();
    let l = layer(&[E::File("amd64", b"yes", 0o644)]);
    // Docker 25+ style: the ref.name annotation is only a tag; the name is containerd's.
    let members = oci_members(
        std::slice::from_ref(&l),
        Comp::Gzip,
        json!({"org.opencontainers.image.ref.name": "1.0", "io.containerd.image.name": "docker.io/alice/app:1.0"}),
        "x",
    );
    let tar = write(d.path(), "ctr.tar", &outer(&members));
    assert_eq!(s.import(&tar).unwrap().refs, vec!["alice/app:1.0"]);

    // Wrap the manifest in an image index next to an arm64 one.
    let mut members = oci_members(&[l], Comp::Gzip, json!({}), "idx");
    let index: serde_json::Value = serde_json::from_slice(&members.last().unwrap().1).unwrap();
    let mut amd = index["manifests"][0].clone();
    amd["platform"] = json!({"os": "linux", "architecture": "amd64"});
    let mut arm = amd.clone();
    arm["platform"] = json!({"os": "linux", "architecture": "arm64"});
    arm["digest"] = json!(format!("sha256:{}", "0".repeat(64))); // never read
    let nested = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [arm, amd],
    }))
    .unwrap();
    members.push((format!("blobs/sha256/{}", sha(&nested)), nested.clone()));
    let top = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": format!("sha256:{}", sha(&nested)),
        "size": nested.len(),
        "annotations": {"org.opencontainers.image.ref.name": "example.com/multi:2"},
    }]});
    members.retain(|(n, _)| n != "index.json");
    members.push(("index.json".into(), serde_json::to_vec(&top).unwrap()));
    let tar = write(d.path(), "multi.tar", &outer(&members));
    let sum = s.import(&tar).unwrap();
    assert_eq!(sum.refs, vec!["example.com/multi:2"]);
    let img = s.resolve("example.com/multi:2").unwrap().unwrap();
    assert_eq!(fs::read(img.layers[0].join("amd64")).unwrap(), b"yes");
}

#[test]
fn root_gzipped_docker_save_imports() {
    let (d, s) = store();
    let tar = write(
        d.path(),
        "img.tar.gz",
        &gzip(&docker_save(&[base_layer()], &["gz:1"], "g")),
    );
    assert_eq!(s.import(&tar).unwrap().refs, vec!["gz:1"]);
    assert_empty_tmp(s.root());
}

fn assert_empty_tmp(root: &Path) {
    assert!(
        names(root, "tmp").is_empty(),
        "staging left: {:?}",
        names(root, "tmp")
    );
}

#[test]
fn root_shared_layers_are_stored_once_and_collected_when_unused() {
    let (d, s) = store();
    let base = base_layer();
    let a = layer(&[E::File("a", b"a", 0o644)]);
    let b = layer(&[E::File("b", b"b", 0o644)]);
    let ta = write(
        d.path(),
        "a.tar",
        &docker_save(
            &[base.clone(), a.clone()],
            &["app-a:1", "app-a:latest"],
            "a",
        ),
    );
    let tb = write(
        d.path(),
        "b.tar",
        &oci(&[base.clone(), b.clone()], Comp::Gzip, "app-b:1", "b"),
    );
    s.import(&ta).unwrap();
    s.import(&tb).unwrap();
    assert_eq!(names(s.root(), "layers"), {
        let mut v = vec![sha(&base), sha(&a), sha(&b)];
        v.sort();
        v
    });
    let ia = s.resolve("app-a:1").unwrap().unwrap();
    let ib = s.resolve("app-b:1").unwrap().unwrap();
    assert_eq!(
        ia.layers[0], ib.layers[0],
        "one directory for the shared base layer"
    );
    assert_eq!(ia.refs, vec!["app-a:1", "app-a:latest"]);

    // Removing one of two tags keeps the image.
    s.remove("app-a:latest").unwrap();
    assert_eq!(s.resolve("app-a:1").unwrap().unwrap().refs, vec!["app-a:1"]);
    assert!(s.resolve("app-a:latest").unwrap().is_none());
    // Removing the last tag deletes the image and its own layer, not the shared one.
    s.remove("docker.io/library/app-a:1").unwrap();
    assert!(s.resolve(&ia.id).unwrap().is_none());
    assert!(!ia.layers[1].exists());
    assert!(ib.layers[0].exists() && ib.layers[1].exists());
    assert!(matches!(s.remove("app-a:1"), Err(ImageError::NotFound(r)) if r == "app-a:1"));
    // Remove by id prefix takes every tag with it.
    s.remove(&ib.id[..19]).unwrap();
    assert_empty(s.root());
    assert!(s.list().unwrap().is_empty());
}

#[test]
fn root_a_moved_tag_leaves_the_old_image_untagged() {
    let (d, s) = store();
    let l = base_layer();
    let old = s
        .import(&write(
            d.path(),
            "1.tar",
            &docker_save(std::slice::from_ref(&l), &["app"], "v1"),
        ))
        .unwrap();
    let new = s
        .import(&write(
            d.path(),
            "2.tar",
            &docker_save(&[l], &["app"], "v2"),
        ))
        .unwrap();
    assert_ne!(old.id, new.id);
    let list = s.list().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].id, new.id);
    assert!(list[1].refs.is_empty());
    assert_eq!(s.resolve("app").unwrap().unwrap().id, new.id);
    s.remove(&old.id).unwrap();
    assert_eq!(names(s.root(), "layers").len(), 1, "the shared layer stays");
}

#[test]
fn root_concurrent_imports_of_the_same_image_agree() {
    let (d, s) = store();
    let tar = write(
        d.path(),
        "img.tar",
        &docker_save(
            &[base_layer(), layer(&[E::File("x", b"x", 0o644)])],
            &["same"],
            "s",
        ),
    );
    let ids: Vec<String> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| s.import(&tar).unwrap().id))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(names(s.root(), "layers").len(), 2);
    assert_eq!(names(s.root(), "images").len(), 1);
    assert_empty_tmp(s.root());
}

/// Imports `bytes` and expects an error; then the store must hold exactly what it held before.
fn import_fails(s: &ImageStore, dir: &Path, bytes: &[u8]) -> ImageError {
    let before = (names(s.root(), "layers"), names(s.root(), "images"));
    let tar = write(dir, "bad.tar", bytes);
    let err = s.import(&tar).expect_err("import must fail");
    assert_eq!(
        (names(s.root(), "layers"), names(s.root(), "images")),
        before,
        "after {err}"
    );
    assert_empty_tmp(s.root());
    err
}

#[test]
fn root_broken_archives_are_rejected_and_leave_nothing_behind() {
    let (d, s) = store();
    let dir = d.path();
    let good = docker_save(
        &[
            base_layer(),
            layer(&[E::File("big", &[7u8; 100_000], 0o644)]),
        ],
        &["x"],
        "x",
    );

    let e = import_fails(
        &s,
        dir,
        b"this is not a tar archive at all, just some words.......",
    );
    assert!(matches!(e, ImageError::InvalidArchive { .. }), "{e}");
    let e = import_fails(&s, dir, &good[..good.len() / 2]);
    assert!(
        matches!(e, ImageError::InvalidArchive { .. }),
        "truncated: {e}"
    );
    let e = import_fails(&s, dir, &outer(&[("hello.txt".into(), b"hi".to_vec())]));
    assert!(
        matches!(&e, ImageError::InvalidArchive { reason } if reason.contains("manifest.json")),
        "{e}"
    );
    let e = import_fails(
        &s,
        dir,
        &outer(&[("manifest.json".into(), b"{not json".to_vec())]),
    );
    assert!(
        matches!(&e, ImageError::InvalidArchive { reason } if reason.contains("manifest.json")),
        "{e}"
    );

    // A layer listed in the manifest but absent.
    let mut members = docker_members(&[base_layer()], &["x"], "x");
    members.retain(|(n, _)| !n.ends_with("layer.tar"));
    let e = import_fails(&s, dir, &outer(&members));
    assert!(
        matches!(&e, ImageError::InvalidArchive { reason } if reason.contains("missing")),
        "{e}"
    );

    // A layer whose content does not match its diff_id; the first layer was fine and was
    // unpacked, yet nothing stays.
    let mut members = docker_members(
        &[base_layer(), layer(&[E::File("f", b"good", 0o644)])],
        &["x"],
        "x",
    );
    let tampered = layer(&[E::File("f", b"evil", 0o644)]);
    members[1].1 = tampered.clone();
    let e = import_fails(&s, dir, &outer(&members));
    match e {
        ImageError::DigestMismatch { expected, actual } => {
            assert_eq!(actual, format!("sha256:{}", sha(&tampered)));
            assert_ne!(expected, actual);
        }
        e => panic!("{e}"),
    }

    // A docker-save config whose name states another digest.
    let mut members = docker_members(&[base_layer()], &["x"], "x");
    let cfg = members
        .iter_mut()
        .find(|(n, _)| n.ends_with(".json") && n != "manifest.json")
        .unwrap();
    cfg.1.push(b' ');
    assert!(matches!(
        import_fails(&s, dir, &outer(&members)),
        ImageError::DigestMismatch { .. }
    ));

    // An OCI blob that does not hash to its name.
    let mut members = oci_members(
        &[base_layer()],
        Comp::Gzip,
        json!({"org.opencontainers.image.ref.name": "o:1"}),
        "o",
    );
    let blob = &mut members[1].1;
    let last = blob.len() - 1;
    blob[last] ^= 0xff;
    assert!(matches!(
        import_fails(&s, dir, &outer(&members)),
        ImageError::DigestMismatch { .. }
    ));

    // Config and manifest disagree on the layer count.
    let mut members = docker_members(&[base_layer()], &["x"], "x");
    let m = members
        .iter_mut()
        .find(|(n, _)| n == "manifest.json")
        .unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&m.1).unwrap();
    v[0]["Layers"]
        .as_array_mut()
        .unwrap()
        .push(json!("nope/layer.tar"));
    m.1 = serde_json::to_vec(&v).unwrap();
    let e = import_fails(&s, dir, &outer(&members));
    assert!(
        matches!(&e, ImageError::InvalidArchive { reason } if reason.contains("diff_ids")),
        "{e}"
    );

    // A layer that is not a tar at all.
    let junk = vec![0x42u8; 4096];
    let mut members = docker_members(&[junk], &["x"], "x");
    members.retain(|(n, _)| n != "x");
    let e = import_fails(&s, dir, &outer(&members));
    assert!(matches!(e, ImageError::InvalidArchive { .. }), "{e}");

    assert_empty(s.root());
}

#[test]
fn root_hostile_layers_cannot_write_outside_the_layer() {
    let (d, s) = store();
    let dir = d.path();
    let outside = dir.join("outside");
    fs::create_dir(&outside).unwrap();
    let cases: Vec<(&str, Vec<E>)> = vec![
        (
            "dot-dot",
            vec![E::File("../../../../../escape", b"x", 0o644)],
        ),
        (
            "dot-dot inside",
            vec![E::Dir("a/", 0o755), E::File("a/../../escape", b"x", 0o644)],
        ),
        ("absolute", vec![E::File("/etc/escape", b"x", 0o644)]),
        // The classic: a symlink to outside, then a file "through" it.
        (
            "symlink escape",
            vec![
                E::Symlink(
                    "link",
                    Box::leak(outside.display().to_string().into_boxed_str()),
                ),
                E::File("link/pwned", b"x", 0o644),
            ],
        ),
        (
            "relative symlink escape",
            vec![
                E::Symlink("up", "../../../.."),
                E::File("up/pwned", b"x", 0o644),
            ],
        ),
        (
            "symlink dir escape",
            vec![E::Symlink("d", "/"), E::Dir("d/sub/", 0o755)],
        ),
        (
            "hardlink escape",
            vec![E::Hardlink("passwd", "../../../../etc/passwd")],
        ),
        (
            "whiteout through symlink",
            vec![E::Symlink("w", "/tmp"), E::File("w/.wh.x", b"", 0o644)],
        ),
        (
            "opaque through symlink",
            vec![
                E::Symlink("o", "/tmp"),
                E::File("o/.wh..wh..opq", b"", 0o644),
            ],
        ),
    ];
    for (what, entries) in cases {
        let bytes = docker_save(&[layer(&entries)], &["evil"], what);
        let e = import_fails(&s, dir, &bytes);
        assert!(matches!(e, ImageError::UnsafePath(_)), "{what}: {e}");
    }
    assert!(
        names(&outside, "").is_empty(),
        "something was written outside"
    );
    assert!(!Path::new("/escape").exists() && !Path::new("/etc/escape").exists());
    assert!(!Path::new("/tmp/pwned").exists());
    // A hard link to a file that is not in the layer is an archive error, not a host file.
    let bytes = docker_save(&[layer(&[E::Hardlink("h", "etc/shadow")])], &["evil"], "h");
    assert!(matches!(
        import_fails(&s, dir, &bytes),
        ImageError::InvalidArchive { .. }
    ));
    assert_empty(s.root());
}

#[test]
fn root_reopen_cleans_dead_staging_and_orphan_layers() {
    let (d, s) = store();
    let root = s.root().to_path_buf();
    s.import(&write(
        d.path(),
        "a.tar",
        &docker_save(&[base_layer()], &["keep"], "k"),
    ))
    .unwrap();
    // What a killed import leaves: a staging dir (lock free) and an uncommitted layer dir.
    fs::create_dir_all(root.join("tmp/999-1-1/layers/x")).unwrap();
    fs::write(root.join("tmp/999-1-1.lock"), b"").unwrap();
    fs::create_dir_all(root.join(format!("layers/{}", "f".repeat(64)))).unwrap();
    drop(s);
    let s = ImageStore::open(&root).unwrap();
    assert!(names(&root, "tmp").is_empty());
    assert_eq!(names(&root, "layers").len(), 1);
    assert!(s.resolve("keep").unwrap().is_some());
}

/// This package's directory, read when the test runs (cargo sets it for
/// test processes): a test binary reused from a build in another checkout
/// must not run that checkout's scripts.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// A local user must not reach an image's layers: a setuid-root binary or a
/// device node shipped in an image would be root on the host. The store's
/// root is 0700 even when its parent is open to everyone.
#[test]
fn root_local_users_cannot_reach_image_layers() {
    require_root();
    let d = tempfile::tempdir().unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let s = ImageStore::open(&d.path().join("store")).unwrap();
    let l = layer(&[
        E::Dir("bin/", 0o755),
        E::Owned("bin/su", b"#!/bin/sh\nid\n", 0, 0, 0o4755, vec![]),
        E::Char("null", 1, 3),
    ]);
    let tar = write(d.path(), "img.tar", &docker_save(&[l], &["suid:1"], "s"));
    s.import(&tar).unwrap();
    let img = s.resolve("suid:1").unwrap().unwrap();
    let root_mode = fs::metadata(s.root()).unwrap().mode() & 0o777;
    assert_eq!(root_mode, 0o700, "{}", s.root().display());
    for path in [img.layers[0].join("bin/su"), img.layers[0].join("null")] {
        use std::os::unix::process::CommandExt;
        let out = std::process::Command::new("/bin/cat")
            .arg(&path)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert!(!out.status.success(), "nobody read {}", path.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Permission denied"), "{err}");
    }
}

/// A store with these caps (the defaults for the others).
fn store_with(limits: taba_image::ImageLimits) -> (tempfile::TempDir, ImageStore) {
    let (d, s) = store();
    (d, s.with_limits(limits))
}

/// The cap an import went past.
fn limit_of(err: &ImageError) -> &'static str {
    match err {
        ImageError::LimitExceeded { limit, .. } => limit,
        other => panic!("expected a limit error, got {other}"),
    }
}

/// A layer that decompresses a thousandfold (64 MiB of zeros in ~64 KiB of
/// gzip) is refused by the ratio cap while it is decompressed (after about
/// 16 MiB), not once written whole; the store is left as it was.
#[test]
fn root_a_layer_decompression_bomb_is_refused_by_its_ratio() {
    let (d, s) = store();
    let bomb = gzip_tar_of_zeros("zeros", 64 << 20, 0);
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    let tar = oci_with_gzip_blob(&bomb, &"0".repeat(64), "bomb:1");
    let err = import_fails(&s, d.path(), &tar);
    assert_eq!(limit_of(&err), "max_layer_ratio", "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("times its compressed size") && msg.contains("(limits.max_layer_ratio)"),
        "{msg}"
    );
    // Stopped early: the error states how much came out.
    let out: u64 = msg
        .split(" bytes from ")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {msg}"));
    assert!(
        out < 32 << 20,
        "{out} bytes decompressed before the refusal"
    );
    assert_empty(s.root());
}

/// With a higher ratio allowed, the byte cap stops the same layer, also
/// while decompressing: zeros hidden after the tar's end are never written
/// but would still be decompressed to the end.
#[test]
fn root_a_layer_past_its_unpacked_cap_is_refused_while_decompressing() {
    let (d, s) = store_with(taba_image::ImageLimits {
        max_layer_unpacked: 8 << 20,
        max_layer_ratio: 1_000_000,
        ..Default::default()
    });
    // A 4 KiB file, then 64 MiB of zeros after the end-of-archive blocks.
    let bomb = gzip_tar_of_zeros("small", 4096, 64 << 20);
    let tar = oci_with_gzip_blob(&bomb, &"0".repeat(64), "bomb:2");
    let err = import_fails(&s, d.path(), &tar);
    assert_eq!(limit_of(&err), "max_layer_unpacked", "{err}");
    assert!(
        err.to_string().contains("(limits.max_layer_unpacked)"),
        "{err}"
    );
    assert_empty(s.root());
}

/// A gzip-compressed image archive is bounded as it is decompressed too
/// (by the upload cap and the ratio).
#[test]
fn root_a_compressed_archive_bomb_is_refused_while_decompressing() {
    let (d, s) = store_with(taba_image::ImageLimits {
        max_archive: 8 << 20,
        max_layer_ratio: 1_000_000,
        ..Default::default()
    });
    let err = import_fails(&s, d.path(), &gzip_tar_of_zeros("pad", 64 << 20, 0));
    assert_eq!(limit_of(&err), "max_image_upload", "{err}");
    let (d, s) = store();
    let err = import_fails(&s, d.path(), &gzip_tar_of_zeros("pad", 64 << 20, 0));
    assert_eq!(limit_of(&err), "max_layer_ratio", "{err}");
    drop(d);
}

/// The entry and manifest caps are the configured ones.
#[test]
fn root_entry_and_manifest_caps_are_configurable() {
    let (d, s) = store_with(taba_image::ImageLimits {
        max_layer_entries: 3,
        ..Default::default()
    });
    let many = layer(&[
        E::Dir("a/", 0o755),
        E::File("a/1", b"1", 0o644),
        E::File("a/2", b"2", 0o644),
        E::File("a/3", b"3", 0o644),
    ]);
    let err = import_fails(
        &s,
        d.path(),
        &docker_save(std::slice::from_ref(&many), &["many:1"], "m"),
    );
    assert_eq!(limit_of(&err), "max_layer_entries", "{err}");
    assert_empty(s.root());
    // The same image within the defaults imports.
    let (d2, s2) = store();
    s2.import(&write(
        d2.path(),
        "ok.tar",
        &docker_save(&[many], &["many:1"], "m"),
    ))
    .unwrap();

    let (d, s) = store_with(taba_image::ImageLimits {
        max_manifest: 4096,
        ..Default::default()
    });
    let long = "x".repeat(5000);
    let err = import_fails(
        &s,
        d.path(),
        &docker_save(&[base_layer()], &["big:1"], &long),
    );
    assert_eq!(limit_of(&err), "max_manifest", "{err}");
    assert_empty(s.root());
}

/// Merges the members of several single-image archives into one: the blobs of all, and
/// `manifest.json` (docker) or `index.json` (OCI) listing every image.
fn merged(archives: Vec<Vec<(String, Vec<u8>)>>, list: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut entries = Vec::new();
    for members in archives {
        for (name, data) in members {
            if name == list {
                let v: serde_json::Value = serde_json::from_slice(&data).unwrap();
                let items = if list == "index.json" {
                    v["manifests"].clone()
                } else {
                    v
                };
                entries.extend(items.as_array().unwrap().iter().cloned());
            } else if !out.iter().any(|(n, _)| *n == name) {
                out.push((name, data));
            }
        }
    }
    let doc = if list == "index.json" {
        json!({"schemaVersion": 2, "manifests": entries})
    } else {
        json!(entries)
    };
    out.push((list.to_string(), serde_json::to_vec(&doc).unwrap()));
    out
}

#[test]
fn root_archives_with_several_images_import_every_image() {
    let (d, s) = store();
    let extra = layer(&[E::File("extra.txt", b"only in a\n", 0o644)]);

    // docker save of two images (as `docker save a b` and `podman save -m` write it).
    let tar = write(
        d.path(),
        "two-docker.tar",
        &outer(&merged(
            vec![
                docker_members(&[base_layer(), extra.clone()], &["a:1"], "A"),
                docker_members(&[base_layer()], &["b:1", "b:2"], "B"),
            ],
            "manifest.json",
        )),
    );
    let all = s.import_all(&tar).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].refs, vec!["a:1"]);
    assert_eq!(all[1].refs, vec!["b:1", "b:2"]);
    for r in ["a:1", "b:1", "b:2"] {
        assert!(s.resolve(r).unwrap().is_some(), "{r}");
    }
    assert_eq!(
        names(s.root(), "layers").len(),
        2,
        "the shared layer is stored once"
    );

    // An OCI layout with two manifests, one of them named twice.
    let x = oci_members(
        &[base_layer()],
        Comp::Gzip,
        json!({"org.opencontainers.image.ref.name": "example.com/x:1"}),
        "X",
    );
    let mut x_again = x.clone();
    for (name, data) in x_again.iter_mut() {
        if name == "index.json" {
            let mut v: serde_json::Value = serde_json::from_slice(data).unwrap();
            v["manifests"][0]["annotations"] =
                json!({"org.opencontainers.image.ref.name": "example.com/x:latest"});
            *data = serde_json::to_vec(&v).unwrap();
        }
    }
    let y = oci_members(
        std::slice::from_ref(&extra),
        Comp::Zstd,
        json!({"org.opencontainers.image.ref.name": "example.com/y:1"}),
        "Y",
    );
    let tar = write(
        d.path(),
        "two-oci.tar",
        &outer(&merged(vec![x, x_again, y], "index.json")),
    );
    let all = s.import_all(&tar).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].refs, vec!["example.com/x:1", "example.com/x:latest"]);
    assert_eq!(all[1].refs, vec!["example.com/y:1"]);
    assert_eq!(
        s.import(&tar).unwrap().id,
        all[0].id,
        "import returns the first"
    );

    // The same caps as one image: more images than an archive may hold is refused before
    // anything is unpacked.
    let (d2, s2) = store();
    let one = docker_members(&[base_layer()], &["c:1"], "C");
    let manifest: serde_json::Value =
        serde_json::from_slice(&one.iter().find(|(n, _)| n == "manifest.json").unwrap().1).unwrap();
    let many: Vec<serde_json::Value> = (0..257).map(|_| manifest[0].clone()).collect();
    let mut members: Vec<(String, Vec<u8>)> = one
        .into_iter()
        .filter(|(n, _)| n != "manifest.json")
        .collect();
    members.push(("manifest.json".into(), serde_json::to_vec(&many).unwrap()));
    let tar = write(d2.path(), "many.tar", &outer(&members));
    let e = s2.import_all(&tar).unwrap_err().to_string();
    assert!(e.contains("257 images") && e.contains("at most 256"), "{e}");
    assert!(s2.list().unwrap().is_empty());
    assert_empty_tmp(s2.root());
}

//! Overlay root filesystems: the merged view of layers with whiteouts and opaque dirs, the
//! writable upper dir, idempotent mounts, many layers, and leases that keep images in use.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use taba_image::{ImageError, ImageStore};

fn store() -> (tempfile::TempDir, ImageStore) {
    require_root();
    let d = tempfile::tempdir().unwrap();
    let s = ImageStore::open(&d.path().join("store")).unwrap();
    (d, s)
}

fn ls(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn mounted(p: &Path) -> bool {
    let p = fs::canonicalize(p).unwrap();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(p.to_str().unwrap()))
}

/// Unmounts on drop so a failing test does not leave mounts behind.
struct Unmount<'a>(&'a ImageStore, &'a Path);
impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = self.0.unmount_rootfs(self.1);
    }
}

#[test]
fn root_overlay_merges_layers_with_whiteouts_and_opaque_dirs() {
    let (d, s) = store();
    let l1 = layer(&[
        E::File("etc/a", b"a1", 0o644),
        E::File("etc/b", b"b1", 0o644),
        E::File("d/x", b"x", 0o644),
        E::File("d/y", b"y", 0o644),
        E::File("keep", b"k", 0o644),
    ]);
    let l2 = layer(&[
        E::File("etc/.wh.a", b"", 0o644),
        E::File("etc/b", b"b2", 0o644),
        E::File("d/.wh..wh..opq", b"", 0o644),
        E::File("d/z", b"z", 0o644),
    ]);
    let l3 = layer(&[E::File("d/w", b"w", 0o644), E::File(".wh.keep", b"", 0o644)]);
    let tar = write(
        d.path(),
        "img.tar",
        &docker_save(&[l1, l2, l3], &["layered"], "l"),
    );
    s.import(&tar).unwrap();
    let img = s.resolve("layered").unwrap().unwrap();
    let c = d.path().join("containers/c1");
    let _guard = Unmount(&s, &c);
    let rootfs = s.mount_rootfs(&img, &c).unwrap();
    assert_eq!(rootfs, fs::canonicalize(&c).unwrap().join("rootfs"));
    assert!(mounted(&rootfs));

    assert_eq!(ls(&rootfs.join("etc")), vec!["b"], "whiteout hides etc/a");
    assert_eq!(
        fs::read(rootfs.join("etc/b")).unwrap(),
        b"b2",
        "upper layer wins"
    );
    assert_eq!(
        ls(&rootfs.join("d")),
        vec!["w", "z"],
        "opaque dir hides lower d/x, d/y"
    );
    assert!(!rootfs.join("keep").exists());

    // Writes land in the container's upper dir; the shared layers are untouched.
    fs::write(rootfs.join("etc/b"), b"changed").unwrap();
    fs::write(rootfs.join("new"), b"n").unwrap();
    fs::remove_file(rootfs.join("d/z")).unwrap();
    assert_eq!(fs::read(c.join("upper/etc/b")).unwrap(), b"changed");
    assert_eq!(fs::read(c.join("upper/new")).unwrap(), b"n");
    assert_eq!(fs::read(img.layers[1].join("etc/b")).unwrap(), b"b2");
    assert_eq!(fs::read(img.layers[1].join("d/z")).unwrap(), b"z");
    assert!(!img.layers[2].join("new").exists());

    // Mounting again (agent restart) is a no-op and keeps the container's changes.
    assert_eq!(s.mount_rootfs(&img, &c).unwrap(), rootfs);
    assert_eq!(fs::read(rootfs.join("etc/b")).unwrap(), b"changed");

    // A second container of the same image sees the image, not the first one's changes.
    let c2 = d.path().join("containers/c2");
    let _guard2 = Unmount(&s, &c2);
    let rootfs2 = s.mount_rootfs(&img, &c2).unwrap();
    assert_eq!(fs::read(rootfs2.join("etc/b")).unwrap(), b"b2");

    s.unmount_rootfs(&c).unwrap();
    s.unmount_rootfs(&c).unwrap(); // idempotent
    s.unmount_rootfs(&c2).unwrap();
    assert!(!mounted(&rootfs) && !mounted(&rootfs2));
    assert_eq!(
        fs::read(c.join("upper/new")).unwrap(),
        b"n",
        "upper dir kept"
    );
}

#[test]
fn root_images_in_use_cannot_be_removed() {
    let (d, s) = store();
    let l = layer(&[E::File("f", b"f", 0o644)]);
    let tar = write(
        d.path(),
        "img.tar",
        &docker_save(&[l], &["used:1", "used:2"], "u"),
    );
    s.import(&tar).unwrap();
    let img = s.resolve("used:1").unwrap().unwrap();
    let c = d.path().join("c");
    let _guard = Unmount(&s, &c);
    s.mount_rootfs(&img, &c).unwrap();
    // Dropping one of two tags is fine; the image stays.
    s.remove("used:2").unwrap();
    match s.remove("used:1") {
        Err(ImageError::InUse {
            image,
            container_dir,
        }) => {
            assert_eq!(image, img.id);
            assert_eq!(container_dir, fs::canonicalize(&c).unwrap());
        }
        other => panic!("{other:?}"),
    }
    assert!(
        s.resolve("used:1").unwrap().is_some(),
        "a refused remove changes nothing"
    );
    assert!(matches!(s.remove(&img.id), Err(ImageError::InUse { .. })));

    // Another image cannot be mounted over it.
    let other = write(
        d.path(),
        "o.tar",
        &docker_save(&[layer(&[E::File("o", b"o", 0o644)])], &["other"], "o"),
    );
    s.import(&other).unwrap();
    let oimg = s.resolve("other").unwrap().unwrap();
    assert!(matches!(
        s.mount_rootfs(&oimg, &c),
        Err(ImageError::RootfsConflict { .. })
    ));

    // A lease whose mount vanished (host reboot, someone unmounted by hand) is stale.
    let rootfs = fs::canonicalize(c.join("rootfs")).unwrap();
    rustix::mount::unmount(&rootfs, rustix::mount::UnmountFlags::DETACH).unwrap();
    s.remove("used:1").unwrap();
    assert!(s.resolve(&img.id).unwrap().is_none());
    assert!(!img.layers[0].exists());
    // Mounting a removed image fails clearly.
    assert!(matches!(
        s.mount_rootfs(&img, &d.path().join("c3")),
        Err(ImageError::NotFound(_))
    ));
}

#[test]
fn root_many_layers_mount_beyond_the_one_page_option_limit() {
    let (d, s) = store();
    // 80 layers of ~90-byte paths need ~7 KiB of lowerdir options: more than mount(2) takes.
    let names: Vec<&'static str> = (0..80)
        .map(|i| &*Box::leak(format!("f{i:02}").into_boxed_str()))
        .collect();
    let layers: Vec<Vec<u8>> = names
        .iter()
        .map(|n| layer(&[E::File(n, n.as_bytes(), 0o644)]))
        .collect();
    let tar = write(d.path(), "img.tar", &docker_save(&layers, &["tall"], "t"));
    assert_eq!(s.import(&tar).unwrap().layers, 80);
    let img = s.resolve("tall").unwrap().unwrap();
    let opts: usize = img.layers.iter().map(|p| p.as_os_str().len() + 1).sum();
    assert!(opts > 4096, "test must exceed one page: {opts}");
    let c = d.path().join("c");
    let _guard = Unmount(&s, &c);
    let rootfs = s.mount_rootfs(&img, &c).unwrap();
    assert_eq!(ls(&rootfs).len(), 80);
    assert_eq!(fs::read(rootfs.join("f00")).unwrap(), b"f00");
    assert_eq!(fs::read(rootfs.join("f79")).unwrap(), b"f79");
    // Made through the new mount API with full layer paths, not the short-link fallback.
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == rootfs.to_str())
        .unwrap();
    assert!(line.contains(img.layers[79].to_str().unwrap()), "{line}");
    assert!(!line.contains("/l/"), "{line}");
}

#[test]
fn root_busybox_runs_in_its_mounted_rootfs() {
    let (d, s) = store();
    let tar = d.path().join("bb.tar");
    let script = manifest_dir().join("../../scripts/build-busybox-image.sh");
    let st = std::process::Command::new("bash")
        .arg(script)
        .arg(&tar)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "build-busybox-image.sh failed (needs busybox-static)"
    );
    s.import(&tar).unwrap();
    let img = s.resolve("busybox").unwrap().unwrap();
    let c = d.path().join("c");
    let _guard = Unmount(&s, &c);
    let rootfs = s.mount_rootfs(&img, &c).unwrap();
    let out = std::process::Command::new("chroot")
        .arg(&rootfs)
        .args([
            "/bin/sh",
            "-c",
            "echo hi > /tmp/x && cat /tmp/x && ls /bin | wc -l",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("hi"));
    assert!(lines.next().unwrap().trim().parse::<u32>().unwrap() > 100);
    assert_eq!(fs::read(c.join("upper/tmp/x")).unwrap(), b"hi\n");
}

/// This package's directory, read when the test runs (cargo sets it for
/// test processes): a test binary reused from a build in another checkout
/// must not run that checkout's scripts.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

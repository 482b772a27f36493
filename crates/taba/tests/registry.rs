//! Pulling images from a real registry (Debian's `docker-registry`, TLS with a CA from
//! `taba tls`, htpasswd auth) into `taba dev` through the CLI, then running them: by tag and
//! by digest, the node's platform out of a two-platform index, credentials refused, a
//! tampered blob refused with nothing kept, a registry killed in the middle of a pull and a
//! clean retry, and a second pull that requests no blob; pushes back into the registry and
//! saves to archives, read back by skopeo and podman with the same digests. Needs root
//! (`taba dev`).

mod common;

use common::registry::*;
use common::*;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

struct World {
    reg: Registry,
    dev: Dev,
    _tmp: tempfile::TempDir,
}

/// A registry and a `taba dev` that trusts its CA (for `host`, default the registry's own).
fn world_with(host: impl FnOnce(&Registry) -> Option<String>) -> (World, Option<String>) {
    require_root();
    let tmp = tempfile::Builder::new()
        .prefix("taba-registry-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let reg = Registry::start(&tmp.path().join("registry"));
    let h = host(&reg);
    let cfg = reg.taba_config(h.as_deref());
    let dev = Dev::start_with(&["--registry-config", cfg.to_str().unwrap()]);
    (
        World {
            reg,
            dev,
            _tmp: tmp,
        },
        h,
    )
}

fn world() -> World {
    world_with(|_| None).0
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn login(w: &World, host: &str, password: &str) -> std::process::Output {
    let mut c = w
        .dev
        .cli_command(&["image", "login", host, "-u", w.reg.user, "--password-stdin"]);
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    child.wait_with_output().unwrap()
}

fn pull(w: &World, reference: &str) -> std::process::Output {
    w.dev.cli(&["image", "pull", reference])
}

fn image_with_ref(w: &World, reference: &str) -> Option<taba_client::api::ImageInfo> {
    w.dev
        .client
        .list_images()
        .unwrap()
        .into_iter()
        .find(|i| i.refs.iter().any(|r| r == reference))
}

/// Names under `dir` (recursively, relative).
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) && !p.ends_with("fs") {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// What the image store holds: blobs, layers, image records (not the lock or leases).
fn store_contents(w: &World) -> Vec<String> {
    let images = w.dev.data.join("images");
    ["blobs", "layers", "images", "tmp"]
        .iter()
        .flat_map(|d| {
            tree(&images.join(d))
                .into_iter()
                .map(move |n| format!("{d}/{n}"))
        })
        .collect()
}

/// A batch job running `script` in `image`; returns its stdout once it completed.
fn run_in(w: &World, name: &str, image: &str, script: &str) -> String {
    let dir = w.dev.data.join("jobs");
    std::fs::create_dir_all(&dir).unwrap();
    let f = job_file(
        &dir,
        name,
        &format!(
            r#"
name = "{name}"
type = "batch"
[[group]]
name = "g"
restart = {{ attempts = 0, interval = "1m", delay = "1s", mode = "fail" }}
reschedule = {{ attempts = 0 }}
  [[group.task]]
  name = "t"
  driver = "container"
  image = "{image}"
  command = ["sh", "-c", "{script}"]
  resources = {{ cpu = 50, memory = "32MiB" }}
"#
        ),
    );
    let out = w.dev.cli(&["job", "run", f.to_str().unwrap()]);
    assert!(out.status.success(), "job {name}: {}", text(&out));
    let status = w.dev.client.job_status(name).unwrap();
    let a = &status.allocations[0];
    assert_eq!(a.status.to_string(), "complete", "{a:?}");
    let logs = w.dev.cli(&["alloc", "logs", a.id.as_str()]);
    String::from_utf8_lossy(&logs.stdout).into_owned()
}

#[test]
fn root_pull_by_tag_and_digest_then_run_both() {
    let w = world();
    let tar = busybox_tar();
    let digest = w.reg.push(
        &format!("docker-archive:{}", tar.display()),
        "test/busybox:1.0",
    );
    assert!(login(&w, &w.reg.host, w.reg.password).status.success());
    let by_tag = format!("{}/test/busybox:1.0", w.reg.host);
    let by_digest = format!("{}/test/busybox@{digest}", w.reg.host);

    let out = pull(&w, &by_tag);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("downloaded, verified") && t.contains("Pulled"),
        "{t}"
    );
    let image = image_with_ref(&w, &by_tag).expect("pulled image listed");
    assert!(image.refs.contains(&by_digest), "{image:?}");
    assert!(
        !w.reg.requests("/blobs/", "taba/").is_empty(),
        "the first pull downloads blobs"
    );

    // All layers present: a pull by tag, then by digest, asks for no blob, and for the
    // manifest once each.
    let blobs = w.reg.requests("/blobs/", "taba/").len();
    let manifests = w.reg.requests("/manifests/", "taba/").len();
    for r in [&by_tag, &by_digest] {
        let out = pull(&w, r);
        let t = text(&out);
        assert!(out.status.success(), "{t}");
        assert!(
            t.contains("0 blobs to download") && t.contains("already present"),
            "{t}"
        );
    }
    assert_eq!(
        w.reg.requests("/blobs/", "taba/").len(),
        blobs,
        "{}",
        w.reg.log()
    );
    assert_eq!(w.reg.requests("/manifests/", "taba/").len(), manifests + 2);
    assert_eq!(image_with_ref(&w, &by_digest).unwrap().id, image.id);

    // Both references run.
    let out = run_in(&w, "bytag", &by_tag, "echo ran-by-tag");
    assert!(out.contains("ran-by-tag"), "{out}");
    let out = run_in(&w, "bydigest", &by_digest, "echo ran-by-digest");
    assert!(out.contains("ran-by-digest"), "{out}");
}

#[test]
fn root_pull_picks_the_nodes_platform_from_an_index() {
    let w = world();
    let layout = OciLayout::new(&w.reg.dir.join("layout-multi"));
    let layer = busybox_layer_tar();
    let amd = layout.image("amd64", std::slice::from_ref(&layer), &["PLATFORM=amd64"]);
    let arm = layout.image("arm64", std::slice::from_ref(&layer), &["PLATFORM=arm64"]);
    // The node's platform listed second: the pick is by platform, not position.
    layout.tag_index("multi", &[arm.clone(), amd.clone()]);
    w.reg.push(
        &format!("oci:{}:multi", layout.dir.display()),
        "test/multi:1",
    );
    assert!(login(&w, &w.reg.host, w.reg.password).status.success());
    let r = format!("{}/test/multi:1", w.reg.host);
    let out = pull(&w, &r);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let (mine, other) = if cfg!(target_arch = "aarch64") {
        (&arm, &amd)
    } else {
        (&amd, &arm)
    };
    assert_eq!(image_with_ref(&w, &r).unwrap().id, mine.config_digest);
    assert!(
        t.contains("linux/amd64") || cfg!(target_arch = "aarch64"),
        "{t}"
    );
    assert!(
        w.reg.requests(&other.config_digest, "taba/").is_empty(),
        "the other platform's config was fetched"
    );
    if cfg!(target_arch = "x86_64") {
        let out = run_in(&w, "platform", &r, "echo platform=$PLATFORM");
        assert!(out.contains("platform=amd64"), "{out}");
    }
}

#[test]
fn root_missing_and_wrong_credentials_are_refused_clearly() {
    let w = world();
    let tar = busybox_tar();
    w.reg.push(
        &format!("docker-archive:{}", tar.display()),
        "test/busybox:1",
    );
    let r = format!("{}/test/busybox:1", w.reg.host);
    let before = store_contents(&w);

    let out = pull(&w, &r);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("refused access") && t.contains(&format!("taba image login {}", w.reg.host)),
        "{t}"
    );

    let out = login(&w, &w.reg.host, "not-the-password");
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("password") && t.contains("refused"), "{t}");
    assert!(!w.dev.data.join("server/registry-auth.json").exists());
    assert_eq!(store_contents(&w), before);

    let out = login(&w, &w.reg.host, w.reg.password);
    assert!(out.status.success(), "{}", text(&out));
    let auth = w.dev.data.join("server/registry-auth.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&auth).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let out = pull(&w, &r);
    assert!(out.status.success(), "{}", text(&out));

    // A bad reference and an unknown tag: clear errors, no pull.
    let out = pull(&w, "Not A Reference");
    assert!(
        text(&out).contains("invalid image reference"),
        "{}",
        text(&out)
    );
    let out = pull(&w, &format!("{}/test/busybox:nope", w.reg.host));
    assert!(text(&out).contains("not found"), "{}", text(&out));
}

#[test]
fn root_a_tampered_blob_is_refused_and_nothing_is_kept() {
    let w = world();
    let layout = OciLayout::new(&w.reg.dir.join("layout-tamper"));
    let img = layout.image(
        "amd64",
        &[tar_with_file("data.bin", &random_bytes(1 << 20, 7))],
        &[],
    );
    layout.tag("t", &img);
    w.reg
        .push(&format!("oci:{}:t", layout.dir.display()), "test/tamper:1");
    // Same length, one byte changed: only the digest can tell.
    let f = w.reg.blob_file(&img.layers[0]);
    let mut bytes = std::fs::read(&f).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&f, &bytes).unwrap();
    assert!(login(&w, &w.reg.host, w.reg.password).status.success());
    let before = store_contents(&w);
    let r = format!("{}/test/tamper:1", w.reg.host);
    let out = pull(&w, &r);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.to_lowercase().contains("digest"), "{t}");
    assert!(t.contains(&img.layers[0]), "the error names the blob: {t}");
    assert!(image_with_ref(&w, &r).is_none());
    assert_eq!(store_contents(&w), before, "the failed pull left something");
}

#[test]
fn root_a_registry_killed_mid_pull_leaves_nothing_and_a_retry_succeeds() {
    // The registry behind a slow proxy (2 MB/s per connection): two 6 MB layers take
    // seconds, so the kill lands while they download.
    let proxy_slot = std::cell::RefCell::new(None);
    let (mut w, host) = world_with(|reg| {
        let port: u16 = reg.host.rsplit(':').next().unwrap().parse().unwrap();
        let p = SlowProxy::start(port, 2 << 20);
        let h = p.host.clone();
        *proxy_slot.borrow_mut() = Some(p);
        Some(h)
    });
    let proxy = proxy_slot.into_inner().unwrap();
    let host = host.unwrap();
    let layout = OciLayout::new(&w.reg.dir.join("layout-big"));
    let img = layout.image(
        "amd64",
        &[
            tar_with_file("a.bin", &random_bytes(6 << 20, 1)),
            tar_with_file("b.bin", &random_bytes(6 << 20, 2)),
        ],
        &[],
    );
    layout.tag("big", &img);
    w.reg
        .push(&format!("oci:{}:big", layout.dir.display()), "test/big:1");
    assert!(login(&w, &host, w.reg.password).status.success());
    let before = store_contents(&w);
    let r = format!("{host}/test/big:1");

    let mut child = w
        .dev
        .cli_command(&["image", "pull", &r])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        let Some(Ok(l)) = lines.next() else { break };
        let downloading = l.contains("downloading");
        seen.push(l);
        if downloading {
            break;
        }
    }
    assert!(seen.iter().any(|l| l.contains("downloading")), "{seen:?}");
    std::thread::sleep(Duration::from_millis(500));
    w.reg.kill();
    proxy.sever();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{seen:?} {rest:?} {err}");
    assert!(err.contains("failed"), "{err}");
    eprintln!("the cut pull: {}", err.trim());
    assert!(image_with_ref(&w, &r).is_none());
    assert_eq!(store_contents(&w), before, "the cut pull left something");

    w.reg.restart();
    let out = pull(&w, &r);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(image_with_ref(&w, &r).unwrap().id, img.config_digest);
}

#[test]
fn root_tag_and_prune_keep_what_job_versions_name() {
    let w = world();
    let tar = busybox_tar();
    let digest = w
        .reg
        .push(&format!("docker-archive:{}", tar.display()), "test/kept:1");
    // A second image, used by no job: a one-file layer of its own.
    let layout = OciLayout::new(&w.reg.dir.join("layout-unused"));
    let unused = layout.image(
        "amd64",
        &[tar_with_file("only.txt", b"nobody runs me\n")],
        &[],
    );
    layout.tag("u", &unused);
    w.reg
        .push(&format!("oci:{}:u", layout.dir.display()), "test/unused:1");
    assert!(login(&w, &w.reg.host, w.reg.password).status.success());
    let kept = format!("{}/test/kept:1", w.reg.host);
    let gone = format!("{}/test/unused:1", w.reg.host);
    for r in [&kept, &gone] {
        assert!(pull(&w, r).status.success());
    }

    // A tag is one more name for the same image; a digest is not a tag.
    let out = w.dev.cli(&["image", "tag", &gone, "mine/unused:v2"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        image_with_ref(&w, "mine/unused:v2").unwrap().id,
        unused.config_digest
    );
    let out = w.dev.cli(&["image", "tag", &gone, &format!("x@{digest}")]);
    assert!(!out.status.success() && text(&out).contains("digests are given by pulls"));
    let out = w.dev.cli(&["image", "tag", "no/such:image", "y:1"]);
    assert!(
        !out.status.success() && text(&out).contains("not found"),
        "{}",
        text(&out)
    );

    // A job names the kept image by tag: its version records the digest.
    let out = run_in(&w, "keeper", &kept, "echo kept");
    assert!(out.contains("kept"));
    let job = w.dev.client.job("keeper").unwrap();
    assert_eq!(
        job.spec.groups[0].tasks[0].image.as_deref(),
        Some(format!("{kept}@{digest}").as_str())
    );

    let out = w.dev.cli(&["image", "prune"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("1 images removed"), "{t}");
    assert!(image_with_ref(&w, &gone).is_none());
    assert!(image_with_ref(&w, "mine/unused:v2").is_none());
    assert!(image_with_ref(&w, &kept).is_some());
    let blobs = tree(&w.dev.data.join("images/blobs/sha256"));
    for l in &unused.layers {
        assert!(
            !blobs.contains(&l.trim_start_matches("sha256:").to_string()),
            "the pruned image's layer blob stayed"
        );
    }
    // The kept image still runs.
    let out = run_in(&w, "keeper2", &kept, "echo still-here");
    assert!(out.contains("still-here"));
}

#[test]
fn root_a_registry_that_never_answers_times_out() {
    require_root();
    let silent = SilentServer::start();
    let host = silent.host.clone();
    let tmp = tempfile::Builder::new()
        .prefix("taba-registry-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let cfg = tmp.path().join("registry.toml");
    std::fs::write(&cfg, "[registry]\ntimeout = \"2s\"\n").unwrap();
    let dev = Dev::start_with(&["--registry-config", cfg.to_str().unwrap()]);
    let out = dev.cli(&["image", "pull", &format!("{host}/app:1")]);
    let t = text(&out).to_lowercase();
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("timed out") || t.contains("timeout"), "{t}");
    assert!(t.contains(&host), "the error names the registry: {t}");
    // A push to it fails the same way, within the timeout.
    dev.import_busybox();
    let start = Instant::now();
    let out = dev.cli(&[
        "image",
        "push",
        &format!("{host}/app:1"),
        "--from",
        "busybox",
    ]);
    let t = text(&out).to_lowercase();
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("timed out") || t.contains("timeout"), "{t}");
    assert!(t.contains(&host), "the error names the registry: {t}");
    assert!(start.elapsed() < Duration::from_secs(60), "the push hung");
}

#[test]
fn root_two_pulls_of_one_image_at_once_download_it_once() {
    // Behind a slow proxy (4 MB/s) the 8 MB layer takes about two seconds: the two pulls
    // overlap.
    let proxy_slot = std::cell::RefCell::new(None);
    let (w, host) = world_with(|reg| {
        let port: u16 = reg.host.rsplit(':').next().unwrap().parse().unwrap();
        let p = SlowProxy::start(port, 4 << 20);
        let h = p.host.clone();
        *proxy_slot.borrow_mut() = Some(p);
        Some(h)
    });
    let _proxy = proxy_slot.into_inner().unwrap();
    let host = host.unwrap();
    let layout = OciLayout::new(&w.reg.dir.join("layout-twice"));
    let img = layout.image(
        "amd64",
        &[tar_with_file("x.bin", &random_bytes(8 << 20, 3))],
        &[],
    );
    layout.tag("t", &img);
    w.reg
        .push(&format!("oci:{}:t", layout.dir.display()), "test/twice:1");
    assert!(login(&w, &host, w.reg.password).status.success());
    let r = format!("{host}/test/twice:1");
    let children: Vec<_> = (0..2)
        .map(|_| {
            w.dev
                .cli_command(&["image", "pull", &r])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let layer_gets = w
        .reg
        .requests(&format!("/blobs/{}", img.layers[0]), "taba/");
    assert_eq!(layer_gets.len(), 1, "{layer_gets:#?}");
    assert_eq!(image_with_ref(&w, &r).unwrap().id, img.config_digest);
}

#[test]
fn root_a_tag_moved_by_a_pull_makes_a_new_job_version() {
    let w = world();
    let tar = busybox_tar();
    let d1 = w
        .reg
        .push(&format!("docker-archive:{}", tar.display()), "test/app:1");
    assert!(login(&w, &w.reg.host, w.reg.password).status.success());
    let r = format!("{}/test/app:1", w.reg.host);
    // `job run` pulls the absent image and pins it.
    let out = run_in(&w, "mover", &r, "echo one");
    let file = w.dev.data.join("jobs/mover.toml");
    // Nothing moved: `job plan` says so, exit code 0.
    let plan = w.dev.cli(&["job", "plan", file.to_str().unwrap()]);
    assert!(plan.status.success(), "{}", text(&plan));
    assert!(text(&plan).contains("no new version"), "{}", text(&plan));
    assert!(out.contains("one"), "{out}");
    let v0 = w.dev.client.job("mover").unwrap();
    assert_eq!(
        v0.spec.groups[0].tasks[0].image.as_deref(),
        Some(format!("{r}@{d1}").as_str())
    );

    // The registry's tag moves to another image.
    let layout = OciLayout::new(&w.reg.dir.join("layout-moved"));
    let v2 = layout.image("amd64", &[busybox_layer_tar()], &["V=2"]);
    layout.tag("v2", &v2);
    let d2 = w
        .reg
        .push(&format!("oci:{}:v2", layout.dir.display()), "test/app:1");
    assert_ne!(d1, d2);
    let rerun = || {
        let out = w
            .dev
            .cli(&["job", "run", "--detach", file.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
        w.dev.client.job("mover").unwrap()
    };
    // `job plan` says the tag moved and what to do; until the server's store moves the tag,
    // the same file is the same version...
    let plan = w.dev.cli(&["job", "plan", file.to_str().unwrap()]);
    let t = text(&plan);
    assert_eq!(plan.status.code(), Some(2), "{t}");
    assert!(
        t.contains(&format!("now resolves to {d2}"))
            && t.contains(&format!("runs {r}@{d1}"))
            && t.contains("no new version"),
        "{t}"
    );
    assert_eq!(rerun().version, v0.version);
    // ... and after a pull it is a new version, pinned to the new digest.
    assert!(pull(&w, &r).status.success());
    let v1 = rerun();
    assert_eq!(v1.version, v0.version + 1);
    assert_eq!(
        v1.spec.groups[0].tasks[0].image.as_deref(),
        Some(format!("{r}@{d2}").as_str())
    );
    let plan = w.dev.cli(&["job", "plan", file.to_str().unwrap()]);
    assert!(plan.status.success(), "{}", text(&plan));
}

#[test]
fn root_plain_http_only_for_a_registry_marked_insecure() {
    require_root();
    let tmp = tempfile::Builder::new()
        .prefix("taba-registry-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let reg = Registry::start_with(&tmp.path().join("registry"), false);
    let cfg = reg.taba_config(None);
    let dev = Dev::start_with(&["--registry-config", cfg.to_str().unwrap()]);
    let w = World {
        reg,
        dev,
        _tmp: tmp,
    };
    let tar = busybox_tar();
    w.reg
        .push(&format!("docker-archive:{}", tar.display()), "test/plain:1");
    assert!(login(&w, &w.reg.host, w.reg.password).status.success());
    let out = pull(&w, &format!("{}/test/plain:1", w.reg.host));
    assert!(out.status.success(), "{}", text(&out));
    // The same registry under a name not marked insecure is reached over HTTPS: refused.
    let port = w.reg.host.rsplit(':').next().unwrap();
    let other = format!("127.0.0.1:{port}");
    let out = pull(&w, &format!("{other}/test/plain:1"));
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains(&format!("registry {other}")), "{t}");
    assert!(
        !t.contains("refused access"),
        "a TLS failure, not a refusal: {t}"
    );
}

fn push(w: &World, target: &str, from: &str) -> std::process::Output {
    w.dev.cli(&["image", "push", target, "--from", from])
}

#[test]
fn root_push_gives_the_registry_the_pulled_digests_and_sends_nothing_twice() {
    let w = world();
    let tar = busybox_tar();
    let digest = w.reg.push(
        &format!("docker-archive:{}", tar.display()),
        "test/busybox:1.0",
    );
    let (_, original) = w.reg.inspect("test/busybox:1.0");
    assert!(login(&w, &w.reg.host, w.reg.password).status.success());
    let src = format!("{}/test/busybox:1.0", w.reg.host);
    // On a terminal: a progress bar per layer (indicatif), not lines.
    let out = w.dev.cli_on_terminal(&["image", "pull", &src]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("[==============================]") && t.contains("downloaded, verified"),
        "{t}"
    );

    // To another repository of the same registry: every blob mounted, none uploaded; the
    // manifest is the one pulled, byte for byte.
    let uploads = w.reg.requests("/blobs/uploads/", "taba/").len();
    let out = push(&w, &format!("{}/copy/busybox:2", w.reg.host), &src);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("mounted from another repository"), "{t}");
    assert!(t.contains("0 blobs uploaded"), "{t}");
    let (d, m) = w.reg.inspect("copy/busybox:2");
    assert_eq!(d, digest);
    assert_eq!(manifest_blobs(&m), manifest_blobs(&original));
    let puts: Vec<String> = w
        .reg
        .requests("/blobs/uploads/", "taba/")
        .into_iter()
        .skip(uploads)
        .filter(|l| l.contains("\"PUT "))
        .collect();
    assert!(puts.is_empty(), "blobs were uploaded: {puts:?}");

    // Again: the repository has them all now.
    let out = push(&w, &format!("{}/copy/busybox:3", w.reg.host), &src);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("already in the registry"), "{t}");
    assert_eq!(w.reg.inspect("copy/busybox:3").0, digest);

    // skopeo copies it out (dir: keeps the manifest as the registry has it) with the same
    // digests.
    let layout = w.reg.dir.join("copied-out");
    let status = std::process::Command::new("skopeo")
        .args(["copy", "--quiet", "--src-cert-dir"])
        .arg(w.reg.dir.join("skopeo-certs"))
        .arg("--src-creds")
        .arg(format!("{}:{}", w.reg.user, w.reg.password))
        .arg(format!("docker://{}/copy/busybox:2", w.reg.host))
        .arg(format!("dir:{}", layout.display()))
        .status()
        .unwrap();
    assert!(status.success());
    let (d, m) = skopeo_inspect(&format!("dir:{}", layout.display()));
    assert_eq!(d, digest);
    assert_eq!(manifest_blobs(&m), manifest_blobs(&original));
}

#[test]
fn root_an_imported_image_pushes_and_saves_with_its_digests() {
    let w = world();
    assert!(login(&w, &w.reg.host, w.reg.password).status.success());
    let images =
        std::env::var("TABA_IMAGE_DIR").unwrap_or_else(|_| "/var/cache/taba/images".into());
    let oci = Path::new(&images).join("busybox-oci.tar");
    let (oci_digest, oci_manifest) = skopeo_inspect(&format!("oci-archive:{}", oci.display()));
    let out = w.dev.cli(&["image", "import", oci.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let name = format!("taba-push-test-{}:1", std::process::id());
    assert!(w
        .dev
        .cli(&["image", "tag", &oci_manifest_ref(&w, &oci_manifest), &name])
        .status
        .success());

    // Push of an OCI-layout import: the layout's manifest, byte for byte, and every blob
    // uploaded once.
    let out = push(&w, &format!("{}/imp/busybox:1", w.reg.host), &name);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("uploaded") && !t.contains("0 blobs uploaded"),
        "{t}"
    );
    let (d, m) = w.reg.inspect("imp/busybox:1");
    assert_eq!(d, oci_digest);
    assert_eq!(manifest_blobs(&m), manifest_blobs(&oci_manifest));
    // podman pulls what taba pushed (into a store of its own: nothing of the host's
    // podman is touched) and finds the same manifest digest and config.
    // (podman wants a runroot of at most 50 characters)
    let store = tempfile::Builder::new()
        .prefix("pd")
        .tempdir_in("/tmp")
        .unwrap();
    let store = store.path();
    let podman = |args: &[&str]| {
        let out = std::process::Command::new("podman")
            .arg("--root")
            .arg(store.join("root"))
            .arg("--runroot")
            .arg(store.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let pushed = format!("{}/imp/busybox:1", w.reg.host);
    let creds = format!("{}:{}", w.reg.user, w.reg.password);
    podman(&[
        "pull",
        "-q",
        "--tls-verify=false",
        "--creds",
        &creds,
        &pushed,
    ]);
    let digest = podman(&["image", "inspect", "--format", "{{.Digest}}", &pushed]);
    assert_eq!(digest, oci_digest);
    let id = podman(&["image", "inspect", "--format", "{{.Id}}", &pushed]);
    assert_eq!(format!("sha256:{id}"), manifest_blobs(&oci_manifest).0);

    // Save as an OCI archive: skopeo reads the same manifest; taba imports it back as the
    // same image.
    let dir = w.reg.dir.join("saved");
    std::fs::create_dir_all(&dir).unwrap();
    let oci_out = dir.join("b-oci.tar");
    let out = w
        .dev
        .cli(&["image", "save", &name, "-o", oci_out.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let (d, m) = skopeo_inspect(&format!("oci-archive:{}", oci_out.display()));
    assert_eq!(d, oci_digest);
    assert_eq!(manifest_blobs(&m), manifest_blobs(&oci_manifest));

    // Save as a docker archive: the same config (image id) and diff_ids; podman loads it
    // under its name with that id.
    let docker_out = dir.join("b-docker.tar");
    let out = w.dev.cli(&[
        "image",
        "save",
        &name,
        "-o",
        docker_out.to_str().unwrap(),
        "--format",
        "docker-archive",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let (_, dm) = skopeo_inspect(&format!("docker-archive:{}", docker_out.display()));
    let (config, layers) = manifest_blobs(&dm);
    assert_eq!(config, manifest_blobs(&oci_manifest).0);
    let diff_ids: Vec<String> = {
        let id = w.dev.client.inspect_image(&name).unwrap().info.id;
        assert_eq!(id, config);
        busybox_diff_ids(&oci)
    };
    assert_eq!(layers, diff_ids);
    let loaded = std::process::Command::new("podman")
        .args(["load", "-q", "-i"])
        .arg(&docker_out)
        .output()
        .unwrap();
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    let podman_id = std::process::Command::new("podman")
        .args([
            "image",
            "inspect",
            "--format",
            "{{.Id}}",
            &format!("localhost/{name}"),
        ])
        .output()
        .unwrap();
    let _ = std::process::Command::new("podman")
        .args(["rmi", "-f", &format!("localhost/{name}")])
        .output();
    assert!(
        podman_id.status.success(),
        "{}",
        String::from_utf8_lossy(&podman_id.stderr)
    );
    assert_eq!(
        format!(
            "sha256:{}",
            String::from_utf8_lossy(&podman_id.stdout).trim()
        ),
        config
    );

    // An existing file is kept unless --force; an unknown image writes nothing.
    let before = std::fs::read(&oci_out).unwrap();
    let out = w.dev.cli(&[
        "image",
        "save",
        &name,
        "-o",
        oci_out.to_str().unwrap(),
        "--format",
        "docker-archive",
    ]);
    let t = text(&out);
    assert!(
        !out.status.success() && t.contains("exists") && t.contains("--force"),
        "{t}"
    );
    assert_eq!(std::fs::read(&oci_out).unwrap(), before);
    let out = w.dev.cli(&[
        "image",
        "save",
        &name,
        "-o",
        oci_out.to_str().unwrap(),
        "--format",
        "docker-archive",
        "--force",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_ne!(std::fs::read(&oci_out).unwrap(), before);
    let missing = dir.join("missing.tar");
    let out = w.dev.cli(&[
        "image",
        "save",
        "no/such:image",
        "-o",
        missing.to_str().unwrap(),
    ]);
    let t = text(&out);
    assert!(!out.status.success() && t.contains("not found"), "{t}");
    assert!(!missing.exists());
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left.len(), 2, "no temporary file is left: {left:?}");
    let out = w.dev.cli(&[
        "image",
        "save",
        &name,
        "-o",
        missing.to_str().unwrap(),
        "--format",
        "zip",
    ]);
    assert!(
        !out.status.success() && text(&out).contains("--format"),
        "{}",
        text(&out)
    );
    let out = push(
        &w,
        &format!("{}/imp/busybox:2", w.reg.host),
        "no/such:image",
    );
    assert!(
        !out.status.success() && text(&out).contains("not found"),
        "{}",
        text(&out)
    );
}

/// The reference the OCI archive's image gets in taba (its index annotation).
fn oci_manifest_ref(w: &World, m: &serde_json::Value) -> String {
    let config = m["config"]["digest"].as_str().unwrap();
    let image = w
        .dev
        .client
        .list_images()
        .unwrap()
        .into_iter()
        .find(|i| i.id == config)
        .expect("the imported image is listed");
    image.id
}

/// The diff_ids of the busybox OCI archive's image (from its config).
fn busybox_diff_ids(oci: &Path) -> Vec<String> {
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--config"])
        .arg(format!("oci-archive:{}", oci.display()))
        .output()
        .unwrap();
    assert!(out.status.success());
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    c["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn root_a_push_without_the_right_names_registry_and_repository() {
    let w = world();
    w.dev.import_busybox();
    // No login: the registry refuses; the error names registry and repository.
    let target = format!("{}/team/app:1", w.reg.host);
    let out = push(&w, &target, "busybox");
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains(&format!("registry {}", w.reg.host)) && t.contains("repository team/app"),
        "{t}"
    );
    // A digest is no target.
    let out = push(
        &w,
        &format!("{}/team/app@sha256:{}", w.reg.host, "a".repeat(64)),
        "busybox",
    );
    assert!(
        !out.status.success() && text(&out).contains("not a digest"),
        "{}",
        text(&out)
    );
}

/// Bearer-token auth: the registry (`auth: token`) sends taba to a token service that signs
/// JWTs the registry verifies (tests/common/token.rs). taba logs in, pulls, pushes where the
/// token grants push, and is refused, naming registry and repository, where it does not.
#[test]
fn root_bearer_token_auth_pull_and_push_through_the_challenge() {
    require_root();
    let tmp = tempfile::Builder::new()
        .prefix("taba-registry-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let token = common::token::TokenServer::start(&tmp.path().join("token"), "alice", "s3cret-pw");
    let reg = Registry::start_token(&tmp.path().join("registry"), &token);
    let cfg = reg.taba_config(None);
    let dev = Dev::start_with(&["--registry-config", cfg.to_str().unwrap()]);
    let w = World {
        reg,
        dev,
        _tmp: tmp,
    };
    let tar = busybox_tar();
    let digest = w.reg.push(
        &format!("docker-archive:{}", tar.display()),
        "alice/busybox:1",
    );

    // Anonymous: the token grants nothing, the registry refuses.
    let src = format!("{}/alice/busybox:1", w.reg.host);
    let out = pull(&w, &src);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("refused access"), "{}", text(&out));
    // A wrong password: the token service refuses it at login.
    let out = login(&w, &w.reg.host, "not-the-password");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        !token.requests_from("taba/").is_empty(),
        "taba asked the token service"
    );

    assert!(login(&w, &w.reg.host, w.reg.password).status.success());
    let out = pull(&w, &src);
    assert!(out.status.success(), "{}", text(&out));
    let out = push(&w, &format!("{}/alice/copy:1", w.reg.host), &src);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(w.reg.inspect("alice/copy:1").0, digest);
    let granted = token.requests_from("taba/");
    assert!(
        granted
            .iter()
            .any(|l| l.contains("repository:alice/copy:pull,push") && l.contains("\"push\"")),
        "{granted:?}"
    );

    // No push right on team/app: the token says so, the registry refuses, the error names
    // registry and repository.
    let out = push(&w, &format!("{}/team/app:1", w.reg.host), &src);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains(&format!("registry {}", w.reg.host)) && t.contains("repository team/app"),
        "{t}"
    );
}

/// `podman save -m` of two images (a docker archive listing both) imports both, each under
/// its names, with the ids podman gives them.
#[test]
fn root_a_podman_multi_image_archive_imports_every_image() {
    require_root();
    let tmp = tempfile::Builder::new()
        .prefix("taba-multi-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let tag = format!("taba-multi-{}", std::process::id());
    let a = common::images::compat_image(
        tmp.path(),
        &format!("{tag}-a"),
        serde_json::json!({"Cmd": ["sh"]}),
    );
    let b = common::images::docker_save(
        tmp.path(),
        &format!("{tag}-b"),
        &[common::images::busybox_layer()],
        serde_json::json!({"Env": ["B=1"]}),
    );
    let podman = |args: &[&str]| {
        let out = std::process::Command::new("podman")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let names = [
        format!("localhost/{tag}-a:latest"),
        format!("localhost/{tag}-b:latest"),
    ];
    for f in [&a, &b] {
        podman(&["load", "-q", "-i", f.to_str().unwrap()]);
    }
    let multi = tmp.path().join("multi.tar");
    let saved = std::process::Command::new("podman")
        .args([
            "save",
            "-m",
            "--format",
            "docker-archive",
            "-o",
            multi.to_str().unwrap(),
        ])
        .args(&names)
        .output()
        .unwrap();
    let ids: Vec<String> = names
        .iter()
        .map(|n| {
            format!(
                "sha256:{}",
                podman(&["image", "inspect", "--format", "{{.Id}}", n])
            )
        })
        .collect();
    for n in &names {
        let _ = std::process::Command::new("podman")
            .args(["rmi", "-f", n])
            .output();
    }
    assert!(
        saved.status.success(),
        "{}",
        String::from_utf8_lossy(&saved.stderr)
    );

    let dev = Dev::start();
    let out = dev.cli(&["image", "import", multi.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let list = dev.client.list_images().unwrap();
    for (n, id) in names.iter().zip(&ids) {
        let short = n.trim_start_matches("localhost/");
        let found = list
            .iter()
            .find(|i| i.refs.iter().any(|r| r == n || r == short))
            .unwrap_or_else(|| panic!("{n} not imported: {list:?}"));
        assert_eq!(&found.id, id, "{n}");
    }
}

//! Pulling an image of about 100 MB (4 layers of random data, gzip) from a local registry
//! (Debian's `docker-registry`, TLS + htpasswd, on loopback), side by side in one run:
//!
//! - `taba image pull` into a `taba dev` (the image removed between runs, so every run
//!   downloads, verifies and unpacks every layer);
//! - `skopeo copy docker://... oci:DIR` (download and verify only, no unpacking);
//! - `podman pull` into a fresh storage root per run (download, verify, unpack: overlay).
//!
//! Then a pull with every layer present, counting the registry's requests by user agent
//! from its access log: taba and podman.
//!
//! Then pushes of the same image into the registry emptied before each run (its data removed,
//! the registry restarted: every blob is uploaded), side by side: `taba image push` from
//! taba's store and `skopeo copy oci:DIR docker://...` from the OCI layout skopeo pulled.
//!
//! Run: `cargo bench -p taba --bench pull` (root; scripts/setup.sh: docker-registry,
//! skopeo, apache2-utils, podman). `TABA_BENCH_RUNS` (default 5) runs per tool; the median
//! is printed. BENCHMARKS.md has the results.

#[path = "../tests/common/mod.rs"]
mod common;

use common::registry::*;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn timed(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    ok(cmd);
    t.elapsed()
}

fn main() {
    require_root();
    let runs: usize = std::env::var("TABA_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let tmp = tempfile::Builder::new()
        .prefix("taba-bench-pull-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let mut reg = Registry::start(&tmp.path().join("registry"));
    let layout = OciLayout::new(&tmp.path().join("layout"));
    let layers: Vec<Vec<u8>> = (0..4)
        .map(|i| tar_with_file(&format!("layer{i}.bin"), &random_bytes(25 << 20, i + 11)))
        .collect();
    let img = layout.image("amd64", &layers, &[]);
    layout.tag("big", &img);
    reg.push(&format!("oci:{}:big", layout.dir.display()), "bench/big:1");
    let total: u64 = std::fs::read_dir(layout.dir.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    let r = format!("{}/bench/big:1", reg.host);
    println!(
        "image {r}: 4 layers, {:.1} MB of blobs; {runs} runs per tool",
        total as f64 / 1e6
    );

    let cfg = reg.taba_config(None);
    let dev = Dev::start_with(&["--registry-config", cfg.to_str().unwrap()]);
    let mut login = dev
        .cli_command(&[
            "image",
            "login",
            &reg.host,
            "-u",
            reg.user,
            "-p",
            reg.password,
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(login.wait().unwrap().success());
    let certs = reg.dir.join("skopeo-certs");
    let creds = format!("{}:{}", reg.user, reg.password);

    let (mut taba, mut skopeo, mut podman) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        // taba: the image (and so its layers and blobs) removed before each run.
        let _ = dev.cli(&["image", "prune"]);
        taba.push(timed(
            dev.cli_command(&["image", "pull", &r])
                .stdout(Stdio::null()),
        ));

        let dest = tmp.path().join(format!("skopeo-{i}"));
        skopeo.push(timed(
            Command::new("skopeo")
                .args(["copy", "--quiet", "--src-cert-dir"])
                .arg(&certs)
                .args(["--src-creds", &creds])
                .arg(format!("docker://{r}"))
                .arg(format!("oci:{}:big", dest.display())),
        ));
        if i + 1 < runs {
            let _ = std::fs::remove_dir_all(&dest);
        }

        let root = tmp.path().join(format!("podman-{i}"));
        let podman_cmd = |args: &[&str]| {
            let mut c = Command::new("podman");
            c.arg("--root")
                .arg(root.join("root"))
                .arg("--runroot")
                .arg(root.join("run"))
                .args(["--storage-driver", "overlay"])
                .args(args);
            c
        };
        podman.push(timed(
            podman_cmd(&["pull", "--quiet", "--cert-dir"])
                .arg(&certs)
                .args(["--creds", &creds, &r])
                .stdout(Stdio::null()),
        ));
        if i + 1 < runs {
            let _ = podman_cmd(&["system", "reset", "--force"]).output();
            let _ = std::fs::remove_dir_all(&root);
        } else {
            // All layers present: one more pull each, requests counted.
            let before = (
                reg.requests("/manifests/", "podman").len()
                    + reg.requests("/manifests/", "containers").len(),
                reg.requests("/blobs/", "podman").len()
                    + reg.requests("/blobs/", "containers").len(),
            );
            let t = timed(
                podman_cmd(&["pull", "--quiet", "--cert-dir"])
                    .arg(&certs)
                    .args(["--creds", &creds, &r])
                    .stdout(Stdio::null()),
            );
            let after = (
                reg.requests("/manifests/", "podman").len()
                    + reg.requests("/manifests/", "containers").len(),
                reg.requests("/blobs/", "podman").len()
                    + reg.requests("/blobs/", "containers").len(),
            );
            println!(
                "podman pull, all layers present: {:.0} ms, {} manifest requests, {} blob requests",
                t.as_secs_f64() * 1e3,
                after.0 - before.0,
                after.1 - before.1
            );
            let _ = podman_cmd(&["system", "reset", "--force"]).output();
        }
    }
    let before = (
        reg.requests("/manifests/", "taba/").len(),
        reg.requests("/blobs/", "taba/").len(),
    );
    let t = timed(
        dev.cli_command(&["image", "pull", &r])
            .stdout(Stdio::null()),
    );
    println!(
        "taba image pull, all layers present: {:.0} ms, {} manifest requests, {} blob requests",
        t.as_secs_f64() * 1e3,
        reg.requests("/manifests/", "taba/").len() - before.0,
        reg.requests("/blobs/", "taba/").len() - before.1
    );
    let (pushes_taba, pushes_skopeo) = push_runs(
        &mut reg,
        &dev,
        &r,
        &tmp.path().join(format!("skopeo-{}", runs - 1)),
        runs,
    );
    let ms = |v: &[Duration]| -> String {
        v.iter()
            .map(|d| format!("{:.0}", d.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for (name, v) in [
        ("taba image pull", &taba),
        ("skopeo copy (no unpack)", &skopeo),
        ("podman pull", &podman),
        ("taba image push", &pushes_taba),
        ("skopeo copy (push)", &pushes_skopeo),
    ] {
        println!(
            "{name:<26} median {:>6.0} ms   runs: {} ms",
            median(v.to_vec()).as_secs_f64() * 1e3,
            ms(v)
        );
    }
}

/// Pushes of the pulled image into the emptied registry: taba from its store, skopeo from the
/// OCI layout it pulled into. Returns the times of each.
fn push_runs(
    reg: &mut Registry,
    dev: &Dev,
    r: &str,
    skopeo_layout: &std::path::Path,
    runs: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let certs = reg.dir.join("skopeo-certs");
    let creds = format!("{}:{}", reg.user, reg.password);
    let empty = |reg: &mut Registry| {
        reg.kill();
        let _ = std::fs::remove_dir_all(reg.dir.join("data"));
        reg.restart();
    };
    let (mut taba, mut skopeo) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        empty(reg);
        taba.push(timed(
            dev.cli_command(&["image", "push", r]).stdout(Stdio::null()),
        ));
        empty(reg);
        skopeo.push(timed(
            Command::new("skopeo")
                .args(["copy", "--quiet", "--dest-cert-dir"])
                .arg(&certs)
                .args(["--dest-creds", &creds])
                .arg(format!("oci:{}:big", skopeo_layout.display()))
                .arg(format!("docker://{r}")),
        ));
    }
    (taba, skopeo)
}

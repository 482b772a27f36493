//! A real OCI registry for the image tests: Debian's `docker-registry` (Distribution) on a
//! free loopback port, with TLS (certificates from `taba tls`) and htpasswd auth, its data and
//! access log in a per-test directory; images pushed into it with `skopeo`. Also: OCI image
//! layouts built in the test (layers, configs, a two-platform index) and a TCP proxy that
//! slows a registry down so a test can act in the middle of a pull.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

fn need(bin: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{bin} is not installed; run scripts/setup.sh");
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A free loopback port (bound and released; the registry binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// A running registry.
pub struct Registry {
    /// `localhost:PORT`: the registry part of references.
    pub host: String,
    /// Its directory: config, certificates, htpasswd, data, log.
    pub dir: PathBuf,
    /// The CA that signed its certificate (PEM).
    pub ca: PathBuf,
    /// The user and password htpasswd accepts.
    pub user: &'static str,
    pub password: &'static str,
    /// Serves HTTPS (else plain HTTP: `insecure` for taba).
    pub tls: bool,
    /// `auth: token` with this service (else htpasswd).
    pub token: Option<(String, PathBuf)>,
    child: Option<Child>,
}

impl Registry {
    /// Starts a registry under `dir` (created) on a free port, over TLS.
    pub fn start(dir: &Path) -> Registry {
        Registry::start_with(dir, true)
    }

    /// [`Registry::start`], over TLS or plain HTTP.
    pub fn start_with(dir: &Path, tls_on: bool) -> Registry {
        Registry::start_auth(dir, tls_on, None)
    }

    /// A registry over TLS whose auth is bearer tokens from `token` (realm URL, root
    /// certificate of the token signer): see [`super::token::TokenServer`].
    pub fn start_token(dir: &Path, token: &super::token::TokenServer) -> Registry {
        Registry::start_auth(
            dir,
            true,
            Some((token.realm.clone(), token.root_cert.clone())),
        )
    }

    fn start_auth(dir: &Path, tls_on: bool, token: Option<(String, PathBuf)>) -> Registry {
        need("docker-registry");
        need("skopeo");
        need("htpasswd");
        std::fs::create_dir_all(dir).unwrap();
        let tls = dir.join("tls");
        run(Command::new(super::taba_bin())
            .args(["tls", "ca", "create", "--dir"])
            .arg(&tls));
        run(Command::new(super::taba_bin())
            .args(["tls", "cert", "create", "--server", "registry", "--dir"])
            .arg(&tls));
        // skopeo reads a directory with ca.crt.
        let skopeo_certs = dir.join("skopeo-certs");
        std::fs::create_dir_all(&skopeo_certs).unwrap();
        std::fs::copy(tls.join("taba-ca.pem"), skopeo_certs.join("ca.crt")).unwrap();
        let (user, password) = ("alice", "s3cret-pw");
        let htpasswd = run(Command::new("htpasswd").args(["-Bbn", user, password]));
        std::fs::write(dir.join("htpasswd"), htpasswd).unwrap();
        let mut r = Registry {
            host: String::new(),
            dir: dir.to_path_buf(),
            ca: tls.join("taba-ca.pem"),
            user,
            password,
            tls: tls_on,
            token,
            child: None,
        };
        for _attempt in 0..5 {
            r.host = format!("localhost:{}", free_port());
            if r.spawn() {
                return r;
            }
        }
        panic!("the registry did not start; log:\n{}", r.log());
    }

    fn write_config(&self) {
        let d = self.dir.display();
        let port = self.host.rsplit(':').next().unwrap();
        let tls = if self.tls {
            format!(
                "  tls:
    certificate: {d}/tls/server-registry.pem
    key: {d}/tls/server-registry-key.pem
"
            )
        } else {
            String::new()
        };
        let auth = match &self.token {
            Some((realm, root)) => format!(
                "auth:
  token:
    realm: {realm}
    service: {}
    issuer: {}
    rootcertbundle: {}
",
                super::token::SERVICE,
                super::token::ISSUER,
                root.display()
            ),
            None => format!(
                "auth:
  htpasswd:
    realm: taba-test
    path: {d}/htpasswd
"
            ),
        };
        let config = format!(
            "version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {d}/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
{tls}{auth}"
        );
        std::fs::write(self.dir.join("config.yml"), config).unwrap();
    }

    /// Starts the process on `self.host`; `false` if it did not come up (port taken).
    fn spawn(&mut self) -> bool {
        self.write_config();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("registry.log"))
            .unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        let port: u16 = self.host.rsplit(':').next().unwrap().parse().unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// kill -9 the registry (its data stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "the registry did not restart; log:\n{}",
            self.log()
        );
    }

    /// Its log (errors and the access log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// Access-log lines so far whose request matches `needle` (e.g. `/blobs/`), from
    /// clients whose user agent starts with `agent`.
    pub fn requests(&self, needle: &str, agent: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("HTTP/1.1\"") && l.contains(needle))
            .filter(|l| l.contains(&format!("\"{agent}")))
            .map(str::to_string)
            .collect()
    }

    /// Copies `src` (a skopeo transport: `docker-archive:F`, `oci:DIR:TAG`) to `repo:tag`
    /// in this registry (`--all`: an index with every image); returns the manifest digest.
    pub fn push(&self, src: &str, repo_tag: &str) -> String {
        let digestfile = self.dir.join(format!("digest-{}", free_port()));
        run(Command::new("skopeo")
            .args(["copy", "--all", "--quiet"])
            .arg(format!("--dest-tls-verify={}", self.tls))
            .arg("--dest-cert-dir")
            .arg(self.dir.join("skopeo-certs"))
            .arg("--dest-creds")
            .arg(format!("{}:{}", self.user, self.password))
            .arg("--digestfile")
            .arg(&digestfile)
            .arg(src)
            .arg(format!("docker://{}/{repo_tag}", self.host)));
        let d = std::fs::read_to_string(&digestfile).unwrap();
        let _ = std::fs::remove_file(&digestfile);
        d.trim().to_string()
    }

    /// `skopeo inspect` of `docker://HOST/repo_tag` (with this registry's CA and login):
    /// the manifest digest, and the raw manifest (config and layer digests).
    pub fn inspect(&self, repo_tag: &str) -> (String, serde_json::Value) {
        let base = |raw: bool| {
            let mut c = Command::new("skopeo");
            c.arg("inspect");
            if raw {
                c.arg("--raw");
            } else {
                c.args(["--format", "{{.Digest}}"]);
            }
            c.arg(format!("--tls-verify={}", self.tls))
                .arg("--cert-dir")
                .arg(self.dir.join("skopeo-certs"))
                .arg("--creds")
                .arg(format!("{}:{}", self.user, self.password))
                .arg(format!("docker://{}/{repo_tag}", self.host));
            c
        };
        let digest = run(&mut base(false)).trim().to_string();
        let raw = run(&mut base(true));
        (digest, serde_json::from_str(&raw).unwrap())
    }

    /// The file the registry keeps blob `digest` in.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// A `--registry-config` file for `taba dev` that trusts this registry's CA (for the
    /// registry at `host`, default this one's).
    pub fn taba_config(&self, host: Option<&str>) -> PathBuf {
        let host = host.unwrap_or(&self.host);
        let p = self
            .dir
            .join(format!("taba-registry-{}.toml", host.replace(':', "_")));
        let setting = if self.tls {
            format!("ca_cert = \"{}\"", self.ca.display())
        } else {
            "insecure = true".to_string()
        };
        std::fs::write(
            &p,
            format!("[registry]\ntimeout = \"10s\"\n[registry.hosts.\"{host}\"]\n{setting}\n"),
        )
        .unwrap();
        p
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `skopeo inspect` of a local transport (`oci-archive:F`, `docker-archive:F`): the manifest
/// digest and the raw manifest.
pub fn skopeo_inspect(transport: &str) -> (String, serde_json::Value) {
    need("skopeo");
    let digest =
        run(Command::new("skopeo").args(["inspect", "--format", "{{.Digest}}", transport]));
    let raw = run(Command::new("skopeo").args(["inspect", "--raw", transport]));
    (
        digest.trim().to_string(),
        serde_json::from_str(&raw).unwrap(),
    )
}

/// Config digest and layer digests a manifest names.
pub fn manifest_blobs(m: &serde_json::Value) -> (String, Vec<String>) {
    (
        m["config"]["digest"].as_str().unwrap().to_string(),
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect(),
    )
}

/// A server on loopback that accepts connections and never says anything (a registry that
/// hangs, TLS handshake included). Stops holding them when dropped (or after two minutes).
pub struct SilentServer {
    /// `localhost:PORT`.
    pub host: String,
    stop: Arc<AtomicBool>,
    holder: Option<std::thread::JoinHandle<()>>,
}

impl SilentServer {
    pub fn start() -> SilentServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = format!("localhost:{}", listener.local_addr().unwrap().port());
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        listener.set_nonblocking(true).unwrap();
        let holder = std::thread::spawn(move || {
            let mut held = Vec::new();
            let start = Instant::now();
            while !s.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(120) {
                if let Ok((c, _)) = listener.accept() {
                    held.push(c);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        SilentServer {
            host,
            stop,
            holder: Some(holder),
        }
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.holder.take() {
            let _ = h.join();
        }
    }
}

/// An OCI image layout being written (for `skopeo copy oci:DIR:TAG`).
pub struct OciLayout {
    pub dir: PathBuf,
}

/// An image written into a layout.
#[derive(Clone, Debug)]
pub struct LayoutImage {
    /// The manifest's descriptor (JSON) with its platform.
    pub descriptor: serde_json::Value,
    /// `sha256:` of the config: the image id.
    pub config_digest: String,
    /// The layer blobs' digests.
    pub layers: Vec<String>,
}

impl OciLayout {
    pub fn new(dir: &Path) -> OciLayout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        OciLayout {
            dir: dir.to_path_buf(),
        }
    }

    /// Writes a blob; returns its descriptor fields (digest, size).
    pub fn blob(&self, bytes: &[u8]) -> (String, usize) {
        let d = digest(bytes);
        std::fs::write(
            self.dir
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
            bytes,
        )
        .unwrap();
        (d, bytes.len())
    }

    /// An image of `arch` from uncompressed layer tars (gzip-compressed here), with `env`.
    pub fn image(&self, arch: &str, layer_tars: &[Vec<u8>], env: &[&str]) -> LayoutImage {
        let mut diff_ids = Vec::new();
        let mut layers = Vec::new();
        for tar in layer_tars {
            diff_ids.push(digest(tar));
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(tar).unwrap();
            let (d, size) = self.blob(&gz.finish().unwrap());
            layers.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": d, "size": size}));
        }
        let config = serde_json::json!({
            "architecture": arch, "os": "linux",
            "config": {"Env": env, "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let (config_digest, config_size) = self.blob(&serde_json::to_vec(&config).unwrap());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config_size},
            "layers": layers,
        });
        let (md, ms) = self.blob(&serde_json::to_vec(&manifest).unwrap());
        LayoutImage {
            descriptor: serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": md, "size": ms,
                "platform": {"os": "linux", "architecture": arch}}),
            config_digest,
            layers: layers
                .iter()
                .map(|l| l["digest"].as_str().unwrap().to_string())
                .collect(),
        }
    }

    /// Names `image` `tag` in index.json (one image).
    pub fn tag(&self, tag: &str, image: &LayoutImage) {
        let mut d = image.descriptor.clone();
        d["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
        self.write_index(vec![d]);
    }

    /// Names an image index of `images` `tag` in index.json.
    pub fn tag_index(&self, tag: &str, images: &[LayoutImage]) {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": images.iter().map(|i| i.descriptor.clone()).collect::<Vec<_>>(),
        });
        let (d, size) = self.blob(&serde_json::to_vec(&index).unwrap());
        self.write_index(vec![serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": d, "size": size,
            "annotations": {"org.opencontainers.image.ref.name": tag}})]);
    }

    fn write_index(&self, manifests: Vec<serde_json::Value>) {
        let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }
}

/// A tar with one file `name` holding `data` (mode 0644, fixed times).
pub fn tar_with_file(name: &str, data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, name, data).unwrap();
    b.into_inner().unwrap()
}

/// `n` bytes that do not compress (a fast PRNG seeded with `seed`).
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// The busybox layer tar (uncompressed) from the OCI archive `scripts/setup.sh` builds.
pub fn busybox_layer_tar() -> Vec<u8> {
    let dir = std::env::var("TABA_IMAGE_DIR").unwrap_or_else(|_| "/var/cache/taba/images".into());
    let oci = Path::new(&dir).join("busybox-oci.tar");
    assert!(
        oci.exists(),
        "{} is missing; run scripts/setup.sh",
        oci.display()
    );
    let mut archive = tar::Archive::new(std::fs::File::open(&oci).unwrap());
    let mut blobs = std::collections::HashMap::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let mut buf = Vec::new();
        e.read_to_end(&mut buf).unwrap();
        blobs.insert(name, buf);
    }
    let blob =
        |d: &str| blobs[&format!("blobs/sha256/{}", d.trim_start_matches("sha256:"))].clone();
    let index: serde_json::Value = serde_json::from_slice(&blobs["index.json"]).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let layer = blob(manifest["layers"][0]["digest"].as_str().unwrap());
    if layer.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&layer[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    } else {
        layer
    }
}

/// A TCP proxy on loopback that passes at most `rate` bytes per second per connection from
/// upstream to the client, so a pull lasts long enough to act in its middle. [`Self::sever`]
/// closes every open connection, as a dead registry's peer sees it (what the registry had
/// already written into the socket buffers never arrives).
pub struct SlowProxy {
    /// `localhost:PORT`.
    pub host: String,
    stop: Arc<AtomicBool>,
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl SlowProxy {
    pub fn start(upstream_port: u16, rate: usize) -> SlowProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let host = format!("localhost:{}", listener.local_addr().unwrap().port());
        let stop = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let s = stop.clone();
        let g = generation.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((down, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = down.set_nonblocking(false);
                let Ok(up) = std::net::TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                let born = g.load(Ordering::SeqCst);
                let pipe = |mut from: std::net::TcpStream,
                            mut to: std::net::TcpStream,
                            rate: Option<usize>,
                            stop: Arc<AtomicBool>| {
                    let g = g.clone();
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 16 * 1024];
                        let _ = from.set_read_timeout(Some(Duration::from_millis(500)));
                        let start = Instant::now();
                        let mut sent = 0usize;
                        while !stop.load(Ordering::SeqCst) && g.load(Ordering::SeqCst) == born {
                            let n = match from.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => n,
                                Err(e)
                                    if e.kind() == std::io::ErrorKind::WouldBlock
                                        || e.kind() == std::io::ErrorKind::TimedOut =>
                                {
                                    continue
                                }
                                Err(_) => break,
                            };
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            sent += n;
                            if let Some(r) = rate {
                                let due = Duration::from_secs_f64(sent as f64 / r as f64);
                                if let Some(wait) = due.checked_sub(start.elapsed()) {
                                    std::thread::sleep(wait.min(Duration::from_secs(1)));
                                }
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                };
                pipe(
                    down.try_clone().unwrap(),
                    up.try_clone().unwrap(),
                    None,
                    s.clone(),
                );
                pipe(up, down, Some(rate), s.clone());
            }
        });
        SlowProxy {
            host,
            stop,
            generation,
        }
    }

    /// Closes every connection open now; new ones pass again.
    pub fn sever(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

//! The agent's image fetcher against a real server (in process, over loopback HTTP): one
//! download for concurrent fetches of one image, nothing fetched twice, and failures that say
//! why and leave the node's store as it was. Root: importing unpacks layers with their owners.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use taba_agent::images::{FetchError, ImageFetcher};
use taba_agent::ServerClient;
use taba_image::ImageStore;
use taba_server::{Server, ServerConfig};
use taba_store::{RedbStore, Store};
use taba_types::wire::{RegisterRequest, PROTOCOL};
use taba_types::{ByteSize, Node, NodeId, NodeResources};

/// A node as an agent registers it (the image routes serve registered nodes only).
fn node(name: &str) -> Node {
    Node {
        id: NodeId::generate(),
        name: name.into(),
        datacenter: "dc1".into(),
        status: Default::default(),
        eligibility: Default::default(),
        drain: None,
        drained_at: None,
        http_addr: "127.0.0.1:1".into(),
        attributes: Default::default(),
        meta: Default::default(),
        resources: NodeResources {
            cores: 2,
            cpu: 4000,
            memory: ByteSize::mib(1024),
            disk: ByteSize::mib(10_000),
        },
        reserved: NodeResources::default(),
        reserved_ports: Default::default(),
        dynamic_ports: Default::default(),
        drivers: Default::default(),
        last_heartbeat: 0,
        usage: Default::default(),
        unusable_reason: String::new(),
        create_index: 0,
        modify_index: 0,
    }
}

fn require_root() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")
                .map(|v| v.split_whitespace().next().unwrap().to_string())
        })
        .unwrap();
    assert_eq!(
        uid, "0",
        "this test needs root (image import chowns); run it as root"
    );
}

fn busybox_tar(dir: &Path) -> PathBuf {
    let script = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../../scripts/build-busybox-image.sh");
    let out = dir.join("busybox.tar");
    let res = std::process::Command::new("bash")
        .arg(&script)
        .arg(&out)
        .output()
        .expect("run build-busybox-image.sh");
    assert!(
        res.status.success(),
        "build-busybox-image.sh failed (it needs Debian's busybox-static): {}",
        String::from_utf8_lossy(&res.stderr)
    );
    out
}

fn staging_left(store: &ImageStore) -> Vec<String> {
    std::fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_concurrent_fetches_share_one_download_and_failures_leave_nothing() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let server_images = Arc::new(ImageStore::open(&dir.path().join("server-images")).unwrap());
    let info = server_images.import(&busybox_tar(dir.path())).unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("state.redb")).unwrap());
    let server = Server::start(
        ServerConfig::new(dir.path().join("server"), "127.0.0.1:0".parse().unwrap()),
        store,
        server_images,
    )
    .await
    .unwrap();
    let client = ServerClient::new(&[format!("http://{}", server.addr())], None).unwrap();
    let node_store = Arc::new(ImageStore::open(&dir.path().join("node-images")).unwrap());

    // A node that never registered is refused.
    let stranger = ImageFetcher::new(node_store.clone(), client.clone(), NodeId::generate(), 4);
    let msg = taba_types::error_chain(&stranger.fetch("busybox").await.unwrap_err());
    assert!(
        msg.contains("403") && msg.contains("register first"),
        "{msg}"
    );

    let n = node("fetch-n1");
    let reg = client
        .register(&RegisterRequest {
            protocol: PROTOCOL,
            node: n.clone(),
        })
        .await
        .unwrap();
    client.set_secret(reg.node_secret);
    let fetcher = Arc::new(ImageFetcher::new(
        node_store.clone(),
        client,
        n.id.clone(),
        4,
    ));

    assert!(!fetcher.is_present("busybox").await.unwrap());
    let (a, b) = tokio::join!(fetcher.fetch("busybox"), fetcher.fetch("busybox:latest"));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.id, info.id);
    assert_eq!(b.id, info.id);
    let mut blobs = [a.blobs, b.blobs];
    blobs.sort();
    assert_eq!(
        blobs,
        [0, 2],
        "one download of config + layer between the two"
    );
    assert!(fetcher.is_present("busybox").await.unwrap());
    assert!(staging_left(&node_store).is_empty());
    // Asked again: nothing to download.
    assert_eq!(fetcher.fetch("busybox").await.unwrap().blobs, 0);

    // An image the servers do not have: a 404 that names it, nothing written.
    let e = fetcher.fetch("nothere:1").await.unwrap_err();
    assert!(matches!(e, FetchError::Manifest { .. }));
    let msg = taba_types::error_chain(&e);
    assert!(msg.contains("nothere:1") && msg.contains("404"), "{msg}");
    assert!(staging_left(&node_store).is_empty());

    // Servers unreachable.
    server.shutdown().await;
    let gone = ImageFetcher::new(
        Arc::new(ImageStore::open(&dir.path().join("other-node")).unwrap()),
        ServerClient::new(&["http://127.0.0.1:9".to_string()], None).unwrap(),
        n.id.clone(),
        4,
    );
    let e = gone.fetch("busybox").await.unwrap_err();
    let msg = taba_types::error_chain(&e);
    assert!(
        msg.contains("cannot get the manifest of busybox from the servers"),
        "{msg}"
    );
}

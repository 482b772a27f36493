//! The configurable caps on input (`[limits]` of the server's
//! configuration): request bodies and image uploads, and what an upload
//! leaves behind when its client goes away or the server was killed during
//! one. (The image store's own caps, a decompression bomb among them, are
//! tested in taba-image's `tests/import.rs`.)

mod common;

use common::*;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use taba_store::{RedbStore, Store};

fn store(dir: &Path) -> Arc<dyn Store> {
    Arc::new(RedbStore::open(&dir.join("state.redb")).expect("open store"))
}

/// The files in the server's upload dir.
fn uploads(srv: &TestServer) -> Vec<String> {
    match std::fs::read_dir(srv.dir.join("server/uploads")) {
        Ok(d) => d
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => vec![],
    }
}

fn error_message(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).expect("a JSON error body");
    v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_request_body_cap_is_the_configured_one() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start_configured(dir.path(), store(dir.path()), |c| {
        c.limits.max_request_body = 4096
    });
    let client = srv.client();
    let index = srv.index();
    let big = format!(r#"{{"policies":["x"],"name":"{}"}}"#, "n".repeat(5000));
    let r = client
        .raw(
            "POST",
            "/v1/acl/tokens",
            Some("application/json"),
            big.as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        error_message(&r.body).contains("larger than 4096 bytes"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    // Under the cap the body is read (and refused for what it says).
    let small = r#"{"policies":["no-such-policy"],"name":"t"}"#;
    let r = client
        .raw(
            "POST",
            "/v1/acl/tokens",
            Some("application/json"),
            small.as_bytes(),
        )
        .unwrap();
    assert!(
        (400..500).contains(&r.status) && r.status != 413,
        "{} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(srv.index(), index, "nothing was written");
}

#[test]
fn an_image_upload_over_the_cap_is_refused_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start_configured(dir.path(), store(dir.path()), |c| {
        c.limits.max_image_upload = 1 << 20
    });
    let body = vec![0u8; 2 << 20];
    let r = srv
        .client()
        .raw("POST", "/v1/images", Some("application/x-tar"), &body)
        .unwrap();
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        error_message(&r.body).contains("larger than 1048576 bytes"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(uploads(&srv), Vec::<String>::new());
}

/// A client that sends part of an image and goes away: the server drops the
/// request, and the partial upload with it.
#[test]
fn an_upload_whose_client_goes_away_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), std::time::Duration::from_secs(5));
    let mut conn = std::net::TcpStream::connect(srv.addr).unwrap();
    write!(
        conn,
        "POST /v1/images HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/x-tar\r\nContent-Length: {}\r\n\r\n",
        srv.addr,
        srv.token,
        64 << 20
    )
    .unwrap();
    let chunk = vec![0u8; 64 << 10];
    for _ in 0..16 {
        conn.write_all(&chunk).unwrap();
    }
    conn.flush().unwrap();
    let name = eventually("the upload's file", || uploads(&srv).into_iter().next());
    assert!(name.ends_with(".tar"), "{name}");
    drop(conn);
    eventually("the upload's file to go", || {
        uploads(&srv).is_empty().then_some(())
    });
    // The server is still there.
    srv.client().list_images().unwrap();
}

/// 64 MiB of zeros, gzip-compressed (about 64 KiB): an archive whose
/// import takes a moment (it is decompressed until a cap stops it).
fn gzip_of_zeros() -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mib = vec![0u8; 1 << 20];
    for _ in 0..64 {
        e.write_all(&mib).unwrap();
    }
    e.finish().unwrap()
}

/// A client that sends a whole image and goes away while it is imported:
/// the import ends on its own (here refused), and its file goes with it.
#[test]
fn an_upload_whose_client_goes_away_during_the_import_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), std::time::Duration::from_secs(5));
    let body = gzip_of_zeros();
    for _ in 0..3 {
        let mut conn = std::net::TcpStream::connect(srv.addr).unwrap();
        write!(
            conn,
            "POST /v1/images HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/x-tar\r\nContent-Length: {}\r\n\r\n",
            srv.addr,
            srv.token,
            body.len()
        )
        .unwrap();
        conn.write_all(&body).unwrap();
        conn.flush().unwrap();
        drop(conn);
    }
    eventually("every upload's file to go", || {
        let left = uploads(&srv);
        left.is_empty().then_some(())
    });
    // Nothing of the archives reached the image store either.
    assert!(srv.client().list_images().unwrap().is_empty());
}

/// Uploads a killed server left are removed when it starts again.
#[test]
fn stale_uploads_are_swept_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let uploads_dir = dir.path().join("server/uploads");
    std::fs::create_dir_all(&uploads_dir).unwrap();
    std::fs::write(uploads_dir.join("0123abcd.tar"), vec![0u8; 4096]).unwrap();
    let srv = TestServer::start(dir.path(), std::time::Duration::from_secs(5));
    assert_eq!(uploads(&srv), Vec::<String>::new());
}

//! The agent routes that hand images out: a manifest by reference and blobs by digest,
//! streamed, with bad input refused (unknown -> 404, malformed digest -> 400, no way out of
//! the blob store). Root: importing unpacks layers with their owners.

mod common;

use common::*;
use sha2::{Digest, Sha256};
use std::time::Duration;
use taba_types::wire::ImageManifest;

fn sha256(bytes: &[u8]) -> String {
    let h: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{h}")
}

#[test]
fn root_agent_image_routes_serve_manifests_and_blobs_and_refuse_bad_digests() {
    require_root("image import chowns");
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(10));
    let user = srv.client();
    let tar = dir.path().join("busybox-oci.tar");
    busybox_oci_tar(&tar);
    let info = user.import_image(&tar).unwrap();
    // Agent routes: a registered node with its credential (the node secret).
    let agent = FakeAgent::register(user.clone(), node("n1", 4096));
    let id = agent.node.id.clone();
    let q = format!("?node_id={id}");
    let c = agent.client.clone();

    // Without a node id, or as a node that never registered: refused.
    let resp = c
        .raw("GET", "/v1/agent/images/manifests/busybox", None, b"")
        .unwrap();
    assert_eq!(resp.status, 400);
    assert_eq!(resp.error().unwrap().field.as_deref(), Some("node_id"));
    let resp = c
        .raw(
            "GET",
            "/v1/agent/images/manifests/busybox?node_id=forged",
            None,
            b"",
        )
        .unwrap();
    assert_eq!(resp.status, 403, "{:?}", resp.error());

    // The manifest, by any form of the reference.
    let mut manifests = Vec::new();
    for r in [
        "busybox",
        "busybox:latest",
        "docker.io/library/busybox:latest",
    ] {
        let resp = c
            .raw(
                "GET",
                &format!("/v1/agent/images/manifests/{r}{q}"),
                None,
                b"",
            )
            .unwrap();
        assert_eq!(resp.status, 200, "{r}: {:?}", resp.error());
        let m: ImageManifest = serde_json::from_slice(&resp.body).unwrap();
        manifests.push(m);
    }
    let m = manifests.pop().unwrap();
    assert!(manifests.iter().all(|x| *x == m));
    assert_eq!(m.id, info.id);
    assert_eq!(m.refs, vec!["busybox:latest"]);
    assert_eq!(m.layers.len(), 1);

    // Every blob, streamed, with the bytes its digest and size say.
    let blobs = std::iter::once((m.config.digest.clone(), m.config.size))
        .chain(m.layers.iter().map(|l| (l.digest.clone(), l.size)));
    for (digest, size) in blobs {
        let resp = c
            .raw(
                "GET",
                &format!("/v1/agent/images/blobs/{digest}{q}"),
                None,
                b"",
            )
            .unwrap();
        assert_eq!(resp.status, 200, "{digest}: {:?}", resp.error());
        assert_eq!(resp.content_type, "application/octet-stream");
        assert_eq!(resp.body.len() as u64, size);
        assert_eq!(sha256(&resp.body), digest);
    }
    assert!(m.layers[0].size > 500_000, "the real busybox layer");

    // Unknown things are 404 with a message that says what.
    let unknown = format!("sha256:{}", "0".repeat(64));
    let resp = c
        .raw(
            "GET",
            &format!("/v1/agent/images/blobs/{unknown}{q}"),
            None,
            b"",
        )
        .unwrap();
    assert_eq!(resp.status, 404);
    let e = resp.error().unwrap();
    assert!(
        e.message.contains(&unknown) && e.message.contains("not found"),
        "{e:?}"
    );
    let resp = c
        .raw(
            "GET",
            &format!("/v1/agent/images/manifests/nothere:1{q}"),
            None,
            b"",
        )
        .unwrap();
    assert_eq!(resp.status, 404);
    assert!(resp.error().unwrap().message.contains("nothere:1"));

    // A malformed reference is a 400 naming it.
    let resp = c
        .raw(
            "GET",
            &format!("/v1/agent/images/manifests/Bad%20Ref{q}"),
            None,
            b"",
        )
        .unwrap();
    assert_eq!(resp.status, 400);
    assert_eq!(resp.error().unwrap().field.as_deref(), Some("reference"));

    // Malformed digests are a 400 naming the digest; nothing outside the blob store is ever
    // served, however the path is spelled.
    for bad in [
        "sha256:xyz",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        &format!("sha256:{}", "A".repeat(64)),
        "..%2F..%2Frefs.json",
        "sha256:..%2F..%2F..%2Frefs.json",
        "%2Fetc%2Fpasswd",
    ] {
        let resp = c
            .raw(
                "GET",
                &format!("/v1/agent/images/blobs/{bad}{q}"),
                None,
                b"",
            )
            .unwrap();
        assert_eq!(resp.status, 400, "{bad}: {:?}", resp.error());
        assert_eq!(
            resp.error().unwrap().field.as_deref(),
            Some("digest"),
            "{bad}"
        );
    }
    for bad in [
        "/v1/agent/images/blobs/../../images",
        "/v1/agent/images/blobs/sha256/../../refs.json",
        "/v1/agent/images/blobs/%2E%2E/%2E%2E/refs.json",
    ] {
        let resp = c.raw("GET", &format!("{bad}{q}"), None, b"").unwrap();
        assert!(
            resp.status == 400 || resp.status == 404,
            "{bad}: {}",
            resp.status
        );
        assert!(
            resp.error().is_some(),
            "{bad}: served {} bytes",
            resp.body.len()
        );
    }
    // Still serving.
    assert_eq!(user.list_images().unwrap().len(), 1);
}

/// Bad bodies of the push, save and plan routes: 4xx naming the field, nothing started.
#[test]
fn root_push_save_and_plan_routes_refuse_bad_input() {
    require_root("image import chowns");
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(10));
    let user = srv.client();
    let tar = dir.path().join("busybox-oci.tar");
    busybox_oci_tar(&tar);
    let info = user.import_image(&tar).unwrap();
    let json = Some("application/json");
    let cases: &[(&str, &[u8], u16, Option<&str>)] = &[
        (
            "/v1/registry/push",
            br#"{"reference":"Not A Ref"}"#,
            400,
            Some("reference"),
        ),
        (
            "/v1/registry/push",
            br#"{"reference":"localhost:1/a:1","sourc":"x"}"#,
            400,
            None,
        ),
        ("/v1/registry/push", b"{", 400, None),
        (
            "/v1/image-save",
            br#"{"reference":"busybox","format":"zip"}"#,
            400,
            Some("format"),
        ),
        (
            "/v1/image-save",
            br#"{"reference":"no/such:image"}"#,
            404,
            None,
        ),
        (
            "/v1/image-save",
            br#"{"reference":"Bad Ref"}"#,
            400,
            Some("reference"),
        ),
        ("/v1/job-plan", br#"{"name":""}"#, 422, None),
    ];
    for (path, body, status, field) in cases {
        let resp = user.raw("POST", path, json, body).unwrap();
        let e = resp.error();
        assert_eq!(
            resp.status,
            *status,
            "{path} {:?}: {e:?}",
            String::from_utf8_lossy(body)
        );
        if let Some(f) = field {
            assert_eq!(e.unwrap().field.as_deref(), Some(*f), "{path}");
        }
    }
    // A push of an image the store lacks, to a registry nobody runs: 404 before any
    // connection (the store is read first).
    let resp = user
        .raw(
            "POST",
            "/v1/registry/push",
            json,
            br#"{"reference":"127.0.0.1:1/a:1","source":"no/such:image"}"#,
        )
        .unwrap();
    assert_eq!(resp.status, 404, "{:?}", resp.error());
    // A save of the imported image: a tar that starts with the OCI layout marker.
    let resp = user
        .raw(
            "POST",
            "/v1/image-save",
            json,
            format!(r#"{{"reference":"{}"}}"#, info.id).as_bytes(),
        )
        .unwrap();
    assert_eq!(resp.status, 200);
    // ustar: a 512-byte header naming the member, its content padded to 512 bytes.
    assert!(
        resp.body.starts_with(b"oci-layout\0"),
        "not an OCI layout tar"
    );
    assert!(resp.body[1024..].starts_with(b"index.json\0"));
    assert_eq!(resp.body.len() % 512, 0);
}

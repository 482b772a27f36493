//! Joining, securely: node ids bound to their credential (agent certificate
//! under TLS, node secret over plain loopback HTTP), join tokens used once,
//! revoked and expired certificates, clients without certificates, and an
//! agent one protocol version older. Every refusal is a 403 (or a refused
//! handshake) and the server stays up.

mod common;

use common::*;
use std::time::Duration;
use taba_client::api::RevokeCertRequest;
use taba_tls::pki::{self, CertAuthority, Extra, Role, Validity};
use taba_types::wire::{HeartbeatRequest, JoinRequest, RegisterRequest, MIN_PROTOCOL, PROTOCOL};

fn register(
    c: &taba_client::Client,
    n: &taba_types::Node,
) -> Result<taba_types::wire::RegisterResponse, taba_client::ClientError> {
    c.agent_register(&RegisterRequest {
        protocol: PROTOCOL,
        node: n.clone(),
    })
}

fn heartbeat(
    c: &taba_client::Client,
    n: &taba_types::Node,
) -> Result<(), taba_client::ClientError> {
    c.agent_heartbeat(&HeartbeatRequest {
        protocol: PROTOCOL,
        node_id: n.id.clone(),
        usage: Default::default(),
    })
    .map(|_| ())
}

fn refused(r: Result<impl std::fmt::Debug, taba_client::ClientError>, needle: &str) {
    match r {
        Err(e) if e.status() == Some(403) => {
            assert!(e.to_string().contains(needle), "{e} lacks {needle:?}")
        }
        other => panic!("want 403 ({needle}), got {other:?}"),
    }
}

#[test]
fn plain_node_secret_binds_the_node_id_at_first_registration() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(30));
    let c = srv.client();
    let a = srv.anonymous();
    let n1 = node("n1", 4096);
    let secret = register(&a, &n1)
        .unwrap()
        .node_secret
        .expect("a secret at first registration");
    assert_eq!(secret.len(), 64);
    let agent = a.with_node_secret(Some(secret.clone()));
    heartbeat(&agent, &n1).unwrap();
    // Re-registration with the secret works and issues no new one.
    assert!(register(&agent, &n1).unwrap().node_secret.is_none());
    // Forged: the same id without the secret, or with another.
    let mut thief = node("thief", 4096);
    thief.id = n1.id.clone();
    refused(register(&a, &thief), "node secret");
    refused(heartbeat(&a, &n1), "node secret");
    refused(
        heartbeat(&a.with_node_secret(Some("f".repeat(64))), &n1),
        "wrong node secret",
    );
    // The server stays up and the node is still n1.
    assert_eq!(c.node(n1.id.as_str()).unwrap().name, "n1");
    // The hash, not the secret, is what the store holds.
    let recs = srv
        .store
        .scan(taba_store::Table::Meta, "node-credential/")
        .unwrap();
    assert_eq!(recs.len(), 1);
    assert!(!String::from_utf8_lossy(&recs[0].value).contains(&secret));
}

#[test]
fn agent_one_protocol_version_older_registers_and_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(30));
    let c = srv.client();
    let a = srv.anonymous();
    // A double of protocol 1's messages, written by hand: the shape an agent
    // one version older sends (no node secret header, protocol 1).
    let n = node("old1", 2048);
    let mut node_json = serde_json::to_value(&n).unwrap();
    node_json["name"] = "old1".into();
    let register = serde_json::json!({"protocol": 1, "node": node_json}).to_string();
    let r = a
        .raw(
            "POST",
            "/v1/agent/register",
            Some("application/json"),
            register.as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.error());
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert!(body["heartbeat_ttl_ms"].as_u64().unwrap() > 0);
    assert!(body.get("node_secret").is_none(), "{body}");
    let hb = format!(
        r#"{{"protocol":1,"node_id":"{}","usage":{{"cpu_mhz":10,"memory":1048576,"at":0}}}}"#,
        n.id
    );
    let r = a
        .raw(
            "POST",
            "/v1/agent/heartbeat",
            Some("application/json"),
            hb.as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.error());
    let r = a
        .raw(
            "GET",
            &format!("/v1/agent/allocations/{}?index=0", n.id),
            None,
            b"",
        )
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.error());
    // Older than the oldest accepted, or newer than this build: refused,
    // naming the field.
    for v in [MIN_PROTOCOL - 1, PROTOCOL + 1] {
        let hb = format!(r#"{{"protocol":{v},"node_id":"{}"}}"#, n.id);
        let r = a
            .raw(
                "POST",
                "/v1/agent/heartbeat",
                Some("application/json"),
                hb.as_bytes(),
            )
            .unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(r.error().unwrap().field.as_deref(), Some("protocol"));
    }
    assert_eq!(c.node("old1").unwrap().name, "old1");
}

#[test]
fn plain_join_token_buys_a_node_secret_once() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(30));
    let c = srv.client();
    let a = srv.anonymous();
    let token = c.create_join_token("1h").unwrap().token;
    let join = |id: &str, token: &str| {
        a.raw(
            "POST",
            "/v1/agent/join",
            Some("application/json"),
            serde_json::to_string(&JoinRequest {
                protocol: PROTOCOL,
                token: token.to_string(),
                node_id: id.into(),
                name: id.to_string(),
                csr_pem: None,
            })
            .unwrap()
            .as_bytes(),
        )
        .unwrap()
    };
    let r = join("j1", &token);
    assert_eq!(r.status, 200, "{:?}", r.error());
    let secret = serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["node_secret"]
        .as_str()
        .unwrap()
        .to_string();
    // The token is spent: another node cannot use it.
    let r = join("j2", &token);
    assert_eq!(r.status, 403);
    assert!(r.error().unwrap().message.contains("already used"));
    // Expired.
    let short = c.create_join_token("1ms").unwrap().token;
    std::thread::sleep(Duration::from_millis(20));
    let r = join("j3", &short);
    assert_eq!(r.status, 403);
    assert!(r.error().unwrap().message.contains("expired"));
    // The node joined registers with its secret, and only with it.
    let mut n = node("j1", 1024);
    n.id = "j1".into();
    refused(register(&a, &n), "node secret");
    register(&a.with_node_secret(Some(secret)), &n).unwrap();
}

#[test]
fn tls_api_needs_a_client_certificate_of_the_cluster_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = test_pki(dir.path(), &["n1"]);
    let srv = start_tls_server(dir.path(), &pki, false);
    let cli = tls_cli(&srv, &pki);
    assert!(cli.list_nodes().unwrap().is_empty());
    // No certificate: refused with the reason.
    let anon = tls_client(&srv, &pki.ca_cert, None);
    refused(anon.list_jobs(), "client certificate");
    // An agent's certificate may only call agent routes.
    let agent = tls_client_as(&srv, &pki.agents[0].1);
    refused(agent.list_jobs(), "agent routes");
    // A certificate of another CA fails the handshake; an expired one of
    // this CA is refused with the reason (403).
    let other = test_pki(&dir.path().join("other"), &[]);
    let foreign = tls_client(&srv, &pki.ca_cert, Some((&other.cli.cert, &other.cli.key)));
    assert!(matches!(
        foreign.list_jobs(),
        Err(taba_client::ClientError::Transport { .. })
    ));
    let ca = CertAuthority::load(&pki.ca_cert, &pki.ca_key).unwrap();
    let old = ca
        .issue(
            &Role::Cli,
            Validity::between(
                taba_tls::time::Duration::days(-10),
                taba_tls::time::Duration::days(-1),
            ),
            &Extra::default(),
        )
        .unwrap();
    let (cert, key) = pki::write_pair(&dir.path().join("tls"), "expired-cli", &old).unwrap();
    let expired = tls_client(&srv, &pki.ca_cert, Some((&cert, &key)));
    refused(expired.list_jobs(), "expired");
    // An expired agent certificate cannot register either.
    let old_agent = ca
        .issue(
            &Role::Agent("n1".into()),
            Validity::between(
                taba_tls::time::Duration::days(-10),
                taba_tls::time::Duration::days(-1),
            ),
            &Extra::default(),
        )
        .unwrap();
    let (cert, key) = pki::write_pair(&dir.path().join("tls"), "expired-n1", &old_agent).unwrap();
    let expired_agent = tls_client(&srv, &pki.ca_cert, Some((&cert, &key)));
    refused(register(&expired_agent, &node("n1", 1024)), "expired");
    // Expired and of another CA: still the handshake fails.
    let other_ca = CertAuthority::load(&other.ca_cert, &other.ca_key).unwrap();
    let old_foreign = other_ca
        .issue(
            &Role::Cli,
            Validity::between(
                taba_tls::time::Duration::days(-10),
                taba_tls::time::Duration::days(-1),
            ),
            &Extra::default(),
        )
        .unwrap();
    let (cert, key) =
        pki::write_pair(&dir.path().join("tls"), "expired-foreign", &old_foreign).unwrap();
    assert!(matches!(
        tls_client(&srv, &pki.ca_cert, Some((&cert, &key))).list_jobs(),
        Err(taba_client::ClientError::Transport { .. })
    ));
    // Plain HTTP to a TLS listener does not get through either.
    let plain = taba_client::Client::new(&srv.addr.to_string(), None);
    assert!(plain.list_jobs().is_err());
    // Still up.
    assert!(cli.list_jobs().unwrap().is_empty());
}

#[test]
fn tls_node_ids_are_bound_to_agent_certificates_and_revocation_holds() {
    let dir = tempfile::tempdir().unwrap();
    let pki = test_pki(dir.path(), &["n1", "n2"]);
    let srv = start_tls_server(dir.path(), &pki, false);
    let cli = tls_cli(&srv, &pki);
    let a1 = tls_client_as(&srv, &pki.agents[0].1);
    let a2 = tls_client_as(&srv, &pki.agents[1].1);
    let n1 = node("n1", 4096);
    assert!(register(&a1, &n1).unwrap().node_secret.is_none());
    heartbeat(&a1, &n1).unwrap();
    // n2's certificate cannot take n1's id, nor register under n1's name.
    let mut forged = node("n2", 4096);
    forged.id = n1.id.clone();
    refused(register(&a2, &forged), "belongs to agent n1");
    refused(
        register(&a2, &node("n1", 4096)),
        "certificate is for agent n2",
    );
    refused(heartbeat(&a2, &n1), "belongs to agent n1");
    // The CLI's certificate is no agent's.
    refused(
        register(&cli.with_token(None), &node("cli", 4096)),
        "may not act as an agent",
    );
    // Revoke n1's certificate: n1 is refused from then on, everywhere.
    let r = cli
        .revoke_cert(&RevokeCertRequest {
            fingerprint: None,
            node: Some("n1".into()),
        })
        .unwrap();
    assert_eq!(r.revoked.len(), 1);
    refused(heartbeat(&a1, &n1), "revoked");
    refused(register(&a1, &n1), "revoked");
    // Revocations survive a restart.
    let store = srv.stop();
    let srv = {
        let files = pki.server.clone();
        TestServer::start_configured(dir.path(), store, move |c| {
            c.tls = Some(taba_server::ServerTls {
                files,
                ca_key: None,
            })
        })
    };
    let a1 = tls_client_as(&srv, &pki.agents[0].1);
    refused(heartbeat(&a1, &n1), "revoked");
    let cli = tls_cli(&srv, &pki);
    assert_eq!(cli.list_nodes().unwrap().len(), 1);
}

#[test]
fn tls_join_token_is_exchanged_once_for_an_agent_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = test_pki(dir.path(), &[]);
    let srv = start_tls_server(dir.path(), &pki, true);
    let cli = tls_cli(&srv, &pki);
    let token = cli.create_join_token("10m").unwrap().token;
    let anon = tls_client(&srv, &pki.ca_cert, None);
    let csr = pki::signing_request(&Role::Agent("n3".into())).unwrap();
    let join = |token: &str, name: &str| {
        anon.raw(
            "POST",
            "/v1/agent/join",
            Some("application/json"),
            serde_json::to_string(&JoinRequest {
                protocol: PROTOCOL,
                token: token.to_string(),
                node_id: format!("id-{name}").as_str().into(),
                name: name.to_string(),
                csr_pem: Some(csr.cert_pem.clone()),
            })
            .unwrap()
            .as_bytes(),
        )
        .unwrap()
    };
    let r = join(&token, "n3");
    assert_eq!(r.status, 200, "{:?}", r.error());
    let cert = serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["cert_pem"]
        .as_str()
        .unwrap()
        .to_string();
    let id = taba_tls::PeerIdentity::from_pem(cert.as_bytes()).unwrap();
    assert_eq!(id.agent_name(), Some("n3"));
    // Used twice: refused.
    let r = join(&token, "n4");
    assert_eq!(r.status, 403, "{:?}", r.error());
    assert!(r.error().unwrap().message.contains("already used"));
    // The certificate works as n3's credential.
    let (c, k) = pki::write_pair(
        &dir.path().join("tls"),
        "agent-n3",
        &taba_tls::CertPair {
            cert_pem: cert,
            key_pem: csr.key_pem.clone(),
        },
    )
    .unwrap();
    let a3 = tls_client(&srv, &pki.ca_cert, Some((&c, &k)));
    let mut n3 = node("n3", 1024);
    n3.id = "id-n3".into();
    register(&a3, &n3).unwrap();
    heartbeat(&a3, &n3).unwrap();
    // Without a certificate nothing but the join route answers.
    refused(anon.list_nodes(), "client certificate");
}

#[test]
fn plain_http_off_loopback_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store: std::sync::Arc<dyn taba_store::Store> =
        std::sync::Arc::new(taba_store::MemoryStore::new());
    let images =
        std::sync::Arc::new(taba_image::ImageStore::open(&dir.path().join("images")).unwrap());
    let cfg = taba_server::ServerConfig::new(dir.path().join("s"), "0.0.0.0:0".parse().unwrap());
    let err = rt
        .block_on(taba_server::Server::start(cfg, store, images))
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("refusing to serve plain HTTP on 0.0.0.0:0"),
        "{err}"
    );
}

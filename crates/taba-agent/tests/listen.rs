//! The agent API serves plain HTTP only on loopback.

#[test]
fn plain_http_off_loopback_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut cfg = taba_agent::AgentConfig::new(dir.path().join("a"), "http://127.0.0.1:9".into());
    cfg.http_addr = "0.0.0.0:0".parse().unwrap();
    let err = rt
        .block_on(taba_agent::start(cfg, Vec::new()))
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("refusing to serve the agent API over plain HTTP on 0.0.0.0:0"),
        "{err}"
    );
}

//! A corpus of bad job files, API bodies and agent messages. Each gets a 4xx
//! with an error body naming the field (where there is one) and the reason;
//! the server stays up; nothing is written (the store index is unchanged).

mod common;

use common::*;
use std::time::Duration;
use taba_types::wire::PROTOCOL;
use taba_types::ClientStatus;

const GOOD: &str = r#"
name = "ok"
[[group]]
name = "g"
count = 1
  [[group.task]]
  name = "t"
  driver = "exec"
  command = ["/bin/true"]
  resources = { cpu = 100, memory = "64MiB" }
"#;

struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    field: Option<&'static str>,
    /// Send with this client (an agent's, carrying its node secret).
    via: Option<taba_client::Client>,
}

fn toml_case(name: &'static str, body: String, status: u16, field: Option<&'static str>) -> Case {
    Case {
        name,
        method: "POST",
        path: "/v1/jobs".into(),
        content_type: Some("application/toml"),
        body: body.into_bytes(),
        status,
        field,
        via: None,
    }
}

fn json_case(
    name: &'static str,
    method: &'static str,
    path: &str,
    body: &str,
    status: u16,
    field: Option<&'static str>,
) -> Case {
    Case {
        name,
        method,
        path: path.to_string(),
        content_type: Some("application/json"),
        body: body.as_bytes().to_vec(),
        status,
        field,
        via: None,
    }
}

fn via(mut case: Case, client: &taba_client::Client) -> Case {
    case.via = Some(client.clone());
    case
}

fn good_with(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from}");
    GOOD.replace(from, to)
}

#[test]
fn bad_input_corpus_is_rejected_without_writes() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(30));
    let c = srv.client();
    let agent = FakeAgent::register(c.clone(), node("n1", 4096));
    let other = FakeAgent::register(c.clone(), node("n2", 4096));
    c.register_job_toml(GOOD.as_bytes()).unwrap();
    let alloc = eventually("placement", || {
        agent
            .allocs(0)
            .1
            .into_iter()
            .next()
            .or_else(|| other.allocs(0).1.into_iter().next())
    });
    let (owner, stranger) = if alloc.node_id == agent.node.id {
        (&agent, &other)
    } else {
        (&other, &agent)
    };
    owner.report(&alloc, ClientStatus::Running);
    eventually("evaluations settle", || {
        let st = c.job_status("ok").unwrap();
        let e = st.latest_eval?;
        (e.status != taba_types::EvalStatus::Pending).then_some(())
    });
    std::thread::sleep(Duration::from_millis(200));
    let owner_id = owner.node.id.to_string();
    let stranger_id = stranger.node.id.to_string();
    let aid = alloc.id.to_string();

    let mut cases = vec![
        toml_case("toml syntax", "name = \n[[group]".into(), 400, None),
        toml_case("toml duplicate key", format!("name = \"a\"\n{GOOD}"), 400, None),
        Case {
            name: "toml not utf-8",
            method: "POST",
            path: "/v1/jobs".into(),
            content_type: Some("application/toml"),
            body: {
                let mut b = GOOD.as_bytes().to_vec();
                b[10] = 0xff;
                b[11] = 0xfe;
                b
            },
            status: 400,
            field: None,
            via: None,
        },
        toml_case("empty body", String::new(), 400, None),
        toml_case("unknown field", good_with("count = 1", "count = 1\ncuont = 3"), 400, Some("group[0]")),
        toml_case("count wrong type", good_with("count = 1", "count = \"two\""), 400, Some("group[0].count")),
        toml_case("count negative", good_with("count = 1", "count = -1"), 400, Some("group[0].count")),
        toml_case("count absurd", good_with("count = 1", "count = 1000000"), 422, Some("group[0].count")),
        toml_case("cpu negative", good_with("cpu = 100", "cpu = -1"), 400, Some("group[0].task[0].resources.cpu")),
        toml_case("cpu zero", good_with("cpu = 100", "cpu = 0"), 422, Some("group[0].task[0].resources.cpu")),
        toml_case("cpu absurd", good_with("cpu = 100", "cpu = 99999999999"), 422, Some("group[0].task[0].resources.cpu")),
        toml_case("memory absurd", good_with("\"64MiB\"", "\"900TiB\""), 422, Some("group[0].task[0].resources.memory")),
        toml_case("memory tiny", good_with("\"64MiB\"", "\"1KiB\""), 422, Some("group[0].task[0].resources.memory")),
        toml_case("memory garbage", good_with("\"64MiB\"", "\"lots\""), 400, Some("group[0].task[0].resources.memory")),
        toml_case("memory negative", good_with("\"64MiB\"", "-5"), 400, Some("group[0].task[0].resources.memory")),
        toml_case("pids zero", good_with("cpu = 100,", "cpu = 100, pids = 0,"), 422, Some("group[0].task[0].resources.pids")),
        toml_case("unknown resource", good_with("cpu = 100,", "cpu = 100, gpus = 2,"), 400, Some("group[0].task[0].resources")),
        toml_case("unknown driver", good_with("driver = \"exec\"", "driver = \"docker\""), 422, Some("group[0].task[0].driver")),
        toml_case(
            "unknown image",
            good_with("driver = \"exec\"\n  command = [\"/bin/true\"]", "driver = \"container\"\n  image = \"nothere:latest\""),
            422,
            Some("group[0].task[0].image"),
        ),
        toml_case("container without image", good_with("driver = \"exec\"", "driver = \"container\""), 422, Some("group[0].task[0].image")),
        toml_case("exec with image", good_with("driver = \"exec\"", "driver = \"exec\"\n  image = \"busybox\""), 422, Some("group[0].task[0].image")),
        toml_case("exec without command", good_with("command = [\"/bin/true\"]", ""), 422, Some("group[0].task[0].command")),
        toml_case("command wrong type", good_with("[\"/bin/true\"]", "\"/bin/true\""), 400, Some("group[0].task[0].command")),
        toml_case("empty job name", good_with("name = \"ok\"", "name = \"\""), 422, Some("name")),
        toml_case("job name with space", good_with("name = \"ok\"", "name = \"o k\""), 422, Some("name")),
        toml_case("job name too long", good_with("name = \"ok\"", &format!("name = \"{}\"", "a".repeat(300))), 422, Some("name")),
        toml_case("bad job type", good_with("name = \"ok\"", "name = \"ok\"\ntype = \"daemon\""), 400, Some("type")),
        toml_case("priority zero", good_with("name = \"ok\"", "name = \"ok\"\npriority = 0"), 422, Some("priority")),
        toml_case("priority absurd", good_with("name = \"ok\"", "name = \"ok\"\npriority = 1000"), 422, Some("priority")),
        toml_case("no groups", "name = \"ok\"\n".into(), 422, Some("group")),
        toml_case("group without tasks", "name = \"ok\"\n[[group]]\nname = \"g\"\n".into(), 422, Some("group[0].task")),
        toml_case("duplicate group", format!("{GOOD}\n[[group]]\nname = \"g\"\n  [[group.task]]\n  name = \"t\"\n  driver = \"exec\"\n  command = [\"x\"]\n"), 422, Some("group[1].name")),
        toml_case("duplicate task", format!("{GOOD}\n  [[group.task]]\n  name = \"t\"\n  driver = \"exec\"\n  command = [\"x\"]\n"), 422, Some("group[0].task[1].name")),
        toml_case("bad interpolation", good_with("count = 1", "count = 1\nconstraint = [{ attribute = \"${foo}\", value = \"x\" }]"), 422, Some("group[0].constraint[0].attribute")),
        toml_case("bad operator", good_with("count = 1", "count = 1\nconstraint = [{ attribute = \"${node.name}\", operator = \"~\", value = \"x\" }]"), 400, Some("group[0].constraint[0].operator")),
        toml_case("regexp without value", good_with("count = 1", "count = 1\nconstraint = [{ attribute = \"${node.name}\", operator = \"regexp\" }]"), 422, Some("group[0].constraint[0].value")),
        toml_case("bad kill signal", good_with("command = [\"/bin/true\"]", "command = [\"/bin/true\"]\n  kill_signal = \"SIGFOO\""), 422, Some("group[0].task[0].kill_signal")),
        toml_case("relative workdir", good_with("command = [\"/bin/true\"]", "command = [\"/bin/true\"]\n  workdir = \"tmp\""), 422, Some("group[0].task[0].workdir")),
        toml_case("bridge network", good_with("count = 1", "count = 1\nnetwork = { mode = \"bridge\" }"), 422, Some("group[0].network.mode")),
        toml_case("restart delay over interval", good_with("count = 1", "count = 1\nrestart = { attempts = 2, interval = \"1s\", delay = \"5s\", mode = \"fail\" }"), 422, Some("group[0].restart.delay")),
        toml_case("bad duration", good_with("count = 1", "count = 1\nrestart = { attempts = 2, interval = \"soon\", delay = \"5s\", mode = \"fail\" }"), 400, Some("group[0].restart.interval")),
        toml_case("migrate.drain on a system job", good_with("name = \"ok\"", "name = \"ok\"\ntype = \"system\"").replace("count = 1", "count = 1\nmigrate = { drain = \"move\" }"), 422, Some("group[0].migrate.drain")),
        toml_case("bad migrate.drain", good_with("count = 1", "count = 1\nmigrate = { drain = \"teleport\" }"), 400, Some("group[0].migrate.drain")),
        toml_case("max_parallel zero", good_with("name = \"ok\"", "name = \"ok\"\nupdate = { max_parallel = 0 }"), 422, Some("update.max_parallel")),
        toml_case("env key with =", good_with("command = [\"/bin/true\"]", "command = [\"/bin/true\"]\n  env = { \"A=B\" = \"c\" }"), 422, Some("group[0].task[0].env")),
        toml_case("oversized", format!("{GOOD}\n# {}\n", "x".repeat(2 << 20)), 413, None),
        json_case("json array", "POST", "/v1/jobs", "[1,2]", 400, None),
        json_case("json truncated", "POST", "/v1/jobs", "{\"name\":", 400, None),
        json_case("json name wrong type", "POST", "/v1/jobs", "{\"name\":5}", 400, Some("name")),
        json_case("json unknown field", "POST", "/v1/jobs", "{\"name\":\"a\",\"foo\":1}", 400, None),
        json_case("json trailing garbage", "POST", "/v1/jobs", "{\"name\":\"a\",\"group\":[]} xyz", 400, None),
        json_case("json negative count", "POST", "/v1/jobs", r#"{"name":"a","group":[{"name":"g","count":-3,"task":[]}]}"#, 400, Some("group[0].count")),
        Case {
            name: "json not utf-8",
            method: "POST",
            path: "/v1/jobs".into(),
            content_type: Some("application/json"),
            body: b"{\"name\":\"\xff\"}".to_vec(),
            status: 400,
            field: None,
            via: None,
        },
        Case {
            name: "unsupported content type",
            method: "POST",
            path: "/v1/jobs".into(),
            content_type: Some("text/plain"),
            body: GOOD.as_bytes().to_vec(),
            status: 415,
            field: None,
            via: None,
        },
        // Agent messages.
        json_case("register wrong protocol", "POST", "/v1/agent/register",
            &serde_json::json!({"protocol": 99, "node": node("x", 1024)}).to_string(), 400, Some("protocol")),
        json_case("register without node", "POST", "/v1/agent/register", &format!("{{\"protocol\":{PROTOCOL}}}"), 400, None),
        json_case("register empty node id", "POST", "/v1/agent/register",
            &{ let mut n = node("x", 1024); n.id = "".into(); serde_json::json!({"protocol": PROTOCOL, "node": n}).to_string() }, 422, Some("node.id")),
        json_case("register bad http_addr", "POST", "/v1/agent/register",
            &{ let mut n = node("x", 1024); n.http_addr = "nowhere".into(); serde_json::json!({"protocol": PROTOCOL, "node": n}).to_string() }, 422, Some("node.http_addr")),
        json_case("register zero memory", "POST", "/v1/agent/register",
            &serde_json::json!({"protocol": PROTOCOL, "node": node("x", 0)}).to_string(), 422, Some("node.resources.memory")),
        json_case("register memory wrong type", "POST", "/v1/agent/register",
            &{ let mut v = serde_json::json!({"protocol": PROTOCOL, "node": node("x", 1024)}); v["node"]["resources"]["memory"] = serde_json::json!([1]); v.to_string() }, 400, Some("node.resources.memory")),
        Case {
            name: "register oversized",
            method: "POST",
            path: "/v1/agent/register".into(),
            content_type: Some("application/json"),
            body: vec![b' '; 2 << 20],
            status: 413,
            field: None,
            via: None,
        },
        json_case("heartbeat forged node", "POST", "/v1/agent/heartbeat",
            &format!("{{\"protocol\":{PROTOCOL},\"node_id\":\"forged\"}}"), 403, Some("node_id")),
        json_case("heartbeat wrong protocol", "POST", "/v1/agent/heartbeat",
            &format!("{{\"protocol\":0,\"node_id\":\"{owner_id}\"}}"), 400, Some("protocol")),
        json_case("update forged node", "POST", "/v1/agent/allocations",
            &format!("{{\"protocol\":{PROTOCOL},\"node_id\":\"forged\",\"updates\":[{{\"id\":\"{aid}\",\"client_status\":\"failed\"}}]}}"), 403, Some("node_id")),
        via(json_case("update unknown alloc", "POST", "/v1/agent/allocations",
            &format!("{{\"protocol\":{PROTOCOL},\"node_id\":\"{owner_id}\",\"updates\":[{{\"id\":\"nope\",\"client_status\":\"failed\"}}]}}"), 422, Some("updates[0].id")), &owner.client),
        via(json_case("update another node's alloc", "POST", "/v1/agent/allocations",
            &format!("{{\"protocol\":{PROTOCOL},\"node_id\":\"{stranger_id}\",\"updates\":[{{\"id\":\"{aid}\",\"client_status\":\"failed\"}}]}}"), 403, Some("updates[0].id")), &stranger.client),
        // Node credentials: the node ids are bound to the secrets issued at registration.
        json_case("update without the node secret", "POST", "/v1/agent/allocations",
            &format!("{{\"protocol\":{PROTOCOL},\"node_id\":\"{owner_id}\",\"updates\":[{{\"id\":\"{aid}\",\"client_status\":\"failed\"}}]}}"), 403, Some("node_id")),
        via(json_case("update with another node's secret", "POST", "/v1/agent/allocations",
            &format!("{{\"protocol\":{PROTOCOL},\"node_id\":\"{owner_id}\",\"updates\":[{{\"id\":\"{aid}\",\"client_status\":\"failed\"}}]}}"), 403, Some("node_id")), &stranger.client),
        json_case("heartbeat without the node secret", "POST", "/v1/agent/heartbeat",
            &format!("{{\"protocol\":{PROTOCOL},\"node_id\":\"{owner_id}\"}}"), 403, Some("node_id")),
        via(json_case("heartbeat with another node's secret", "POST", "/v1/agent/heartbeat",
            &format!("{{\"protocol\":{PROTOCOL},\"node_id\":\"{owner_id}\"}}"), 403, Some("node_id")), &c.with_token(None).with_node_secret(Some("0".repeat(64)))),
        json_case("register over another node's id", "POST", "/v1/agent/register",
            &{ let mut n = node("thief", 1024); n.id = owner.node.id.clone(); serde_json::json!({"protocol": PROTOCOL, "node": n}).to_string() }, 403, Some("node_id")),
        json_case("register over another node's id, old protocol", "POST", "/v1/agent/register",
            &{ let mut n = node("thief", 1024); n.id = owner.node.id.clone(); serde_json::json!({"protocol": 1, "node": n}).to_string() }, 403, Some("node_id")),
        json_case("blocking query without the node secret", "GET", &format!("/v1/agent/allocations/{owner_id}?index=1"), "", 403, Some("node_id")),
        json_case("join unknown token", "POST", "/v1/agent/join",
            &format!("{{\"protocol\":{PROTOCOL},\"token\":\"nope\",\"node_id\":\"new1\",\"name\":\"new1\"}}"), 403, Some("token")),
        json_case("join empty token", "POST", "/v1/agent/join",
            &format!("{{\"protocol\":{PROTOCOL},\"token\":\"\",\"node_id\":\"new1\",\"name\":\"new1\"}}"), 422, Some("token")),
        json_case("join wrong protocol", "POST", "/v1/agent/join",
            r#"{"protocol":0,"token":"x","node_id":"new1","name":"new1"}"#, 400, Some("protocol")),
        json_case("join bad node id", "POST", "/v1/agent/join",
            &format!("{{\"protocol\":{PROTOCOL},\"token\":\"x\",\"node_id\":\"a b\",\"name\":\"new1\"}}"), 422, Some("node_id")),
        json_case("join as a bound node", "POST", "/v1/agent/join",
            &format!("{{\"protocol\":{PROTOCOL},\"token\":\"x\",\"node_id\":\"{owner_id}\",\"name\":\"n1\"}}"), 403, Some("node_id")),
        json_case("token ttl garbage", "POST", "/v1/nodes/tokens", r#"{"ttl":"soon"}"#, 422, Some("ttl")),
        json_case("token ttl too long", "POST", "/v1/nodes/tokens", r#"{"ttl":"1000h"}"#, 422, Some("ttl")),
        json_case("token unknown field", "POST", "/v1/nodes/tokens", r#"{"uses":3}"#, 400, None),
        json_case("revoke bad fingerprint", "POST", "/v1/tls/revoke", r#"{"fingerprint":"abc"}"#, 422, Some("fingerprint")),
        json_case("revoke nothing", "POST", "/v1/tls/revoke", "{}", 422, Some("fingerprint")),
        json_case("revoke a node without a certificate", "POST", "/v1/tls/revoke", r#"{"node":"n1"}"#, 422, Some("node")),
        json_case("update bad status", "POST", "/v1/agent/allocations",
            &format!("{{\"protocol\":{PROTOCOL},\"node_id\":\"{owner_id}\",\"updates\":[{{\"id\":\"{aid}\",\"client_status\":\"exploded\"}}]}}"), 400, Some("updates[0].client_status")),
        json_case("update wrong protocol", "POST", "/v1/agent/allocations",
            &format!("{{\"protocol\":7,\"node_id\":\"{owner_id}\",\"updates\":[]}}"), 400, Some("protocol")),
        json_case("blocking query forged node", "GET", "/v1/agent/allocations/forged?index=1", "", 403, Some("node_id")),
        via(json_case("blocking query bad wait", "GET", &format!("/v1/agent/allocations/{owner_id}?index=1&wait=forever"), "", 400, Some("wait")), &owner.client),
        json_case("blocking query bad index", "GET", &format!("/v1/agent/allocations/{owner_id}?index=abc"), "", 400, Some("index")),
        // Other routes.
        json_case("unknown alloc", "GET", "/v1/allocations/zzzz", "", 404, None),
        json_case("stop unknown alloc", "POST", "/v1/allocations/zzzz/stop", "", 404, None),
        json_case("exec empty command", "POST", &format!("/v1/allocations/{aid}/exec"), "{\"command\":[]}", 422, Some("command")),
        json_case("exec bad base64", "POST", &format!("/v1/allocations/{aid}/exec"), "{\"command\":[\"ls\"],\"stdin_b64\":\"!!!\"}", 422, Some("stdin_b64")),
        json_case("exec unknown field", "POST", &format!("/v1/allocations/{aid}/exec"), "{\"command\":[\"ls\"],\"tty\":true}", 400, None),
        json_case("logs bad type", "GET", &format!("/v1/allocations/{aid}/logs?type=stdin"), "", 400, Some("type")),
        json_case("logs unknown task", "GET", &format!("/v1/allocations/{aid}/logs?task=nope"), "", 400, Some("task")),
        json_case("logs bad follow", "GET", &format!("/v1/allocations/{aid}/logs?follow=maybe"), "", 400, Some("follow")),
        json_case("stop unknown job", "DELETE", "/v1/jobs/nope", "", 404, None),
        json_case("unknown node", "GET", "/v1/nodes/nope", "", 404, None),
        json_case("unknown eval", "GET", "/v1/evaluations/nope", "", 404, None),
        json_case("list jobs unknown query", "GET", "/v1/jobs?foo=1", "", 400, Some("foo")),
        json_case("image import empty", "POST", "/v1/images", "", 400, Some("body")),
        json_case("image import garbage", "POST", "/v1/images", "this is not a tar", 422, Some("body")),
        json_case("remove unknown image", "DELETE", "/v1/images/nothere:latest", "", 404, None),
        // Namespaces.
        toml_case("job in unknown namespace", good_with("name = \"ok\"", "name = \"ok\"\nnamespace = \"nowhere\""), 422, Some("namespace")),
        toml_case("job namespace with space", good_with("name = \"ok\"", "name = \"ok\"\nnamespace = \"a b\""), 422, Some("namespace")),
        json_case("namespace cpu wrong type", "PUT", "/v1/namespaces/team-a", r#"{"quota":{"cpu":"lots"}}"#, 400, Some("quota.cpu")),
        json_case("namespace cpu negative", "PUT", "/v1/namespaces/team-a", r#"{"quota":{"cpu":-5}}"#, 400, Some("quota.cpu")),
        json_case("namespace cpu absurd", "PUT", "/v1/namespaces/team-a", r#"{"quota":{"cpu":999999999999999}}"#, 422, Some("quota.cpu")),
        json_case("namespace memory garbage", "PUT", "/v1/namespaces/team-a", r#"{"quota":{"memory":"lots"}}"#, 400, Some("quota.memory")),
        json_case("namespace memory absurd", "PUT", "/v1/namespaces/team-a", r#"{"quota":{"memory":"5000000TiB"}}"#, 422, Some("quota.memory")),
        json_case("namespace allocations negative", "PUT", "/v1/namespaces/team-a", r#"{"quota":{"allocations":-1}}"#, 400, Some("quota.allocations")),
        json_case("namespace allocations absurd", "PUT", "/v1/namespaces/team-a", r#"{"quota":{"allocations":4000000000}}"#, 422, Some("quota.allocations")),
        json_case("namespace unknown quota field", "PUT", "/v1/namespaces/team-a", r#"{"quota":{"gpus":1}}"#, 400, Some("quota")),
        json_case("namespace unknown field", "PUT", "/v1/namespaces/team-a", r#"{"owner":"me"}"#, 400, None),
        json_case("namespace not an object", "PUT", "/v1/namespaces/team-a", "[]", 400, None),
        json_case("namespace empty body", "PUT", "/v1/namespaces/team-a", "", 400, None),
        json_case("namespace name mismatch", "PUT", "/v1/namespaces/team-a", r#"{"name":"team-b"}"#, 422, Some("name")),
        json_case("namespace bad name", "PUT", "/v1/namespaces/a%20b", "{}", 422, Some("name")),
        json_case("namespace description too long", "PUT", "/v1/namespaces/team-a", &format!("{{\"description\":\"{}\"}}", "d".repeat(2000)), 422, Some("description")),
        json_case("unknown namespace", "GET", "/v1/namespaces/nope", "", 404, None),
        json_case("remove unknown namespace", "DELETE", "/v1/namespaces/nope", "", 404, None),
        json_case("remove default namespace", "DELETE", "/v1/namespaces/default", "", 409, None),
        // Drains.
        json_case("drain unknown node", "POST", "/v1/nodes/nope/drain", "{}", 404, None),
        json_case("drain status unknown node", "GET", "/v1/nodes/nope/drain", "", 404, None),
        json_case("drain not an object", "POST", &format!("/v1/nodes/{owner_id}/drain"), "[]", 400, None),
        json_case("drain empty body", "POST", &format!("/v1/nodes/{owner_id}/drain"), "", 400, None),
        json_case("drain bad deadline", "POST", &format!("/v1/nodes/{owner_id}/drain"), r#"{"deadline":"soon"}"#, 400, Some("deadline")),
        json_case("drain negative deadline", "POST", &format!("/v1/nodes/{owner_id}/drain"), r#"{"deadline":-5}"#, 400, Some("deadline")),
        json_case("drain absurd deadline", "POST", &format!("/v1/nodes/{owner_id}/drain"), r#"{"deadline":"100000h"}"#, 422, Some("deadline")),
        json_case("drain ignore_system wrong type", "POST", &format!("/v1/nodes/{owner_id}/drain"), r#"{"ignore_system":"yes"}"#, 400, Some("ignore_system")),
        json_case("drain unknown field", "POST", &format!("/v1/nodes/{owner_id}/drain"), r#"{"dedline":"1h"}"#, 400, None),
        json_case("drain disable with deadline", "POST", &format!("/v1/nodes/{owner_id}/drain"), r#"{"disable":true,"deadline":"1h"}"#, 422, Some("deadline")),
        json_case("drain disable with ignore_system", "POST", &format!("/v1/nodes/{owner_id}/drain"), r#"{"disable":true,"ignore_system":true}"#, 422, Some("ignore_system")),
    ];
    assert!(cases.len() >= 50, "corpus has {} cases", cases.len());

    let before = srv.index();
    let jobs_before = c.list_jobs().unwrap();
    let mut failures = Vec::new();
    let agent_client = c.with_token(None);
    for case in cases.drain(..) {
        // Agent routes refuse user tokens; agents send their node secret.
        let user = if case.path.starts_with("/v1/agent/") {
            &agent_client
        } else {
            &c
        };
        let r = case
            .via
            .as_ref()
            .unwrap_or(user)
            .raw(case.method, &case.path, case.content_type, &case.body)
            .unwrap_or_else(|e| panic!("{}: transport error {e}", case.name));
        let err = r.error();
        let ok_status = r.status == case.status;
        let ok_body = err.as_ref().is_some_and(|e| !e.message.is_empty());
        let ok_field = match (case.field, err.as_ref().and_then(|e| e.field.as_deref())) {
            (None, _) => true,
            (Some(want), Some(got)) => got == want || got.starts_with(want),
            (Some(_), None) => false,
        };
        if !(ok_status && ok_body && ok_field) {
            failures.push(format!(
                "{}: got {} {:?}, want {} field {:?}",
                case.name, r.status, err, case.status, case.field
            ));
        }
        assert_eq!(srv.index(), before, "{} wrote to the store", case.name);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Still up, and nothing changed.
    assert_eq!(c.list_jobs().unwrap(), jobs_before);
    assert_eq!(srv.index(), before);
}

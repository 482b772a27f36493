//! End-to-end on a multi-process dev cluster: `taba dev --agents N`, a real
//! server and N real agent processes, each agent in its own network
//! namespace on a bridge (see crates/taba/src/cmd/devcluster). Needs root.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::time::Duration;
use taba_client::api::AllocListEntry;

fn wait_allocs(
    c: &DevCluster,
    job: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&[AllocListEntry]) -> bool,
) -> Vec<AllocListEntry> {
    let mut last = Vec::new();
    c.wait_for(what, timeout, || {
        if let Ok(s) = c.client.job_status(job) {
            last = s.allocations;
            pred(&last)
        } else {
            false
        }
    });
    last
}

fn running(allocs: &[AllocListEntry]) -> Vec<&AllocListEntry> {
    allocs
        .iter()
        .filter(|a| a.status.to_string() == "running")
        .collect()
}

fn nodes_of(allocs: &[&AllocListEntry]) -> BTreeSet<String> {
    allocs.iter().map(|a| a.node.clone()).collect()
}

/// `nK` -> K.
fn node_index(name: &str) -> u32 {
    name.trim_start_matches('n')
        .parse()
        .expect("node names are nK")
}

fn run_job(c: &DevCluster, name: &str, toml: &str) {
    let f = job_file(&c.data, name, toml);
    let out = c.cli(&["job", "run", "--detach", f.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "job run {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "taba failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const SPREAD_JOB: &str = r#"
name = "where"
type = "service"
scoring = "spread"
[[group]]
name = "g"
count = 3
  [[group.task]]
  name = "t"
  driver = "exec"
  command = ["/bin/sh", "-c", "echo on $(/usr/sbin/ip -4 -o addr show eth0); exec sleep 600"]
  resources = { cpu = 50, memory = "32MiB" }
"#;

#[test]
fn root_cluster_spreads_a_job_and_serves_logs_and_exec_across_namespaces() {
    let c = DevCluster::start(3, &[]);
    // Each agent advertises its own bridge address and offers a third of the host.
    let nodes: Vec<_> = (1..=3)
        .map(|k| c.client.node(&format!("n{k}")).expect("node nK"))
        .collect();
    for (i, n) in nodes.iter().enumerate() {
        let k = i as u32 + 1;
        assert_eq!(n.node.http_addr, format!("{}:4647", c.agent_ip(k)));
        assert_eq!(n.node.resources.cpu, nodes[0].node.resources.cpu);
        assert_eq!(n.node.resources.memory, nodes[0].node.resources.memory);
    }
    let host_mem: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024;
    let sum: u64 = nodes.iter().map(|n| n.node.resources.memory.0).sum();
    assert!(sum <= host_mem && sum > host_mem / 2, "{sum} of {host_mem}");
    // The bridge is TLS: plain HTTP fails there, the dev PKI's CLI
    // certificate is admitted; agents hold their own certificates (0600 keys).
    let plain = c.bridge_url().replacen("https://", "http://", 1);
    assert!(
        taba_client::Client::new(&plain, None).list_nodes().is_err(),
        "plain HTTP on {plain}"
    );
    let out = c.cli_tls(&["node", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("n3"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = std::fs::read_to_string(c.data.join("agents/n1.toml")).unwrap();
    assert!(
        cfg.contains(&format!("servers = [\"{}\"]", c.bridge_url())),
        "{cfg}"
    );
    let key = std::fs::metadata(c.data.join("tls/agent-n1-key.pem")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
        0o600
    );

    run_job(&c, "where", SPREAD_JOB);
    let allocs = wait_allocs(&c, "where", "3 running", Duration::from_secs(60), |a| {
        running(a).len() == 3
    });
    let run = running(&allocs);
    assert_eq!(
        nodes_of(&run).len(),
        3,
        "spread over the agents: {allocs:?}"
    );
    for a in run {
        let ip = c.agent_ip(node_index(&a.node));
        let id = a.id.as_str();
        // Logs are read from the agent in its namespace, through the server.
        c.wait_for("the task's first line", Duration::from_secs(20), || {
            stdout(&c.cli(&["alloc", "logs", id])).contains(&format!("inet {ip}/24"))
        });
        let out = stdout(&c.cli(&[
            "alloc",
            "exec",
            id,
            "--",
            "/usr/sbin/ip",
            "-4",
            "-o",
            "addr",
            "show",
            "eth0",
        ]));
        assert!(
            out.contains(&format!("inet {ip}/24")),
            "{id} on {}: {out}",
            a.node
        );
    }
    stdout(&c.cli(&["job", "stop", "where"]));
}

#[test]
fn root_cluster_agent_killed_its_allocations_run_on_the_others() {
    let c = DevCluster::start(3, &["--heartbeat-ttl", "3s"]);
    run_job(&c, "where", &SPREAD_JOB.replace("count = 3", "count = 2"));
    let allocs = wait_allocs(&c, "where", "2 running", Duration::from_secs(60), |a| {
        running(a).len() == 2
    });
    let victim = running(&allocs)[0].node.clone();
    let pid = c
        .agent_pid(node_index(&victim))
        .expect("the agent's process");
    // SAFETY: kill(2) on the agent process this test's cluster started.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let allocs = wait_allocs(
        &c,
        "where",
        "replacements on the other agents",
        Duration::from_secs(60),
        |a| {
            let run = running(a);
            run.len() == 2 && !run.iter().any(|x| x.node == victim)
        },
    );
    let lost: Vec<_> = allocs.iter().filter(|a| a.node == victim).collect();
    assert!(
        !lost.is_empty() && lost.iter().all(|a| a.status.to_string() == "lost"),
        "{allocs:?}"
    );
    let n = c.client.node(&victim).unwrap();
    assert_eq!(n.status.to_string(), "down");
}

#[test]
fn root_cluster_rebalances_off_an_agent_above_high_water() {
    // Each agent offers 1 GiB; two allocations holding ~460 MiB each put
    // one agent at ~90 % memory, above the 85 % high water; one of them
    // fits another agent under the 70 % target.
    let c = DevCluster::start(3, &["--agent-memory", "1GiB", "--rebalance-interval", "2s"]);
    run_job(
        &c,
        "hog",
        r#"
name = "hog"
type = "service"
[[group]]
name = "g"
count = 2
migrate = { max_parallel = 1, min_healthy_time = "1s", rebalance = true }
affinity = [{ attribute = "${node.name}", operator = "=", value = "n1", weight = 100 }]
  [[group.task]]
  name = "t"
  driver = "exec"
  command = ["/bin/sh", "-c", "dd if=/dev/zero bs=460M count=1 2>/dev/null | sleep 600"]
  resources = { cpu = 50, memory = "490MiB" }
"#,
    );
    let allocs = wait_allocs(&c, "hog", "2 running", Duration::from_secs(60), |a| {
        running(a).len() == 2
    });
    let first = running(&allocs);
    // The affinity puts both on n1 (a soft preference: moves may leave it).
    assert_eq!(nodes_of(&first).len(), 1, "{allocs:?}");
    let hot = first[0].node.clone();
    let allocs = wait_allocs(
        &c,
        "hog",
        "a move off the hot agent",
        Duration::from_secs(120),
        |a| {
            let run = running(a);
            run.len() == 2 && nodes_of(&run).len() == 2
        },
    );
    // One original was stopped by the rebalancer, and its replacement runs
    // on another agent.
    let stopped: Vec<_> = allocs
        .iter()
        .filter(|a| a.node == hot && a.desired_status.to_string() == "stop")
        .map(|a| c.client.alloc(a.id.as_str()).unwrap().allocation)
        .collect();
    assert_eq!(stopped.len(), 1, "{allocs:?}");
    let why = &stopped[0].desired_description;
    assert!(
        why.contains(&format!("rebalanced off hot node {hot}")),
        "{why}"
    );
    let replacement = allocs
        .iter()
        .map(|a| c.client.alloc(a.id.as_str()).unwrap().allocation)
        .find(|a| a.previous_alloc.as_ref() == Some(&stopped[0].id))
        .expect("a replacement of the moved allocation");
    assert_ne!(replacement.node_name, hot);
    assert_eq!(replacement.client_status.to_string(), "running");
    stdout(&c.cli(&["job", "stop", "hog"]));
}

#[test]
fn root_cluster_stop_removes_namespaces_links_mounts_cgroups_and_processes() {
    let mut c = DevCluster::start(2, &[]);
    c.import_busybox();
    run_job(&c, "where", &SPREAD_JOB.replace("count = 3", "count = 2"));
    run_job(
        &c,
        "box",
        r#"
name = "box"
type = "service"
scoring = "spread"
[[group]]
name = "g"
count = 2
  [[group.task]]
  name = "t"
  driver = "container"
  image = "busybox:latest"
  command = ["sleep", "600"]
  resources = { cpu = 50, memory = "32MiB" }
"#,
    );
    for job in ["where", "box"] {
        wait_allocs(&c, job, "2 running", Duration::from_secs(60), |a| {
            running(a).len() == 2
        });
    }
    let during = c.host_footprint();
    let has = |p: &str| during.iter().any(|x| x.starts_with(p));
    for want in [
        format!("netns {}-n1", c.prefix),
        format!("netns {}-n2", c.prefix),
        format!("link {}-br0", c.prefix),
        format!("link {}-v1", c.prefix),
        format!("mount {}", c.data.display()),
        "cgroup ".to_string(),
        "process ".to_string(),
    ] {
        assert!(has(&want), "{want} missing while running: {during:#?}");
    }
    let st = c.stop().expect("taba dev was running");
    assert!(
        st.success(),
        "taba dev exited {st}; logs:\n{}",
        c.log_tail()
    );
    let after = c.host_footprint();
    assert!(after.is_empty(), "left after stop: {after:#?}");
}

#[test]
fn agent_refuses_an_address_it_cannot_advertise_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().display();
    // Off loopback an agent needs TLS before anything else is checked.
    let tls = tmp.path().join("tls");
    for args in [
        &["tls", "ca", "create"][..],
        &["tls", "cert", "create", "--agent", "n1"][..],
    ] {
        let out = std::process::Command::new(taba_bin())
            .args(args)
            .arg("--dir")
            .arg(&tls)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let t = tls.display();
    for (cfg, want) in [
        (
            format!("data_dir = \"{dir}/a\"\nadvertise = \"0.0.0.0\"\n"),
            "advertise: \"0.0.0.0\" is no address others can reach",
        ),
        (
            // Listens everywhere, and the server address names no route (a port
            // out of range: nothing is looked up or sent).
            format!(
                "data_dir = \"{dir}/b\"\nname = \"n1\"\nhttp = \"0.0.0.0:0\"\n\
                 servers = [\"https://127.0.0.1:99999\"]\n[tls]\nca_cert = \"{t}/taba-ca.pem\"\n\
                 cert = \"{t}/agent-n1.pem\"\nkey = \"{t}/agent-n1-key.pem\"\n"
            ),
            "set `advertise` to the address the servers reach this node at",
        ),
        (
            format!("data_dir = \"{dir}/c\"\n[resources]\nmemory = \"0MiB\"\n"),
            "resources.memory: 0B leaves nothing above reserved.memory",
        ),
    ] {
        let f = tmp.path().join("agent.toml");
        std::fs::write(&f, &cfg).unwrap();
        let out = std::process::Command::new(taba_bin())
            .args(["agent", "--config"])
            .arg(&f)
            .env("TABA_LOG", "error")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cfg}: {err}");
        assert!(err.contains(want), "{cfg}: {err}");
    }
}

const FENCED_JOB: &str = r#"
name = "web"
type = "service"
scoring = "spread"
[[group]]
name = "g"
count = 5
stop_after_disconnect = "2s"
  [[group.task]]
  name = "t"
  driver = "exec"
  command = ["/bin/sleep", "1000"]
  kill_timeout = "1s"
  resources = { cpu = 20, memory = "16MiB" }
"#;

/// The job's allocations the servers say run, by node.
fn running_by_node(c: &taba_client::Client, job: &str) -> Vec<(String, String)> {
    c.job_status(job)
        .map(|s| {
            s.allocations
                .iter()
                .filter(|a| {
                    a.status.to_string() == "running" && a.desired_status.to_string() == "run"
                })
                .map(|a| (a.node.clone(), a.id.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// The issue's cluster test: 3 servers on a 3-member etcd and 5 agents, each in its own
/// network namespace. An agent killed: its allocation runs elsewhere. An agent cut off (its
/// link down): it fences (stops its allocation), the replacement starts, and with the link
/// back exactly `count` really run. The leader killed: the job is still there and a job
/// submitted after it is scheduled.
#[test]
fn root_cluster_ha_three_servers_five_agents_heal_fence_and_fail_over() {
    let etcd = taba_store::etcd_testing::EtcdCluster::start(3);
    let endpoints = etcd.endpoints().join(",");
    let c = DevCluster::start(5, &["--servers", "3", "--etcd", &endpoints]);
    let api = c.tls_client(c.server_urls(3));
    run_job(&c, "web", FENCED_JOB);
    c.wait_for("5 running", Duration::from_secs(90), || {
        running_by_node(&api, "web").len() == 5
    });
    // What really runs: one shim per allocation, over the agents.
    let real = |skip: &[u32]| -> usize {
        (1..=5)
            .filter(|k| !skip.contains(k))
            .map(|k| c.running_allocs(k).len())
            .sum()
    };
    assert_eq!(real(&[]), 5);
    let holder = |skip: &[u32]| -> u32 {
        running_by_node(&api, "web")
            .iter()
            .map(|(n, _)| node_index(n))
            .find(|k| !skip.contains(k))
            .expect("an agent that runs some of the job")
    };

    // 1. kill -9 an agent that runs some: its allocations are replaced on the others.
    let killed = holder(&[]);
    let pid = c.agent_pid(killed).expect("the agent's process");
    // SAFETY: kill(2) on the agent process this test's cluster started.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let killed_name = format!("n{killed}");
    c.wait_for(
        "the killed agent's allocations replaced",
        Duration::from_secs(60),
        || {
            let run = running_by_node(&api, "web");
            run.len() == 5 && run.iter().all(|(n, _)| *n != killed_name)
        },
    );
    assert_eq!(real(&[killed]), 5, "the four live agents run the five");

    // 2. cut another one's link: it stops its allocations itself (stop_after_disconnect),
    //    the servers replace them; with the link back exactly 5 run.
    let cut_k = holder(&[killed]);
    let cut_name = format!("n{cut_k}");
    let cut = running_by_node(&api, "web")
        .into_iter()
        .filter(|(n, _)| *n == cut_name)
        .map(|(_, id)| id)
        .collect::<Vec<_>>();
    c.link(cut_k, false);
    c.wait_for(
        "the cut-off agent fenced and replaced",
        Duration::from_secs(60),
        || {
            c.running_allocs(cut_k).is_empty()
                && running_by_node(&api, "web")
                    .iter()
                    .filter(|(n, _)| *n != cut_name)
                    .count()
                    == 5
        },
    );
    c.link(cut_k, true);
    c.wait_for(
        "exactly 5 after the link is back",
        Duration::from_secs(60),
        || {
            let run = running_by_node(&api, "web");
            run.len() == 5
                && run.iter().all(|(n, _)| *n != killed_name && *n != cut_name)
                && real(&[killed]) == 5
        },
    );
    for id in &cut {
        let a = api.alloc(id).expect("the fenced allocation");
        assert_ne!(a.allocation.client_status.to_string(), "running", "{id}");
    }

    // 3. kill -9 the leader: the job is still there and a new one is scheduled.
    let leader_url: serde_json::Value = serde_json::from_slice(
        &api.raw("GET", "/v1/status/leader", None, b"")
            .expect("leader status")
            .body,
    )
    .unwrap();
    let leader_url = leader_url["leader"].as_str().expect("a leader").to_string();
    let leader = c
        .server_urls(3)
        .iter()
        .position(|u| *u == leader_url)
        .expect("the leader is one of the servers") as u32;
    let pid = c.server_pid(leader).expect("the leader's process");
    // SAFETY: kill(2) on a server process this test's cluster started.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let after = FENCED_JOB
        .replace("name = \"web\"", "name = \"after\"")
        .replace("count = 5", "count = 1");
    c.wait_for(
        "a job submitted after the leader died",
        Duration::from_secs(60),
        || api.register_job_toml(after.as_bytes()).is_ok(),
    );
    c.wait_for("the new job running", Duration::from_secs(60), || {
        running_by_node(&api, "after").len() == 1
    });
    // The election takes about the lease TTL (2 s) plus the state load, longer than this
    // group's stop_after_disconnect (2 s): agents may fence during it, and the new leader
    // replaces what they stopped. Either way exactly 5 run again (beside the one of after).
    c.wait_for(
        "exactly 5 of web after the failover",
        Duration::from_secs(60),
        || running_by_node(&api, "web").len() == 5 && real(&[killed]) == 5 + 1,
    );
}

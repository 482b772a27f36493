//! High availability with real processes: a 3-member etcd cluster on loopback, three
//! `taba server`s sharing it and `taba agent`s running exec workloads. Needs root (the
//! agents' cgroups) and Debian's etcd (scripts/setup.sh).
//!
//! - the leader killed with SIGKILL: jobs submitted before and after are all there and
//!   scheduled;
//! - one etcd member killed: the service goes on;
//! - every server restarted one by one while 200 jobs are submitted: each is there once;
//! - followers serve reads from their watch-fed copy (even while the leader is frozen) and
//!   read their own forwarded writes;
//! - under TLS, an agent and the CLI that talk to a follower keep their certificates' rights
//!   at the leader, and only a server may pass on a client's identity.

mod common;

use common::ha::{tls_options, HaCluster};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use taba_client::Client;

fn service_job(name: &str) -> String {
    format!(
        r#"name = "{name}"
type = "service"
[[group]]
name = "g"
count = 1
  [[group.task]]
  name = "t"
  driver = "exec"
  command = ["/bin/sleep", "600"]
  resources = {{ cpu = 10, memory = "16MiB" }}
"#
    )
}

fn batch_job(name: &str) -> String {
    format!(
        r#"name = "{name}"
type = "batch"
[[group]]
name = "g"
count = 1
  [[group.task]]
  name = "t"
  driver = "exec"
  command = ["/bin/true"]
  resources = {{ cpu = 10, memory = "16MiB" }}
"#
    )
}

/// Submits `toml` through the clients in turn until one acknowledges it (bounded by time:
/// servers may be down or electing). Returns which client took it.
fn submit(clients: &[Client], toml: &str, timeout: Duration) -> usize {
    let start = Instant::now();
    let mut n = 0;
    loop {
        let at = n % clients.len();
        match clients[at].register_job_toml(toml.as_bytes()) {
            Ok(_) => return at,
            Err(e) if start.elapsed() > timeout => panic!("job not acknowledged in time: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
        n += 1;
    }
}

/// Every job of the cluster, name -> version, read through any server that answers.
fn jobs(cluster: &HaCluster) -> Option<BTreeMap<String, u64>> {
    cluster.clients().iter().find_map(|c| {
        c.list_jobs()
            .ok()
            .map(|jobs| jobs.into_iter().map(|j| (j.name, j.version)).collect())
    })
}

/// Whether job `name` has exactly one allocation and it is `status`.
fn one_alloc(cluster: &HaCluster, name: &str, statuses: &[&str]) -> bool {
    cluster.clients().iter().any(|c| {
        c.job_status(name).ok().is_some_and(|s| {
            s.allocations.len() == 1
                && statuses.contains(&s.allocations[0].status.to_string().as_str())
        })
    })
}

/// The index of a running server that does not lead.
fn a_follower(cluster: &HaCluster, leader: usize) -> usize {
    (0..cluster.servers.len())
        .find(|&n| n != leader && cluster.servers[n].child.is_some())
        .expect("a follower")
}

#[test]
fn root_ha_followers_serve_reads_from_their_copy() {
    let cluster = HaCluster::start(3);
    let leader = cluster.wait_leader(Duration::from_secs(30));
    let follower = a_follower(&cluster, leader);
    let via_follower = cluster.servers[follower].client();
    // A write through the follower is forwarded; the next read through it sees it.
    for n in 0..20 {
        let name = format!("copy{n}");
        submit(
            std::slice::from_ref(&via_follower),
            &batch_job(&name),
            Duration::from_secs(30),
        );
        let st = via_follower.job_status(&name).expect("read your write");
        assert_eq!(st.name, name);
    }
    // A write through the leader reaches the follower's copy.
    let via_leader = cluster.servers[leader].client();
    submit(
        std::slice::from_ref(&via_leader),
        &batch_job("from-leader"),
        Duration::from_secs(30),
    );
    cluster.wait_for(
        "the follower's copy has the job",
        Duration::from_secs(10),
        |_| via_follower.job_status("from-leader").is_ok(),
    );
    // The leader frozen: the follower, still following it, answers reads from its copy (a
    // frozen process answers nothing, so a forwarded read could not). If the lease ran out
    // between the checks, another server leads: thaw and try again (bounded).
    let mut proved = false;
    for _ in 0..3 {
        let leader = cluster.wait_leader(Duration::from_secs(30));
        let follower = a_follower(&cluster, leader);
        let leader_url = cluster.servers[leader].url.clone();
        cluster.servers[leader].signal(libc::SIGSTOP);
        let before = cluster.servers[follower].leader_seen();
        let jobs = cluster.servers[follower].client().list_jobs();
        let after = cluster.servers[follower].leader_seen();
        cluster.servers[leader].signal(libc::SIGCONT);
        let jobs = jobs.expect("reads while the leader is frozen");
        assert_eq!(jobs.len(), 21, "{jobs:?}");
        if before.as_deref() == Some(leader_url.as_str()) && before == after {
            proved = true;
            break;
        }
    }
    assert!(
        proved,
        "the follower kept following the frozen leader in no try"
    );
}

#[test]
fn root_ha_leader_killed_keeps_jobs_before_and_after_and_schedules_again() {
    let mut cluster = HaCluster::start(3);
    let leader = cluster.wait_leader(Duration::from_secs(30));
    let follower = a_follower(&cluster, leader);
    cluster.add_agent("n1", follower);
    let client = cluster.servers[follower].client();
    for n in 0..5 {
        submit(
            std::slice::from_ref(&client),
            &service_job(&format!("before{n}")),
            Duration::from_secs(30),
        );
    }
    cluster.wait_for("jobs before running", Duration::from_secs(60), |c| {
        (0..5).all(|n| one_alloc(c, &format!("before{n}"), &["running"]))
    });

    cluster.servers[leader].kill9();
    for n in 0..5 {
        submit(
            &cluster.clients(),
            &service_job(&format!("after{n}")),
            Duration::from_secs(60),
        );
    }
    let new_leader = cluster.wait_leader(Duration::from_secs(30));
    assert_ne!(new_leader, leader, "a killed server cannot lead");
    cluster.wait_for("every job running once", Duration::from_secs(60), |c| {
        (0..5).all(|n| {
            one_alloc(c, &format!("before{n}"), &["running"])
                && one_alloc(c, &format!("after{n}"), &["running"])
        })
    });
    let all = jobs(&cluster).expect("job list");
    assert_eq!(all.len(), 10, "{all:?}");

    // The old leader comes back as a follower and serves the same state.
    cluster.restart_server(leader);
    cluster.wait_for("old leader serving again", Duration::from_secs(30), |c| {
        c.servers[leader]
            .client()
            .list_jobs()
            .is_ok_and(|j| j.len() == 10)
    });
    assert_eq!(cluster.wait_leader(Duration::from_secs(10)), new_leader);
}

#[test]
fn root_ha_one_etcd_member_lost_service_continues() {
    let mut cluster = HaCluster::start(3);
    let leader = cluster.wait_leader(Duration::from_secs(30));
    let follower = a_follower(&cluster, leader);
    cluster.add_agent("n1", follower);
    submit(
        &cluster.clients(),
        &service_job("one"),
        Duration::from_secs(30),
    );
    cluster.wait_for("first job running", Duration::from_secs(60), |c| {
        one_alloc(c, "one", &["running"])
    });
    cluster.etcd.kill(0);
    submit(
        &cluster.clients(),
        &service_job("two"),
        Duration::from_secs(60),
    );
    cluster.wait_for(
        "second job running with an etcd member down",
        Duration::from_secs(60),
        |c| one_alloc(c, "two", &["running"]) && one_alloc(c, "one", &["running"]),
    );
    // The node keeps heartbeating through it all.
    let nodes = cluster.clients()[0].list_nodes().expect("nodes");
    assert!(
        nodes.iter().all(|n| n.status.to_string() == "ready"),
        "{nodes:?}"
    );
    cluster.etcd.restart(0);
}

#[test]
fn root_ha_rolling_restart_during_200_submissions_keeps_each_job_once() {
    const JOBS: usize = 200;
    let mut cluster = HaCluster::start(3);
    let leader = cluster.wait_leader(Duration::from_secs(30));
    let follower = a_follower(&cluster, leader);
    cluster.add_agent("n1", follower);
    let clients = cluster.clients();
    let submitter = std::thread::spawn(move || {
        for n in 0..JOBS {
            submit(
                &clients,
                &batch_job(&format!("job{n:03}")),
                Duration::from_secs(90),
            );
        }
    });
    // Restart every server in turn while the submissions go on (bounded: three restarts).
    for n in 0..cluster.servers.len() {
        std::thread::sleep(Duration::from_millis(1500));
        cluster.restart_server(n);
        cluster.wait_leader(Duration::from_secs(30));
    }
    submitter.join().expect("every job acknowledged");
    let all = jobs(&cluster).expect("job list");
    assert_eq!(all.len(), JOBS, "every acknowledged job is there");
    for (name, version) in &all {
        assert_eq!(*version, 0, "{name} registered once (no second version)");
    }
    cluster.wait_for(
        "every batch job ran exactly once",
        Duration::from_secs(180),
        |c| (0..JOBS).all(|n| one_alloc(c, &format!("job{n:03}"), &["complete"])),
    );
}

#[test]
fn root_ha_tls_agent_and_cli_through_a_follower_keep_their_certificates() {
    let mut cluster = HaCluster::start_tls(2, &["n1"]);
    let leader = cluster.wait_leader(Duration::from_secs(30));
    let follower = a_follower(&cluster, leader);
    // The agent talks only to the follower: registering, heartbeats and the blocking query
    // reach the leader with the agent's certificate as the follower verified it.
    cluster.add_agent("n1", follower);
    let client = cluster.servers[follower].client();
    submit(
        std::slice::from_ref(&client),
        &service_job("tls0"),
        Duration::from_secs(30),
    );
    cluster.wait_for("tls0 running", Duration::from_secs(60), |c| {
        one_alloc(c, "tls0", &["running"])
    });

    let pki = cluster.pki.clone().expect("TLS cluster");
    // Through the follower, the leader's TLS gate sees the original callers.
    let anon = cluster.servers[follower].client_with(Some(taba_client::TlsOptions {
        ca_pem: tls_options(&pki.cli).ca_pem,
        identity_pem: None,
    }));
    let r = anon.raw("GET", "/v1/jobs", None, b"").expect("request");
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        String::from_utf8_lossy(&r.body).contains("client certificate"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let n1 = &pki.agents.iter().find(|(n, _)| n == "n1").expect("n1").1;
    let as_agent = cluster.servers[follower].client_with(Some(tls_options(n1)));
    let r = as_agent.raw("GET", "/v1/jobs", None, b"").expect("request");
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        String::from_utf8_lossy(&r.body).contains("agent routes"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let jobs = client.list_jobs().expect("jobs through the follower");
    assert!(jobs.iter().any(|j| j.name == "tls0"), "{jobs:?}");

    // Only a server may speak for a client: the CLI's certificate claiming to forward for
    // agent n1 is refused by the leader.
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&pki.cli.ca_cert)
        .arg("--cert")
        .arg(&pki.cli.cert)
        .arg("--key")
        .arg(&pki.cli.key)
        .args(["-H", "x-taba-forwarded-peer: none"])
        .arg(format!("{}/v1/jobs", cluster.servers[leader].url))
        .output()
        .expect("curl (scripts/setup.sh)");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403", "{out:?}");
}

/// A follower streams events from its watch-fed copy: the same events, at the same
/// indexes, as the leader's stream; when the leader dies and the follower's copy is
/// replaced (it leads now), its stream ends with a last line saying so.
#[test]
fn root_ha_follower_streams_events_from_its_copy() {
    use taba_client::api::{EventTopic, StreamLine};
    let mut cluster = HaCluster::start(2);
    let leader = cluster.wait_leader(Duration::from_secs(30));
    let follower = a_follower(&cluster, leader);
    let via_follower = cluster.servers[follower].client();
    let via_leader = cluster.servers[leader].client();
    // The follower serves the stream itself (its copy must be loaded: retry until then).
    let topics = [EventTopic::Job, EventTopic::Evaluation];
    let on_follower = common::follow_events(&via_follower, &topics, None, None);
    let on_leader = common::follow_events(&via_leader, &topics, None, None);
    for n in 0..5 {
        submit(
            std::slice::from_ref(&via_leader),
            &batch_job(&format!("ev{n}")),
            Duration::from_secs(30),
        );
    }
    let last = |s: &[taba_client::api::StreamEvent]| {
        s.iter()
            .any(|e| e.kind == "JobRegistered" && e.key == "default/ev4")
    };
    let from_leader = common::events_until(&on_leader, Duration::from_secs(30), last);
    let from_follower = common::events_until(&on_follower, Duration::from_secs(30), last);
    let jobs = |s: &[taba_client::api::StreamEvent]| {
        s.iter()
            .filter(|e| e.topic == EventTopic::Job)
            .map(|e| (e.index, e.key.clone(), e.kind.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(jobs(&from_follower), jobs(&from_leader));
    assert_eq!(jobs(&from_follower).len(), 5);

    cluster.servers[leader].kill9();
    let deadline = Instant::now() + Duration::from_secs(60);
    let end = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match on_follower.recv_timeout(left) {
            Ok(StreamLine::End { end }) => break end,
            Ok(_) => {}
            Err(e) => panic!("the follower's stream did not end: {e}; {}", cluster.logs()),
        }
    };
    assert!(
        matches!(end.code.as_str(), "state_replaced" | "server_stopping"),
        "{end:?}"
    );
}

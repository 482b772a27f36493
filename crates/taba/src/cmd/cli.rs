//! Client commands: `job`, `alloc`, `node`, `image`, `namespace`. Each talks to a server
//! through `taba_client::Client` and prints aligned tables, or JSON with
//! `--json`. Exit codes: 0 ok, 1 failure, 2 usage (clap).

use super::GlobalArgs;
use anyhow::Context;
use serde::Serialize;
use std::collections::BTreeSet;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use taba_client::api::{
    AllocListEntry, JobStatusResponse, LayerStatus, NamespaceStatus, PullEvent,
};
use taba_client::Client;
use taba_types::parse::{parse_job_toml, JobParseError};
use taba_types::{
    ByteSize, ClientStatus, DesiredStatus, DurationSpec, EvalStatus, JobType, Namespace, Quota,
    UnixMillis,
};

/// `taba job ...`
#[derive(clap::Subcommand, Debug)]
pub enum JobCommand {
    /// Submit a job file and follow its deployment.
    Run {
        /// The job file (TOML).
        file: PathBuf,
        /// Return once the job is registered instead of following it.
        #[arg(long)]
        detach: bool,
    },
    /// Say what `job run FILE` would do to the job's versions, without doing it: a changed
    /// spec, or an image tag that now resolves to another digest than the running version's.
    Plan {
        /// The job file (TOML).
        file: PathBuf,
    },
    /// Status of one job, or of every job.
    Status {
        /// Job name.
        job: Option<String>,
        /// The job's namespace.
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
    },
    /// Stop a job.
    Stop {
        /// Job name.
        job: String,
        /// The job's namespace.
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
    },
    /// List jobs.
    List,
    /// Show the job's current version as registered.
    Inspect {
        /// Job name.
        job: String,
    },
    /// List every version of a job.
    History {
        /// Job name.
        job: String,
    },
}

/// `taba alloc ...`
#[derive(clap::Subcommand, Debug)]
pub enum AllocCommand {
    /// Status of an allocation (id or unique prefix).
    Status {
        /// Allocation id or prefix.
        id: String,
    },
    /// Print a task's output.
    Logs {
        /// Allocation id or prefix.
        id: String,
        /// Keep printing new output.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Print stderr instead of stdout.
        #[arg(long)]
        stderr: bool,
        /// Task (needed when the group has several).
        #[arg(long)]
        task: Option<String>,
    },
    /// Run a command in a task: its output streamed as it is written, its
    /// exit code returned (126: not executable, 127: not found).
    Exec {
        /// Allocation id or prefix.
        id: String,
        /// Task (needed when the group has several).
        #[arg(long)]
        task: Option<String>,
        /// Pass stdin to the command.
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Run the command in a pseudo-terminal made in the task (raw mode
        /// on this terminal, window size followed, Ctrl-C goes to the command).
        #[arg(short = 't', long)]
        tty: bool,
        /// Run as this user of the container (`name`, `uid`, `name:group`,
        /// `uid:gid`), resolved in the container's own passwd and group.
        #[arg(short = 'u', long)]
        user: Option<String>,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Stop an allocation (a replacement is placed).
    Stop {
        /// Allocation id or prefix.
        id: String,
    },
    /// Attach to a VM's serial console (it stays in `alloc logs` too);
    /// Ctrl-] leaves.
    Console {
        /// Allocation id or prefix.
        id: String,
        /// Task (needed when the group has several).
        #[arg(long)]
        task: Option<String>,
    },
    /// Move an allocation to another node: VMs live (the guest keeps
    /// running), other drivers by a restart on the target.
    Migrate(super::migrate::MigrateArgs),
}

/// `taba node ...`
#[derive(clap::Subcommand, Debug)]
pub enum NodeCommand {
    /// List nodes.
    List,
    /// Status of a node (id, id prefix or name) and its allocations.
    Status {
        /// Node id, prefix or name.
        node: String,
    },
    /// Allow (--enable) or forbid (--disable) new placements on a node;
    /// what runs there keeps running.
    Eligibility {
        /// Node id, prefix or name.
        node: String,
        /// New allocations may be placed on the node.
        #[arg(long, conflicts_with = "disable", required_unless_present = "disable")]
        enable: bool,
        /// No new allocations are placed on the node.
        #[arg(long)]
        disable: bool,
    },
    /// Remove a node from the cluster now (down nodes are removed on their
    /// own after the server's `node_gc_after`). Refused while the node is
    /// not down and has allocations, unless --force: they are marked lost
    /// and replaced elsewhere. Its credential is forgotten: a live agent
    /// registers again (with TLS its certificate is revoked: it joins again).
    Rm {
        /// Node id, prefix or name.
        node: String,
        /// Remove even a live node with allocations.
        #[arg(long)]
        force: bool,
    },
    /// Move every allocation off a node (it becomes ineligible) and follow
    /// the drain until it is done; `--disable` cancels it.
    Drain(super::drain::DrainArgs),
    /// Join tokens for new agents.
    #[command(subcommand)]
    Token(NodeTokenCommand),
}

/// `taba node token ...`
#[derive(clap::Subcommand, Debug)]
pub enum NodeTokenCommand {
    /// Create a one-time join token (printed once; the server keeps its hash).
    Create {
        /// How long it can be used.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

/// `taba namespace ...`
#[derive(clap::Subcommand, Debug)]
pub enum NamespaceCommand {
    /// Create or update a namespace: it becomes exactly what the flags say
    /// (a quota dimension left out is unlimited).
    Apply {
        /// Namespace name.
        name: String,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        /// CPU quota in MHz.
        #[arg(long)]
        cpu: Option<u64>,
        /// Memory quota (`4GiB`, `512MiB`).
        #[arg(long, value_parser = parse_size)]
        memory: Option<ByteSize>,
        /// Quota on allocations holding resources.
        #[arg(long)]
        allocations: Option<u32>,
    },
    /// List namespaces with their usage and quota.
    List,
    /// Quota and usage of one namespace.
    Status {
        /// Namespace name.
        name: String,
    },
    /// Remove a namespace (refused while it has jobs that are not stopped).
    Rm {
        /// Namespace name.
        name: String,
    },
}

fn parse_size(s: &str) -> Result<ByteSize, String> {
    ByteSize::parse(s)
}

/// `taba image ...`
#[derive(clap::Subcommand, Debug)]
pub enum ImageCommand {
    /// Import a `docker save` or OCI-layout tar.
    Import {
        /// The tar file.
        file: PathBuf,
    },
    /// Pull an image from its registry into the server's image store
    /// (`busybox`, `host:port/repo:tag`, `repo@sha256:<hex>`).
    Pull {
        /// The reference.
        reference: String,
    },
    /// Push an image of the server's store to a registry, with the digests it was
    /// imported or pulled with (blobs the registry has are not sent again).
    Push {
        /// Where to push: `host[:port]/repo[:tag]`.
        reference: String,
        /// The stored image to push (reference or id); default: REFERENCE itself.
        #[arg(long)]
        from: Option<String>,
    },
    /// Write an image of the server's store to a tar file: an OCI image layout
    /// (`oci-archive`) or what `docker save` writes (`docker-archive`).
    Save {
        /// Reference or id.
        reference: String,
        /// The file to write.
        #[arg(short, long)]
        output: PathBuf,
        /// `oci-archive` or `docker-archive`.
        #[arg(long, default_value = "oci-archive")]
        format: String,
        /// Replace OUTPUT if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Give the server credentials for a registry (checked with the registry first).
    Login {
        /// The registry: `host` or `host:port` (`docker.io` for Docker Hub).
        registry: String,
        /// User name.
        #[arg(short, long)]
        username: String,
        /// Password (visible to other local users in the process list; prefer
        /// --password-stdin).
        #[arg(short, long, conflicts_with = "password_stdin")]
        password: Option<String>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Name an image by another reference too.
    Tag {
        /// An existing reference or image id.
        source: String,
        /// The new name (`name[:tag]`).
        target: String,
    },
    /// Remove every image no job version names and no container uses.
    Prune,
    /// Make the server forget its credentials for a registry.
    Logout {
        /// The registry.
        registry: String,
    },
    /// List images.
    List,
    /// Show an image and how it runs (user, workdir, volumes, stop signal,
    /// healthcheck...), as JSON.
    Inspect {
        /// Reference (`busybox:latest`) or id.
        reference: String,
    },
    /// Remove an image.
    Rm {
        /// Reference (`busybox:latest`) or id.
        reference: String,
    },
}

/// The API client of a command, with the token it should send
/// (`--token`, `TABA_TOKEN`, or the token file for `--addr`).
pub(crate) fn client(g: &GlobalArgs) -> anyhow::Result<Client> {
    g.client()
}

pub(crate) fn print_json<T: Serialize>(v: &T) -> anyhow::Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(ExitCode::SUCCESS)
}

/// Print rows as columns aligned under `headers`.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let n = cells.len();
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                s.push_str(&c);
            } else {
                let pad = widths[i] - c.chars().count();
                s.push_str(&c);
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        println!("{}", s.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

use taba_types::now_ms;

fn age(t: UnixMillis) -> String {
    if t == 0 {
        return "-".into();
    }
    let s = now_ms().saturating_sub(t) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

pub(crate) fn short(id: &str) -> String {
    id.chars().take(8).collect()
}

fn alloc_rows(allocs: &[AllocListEntry]) -> Vec<Vec<String>> {
    allocs
        .iter()
        .map(|a| {
            vec![
                short(a.id.as_str()),
                a.node.clone(),
                a.group.clone(),
                a.job_version.to_string(),
                a.desired_status.to_string(),
                a.status.to_string(),
                age(a.modify_time),
            ]
        })
        .collect()
}

const ALLOC_HEADERS: &[&str] = &[
    "ID", "NODE", "GROUP", "VERSION", "DESIRED", "STATUS", "MODIFIED",
];

// ---- job ----

/// Run a job command.
pub fn job(g: &GlobalArgs, c: JobCommand) -> anyhow::Result<ExitCode> {
    let api = client(g)?;
    match c {
        JobCommand::Run { file, detach } => job_run(g, &api, &file, detach),
        JobCommand::Plan { file } => job_plan(g, &api, &file),
        JobCommand::Status { job: None, .. } | JobCommand::List => {
            let jobs = api.list_jobs()?;
            if g.json {
                return print_json(&jobs);
            }
            if jobs.is_empty() {
                println!("No jobs");
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = jobs
                .iter()
                .map(|j| {
                    let allocs = j
                        .allocs
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",");
                    vec![
                        j.name.clone(),
                        j.job_type.to_string(),
                        j.priority.to_string(),
                        j.version.to_string(),
                        j.status.to_string(),
                        if allocs.is_empty() {
                            "-".into()
                        } else {
                            allocs
                        },
                        age(j.submit_time),
                    ]
                })
                .collect();
            table(
                &[
                    "NAME",
                    "TYPE",
                    "PRIORITY",
                    "VERSION",
                    "STATUS",
                    "ALLOCS",
                    "SUBMITTED",
                ],
                &rows,
            );
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Status {
            job: Some(name),
            namespace,
        } => {
            let st = api.job_status_in(&namespace, &name)?;
            if g.json {
                return print_json(&st);
            }
            print_job_status(&st);
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Stop { job, namespace } => {
            let r = api.stop_job_in(&namespace, &job)?;
            if g.json {
                return print_json(&r);
            }
            println!(
                "Job {job:?} stopped (evaluation {})",
                short(r.eval_id.as_str())
            );
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Inspect { job } => print_json(&api.job(&job)?),
        JobCommand::History { job } => {
            let h = api.job_history(&job)?;
            if g.json {
                return print_json(&h);
            }
            let rows: Vec<Vec<String>> = h
                .versions
                .iter()
                .map(|j| {
                    let groups = j
                        .spec
                        .groups
                        .iter()
                        .map(|g| format!("{}x{}", g.name, g.count))
                        .collect::<Vec<_>>()
                        .join(",");
                    vec![
                        j.version.to_string(),
                        age(j.submit_time),
                        if j.stopped { "yes".into() } else { "no".into() },
                        groups,
                    ]
                })
                .collect();
            table(&["VERSION", "SUBMITTED", "STOPPED", "GROUPS"], &rows);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_job_status(st: &JobStatusResponse) {
    println!("Name      = {}", st.name);
    println!("Namespace = {}", st.namespace);
    println!("Type      = {}", st.job_type);
    println!("Version   = {}", st.version);
    println!("Status    = {}", st.status);
    if !st.placement_failures.is_empty() {
        println!();
        println!("Placement failures");
        for (g, why) in &st.placement_failures {
            println!("  group {g:?}: {why}");
        }
    }
    println!();
    println!("Allocations");
    if st.allocations.is_empty() {
        println!("  none");
    } else {
        table(ALLOC_HEADERS, &alloc_rows(&st.allocations));
    }
}

/// Print a local job-file error as `file:line:column: field: message`.
fn local_parse_error(file: &std::path::Path, e: &JobParseError) -> String {
    let f = file.display();
    match e {
        JobParseError::Syntax {
            line,
            column,
            path,
            message,
        } => {
            let pos = match (line, column) {
                (Some(l), Some(c)) => format!("{f}:{l}:{c}"),
                _ => f.to_string(),
            };
            match path {
                Some(p) => format!("{pos}: {p}: {message}"),
                None => format!("{pos}: {message}"),
            }
        }
        JobParseError::Invalid(errs) => errs
            .0
            .iter()
            .map(|fe| format!("{f}: {}: {}", fe.path, fe.reason))
            .collect::<Vec<_>>()
            .join("\n"),
        other => format!("{f}: {other}"),
    }
}

/// `taba job plan`: exit code 0 when `job run` would change nothing and no image tag moved,
/// 1 on errors, 2 when it would make a new version or a tag moved in its registry (as
/// `terraform plan -detailed-exitcode`).
fn job_plan(g: &GlobalArgs, api: &Client, file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    if let Err(e) = parse_job_toml(&bytes) {
        eprintln!("error: {}", local_parse_error(file, &e));
        return Ok(ExitCode::from(1));
    }
    let plan = api.plan_job_toml(&bytes)?;
    if g.json {
        print_json(&plan)?;
    } else {
        let what = if plan.new_version {
            match plan.current_version {
                Some(v) => format!("a new version ({} -> {})", v, v + 1),
                None => "version 1".to_string(),
            }
        } else {
            "no new version".to_string()
        };
        println!("==> Job {:?}: job run would make {what}", plan.job);
        for r in &plan.reasons {
            println!("    {r}");
        }
        for im in &plan.images {
            if let Some(n) = &im.note {
                println!("    {}: {}: {n}", im.field, im.image);
            }
        }
    }
    Ok(if plan.new_version || plan.images.iter().any(|i| i.moved) {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// `job run` off a terminal: one line per allocation placed and per status
/// it reaches.
fn print_alloc_changes(
    current: &[&AllocListEntry],
    seen: &mut BTreeSet<String>,
    reported: &mut BTreeSet<(String, String)>,
) {
    for a in current {
        if seen.insert(a.id.to_string()) {
            println!(
                "    placed {} ({}) on node {}",
                short(a.id.as_str()),
                a.name,
                a.node
            );
        }
        if a.status != ClientStatus::Pending
            && reported.insert((a.id.to_string(), a.status.to_string()))
        {
            println!("    {} {}", short(a.id.as_str()), a.status);
        }
    }
}

fn job_run(
    g: &GlobalArgs,
    api: &Client,
    file: &std::path::Path,
    detach: bool,
) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let spec = match parse_job_toml(&bytes) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {}", local_parse_error(file, &e));
            return Ok(ExitCode::from(1));
        }
    };
    let reg = api.register_job_toml(&bytes)?;
    if g.json && detach {
        return print_json(&reg);
    }
    if !g.json {
        println!(
            "==> Job {:?} version {} {} (evaluation {})",
            reg.job,
            reg.version,
            if reg.changed {
                "registered"
            } else {
                "unchanged"
            },
            short(reg.eval_id.as_str())
        );
    }
    if detach {
        return Ok(ExitCode::SUCCESS);
    }
    let wanted: u32 = spec.groups.iter().map(|g| g.count).sum();
    let batch = spec.job_type == JobType::Batch;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut reported: BTreeSet<(String, String)> = BTreeSet::new();
    // The job's status is read again when the event stream says something
    // about it changed (or keeps the stream alive). Without a stream (a token
    // without read in the namespace): poll, quickly at first (a container on
    // an idle node runs within ~100 ms), then every 200 ms.
    let mut events = super::events::JobEvents::follow(api, &reg.namespace, &reg.job, reg.index);
    let mut pause = Duration::from_millis(10);
    let groups: Vec<(String, u32)> = spec
        .groups
        .iter()
        .map(|g| (g.name.clone(), g.count))
        .collect();
    let bars = super::progress::GroupBars::new(&groups, batch, g.json);
    loop {
        let eval = api.eval(reg.eval_id.as_str())?;
        let st = api.job_status_in(&reg.namespace, &reg.job)?;
        let current: Vec<&AllocListEntry> = st
            .allocations
            .iter()
            .filter(|a| a.job_version == reg.version && a.desired_status == DesiredStatus::Run)
            .collect();
        match &bars {
            Some(bars) => bars.update(&st.allocations, reg.version),
            None if !g.json => print_alloc_changes(&current, &mut seen, &mut reported),
            None => {}
        }
        let fail = |msg: String| -> anyhow::Result<ExitCode> {
            if let Some(bars) = &bars {
                bars.finish();
            }
            if g.json {
                print_json(&st)?;
            }
            eprintln!("error: {msg}");
            Ok(ExitCode::from(1))
        };
        if let Some(a) = current
            .iter()
            .find(|a| matches!(a.status, ClientStatus::Failed | ClientStatus::Lost))
        {
            let why = a
                .task_states
                .iter()
                .filter_map(|(t, s)| {
                    s.events
                        .last()
                        .map(|e| format!("task {t}: {} {}", e.kind, e.message))
                })
                .collect::<Vec<_>>()
                .join("; ");
            return fail(format!(
                "allocation {} {}{}{}",
                short(a.id.as_str()),
                a.status,
                if a.description.is_empty() {
                    String::new()
                } else {
                    format!(": {}", a.description)
                },
                if why.is_empty() {
                    String::new()
                } else {
                    format!(" ({why})")
                }
            ));
        }
        let evaluated = !matches!(eval.status, EvalStatus::Pending);
        if evaluated && !st.placement_failures.is_empty() {
            let reasons = st
                .placement_failures
                .iter()
                .map(|(g, why)| format!("group {g:?}: {why}"))
                .collect::<Vec<_>>()
                .join("; ");
            return fail(format!("job stays pending: {reasons}"));
        }
        if eval.status == EvalStatus::Failed {
            return fail(format!("evaluation failed: {}", eval.status_description));
        }
        let target = if spec.job_type == JobType::System {
            current.len() as u32
        } else {
            wanted
        };
        let done = current
            .iter()
            .filter(|a| {
                if batch {
                    a.status == ClientStatus::Complete
                } else {
                    a.status == ClientStatus::Running
                }
            })
            .count() as u32;
        let old_live = st
            .allocations
            .iter()
            .filter(|a| {
                a.job_version != reg.version
                    && a.desired_status == DesiredStatus::Run
                    && !a.status.is_terminal()
            })
            .count();
        if evaluated
            && done >= target
            && current.len() as u32 >= target
            && old_live == 0
            && target > 0
        {
            if g.json {
                return print_json(&st);
            }
            if let Some(bars) = &bars {
                bars.finish();
            }
            println!(
                "==> Deployment of {:?} version {} complete: {done} allocation(s) {}",
                reg.job,
                reg.version,
                if batch { "complete" } else { "running" }
            );
            return Ok(ExitCode::SUCCESS);
        }
        if evaluated && target == 0 {
            if g.json {
                return print_json(&st);
            }
            println!("==> Nothing to place");
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() > deadline {
            return fail("deployment did not finish within 10 minutes".into());
        }
        if !events.as_mut().is_some_and(|e| e.wait()) {
            events = None;
            std::thread::sleep(pause);
            pause = (pause * 3 / 2).min(Duration::from_millis(200));
        }
    }
}

// ---- alloc ----

/// Run an alloc command.
pub fn alloc(g: &GlobalArgs, c: AllocCommand) -> anyhow::Result<ExitCode> {
    let api = client(g)?;
    match c {
        AllocCommand::Status { id } => {
            let d = api.alloc(&id)?;
            if g.json {
                return print_json(&d);
            }
            let a = &d.allocation;
            println!("ID          = {}", a.id);
            println!("Name        = {}", a.name);
            println!("Job         = {} (version {})", a.job, a.job_version);
            println!(
                "Node        = {} ({})",
                a.node_name,
                short(a.node_id.as_str())
            );
            println!(
                "Desired     = {}{}",
                a.desired_status,
                suffix(&a.desired_description)
            );
            println!(
                "Status      = {}{}",
                a.client_status,
                suffix(&a.client_description)
            );
            if let Some(m) = &a.migrate {
                let to =
                    m.to.as_ref()
                        .map(|n| format!(" to node {}", short(n.as_str())))
                        .unwrap_or_default();
                println!("Moving      = requested{to}: {}", m.reason);
            }
            if let Some(by) = &a.preempted_by {
                println!("Evicted by  = allocation {}", short(by.as_str()));
            }
            if !a.preempted_allocs.is_empty() {
                let ids: Vec<String> = a
                    .preempted_allocs
                    .iter()
                    .map(|i| short(i.as_str()))
                    .collect();
                println!("Preempted   = {}", ids.join(", "));
            }
            if !a.ports.is_empty() {
                let ports: Vec<String> = a
                    .ports
                    .iter()
                    .map(|p| {
                        let kind = if p.dynamic { "dynamic" } else { "static" };
                        format!("{}={} ({kind})", p.label, p.value)
                    })
                    .collect();
                println!("Ports       = {}", ports.join(", "));
            }
            println!("Created     = {}", age(a.create_time));
            println!("Modified    = {}", age(a.modify_time));
            if let Some(u) = &a.usage {
                println!("CPU         = {} MHz", u.cpu_mhz);
                println!("Memory      = {} (peak {})", u.memory, u.memory_max);
            }
            println!();
            let rows: Vec<Vec<String>> = a
                .task_states
                .iter()
                .map(|(t, s)| {
                    vec![
                        t.clone(),
                        s.state.to_string(),
                        if s.failed { "yes".into() } else { "no".into() },
                        s.restarts.to_string(),
                        s.exit_code
                            .map(|c| c.to_string())
                            .unwrap_or_else(|| "-".into()),
                        if s.oom_killed {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                        s.events
                            .last()
                            .map(|e| format!("{} {}", e.kind, e.message).trim().to_string())
                            .unwrap_or_default(),
                    ]
                })
                .collect();
            table(
                &[
                    "TASK",
                    "STATE",
                    "FAILED",
                    "RESTARTS",
                    "EXIT",
                    "OOM",
                    "LAST EVENT",
                ],
                &rows,
            );
            if !a.events.is_empty() {
                println!();
                // What the cluster did (BY -) and what was done through the API.
                println!("Events");
                let rows: Vec<Vec<String>> = a
                    .events
                    .iter()
                    .map(|e| {
                        let by = match e.actor.is_empty() {
                            true => "-".to_string(),
                            false => e.actor.clone(),
                        };
                        vec![age(e.time), e.kind.clone(), by, e.message.clone()]
                    })
                    .collect();
                table(&["WHEN", "KIND", "BY", "WHAT"], &rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        AllocCommand::Logs {
            id,
            follow,
            stderr,
            task,
        } => {
            let mut stream = api.alloc_logs(&id, task.as_deref(), stderr, follow, 0)?;
            let mut out = std::io::stdout().lock();
            let mut buf = [0u8; 16 << 10];
            loop {
                let n = stream.read(&mut buf).context("log stream broke")?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n])?;
                out.flush()?;
            }
            Ok(ExitCode::SUCCESS)
        }
        AllocCommand::Exec {
            id,
            task,
            interactive,
            tty,
            user,
            command,
        } => super::session::exec(
            &api,
            super::session::ExecArgs {
                id,
                task,
                interactive,
                tty,
                user,
                command,
            },
        ),
        AllocCommand::Console { id, task } => super::session::console(&api, &id, task.as_deref()),
        AllocCommand::Stop { id } => {
            let r = api.stop_alloc(&id)?;
            if g.json {
                return print_json(&r);
            }
            println!(
                "Allocation {id} stopped (evaluation {})",
                short(r.eval_id.as_str())
            );
            Ok(ExitCode::SUCCESS)
        }
        AllocCommand::Migrate(args) => super::migrate::run(g, &api, args),
    }
}

fn suffix(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(" ({s})")
    }
}

// ---- node ----

/// Run a node command.
pub fn node(g: &GlobalArgs, c: NodeCommand) -> anyhow::Result<ExitCode> {
    let api = client(g)?;
    match c {
        NodeCommand::Token(NodeTokenCommand::Create { ttl }) => {
            let t = api.create_join_token(&ttl)?;
            if g.json {
                return print_json(&t);
            }
            println!("{}", t.token);
            Ok(ExitCode::SUCCESS)
        }
        NodeCommand::List => {
            let nodes = api.list_nodes()?;
            if g.json {
                return print_json(&nodes);
            }
            if nodes.is_empty() {
                println!("No nodes");
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = nodes
                .iter()
                .map(|n| {
                    vec![
                        short(n.id.as_str()),
                        n.name.clone(),
                        n.datacenter.clone(),
                        if n.display_status.is_empty() {
                            n.status.to_string()
                        } else {
                            n.display_status.clone()
                        },
                        if n.eligible {
                            "eligible".into()
                        } else {
                            "ineligible".into()
                        },
                        n.drivers.join(","),
                        n.allocs.to_string(),
                    ]
                })
                .collect();
            table(
                &[
                    "ID",
                    "NAME",
                    "DC",
                    "STATUS",
                    "ELIGIBILITY",
                    "DRIVERS",
                    "ALLOCS",
                ],
                &rows,
            );
            Ok(ExitCode::SUCCESS)
        }
        NodeCommand::Drain(args) => super::drain::run(g, &api, args),
        NodeCommand::Status { node } => {
            let d = api.node(&node)?;
            if g.json {
                return print_json(&d);
            }
            let n = &d.node;
            println!("ID         = {}", n.id);
            println!("Name       = {}", n.name);
            println!("Datacenter = {}", n.datacenter);
            println!("Status     = {}", n.display_status());
            if !n.unusable_reason.is_empty() {
                println!("Unusable   = {}", n.unusable_reason);
            }
            println!(
                "Eligible   = {}",
                n.eligibility == taba_types::Eligibility::Eligible
            );
            println!(
                "Address    = {}",
                if n.http_addr.is_empty() {
                    "-"
                } else {
                    &n.http_addr
                }
            );
            println!("Heartbeat  = {}", age(n.last_heartbeat));
            println!(
                "Resources  = {} cores, {} MHz, {} memory, {} disk",
                n.resources.cores, n.resources.cpu, n.resources.memory, n.resources.disk
            );
            println!(
                "Reserved   = {} MHz, {} memory, {} disk, ports {}",
                n.reserved.cpu,
                n.reserved.memory,
                n.reserved.disk,
                if n.reserved_ports.is_empty() {
                    "none".to_string()
                } else {
                    n.reserved_ports.to_string()
                }
            );
            println!("Dynamic    = ports {}", n.dynamic_ports);
            if n.usage.at > 0 {
                println!(
                    "In use     = {} MHz of {}, {} of {} memory (measured {})",
                    n.usage.cpu_mhz,
                    n.resources.cpu,
                    n.usage.memory,
                    n.resources.memory,
                    age(n.usage.at)
                );
            } else {
                println!("In use     = not measured yet");
            }
            let drivers: Vec<String> = n
                .drivers
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{k}={}",
                        if v.detected && v.healthy {
                            "healthy"
                        } else {
                            "unavailable"
                        }
                    )
                })
                .collect();
            println!("Drivers    = {}", drivers.join(", "));
            println!(
                "Eligible   = {}",
                n.eligibility == taba_types::Eligibility::Eligible
            );
            match (&d.drain, &n.drain) {
                (Some(st), Some(s)) => println!(
                    "Drain      = started {}, deadline in {}{}: {}",
                    age(s.started_at),
                    DurationSpec(s.deadline.saturating_sub(now_ms()) / 1000 * 1000),
                    if s.ignore_system {
                        ", system jobs stay"
                    } else {
                        ""
                    },
                    super::drain::group_summary(st)
                ),
                _ => match n.drained_at {
                    Some(t) => println!("Drain      = none; last drain completed {}", age(t)),
                    None => println!("Drain      = none"),
                },
            }
            println!();
            println!("Allocations");
            if d.allocations.is_empty() {
                println!("  none");
            } else {
                let rows: Vec<Vec<String>> = d
                    .allocations
                    .iter()
                    .map(|a| {
                        vec![
                            short(a.id.as_str()),
                            a.job.clone(),
                            a.group.clone(),
                            a.desired_status.to_string(),
                            a.status.to_string(),
                            age(a.modify_time),
                        ]
                    })
                    .collect();
                table(
                    &["ID", "JOB", "GROUP", "DESIRED", "STATUS", "MODIFIED"],
                    &rows,
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        NodeCommand::Eligibility {
            node,
            enable,
            disable: _,
        } => {
            let d = api.node_eligibility(&node, enable)?;
            if g.json {
                return print_json(&d);
            }
            println!(
                "Node {} is {} for new allocations ({})",
                d.name,
                if enable { "eligible" } else { "ineligible" },
                d.display_status
            );
            Ok(ExitCode::SUCCESS)
        }
        NodeCommand::Rm { node, force } => {
            let r = api.remove_node(&node, force)?;
            if g.json {
                return print_json(&r);
            }
            if r.lost > 0 {
                println!(
                    "Node {} removed; {} allocations marked lost and replaced",
                    r.name, r.lost
                );
            } else {
                println!("Node {} removed", r.name);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

// ---- image ----

/// Run an image command.
pub fn image(g: &GlobalArgs, c: ImageCommand) -> anyhow::Result<ExitCode> {
    let api = client(g)?;
    match c {
        ImageCommand::Import { file } => {
            let r = import_with_bar(g, &api, &file)?;
            if g.json {
                return print_json(&r);
            }
            for i in &r.images {
                println!("Imported {} as {}", short_image(&i.id), i.refs.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Pull { reference } => image_pull(g, &api, &reference),
        ImageCommand::Push { reference, from } => image_push(g, &api, &reference, from.as_deref()),
        ImageCommand::Save {
            reference,
            output,
            format,
            force,
        } => image_save(g, &api, &reference, &output, &format, force),
        ImageCommand::Login {
            registry,
            username,
            password,
            password_stdin,
        } => {
            let password = match (password, password_stdin) {
                (Some(p), _) => p,
                (None, true) => {
                    let mut p = String::new();
                    std::io::stdin().read_to_string(&mut p)?;
                    p.trim_end_matches(['\n', '\r']).to_string()
                }
                (None, false) => anyhow::bail!("give the password with --password-stdin (or -p)"),
            };
            let r = api.registry_login(&taba_client::api::RegistryLoginRequest {
                registry,
                username,
                password,
            })?;
            if g.json {
                return print_json(&r);
            }
            println!("Logged in to {}", r.registry);
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Tag { source, target } => {
            let i = api.tag_image(&source, &target)?;
            if g.json {
                return print_json(&i);
            }
            println!("Tagged {} as {target}", short_image(&i.id));
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Prune => {
            let r = api.prune_images()?;
            if g.json {
                return print_json(&r);
            }
            for i in &r.removed {
                println!("Removed {} ({})", short_image(&i.id), i.refs.join(", "));
            }
            let bytes: u64 = r.removed.iter().map(|i| i.size).sum();
            println!(
                "{} images removed ({})",
                r.removed.len(),
                taba_types::ByteSize(bytes)
            );
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Logout { registry } => {
            let r = api.registry_logout(&registry)?;
            if g.json {
                return print_json(&r);
            }
            println!("{}: {}", r.registry, r.status);
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::List => {
            let list = api.list_images()?;
            if g.json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|i| {
                    vec![
                        short_image(&i.id),
                        if i.refs.is_empty() {
                            "<none>".into()
                        } else {
                            i.refs.join(",")
                        },
                        taba_types::ByteSize(i.size).to_string(),
                        i.layers.to_string(),
                    ]
                })
                .collect();
            table(&["ID", "REFERENCES", "SIZE", "LAYERS"], &rows);
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Inspect { reference } => print_json(&api.inspect_image(&reference)?),
        ImageCommand::Rm { reference } => {
            let i = api.remove_image(&reference)?;
            if g.json {
                return print_json(&i);
            }
            println!("Removed {} ({})", reference, short_image(&i.id));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `taba image pull`: one line per layer as the server reports it.
fn image_pull(g: &GlobalArgs, api: &Client, reference: &str) -> anyhow::Result<ExitCode> {
    let mut view = (!g.json).then(|| ProgressView::new("Pulling"));
    let last = api.pull_image(reference, |e| {
        if let Some(v) = view.as_mut() {
            v.show(e);
        }
    })?;
    if g.json {
        print_json(&last)?;
    }
    match last {
        PullEvent::Done { image, bytes } => {
            if !g.json {
                println!(
                    "Pulled {} as {} ({} downloaded)",
                    image.refs.join(", "),
                    short_image(&image.id),
                    taba_types::ByteSize(bytes)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        PullEvent::Error { message } => anyhow::bail!("pull of {reference} failed: {message}"),
        other => anyhow::bail!("unexpected end of the pull: {other:?}"),
    }
}

/// `image import`: a bar of the upload on a terminal, then a spinner while
/// the server verifies and unpacks.
fn import_with_bar(
    g: &GlobalArgs,
    api: &Client,
    file: &std::path::Path,
) -> anyhow::Result<taba_client::api::ImportResponse> {
    if g.json || !std::io::stdout().is_terminal() {
        return Ok(api.import_images(file)?);
    }
    let size = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    let bar = indicatif::ProgressBar::new(size);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "  {msg:<10} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message("uploading");
    let shown = bar.clone();
    let r = api.import_images_reporting(file, move |sent| {
        shown.set_position(sent);
        if sent >= size {
            shown.set_message("unpacking");
        }
    });
    bar.finish_and_clear();
    Ok(r?)
}

/// How a pull or push shows its progress: a bar per layer on a terminal (`indicatif`),
/// one line per layer event otherwise.
struct ProgressView {
    verb: &'static str,
    bars: Option<(
        indicatif::MultiProgress,
        std::collections::HashMap<String, indicatif::ProgressBar>,
    )>,
}

impl ProgressView {
    fn new(verb: &'static str) -> ProgressView {
        let bars = std::io::stdout().is_terminal().then(|| {
            (
                indicatif::MultiProgress::new(),
                std::collections::HashMap::new(),
            )
        });
        ProgressView { verb, bars }
    }

    fn status_text(status: LayerStatus) -> &'static str {
        match status {
            LayerStatus::Present => "already present",
            LayerStatus::Downloading => "downloading",
            LayerStatus::Downloaded => "downloaded, verified",
            LayerStatus::Exists => "already in the registry",
            LayerStatus::Mounted => "mounted from another repository",
            LayerStatus::Uploading => "uploading",
            LayerStatus::Uploaded => "uploaded",
        }
    }

    fn bar(&mut self, digest: &str, size: u64) -> Option<indicatif::ProgressBar> {
        let (multi, bars) = self.bars.as_mut()?;
        Some(
            bars.entry(digest.to_string())
                .or_insert_with(|| {
                    let b = multi.add(indicatif::ProgressBar::new(size));
                    b.set_style(
                        indicatif::ProgressStyle::with_template(
                            "  {prefix} [{bar:30}] {bytes:>10}/{total_bytes:<10} {msg}",
                        )
                        .expect("a valid template")
                        .progress_chars("=> "),
                    );
                    b.set_prefix(short_image(digest));
                    b
                })
                .clone(),
        )
    }

    fn show(&mut self, e: &PullEvent) {
        match e {
            PullEvent::Resolved {
                reference,
                digest,
                platform,
                layers,
                needed,
                ..
            } => {
                let platform = platform
                    .as_deref()
                    .map(|p| format!(", {p}"))
                    .unwrap_or_default();
                let verb = self.verb;
                let line = if verb == "Pulling" {
                    format!("{verb} {reference} ({digest}{platform}): {layers} layers, {needed} blobs to download")
                } else {
                    format!("{verb} {reference} ({digest}): {layers} layers")
                };
                match &self.bars {
                    Some((multi, _)) => {
                        let _ = multi.println(line);
                    }
                    None => println!("{line}"),
                }
            }
            PullEvent::Layer {
                digest,
                size,
                status,
            } => {
                let what = Self::status_text(*status);
                match self.bar(digest, *size) {
                    Some(b) => match status {
                        LayerStatus::Downloading | LayerStatus::Uploading => b.set_message(what),
                        _ => {
                            b.set_position(*size);
                            b.finish_with_message(what);
                        }
                    },
                    None => println!(
                        "  {} {:>10} {what}",
                        short_image(digest),
                        taba_types::ByteSize(*size).to_string()
                    ),
                }
            }
            PullEvent::Progress { digest, done } => {
                if let Some(b) = self.bars.as_ref().and_then(|(_, bars)| bars.get(digest)) {
                    b.set_position(*done);
                }
            }
            PullEvent::Done { .. } | PullEvent::Pushed { .. } | PullEvent::Error { .. } => {
                if let Some((_, bars)) = &self.bars {
                    for b in bars.values() {
                        if !b.is_finished() {
                            b.abandon();
                        }
                    }
                }
            }
        }
    }
}

/// `taba image push`: one line per blob as the server reports it.
fn image_push(
    g: &GlobalArgs,
    api: &Client,
    reference: &str,
    from: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let mut view = (!g.json).then(|| ProgressView::new("Pushing"));
    let last = api.push_image(reference, from, |e| {
        if let Some(v) = view.as_mut() {
            v.show(e);
        }
    })?;
    if g.json {
        print_json(&last)?;
    }
    match last {
        PullEvent::Pushed {
            reference,
            digest,
            uploaded,
            skipped,
            bytes,
        } => {
            if !g.json {
                println!(
                    "Pushed {reference}@{digest} ({uploaded} blobs uploaded, {}; {skipped} already there)",
                    taba_types::ByteSize(bytes)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        PullEvent::Error { message } => anyhow::bail!("push to {reference} failed: {message}"),
        other => anyhow::bail!("unexpected end of the push: {other:?}"),
    }
}

/// `taba image save`: the tar goes to a temporary file next to OUTPUT, renamed when
/// complete; an existing OUTPUT is kept unless `--force`.
fn image_save(
    g: &GlobalArgs,
    api: &Client,
    reference: &str,
    output: &std::path::Path,
    format: &str,
    force: bool,
) -> anyhow::Result<ExitCode> {
    if let Err(e) = format.parse::<taba_image::SaveFormat>() {
        anyhow::bail!("--format: {e}");
    }
    if output.exists() && !force {
        anyhow::bail!("{} exists; give --force to replace it", output.display());
    }
    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".taba-save-")
        .tempfile_in(&dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let n = {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        let n = api.save_image(reference, format, &mut w)?;
        std::io::Write::flush(&mut w).context("write the archive")?;
        n
    };
    tmp.as_file().sync_all().context("sync the archive")?;
    let persist = if force {
        tmp.persist(output).map(|_| ())
    } else {
        tmp.persist_noclobber(output).map(|_| ())
    };
    persist.map_err(|e| anyhow::anyhow!("cannot write {}: {}", output.display(), e.error))?;
    if g.json {
        return print_json(&serde_json::json!({"file": output, "bytes": n, "format": format}));
    }
    println!(
        "Saved {reference} to {} ({format}, {})",
        output.display(),
        taba_types::ByteSize(n)
    );
    Ok(ExitCode::SUCCESS)
}

fn short_image(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

// ---- namespace ----

/// `used/limit`, `-` for no limit.
fn of(used: String, limit: Option<String>) -> String {
    format!("{used}/{}", limit.unwrap_or_else(|| "-".into()))
}

fn ns_cells(n: &NamespaceStatus) -> [String; 3] {
    let q = n.quota.clone().unwrap_or_default();
    [
        of(n.usage.cpu.to_string(), q.cpu.map(|c| c.to_string())),
        of(n.usage.memory.to_string(), q.memory.map(|m| m.to_string())),
        of(
            n.usage.allocations.to_string(),
            q.allocations.map(|a| a.to_string()),
        ),
    ]
}

/// Run a namespace command.
pub fn namespace(g: &GlobalArgs, c: NamespaceCommand) -> anyhow::Result<ExitCode> {
    let api = client(g)?;
    match c {
        NamespaceCommand::Apply {
            name,
            description,
            cpu,
            memory,
            allocations,
        } => {
            let quota = Quota {
                cpu,
                memory,
                allocations,
            };
            let ns = Namespace {
                name,
                description,
                quota: (!quota.is_unlimited()).then_some(quota),
            };
            let st = api.apply_namespace(&ns)?;
            if g.json {
                return print_json(&st);
            }
            println!(
                "Namespace {:?} applied: quota {}",
                st.name,
                st.quota.unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        NamespaceCommand::List => {
            let list = api.list_namespaces()?;
            if g.json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|n| {
                    let [cpu, mem, allocs] = ns_cells(n);
                    vec![
                        n.name.clone(),
                        n.jobs.to_string(),
                        cpu,
                        mem,
                        allocs,
                        format!("{:.2}", n.dominant_share),
                        n.description.lines().next().unwrap_or("").to_string(),
                    ]
                })
                .collect();
            table(
                &[
                    "NAME",
                    "JOBS",
                    "CPU MHZ",
                    "MEMORY",
                    "ALLOCS",
                    "SHARE",
                    "DESCRIPTION",
                ],
                &rows,
            );
            Ok(ExitCode::SUCCESS)
        }
        NamespaceCommand::Status { name } => {
            let n = api.namespace(&name)?;
            if g.json {
                return print_json(&n);
            }
            let [cpu, mem, allocs] = ns_cells(&n);
            println!("Name        = {}", n.name);
            if !n.description.is_empty() {
                println!("Description = {}", n.description);
            }
            println!("Jobs        = {}", n.jobs);
            println!("Quota       = {}", n.quota.clone().unwrap_or_default());
            println!();
            table(
                &["RESOURCE", "USED/QUOTA"],
                &[
                    vec!["cpu (MHz)".into(), cpu],
                    vec!["memory".into(), mem],
                    vec!["allocations".into(), allocs],
                    vec!["dominant share".into(), format!("{:.3}", n.dominant_share)],
                ],
            );
            Ok(ExitCode::SUCCESS)
        }
        NamespaceCommand::Rm { name } => {
            let r = api.delete_namespace(&name)?;
            if g.json {
                return print_json(&r);
            }
            println!("Namespace {name:?} removed");
            Ok(ExitCode::SUCCESS)
        }
    }
}

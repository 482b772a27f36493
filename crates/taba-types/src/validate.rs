//! Validation of job specs. Every error names the field path
//! (`group[0].task[1].resources.memory`) and the reason; all errors are
//! collected, not just the first.

use crate::job::{
    Constraint, ConstraintOperator, JobSpec, JobType, NetworkMode, TaskGroupSpec, TaskSpec,
};
use crate::placement::{Affinity, Spread};
use crate::units::ByteSize;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// One invalid field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct FieldError {
    /// Path from the job's root, e.g. `group[0].task[1].resources.memory`.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// All the invalid fields of one spec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

impl ValidationErrors {
    pub(crate) fn push(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            reason: reason.into(),
        });
    }
}

/// Drivers taba knows. Whether a node has one is a scheduling question.
pub const KNOWN_DRIVERS: &[&str] = &["exec", "container", "system", "vm"];

/// Largest `count` of one group.
pub const MAX_COUNT: u32 = 100_000;
/// Largest CPU ask of one task, MHz.
pub const MAX_CPU_MHZ: u64 = 4_000_000;
/// Largest memory ask of one task.
pub const MAX_MEMORY: ByteSize = ByteSize(64 << 40);
/// Smallest memory limit of one task.
pub const MIN_MEMORY: ByteSize = ByteSize(4 << 20);
/// Largest disk ask of one task.
pub const MAX_DISK: ByteSize = ByteSize(1 << 50);
/// Longest name (jobs, groups, tasks).
pub const MAX_NAME: usize = 128;

pub(crate) fn check_name(errs: &mut ValidationErrors, path: &str, name: &str) {
    if name.is_empty() {
        errs.push(path, "must not be empty");
    } else if name.len() > MAX_NAME {
        errs.push(path, format!("longer than {MAX_NAME} characters"));
    } else if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        errs.push(
            path,
            format!("invalid character {c:?}; use letters, digits, '-', '_' and '.'"),
        );
    } else if name.starts_with('.') {
        errs.push(path, "must not start with '.'");
    }
}

fn check_constraints(errs: &mut ValidationErrors, base: &str, cs: &[Constraint]) {
    for (i, c) in cs.iter().enumerate() {
        let p = format!("{base}constraint[{i}]");
        let needs_attr = !matches!(c.operator, ConstraintOperator::DistinctHosts);
        if needs_attr && c.attribute.trim().is_empty() {
            errs.push(format!("{p}.attribute"), "must not be empty");
        }
        if !c.attribute.is_empty() {
            if let Err(e) = check_interpolation(&c.attribute) {
                errs.push(format!("{p}.attribute"), e);
            }
        }
        if let Err(e) = check_interpolation(&c.value) {
            errs.push(format!("{p}.value"), e);
        }
        match c.operator {
            ConstraintOperator::Regexp if c.value.is_empty() => {
                errs.push(format!("{p}.value"), "a regular expression is required")
            }
            ConstraintOperator::Version | ConstraintOperator::SetContains
                if c.value.trim().is_empty() =>
            {
                errs.push(format!("{p}.value"), "must not be empty for this operator")
            }
            ConstraintOperator::DistinctProperty
                if !c.value.is_empty() && c.value.parse::<u32>().map_or(true, |n| n == 0) =>
            {
                errs.push(
                    format!("{p}.value"),
                    "must be a positive integer (the limit per value)",
                )
            }
            _ => {}
        }
    }
}

/// `${...}` references must be closed and name a known root.
fn check_interpolation(s: &str) -> Result<(), String> {
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated interpolation in {s:?}"))?;
        let key = &after[..end];
        let known = matches!(
            key,
            "node.name" | "node.id" | "node.datacenter" | "node.class"
        ) || key.starts_with("attr.")
            || key.starts_with("meta.");
        if !known || key.ends_with('.') {
            return Err(format!(
                "unknown interpolation ${{{key}}}; use ${{node.name}}, ${{node.id}}, ${{node.datacenter}}, ${{attr.NAME}} or ${{meta.NAME}}"
            ));
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

fn check_task(errs: &mut ValidationErrors, p: &str, t: &TaskSpec) {
    check_name(errs, &format!("{p}.name"), &t.name);
    if !KNOWN_DRIVERS.contains(&t.driver.as_str()) {
        errs.push(
            format!("{p}.driver"),
            format!(
                "unknown driver {:?}; known drivers: {}",
                t.driver,
                KNOWN_DRIVERS.join(", ")
            ),
        );
    }
    match t.driver.as_str() {
        "exec" => {
            if t.command.is_empty() {
                errs.push(format!("{p}.command"), "the exec driver needs a command");
            }
            if t.image.is_some() {
                errs.push(format!("{p}.image"), "the exec driver takes no image");
            }
        }
        "container" | "system" => match &t.image {
            None => errs.push(format!("{p}.image"), "the container driver needs an image"),
            Some(i) if i.trim().is_empty() => errs.push(format!("{p}.image"), "must not be empty"),
            Some(i) if i.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                errs.push(format!("{p}.image"), "must not contain whitespace")
            }
            _ => {}
        },
        _ => {}
    }
    if t.entrypoint.as_ref().is_some_and(|e| e.is_empty()) && t.command.is_empty() {
        // As Docker's `--entrypoint ""`: the image's cmd is cleared too.
        errs.push(
            format!("{p}.command"),
            "entrypoint = [] clears the image's entrypoint and cmd: name a command",
        );
    }
    for (i, arg) in t.entrypoint.iter().flatten().enumerate() {
        if arg.contains('\0') {
            errs.push(format!("{p}.entrypoint[{i}]"), "must not contain NUL");
        }
    }
    if let Some(h) = &t.hostname {
        if t.driver != "container" && t.driver != "system" {
            errs.push(
                format!("{p}.hostname"),
                format!(
                    "a hostname applies to container drivers, not {:?}",
                    t.driver
                ),
            );
        } else if let Err(why) = check_hostname(h) {
            errs.push(format!("{p}.hostname"), why);
        }
    }
    for (i, arg) in t.command.iter().enumerate() {
        if arg.contains('\0') {
            errs.push(format!("{p}.command[{i}]"), "must not contain NUL");
        }
    }
    if t.command.first().is_some_and(|c| c.is_empty()) {
        errs.push(format!("{p}.command[0]"), "must not be empty");
    }
    for (k, v) in &t.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            errs.push(format!("{p}.env"), format!("invalid variable name {k:?}"));
        }
        if v.contains('\0') {
            errs.push(format!("{p}.env.{k}"), "must not contain NUL");
        }
    }
    crate::security::check_task_security(errs, p, &t.cap_add, &t.cap_drop, &t.ulimits);
    if t.driver == "exec" && !(t.cap_add.is_empty() && t.cap_drop.is_empty()) {
        errs.push(
            format!("{p}.cap_add"),
            "capabilities apply to container drivers; an exec task runs as its user",
        );
    }
    if t.user_namespace.is_some() && t.driver != "container" {
        errs.push(
            format!("{p}.user_namespace"),
            format!(
                "user namespaces apply to the container driver, not {:?}",
                t.driver
            ),
        );
    }
    if let Some(u) = &t.user {
        if u.is_empty() || u.contains('\0') || u.len() > 64 {
            errs.push(format!("{p}.user"), "must be a user name, uid or uid:gid");
        }
    }
    if let Some(w) = &t.workdir {
        if !w.starts_with('/') {
            errs.push(format!("{p}.workdir"), "must be an absolute path");
        }
    }
    let r = &t.resources;
    let rp = format!("{p}.resources");
    if r.cpu == 0 {
        errs.push(format!("{rp}.cpu"), "must be at least 1 MHz");
    } else if r.cpu > MAX_CPU_MHZ {
        errs.push(
            format!("{rp}.cpu"),
            format!("{} MHz is more than any node has", r.cpu),
        );
    }
    if r.memory < MIN_MEMORY {
        errs.push(
            format!("{rp}.memory"),
            format!("{} is below the minimum of {MIN_MEMORY}", r.memory),
        );
    } else if r.memory > MAX_MEMORY {
        errs.push(
            format!("{rp}.memory"),
            format!("{} is more than any node has", r.memory),
        );
    }
    if r.disk > MAX_DISK {
        errs.push(
            format!("{rp}.disk"),
            format!("{} is more than any node has", r.disk),
        );
    }
    if r.pids == 0 {
        errs.push(format!("{rp}.pids"), "must be at least 1");
    } else if r.pids > 4_194_304 {
        errs.push(
            format!("{rp}.pids"),
            "must be at most 4194304 (the kernel's pid_max)",
        );
    }
    if let Some(sig) = &t.kill_signal {
        if crate_signal_number(sig).is_none() {
            errs.push(
                format!("{p}.kill_signal"),
                format!("unknown signal {sig:?}"),
            );
        }
    }
    if t.kill_timeout.0 > 3_600_000 {
        errs.push(format!("{p}.kill_timeout"), "must be at most 1h");
    }
    check_constraints(errs, &format!("{p}."), &t.constraints);
    check_affinities(errs, &format!("{p}."), &t.affinity);
    crate::vm::check_vm_task(errs, p, t);
}

/// Longest hostname the kernel takes (`sethostname`, HOST_NAME_MAX).
pub const MAX_HOSTNAME: usize = 64;

/// A hostname as RFC 1123 allows it: dot-separated labels of letters,
/// digits and hyphens, each 1-63 characters, not starting or ending with a
/// hyphen; at most [`MAX_HOSTNAME`] bytes in all.
pub fn check_hostname(h: &str) -> Result<(), String> {
    if h.is_empty() {
        return Err("must not be empty".into());
    }
    if h.len() > MAX_HOSTNAME {
        return Err(format!("must be at most {MAX_HOSTNAME} characters"));
    }
    for label in h.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "{h:?}: each dot-separated label must be 1 to 63 characters"
            ));
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(format!(
                "{h:?}: only letters, digits, '-' and '.' are allowed"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("{h:?}: a label must not start or end with '-'"));
        }
    }
    Ok(())
}

/// The number of a signal name (`SIGTERM`, `TERM`, `15`, `SIGRTMIN+3`), as
/// images name them in `STOPSIGNAL` and jobs in `kill_signal`.
pub fn crate_signal_number(name: &str) -> Option<i32> {
    let n = name.trim();
    let n = n.strip_prefix("SIG").unwrap_or(n);
    const NAMES: &[(&str, i32)] = &[
        ("HUP", 1),
        ("INT", 2),
        ("QUIT", 3),
        ("ILL", 4),
        ("TRAP", 5),
        ("ABRT", 6),
        ("IOT", 6),
        ("BUS", 7),
        ("FPE", 8),
        ("KILL", 9),
        ("USR1", 10),
        ("SEGV", 11),
        ("USR2", 12),
        ("PIPE", 13),
        ("ALRM", 14),
        ("TERM", 15),
        ("STKFLT", 16),
        ("CHLD", 17),
        ("CONT", 18),
        ("STOP", 19),
        ("TSTP", 20),
        ("TTIN", 21),
        ("TTOU", 22),
        ("URG", 23),
        ("XCPU", 24),
        ("XFSZ", 25),
        ("VTALRM", 26),
        ("PROF", 27),
        ("WINCH", 28),
        ("IO", 29),
        ("POLL", 29),
        ("PWR", 30),
        ("SYS", 31),
    ];
    if let Some((_, num)) = NAMES.iter().find(|(k, _)| *k == n) {
        return Some(*num);
    }
    // Real-time signals as glibc numbers them for programs (RTMIN = 34).
    let rt = |base: i32, off: &str, sign: i32| {
        let off: i32 = if off.is_empty() { 0 } else { off.parse().ok()? };
        Some(base + sign * off).filter(|v| (34..=64).contains(v))
    };
    if let Some(off) = n.strip_prefix("RTMIN") {
        return rt(34, off.strip_prefix('+').unwrap_or(off), 1);
    }
    if let Some(off) = n.strip_prefix("RTMAX") {
        return rt(64, off.strip_prefix('-').unwrap_or(off), -1);
    }
    n.parse().ok().filter(|v| (1..=64).contains(v))
}

/// The live-migration bits of a group's `migrate` policy.
fn check_live_migration(errs: &mut ValidationErrors, p: &str, m: &crate::job::MigratePolicy) {
    if m.max_downtime.0 == 0 || m.max_downtime.0 > 60_000 {
        errs.push(
            format!("{p}.migrate.max_downtime"),
            "must be between 1ms and 60s",
        );
    }
    if m.timeout.0 < 1000 || m.timeout.0 > 24 * 3600 * 1000 {
        errs.push(format!("{p}.migrate.timeout"), "must be between 1s and 24h");
    }
    if m.max_bandwidth.0 != 0 && m.max_bandwidth.0 < (1 << 20) {
        errs.push(
            format!("{p}.migrate.max_bandwidth"),
            "must be 0 (no cap) or at least 1MiB (per second)",
        );
    }
}

fn check_group(errs: &mut ValidationErrors, p: &str, g: &TaskGroupSpec, job_type: JobType) {
    check_name(errs, &format!("{p}.name"), &g.name);
    if g.count > MAX_COUNT {
        errs.push(format!("{p}.count"), format!("must be at most {MAX_COUNT}"));
    }
    if g.tasks.is_empty() {
        errs.push(format!("{p}.task"), "a group needs at least one task");
    }
    if job_type == JobType::System && g.migrate.drain.is_some() {
        errs.push(
            format!("{p}.migrate.drain"),
            "system jobs are stopped by a drain, not moved; remove it",
        );
    }
    if g.migrate.max_parallel == 0 {
        errs.push(format!("{p}.migrate.max_parallel"), "must be at least 1");
    }
    if g.migrate.min_healthy_time.0 > 24 * 3600 * 1000 {
        errs.push(
            format!("{p}.migrate.min_healthy_time"),
            "must be at most 24h",
        );
    }
    check_live_migration(errs, p, &g.migrate);
    if let Some(d) = g.stop_after_disconnect {
        if d.0 < 1000 {
            errs.push(
                format!("{p}.stop_after_disconnect"),
                "must be at least 1s (an agent checks its link about every 250ms)",
            );
        } else if d.0 > 24 * 3600 * 1000 {
            errs.push(format!("{p}.stop_after_disconnect"), "must be at most 24h");
        }
    }
    if let Some(r) = &g.restart {
        if r.attempts > 10_000 {
            errs.push(format!("{p}.restart.attempts"), "must be at most 10000");
        }
        if r.attempts > 0 && r.interval.0 == 0 {
            errs.push(
                format!("{p}.restart.interval"),
                "must be positive when attempts > 0",
            );
        }
        if r.attempts > 0 && r.delay.0 > r.interval.0 {
            errs.push(
                format!("{p}.restart.delay"),
                "must not be longer than the interval",
            );
        }
    }
    if let Some(r) = &g.reschedule {
        if job_type == JobType::System && (r.unlimited || r.attempts > 0) {
            errs.push(format!("{p}.reschedule"), "system jobs are not rescheduled");
        }
        if r.attempts > 10_000 {
            errs.push(format!("{p}.reschedule.attempts"), "must be at most 10000");
        }
    }
    if g.network.mode == NetworkMode::Bridge {
        errs.push(
            format!("{p}.network.mode"),
            "bridge networking is not available yet; use \"none\" or \"host\"",
        );
    }
    crate::ports::check_group_ports(errs, p, g);
    check_constraints(errs, &format!("{p}."), &g.constraints);
    check_spreads(errs, &format!("{p}."), &g.spread);
    check_affinities(errs, &format!("{p}."), &g.affinity);
    if job_type == JobType::System {
        no_preferences_in_system_job(errs, p, g);
    }
    let mut seen = BTreeSet::new();
    for (i, t) in g.tasks.iter().enumerate() {
        let tp = format!("{p}.task[{i}]");
        if !seen.insert(t.name.as_str()) {
            errs.push(
                format!("{tp}.name"),
                format!("duplicate task name {:?}", t.name),
            );
        }
        check_task(errs, &tp, t);
    }
}

/// Validate a whole job spec.
pub fn validate_job(spec: &JobSpec) -> Result<(), ValidationErrors> {
    let mut errs = ValidationErrors::default();
    check_name(&mut errs, "name", &spec.name);
    check_name(&mut errs, "namespace", &spec.namespace);
    if !(1..=100).contains(&spec.priority) {
        errs.push("priority", "must be between 1 and 100");
    }
    if spec.update.max_parallel == 0 {
        errs.push("update.max_parallel", "must be at least 1");
    }
    check_constraints(&mut errs, "", &spec.constraints);
    check_spreads(&mut errs, "", &spec.spread);
    check_affinities(&mut errs, "", &spec.affinity);
    if spec.job_type == JobType::System {
        let system = "system jobs run on every eligible node; it does not apply";
        if !spec.scoring.is_binpack() {
            errs.push("scoring", system);
        }
        if !spec.spread.is_empty() {
            errs.push("spread", system);
        }
        if !spec.affinity.is_empty() {
            errs.push("affinity", system);
        }
    }
    if spec.groups.is_empty() {
        errs.push("group", "a job needs at least one group");
    }
    let mut seen = BTreeSet::new();
    for (i, g) in spec.groups.iter().enumerate() {
        let p = format!("group[{i}]");
        if !seen.insert(g.name.as_str()) {
            errs.push(
                format!("{p}.name"),
                format!("duplicate group name {:?}", g.name),
            );
        }
        check_group(&mut errs, &p, g, spec.job_type);
    }
    if errs.0.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

/// Spreads: attribute, weight 1..=100, unique target values whose
/// percentages sum to at most 100.
fn check_spreads(errs: &mut ValidationErrors, base: &str, spreads: &[Spread]) {
    let mut attributes = BTreeSet::new();
    for (i, sp) in spreads.iter().enumerate() {
        let p = format!("{base}spread[{i}]");
        if sp.attribute.trim().is_empty() {
            errs.push(format!("{p}.attribute"), "must not be empty");
        } else if let Err(e) = check_interpolation(&sp.attribute) {
            errs.push(format!("{p}.attribute"), e);
        } else if !attributes.insert(sp.attribute.as_str()) {
            errs.push(
                format!("{p}.attribute"),
                format!("{:?} is spread over twice; merge the two", sp.attribute),
            );
        }
        if !(1..=100).contains(&sp.weight) {
            errs.push(format!("{p}.weight"), "must be between 1 and 100");
        }
        let mut values = BTreeSet::new();
        let mut sum = 0u64;
        for (k, t) in sp.targets.iter().enumerate() {
            let tp = format!("{p}.target[{k}]");
            if t.value.is_empty() {
                errs.push(format!("{tp}.value"), "must not be empty");
            } else if !values.insert(t.value.as_str()) {
                errs.push(
                    format!("{tp}.value"),
                    format!("duplicate target value {:?}", t.value),
                );
            }
            if t.percent > 100 {
                errs.push(format!("{tp}.percent"), "must be between 0 and 100");
            }
            sum += u64::from(t.percent);
        }
        if sum > 100 {
            errs.push(
                format!("{p}.target"),
                format!("percentages sum to {sum}; they must sum to at most 100"),
            );
        }
    }
}

/// Affinities: exactly one form per entry, weight -100..=100 and not 0.
fn check_affinities(errs: &mut ValidationErrors, base: &str, affinities: &[Affinity]) {
    for (i, a) in affinities.iter().enumerate() {
        let p = format!("{base}affinity[{i}]");
        if a.weight == 0 || !(-100..=100).contains(&a.weight) {
            errs.push(
                format!("{p}.weight"),
                "must be between -100 and 100 and not 0 (negative: anti-affinity)",
            );
        }
        if !a.attribute.is_empty() {
            if let Err(e) = check_interpolation(&a.attribute) {
                errs.push(format!("{p}.attribute"), e);
            }
        }
        match &a.job {
            Some(job) => {
                let alloc_form = "not allowed in an allocation affinity (one that names a job); \
                                  use attribute, operator and value without job for a node affinity";
                if a.operator.is_some() {
                    errs.push(format!("{p}.operator"), alloc_form);
                }
                if a.value.is_some() {
                    errs.push(format!("{p}.value"), alloc_form);
                }
                check_name(errs, &format!("{p}.job"), job);
                if let Some(g) = &a.group {
                    check_name(errs, &format!("{p}.group"), g);
                }
            }
            None => {
                if a.group.is_some() {
                    errs.push(
                        format!("{p}.group"),
                        "needs job: an allocation affinity names the job whose group it means",
                    );
                }
                if a.attribute.trim().is_empty() {
                    errs.push(
                        format!("{p}.attribute"),
                        "must not be empty; an affinity names a node attribute (with operator and value) or a job",
                    );
                    continue;
                }
                let value = a.value.as_deref().unwrap_or("");
                if let Err(e) = check_interpolation(value) {
                    errs.push(format!("{p}.value"), e);
                }
                match a.operator_or_default() {
                    ConstraintOperator::DistinctHosts | ConstraintOperator::DistinctProperty => {
                        errs.push(
                            format!("{p}.operator"),
                            "distinct_hosts and distinct_property are constraints, not affinities",
                        )
                    }
                    ConstraintOperator::IsSet | ConstraintOperator::IsNotSet => {}
                    _ if a.value.is_none() => {
                        errs.push(format!("{p}.value"), "is required for this operator")
                    }
                    ConstraintOperator::Regexp if value.is_empty() => {
                        errs.push(format!("{p}.value"), "a regular expression is required")
                    }
                    ConstraintOperator::Version | ConstraintOperator::SetContains
                        if value.trim().is_empty() =>
                    {
                        errs.push(format!("{p}.value"), "must not be empty for this operator")
                    }
                    _ => {}
                }
            }
        }
    }
}

/// System jobs place one allocation per node: spreads and affinities have
/// nothing to choose between.
fn no_preferences_in_system_job(errs: &mut ValidationErrors, p: &str, g: &TaskGroupSpec) {
    let system = "system jobs run on every eligible node; it does not apply";
    if !g.spread.is_empty() {
        errs.push(format!("{p}.spread"), system);
    }
    if !g.affinity.is_empty() {
        errs.push(format!("{p}.affinity"), system);
    }
    for (i, t) in g.tasks.iter().enumerate() {
        if !t.affinity.is_empty() {
            errs.push(format!("{p}.task[{i}].affinity"), system);
        }
    }
}

//! Workload privileges a task may ask for: capability names, rlimits
//! (`ulimits`), and their validation. The agent decides what it grants
//! (its allow-list of added capabilities, its own hard limits); this module
//! only knows names and shapes.

use std::collections::BTreeMap;

use crate::validate::ValidationErrors;

/// Linux capabilities by number (`CAP_` left off), as `linux/capability.h`.
pub const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Docker's default capability set: what a container gets unless the task
/// adds or drops some.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// The canonical name of a capability (`net_admin`, `CAP_NET_ADMIN` ->
/// `NET_ADMIN`), or `None` if there is no such capability.
pub fn capability(name: &str) -> Option<&'static str> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAPABILITIES.iter().copied().find(|c| *c == bare)
}

/// The capability set of a task: Docker's default set, minus `drop`
/// (`"ALL"` drops every one), plus `add` (`"ALL"` adds every one). Unknown
/// names are skipped here; validation rejects them.
pub fn effective_capabilities(add: &[String], drop: &[String]) -> Vec<&'static str> {
    let all = |v: &[String]| v.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
    let mut set: Vec<&'static str> = if all(drop) {
        Vec::new()
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .copied()
            .filter(|c| !drop.iter().any(|d| capability(d) == Some(c)))
            .collect()
    };
    let added: Vec<&'static str> = if all(add) {
        CAPABILITIES.to_vec()
    } else {
        add.iter().filter_map(|c| capability(c)).collect()
    };
    for c in added {
        if !set.contains(&c) {
            set.push(c);
        }
    }
    set
}

/// rlimit names a task may set in `ulimits` (`RLIMIT_` left off, lower case).
pub const ULIMITS: &[&str] = &[
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// The value meaning "no limit".
pub const UNLIMITED: u64 = u64::MAX;

/// Parse a ulimit value: `"1024"` (soft = hard), `"1024:4096"` (soft:hard),
/// either side may be `unlimited`. Soft must not exceed hard.
pub fn parse_ulimit(value: &str) -> Result<(u64, u64), String> {
    let one = |s: &str| -> Result<u64, String> {
        let s = s.trim();
        if s == "unlimited" || s == "-1" {
            return Ok(UNLIMITED);
        }
        s.parse::<u64>()
            .map_err(|_| format!("{s:?} is not a number or \"unlimited\""))
    };
    let (soft, hard) = match value.split_once(':') {
        Some((s, h)) => (one(s)?, one(h)?),
        None => {
            let v = one(value)?;
            (v, v)
        }
    };
    if soft > hard {
        return Err(format!(
            "the soft limit {soft} is above the hard limit {hard}"
        ));
    }
    Ok((soft, hard))
}

/// Validate `cap_add`, `cap_drop` and `ulimits` of the task at path `p`.
pub(crate) fn check_task_security(
    errs: &mut ValidationErrors,
    p: &str,
    cap_add: &[String],
    cap_drop: &[String],
    ulimits: &BTreeMap<String, String>,
) {
    for (field, list) in [("cap_add", cap_add), ("cap_drop", cap_drop)] {
        for (i, c) in list.iter().enumerate() {
            if !c.eq_ignore_ascii_case("ALL") && capability(c).is_none() {
                errs.push(
                    format!("{p}.{field}[{i}]"),
                    format!("unknown capability {c:?} (names as in capabilities(7), e.g. \"NET_ADMIN\", or \"ALL\")"),
                );
            }
        }
    }
    for (name, value) in ulimits {
        if !ULIMITS.contains(&name.as_str()) {
            errs.push(
                format!("{p}.ulimits.{name}"),
                format!("unknown limit; known: {}", ULIMITS.join(", ")),
            );
        } else if let Err(e) = parse_ulimit(value) {
            errs.push(format!("{p}.ulimits.{name}"), e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names() {
        assert_eq!(capability("net_admin"), Some("NET_ADMIN"));
        assert_eq!(capability("CAP_SYS_PTRACE"), Some("SYS_PTRACE"));
        assert_eq!(capability("FLY"), None);
        assert_eq!(CAPABILITIES[21], "SYS_ADMIN");
        assert_eq!(CAPABILITIES[40], "CHECKPOINT_RESTORE");
    }

    #[test]
    fn add_and_drop() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let caps = effective_capabilities(&s(&["sys_ptrace"]), &s(&["NET_RAW", "cap_mknod"]));
        assert!(caps.contains(&"SYS_PTRACE") && caps.contains(&"CHOWN"));
        assert!(!caps.contains(&"NET_RAW") && !caps.contains(&"MKNOD"));
        assert_eq!(
            effective_capabilities(&s(&["NET_BIND_SERVICE"]), &s(&["ALL"])),
            vec!["NET_BIND_SERVICE"]
        );
    }

    #[test]
    fn ulimit_values() {
        assert_eq!(parse_ulimit("1024"), Ok((1024, 1024)));
        assert_eq!(parse_ulimit("1024:unlimited"), Ok((1024, UNLIMITED)));
        assert!(parse_ulimit("9:3")
            .unwrap_err()
            .contains("above the hard limit"));
        assert!(parse_ulimit("lots").unwrap_err().contains("not a number"));
    }
}

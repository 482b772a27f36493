//! Reading job files (TOML) and API bodies (JSON) into a validated
//! [`JobSpec`]. Syntax errors carry line and column; type errors carry the
//! field path; semantic errors come from [`crate::validate`].

use crate::job::JobSpec;
use crate::validate::{validate_job, ValidationErrors};
use std::fmt;

/// Largest job file or body accepted.
pub const MAX_JOB_BYTES: usize = 1 << 20;

/// Why a job file or body was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobParseError {
    /// Not UTF-8.
    #[error("not valid UTF-8 at byte {offset}")]
    NotUtf8 {
        /// First invalid byte.
        offset: usize,
    },
    /// Too big.
    #[error("job is {size} bytes; the limit is {MAX_JOB_BYTES}")]
    TooLarge {
        /// Size seen.
        size: usize,
    },
    /// Syntax or type error at a position.
    #[error("{}", syntax_message(.line, .column, .path, .message))]
    Syntax {
        /// 1-based line, when known.
        line: Option<usize>,
        /// 1-based column, when known.
        column: Option<usize>,
        /// Field path, when known.
        path: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// Parsed, but invalid.
    #[error("{0}")]
    Invalid(ValidationErrors),
}

pub(crate) fn syntax_message(
    line: &Option<usize>,
    column: &Option<usize>,
    path: &Option<String>,
    message: &str,
) -> String {
    let mut s = String::new();
    if let (Some(l), Some(c)) = (line, column) {
        s.push_str(&format!("line {l}, column {c}: "));
    }
    if let Some(p) = path {
        s.push_str(&format!("{p}: "));
    }
    s.push_str(message);
    s
}

impl JobParseError {
    /// The field path, if the error has one.
    pub fn path(&self) -> Option<String> {
        match self {
            Self::Syntax { path, .. } => path.clone(),
            Self::Invalid(v) => v.0.first().map(|e| e.path.clone()),
            _ => None,
        }
    }
}

pub(crate) fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

fn as_utf8(bytes: &[u8]) -> Result<&str, JobParseError> {
    if bytes.len() > MAX_JOB_BYTES {
        return Err(JobParseError::TooLarge { size: bytes.len() });
    }
    std::str::from_utf8(bytes).map_err(|e| JobParseError::NotUtf8 {
        offset: e.valid_up_to(),
    })
}

fn non_empty_path(p: &serde_path_to_error::Path) -> Option<String> {
    let s = p.to_string();
    (s != "." && !s.is_empty()).then_some(s)
}

/// Parse and validate a TOML job file.
pub fn parse_job_toml(bytes: &[u8]) -> Result<JobSpec, JobParseError> {
    let src = as_utf8(bytes)?;
    let de = toml::Deserializer::new(src);
    let spec: JobSpec = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = non_empty_path(e.path());
        let inner = e.into_inner();
        let (line, column) = match inner.span() {
            Some(span) => {
                let (l, c) = line_col(src, span.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        JobParseError::Syntax {
            line,
            column,
            path,
            message: inner.message().trim().to_string(),
        }
    })?;
    validate_job(&spec).map_err(JobParseError::Invalid)?;
    Ok(spec)
}

/// Parse and validate a JSON job (the API's body form).
pub fn parse_job_json(bytes: &[u8]) -> Result<JobSpec, JobParseError> {
    let src = as_utf8(bytes)?;
    let mut de = serde_json::Deserializer::from_str(src);
    let spec: JobSpec = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = non_empty_path(e.path());
        let inner = e.into_inner();
        JobParseError::Syntax {
            line: Some(inner.line()),
            column: Some(inner.column()),
            path,
            message: strip_json_position(&inner.to_string()),
        }
    })?;
    de.end().map_err(|e| JobParseError::Syntax {
        line: Some(e.line()),
        column: Some(e.column()),
        path: None,
        message: strip_json_position(&e.to_string()),
    })?;
    validate_job(&spec).map_err(JobParseError::Invalid)?;
    Ok(spec)
}

fn strip_json_position(s: &str) -> String {
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s.to_string(),
    }
}

impl fmt::Display for crate::job::JobSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job {:?} ({})", self.name, self.job_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::ByteSize;

    const HELLO: &str = r#"
name = "hello"
type = "service"
[[group]]
name = "web"
count = 2
  [[group.task]]
  name = "httpd"
  driver = "container"
  image = "busybox:latest"
  command = ["httpd", "-f", "-p", "8080"]
  resources = { cpu = 100, memory = "64MiB" }
"#;

    #[test]
    fn brief_sample_parses() {
        let spec = parse_job_toml(HELLO.as_bytes()).unwrap();
        assert_eq!(spec.name, "hello");
        assert_eq!(spec.groups[0].count, 2);
        assert_eq!(spec.groups[0].tasks[0].resources.memory, ByteSize::mib(64));
        let json = serde_json::to_vec(&spec).unwrap();
        assert_eq!(parse_job_json(&json).unwrap(), spec);
    }

    #[test]
    fn type_error_has_path_and_position() {
        let bad = HELLO.replace("\"64MiB\"", "\"lots\"");
        let err = parse_job_toml(bad.as_bytes()).unwrap_err();
        assert_eq!(
            err.path().as_deref(),
            Some("group[0].task[0].resources.memory")
        );
        let msg = err.to_string();
        assert!(msg.contains("line 12"), "{msg}");
    }

    #[test]
    fn isolation_fields_parse_and_bad_ones_name_their_field() {
        let with = |extra: &str| {
            HELLO.replace(
                "driver = \"container\"",
                &format!("driver = \"container\"\n  {extra}"),
            )
        };
        let good = with(
            "cap_add = [\"NET_ADMIN\"]\n  cap_drop = [\"ALL\"]\n  ulimits = { nofile = \"1024:4096\" }\n  no_new_privileges = true",
        );
        let spec = parse_job_toml(good.as_bytes()).unwrap();
        let t = &spec.groups[0].tasks[0];
        assert_eq!(t.cap_add, vec!["NET_ADMIN"]);
        assert!(t.no_new_privileges);
        assert_eq!(t.ulimits["nofile"], "1024:4096");
        for (extra, path, reason) in [
            (
                "cap_add = [\"FLY\"]",
                "group[0].task[0].cap_add[0]",
                "unknown capability",
            ),
            (
                "cap_drop = [\"x\", \"KILL\"]",
                "group[0].task[0].cap_drop[0]",
                "unknown capability",
            ),
            (
                "ulimits = { files = \"1\" }",
                "group[0].task[0].ulimits.files",
                "unknown limit",
            ),
            (
                "ulimits = { nofile = \"9:3\" }",
                "group[0].task[0].ulimits.nofile",
                "above the hard limit",
            ),
        ] {
            let err = parse_job_toml(with(extra).as_bytes()).unwrap_err();
            assert_eq!(err.path().as_deref(), Some(path), "{extra}");
            assert!(err.to_string().contains(reason), "{err}");
        }
    }

    #[test]
    fn hostname_kill_signal_and_empty_entrypoint_are_checked_with_their_field() {
        let with = |extra: &str| {
            HELLO.replace(
                "driver = \"container\"",
                &format!("driver = \"container\"\n  {extra}"),
            )
        };
        let spec = parse_job_toml(
            with("hostname = \"web-1.example\"\n  kill_signal = \"SIGRTMIN+3\"\n  entrypoint = []")
                .as_bytes(),
        )
        .unwrap();
        let t = &spec.groups[0].tasks[0];
        assert_eq!(t.hostname.as_deref(), Some("web-1.example"));
        assert_eq!(t.entrypoint, Some(vec![]));
        assert_eq!(
            crate::validate::crate_signal_number(t.kill_signal.as_deref().unwrap()),
            Some(37)
        );
        // No kill_signal: none is recorded (the image's STOPSIGNAL applies).
        assert_eq!(
            parse_job_toml(HELLO.as_bytes()).unwrap().groups[0].tasks[0].kill_signal,
            None
        );
        for (extra, path, reason) in [
            (
                "hostname = \"\"",
                "group[0].task[0].hostname",
                "must not be empty",
            ),
            (
                "hostname = \"a_b\"",
                "group[0].task[0].hostname",
                "only letters",
            ),
            (
                "hostname = \"-a\"",
                "group[0].task[0].hostname",
                "start or end",
            ),
            ("hostname = \"a..b\"", "group[0].task[0].hostname", "label"),
            (
                &format!("hostname = \"{}\"", "a".repeat(65)),
                "group[0].task[0].hostname",
                "at most 64",
            ),
            (
                "kill_signal = \"SIGFOO\"",
                "group[0].task[0].kill_signal",
                "unknown signal",
            ),
        ] {
            let err = parse_job_toml(with(extra).as_bytes()).unwrap_err();
            assert_eq!(err.path().as_deref(), Some(path), "{extra}");
            assert!(err.to_string().contains(reason), "{err}");
        }
        let no_cmd = with("entrypoint = []")
            .replace("command = [\"httpd\", \"-f\", \"-p\", \"8080\"]\n", "");
        let err = parse_job_toml(no_cmd.as_bytes()).unwrap_err();
        assert_eq!(err.path().as_deref(), Some("group[0].task[0].command"));
        let exec = HELLO
            .replace(
                "driver = \"container\"",
                "driver = \"exec\"\n  hostname = \"x\"",
            )
            .replace("image = \"busybox:latest\"\n", "");
        let err = parse_job_toml(exec.as_bytes()).unwrap_err();
        assert_eq!(err.path().as_deref(), Some("group[0].task[0].hostname"));
    }

    #[test]
    fn user_namespace_is_auto_and_for_containers_only() {
        let with = |extra: &str| {
            HELLO.replace(
                "driver = \"container\"",
                &format!("driver = \"container\"\n  {extra}"),
            )
        };
        let spec = parse_job_toml(with("user_namespace = \"auto\"").as_bytes()).unwrap();
        assert_eq!(
            spec.groups[0].tasks[0].user_namespace,
            Some(crate::UserNamespaceMode::Auto)
        );
        let err = parse_job_toml(with("user_namespace = \"host\"").as_bytes()).unwrap_err();
        assert!(err.to_string().contains("user_namespace"), "{err}");
        assert!(err.to_string().contains("unknown variant"), "{err}");
        let exec = with("user_namespace = \"auto\"")
            .replace("driver = \"container\"", "driver = \"exec\"")
            .replace("image = \"busybox:latest\"\n", "");
        let err = parse_job_toml(exec.as_bytes()).unwrap_err();
        assert_eq!(
            err.path().as_deref(),
            Some("group[0].task[0].user_namespace")
        );
        assert!(err.to_string().contains("container driver"), "{err}");
    }

    #[test]
    fn validation_names_field() {
        let bad = HELLO.replace("driver = \"container\"", "driver = \"docker\"");
        let err = parse_job_toml(bad.as_bytes()).unwrap_err();
        assert_eq!(err.path().as_deref(), Some("group[0].task[0].driver"));
    }

    #[test]
    fn not_utf8() {
        let mut b = HELLO.as_bytes().to_vec();
        b[3] = 0xff;
        assert!(matches!(
            parse_job_toml(&b),
            Err(JobParseError::NotUtf8 { offset: 3 })
        ));
    }

    #[test]
    fn unknown_field_rejected() {
        let bad = HELLO.replace("count = 2", "count = 2\ncuont = 3");
        let err = parse_job_toml(bad.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("cuont"), "{err}");
    }

    #[test]
    fn json_path() {
        let err = parse_job_json(br#"{"name":"a","group":[{"name":"g","task":[{"name":"t","driver":"exec","command":["x"],"resources":{"cpu":-1}}]}]}"#).unwrap_err();
        assert_eq!(
            err.path().as_deref(),
            Some("group[0].task[0].resources.cpu")
        );
    }

    #[test]
    fn stop_after_disconnect_is_read_and_checked() {
        let ok = HELLO.replace("count = 2", "count = 2\nstop_after_disconnect = \"10s\"");
        let spec = parse_job_toml(ok.as_bytes()).unwrap();
        assert_eq!(
            spec.groups[0].stop_after_disconnect,
            Some(crate::DurationSpec::secs(10))
        );
        for (value, why) in [("\"200ms\"", "at least 1s"), ("\"48h\"", "at most 24h")] {
            let bad = HELLO.replace(
                "count = 2",
                &format!("count = 2\nstop_after_disconnect = {value}"),
            );
            let err = parse_job_toml(bad.as_bytes()).unwrap_err();
            assert_eq!(
                err.path().as_deref(),
                Some("group[0].stop_after_disconnect")
            );
            assert!(err.to_string().contains(why), "{err}");
        }
        let bad = HELLO.replace("count = 2", "count = 2\nstop_after_disconnect = \"soon\"");
        let err = parse_job_toml(bad.as_bytes()).unwrap_err();
        assert_eq!(
            err.path().as_deref(),
            Some("group[0].stop_after_disconnect")
        );
    }
}

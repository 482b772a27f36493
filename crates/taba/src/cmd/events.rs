//! `taba events`: follow the server's event stream (`GET /v1/event/stream`),
//! one line per event (or the JSON lines with `--json`); and the wait of
//! `taba job run` for the next change of its job.

use super::GlobalArgs;
use anyhow::Context;
use serde_json::Value;
use std::process::ExitCode;
use std::time::Duration;
use taba_client::api::{EventTopic, StreamEvent, StreamLine};
use taba_client::{Client, ClientError, EventStream};

/// Reconnections after the server ended a stream it could not keep (it
/// stopped, or lost its leadership) or the connection broke.
const RECONNECTS: u32 = 30;

/// `taba events`
#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// Topic to follow: Job, Allocation, Node or Evaluation; repeat for
    /// several (default: every topic the token may read).
    #[arg(long = "topic", short = 't', value_parser = parse_topic)]
    topics: Vec<EventTopic>,
    /// Only this namespace (default: every namespace the token may read).
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Replay the events the server keeps after this index first.
    #[arg(long)]
    index: Option<u64>,
}

fn parse_topic(s: &str) -> Result<EventTopic, String> {
    EventTopic::ALL
        .into_iter()
        .find(|t| t.name().eq_ignore_ascii_case(s))
        .ok_or_else(|| {
            format!(
                "unknown topic {s:?}; one of {}",
                EventTopic::ALL.map(EventTopic::name).join(", ")
            )
        })
}

/// Follows the stream until it ends for good (or the user stops it).
pub fn run(g: &GlobalArgs, args: EventsArgs) -> anyhow::Result<ExitCode> {
    let api = super::cli::client(g)?;
    let mut index = args.index;
    let mut reconnects = 0;
    loop {
        let stream = api
            .events(&args.topics, args.namespace.as_deref(), index)
            .context("cannot follow the event stream")?;
        for line in stream {
            let line = match line {
                Ok(l) => l,
                Err(ClientError::Decode(e)) if e.kind() != std::io::ErrorKind::InvalidData => break,
                Err(e) => return Err(e.into()),
            };
            match line {
                StreamLine::Event(e) => {
                    index = Some(index.unwrap_or(0).max(e.index.saturating_sub(1)));
                    if g.json {
                        println!("{}", serde_json::to_string(&e)?);
                    } else {
                        println!("{}", describe(&e));
                    }
                    reconnects = 0;
                }
                StreamLine::Heartbeat { heartbeat } => {
                    index = Some(index.unwrap_or(0).max(heartbeat.index));
                }
                StreamLine::End { end } => {
                    if g.json {
                        println!(
                            "{}",
                            serde_json::to_string(&StreamLine::End { end: end.clone() })?
                        );
                    }
                    eprintln!("stream ended ({}): {}", end.code, end.message);
                    if !matches!(end.code.as_str(), "server_stopping" | "state_replaced") {
                        eprintln!("resume with: taba events --index {}", end.resume_index);
                        return Ok(ExitCode::from(1));
                    }
                    index = Some(end.resume_index);
                    break;
                }
            }
        }
        // The stream broke off or the server ended it for a reason worth a retry.
        if reconnects >= RECONNECTS {
            anyhow::bail!(
                "the event stream ended; resume with --index {}",
                index.unwrap_or(0)
            );
        }
        reconnects += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// One line for people: index, topic, type, namespace, key, and what the
/// record says now.
pub fn describe(e: &StreamEvent) -> String {
    let p = &e.payload;
    let s = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let what = match e.topic {
        EventTopic::Job => {
            let spec = p.get("spec").cloned().unwrap_or(Value::Null);
            format!(
                "job {} version {}{}",
                spec.get("name").and_then(Value::as_str).unwrap_or(&e.key),
                p.get("version").and_then(Value::as_u64).unwrap_or(0),
                if p.get("stopped").and_then(Value::as_bool) == Some(true) {
                    " (stopped)"
                } else {
                    ""
                }
            )
        }
        EventTopic::Allocation => format!(
            "{} {} (desired {}) on {}",
            s("name"),
            s("client_status"),
            s("desired_status"),
            s("node_name")
        ),
        EventTopic::Evaluation => format!(
            "job {} {} ({}){}",
            s("job"),
            s("status"),
            s("triggered_by"),
            match s("status_description") {
                d if d.is_empty() => String::new(),
                d => format!(": {d}"),
            }
        ),
        EventTopic::Node => format!("node {} {} {}", s("name"), s("status"), s("eligibility")),
    };
    let key: String = if matches!(e.topic, EventTopic::Allocation | EventTopic::Evaluation) {
        e.key.chars().take(8).collect()
    } else {
        e.key.clone()
    };
    format!(
        "{:>8}  {:<10}  {:<24}  {:<10}  {:<12}  {}",
        e.index,
        e.topic.name(),
        e.kind,
        e.namespace.as_deref().unwrap_or("-"),
        key,
        what.trim()
    )
}

/// The changes of one job, as `taba job run` waits for them.
pub struct JobEvents {
    stream: Option<EventStream>,
    namespace: String,
    job: String,
}

impl JobEvents {
    /// Follows the events of `namespace`/`job` after `index` (the
    /// registration's, so its own events come too). `None` when the stream
    /// cannot be opened (the caller polls instead).
    pub fn follow(api: &Client, namespace: &str, job: &str, index: u64) -> Option<JobEvents> {
        let topics = [
            EventTopic::Job,
            EventTopic::Allocation,
            EventTopic::Evaluation,
        ];
        match api.events(&topics, Some(namespace), Some(index.saturating_sub(1))) {
            Ok(stream) => Some(JobEvents {
                stream: Some(stream),
                namespace: namespace.to_owned(),
                job: job.to_owned(),
            }),
            Err(e) => {
                tracing::debug!(error = %e, "no event stream; polling");
                None
            }
        }
    }

    /// Blocks until the next event about the job, or a keep-alive; false
    /// once the stream has ended.
    pub fn wait(&mut self) -> bool {
        let Some(mut stream) = self.stream.take() else {
            return false;
        };
        loop {
            let Some(line) = stream.next() else { break };
            match line {
                Ok(StreamLine::Event(e)) if self.concerns(&e) => {
                    self.stream = Some(stream);
                    return true;
                }
                Ok(StreamLine::Event(_)) => {}
                Ok(StreamLine::Heartbeat { .. }) => {
                    self.stream = Some(stream);
                    return true;
                }
                Ok(StreamLine::End { .. }) | Err(_) => break,
            }
        }
        false
    }

    fn concerns(&self, e: &StreamEvent) -> bool {
        if e.namespace.as_deref() != Some(self.namespace.as_str()) {
            return false;
        }
        match e.topic {
            EventTopic::Job => e.key == format!("{}/{}", self.namespace, self.job),
            _ => e.payload.get("job").and_then(Value::as_str) == Some(self.job.as_str()),
        }
    }
}

//! A typed client of QEMU's machine protocol (QMP) over a unix socket.
//!
//! Commands are Rust types ([`Command`]: a name, serde arguments and the
//! type of its reply); replies are matched to commands by `id`; events
//! ([`Event`]) that arrive in between are kept in order for
//! [`Qmp::next_event`]. What this module does not know is logged and
//! skipped, never fatal: an event of another name ([`Event::Other`]), a
//! reply nobody waits for, a line that is not JSON. A reply that does not
//! have its command's shape fails that command only.
//!
//! ```text
//! client                                   QEMU
//!   connect ------------------------------>
//!          <------------------------------ {"QMP": {"version": ..., "capabilities": [...]}}
//!   {"execute": "qmp_capabilities", "id": 1} ->
//!          <------------------------------ {"return": {}, "id": 1}
//!   {"execute": "query-status", "id": 2} -->
//!          <------------------------------ {"event": "RESUME", ...}   (kept for next_event)
//!          <------------------------------ {"return": {"status": "running", ...}, "id": 2}
//! ```
//!
//! QEMU serves one client at a time on a `-qmp unix:...,server=on,wait=off`
//! socket: connect, do what is needed, drop the client.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Errors of the QMP client.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be reached.
    #[error("connect to QMP socket {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("QMP connection")]
    Io(#[from] std::io::Error),
    /// QEMU closed the connection.
    #[error("QEMU closed the QMP connection")]
    Closed,
    /// No answer in time.
    #[error("no QMP answer to {0} in time")]
    Timeout(&'static str),
    /// The first message was not QMP's greeting.
    #[error("not a QMP greeting: {0}")]
    Greeting(String),
    /// QEMU refused the command.
    #[error("QMP {command}: {class}: {desc}")]
    Command {
        /// The command.
        command: &'static str,
        /// QEMU's error class (`GenericError`, `CommandNotFound`, ...).
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// The reply does not have the command's reply shape.
    #[error("QMP {command}: unexpected reply {reply}")]
    Reply {
        /// The command.
        command: &'static str,
        /// The reply as received (shortened).
        reply: String,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
}

/// A QMP command: its wire name, its arguments (the value itself,
/// serialised; a unit struct sends none) and its reply.
pub trait Command: Serialize {
    /// The name QEMU knows it by.
    const NAME: &'static str;
    /// What `return` holds.
    type Reply: DeserializeOwned;
}

/// A reply of `{}`: the command has nothing to say.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
pub struct Empty {}

macro_rules! command {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $reply:ty) => {
        $(#[$doc])*
        #[derive(Debug, Default, Clone, Serialize)]
        pub struct $ty;
        impl Command for $ty {
            const NAME: &'static str = $name;
            type Reply = $reply;
        }
    };
}

command!(
    /// Leave capabilities negotiation (the first command of a session).
    QmpCapabilities,
    "qmp_capabilities",
    Empty
);
command!(
    /// Whether the VM runs.
    QueryStatus,
    "query-status",
    StatusInfo
);
command!(
    /// Press the ACPI power button.
    SystemPowerdown,
    "system_powerdown",
    Empty
);
command!(
    /// End QEMU now.
    Quit,
    "quit",
    Empty
);
command!(
    /// Resume the vCPUs.
    Cont,
    "cont",
    Empty
);
command!(
    /// Pause the vCPUs.
    Stop,
    "stop",
    Empty
);
command!(
    /// QEMU's version.
    QueryVersion,
    "query-version",
    VersionInfo
);
command!(
    /// The state of an outgoing or incoming migration.
    QueryMigrate,
    "query-migrate",
    MigrationInfo
);
command!(
    /// Cancel the outgoing migration.
    MigrateCancel,
    "migrate_cancel",
    Empty
);
command!(
    /// Switch a running pre-copy migration (capability `postcopy-ram` set
    /// on both sides) to post-copy: the target runs, pages it lacks are
    /// fetched from the source on demand.
    MigrateStartPostcopy,
    "migrate-start-postcopy",
    Empty
);

/// Start an outgoing migration to `uri` (`tcp:HOST:PORT`).
#[derive(Debug, Clone, Serialize)]
pub struct Migrate {
    /// Where the target listens.
    pub uri: String,
}
impl Command for Migrate {
    const NAME: &'static str = "migrate";
    type Reply = Empty;
}

/// Listen for an incoming migration at `uri` (QEMU started with
/// `-incoming defer`); port 0 picks a free port, which `query-migrate`
/// then tells.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateIncoming {
    /// `tcp:HOST:PORT`.
    pub uri: String,
}
impl Command for MigrateIncoming {
    const NAME: &'static str = "migrate-incoming";
    type Reply = Empty;
}

/// One migration capability.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationCapability {
    /// `events`, `auto-converge`, `postcopy-ram`, ...
    pub capability: String,
    /// On or off.
    pub state: bool,
}

/// Turn migration capabilities on or off.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateSetCapabilities {
    /// The capabilities.
    pub capabilities: Vec<MigrationCapability>,
}
impl Command for MigrateSetCapabilities {
    const NAME: &'static str = "migrate-set-capabilities";
    type Reply = Empty;
}

/// Migration parameters (unset ones are left as they are).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MigrateSetParameters {
    /// Longest pause of the guest at the switch-over, ms.
    #[serde(rename = "downtime-limit", skip_serializing_if = "Option::is_none")]
    pub downtime_limit: Option<u64>,
    /// Bytes per second (0 = unlimited).
    #[serde(rename = "max-bandwidth", skip_serializing_if = "Option::is_none")]
    pub max_bandwidth: Option<u64>,
}
impl Command for MigrateSetParameters {
    const NAME: &'static str = "migrate-set-parameters";
    type Reply = Empty;
}

/// An inet address in QMP's flat form.
#[derive(Debug, Clone, Serialize)]
pub struct InetAddress {
    /// Host.
    pub host: String,
    /// Port (a string, as QMP has it).
    pub port: String,
}

/// `{"type": "inet", "data": {...}}`.
#[derive(Debug, Clone, Serialize)]
pub struct TaggedInet {
    /// Always `inet`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The address.
    pub data: InetAddress,
}

/// Start QEMU's NBD server (the target of a migration exports its disks).
#[derive(Debug, Clone, Serialize)]
pub struct NbdServerStart {
    /// Where it listens.
    pub addr: TaggedInet,
}
impl Command for NbdServerStart {
    const NAME: &'static str = "nbd-server-start";
    type Reply = Empty;
}

/// Export a block node over the NBD server (export name = node name).
#[derive(Debug, Clone, Serialize)]
pub struct NbdServerAdd {
    /// The node.
    pub device: String,
    /// Clients may write.
    pub writable: bool,
}
impl Command for NbdServerAdd {
    const NAME: &'static str = "nbd-server-add";
    type Reply = Empty;
}

command!(
    /// Stop the NBD server and drop its exports.
    NbdServerStop,
    "nbd-server-stop",
    Empty
);

/// Add a block node that is an NBD client of `server`'s `export`.
#[derive(Debug, Clone, Serialize)]
pub struct BlockdevAddNbd {
    /// Always `nbd`.
    pub driver: &'static str,
    /// The new node's name.
    #[serde(rename = "node-name")]
    pub node_name: String,
    /// The NBD server.
    pub server: ServerInet,
    /// The export.
    pub export: String,
}
impl Command for BlockdevAddNbd {
    const NAME: &'static str = "blockdev-add";
    type Reply = Empty;
}

/// `{"type": "inet", "host": ..., "port": ...}` (blockdev's flat form).
#[derive(Debug, Clone, Serialize)]
pub struct ServerInet {
    /// Always `inet`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Host.
    pub host: String,
    /// Port.
    pub port: String,
}

/// Remove a block node.
#[derive(Debug, Clone, Serialize)]
pub struct BlockdevDel {
    /// The node.
    #[serde(rename = "node-name")]
    pub node_name: String,
}
impl Command for BlockdevDel {
    const NAME: &'static str = "blockdev-del";
    type Reply = Empty;
}

/// Mirror block node `device` to node `target`.
#[derive(Debug, Clone, Serialize)]
pub struct BlockdevMirror {
    /// The job's id.
    #[serde(rename = "job-id")]
    pub job_id: String,
    /// Source node.
    pub device: String,
    /// Target node.
    pub target: String,
    /// `top`: the top image only (the target has the same backing base).
    pub sync: &'static str,
}
impl Command for BlockdevMirror {
    const NAME: &'static str = "blockdev-mirror";
    type Reply = Empty;
}

/// End a block job; a ready mirror ends with a consistent copy, no pivot.
#[derive(Debug, Clone, Serialize)]
pub struct BlockJobCancel {
    /// The job's id.
    pub device: String,
}
impl Command for BlockJobCancel {
    const NAME: &'static str = "block-job-cancel";
    type Reply = Empty;
}

command!(
    /// The running block jobs.
    QueryBlockJobs,
    "query-block-jobs",
    Vec<BlockJobInfo>
);

/// One block job.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BlockJobInfo {
    /// Its id.
    pub device: String,
    /// A mirror has caught up and stays in sync.
    #[serde(default)]
    pub ready: bool,
    /// Bytes done.
    #[serde(default)]
    pub offset: u64,
    /// Bytes in all.
    #[serde(default)]
    pub len: u64,
}

/// `query-status` reply.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusInfo {
    /// vCPUs run.
    pub running: bool,
    /// `running`, `paused`, `inmigrate`, `postmigrate`, `shutdown`, ...
    pub status: String,
}

/// `query-version` reply.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VersionInfo {
    /// Numbers.
    pub qemu: VersionTriple,
    /// Distribution's package version.
    #[serde(default)]
    pub package: String,
}

/// `major.minor.micro`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct VersionTriple {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Micro.
    pub micro: u32,
}

/// `query-migrate` reply (the fields taba reads; others are ignored).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct MigrationInfo {
    /// `setup`, `active`, `completed`, `failed`, `cancelled`, ...; absent
    /// before any migration.
    #[serde(default)]
    pub status: Option<String>,
    /// Total time, ms.
    #[serde(rename = "total-time", default)]
    pub total_time: Option<u64>,
    /// Downtime of a completed migration, ms.
    #[serde(default)]
    pub downtime: Option<u64>,
    /// Expected downtime of the active one, ms.
    #[serde(rename = "expected-downtime", default)]
    pub expected_downtime: Option<u64>,
    /// RAM transfer figures.
    #[serde(default)]
    pub ram: Option<MigrationRam>,
    /// Why it failed.
    #[serde(rename = "error-desc", default)]
    pub error_desc: Option<String>,
    /// Where an incoming migration listens (port 0 resolved).
    #[serde(rename = "socket-address", default)]
    pub socket_address: Vec<SocketAddress>,
    /// How much auto-converge slows the guest's vCPUs now, percent.
    #[serde(rename = "cpu-throttle-percentage", default)]
    pub cpu_throttle_percentage: Option<u64>,
}

/// A listening address QEMU reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct SocketAddress {
    /// `inet`, `unix`, ...
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Host of an inet address.
    #[serde(default)]
    pub host: Option<String>,
    /// Port of an inet address (QEMU sends a string).
    #[serde(default)]
    pub port: Option<String>,
}

/// RAM figures of a migration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct MigrationRam {
    /// Bytes sent.
    #[serde(default)]
    pub transferred: u64,
    /// Bytes left.
    #[serde(default)]
    pub remaining: u64,
    /// Guest RAM.
    #[serde(default)]
    pub total: u64,
    /// Pages dirtied per second.
    #[serde(rename = "dirty-pages-rate", default)]
    pub dirty_pages_rate: u64,
    /// Passes over the guest's dirty bitmap so far (1 during the first
    /// pass over all of RAM).
    #[serde(rename = "dirty-sync-count", default)]
    pub dirty_sync_count: u64,
    /// Pages the target asked for in post-copy.
    #[serde(rename = "postcopy-requests", default)]
    pub postcopy_requests: u64,
}

/// An event QEMU sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The guest (or QEMU) shut down; QEMU exits unless `-no-shutdown`.
    Shutdown {
        /// The guest asked for it.
        guest: bool,
        /// `guest-shutdown`, `host-qmp-quit`, `host-signal`, ...
        reason: String,
    },
    /// The power button was pressed.
    Powerdown,
    /// The VM was reset.
    Reset,
    /// The vCPUs stopped.
    Stop,
    /// The vCPUs run again.
    Resume,
    /// A migration changed state.
    Migration {
        /// The new state.
        status: String,
    },
    /// An event this client has no type for.
    Other {
        /// Its name.
        name: String,
        /// Its data.
        data: serde_json::Value,
    },
}

impl Event {
    fn parse(name: &str, data: serde_json::Value) -> Event {
        let text = |k: &str| data.get(k).and_then(|v| v.as_str()).map(str::to_string);
        match name {
            "SHUTDOWN" => Event::Shutdown {
                guest: data.get("guest").and_then(|v| v.as_bool()).unwrap_or(false),
                reason: text("reason").unwrap_or_default(),
            },
            "POWERDOWN" => Event::Powerdown,
            "RESET" => Event::Reset,
            "STOP" => Event::Stop,
            "RESUME" => Event::Resume,
            "MIGRATION" => match text("status") {
                Some(status) => Event::Migration { status },
                None => Event::Other {
                    name: name.into(),
                    data,
                },
            },
            _ => Event::Other {
                name: name.into(),
                data,
            },
        }
    }
}

/// One line from QEMU, as far as the client tells them apart.
#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    data: Option<serde_json::Value>,
    #[serde(rename = "return", default)]
    ret: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<ErrorBody>,
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(rename = "QMP", default)]
    greeting: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    class: String,
    #[serde(default)]
    desc: String,
}

#[derive(Serialize)]
struct Request<'a, C: Serialize> {
    execute: &'static str,
    #[serde(skip_serializing_if = "is_unit")]
    arguments: &'a C,
    id: u64,
}

fn is_unit<C: Serialize>(c: &C) -> bool {
    // A unit struct serialises to null: no arguments to send.
    serde_json::to_value(c)
        .map(|v| v.is_null())
        .unwrap_or(false)
}

/// Longest line read from QEMU (a `query-*` reply of a big VM is a few KiB).
const MAX_LINE: usize = 1 << 20;

/// A connected QMP session, past capabilities negotiation.
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
    events: VecDeque<Event>,
    timeout: Duration,
    /// QEMU's version from the greeting.
    pub version: Option<VersionTriple>,
}

impl Qmp {
    /// Connect to the socket at `path`, read the greeting and negotiate;
    /// every command is then answered within `timeout` or fails.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        // Held open until connected: the short path goes through it.
        let (short, _dir) = short_path(path);
        let stream = tokio::time::timeout(timeout, UnixStream::connect(short))
            .await
            .map_err(|_| QmpError::Timeout("connect"))?
            .map_err(|source| QmpError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        let (r, w) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(r),
            writer: w,
            next_id: 1,
            events: VecDeque::new(),
            timeout,
            version: None,
        };
        let greeting = tokio::time::timeout(timeout, qmp.read_message())
            .await
            .map_err(|_| QmpError::Timeout("greeting"))??;
        let Some(g) = greeting.greeting else {
            return Err(QmpError::Greeting(format!("{greeting:?}")));
        };
        qmp.version = g
            .get("version")
            .and_then(|v| v.get("qemu"))
            .and_then(|v| serde_json::from_value(v.clone()).ok());
        qmp.execute(&QmpCapabilities).await?;
        Ok(qmp)
    }

    /// Run `cmd` and return its reply. Events that arrive meanwhile are kept.
    pub async fn execute<C: Command>(&mut self, cmd: &C) -> Result<C::Reply, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_vec(&Request {
            execute: C::NAME,
            arguments: cmd,
            id,
        })
        .expect("commands serialise");
        line.push(b'\n');
        let timeout = self.timeout;
        tokio::time::timeout(timeout, async {
            self.writer.write_all(&line).await?;
            loop {
                let m = self.read_message().await?;
                if let Some(e) = self.take_event(&m) {
                    self.events.push_back(e);
                    continue;
                }
                if m.id.as_ref().and_then(|v| v.as_u64()) != Some(id) {
                    tracing::debug!(?m, "QMP: a reply to no pending command, skipped");
                    continue;
                }
                if let Some(err) = m.error {
                    return Err(QmpError::Command {
                        command: C::NAME,
                        class: err.class,
                        desc: err.desc,
                    });
                }
                let ret = m
                    .ret
                    .unwrap_or(serde_json::Value::Object(Default::default()));
                return serde_json::from_value(ret.clone()).map_err(|source| QmpError::Reply {
                    command: C::NAME,
                    reply: ret.to_string().chars().take(200).collect(),
                    source,
                });
            }
        })
        .await
        .map_err(|_| QmpError::Timeout(C::NAME))?
    }

    /// The next event: one kept while a command ran, else the next QEMU
    /// sends within `wait` (`None` when none came).
    pub async fn next_event(&mut self, wait: Duration) -> Result<Option<Event>, QmpError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let m = match tokio::time::timeout_at(deadline, self.read_message()).await {
                Err(_) => return Ok(None),
                Ok(m) => m?,
            };
            if let Some(e) = self.take_event(&m) {
                return Ok(Some(e));
            }
            tracing::debug!(?m, "QMP: a reply to no pending command, skipped");
        }
    }

    fn take_event(&self, m: &Message) -> Option<Event> {
        let name = m.event.as_deref()?;
        let e = Event::parse(name, m.data.clone().unwrap_or(serde_json::Value::Null));
        if let Event::Other { name, .. } = &e {
            tracing::debug!(event = %name, "QMP: event without a type here, kept as Other");
        }
        Some(e)
    }

    /// The next line that is a JSON object; others are logged and skipped.
    async fn read_message(&mut self) -> Result<Message, QmpError> {
        loop {
            let mut line = Vec::new();
            let n = match (&mut self.reader)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut line)
                .await
            {
                Ok(n) => n,
                // QEMU that quits may reset the connection rather than close it.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Err(QmpError::Closed);
            }
            if !line.ends_with(b"\n") && n >= MAX_LINE {
                // Skip the rest of an overlong line.
                let mut rest = Vec::new();
                self.reader.read_until(b'\n', &mut rest).await?;
                tracing::warn!("QMP: a line over {MAX_LINE} bytes, skipped");
                continue;
            }
            match serde_json::from_slice::<Message>(&line) {
                Ok(m) => return Ok(m),
                Err(e) => {
                    tracing::warn!(error = %e, line = %String::from_utf8_lossy(&line).chars().take(200).collect::<String>(), "QMP: not a message, skipped");
                }
            }
        }
    }
}

/// Unix socket paths are limited to 107 bytes: a longer one is reached
/// through `/proc/self/fd/N/` of its directory, whose fd is returned to be
/// held until the socket is connected.
pub fn short_path(path: &Path) -> (PathBuf, Option<std::fs::File>) {
    const MAX: usize = 100;
    if path.as_os_str().len() <= MAX {
        return (path.to_path_buf(), None);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return (path.to_path_buf(), None);
    };
    match std::fs::File::open(dir) {
        Ok(f) => {
            use std::os::fd::AsRawFd;
            let short = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd())).join(name);
            (short, Some(f))
        }
        Err(_) => (path.to_path_buf(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_arguments_only_when_the_command_has_some() {
        let v = serde_json::to_value(Request {
            execute: QueryStatus::NAME,
            arguments: &QueryStatus,
            id: 7,
        })
        .unwrap();
        assert_eq!(v, serde_json::json!({"execute": "query-status", "id": 7}));
        #[derive(Serialize)]
        struct WithArgs {
            uri: String,
        }
        let v = serde_json::to_value(Request {
            execute: "migrate",
            arguments: &WithArgs {
                uri: "tcp:x".into(),
            },
            id: 8,
        })
        .unwrap();
        assert_eq!(v["arguments"]["uri"], "tcp:x");
    }

    #[test]
    fn unknown_events_are_kept_as_other() {
        let e = Event::parse("BALLOON_CHANGE", serde_json::json!({"actual": 1}));
        assert!(matches!(e, Event::Other { ref name, .. } if name == "BALLOON_CHANGE"));
        let e = Event::parse(
            "SHUTDOWN",
            serde_json::json!({"guest": true, "reason": "guest-shutdown"}),
        );
        assert_eq!(
            e,
            Event::Shutdown {
                guest: true,
                reason: "guest-shutdown".into()
            }
        );
        // A known name with an unexpected shape is not an error either.
        let e = Event::parse("MIGRATION", serde_json::json!({"state": 3}));
        assert!(matches!(e, Event::Other { .. }));
    }
}

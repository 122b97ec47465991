//! The QMP protocol: the greeting, capabilities negotiation, request checking, dispatch by
//! command name, and QEMU's error classes (monitor/qmp.c, qapi/qmp-dispatch.c,
//! qapi/qmp-registry.c).
//!
//! A request is `{"execute": NAME, "arguments": {...}, "id": ANY}`; the reply is
//! `{"return": ...}` or `{"error": {"class": ..., "desc": ...}}`, with the request's `id`
//! echoed. Commands are grouped by area: [`machine`] (run state, version, quit),
//! [`block`] (graph changes), [`block_query`] (what the graph looks like), [`args`] (the
//! argument checks QAPI's generated visitors make).

pub mod args;
pub mod backup;
pub mod bitmaps;
pub mod block;
pub mod block_graph;
pub mod block_query;
pub mod block_stats;
pub mod chain;
pub mod create;
pub mod devices;
pub mod exports;
pub mod jobs;
pub mod machine;
pub mod objects;
pub mod reopen;
pub mod transaction;

use ::block::coroutine::LocalBoxFuture;
use ::block::trace;
use serde_json::{json, Map, Value};

pub use args::Args;

use super::Session;

/// QEMU's error classes (qapi/error.json, QapiErrorClass).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Everything not listed below.
    GenericError,
    /// No command of that name (or not now: before negotiation).
    CommandNotFound,
    /// The named device or node does not exist.
    DeviceNotFound,
    /// The device exists but is not usable now.
    DeviceNotActive,
}

/// A failed command: its class and QEMU's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QmpError {
    /// The class clients branch on.
    pub class: ErrorClass,
    /// The human-readable text.
    pub desc: String,
}

impl QmpError {
    /// A GenericError.
    pub fn generic(desc: impl Into<String>) -> QmpError {
        QmpError {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }

    /// An error of another class.
    pub fn new(class: ErrorClass, desc: impl Into<String>) -> QmpError {
        QmpError {
            class,
            desc: desc.into(),
        }
    }

    /// The error response, with the request's id.
    pub fn to_response(&self, id: Option<Value>) -> Value {
        let class = format!("{:?}", self.class);
        respond(json!({"class": class, "desc": self.desc}), "error", id)
    }
}

impl From<::block::Error> for QmpError {
    fn from(e: ::block::Error) -> QmpError {
        QmpError::generic(e.to_string())
    }
}

/// What a command returns.
pub type CmdResult = Result<Value, QmpError>;

type Handler = fn(Args) -> LocalBoxFuture<'static, CmdResult>;

/// The command table (QEMU's generated qmp_init_marshal): name and handler.
static COMMANDS: &[(&str, Handler)] = &[
    ("query-version", |a| Box::pin(machine::query_version(a))),
    ("query-commands", |a| Box::pin(machine::query_commands(a))),
    ("query-status", |a| Box::pin(machine::query_status(a))),
    ("stop", |a| Box::pin(machine::stop(a))),
    ("cont", |a| Box::pin(machine::cont(a))),
    ("system_reset", |a| Box::pin(machine::system_reset(a))),
    ("quit", |a| Box::pin(machine::quit(a))),
    ("human-monitor-command", |a| {
        Box::pin(super::hmp::human_monitor_command(a))
    }),
    ("query-block", |a| Box::pin(block_query::query_block(a))),
    ("query-named-block-nodes", |a| {
        Box::pin(block_query::query_named_block_nodes(a))
    }),
    ("query-blockstats", |a| {
        Box::pin(block_stats::query_blockstats(a))
    }),
    ("object-add", |a| Box::pin(objects::object_add(a))),
    ("device_add", |a| Box::pin(devices::device_add(a))),
    ("device_del", |a| Box::pin(devices::device_del(a))),
    ("x-debug-query-block-graph", |a| {
        Box::pin(block_graph::x_debug_query_block_graph(a))
    }),
    ("query-block-jobs", |a| Box::pin(jobs::query_block_jobs(a))),
    ("query-jobs", |a| Box::pin(jobs::query_jobs(a))),
    ("block-stream", |a| Box::pin(jobs::block_stream(a))),
    ("block-commit", |a| Box::pin(jobs::block_commit(a))),
    ("blockdev-mirror", |a| Box::pin(jobs::blockdev_mirror(a))),
    ("drive-mirror", |a| Box::pin(jobs::drive_mirror(a))),
    ("blockdev-backup", |a| Box::pin(backup::blockdev_backup(a))),
    ("drive-backup", |a| Box::pin(backup::drive_backup(a))),
    ("blockdev-add", |a| Box::pin(block::blockdev_add(a))),
    ("blockdev-create", |a| Box::pin(create::blockdev_create(a))),
    ("blockdev-del", |a| Box::pin(block::blockdev_del(a))),
    ("blockdev-reopen", |a| Box::pin(reopen::blockdev_reopen(a))),
    ("block_resize", |a| Box::pin(block::block_resize(a))),
    ("blockdev-snapshot-sync", |a| {
        Box::pin(block::blockdev_snapshot_sync(a))
    }),
    ("blockdev-snapshot", |a| {
        Box::pin(block::blockdev_snapshot(a))
    }),
    ("block-dirty-bitmap-add", |a| Box::pin(bitmaps::add(a))),
    ("block-dirty-bitmap-remove", |a| {
        Box::pin(bitmaps::remove(a))
    }),
    ("block-dirty-bitmap-clear", |a| Box::pin(bitmaps::clear(a))),
    ("block-dirty-bitmap-enable", |a| {
        Box::pin(bitmaps::enable(a))
    }),
    ("block-dirty-bitmap-disable", |a| {
        Box::pin(bitmaps::disable(a))
    }),
    ("block-dirty-bitmap-merge", |a| Box::pin(bitmaps::merge(a))),
    ("x-debug-block-dirty-bitmap-sha256", |a| {
        Box::pin(bitmaps::sha256(a))
    }),
    ("transaction", |a| Box::pin(transaction::transaction(a))),
    ("nbd-server-start", |a| {
        Box::pin(exports::nbd_server_start(a))
    }),
    ("nbd-server-stop", |a| Box::pin(exports::nbd_server_stop(a))),
    ("nbd-server-add", |a| Box::pin(exports::nbd_server_add(a))),
    ("nbd-server-remove", |a| {
        Box::pin(exports::nbd_server_remove(a))
    }),
    ("block-export-add", |a| {
        Box::pin(exports::block_export_add(a))
    }),
    ("block-export-del", |a| {
        Box::pin(exports::block_export_del(a))
    }),
    ("query-block-exports", |a| {
        Box::pin(exports::query_block_exports(a))
    }),
];

/// The names of every command, `qmp_capabilities` included (for query-commands).
pub fn command_names() -> impl Iterator<Item = &'static str> {
    std::iter::once("qmp_capabilities")
        .chain(COMMANDS.iter().map(|(n, _)| *n))
        .chain(jobs::JOB_VERBS.iter().map(|(n, _, _)| *n))
}

/// The greeting a client gets on connecting.
pub fn greeting() -> Value {
    json!({"QMP": {"version": machine::version_info(), "capabilities": []}})
}

fn respond(value: Value, key: &str, id: Option<Value>) -> Value {
    let mut msg = Map::new();
    msg.insert(key.to_string(), value);
    if let Some(id) = id {
        msg.insert("id".into(), id);
    }
    Value::Object(msg)
}

/// Checks a request's shape (qmp_dispatch_check_obj) and splits it into name and arguments.
fn check_request(request: Map<String, Value>) -> Result<(String, Map<String, Value>), QmpError> {
    let mut name = None;
    let mut arguments = Map::new();
    for (key, value) in request {
        match (key.as_str(), value) {
            ("execute", Value::String(s)) => name = Some(s),
            ("execute", _) => {
                return Err(QmpError::generic(
                    "QMP input member 'execute' must be a string",
                ))
            }
            ("arguments", Value::Object(a)) => arguments = a,
            ("arguments", _) => {
                return Err(QmpError::generic(
                    "QMP input member 'arguments' must be an object",
                ))
            }
            ("id", _) => {}
            (other, _) => {
                return Err(QmpError::generic(format!(
                    "QMP input member '{other}' is unexpected"
                )))
            }
        }
    }
    let name = name.ok_or_else(|| QmpError::generic("QMP input lacks member 'execute'"))?;
    Ok((name, arguments))
}

/// Runs one request and returns the reply (qmp_dispatch), on the main loop.
pub async fn dispatch(session: &Session, request: Value) -> Value {
    let Value::Object(mut request) = request else {
        return QmpError::generic("QMP input must be a JSON object").to_response(None);
    };
    let id = request.remove("id");
    let result = match check_request(request) {
        Ok((name, arguments)) => {
            trace!(
                monitor_qmp_cmd_in_band,
                "{}",
                id.as_ref().map(Value::to_string).unwrap_or_default()
            );
            ::block::jobs::JobManager::current().settled().await;
            run(session, &name, Args::new(arguments)).await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(value) => respond(value, "return", id),
        Err(e) => e.to_response(id),
    }
}

async fn run(session: &Session, name: &str, args: Args) -> CmdResult {
    if name == "qmp_capabilities" {
        if session.negotiated() {
            return Err(QmpError::new(
                ErrorClass::CommandNotFound,
                "Capabilities negotiation is already complete, command ignored",
            ));
        }
        machine::qmp_capabilities(args)?;
        session.set_negotiated();
        return Ok(json!({}));
    }
    if !session.negotiated() {
        return Err(QmpError::new(
            ErrorClass::CommandNotFound,
            "Expecting capabilities negotiation with 'qmp_capabilities'",
        ));
    }
    match COMMANDS.iter().find(|(n, _)| *n == name) {
        Some((_, handler)) => handler(args).await,
        None if jobs::JOB_VERBS.iter().any(|(n, _, _)| *n == name) => {
            jobs::run_job_verb(name, args).await
        }
        None => Err(QmpError::new(
            ErrorClass::CommandNotFound,
            format!("The command {name} has not been found"),
        )),
    }
}

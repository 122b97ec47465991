//! Block job commands and events: block-stream, block-commit, drive-/blockdev-mirror,
//! drive-/blockdev-backup, block-job-* and job-*, query-block-jobs and query-jobs, and the
//! job events (QEMU's blockdev.c qmp_block_stream & co., blockdev.c/job-qmp.c's job
//! commands, and the JOB_STATUS_CHANGE / BLOCK_JOB_* emitters). The jobs themselves are
//! the block layer's ([`block::jobs`]); this module turns QMP arguments into their options
//! and their events into QMP events.

use std::cell::Cell;
use std::rc::Rc;

use block::jobs::backup::{backup_start, BackupOptions};
use block::jobs::commit::{commit_start, CommitOptions};
use block::jobs::mirror::{commit_active_start, mirror_start, CopyMode, MirrorOptions, SyncMode};
use block::jobs::stream::{stream_start, StreamOptions};
use block::jobs::{BlockJobEventInfo, CommonOptions, Job, JobEvent, JobFlags, JobManager, OnError};
use block::{BlockDriverState, OpenFlags, Options};
use serde_json::{json, Value};

use super::block::lookup_bs;
use super::{Args, CmdResult, ErrorClass, QmpError};
use crate::monitor::events::emit;
use crate::tools::qemu_img::create::{img_create, ImgCreate};

thread_local! {
    static SUBSCRIBED: Cell<bool> = const { Cell::new(false) };
}

/// The fields BLOCK_JOB_READY/COMPLETED/CANCELLED share.
fn event_fields(i: &BlockJobEventInfo) -> serde_json::Map<String, Value> {
    let v = json!({"type": i.job_type.name(), "device": i.device, "len": i.len,
                   "offset": i.offset, "speed": i.speed});
    v.as_object().cloned().unwrap_or_default()
}

/// Emits a job event as QMP's event (qapi_event_send_job_status_change, block_job_event_*).
fn emit_job_event(e: &JobEvent) {
    let data = match e {
        JobEvent::StatusChange { id, status } => json!({"id": id, "status": status.name()}),
        JobEvent::Ready(i) | JobEvent::Cancelled(i) => Value::Object(event_fields(i)),
        JobEvent::Completed { info, error } => {
            let mut m = event_fields(info);
            if let Some(msg) = error {
                m.insert("error".into(), json!(msg));
            }
            Value::Object(m)
        }
        JobEvent::Error {
            device,
            operation,
            action,
        } => {
            json!({"device": device, "operation": operation.name(), "action": action.name()})
        }
        JobEvent::Pending { job_type, id } => json!({"type": job_type.name(), "id": id}),
    };
    emit(e.name(), Some(data));
}

/// The monitor listens to the job events from the first job it starts on.
fn subscribe_events() {
    if !SUBSCRIBED.with(|s| s.replace(true)) {
        JobManager::current().subscribe(Rc::new(emit_job_event));
    }
}

/// job-id, speed, auto-finalize, auto-dismiss; a block job's id defaults to its device.
fn common(args: &mut Args, device: &str) -> Result<CommonOptions, QmpError> {
    let job_id = args
        .opt_str("job-id")?
        .unwrap_or_else(|| device.to_string());
    Ok(CommonOptions {
        job_id: Some(job_id),
        speed: args.opt_int("speed")?.unwrap_or(0),
        flags: JobFlags {
            manual_finalize: !args.opt_bool("auto-finalize")?.unwrap_or(true),
            manual_dismiss: !args.opt_bool("auto-dismiss")?.unwrap_or(true),
        },
    })
}

fn on_error(args: &mut Args, key: &str) -> Result<OnError, QmpError> {
    Ok(match args.opt_str(key)? {
        Some(v) => OnError::parse(&v)?,
        None => OnError::Report,
    })
}

fn sync_mode(args: &mut Args) -> Result<SyncMode, QmpError> {
    let sync = args
        .opt_str("sync")?
        .ok_or_else(|| QmpError::generic("Parameter 'sync' is missing"))?;
    Ok(SyncMode::parse(&sync)?)
}

/// The node a command's `device` names, with the device's name for the job id.
fn device(args: &mut Args) -> Result<(String, Rc<BlockDriverState>), QmpError> {
    let device = args.str("device")?;
    let bs = lookup_bs(Some(&device), Some(&device))?;
    Ok((device, bs))
}

/// A node in `top`'s backing chain named by `node` (a node name) or `file` (a filename).
fn chain_node(
    top: &Rc<BlockDriverState>,
    node: Option<String>,
    file: Option<String>,
) -> Result<Option<Rc<BlockDriverState>>, QmpError> {
    let mut bs = top.backing();
    while let Some(b) = bs {
        if node.as_deref() == Some(b.node_name()) || file.as_deref() == Some(&b.filename()) {
            return Ok(Some(b));
        }
        bs = b.backing();
    }
    match (node, file) {
        (None, None) => Ok(None),
        (Some(n), _) => Err(QmpError::generic(format!(
            "Node '{n}' is not a backing image of '{}'",
            top.node_name()
        ))),
        (None, Some(f)) => Err(QmpError::generic(format!(
            "Can't find '{f}' in the backing chain"
        ))),
    }
}

fn started(job: Rc<Job>) -> CmdResult {
    drop(job);
    Ok(json!({}))
}

/// `block-stream`.
pub async fn block_stream(mut args: Args) -> CmdResult {
    subscribe_events();
    let (dev, bs) = device(&mut args)?;
    let common = common(&mut args, &dev)?;
    let base = chain_node(&bs, args.opt_str("base-node")?, args.opt_str("base")?)?;
    let opts = StreamOptions {
        common,
        base,
        backing_file: args.opt_str("backing-file")?,
        on_error: on_error(&mut args, "on-error")?,
    };
    args.opt_str("filter-node-name")?;
    args.finish()?;
    started(stream_start(&bs, opts)?)
}

/// `block-commit`: intermediate, or active when top is the device's active layer.
pub async fn block_commit(mut args: Args) -> CmdResult {
    subscribe_events();
    let (dev, active) = device(&mut args)?;
    let common = common(&mut args, &dev)?;
    let top_node = args.opt_str("top-node")?;
    let top_file = args.opt_str("top")?;
    // No top named, or the active layer named: an active commit.
    let top = if (top_node.is_none() && top_file.is_none())
        || top_node.as_deref() == Some(active.node_name())
        || top_file.as_deref() == Some(&active.filename())
    {
        active.clone()
    } else {
        chain_node(&active, top_node, top_file)?.expect("named")
    };
    let base = match chain_node(&top, args.opt_str("base-node")?, args.opt_str("base")?)? {
        Some(b) => b,
        None => bottom_of_chain(&top)
            .ok_or_else(|| QmpError::generic("Top image has no backing file to commit into"))?,
    };
    let filter_node_name = args.opt_str("filter-node-name")?;
    let on_error = on_error(&mut args, "on-error")?;
    let backing_file = args.opt_str("backing-file")?;
    args.finish()?;
    if Rc::ptr_eq(&top, &active) {
        return started(
            commit_active_start(&active, &base, common, filter_node_name, on_error).await?,
        );
    }
    let opts = CommitOptions {
        common,
        backing_file,
        filter_node_name,
        on_error,
    };
    started(commit_start(&active, &top, &base, opts).await?)
}

fn bottom_of_chain(top: &Rc<BlockDriverState>) -> Option<Rc<BlockDriverState>> {
    let mut bs = top.backing()?;
    while let Some(b) = bs.backing() {
        bs = b;
    }
    Some(bs)
}

fn mirror_options(args: &mut Args, common: CommonOptions) -> Result<MirrorOptions, QmpError> {
    let copy_mode = match args.opt_str("copy-mode")?.as_deref() {
        None | Some("background") => CopyMode::Background,
        Some("write-blocking") => CopyMode::WriteBlocking,
        Some(v) => return Err(QmpError::generic(format!("Invalid parameter '{v}'"))),
    };
    let replaces = match args.opt_str("replaces")? {
        Some(name) => Some(
            block::graph::find_node(&name)
                .ok_or_else(|| QmpError::generic(format!("Cannot find node {name}")))?,
        ),
        None => None,
    };
    Ok(MirrorOptions {
        common,
        sync: sync_mode(args)?,
        granularity: args.opt_int("granularity")?.unwrap_or(0) as u64,
        buf_size: args.opt_int("buf-size")?.unwrap_or(0) as u64,
        copy_mode,
        replaces,
        filter_node_name: args.opt_str("filter-node-name")?,
        on_source_error: on_error(args, "on-source-error")?,
        on_target_error: on_error(args, "on-target-error")?,
    })
}

/// `blockdev-mirror`.
pub async fn blockdev_mirror(mut args: Args) -> CmdResult {
    subscribe_events();
    let (dev, bs) = device(&mut args)?;
    let target = target_node(&mut args)?;
    let common = common(&mut args, &dev)?;
    let opts = mirror_options(&mut args, common)?;
    args.finish()?;
    started(mirror_start(&bs, &target, opts).await?)
}

fn target_node(args: &mut Args) -> Result<Rc<BlockDriverState>, QmpError> {
    let name = args.str("target")?;
    block::graph::find_node(&name).ok_or_else(|| {
        QmpError::new(
            ErrorClass::DeviceNotFound,
            format!("Cannot find node {name}"),
        )
    })
}

/// Creates (mode absolute-paths) or opens (mode existing) the target file of drive-mirror
/// and drive-backup, backed like the source for sync=top.
async fn drive_target(
    args: &mut Args,
    bs: &Rc<BlockDriverState>,
    sync: SyncMode,
) -> Result<Rc<BlockDriverState>, QmpError> {
    let file = args.str("target")?;
    let format = args
        .opt_str("format")?
        .unwrap_or_else(|| bs.format_name().to_string());
    let backing = bs.backing().filter(|_| sync == SyncMode::Top);
    match args.opt_str("mode")?.as_deref() {
        Some("existing") => {}
        None | Some("absolute-paths") => {
            let req = ImgCreate {
                filename: file.clone(),
                fmt: format.clone(),
                backing: backing.as_ref().map(|b| b.filename()),
                backing_fmt: backing.as_ref().map(|b| b.format_name().to_string()),
                options: None,
                size: Some(bs.getlength()),
                unsafe_backing: true,
                quiet: true,
            };
            img_create(&req).await.map_err(QmpError::generic)?;
        }
        Some(other) => {
            return Err(QmpError::generic(format!(
                "Parameter 'mode' does not accept value '{other}'"
            )))
        }
    }
    let mut options = Options::new();
    options.set("driver", format);
    if let Some(name) = args.opt_str("node-name")? {
        options.set("node-name", name);
    }
    // The target shares the source's backing node rather than opening the backing file a
    // second time (QEMU opens it with BDRV_O_NO_BACKING and links the node): a second open
    // of a file that is in use fails on its image lock.
    options.set("backing", "null");
    let target = block::bdrv_open(Some(&file), options, OpenFlags::default()).await?;
    if let Some(backing) = backing {
        target.attach_child("backing", backing);
    }
    Ok(target)
}

/// `drive-mirror`.
pub async fn drive_mirror(mut args: Args) -> CmdResult {
    subscribe_events();
    let (dev, bs) = device(&mut args)?;
    let common = common(&mut args, &dev)?;
    let opts = mirror_options(&mut args, common)?;
    let target = drive_target(&mut args, &bs, opts.sync).await?;
    args.opt_bool("unmap")?;
    args.finish()?;
    started(mirror_start(&bs, &target, opts).await?)
}

fn backup_options(args: &mut Args, common: CommonOptions) -> Result<BackupOptions, QmpError> {
    let opts = BackupOptions {
        common,
        sync: sync_mode(args)?,
        filter_node_name: args.opt_str("filter-node-name")?,
        on_source_error: on_error(args, "on-source-error")?,
        on_target_error: on_error(args, "on-target-error")?,
    };
    if args.opt_str("bitmap")?.is_some() {
        return Err(QmpError::generic(
            "backup with a bitmap needs dirty bitmaps, which are not supported yet",
        ));
    }
    args.opt_bool("compress")?;
    Ok(opts)
}

/// `blockdev-backup`.
pub async fn blockdev_backup(mut args: Args) -> CmdResult {
    subscribe_events();
    let (dev, bs) = device(&mut args)?;
    let target = target_node(&mut args)?;
    let common = common(&mut args, &dev)?;
    let opts = backup_options(&mut args, common)?;
    args.finish()?;
    started(backup_start(&bs, &target, opts).await?)
}

/// `drive-backup`.
pub async fn drive_backup(mut args: Args) -> CmdResult {
    subscribe_events();
    let (dev, bs) = device(&mut args)?;
    let common = common(&mut args, &dev)?;
    let opts = backup_options(&mut args, common)?;
    let target = drive_target(&mut args, &bs, opts.sync).await?;
    args.finish()?;
    started(backup_start(&bs, &target, opts).await?)
}

/// The job `block-job-*` names by `device` (its id), with QEMU's DeviceNotActive error.
fn block_job(args: &mut Args) -> Result<Rc<Job>, QmpError> {
    let id = args.str("device")?;
    JobManager::current().find(&id).ok_or_else(|| {
        QmpError::new(
            ErrorClass::DeviceNotActive,
            format!("Block job '{id}' not found"),
        )
    })
}

/// The job `job-*` names by `id`.
fn job(args: &mut Args) -> Result<Rc<Job>, QmpError> {
    let id = args.str("id")?;
    Ok(JobManager::current().find_job(&id)?)
}

/// Runs `verb` on the job a `block-job-*` (by device) or `job-*` (by id) command names.
async fn job_verb(
    mut args: Args,
    by_device: bool,
    verb: fn(&Rc<Job>, &mut Args) -> block::Result<()>,
) -> CmdResult {
    let j = if by_device {
        block_job(&mut args)?
    } else {
        job(&mut args)?
    };
    verb(&j, &mut args)?;
    args.finish()?;
    Ok(json!({}))
}

/// What a job command does to the job it names.
pub type JobVerb = fn(&Rc<Job>, &mut Args) -> block::Result<()>;

/// The job commands, for the command table: name, by device (block-job-*) or id (job-*),
/// and what they do.
pub const JOB_VERBS: &[(&str, bool, JobVerb)] = &[
    ("block-job-set-speed", true, |j, a| {
        j.set_speed(a.int("speed").unwrap_or(-1))
    }),
    ("block-job-cancel", true, |j, a| {
        j.user_cancel(a.opt_bool("force").ok().flatten().unwrap_or(false))
    }),
    ("block-job-pause", true, |j, _| j.user_pause()),
    ("block-job-resume", true, |j, _| j.user_resume()),
    ("block-job-complete", true, |j, _| j.user_complete()),
    ("block-job-finalize", false, |j, _| j.user_finalize()),
    ("block-job-dismiss", false, |j, _| j.user_dismiss()),
    ("job-cancel", false, |j, _| j.user_cancel(true)),
    ("job-pause", false, |j, _| j.user_pause()),
    ("job-resume", false, |j, _| j.user_resume()),
    ("job-complete", false, |j, _| j.user_complete()),
    ("job-finalize", false, |j, _| j.user_finalize()),
    ("job-dismiss", false, |j, _| j.user_dismiss()),
];

/// Runs the job command `name` (one of [`JOB_VERBS`]).
pub async fn run_job_verb(name: &str, args: Args) -> CmdResult {
    let (_, by_device, verb) = JOB_VERBS
        .iter()
        .find(|(n, _, _)| *n == name)
        .ok_or_else(|| {
            QmpError::new(
                ErrorClass::CommandNotFound,
                format!("The command {name} has not been found"),
            )
        })?;
    job_verb(args, *by_device, *verb).await
}

/// `query-block-jobs`.
pub async fn query_block_jobs(args: Args) -> CmdResult {
    args.finish()?;
    let jobs: Vec<Value> = JobManager::current()
        .query_block_jobs()
        .into_iter()
        .map(|i| {
            let mut v = json!({"type": i.job_type.name(), "device": i.device, "len": i.len,
                "offset": i.offset, "busy": i.busy, "paused": i.paused, "speed": i.speed,
                "io-status": i.io_status.name(), "ready": i.ready, "status": i.status.name(),
                "auto-finalize": i.auto_finalize, "auto-dismiss": i.auto_dismiss});
            if let Some(e) = i.error {
                v["error"] = json!(e);
            }
            v
        })
        .collect();
    Ok(Value::Array(jobs))
}

/// `query-jobs`.
pub async fn query_jobs(args: Args) -> CmdResult {
    args.finish()?;
    let jobs: Vec<Value> = JobManager::current()
        .query_jobs()
        .into_iter()
        .map(|i| {
            let mut v = json!({"id": i.id, "type": i.job_type.name(), "status": i.status.name(),
                "current-progress": i.current_progress, "total-progress": i.total_progress});
            if let Some(e) = i.error {
                v["error"] = json!(e);
            }
            v
        })
        .collect();
    Ok(Value::Array(jobs))
}

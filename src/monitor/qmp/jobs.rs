//! Block job commands and events: block-stream, block-commit, drive-/blockdev-mirror,
//! block-job-* and job-* (drive-/blockdev-backup are [`super::backup`]'s), query-block-jobs and query-jobs, and the
//! job events (QEMU's blockdev.c qmp_block_stream & co., blockdev.c/job-qmp.c's job
//! commands, and the JOB_STATUS_CHANGE / BLOCK_JOB_* emitters). The jobs themselves are
//! the block layer's ([`block::jobs`]); this module turns QMP arguments into their options
//! and their events into QMP events.

use std::cell::Cell;
use std::rc::Rc;

use block::jobs::commit::{commit_start, CommitOptions};
use block::jobs::mirror::{
    commit_active_start, mirror_start, BackingMode, CopyMode, MirrorOptions, SyncMode,
};
use block::jobs::stream::{stream_start, StreamOptions};
use block::jobs::{BlockJobEventInfo, CommonOptions, Job, JobEvent, JobFlags, JobManager, OnError};
use block::{BlockDriverState, OpenFlags, Options};
use serde_json::{json, Value};

use super::block::lookup_bs;
use super::chain;
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
pub(super) fn subscribe_events() {
    if !SUBSCRIBED.with(|s| s.replace(true)) {
        JobManager::current().subscribe(Rc::new(emit_job_event));
    }
}

/// job-id, speed, auto-finalize, auto-dismiss; a block job's id defaults to its device's
/// name, which a node that is not a device's root does not have (so the id is refused).
pub(super) fn common(args: &mut Args, device: &str) -> Result<CommonOptions, QmpError> {
    let is_device = crate::drives::named_backends()
        .iter()
        .any(|(n, _)| n == device);
    let job_id = args.opt_str("job-id")?.unwrap_or_else(|| {
        if is_device {
            device.to_string()
        } else {
            String::new()
        }
    });
    let speed = args.opt_int("speed")?.unwrap_or(0);
    if speed < 0 {
        return Err(QmpError::generic(
            "Parameter 'speed' expects a non-negative value",
        ));
    }
    Ok(CommonOptions {
        job_id: Some(job_id),
        speed,
        flags: JobFlags {
            manual_finalize: !args.opt_bool("auto-finalize")?.unwrap_or(true),
            manual_dismiss: !args.opt_bool("auto-dismiss")?.unwrap_or(true),
        },
        txn: None,
    })
}

pub(super) fn on_error(args: &mut Args, key: &str) -> Result<OnError, QmpError> {
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

/// The node a command's `device` names, with the name of the drive above it for the
/// default job id (bdrv_get_device_name: empty for a node no drive uses, which then needs
/// an explicit job-id).
pub(super) fn device(args: &mut Args) -> Result<(String, Rc<BlockDriverState>), QmpError> {
    let device = args.str("device")?;
    let bs = lookup_bs(Some(&device), Some(&device))?;
    let name = crate::drives::named_backends()
        .into_iter()
        .find(|(_, blk)| Rc::ptr_eq(&blk.bs(), &bs))
        .map(|(name, _)| name)
        .unwrap_or_default();
    Ok((name, bs))
}

pub(super) fn started(job: Rc<Job>) -> CmdResult {
    drop(job);
    Ok(json!({}))
}

/// `block-stream`.
pub async fn block_stream(mut args: Args) -> CmdResult {
    subscribe_events();
    let (dev, bs) = device(&mut args)?;
    let range = chain::stream_range(&bs, &mut args)?;
    let common = common(&mut args, &dev)?;
    let opts = StreamOptions {
        common,
        base: range.base,
        bottom: range.bottom,
        filter_node_name: args.opt_str("filter-node-name")?,
        backing_file: args.opt_str("backing-file")?,
        on_error: on_error(&mut args, "on-error")?,
    };
    args.finish()?;
    started(stream_start(&bs, opts).await?)
}

/// `block-commit`: intermediate, or active when top is the device's active layer.
pub async fn block_commit(mut args: Args) -> CmdResult {
    subscribe_events();
    let device_name = args.str("device")?;
    let active = lookup_bs(Some(&device_name), Some(&device_name)).map_err(|_| {
        QmpError::new(
            ErrorClass::DeviceNotFound,
            format!("Device '{device_name}' not found"),
        )
    })?;
    let dev = device_name;
    // No top named, or the active layer named: an active commit.
    let (top, base) = chain::commit_range(&active, &mut args)?;
    let common = common(&mut args, &dev)?;
    let filter_node_name = args.opt_str("filter-node-name")?;
    let on_error = on_error(&mut args, "on-error")?;
    let backing_file = args.opt_str("backing-file")?;
    args.finish()?;
    // The device's own layer, whatever filters sit above it, is committed actively, from
    // the top named (which a filter above may keep pointing at the base afterwards).
    if Rc::ptr_eq(&top.skip_filters(), &active.skip_filters()) {
        return started(
            commit_active_start(&top, &base, common, filter_node_name, on_error).await?,
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
        zero_target: false,
        backing_mode: BackingMode::Leave,
    })
}

/// `blockdev-mirror`.
pub async fn blockdev_mirror(mut args: Args) -> CmdResult {
    subscribe_events();
    let (dev, bs) = device(&mut args)?;
    let target = target_node(&mut args)?;
    let common = common(&mut args, &dev)?;
    let mut opts = mirror_options(&mut args, common)?;
    opts.zero_target = opts.sync == SyncMode::Full;
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

/// The node a new drive-mirror or drive-backup target image is backed by: the source's
/// backing node for sync=top, the source itself for sync=none (whose unwritten areas the
/// target leaves to it), none for sync=full.
pub(super) fn target_backing(
    bs: &Rc<BlockDriverState>,
    sync: SyncMode,
) -> Option<Rc<BlockDriverState>> {
    match sync {
        SyncMode::Full => None,
        SyncMode::Top => bs.backing(),
        SyncMode::None => Some(bs.clone()),
    }
}

/// Creates (mode absolute-paths) or opens (mode existing) the target file of drive-mirror
/// and drive-backup, a new one naming `backing` as its backing file; says whether it
/// existed. The target is opened without a backing file; with `link`, `backing` becomes
/// its backing node at once (drive-backup), else the mirror job settles it on completion.
pub(super) async fn drive_target(
    args: &mut Args,
    bs: &Rc<BlockDriverState>,
    backing: Option<Rc<BlockDriverState>>,
    link: bool,
) -> Result<(Rc<BlockDriverState>, bool), QmpError> {
    let file = args.str("target")?;
    let format = args.opt_str("format")?;
    let mode = args.opt_str("mode")?;
    // An existing image without a format named is probed, a new one gets the source's.
    let format = match (format, mode.as_deref()) {
        (Some(f), _) => Some(f),
        (None, Some("existing")) => None,
        (None, _) => Some(bs.format_name().to_string()),
    };
    let existing = match mode.as_deref() {
        Some("existing") => true,
        None | Some("absolute-paths") => {
            let req = ImgCreate {
                filename: file.clone(),
                fmt: format.clone().unwrap_or_default(),
                backing: backing.as_ref().map(|b| b.filename()),
                backing_fmt: backing.as_ref().map(|b| b.format_name().to_string()),
                options: None,
                size: Some(bs.getlength()),
                unsafe_backing: true,
                quiet: true,
            };
            img_create(&req).await.map_err(QmpError::generic)?;
            false
        }
        Some(other) => {
            return Err(QmpError::generic(format!(
                "Parameter 'mode' does not accept value '{other}'"
            )))
        }
    };
    let mut options = Options::new();
    if let Some(f) = &format {
        options.set("driver", f.clone());
    }
    if let Some(name) = args.opt_str("node-name")? {
        options.set("node-name", name);
    }
    // A format target shares the source's backing node rather than opening the backing
    // file a second time (QEMU opens it with BDRV_O_NO_BACKING and links the node): a second
    // open of a file that is in use fails on its image lock. The flag, unlike a `backing`
    // option, is no error for a format without backing files (raw) or a protocol target.
    let is_format = format
        .as_deref()
        .and_then(block::registry::find_driver)
        .is_some_and(|d| d.is_format);
    let flags = OpenFlags {
        no_backing: is_format,
        ..OpenFlags::default()
    };
    let target = block::bdrv_open(Some(&file), options, flags).await?;
    if let (Some(backing), true, true) = (backing, is_format, link) {
        target.attach_child("backing", backing);
    }
    Ok((target, existing))
}

/// `drive-mirror`.
pub async fn drive_mirror(mut args: Args) -> CmdResult {
    subscribe_events();
    let (dev, bs) = device(&mut args)?;
    let common = common(&mut args, &dev)?;
    let mut opts = mirror_options(&mut args, common)?;
    let backing = target_backing(&bs, opts.sync);
    let (target, existing) = drive_target(&mut args, &bs, backing, false).await?;
    opts.backing_mode = if existing {
        BackingMode::Open
    } else {
        BackingMode::Source
    };
    opts.zero_target =
        opts.sync == SyncMode::Full && (existing || !target.drv().has_zero_init(&target));
    args.opt_bool("unmap")?;
    args.finish()?;
    started(mirror_start(&bs, &target, opts).await?)
}

/// The job `block-job-*` names by `device` (its id), with QEMU's DeviceNotActive error.
fn block_job(args: &mut Args) -> Result<Rc<Job>, QmpError> {
    let id = args.str("device")?;
    find_block_job(&id)
}

/// The block job `id` names: a job that is not a block job is not found (find_block_job).
fn find_block_job(id: &str) -> Result<Rc<Job>, QmpError> {
    let found = JobManager::current().find(id);
    found
        .filter(|j| j.job_type().is_block_job())
        .ok_or_else(|| {
            QmpError::new(
                ErrorClass::DeviceNotActive,
                format!("Block job '{id}' not found"),
            )
        })
}

/// The job `job-*` names by `id`; `block-job-finalize`/`-dismiss` name a block job by
/// `id` too, and miss it with DeviceNotActive (find_block_job).
fn job(args: &mut Args, block: bool) -> Result<Rc<Job>, QmpError> {
    let id = args.str("id")?;
    if block {
        return find_block_job(&id);
    }
    Ok(JobManager::current().find_job(&id)?)
}

/// Runs `verb` on the job a `block-job-*` (by device) or `job-*` (by id) command names.
async fn job_verb(
    mut args: Args,
    name: &str,
    by_device: bool,
    verb: fn(&Rc<Job>, &mut Args) -> block::Result<()>,
) -> CmdResult {
    let j = if by_device {
        block_job(&mut args)?
    } else {
        job(&mut args, name.starts_with("block-job-"))?
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
    job_verb(args, name, *by_device, *verb).await
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

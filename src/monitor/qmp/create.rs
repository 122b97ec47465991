//! `blockdev-create`: creating an image as a background job — a host file by name, or a
//! qcow2 image on a node opened before (QEMU's block/create.c qmp_blockdev_create, and the
//! BlockdevCreateOptions each driver's bdrv_co_create takes).
//!
//! The arguments are checked when the command runs, as QAPI checks them; the creation itself
//! is the job's work, so its failure is the job's error, seen in query-jobs. The job is not
//! a block job (no BLOCK_JOB_* events) and waits for job-dismiss.

use std::rc::Rc;

use async_trait::async_trait;
use block::jobs::{Job, JobDriver, JobFlags, JobType};
use block::{Error, Options};
use serde_json::{json, Value};

use super::jobs::subscribe_events;
use super::{Args, CmdResult, QmpError};

/// What to create (the BlockdevCreateOptions union, for the drivers rqemu creates with).
enum CreateTarget {
    /// driver=file: a host file by name.
    File { filename: String },
    /// driver=qcow2: an image on the node `file` names.
    Qcow2 { file: String },
}

/// The creation a job performs: the target and the driver's creation options.
struct CreateJob {
    target: CreateTarget,
    options: Options,
}

/// QAPI's `size`: a non-negative integer.
fn size(args: &mut Args, key: &str) -> Result<Option<u64>, QmpError> {
    match args.opt_int(key)? {
        Some(n) if n < 0 => Err(QmpError::generic(format!(
            "Invalid parameter type for '{key}', expected: integer"
        ))),
        n => Ok(n.map(|n| n as u64)),
    }
}

/// Copies the members `keys` name (QAPI name, creation option name) into `options`.
fn take_members(
    args: &mut Args,
    options: &mut Options,
    keys: &[(&str, &str)],
) -> Result<(), QmpError> {
    for (qapi, opt) in keys {
        match args.opt_value(qapi) {
            None => {}
            Some(Value::String(s)) => options.set(opt, s),
            Some(Value::Bool(b)) => options.set(opt, if b { "on" } else { "off" }),
            Some(Value::Number(n)) if n.as_u64().is_some() => options.set(opt, n.to_string()),
            Some(_) => {
                return Err(QmpError::generic(format!(
                    "Invalid parameter type for '{qapi}'"
                )))
            }
        }
    }
    Ok(())
}

/// The qcow2 members: BlockdevCreateOptionsQcow2 as qcow2's creation options.
fn qcow2_options(args: &mut Args, options: &mut Options) -> Result<CreateTarget, QmpError> {
    let file = match args.opt_value("file") {
        Some(Value::String(name)) => name,
        Some(Value::Object(_)) => {
            return Err(QmpError::generic(
                "blockdev-create: a 'file' given as options is not supported yet; \
                 give the node-name of a node added with blockdev-add",
            ))
        }
        Some(_) => {
            return Err(QmpError::generic(
                "Invalid parameter type for 'file', expected: object",
            ))
        }
        None => return Err(QmpError::generic("Parameter 'file' is missing")),
    };
    for unsupported in ["data-file", "data-file-raw"] {
        if args.opt_value(unsupported).is_some() {
            return Err(QmpError::generic(format!(
                "blockdev-create of qcow2 with '{unsupported}' is not supported yet"
            )));
        }
    }
    if let Some(encrypt) = args.opt_value("encrypt") {
        let Value::Object(m) = encrypt else {
            return Err(QmpError::generic(
                "Invalid parameter type for 'encrypt', expected: object",
            ));
        };
        let keys: Vec<String> = m.keys().cloned().collect();
        let mut enc = Args::new(m);
        for key in keys {
            let opt = format!("encrypt.{key}");
            take_members(&mut enc, options, &[(&key, &opt)])?;
        }
    }
    take_members(
        args,
        options,
        &[
            ("version", "compat"),
            ("backing-file", "backing_file"),
            ("backing-fmt", "backing_fmt"),
            ("cluster-size", "cluster_size"),
            ("preallocation", "preallocation"),
            ("lazy-refcounts", "lazy_refcounts"),
            ("refcount-bits", "refcount_bits"),
            ("compression-type", "compression_type"),
            ("extended-l2", "extended_l2"),
        ],
    )?;
    Ok(CreateTarget::Qcow2 { file })
}

/// Checks the `options` of blockdev-create and turns them into a creation.
fn create_job(opts: Value) -> Result<CreateJob, QmpError> {
    let Value::Object(m) = opts else {
        return Err(QmpError::generic(
            "Invalid parameter type for 'options', expected: object",
        ));
    };
    let mut args = Args::new(m);
    let driver = args.str("driver")?;
    let mut options = Options::new();
    let size =
        size(&mut args, "size")?.ok_or_else(|| QmpError::generic("Parameter 'size' is missing"))?;
    options.set("size", size.to_string());
    let target = match driver.as_str() {
        "file" => {
            let filename = args.str("filename")?;
            take_members(
                &mut args,
                &mut options,
                &[
                    ("preallocation", "preallocation"),
                    ("nocow", "nocow"),
                    ("extent-size-hint", "extent_size_hint"),
                ],
            )?;
            CreateTarget::File { filename }
        }
        "qcow2" => qcow2_options(&mut args, &mut options)?,
        other if block::registry::find_driver(other).is_some() => {
            return Err(QmpError::generic(format!(
                "blockdev-create with driver '{other}' is not supported by rqemu yet"
            )))
        }
        other => {
            return Err(QmpError::generic(format!(
                "Parameter 'driver' does not accept value '{other}'"
            )))
        }
    };
    args.finish()?;
    Ok(CreateJob { target, options })
}

#[async_trait(?Send)]
impl JobDriver for CreateJob {
    fn job_type(&self) -> JobType {
        JobType::Create
    }

    async fn run(&self, _job: &Rc<Job>) -> block::Result<()> {
        let mut options = self.options.clone();
        match &self.target {
            CreateTarget::File { filename } => {
                let class = block::registry::find_driver("file")
                    .and_then(|c| c.create)
                    .ok_or_else(|| {
                        Error::not_supported("Driver does not support blockdev-create")
                    })?;
                class(filename, &mut options).await
            }
            CreateTarget::Qcow2 { file } => {
                let bs = block::graph::find_node(file).ok_or_else(|| {
                    Error::invalid(format!("Cannot find device='' nor node-name='{file}'"))
                })?;
                formats::qcow2::create::create_on_node(&bs, &mut options).await
            }
        }
    }
}

/// `blockdev-create job-id options`: starts the creation job.
pub async fn blockdev_create(mut args: Args) -> CmdResult {
    subscribe_events();
    let job_id = args.str("job-id")?;
    let opts = args
        .opt_value("options")
        .ok_or_else(|| QmpError::generic("Parameter 'options' is missing"))?;
    args.finish()?;
    let driver = create_job(opts)?;
    let flags = JobFlags {
        manual_finalize: false,
        manual_dismiss: true,
    };
    let job = Job::create(Some(&job_id), Box::new(driver), flags)?;
    job.start();
    Ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qcow2_members_become_creation_options() {
        let job = create_job(json!({"driver": "qcow2", "file": "f", "size": 1048576,
            "version": "v2", "cluster-size": 4096, "lazy-refcounts": false}))
        .unwrap();
        assert!(matches!(job.target, CreateTarget::Qcow2 { ref file } if file == "f"));
        assert_eq!(job.options.get("size"), Some("1048576"));
        assert_eq!(job.options.get("compat"), Some("v2"));
        assert_eq!(job.options.get("cluster_size"), Some("4096"));
        assert_eq!(job.options.get("lazy_refcounts"), Some("off"));
    }

    #[test]
    fn bad_options_fail_when_the_command_runs() {
        let err = |v| create_job(v).err().unwrap().desc;
        assert_eq!(
            err(json!({"driver": "file", "size": 0})),
            "Parameter 'filename' is missing"
        );
        assert_eq!(
            err(json!({"driver": "file", "filename": "x", "size": 0, "bogus": 1})),
            "Parameter 'bogus' is unexpected"
        );
        assert_eq!(
            err(json!({"driver": "nope", "size": 0})),
            "Parameter 'driver' does not accept value 'nope'"
        );
        assert!(
            err(json!({"driver": "qcow2", "size": 0, "file": {"driver": "file"}}))
                .contains("not supported yet")
        );
    }
}

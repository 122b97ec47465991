//! Block jobs over real qcow2 images with the guest's BlockBackend writing meanwhile:
//! stream, intermediate and active commit, mirror (background and write-blocking), backup
//! (full and fleecing), the state machine as QEMU walks it, pause/resume/cancel, manual
//! finalize/dismiss, a failing target, op blockers, permissions and drained sections.

use std::cell::RefCell;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use block::graph::drain::drained_begin;
use block::graph::permissions::{self, Perm};
use block::jobs::backup::{backup_start, BackupOptions};
use block::jobs::commit::{commit_start, CommitOptions};
use block::jobs::mirror::{commit_active_start, mirror_start, CopyMode, MirrorOptions, SyncMode};
use block::jobs::stream::{stream_start, StreamOptions};
use block::jobs::{
    CommonOptions, ErrorAction, IoOperation, JobEvent, JobFlags, JobManager, JobStatus, OnError,
};
use block::{bdrv_open, AioContext, BlockBackend, BlockDriverState, IoVector, OpenFlags, Options};

const MIB: u64 = 1 << 20;

fn rt<T>(f: impl Future<Output = T>) -> T {
    AioContext::current().run_until(f)
}

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        formats::register_all();
        Dir(tempfile::tempdir().unwrap())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    /// Creates a qcow2 image, optionally over a backing file.
    fn qcow2(&self, name: &str, size: u64, backing: Option<&Path>) -> PathBuf {
        let path = self.path(name);
        let class = block::registry::find_driver("qcow2").unwrap();
        let mut o = Options::new();
        o.set("size", size.to_string());
        if let Some(b) = backing {
            o.set("backing_file", b.display().to_string());
            o.set("backing_fmt", "qcow2");
        }
        rt((class.create.unwrap())(path.to_str().unwrap(), &mut o)).unwrap();
        path
    }
}

fn open_node(path: &Path, mut o: Options) -> Rc<BlockDriverState> {
    o.set_default("driver", "qcow2");
    rt(bdrv_open(
        Some(path.to_str().unwrap()),
        o,
        OpenFlags::default(),
    ))
    .unwrap()
}

fn open(path: &Path) -> Rc<BlockBackend> {
    BlockBackend::new(open_node(path, Options::new()))
}

fn pattern(seed: u8, len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i / 512) as u8 ^ seed.wrapping_mul(37))
        .collect()
}

async fn write(blk: &BlockBackend, offset: u64, data: &[u8]) {
    let qiov = IoVector::from_slice(data);
    blk.co_pwritev(offset, &qiov, Default::default())
        .await
        .unwrap();
}

async fn read(blk: &BlockBackend, offset: u64, len: u64) -> Vec<u8> {
    let qiov = IoVector::alloc(len as usize);
    blk.co_preadv(offset, &qiov, Default::default())
        .await
        .unwrap();
    qiov.to_vec()
}

/// Closes a BlockBackend's graph and lets go of it (its image locks with it).
fn close(blk: Rc<BlockBackend>) {
    rt(blk.close()).unwrap();
}

/// Closes a graph that no BlockBackend holds any more.
fn close_node(bs: Rc<BlockDriverState>) {
    close(BlockBackend::new(bs));
}

/// The guest-visible contents of an image, opened afresh.
fn contents(path: &Path) -> Vec<u8> {
    let blk = open(path);
    let len = blk.getlength();
    let data = rt(read(&blk, 0, len));
    close(blk);
    data
}

/// Records the job events of this thread.
struct Recorder(Rc<RefCell<Vec<JobEvent>>>);

impl Recorder {
    fn new() -> Recorder {
        let events = Rc::new(RefCell::new(Vec::new()));
        let sink = events.clone();
        JobManager::current().subscribe(Rc::new(move |e: &JobEvent| {
            sink.borrow_mut().push(e.clone())
        }));
        Recorder(events)
    }

    /// The events in order: JOB_STATUS_CHANGE as the status name, others by QMP name.
    fn names(&self) -> Vec<String> {
        self.0
            .borrow()
            .iter()
            .map(|e| match e {
                JobEvent::StatusChange { status, .. } => status.name().to_string(),
                other => other.name().to_string(),
            })
            .collect()
    }
}

fn common(id: &str) -> CommonOptions {
    CommonOptions {
        job_id: Some(id.to_string()),
        ..CommonOptions::default()
    }
}

const CLEAN_END: [&str; 5] = [
    "waiting",
    "pending",
    "BLOCK_JOB_COMPLETED",
    "concluded",
    "null",
];

#[test]
fn stream_pulls_the_backing_chain_into_the_top_while_the_guest_writes() {
    let dir = Dir::new();
    let base = dir.qcow2("base.qcow2", 4 * MIB, None);
    let top = dir.qcow2("top.qcow2", 4 * MIB, Some(&base));
    let b = open(&base);
    rt(write(&b, 0, &pattern(1, 2 * MIB)));
    close(b);

    let rec = Recorder::new();
    let blk = open(&top);
    rt(async {
        let job = stream_start(
            &blk.bs(),
            StreamOptions {
                common: common("s0"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        write(&blk, MIB, &pattern(2, 64 << 10)).await;
        job.wait_concluded().await.unwrap();
        assert_eq!(job.progress(), (4 * MIB, 4 * MIB));
    });
    let mut expected = pattern(1, 2 * MIB);
    expected[MIB as usize..(MIB + (64 << 10)) as usize].copy_from_slice(&pattern(2, 64 << 10));
    expected.resize(4 * MIB as usize, 0);
    assert!(blk.bs().backing().is_none(), "the chain is dropped");
    assert_eq!(rt(read(&blk, 0, 4 * MIB)), expected);
    close(blk);
    let mut names = vec!["created", "running"];
    names.extend(CLEAN_END);
    assert_eq!(rec.names(), names);
    // The header no longer names a backing file: the image stands alone.
    let reopened = open_node(&top, Options::new());
    assert!(reopened.backing().is_none());
    close_node(reopened);
    assert_eq!(contents(&top), expected);
}

#[test]
fn commit_copies_an_intermediate_layer_into_its_base_and_drops_it() {
    let dir = Dir::new();
    let base = dir.qcow2("base.qcow2", 4 * MIB, None);
    let mid = dir.qcow2("mid.qcow2", 4 * MIB, Some(&base));
    let top = dir.qcow2("top.qcow2", 4 * MIB, Some(&mid));
    for (path, seed, at) in [(&base, 1, 0), (&mid, 2, MIB), (&top, 3, 2 * MIB)] {
        let b = open(path);
        rt(write(&b, at, &pattern(seed, MIB)));
        close(b);
    }
    // The base is opened read-only, as a backing file is: the job makes it writable for
    // its copy and read-only again when done (bdrv_reopen_set_read_only).
    let blk = open(&top);
    let active = blk.bs();
    let mid_bs = active.backing().unwrap();
    let base_bs = mid_bs.backing().unwrap();
    assert!(base_bs.is_read_only());
    let before = rt(read(&blk, 0, 4 * MIB));
    rt(async {
        let job = commit_start(
            &active,
            &mid_bs,
            &base_bs,
            CommitOptions {
                common: common("c0"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(
            active.backing().unwrap().format_name(),
            "commit_top",
            "the filter sits where top's backing link was"
        );
        write(&blk, 3 * MIB, &pattern(4, 4096)).await;
        job.wait_concluded().await.unwrap();
    });
    assert!(Rc::ptr_eq(&active.backing().unwrap(), &base_bs));
    assert!(base_bs.is_read_only(), "the base is read-only again");
    assert!(base_bs.file().unwrap().is_read_only());
    let mut expected = before;
    expected[3 * MIB as usize..(3 * MIB + 4096) as usize].copy_from_slice(&pattern(4, 4096));
    assert_eq!(rt(read(&blk, 0, 4 * MIB)), expected);
    close(blk);
    drop((active, mid_bs, base_bs));
    let reopened = open_node(&top, Options::new());
    assert!(reopened
        .backing()
        .unwrap()
        .filename()
        .ends_with("base.qcow2"));
    close_node(reopened);
    assert_eq!(contents(&top), expected);
    // The base alone holds what mid held.
    assert_eq!(
        &contents(&base)[MIB as usize..2 * MIB as usize],
        &pattern(2, MIB)[..]
    );
}

/// Mirrors a written source to a fresh target, writes more once READY, completes, and
/// checks the pivot and the images.
/// How the guest writes while a mirror copies.
#[derive(Clone, Copy)]
enum GuestWrites {
    /// This many writes, one after another.
    OneByOne(usize),
    /// Rounds of writes in flight all at once, unaligned and overlapping each other and
    /// the areas the job's parallel copies take.
    Concurrent,
}

/// Writes `round` of [`GuestWrites::Concurrent`] and waits for all of it.
async fn concurrent_writes(blk: &Rc<BlockBackend>, round: u8) {
    let ctx = AioContext::current();
    let writes: Vec<_> = (0..24u8)
        .map(|i| {
            let blk = blk.clone();
            let at = (i as u64 * 283 * 1024 + round as u64 * 4097) % (7 * MIB);
            let data = pattern(round * 24 + i + 2, 200 * 1024 + 512);
            ctx.spawn(async move { write(&blk, at, &data).await })
        })
        .collect();
    for w in writes {
        w.await;
    }
}

fn mirror_and_pivot(copy_mode: CopyMode, guest: GuestWrites) {
    let dir = Dir::new();
    let src = dir.qcow2("src.qcow2", 8 * MIB, None);
    let dst = dir.qcow2("dst.qcow2", 8 * MIB, None);
    let rec = Recorder::new();
    let blk = open(&src);
    rt(write(&blk, 0, &pattern(1, 3 * MIB)));
    let source = blk.bs();
    let target = open_node(&dst, Options::new());
    rt(async {
        let opts = MirrorOptions {
            common: common("m0"),
            copy_mode,
            ..Default::default()
        };
        let job = mirror_start(&source, &target, opts).await.unwrap();
        assert_eq!(blk.bs().format_name(), "mirror_top");
        // The guest writes while the copy runs, and after READY.
        match guest {
            GuestWrites::OneByOne(n) => {
                for i in 0..n {
                    let at = (i as u64 * 777 * 4096) % (7 * MIB);
                    write(&blk, at, &pattern(i as u8 + 2, 8192)).await;
                }
            }
            GuestWrites::Concurrent => {
                concurrent_writes(&blk, 0).await;
                concurrent_writes(&blk, 1).await;
            }
        }
        job.wait_status(JobStatus::Ready).await;
        write(&blk, 5 * MIB, &pattern(9, 65536)).await;
        if let GuestWrites::Concurrent = guest {
            concurrent_writes(&blk, 2).await;
        }
        job.user_complete().unwrap();
        job.wait_concluded().await.unwrap();
    });
    assert!(
        Rc::ptr_eq(&blk.bs(), &target),
        "the guest now uses the target"
    );
    let seen = rt(read(&blk, 0, 8 * MIB));
    close(blk);
    drop(target);
    close_node(source);
    assert_eq!(contents(&dst), seen);
    assert_eq!(contents(&src), seen, "source and target compare identical");
    let mut names = vec!["created", "running", "ready", "BLOCK_JOB_READY"];
    names.extend(CLEAN_END);
    assert_eq!(rec.names(), names);
}

#[test]
fn mirror_converges_under_guest_writes_and_pivots_on_complete() {
    mirror_and_pivot(CopyMode::Background, GuestWrites::OneByOne(20));
}

#[test]
fn write_blocking_mirror_copies_guest_writes_synchronously() {
    mirror_and_pivot(CopyMode::WriteBlocking, GuestWrites::OneByOne(40));
}

#[test]
fn mirror_copies_in_parallel_under_concurrent_guest_writes() {
    mirror_and_pivot(CopyMode::Background, GuestWrites::Concurrent);
}

#[test]
fn write_blocking_mirror_keeps_overlapping_copies_apart() {
    mirror_and_pivot(CopyMode::WriteBlocking, GuestWrites::Concurrent);
}

#[test]
fn active_commit_mirrors_the_top_into_its_base_and_pivots() {
    let dir = Dir::new();
    let base = dir.qcow2("base.qcow2", 4 * MIB, None);
    let top = dir.qcow2("top.qcow2", 4 * MIB, Some(&base));
    let b = open(&base);
    rt(write(&b, 0, &pattern(1, 2 * MIB)));
    close(b);
    let rec = Recorder::new();
    let blk = open(&top);
    rt(write(&blk, MIB, &pattern(2, MIB)));
    let active = blk.bs();
    let base_bs = active.backing().unwrap();
    assert!(base_bs.is_read_only());
    rt(async {
        let job = commit_active_start(&active, &base_bs, common("ac"), None, OnError::Report)
            .await
            .unwrap();
        job.wait_status(JobStatus::Ready).await;
        write(&blk, 3 * MIB, &pattern(3, 4096)).await;
        // A soft cancel would leave the base consistent; complete pivots onto it.
        job.user_complete().unwrap();
        job.wait_concluded().await.unwrap();
        assert_eq!(job.job_type().name(), "commit");
    });
    assert!(Rc::ptr_eq(&blk.bs(), &base_bs));
    assert!(
        !base_bs.is_read_only(),
        "the base is the writable active layer now"
    );
    let seen = rt(read(&blk, 0, 4 * MIB));
    close(blk);
    // The dropped overlay is not closed: that would close the base below it again.
    drop((active, base_bs));
    assert_eq!(contents(&base), seen);
    assert_eq!(&seen[MIB as usize..2 * MIB as usize], &pattern(2, MIB)[..]);
    assert!(rec.names().contains(&"BLOCK_JOB_COMPLETED".to_string()));
}

#[test]
fn backup_keeps_the_point_in_time_while_the_guest_overwrites() {
    let dir = Dir::new();
    let src = dir.qcow2("src.qcow2", 4 * MIB, None);
    let dst = dir.qcow2("dst.qcow2", 4 * MIB, None);
    let blk = open(&src);
    rt(write(&blk, 0, &pattern(1, 4 * MIB)));
    let before = rt(read(&blk, 0, 4 * MIB));
    let target = open_node(&dst, Options::new());
    let source = blk.bs();
    rt(async {
        // Slow enough that the guest's write at the end lands before the job gets there.
        let opts = BackupOptions {
            common: CommonOptions {
                speed: (2 * MIB) as i64,
                ..common("b0")
            },
            ..Default::default()
        };
        let job = backup_start(&source, &target, opts).await.unwrap();
        assert_eq!(blk.bs().format_name(), "copy-before-write");
        write(&blk, 3 * MIB, &pattern(7, 256 << 10)).await;
        job.set_speed(0).unwrap();
        job.wait_concluded().await.unwrap();
    });
    assert!(Rc::ptr_eq(&blk.bs(), &source), "the filter is gone");
    let now = rt(read(&blk, 0, 4 * MIB));
    assert_eq!(
        &now[3 * MIB as usize..(3 * MIB + (256 << 10)) as usize],
        &pattern(7, 256 << 10)[..]
    );
    close(blk);
    close_node(target);
    assert_eq!(
        contents(&dst),
        before,
        "the backup is the disk as it was at the start"
    );
}

#[test]
fn fleecing_backup_saves_only_overwritten_data_until_cancelled() {
    let dir = Dir::new();
    let src = dir.qcow2("src.qcow2", 2 * MIB, None);
    let dst = dir.qcow2("dst.qcow2", 2 * MIB, None);
    let rec = Recorder::new();
    let blk = open(&src);
    rt(write(&blk, 0, &pattern(1, 2 * MIB)));
    let target = open_node(&dst, Options::new());
    rt(async {
        let opts = BackupOptions {
            common: common("f0"),
            sync: SyncMode::None,
            ..Default::default()
        };
        let job = backup_start(&blk.bs(), &target, opts).await.unwrap();
        write(&blk, 0, &pattern(5, 64 << 10)).await;
        job.user_cancel(false).unwrap();
        assert_eq!(
            job.wait_concluded().await.unwrap_err().errno(),
            libc::ECANCELED
        );
    });
    close(blk);
    close_node(target);
    let saved = contents(&dst);
    assert_eq!(
        &saved[..64 << 10],
        &pattern(1, 64 << 10)[..],
        "old data was saved"
    );
    assert!(
        saved[64 << 10..].iter().all(|&b| b == 0),
        "nothing else was copied"
    );
    let names = rec.names();
    assert_eq!(
        &names[names.len() - 4..],
        ["aborting", "BLOCK_JOB_CANCELLED", "concluded", "null"]
    );
}

#[test]
fn pause_resume_and_the_two_cancels_follow_qemus_state_machine() {
    let dir = Dir::new();
    let src = dir.qcow2("src.qcow2", 4 * MIB, None);
    let dst = dir.qcow2("dst.qcow2", 4 * MIB, None);
    let blk = open(&src);
    rt(write(&blk, 0, &pattern(1, 4 * MIB)));
    let source = blk.bs();
    let target = open_node(&dst, Options::new());
    let manager = JobManager::current();
    rt(async {
        let opts = MirrorOptions {
            common: CommonOptions {
                speed: MIB as i64,
                ..common("m0")
            },
            granularity: 65536,
            buf_size: 65536,
            ..Default::default()
        };
        let job = mirror_start(&source, &target, opts).await.unwrap();
        job.user_pause().unwrap();
        job.wait_status(JobStatus::Paused).await;
        let info = &manager.query_block_jobs()[0];
        assert!(info.paused && info.status == JobStatus::Paused && info.speed == MIB);
        assert_eq!(
            job.user_pause().unwrap_err().to_string(),
            "Job is already paused"
        );
        assert_eq!(
            job.user_complete().unwrap_err().to_string(),
            "Job 'm0' in state 'paused' cannot accept command verb 'complete'"
        );
        let frozen = job.progress();
        block::aio::timer::co_sleep(std::time::Duration::from_millis(150)).await;
        assert_eq!(job.progress(), frozen, "a paused job copies nothing");
        job.user_resume().unwrap();
        assert_eq!(
            job.user_resume().unwrap_err().to_string(),
            "Can't resume a job that was not paused"
        );
        job.set_speed(0).unwrap();
        job.wait_status(JobStatus::Ready).await;
        // A soft cancel of a READY mirror completes it without pivoting.
        job.user_cancel(false).unwrap();
        job.wait_concluded().await.unwrap();
    });
    assert!(Rc::ptr_eq(&blk.bs(), &source), "no pivot after cancel");
    assert!(manager.query_jobs().is_empty());

    let rec = Recorder::new();
    rt(async {
        let opts = MirrorOptions {
            common: CommonOptions {
                speed: 65536,
                ..common("m1")
            },
            ..Default::default()
        };
        let job = mirror_start(&source, &target, opts).await.unwrap();
        // Before READY any cancel is forced.
        job.user_cancel(false).unwrap();
        assert_eq!(
            job.wait_concluded().await.unwrap_err().errno(),
            libc::ECANCELED
        );
    });
    assert_eq!(
        rec.names(),
        [
            "created",
            "running",
            "aborting",
            "BLOCK_JOB_CANCELLED",
            "concluded",
            "null"
        ]
    );
    assert!(Rc::ptr_eq(&blk.bs(), &source));
    close(blk);
    close_node(target);
}

#[test]
fn manual_finalize_and_dismiss_wait_for_the_user() {
    let dir = Dir::new();
    let base = dir.qcow2("base.qcow2", MIB, None);
    let top = dir.qcow2("top.qcow2", MIB, Some(&base));
    let rec = Recorder::new();
    let blk = open(&top);
    let manager = JobManager::current();
    rt(async {
        let mut c = common("s1");
        c.flags = JobFlags {
            manual_finalize: true,
            manual_dismiss: true,
        };
        let job = stream_start(
            &blk.bs(),
            StreamOptions {
                common: c,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        job.wait_status(JobStatus::Pending).await;
        assert!(
            blk.bs().backing().is_some(),
            "nothing changes before finalize"
        );
        assert_eq!(
            job.user_dismiss().unwrap_err().to_string(),
            "Job 's1' in state 'pending' cannot accept command verb 'dismiss'"
        );
        job.user_finalize().unwrap();
        job.wait_status(JobStatus::Concluded).await;
        assert_eq!(manager.query_jobs()[0].status, JobStatus::Concluded);
        job.user_dismiss().unwrap();
    });
    assert!(manager.find("s1").is_none());
    assert!(blk.bs().backing().is_none());
    assert_eq!(
        rec.names(),
        [
            "created",
            "running",
            "waiting",
            "pending",
            "BLOCK_JOB_PENDING",
            "BLOCK_JOB_COMPLETED",
            "concluded",
            "null"
        ]
    );
    close(blk);
}

#[test]
fn a_failing_target_fails_the_mirror_as_qemu_reports_it() {
    let dir = Dir::new();
    let src = dir.qcow2("src.qcow2", 2 * MIB, None);
    let dst = dir.qcow2("dst.qcow2", 2 * MIB, None);
    let rec = Recorder::new();
    let blk = open(&src);
    rt(write(&blk, 0, &pattern(1, MIB)));
    let mut o = Options::new();
    o.set("file.driver", "blkdebug");
    o.set("file.inject-error.0.event", "write_aio");
    let target = open_node(&dst, o);
    let source = blk.bs();
    let err = rt(async {
        let job = mirror_start(
            &source,
            &target,
            MirrorOptions {
                common: common("m0"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        job.wait_concluded().await.unwrap_err()
    });
    assert_eq!(err.to_string(), "Input/output error");
    assert!(Rc::ptr_eq(&blk.bs(), &source), "the filter is gone again");
    let events = rec.0.borrow().clone();
    assert!(events.contains(&JobEvent::Error {
        device: "m0".into(),
        operation: IoOperation::Write,
        action: ErrorAction::Report
    }));
    assert!(events.iter().any(|e| matches!(e,
        JobEvent::Completed { error: Some(msg), .. } if msg == "Input/output error")));
    close(blk);
    // Its metadata cannot be written back either.
    assert!(rt(BlockBackend::new(target).close()).is_err());
}

#[test]
fn busy_nodes_and_permission_conflicts_are_refused_with_qemus_messages() {
    let dir = Dir::new();
    let src = dir.qcow2("src.qcow2", MIB, None);
    let dst = dir.qcow2("dst.qcow2", MIB, None);
    let blk = open(&src);
    let source = blk.bs();
    let target = open_node(&dst, Options::new());
    rt(async {
        let opts = MirrorOptions {
            common: CommonOptions {
                speed: 4096,
                ..common("m0")
            },
            ..Default::default()
        };
        let job = mirror_start(&source, &target, opts).await.unwrap();
        let again = MirrorOptions {
            common: common("m1"),
            ..Default::default()
        };
        let e = mirror_start(&source, &target, again).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "Node '{}' is busy: block device is in use by block job: mirror",
                source.node_name()
            )
        );
        let e = permissions::claim(
            &target,
            "block device 'drive1'",
            "root",
            Perm::WRITE,
            Perm::all(),
        )
        .err()
        .unwrap();
        let t = target.node_name();
        assert_eq!(
            e.to_string(),
            format!(
                "Permission conflict on node '{t}': permissions 'write' are both required by \
                 block device 'drive1' (uses node '{t}' as 'root' child) and unshared by mirror \
                 job 'm0' (uses node '{t}' as 'target' child)."
            )
        );
        let e = stream_start(
            &source,
            StreamOptions {
                common: common("m0"),
                ..Default::default()
            },
        )
        .await;
        assert!(e.is_err());
        job.user_cancel(true).unwrap();
        let _ = job.wait_concluded().await;
        // Once the job is gone its claim is too.
        permissions::claim(
            &target,
            "block device 'drive1'",
            "root",
            Perm::WRITE,
            Perm::all(),
        )
        .unwrap();
    });
    close(blk);
    close_node(target);
}

#[test]
fn a_drained_section_holds_new_requests_back_until_it_ends() {
    let dir = Dir::new();
    let img = dir.qcow2("img.qcow2", MIB, None);
    let blk = open(&img);
    rt(async {
        let section = drained_begin(&blk.bs()).await;
        let done = Rc::new(std::cell::Cell::new(false));
        let (b, d) = (blk.clone(), done.clone());
        let writer = AioContext::current().spawn(async move {
            write(&b, 0, &[7; 512]).await;
            d.set(true);
        });
        block::aio::timer::co_sleep(std::time::Duration::from_millis(50)).await;
        assert!(!done.get(), "the write waits while drained");
        drop(section);
        writer.await;
        assert!(done.get());
    });
    close(blk);
}

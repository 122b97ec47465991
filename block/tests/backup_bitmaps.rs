//! A backup's bitmaps as QEMU shows them, and the end of a job as one step: the
//! copy-before-write node lists the copier's bitmap and its own two, and a job cancelled
//! while it waits to be finalised is gone once the jobs have settled.

mod common;

use block::jobs::backup::{backup_job_create, BackupOptions};
use block::jobs::{CommonOptions, JobFlags, JobManager, JobStatus};
use block::{AioContext, IoVector, RequestFlags};
use common::open_mem;

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 64 << 10;

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    AioContext::current().run_until(f)
}

fn options(id: &str, manual_finalize: bool) -> BackupOptions {
    BackupOptions {
        common: CommonOptions {
            job_id: Some(id.to_string()),
            flags: JobFlags {
                manual_finalize,
                manual_dismiss: false,
            },
            ..CommonOptions::default()
        },
        filter_node_name: Some(format!("{id}-top")),
        ..BackupOptions::default()
    }
}

#[test]
fn the_filter_lists_the_copy_done_and_access_bitmaps_newest_first() {
    let (source, _) = open_mem("size=1M");
    let (target, _) = open_mem("size=1M");
    let job = run(backup_job_create(&source, &target, options("bm0", false))).unwrap();
    let filter = block::graph::find_node("bm0-top").unwrap();
    // A write through the filter saves its chunk first: the copier no longer needs it and
    // the filter records it as saved.
    let data = IoVector::from_slice(&[9; 100]);
    run(filter.co_pwritev(70_000, &data, RequestFlags::empty())).unwrap();
    let bitmaps = filter.dirty_bitmaps();
    let counts: Vec<u64> = bitmaps.iter().map(|b| b.count()).collect();
    assert_eq!(counts, [MIB, CHUNK, MIB - CHUNK], "access, done, copy");
    assert!(bitmaps
        .iter()
        .all(|b| b.name().is_none() && !b.recording() && b.granularity() == CHUNK as u32));
    drop(filter);
    job.start();
    run(job.wait_concluded()).unwrap();
    assert_eq!(bitmaps[2].count(), 0, "the job saved every other chunk");
    assert!(
        block::graph::find_node("bm0-top").is_none(),
        "the filter is gone"
    );
}

#[test]
fn a_job_cancelled_in_pending_is_gone_once_the_jobs_have_settled() {
    let (source, _) = open_mem("size=1M");
    let (target, _) = open_mem("size=1M");
    let manager = JobManager::current();
    run(async {
        let job = backup_job_create(&source, &target, options("bm1", true))
            .await
            .unwrap();
        job.start();
        job.wait_status(JobStatus::Pending).await;
        job.user_cancel(true).unwrap();
        // The abort runs as its own coroutine, and takes turns of the loop (the target is
        // flushed, the filter dropped): a command must not see it half done.
        assert!(manager.find("bm1").is_some());
        manager.settled().await;
        assert!(manager.find("bm1").is_none());
        assert_eq!(job.status(), JobStatus::Null);
        assert_eq!(job.error().as_deref(), Some("Operation canceled"));
    });
}

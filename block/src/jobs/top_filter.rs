//! The filter nodes mirror and commit put above the node they copy from (QEMU's
//! bdrv_mirror_top and bdrv_commit_top in block/mirror.c and block/commit.c).
//!
//! Both pass every request to their `backing` child — the node below, as in QEMU — and
//! exist so that the job sits in the graph where the guest's writes pass: a mirror hears of
//! each write through its [`WriteObserver`] (to mark it dirty, or in write-blocking mode to
//! copy it to the target before the guest sees it complete). The job inserts the filter
//! when it starts and takes it out when it ends.

use std::rc::Rc;

use async_trait::async_trait;

use crate::coroutine::LocalBoxFuture;
use crate::driver::{BlockDriver, DriverClass, RequestFlags};
use crate::error::{Error, Result};
use crate::iov::IoVector;
use crate::node::BlockDriverState;

/// A guest write passing through a job's filter.
pub struct ObservedWrite<'a> {
    /// Where it starts.
    pub offset: u64,
    /// How long it is.
    pub bytes: u64,
    /// Its data, or `None` for zeroes and discards.
    pub qiov: Option<&'a IoVector>,
}

impl<'a> ObservedWrite<'a> {
    /// The write of `bytes` at `offset`, with `qiov` its data if it has any.
    pub fn new(offset: u64, bytes: u64, qiov: Option<&'a IoVector>) -> ObservedWrite<'a> {
        ObservedWrite {
            offset,
            bytes,
            qiov,
        }
    }
}

/// The write to the filtered node, for the observer to run.
pub type WriteFuture<'a> = LocalBoxFuture<'a, Result<()>>;

/// What a job does about the writes passing through its filter.
#[async_trait(?Send)]
pub trait WriteObserver {
    /// The observer runs `write`, the write to the filtered node, itself, so that it can
    /// act before it (a write-blocking mirror keeps overlapping copies apart:
    /// active_write_prepare) and after it (marks or copies what was written).
    async fn around_write(&self, req: ObservedWrite<'_>, write: WriteFuture<'_>) -> Result<()>;
}

/// mirror's filter class (`mirror_top`).
pub static MIRROR_TOP: DriverClass = top_class("mirror_top");
/// commit's filter class (`commit_top`).
pub static COMMIT_TOP: DriverClass = top_class("commit_top");

/// Whether `bs` is the filter of a mirror or commit job, whose link to the node below may
/// not be frozen by another job (QEMU's never_freeze).
pub fn is_job_filter(bs: &BlockDriverState) -> bool {
    std::ptr::eq(bs.class(), &MIRROR_TOP) || std::ptr::eq(bs.class(), &COMMIT_TOP)
}

/// The class of a filter only jobs insert, named `name`.
pub(crate) const fn top_class(name: &'static str) -> DriverClass {
    DriverClass {
        format_name: name,
        protocol_name: None,
        is_format: false,
        probe: None,
        open: |bs, _| {
            let name = bs.format_name();
            Box::pin(async move {
                Err(Error::invalid(format!(
                    "Driver '{name}' is only inserted by block jobs"
                )))
            })
        },
        create: None,
        create_options: &[],
    }
}

/// An open top filter.
pub struct TopFilter {
    observer: Option<Rc<dyn WriteObserver>>,
}

impl TopFilter {
    /// A filter that tells `observer` about writes (mirror) or only passes them (commit).
    pub fn new(observer: Option<Rc<dyn WriteObserver>>) -> TopFilter {
        TopFilter { observer }
    }

    /// `write` to the node below, handed to the observer if there is one.
    fn observed<'a>(&'a self, req: ObservedWrite<'a>, write: WriteFuture<'a>) -> WriteFuture<'a> {
        match &self.observer {
            Some(o) => o.around_write(req, write),
            None => write,
        }
    }
}

/// The node the filter sits on, through its backing link.
fn below(bs: &BlockDriverState) -> Rc<BlockDriverState> {
    crate::filters::filtered(bs)
}

/// Puts a top filter of `class` above `bs` (bdrv_append of the filter node): `bs`'s
/// parents now reach it through the filter.
pub async fn insert(
    bs: &Rc<BlockDriverState>,
    class: &'static DriverClass,
    node_name: Option<String>,
    observer: Option<Rc<dyn WriteObserver>>,
) -> Result<Rc<BlockDriverState>> {
    crate::graph::replace::insert_filter(
        bs,
        class,
        node_name,
        "backing",
        Box::new(TopFilter::new(observer)),
    )
    .await
}

#[async_trait(?Send)]
impl BlockDriver for TopFilter {
    async fn co_pwritev(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        flags: RequestFlags,
    ) -> Result<()> {
        let below = below(bs);
        let write = Box::pin(below.co_pwritev(offset, qiov, flags));
        let req = ObservedWrite::new(offset, qiov.len() as u64, Some(qiov));
        self.observed(req, write).await
    }

    async fn co_pwrite_zeroes(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        bytes: u64,
        flags: RequestFlags,
    ) -> Result<()> {
        let below = below(bs);
        let zeroes = below.co_pwrite_zeroes(offset, bytes, flags);
        self.observed(ObservedWrite::new(offset, bytes, None), Box::pin(zeroes))
            .await
    }

    async fn co_pdiscard(&self, bs: &BlockDriverState, offset: u64, bytes: u64) -> Result<()> {
        let below = below(bs);
        let discard = Box::pin(below.co_pdiscard(offset, bytes));
        self.observed(ObservedWrite::new(offset, bytes, None), discard)
            .await
    }

    async fn co_flush_to_disk(&self, bs: &BlockDriverState) -> Result<()> {
        below(bs).co_flush().await
    }

    fn refresh_limits(&self, bs: &BlockDriverState) -> crate::driver::BlockLimits {
        below(bs).limits()
    }

    fn supported_write_flags(&self) -> RequestFlags {
        RequestFlags::FUA
    }

    fn is_filter(&self) -> bool {
        true
    }

    fn reopen_keeps_options(&self) -> bool {
        true
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

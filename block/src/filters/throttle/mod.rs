//! throttle: a filter that holds requests back to the limits of a throttle group (QEMU's
//! block/throttle.c).
//!
//! Reads count as reads; writes, zero writes and discards as writes. While a drained
//! section covers the node or a node above or below it, requests pass unthrottled, so
//! that draining a throttled graph finishes (QEMU's throttle_co_drain_begin disabling the
//! limits). A reopen may move the node to another group (throttle_reopen_prepare/commit).

use std::cell::RefCell;
use std::rc::Rc;

use async_trait::async_trait;

use crate::driver::{BlockDriver, DriverClass, RequestFlags};
use crate::error::{Error, Result};
use crate::iov::IoVector;
use crate::node::BlockDriverState;
use crate::objects::UserObject;
use crate::open::open_protocol_child;
use crate::options::Options;
use crate::throttle::group::ThrottleGroup;

/// The throttle driver class (`driver=throttle`).
pub static THROTTLE: DriverClass = DriverClass {
    format_name: "throttle",
    protocol_name: None,
    is_format: false,
    probe: None,
    open: |bs, options| Box::pin(open(bs, options)),
    create: None,
    create_options: &[],
};

/// An open throttle node.
pub struct Throttle {
    /// A reopen may move the node to another group.
    group: RefCell<Rc<ThrottleGroup>>,
}

/// The group the `throttle-group` option names (throttle_parse_options).
fn take_group(options: &mut Options) -> Result<Rc<ThrottleGroup>> {
    let name = options
        .take("throttle-group")
        .ok_or_else(|| Error::invalid("Parameter 'throttle-group' is missing"))?;
    ThrottleGroup::get(&name, || match crate::objects::lookup(&name).as_deref() {
        Some(UserObject::ThrottleGroup(cfg)) => Some(cfg.as_ref().clone()),
        _ => None,
    })
}

async fn open(bs: &BlockDriverState, options: &mut Options) -> Result<Box<dyn BlockDriver>> {
    let group = take_group(options)?;
    let filename = options.take("filename");
    let child = open_protocol_child("file", filename, options, bs.open_flags()).await?;
    bs.set_filename(child.filename());
    bs.attach_child("file", child);
    Ok(Box::new(Throttle {
        group: RefCell::new(group),
    }))
}

impl Throttle {
    async fn intercept(&self, bs: &BlockDriverState, is_write: bool, bytes: u64) {
        let group = self.group.borrow().clone();
        group
            .co_io_limits_intercept(is_write, bytes, || {
                crate::graph::find_node(bs.node_name())
                    .is_some_and(|bs| crate::graph::drain::in_drained_section(&bs))
            })
            .await;
    }
}

#[async_trait(?Send)]
impl BlockDriver for Throttle {
    async fn co_preadv(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        flags: RequestFlags,
    ) -> Result<()> {
        self.intercept(bs, false, qiov.len() as u64).await;
        super::filtered(bs).co_preadv(offset, qiov, flags).await
    }

    async fn co_pwritev(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        qiov: &IoVector,
        flags: RequestFlags,
    ) -> Result<()> {
        self.intercept(bs, true, qiov.len() as u64).await;
        super::filtered(bs).co_pwritev(offset, qiov, flags).await
    }

    async fn co_pwrite_zeroes(
        &self,
        bs: &BlockDriverState,
        offset: u64,
        bytes: u64,
        flags: RequestFlags,
    ) -> Result<()> {
        self.intercept(bs, true, bytes).await;
        super::filtered(bs)
            .co_pwrite_zeroes(offset, bytes, flags)
            .await
    }

    async fn co_pdiscard(&self, bs: &BlockDriverState, offset: u64, bytes: u64) -> Result<()> {
        self.intercept(bs, true, bytes).await;
        super::filtered(bs).co_pdiscard(offset, bytes).await
    }

    fn supported_write_flags(&self) -> RequestFlags {
        RequestFlags::FUA
    }

    fn is_filter(&self) -> bool {
        true
    }

    /// A reopen (a job making the chain writable, blockdev-reopen) must name the group again,
    /// and may name another (throttle_reopen_prepare); the node moves to it on commit.
    async fn reopen_prepare(
        &self,
        _bs: &BlockDriverState,
        opts: &mut Options,
        _flags: crate::node::OpenFlags,
    ) -> Option<Result<Box<dyn std::any::Any>>> {
        if opts.get("throttle-group").is_none() {
            return Some(Err(Error::invalid("Please specify a throttle group")));
        }
        Some(take_group(opts).map(|g| Box::new(g) as Box<dyn std::any::Any>))
    }

    async fn reopen_commit(&self, _bs: &BlockDriverState, staged: Box<dyn std::any::Any>) {
        if let Ok(group) = staged.downcast::<Rc<ThrottleGroup>>() {
            *self.group.borrow_mut() = *group;
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

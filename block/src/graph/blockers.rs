//! Op blockers: a job marks the nodes it works on so that another job or a conflicting
//! command on them is refused (QEMU's bdrv_op_block_all / bdrv_op_is_blocked and the
//! blocker blockjob.c installs, "block device is in use by block job: TYPE").

use std::rc::Rc;

use crate::error::{Error, Result};
use crate::node::BlockDriverState;

/// Refuses an operation on a blocked node with QEMU's "Node 'X' is busy: ..." error.
pub fn check_not_busy(bs: &Rc<BlockDriverState>) -> Result<()> {
    match bs.graph.blocker.borrow().as_ref() {
        Some(reason) => Err(Error::new(
            libc::EBUSY,
            format!(
                "Node '{}' is busy: {reason}",
                super::device_or_node_name(bs)
            ),
        )),
        None => Ok(()),
    }
}

/// Blocks operations on `bs` for as long as the guard lives.
pub struct OpBlocker {
    bs: Rc<BlockDriverState>,
}

impl OpBlocker {
    /// The node it blocks.
    pub fn node(&self) -> &Rc<BlockDriverState> {
        &self.bs
    }

    /// Blocks `bs` for a job of type `job_type` (block_job_add_bdrv); a node already
    /// blocked is refused.
    pub fn block_for_job(bs: &Rc<BlockDriverState>, job_type: &str) -> Result<OpBlocker> {
        check_not_busy(bs)?;
        *bs.graph.blocker.borrow_mut() =
            Some(format!("block device is in use by block job: {job_type}"));
        Ok(OpBlocker { bs: bs.clone() })
    }
}

impl Drop for OpBlocker {
    fn drop(&mut self) {
        self.bs.graph.blocker.borrow_mut().take();
    }
}

//! What the graph layer keeps on each node: the drained-section count, the permission claims
//! of its users and the blocker a job puts on it (the quiesce_counter, parents' perm and
//! shared_perm, and op_blockers fields of QEMU's BlockDriverState, include/block/block_int-common.h).
//!
//! The types live with the node that holds them, below [`crate::graph`], which acts on them
//! (drained sections, permission checks, blockers): the node need not know the graph layer.

use std::cell::{Cell, RefCell};

bitflags::bitflags! {
    /// What a user may do with a node (BLK_PERM_*).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Perm: u32 {
        /// Read data that is consistent with what was written (not mid-copy).
        const CONSISTENT_READ = 0x01;
        /// Change the data.
        const WRITE = 0x02;
        /// Write data identical to what is there (copy-on-read, stream).
        const WRITE_UNCHANGED = 0x04;
        /// Change the size.
        const RESIZE = 0x08;
        /// Change the node's children (QEMU before 7.0; kept for teaching the model).
        const GRAPH_MOD = 0x10;
    }
}

/// One user's claim on a node (a BdrvChild's perm and shared_perm).
#[derive(Clone, Debug)]
pub struct PermClaim {
    pub(crate) id: u64,
    /// Who holds it: "block device 'drive0'", "node 'top'", "mirror job 'job0'".
    pub(crate) user: String,
    /// The role under which the user holds the node: "root", "file", "target".
    pub(crate) child: String,
    pub(crate) perm: Perm,
    pub(crate) shared: Perm,
}

/// What the graph layer keeps on each node.
#[derive(Default)]
pub struct GraphState {
    /// Drained sections open on the node (quiesce_counter).
    pub(crate) quiesce: Cell<u32>,
    /// Permissions taken on the node by its users.
    pub(crate) perms: RefCell<Vec<PermClaim>>,
    /// The node's place in the node list (0 until reserved).
    pub(crate) place: Cell<u64>,
    /// Why operations on the node are blocked (a job uses it), if they are.
    pub(crate) blocker: RefCell<Option<String>>,
    /// The AioContext it belongs to: an iothread's id, empty for the main loop's
    /// (bs->aio_context).
    pub(crate) aio_context: RefCell<String>,
}

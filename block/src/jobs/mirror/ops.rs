//! The mirror's copies in flight: which areas are being copied, so that overlapping copies
//! wait for each other, and how many and how large, so that the job keeps a bounded number
//! going at once (QEMU's MirrorOp list with mirror_wait_on_conflicts and
//! mirror_wait_for_free_in_flight_slot in block/mirror.c).
//!
//! Two kinds share the list: the job's background copies of dirty areas, and write-blocking
//! mode's copies of guest writes. Two copies of the same bytes must never race, or the
//! older data could land on the target last while the bitmap says it is clean.

use std::cell::{Cell, RefCell};

use crate::coroutine::CoQueue;

/// Most background copies in flight at once (QEMU's MAX_IN_FLIGHT).
pub(super) const MAX_IN_FLIGHT: usize = 16;

/// Who started a copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OpKind {
    /// The job, copying a dirty area.
    Background,
    /// Write-blocking mode, copying a guest write (an active MirrorOp).
    Active,
}

struct Op {
    id: u64,
    offset: u64,
    bytes: u64,
    kind: OpKind,
}

/// The copies in flight of one mirror.
#[derive(Default)]
pub(super) struct InFlightOps {
    ops: RefCell<Vec<Op>>,
    next_id: Cell<u64>,
    /// Background copies in flight and their bytes (s->in_flight, s->bytes_in_flight).
    background: Cell<usize>,
    background_bytes: Cell<u64>,
    /// Restarted whenever a copy ends.
    changed: CoQueue,
}

/// One copy in flight; it leaves the list when dropped (mirror_iteration_done).
pub(super) struct OpGuard<'a> {
    ops: &'a InFlightOps,
    id: u64,
}

impl Drop for OpGuard<'_> {
    fn drop(&mut self) {
        self.ops.end(self.id);
    }
}

impl InFlightOps {
    /// Enters a copy of `[offset, offset + bytes)` into the list until the guard drops.
    pub fn begin(&self, offset: u64, bytes: u64, kind: OpKind) -> OpGuard<'_> {
        let id = self.enter(offset, bytes, kind);
        self.guard(id)
    }

    /// Enters a copy into the list now, for a coroutine that starts later to take
    /// [`InFlightOps::guard`] of: the next launch must already see it.
    pub fn enter(&self, offset: u64, bytes: u64, kind: OpKind) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        self.ops.borrow_mut().push(Op {
            id,
            offset,
            bytes,
            kind,
        });
        if kind == OpKind::Background {
            self.background.set(self.background.get() + 1);
            self.background_bytes
                .set(self.background_bytes.get() + bytes);
        }
        id
    }

    /// The guard that takes copy `id` out of the list when dropped.
    pub fn guard(&self, id: u64) -> OpGuard<'_> {
        OpGuard { ops: self, id }
    }

    fn end(&self, id: u64) {
        let mut ops = self.ops.borrow_mut();
        if let Some(i) = ops.iter().position(|op| op.id == id) {
            let op = ops.swap_remove(i);
            if op.kind == OpKind::Background {
                self.background.set(self.background.get() - 1);
                self.background_bytes
                    .set(self.background_bytes.get() - op.bytes);
            }
        }
        drop(ops);
        self.changed.restart_all();
    }

    /// The lowest offset of a copy in flight that overlaps `[offset, offset + bytes)`.
    pub fn first_conflict(&self, offset: u64, bytes: u64) -> Option<u64> {
        let end = offset.saturating_add(bytes);
        self.ops
            .borrow()
            .iter()
            .filter(|op| op.offset < end && offset < op.offset + op.bytes)
            .map(|op| op.offset)
            .min()
    }

    /// Background copies in flight.
    pub fn background_count(&self) -> usize {
        self.background.get()
    }

    /// Bytes the background copies in flight hold in buffers.
    pub fn background_bytes(&self) -> u64 {
        self.background_bytes.get()
    }

    /// Waits until some copy ends (mirror_wait_for_any_operation). The caller checked its
    /// condition without yielding since, so no end can be missed.
    pub async fn wait_any(&self) {
        self.changed.wait().await;
    }

    /// Waits while `cond` holds, re-checked after each copy ends.
    pub async fn wait_while(&self, cond: impl FnMut() -> bool) {
        self.changed.wait_while(cond).await;
    }

    /// Waits until no background copy is in flight (mirror_wait_for_all_io).
    pub async fn wait_all_background(&self) {
        self.changed.wait_while(|| self.background.get() > 0).await;
    }
}

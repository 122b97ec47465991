//! The debug events formats and the generic request path raise on a child node (QEMU's
//! BlkdebugEvent, raised by BLKDBG_EVENT); blkdebug rules and breakpoints name them. They live
//! apart from both the BlockDriver contract and blkdebug: drivers raise them through
//! `BlockDriverState::debug_event`, and only a blkdebug node acts on them.

macro_rules! events {
    ($($variant:ident = $name:literal,)*) => {
        /// A point in a driver's work where blkdebug may act (QEMU's BLKDBG_*).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum BlkdbgEvent {
            $(
                #[doc = concat!("`", $name, "`")]
                $variant,
            )*
        }

        impl BlkdbgEvent {
            /// Every event, in QEMU's order.
            pub const ALL: &'static [BlkdbgEvent] = &[$(BlkdbgEvent::$variant,)*];

            /// QEMU's name of the event (`l1_update`, `write_aio`...).
            pub fn name(self) -> &'static str {
                match self {
                    $(BlkdbgEvent::$variant => $name,)*
                }
            }
        }
    };
}

events! {
    L1Update = "l1_update",
    L1GrowAllocTable = "l1_grow_alloc_table",
    L1GrowWriteTable = "l1_grow_write_table",
    L1GrowActivateTable = "l1_grow_activate_table",
    L2Load = "l2_load",
    L2Update = "l2_update",
    L2UpdateCompressed = "l2_update_compressed",
    L2AllocCowRead = "l2_alloc_cow_read",
    L2AllocWrite = "l2_alloc_write",
    ReadAio = "read_aio",
    ReadBackingAio = "read_backing_aio",
    ReadCompressed = "read_compressed",
    WriteAio = "write_aio",
    WriteCompressed = "write_compressed",
    VmstateLoad = "vmstate_load",
    VmstateSave = "vmstate_save",
    CowRead = "cow_read",
    CowWrite = "cow_write",
    ReftableLoad = "reftable_load",
    ReftableGrow = "reftable_grow",
    ReftableUpdate = "reftable_update",
    RefblockLoad = "refblock_load",
    RefblockUpdate = "refblock_update",
    RefblockUpdatePart = "refblock_update_part",
    RefblockAlloc = "refblock_alloc",
    RefblockAllocHookup = "refblock_alloc_hookup",
    RefblockAllocWrite = "refblock_alloc_write",
    RefblockAllocWriteBlocks = "refblock_alloc_write_blocks",
    RefblockAllocWriteTable = "refblock_alloc_write_table",
    RefblockAllocSwitchTable = "refblock_alloc_switch_table",
    ClusterAlloc = "cluster_alloc",
    ClusterAllocBytes = "cluster_alloc_bytes",
    ClusterFree = "cluster_free",
    FlushToOs = "flush_to_os",
    FlushToDisk = "flush_to_disk",
    PwritevRmwHead = "pwritev_rmw_head",
    PwritevRmwAfterHead = "pwritev_rmw_after_head",
    PwritevRmwTail = "pwritev_rmw_tail",
    PwritevRmwAfterTail = "pwritev_rmw_after_tail",
    Pwritev = "pwritev",
    PwritevZero = "pwritev_zero",
    PwritevDone = "pwritev_done",
    EmptyImagePrepare = "empty_image_prepare",
    L1ShrinkWriteTable = "l1_shrink_write_table",
    L1ShrinkFreeL2Clusters = "l1_shrink_free_l2_clusters",
    CorWrite = "cor_write",
    ClusterAllocSpace = "cluster_alloc_space",
    None = "none",
}

impl BlkdbgEvent {
    /// Finds an event by QEMU's name.
    pub fn parse(name: &str) -> Option<BlkdbgEvent> {
        BlkdbgEvent::ALL.iter().copied().find(|e| e.name() == name)
    }

    /// The event's index, for per-event rule lists.
    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::BlkdbgEvent;

    #[test]
    fn names_round_trip() {
        for &e in BlkdbgEvent::ALL {
            assert_eq!(BlkdbgEvent::parse(e.name()), Some(e));
        }
        assert_eq!(BlkdbgEvent::parse("bogus"), None);
        assert_eq!(
            BlkdbgEvent::parse("pwritev_rmw_after_tail")
                .unwrap()
                .index(),
            38
        );
    }
}

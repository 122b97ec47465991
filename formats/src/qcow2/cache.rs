//! The metadata table cache: L2 tables and refcount blocks kept in memory, written back
//! lazily, with the write ordering between the two that keeps an image consistent after a
//! crash without a journal (QEMU's block/qcow2-cache.c).
//!
//! Each cache holds whole tables (one cluster each) keyed by their host offset, evicting the
//! least recently used clean-or-written-back table when full. The ordering rule: a new cluster
//! must be counted before anything points at it, and must stop being pointed at before its
//! count drops. So after an allocation the L2 cache *depends on* the refcount cache (refcount
//! blocks are written, and the file flushed, before any L2 table), and after a free the
//! refcount cache depends on the L2 cache. Setting one dependency while the opposite one is
//! pending first flushes the pending side, so the two never wait on each other.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

use block::{BlockDriverState, Result};

use super::{read_bytes, write_bytes};

/// Which of the two caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// L2 tables.
    L2,
    /// Refcount blocks.
    Refblock,
}

/// Hashes a table's host offset for the slot map. Every guest request looks a table up, so
/// this replaces the default SipHash (built to resist chosen keys) with one folded multiply:
/// the keys are cluster-aligned offsets and a cache holds at most 65536 of them, so a crafted
/// image can at worst make its own lookups slower, never unbounded.
#[derive(Default)]
struct OffsetHasher(u64);

impl Hasher for OffsetHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // The 128-bit product's halves folded together spread the key over all bits, which
        // the map needs in both its low (bucket) and high (tag) bits.
        let m = u128::from(self.0 ^ n) * 0x9e37_79b9_7f4a_7c15;
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

struct Slot {
    data: Vec<u8>,
    dirty: bool,
    last_used: u64,
}

/// One cache of equally sized tables.
pub struct TableCache {
    table_size: usize,
    capacity: usize,
    slots: HashMap<u64, Slot, BuildHasherDefault<OffsetHasher>>,
    tick: u64,
}

impl TableCache {
    fn new(table_size: usize, capacity: usize) -> TableCache {
        TableCache {
            table_size,
            capacity: capacity.max(2),
            slots: HashMap::default(),
            tick: 0,
        }
    }

    fn touch(&mut self, offset: u64) -> Option<&mut Slot> {
        self.tick += 1;
        let tick = self.tick;
        let slot = self.slots.get_mut(&offset)?;
        slot.last_used = tick;
        Some(slot)
    }

    fn lru_victim(&self) -> Option<u64> {
        self.slots
            .iter()
            .min_by_key(|(_, s)| s.last_used)
            .map(|(&o, _)| o)
    }

    fn dirty_offsets(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .slots
            .iter()
            .filter(|(_, s)| s.dirty)
            .map(|(&o, _)| o)
            .collect();
        v.sort_unstable();
        v
    }
}

/// The L2 and refcount-block caches with their mutual write ordering.
pub struct Caches {
    file: Rc<BlockDriverState>,
    l2: TableCache,
    refblock: TableCache,
    l2_depends_on_refblock: bool,
    refblock_depends_on_l2: bool,
    /// The next L2 write-back must be preceded by a flush of the file: an allocation
    /// copied data into new clusters that its L2 entries must not point at before the copy
    /// is stable (QEMU's depends_on_flush).
    l2_depends_on_flush: bool,
}

impl Caches {
    /// Caches of `table_size`-byte tables with room for the given numbers of tables.
    pub fn new(
        file: Rc<BlockDriverState>,
        table_size: usize,
        l2_tables: usize,
        refblocks: usize,
    ) -> Caches {
        Caches {
            file,
            l2: TableCache::new(table_size, l2_tables),
            refblock: TableCache::new(table_size, refblocks),
            l2_depends_on_refblock: false,
            refblock_depends_on_l2: false,
            l2_depends_on_flush: false,
        }
    }

    fn cache(&mut self, which: Which) -> &mut TableCache {
        match which {
            Which::L2 => &mut self.l2,
            Which::Refblock => &mut self.refblock,
        }
    }

    /// Makes sure the table at `offset` is in memory (qcow2_cache_get).
    pub async fn load(&mut self, which: Which, offset: u64) -> Result<()> {
        if self.cache(which).touch(offset).is_some() {
            return Ok(());
        }
        self.make_room(which).await?;
        let size = self.cache(which).table_size;
        // refblock_load is raised by update_refcount instead, on hits too, as QEMU's
        // load_refcount_block does (its refcount lookups load without an event).
        if which == Which::L2 {
            self.file.debug_event(block::BlkdbgEvent::L2Load).await;
        }
        let data = read_bytes(&self.file, offset, size).await?;
        self.insert(which, offset, data, false);
        Ok(())
    }

    /// Puts a brand-new table (all zeroes) in the cache without reading it
    /// (qcow2_cache_get_empty); it is dirty, so it will be written.
    pub async fn load_empty(&mut self, which: Which, offset: u64) -> Result<()> {
        if self.cache(which).touch(offset).is_none() {
            self.make_room(which).await?;
        }
        let size = self.cache(which).table_size;
        self.insert(which, offset, vec![0; size], true);
        Ok(())
    }

    fn insert(&mut self, which: Which, offset: u64, data: Vec<u8>, dirty: bool) {
        let c = self.cache(which);
        c.tick += 1;
        let last_used = c.tick;
        c.slots.insert(
            offset,
            Slot {
                data,
                dirty,
                last_used,
            },
        );
    }

    async fn make_room(&mut self, which: Which) -> Result<()> {
        while self.cache(which).slots.len() >= self.cache(which).capacity {
            let victim = self
                .cache(which)
                .lru_victim()
                .expect("full cache has slots");
            if self.cache(which).slots[&victim].dirty {
                self.write_back(which, &[victim]).await?;
            }
            self.cache(which).slots.remove(&victim);
        }
        Ok(())
    }

    /// The cached table at `offset`; `load` must have been called under the same lock hold.
    pub fn table(&mut self, which: Which, offset: u64) -> &mut [u8] {
        &mut self
            .cache(which)
            .touch(offset)
            .expect("table loaded before use")
            .data
    }

    /// Marks a cached table as modified (qcow2_cache_entry_mark_dirty).
    pub fn mark_dirty(&mut self, which: Which, offset: u64) {
        if let Some(s) = self.cache(which).slots.get_mut(&offset) {
            s.dirty = true;
        }
    }

    /// Drops a table from the cache without writing it (the cluster was freed).
    pub fn discard(&mut self, which: Which, offset: u64) {
        self.cache(which).slots.remove(&offset);
    }

    /// Records that `which` must not reach the disk before `before` has
    /// (qcow2_cache_set_dependency).
    pub async fn set_dependency(&mut self, which: Which, before: Which) -> Result<()> {
        debug_assert_ne!(which, before);
        let opposite_pending = match before {
            Which::L2 => self.l2_depends_on_refblock,
            Which::Refblock => self.refblock_depends_on_l2,
        };
        if opposite_pending {
            self.flush(before).await?;
        }
        match which {
            Which::L2 => self.l2_depends_on_refblock = true,
            Which::Refblock => self.refblock_depends_on_l2 = true,
        }
        Ok(())
    }

    /// Lets L2 tables reach the disk before the refcount blocks again: once a lazy-refcounts
    /// image is marked dirty its refcounts need not be accurate, as QEMU only sets that
    /// dependency while they must be (qcow2_need_accurate_refcounts).
    pub fn drop_l2_refblock_dependency(&mut self) {
        self.l2_depends_on_refblock = false;
    }

    /// Records that L2 tables must not reach the disk before the data written so far has
    /// (qcow2_cache_depends_on_flush).
    pub fn l2_depends_on_flush(&mut self) {
        self.l2_depends_on_flush = true;
    }

    /// Writes back every dirty table of one cache, honouring its dependency
    /// (qcow2_cache_write).
    pub async fn flush(&mut self, which: Which) -> Result<()> {
        let dirty = self.cache(which).dirty_offsets();
        self.write_back(which, &dirty).await
    }

    /// Writes back both caches, refcount blocks first (they usually must precede L2).
    pub async fn flush_all(&mut self) -> Result<()> {
        if self.refblock_depends_on_l2 {
            self.flush(Which::L2).await?;
            self.flush(Which::Refblock).await
        } else {
            self.flush(Which::Refblock).await?;
            self.flush(Which::L2).await
        }
    }

    fn write_back<'a>(
        &'a mut self,
        which: Which,
        offsets: &'a [u64],
    ) -> block::coroutine::LocalBoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let dependency = match which {
                Which::L2 if self.l2_depends_on_refblock => Some(Which::Refblock),
                Which::Refblock if self.refblock_depends_on_l2 => Some(Which::L2),
                _ => None,
            };
            if let (Some(before), false) = (dependency, offsets.is_empty()) {
                match which {
                    Which::L2 => self.l2_depends_on_refblock = false,
                    Which::Refblock => self.refblock_depends_on_l2 = false,
                }
                self.flush(before).await?;
                self.file.co_flush().await?;
                if which == Which::L2 {
                    self.l2_depends_on_flush = false;
                }
            } else if which == Which::L2 && self.l2_depends_on_flush && !offsets.is_empty() {
                // Cleared only once the flush succeeded: a failed one leaves the copies
                // unstable, and the next write-back must try again (as QEMU's).
                self.file.co_flush().await?;
                self.l2_depends_on_flush = false;
            }
            for &offset in offsets {
                let Some(slot) = self.cache(which).slots.get(&offset) else {
                    continue;
                };
                if !slot.dirty {
                    continue;
                }
                let data = slot.data.clone();
                block::trace!(qcow2_cache_entry_flush, "{:?} offset 0x{:x}", which, offset);
                self.file
                    .debug_event(match which {
                        Which::L2 => block::BlkdbgEvent::L2Update,
                        Which::Refblock => block::BlkdbgEvent::RefblockUpdatePart,
                    })
                    .await;
                write_bytes(&self.file, offset, &data).await?;
                if let Some(s) = self.cache(which).slots.get_mut(&offset) {
                    s.dirty = false;
                }
            }
            Ok(())
        })
    }

    /// Forgets every table (after the image was changed underneath, e.g. by a repair).
    pub fn clear(&mut self) {
        self.l2.slots.clear();
        self.refblock.slots.clear();
    }

    /// Reads and writes the tables through `file` from now on, every table forgotten: a
    /// reopen gave the node another file child (qcow2_update_options_commit creates new
    /// caches). The caller wrote the dirty tables back first.
    pub fn set_file(&mut self, file: Rc<BlockDriverState>) {
        self.file = file;
        self.clear();
    }
}

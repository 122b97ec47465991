//! Discards of freed host clusters, collected while one large operation frees many of them
//! and sent to the file together at its end, adjacent ones merged (QEMU's s->discards under
//! cache_discards: update_refcount_discard and qcow2_process_discards in
//! block/qcow2-refcount.c). A few large hole punches instead of one per cluster cost fewer
//! system calls, and punching a range cluster by cluster from its start splits the file
//! system's extents (ext4 then grows its extent tree, which `du` sees).

/// The regions waiting to be discarded, as (offset, bytes), in the order first queued.
#[derive(Debug, Default)]
pub struct DiscardQueue {
    regions: Vec<(u64, u64)>,
}

impl DiscardQueue {
    /// Adds a freed range: it extends a region it touches, and a region that then touches
    /// another absorbs it; otherwise it is queued on its own. Freed ranges never overlap
    /// (what is freed has no references left to free it twice).
    pub fn add(&mut self, offset: u64, bytes: u64) {
        let touches =
            |(o, b): (u64, u64), offset: u64, bytes: u64| o == offset + bytes || o + b == offset;
        let Some(mut i) = self.regions.iter().position(|&r| touches(r, offset, bytes)) else {
            self.regions.push((offset, bytes));
            return;
        };
        let r = &mut self.regions[i];
        *r = (r.0.min(offset), r.1 + bytes);
        while let Some(j) = (0..self.regions.len())
            .find(|&j| j != i && touches(self.regions[j], self.regions[i].0, self.regions[i].1))
        {
            let (o, b) = self.regions.remove(j);
            if j < i {
                i -= 1;
            }
            let r = &mut self.regions[i];
            *r = (r.0.min(o), r.1 + b);
        }
    }

    /// Empties the queue, returning what was in it.
    pub fn take(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.regions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_ranges_merge_in_either_direction() {
        let mut q = DiscardQueue::default();
        for c in [5u64, 6, 7, 4] {
            q.add(c << 20, 1 << 20);
        }
        assert_eq!(q.take(), vec![(4 << 20, 4 << 20)]);
        assert!(q.take().is_empty());
    }

    #[test]
    fn a_range_bridging_two_regions_joins_them() {
        let mut q = DiscardQueue::default();
        q.add(100 << 20, 1 << 20);
        q.add(0, 1 << 20);
        q.add(2 << 20, 1 << 20);
        q.add(1 << 20, 1 << 20);
        assert_eq!(q.take(), vec![(100 << 20, 1 << 20), (0, 3 << 20)]);
    }
}

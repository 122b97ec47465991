//! A small cache of second-level tables, the least used one evicted first (the
//! `l2_cache` arrays with hit counts of QEMU's block/qcow.c and block/vmdk.c).
//!
//! qcow2 has its own Qcow2Cache with dirty tracking; qcow and vmdk write table entries
//! through to the file at once, so their cache only ever holds clean copies.

/// Tables kept at once (L2_CACHE_SIZE).
const CAPACITY: usize = 16;

/// Cached tables by file offset, with how often each was used.
#[derive(Default)]
pub(crate) struct TableCache {
    entries: Vec<(u64, Vec<u64>, u32)>,
}

impl TableCache {
    /// Whether the table at `offset` is cached.
    pub(crate) fn contains(&self, offset: u64) -> bool {
        self.entries.iter().any(|e| e.0 == offset)
    }

    /// The table at `offset`, if cached; counts the use.
    pub(crate) fn get_mut(&mut self, offset: u64) -> Option<&mut Vec<u64>> {
        let e = self.entries.iter_mut().find(|e| e.0 == offset)?;
        e.2 = e.2.saturating_add(1);
        Some(&mut e.1)
    }

    /// Caches the table at `offset`, evicting the least used one when full.
    pub(crate) fn insert(&mut self, offset: u64, table: Vec<u64>) -> &mut Vec<u64> {
        self.entries.retain(|e| e.0 != offset);
        if self.entries.len() == CAPACITY {
            let least = (0..CAPACITY)
                .min_by_key(|&i| self.entries[i].2)
                .expect("the cache is full");
            self.entries.swap_remove(least);
        }
        self.entries.push((offset, table, 1));
        &mut self.entries.last_mut().expect("just inserted").1
    }

    /// Forgets every table.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_used_table_goes_first() {
        let mut c = TableCache::default();
        for i in 0..CAPACITY as u64 {
            c.insert(i, vec![i]);
            c.get_mut(i);
        }
        c.get_mut(3).unwrap()[0] = 33;
        for i in (0..CAPACITY as u64).filter(|&i| i != 5) {
            c.get_mut(i);
        }
        c.insert(100, vec![100]);
        assert!(c.get_mut(5).is_none());
        assert_eq!(c.get_mut(3).unwrap()[0], 33);
        assert_eq!(c.get_mut(100).unwrap()[0], 100);
    }
}

//! What `qemu-img check` counts for bitmaps: the directory, every bitmap table and every
//! data cluster the tables point at (qcow2_check_bitmaps_refcounts in QEMU's
//! block/qcow2-bitmap.c). A directory or table that cannot be read counts as a corruption.

use block::driver::CheckResult;
use block::{Error, Result};

use super::{table_entry_valid, TABLE_OFFSET_MASK};
use crate::qcow2::check::Refs;
use crate::qcow2::state::Meta;

impl Meta {
    /// Counts the references of the stored bitmaps.
    pub(crate) async fn count_bitmaps(
        &mut self,
        res: &mut CheckResult,
        refs: &mut Refs,
    ) -> Result<()> {
        let Some(ext) = self.header.bitmaps else {
            return Ok(());
        };
        refs.inc(res, ext.directory_offset, ext.directory_size);
        let Ok(list) = self.load_bitmap_list().await else {
            res.corruptions += 1;
            return Err(Error::from_errno(libc::EINVAL));
        };
        let cs = self.g.cluster_size;
        for b in &list {
            refs.inc(res, b.table_offset, b.table_size as u64 * 8);
            let bytes =
                crate::qcow2::read_bytes(&self.file, b.table_offset, b.table_size as usize * 8)
                    .await;
            let Ok(bytes) = bytes else {
                res.corruptions += 1;
                return Err(Error::from_errno(libc::EINVAL));
            };
            for entry in crate::qcow2::state::decode_table(&bytes) {
                if !table_entry_valid(entry, cs) {
                    res.corruptions += 1;
                    continue;
                }
                if entry & TABLE_OFFSET_MASK != 0 {
                    refs.inc(res, entry & TABLE_OFFSET_MASK, cs);
                }
            }
        }
        Ok(())
    }
}

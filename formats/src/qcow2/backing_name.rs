//! Rewriting the header for a new backing file name so that a power loss can tear no
//! state into an unreadable name (the header write of qcow2_change_backing_file in
//! block/qcow2.c, ordered).
//!
//! The name follows the header extensions, so it usually starts in the second sector of the
//! header cluster while its offset and length live in the first: QEMU rewrites the cluster
//! in one write, and a crash that lands one sector of it and not the other leaves a name
//! that opens no file. A disk writes single sectors whole, so here the new name is first
//! written into bytes the old header does not use, then the first sector is switched to it;
//! then the name is moved to its usual place the same way. Every write before a switch
//! changes only bytes no header on disk refers to, and each switch is one sector.

use block::Result;

use super::state::Meta;
use super::{read_bytes, write_bytes};

/// The unit a disk writes whole.
const SECTOR: usize = 512;

/// The `(offset, length)` of the backing file name a serialised header refers to.
fn name_range(header: &[u8]) -> (usize, usize) {
    let offset = u64::from_be_bytes(header[8..16].try_into().unwrap_or_default());
    let len = u32::from_be_bytes(header[16..20].try_into().unwrap_or_default());
    (offset as usize, len as usize)
}

impl Meta {
    /// Writes the header (as [`Meta::write_header`]) after a change of the backing file name
    /// alone, in the crash-safe order above when the name reaches past the first sector
    /// and the rest of the header is unchanged past it; otherwise in one write, as QEMU.
    pub async fn write_header_for_backing(&mut self) -> Result<()> {
        let new = self.header.serialise()?;
        let cs = self.g.cluster_size as usize;
        let (n_off, n_len) = name_range(&new);
        let span = |a: usize, b: usize| (a / SECTOR * SECTOR, b.div_ceil(SECTOR) * SECTOR);
        let disk_len = (2 * new.len()).min(cs).div_ceil(SECTOR) * SECTOR;
        let mut cur = read_bytes(&self.file, 0, disk_len).await?;
        let (o_off, o_len) = name_range(&cur);
        // A scratch place for the new name past both names (8-byte aligned, as QEMU's
        // extensions): while the old header is live, nothing there is in use.
        let scratch = (o_off + o_len).max(n_off + n_len).next_multiple_of(8);
        let plain = n_len == 0
            || o_len == 0
            || o_off != n_off
            || new.len().max(o_off + o_len) <= SECTOR
            || scratch + n_len > disk_len
            || cur[SECTOR.min(o_off)..o_off] != new[SECTOR.min(n_off)..n_off];
        if plain {
            return self.write_header().await;
        }
        let name = new[n_off..n_off + n_len].to_vec();
        // 1. The name at the scratch place; 2. the first sector pointing there.
        cur[scratch..scratch + n_len].copy_from_slice(&name);
        self.write_span(&cur, span(scratch, scratch + n_len))
            .await?;
        // The new first sector (a short header leaves the old, dead bytes after its end).
        let mut new_first = cur[..SECTOR].to_vec();
        let head = new.len().min(SECTOR);
        new_first[..head].copy_from_slice(&new[..head]);
        let mut first = new_first.clone();
        first[8..16].copy_from_slice(&(scratch as u64).to_be_bytes());
        cur[..SECTOR].copy_from_slice(&first);
        self.write_span(&cur, (0, SECTOR)).await?;
        // 3. The name at its usual place (the old name is dead now); 4. the first sector
        // pointing there.
        cur[n_off..n_off + n_len].copy_from_slice(&name);
        self.write_span(&cur, span(n_off, n_off + n_len)).await?;
        cur[..SECTOR].copy_from_slice(&new_first);
        self.write_span(&cur, (0, SECTOR)).await?;
        // 5. The scratch copy, dead now, back to the zeroes QEMU's header has there.
        cur[scratch..scratch + n_len].fill(0);
        let (from, to) = span(scratch, scratch + n_len);
        write_bytes(&self.file, from as u64, &cur[from..to]).await
    }

    /// Writes `cur[from..to]` in place and flushes it, so the next step comes after it.
    async fn write_span(&mut self, cur: &[u8], (from, to): (usize, usize)) -> Result<()> {
        write_bytes(&self.file, from as u64, &cur[from..to]).await?;
        self.file.co_flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_range_is_read_from_the_fixed_header() {
        let mut h = vec![0u8; 64];
        h[8..16].copy_from_slice(&528u64.to_be_bytes());
        h[16..20].copy_from_slice(&44u32.to_be_bytes());
        assert_eq!(name_range(&h), (528, 44));
    }
}

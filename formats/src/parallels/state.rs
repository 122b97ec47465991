//! The open image's mutable side: the BAT held in memory and written back on flush, the
//! end of the data area where new clusters go, and the in-use flag (QEMU's
//! allocate_clusters, parallels_co_flush_to_os and parallels_update_header in
//! block/parallels.c).

use block::driver::PreallocMode;
use block::{BlockDriverState, Error, RequestFlags, Result};

use super::header::{Header, HEADER_SIZE};
use crate::image_file::write_bytes;

/// How the file grows when clusters are appended (the prealloc-mode option).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreallocKind {
    /// Zeroes are written ahead of need.
    Falloc,
    /// The file is truncated to the new size.
    Truncate,
}

/// What lives under the driver's lock.
pub struct State {
    /// The header as it will be written back.
    pub header: Header,
    /// The BAT entries that lie in the file.
    pub bat: Vec<u32>,
    /// Range of BAT entries changed since the last flush.
    pub dirty: Option<(usize, usize)>,
    /// First sector of the data area (s->data_start).
    pub data_start: u64,
    /// First sector past the last cluster (s->data_end).
    pub data_end: u64,
    /// Sectors of the clusters inside the data area that no entry uses, highest first
    /// (QEMU's used_bmap): allocation reuses them before growing the file.
    pub free: Vec<u64>,
    /// The in-use flag was set when the image was opened.
    pub unclean: bool,
    /// Sectors to grow the file by beyond what an allocation needs.
    pub prealloc_sectors: u64,
    /// How to grow it.
    pub prealloc: PreallocKind,
}

impl State {
    /// Sectors per cluster.
    pub fn tracks(&self) -> u64 {
        self.header.tracks as u64
    }

    /// The host byte offset of BAT entry `i`, None when the cluster is not allocated
    /// (bat2sect).
    pub fn host(&self, i: usize) -> Option<u64> {
        match self.bat.get(i).copied().unwrap_or(0) {
            0 => None,
            e => Some(e as u64 * self.header.off_multiplier() * 512),
        }
    }

    /// Points BAT entry `i` at `sector` (0: unallocated) and marks it for writing back
    /// (parallels_set_bat_entry).
    pub fn set_entry(&mut self, i: usize, sector: u64) {
        self.bat[i] = (sector / self.header.off_multiplier()) as u32;
        self.dirty = Some(match self.dirty {
            Some((lo, hi)) => (lo.min(i), hi.max(i)),
            None => (i, i),
        });
    }

    /// Appends a cluster for BAT entry `i` at the end of the data area, growing the
    /// file ahead of need so that the cluster reads as zeroes (allocate_clusters).
    /// Returns its host byte offset.
    pub async fn allocate(&mut self, file: &BlockDriverState, i: usize) -> Result<u64> {
        if i >= self.bat.len() {
            return Err(Error::new(
                libc::EIO,
                "parallels: the BAT runs past the end of the file",
            ));
        }
        if let Some(sector) = self.free.pop() {
            // A forgotten cluster may hold old data: make it read as zeroes.
            let len = self.tracks() * 512;
            file.co_pwrite_zeroes(sector * 512, len, RequestFlags::empty())
                .await?;
            self.set_entry(i, sector);
            return Ok(sector * 512);
        }
        let sector = self.data_end;
        let file_sectors = file.getlength() / 512;
        if sector + self.tracks() > file_sectors {
            let grow = self.tracks() + self.prealloc_sectors;
            match self.prealloc {
                PreallocKind::Falloc => {
                    file.co_pwrite_zeroes(sector * 512, grow * 512, RequestFlags::empty())
                        .await?
                }
                PreallocKind::Truncate => {
                    file.co_truncate((sector + grow) * 512, false, PreallocMode::Off)
                        .await?
                }
            }
        }
        self.set_entry(i, sector);
        self.data_end += self.tracks();
        Ok(sector * 512)
    }

    /// Makes the cluster at `sector` free for the next allocation, lowest first.
    pub fn release(&mut self, sector: u64) {
        let at = self.free.partition_point(|&s| s > sector);
        self.free.insert(at, sector);
    }

    /// Finds the clusters of the data area, as far as the file reaches, that no entry
    /// uses (parallels_fill_used_bitmap).
    pub fn find_free(&mut self, file_len: u64) {
        let tracks = self.tracks();
        let end = self.data_end.min(file_len / 512);
        let clusters = end.saturating_sub(self.data_start) / tracks;
        let mut used = vec![false; clusters as usize];
        for i in 0..self.bat.len() {
            let Some(off) = self.host(i) else { continue };
            if let Some(u) = (off / 512)
                .checked_sub(self.data_start)
                .and_then(|s| used.get_mut((s / tracks) as usize))
            {
                *u = true;
            }
        }
        self.free = (0..clusters)
            .rev()
            .filter(|&c| !used[c as usize])
            .map(|c| self.data_start + c * tracks)
            .collect();
    }

    /// Writes the changed part of the BAT back (parallels_co_flush_to_os).
    pub async fn write_bat(&mut self, file: &BlockDriverState) -> Result<()> {
        let Some((lo, hi)) = self.dirty else {
            return Ok(());
        };
        let bytes: Vec<u8> = self.bat[lo..=hi]
            .iter()
            .flat_map(|e| e.to_le_bytes())
            .collect();
        write_bytes(file, (HEADER_SIZE + 4 * lo) as u64, &bytes).await?;
        self.dirty = None;
        Ok(())
    }

    /// Writes the header and makes it stable (parallels_update_header).
    pub async fn write_header(&self, file: &BlockDriverState) -> Result<()> {
        write_bytes(file, 0, &self.header.serialise()).await?;
        file.co_flush().await
    }
}

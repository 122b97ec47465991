//! Checked access from virtio devices to guest RAM.
//!
//! The part of QEMU's address_space_map / dma_memory_map a virtio device needs: whether a
//! guest range is RAM, and the host pointers behind it. vm-memory's region collection does the
//! lookups; a range that crosses from one region into the next is handled piecewise, and any
//! byte outside RAM makes the whole range an error.

use vm_memory::MemoryRegionAddress;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::queue::QueueError;

/// The host address of `addr..addr+len` when the whole range lies in one memory region: the
/// usual case, where one pointer serves a whole buffer. `None` when the range spans regions
/// or is not (all) RAM.
pub fn host_range(mem: &GuestMemoryMmap, addr: GuestAddress, len: usize) -> Option<*mut u8> {
    let end = addr.0.checked_add(len as u64)?;
    let region = mem.find_region(addr)?;
    if end > region.start_addr().0 + region.len() {
        return None;
    }
    let offset = MemoryRegionAddress(addr.0 - region.start_addr().0);
    region.get_host_address(offset).ok()
}

/// Whether `addr..addr+len` lies entirely in guest RAM (no wrap-around), in one region or
/// across adjacent ones.
pub fn in_ram(mem: &GuestMemoryMmap, addr: GuestAddress, len: usize) -> bool {
    host_range(mem, addr, len).is_some()
        || (addr.0.checked_add(len as u64).is_some()
            && GuestMemoryBackend::check_range(mem, addr, len))
}

/// Calls `f` with the host (pointer, length) pieces covering `addr..addr+len` of guest
/// memory; a range spanning two memory regions yields two pieces. Ranges come from a validated
/// chain, but the check is repeated: a missing region is an error, never an unchecked pointer.
pub fn host_pieces(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    len: usize,
    mut f: impl FnMut(*mut u8, usize),
) -> Result<(), QueueError> {
    let mut at = addr;
    let mut left = len;
    while left > 0 {
        let outside = || QueueError::BufferOutsideMemory {
            addr: at.0,
            len: left as u32,
        };
        let region = mem.find_region(at).ok_or_else(outside)?;
        let offset = at.0 - region.start_addr().0;
        let n = ((region.len() - offset) as usize).min(left);
        let ptr = region
            .get_host_address(MemoryRegionAddress(offset))
            .map_err(|_| outside())?;
        f(ptr, n);
        at = GuestAddress(at.0.wrapping_add(n as u64));
        left -= n;
    }
    Ok(())
}

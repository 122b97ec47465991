//! Host pointers to the three areas of a validated virtqueue.
//!
//! QEMU's MemoryRegionCache (include/exec/memory.h, used by hw/virtio/virtio.c): translating a
//! guest address costs a region lookup on every ring access, and a queue makes a dozen per
//! request. Once a queue's rings are known to lie in guest RAM, each area that sits inside a
//! single memory region at the alignment the spec requires (descriptors 16, available ring 2,
//! used ring 4) is kept as a host pointer. Accesses then are single volatile loads and stores
//! at offsets checked against the area's length. An area that cannot be cached is left to
//! vm-memory's checked accessors; the queue falls back to those for it. The cache also keeps
//! the whole memory region the descriptor table lies in, where a driver's buffers usually
//! are: mapping a buffer found there is a range check instead of a region search.

use std::sync::Arc;

use vm_memory::MemoryRegionAddress;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// One cached area: its host address and length.
#[derive(Clone, Copy)]
struct Area {
    host: *mut u8,
    len: u64,
}

impl Area {
    fn new(mem: &GuestMemoryMmap, addr: GuestAddress, len: u64, align: u64) -> Option<Area> {
        if !addr.0.is_multiple_of(align) {
            return None;
        }
        let region = mem.find_region(addr)?;
        let offset = addr.0 - region.start_addr().0;
        if offset.checked_add(len)? > region.len() {
            return None;
        }
        let host = region.get_host_address(MemoryRegionAddress(offset)).ok()?;
        Some(Area { host, len })
    }

    /// A pointer to `size` bytes at `off`, if they lie in the area and `off` keeps the
    /// natural alignment of a `size`-byte value (the area itself is aligned).
    fn at(&self, off: u64, size: u64) -> Option<*mut u8> {
        self.range(off, size).filter(|_| off.is_multiple_of(size))
    }

    /// A pointer to `len` bytes at `off`, if they lie in the area.
    fn range(&self, off: u64, len: u64) -> Option<*mut u8> {
        let fits = off.checked_add(len).is_some_and(|end| end <= self.len);
        // SAFETY: `off + len <= self.len`, and `host..host+len` is mapped (see RingCache).
        fits.then(|| unsafe { self.host.add(off as usize) })
    }
}

/// Host views of a queue's descriptor table, available ring and used ring, and of the
/// memory region the table lies in.
#[derive(Clone)]
pub struct RingCache {
    /// Keeps the mapping alive as long as the pointers.
    mem: Arc<GuestMemoryMmap>,
    desc: Option<Area>,
    avail: Option<Area>,
    used: Option<Area>,
    /// The whole region holding the descriptor table, with its guest start: a driver's
    /// buffers usually sit in it too, and then mapping one is a range check, not a search.
    region: Option<(u64, Area)>,
}

// SAFETY: the pointers point into `mem`'s mappings, which the Arc keeps alive; the queue that
// owns the cache is used under its device's mutex, one thread at a time.
unsafe impl Send for RingCache {}

impl std::fmt::Debug for RingCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RingCache(desc {}, avail {}, used {})",
            self.desc.is_some(),
            self.avail.is_some(),
            self.used.is_some()
        )
    }
}

/// Which area of the queue.
#[derive(Clone, Copy)]
pub enum Ring {
    /// The descriptor table.
    Desc,
    /// The available ring.
    Avail,
    /// The used ring.
    Used,
}

impl RingCache {
    /// Caches what can be cached of rings `(address, length)` already checked to be in RAM.
    pub fn new(
        mem: &Arc<GuestMemoryMmap>,
        desc: (GuestAddress, u64),
        avail: (GuestAddress, u64),
        used: (GuestAddress, u64),
    ) -> RingCache {
        let region = mem.find_region(desc.0).and_then(|r| {
            let start = r.start_addr();
            Some((start.0, Area::new(mem, start, r.len(), 1)?))
        });
        RingCache {
            mem: mem.clone(),
            desc: Area::new(mem, desc.0, desc.1, 16),
            avail: Area::new(mem, avail.0, avail.1, 2),
            used: Area::new(mem, used.0, used.1, 4),
            region,
        }
    }

    /// The host address of guest `addr..addr+len` if it lies in the region that holds the
    /// descriptor table; `None` sends the caller to a full lookup.
    pub fn host_range(&self, addr: GuestAddress, len: u32) -> Option<*mut u8> {
        let (start, area) = self.region.as_ref()?;
        area.range(addr.0.checked_sub(*start)?, u64::from(len))
    }

    /// Whether the cache was built over this guest memory.
    pub fn is_for(&self, mem: &Arc<GuestMemoryMmap>) -> bool {
        Arc::ptr_eq(&self.mem, mem)
    }

    fn area(&self, ring: Ring) -> Option<&Area> {
        match ring {
            Ring::Desc => self.desc.as_ref(),
            Ring::Avail => self.avail.as_ref(),
            Ring::Used => self.used.as_ref(),
        }
    }

    /// Reads the little-endian u16 at `off` of `ring`, if cached.
    pub fn read_u16(&self, ring: Ring, off: u64) -> Option<u16> {
        let p = self.area(ring)?.at(off, 2)?;
        // SAFETY: `at` checked bounds and alignment inside a live mapping.
        Some(u16::from_le(unsafe {
            std::ptr::read_volatile(p as *const u16)
        }))
    }

    /// Writes a little-endian u16 at `off` of `ring`; false if not cached.
    pub fn write_u16(&self, ring: Ring, off: u64, v: u16) -> bool {
        let Some(p) = self.area(ring).and_then(|a| a.at(off, 2)) else {
            return false;
        };
        // SAFETY: `at` checked bounds and alignment inside a live mapping.
        unsafe { std::ptr::write_volatile(p as *mut u16, v.to_le()) };
        true
    }

    /// Reads the little-endian u32 at `off` of `ring`, if cached.
    pub fn read_u32(&self, ring: Ring, off: u64) -> Option<u32> {
        let p = self.area(ring)?.at(off, 4)?;
        // SAFETY: `at` checked bounds and alignment inside a live mapping.
        Some(u32::from_le(unsafe {
            std::ptr::read_volatile(p as *const u32)
        }))
    }

    /// Writes descriptor `i` (16 bytes); false if not cached. For driver-side test code.
    pub fn write_desc(&self, i: u16, raw: [u8; 16]) -> bool {
        let Some(p) = self
            .area(Ring::Desc)
            .and_then(|a| a.at(16 * u64::from(i), 16))
        else {
            return false;
        };
        let lo = u64::from_ne_bytes(raw[..8].try_into().unwrap());
        let hi = u64::from_ne_bytes(raw[8..].try_into().unwrap());
        // SAFETY: `at` checked bounds and alignment inside a live mapping.
        unsafe {
            std::ptr::write_volatile(p as *mut u64, lo);
            std::ptr::write_volatile((p as *mut u64).add(1), hi);
        }
        true
    }

    /// Writes a little-endian u32 at `off` of `ring`; false if not cached.
    pub fn write_u32(&self, ring: Ring, off: u64, v: u32) -> bool {
        let Some(p) = self.area(ring).and_then(|a| a.at(off, 4)) else {
            return false;
        };
        // SAFETY: `at` checked bounds and alignment inside a live mapping.
        unsafe { std::ptr::write_volatile(p as *mut u32, v.to_le()) };
        true
    }

    /// Reads descriptor `i` (16 bytes), if cached, as its two little-endian 8-byte words:
    /// the address, then length, flags and next.
    pub fn read_desc(&self, i: u16) -> Option<[u64; 2]> {
        let p = self.area(Ring::Desc)?.at(16 * u64::from(i), 16)?;
        // SAFETY: `at` checked bounds and alignment inside a live mapping; two volatile 8-byte
        // loads keep the compiler from assuming the guest does not change the bytes.
        Some(unsafe {
            [
                u64::from_le(std::ptr::read_volatile(p as *const u64)),
                u64::from_le(std::ptr::read_volatile((p as *const u64).add(1))),
            ]
        })
    }
}

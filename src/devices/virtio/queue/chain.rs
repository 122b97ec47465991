//! One descriptor chain of a split virtqueue: following `next` links and indirect tables, and
//! checking every buffer against guest RAM (QEMU's virtqueue_split_pop, virtqueue_read_next_desc
//! and virtqueue_map_desc in hw/virtio/virtio.c).

use std::ptr::NonNull;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{
    off, Queue, QueueError, DESC_SIZE, VIRTQUEUE_MAX_SIZE, VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use crate::devices::virtio::guest_mem::{host_range, in_ram};
use crate::devices::virtio::ring_cache::RingCache;

/// One guest buffer of a chain, already checked to lie inside guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes (never zero).
    pub len: u32,
    /// Whether the device writes it (VRING_DESC_F_WRITE).
    pub writable: bool,
    /// Where the buffer is mapped in this process, when it lies in one memory region (the
    /// usual case): found once at pop time, so the request uses it without another lookup.
    /// `None` for a buffer spanning two regions, which is walked piece by piece. Private, so
    /// that only [`Queue::pop`] makes buffers: the pointer is trusted.
    host: Option<NonNull<u8>>,
}

impl Buffer {
    /// The host address of the whole buffer, if it lies in one memory region of the guest
    /// memory it was popped from (see [`DescriptorChain::popped_from`]).
    pub fn host(&self) -> Option<NonNull<u8>> {
        self.host
    }
}

/// A validated descriptor chain (QEMU's VirtQueueElement): readable buffers first, then
/// writable ones.
#[derive(Clone, Debug, Default)]
pub struct DescriptorChain {
    /// The head index, returned in the used element.
    pub head: u16,
    /// The buffers in chain order. A chain is reused from one pop to the next, so once the
    /// vector has grown to the usual request's length, popping allocates nothing.
    buffers: Vec<Buffer>,
    /// How many of `buffers` are device-readable (QEMU's out_num).
    readable: usize,
    /// The guest memory the buffers were mapped in (its address, as an identity).
    mem: usize,
}

impl DescriptorChain {
    /// Whether the chain's buffers were mapped in `mem`: their host addresses are only
    /// valid there.
    pub fn popped_from(&self, mem: &Arc<GuestMemoryMmap>) -> bool {
        self.mem == Arc::as_ptr(mem) as usize
    }

    /// The device-readable buffers.
    pub fn readable(&self) -> &[Buffer] {
        &self.buffers[..self.readable]
    }

    /// The device-writable buffers.
    pub fn writable(&self) -> &[Buffer] {
        &self.buffers[self.readable..]
    }
}

#[derive(Clone, Copy)]
struct Descriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

impl Queue {
    /// Reads descriptor `i` of `table` (the queue's own table, or an indirect one).
    /// `cache` is the queue's ring cache when `table` is the queue's own table.
    fn read_desc(
        mem: &GuestMemoryMmap,
        cache: Option<&RingCache>,
        table: GuestAddress,
        i: u16,
    ) -> Result<Descriptor, QueueError> {
        let words = match cache.and_then(|c| c.read_desc(i)) {
            Some(words) => words,
            None => {
                let at = off(table, DESC_SIZE * u64::from(i));
                let mut raw = [0u8; 16];
                mem.read_slice(&mut raw, at)
                    .map_err(|_| QueueError::RingOutsideMemory(at.0))?;
                let word = |k: usize| u64::from_le_bytes(raw[8 * k..8 * k + 8].try_into().unwrap());
                [word(0), word(1)]
            }
        };
        // {addr u64, len u32, flags u16, next u16}, little-endian.
        Ok(Descriptor {
            addr: words[0],
            len: words[1] as u32,
            flags: (words[1] >> 32) as u16,
            next: (words[1] >> 48) as u16,
        })
    }

    /// Walks a chain from `head` into `chain`, following one indirect table if the head
    /// names one.
    pub(super) fn read_chain(
        &self,
        mem: &Arc<GuestMemoryMmap>,
        head: u16,
        chain: &mut DescriptorChain,
    ) -> Result<(), QueueError> {
        let cache = self.cache_for(mem);
        let mut table = self.desc_table;
        let mut table_len = self.size;
        let mut table_cache = cache;
        let mut desc = Self::read_desc(mem, table_cache, table, head)?;
        if desc.flags & VRING_DESC_F_INDIRECT != 0 {
            (table, table_len) = self.indirect_table(mem, &desc)?;
            table_cache = None;
            desc = Self::read_desc(mem, table_cache, table, 0)?;
        }
        chain.head = head;
        chain.buffers.clear();
        chain.readable = 0;
        chain.mem = Arc::as_ptr(mem) as usize;
        loop {
            if chain.buffers.len() >= usize::from(table_len) {
                return Err(QueueError::Loop);
            }
            if desc.flags & VRING_DESC_F_INDIRECT != 0 {
                return Err(if table == self.desc_table {
                    QueueError::MisplacedIndirect
                } else {
                    QueueError::NestedIndirect
                });
            }
            let buffer = Self::check_buffer(mem, cache, &desc, chain)?;
            chain.readable += usize::from(!buffer.writable);
            chain.buffers.push(buffer);
            if desc.flags & VRING_DESC_F_NEXT == 0 {
                return Ok(());
            }
            if desc.next >= table_len {
                return Err(QueueError::BadNext(desc.next));
            }
            desc = Self::read_desc(mem, table_cache, table, desc.next)?;
        }
    }

    fn indirect_table(
        &self,
        mem: &GuestMemoryMmap,
        desc: &Descriptor,
    ) -> Result<(GuestAddress, u16), QueueError> {
        if !self.indirect {
            return Err(QueueError::IndirectNotNegotiated);
        }
        if desc.flags & VRING_DESC_F_NEXT != 0 {
            return Err(QueueError::MisplacedIndirect);
        }
        let count = u64::from(desc.len) / DESC_SIZE;
        if desc.len == 0
            || u64::from(desc.len) % DESC_SIZE != 0
            || count > u64::from(VIRTQUEUE_MAX_SIZE)
        {
            return Err(QueueError::BadIndirectSize(desc.len));
        }
        let addr = GuestAddress(desc.addr);
        if !in_ram(mem, addr, desc.len as usize) {
            return Err(QueueError::RingOutsideMemory(desc.addr));
        }
        Ok((addr, count as u16))
    }

    /// Checks one descriptor's buffer and maps it: through `cache`'s region when the buffer
    /// lies there (the usual case), else by a lookup in `mem`.
    fn check_buffer(
        mem: &GuestMemoryMmap,
        cache: Option<&RingCache>,
        desc: &Descriptor,
        chain: &DescriptorChain,
    ) -> Result<Buffer, QueueError> {
        if desc.len == 0 {
            return Err(QueueError::ZeroSizedBuffer);
        }
        let writable = desc.flags & VRING_DESC_F_WRITE != 0;
        // Readable buffers come first: none may follow a writable one.
        if !writable && chain.readable < chain.buffers.len() {
            return Err(QueueError::WrongOrder);
        }
        let addr = GuestAddress(desc.addr);
        let host = match cache.and_then(|c| c.host_range(addr, desc.len)) {
            Some(host) => Some(host),
            None => host_range(mem, addr, desc.len as usize),
        };
        if host.is_none() && !in_ram(mem, addr, desc.len as usize) {
            return Err(QueueError::BufferOutsideMemory {
                addr: desc.addr,
                len: desc.len,
            });
        }
        Ok(Buffer {
            addr,
            len: desc.len,
            writable,
            host: host.and_then(NonNull::new),
        })
    }
}

//! The split virtqueue: how a driver hands buffers to a device and gets them back.
//!
//! QEMU's hw/virtio/virtio.c (virtqueue_pop, virtqueue_push, virtio_should_notify), after the
//! virtio 1.x spec, section 2.7. Three areas of guest memory make a queue of `size` entries:
//!
//! * the descriptor table: `size` × {addr u64, len u32, flags u16, next u16};
//! * the available ring (driver → device): {flags u16, idx u16, ring\[size\] u16, used_event u16};
//! * the used ring (device → driver): {flags u16, idx u16, ring\[size\] {id u32, len u32},
//!   avail_event u16}.
//!
//! Every value read from there is the guest's and may be hostile: indices, descriptor
//! addresses and lengths, `next` links (loops), indirect tables, flags. Each is checked here,
//! and a bad one is a [`QueueError`], which the device turns into "broken" (virtio_error).
//! Guest memory is only ever touched through vm-memory's checked accessors or through host
//! pointers checked against them ([`super::ring_cache`]), so a bad address is an error, never
//! an access outside guest RAM. Every buffer must lie in RAM: QEMU instead maps up to 4 KiB of
//! non-RAM space (MMIO, unassigned) through a bounce buffer and only fails beyond that; rqemu
//! has no device-to-MMIO DMA, so such a descriptor is refused like any bad address.
//!
//! Walking one descriptor chain (links, indirect tables, buffer checks) is `chain`; this
//! module keeps the rings: configuration, popping heads, pushing used elements, notification.

use std::fmt;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub use super::guest_mem::host_pieces;
mod chain;

use super::guest_mem::in_ram;
use super::ring_cache::{Ring, RingCache};
pub use chain::{Buffer, DescriptorChain};

/// Descriptor flag: the chain continues at `next`.
pub const VRING_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const VRING_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer holds a table of descriptors.
pub const VRING_DESC_F_INDIRECT: u16 = 4;
/// Used-ring flag: the device asks not to be notified (without EVENT_IDX).
pub const VRING_USED_F_NO_NOTIFY: u16 = 1;
/// Avail-ring flag: the driver asks not to be interrupted (without EVENT_IDX).
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Largest queue and largest indirect table accepted (QEMU's VIRTQUEUE_MAX_SIZE).
pub const VIRTQUEUE_MAX_SIZE: u16 = 1024;

const DESC_SIZE: u64 = 16;

/// A guest mistake in a queue; the device reports it with virtio_error and stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// A ring or descriptor table lies (partly) outside guest RAM.
    RingOutsideMemory(u64),
    /// The available index moved by more than the queue size.
    AvailIndexJump {
        /// Index the device expected to continue from.
        from: u16,
        /// Index the driver published.
        to: u16,
    },
    /// More chains in flight than the queue has entries.
    SizeExceeded,
    /// A queue size that is zero, not a power of two, or above the maximum.
    BadSize(u16),
    /// An available-ring entry names a head outside the table.
    BadHead(u16),
    /// A `next` link points outside its table.
    BadNext(u16),
    /// The chain visits more descriptors than its table holds: a loop.
    Loop,
    /// A descriptor has length zero.
    ZeroSizedBuffer,
    /// A descriptor's buffer lies (partly) outside guest RAM.
    BufferOutsideMemory {
        /// Guest address of the buffer.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A device-readable descriptor follows a device-writable one.
    WrongOrder,
    /// An indirect table whose length is zero or not a multiple of 16, or too large.
    BadIndirectSize(u32),
    /// An indirect descriptor inside an indirect table.
    NestedIndirect,
    /// An indirect descriptor that is not alone at the head of the chain.
    MisplacedIndirect,
    /// INDIRECT used though the driver did not accept the feature.
    IndirectNotNegotiated,
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::RingOutsideMemory(a) => write!(f, "virtio: ring at 0x{a:x} not in RAM"),
            QueueError::AvailIndexJump { from, to } => {
                write!(f, "Guest moved used index from {from} to {to}")
            }
            QueueError::SizeExceeded => write!(f, "Virtqueue size exceeded"),
            QueueError::BadSize(n) => write!(f, "Invalid virtqueue size {n}"),
            QueueError::BadHead(h) => write!(f, "Guest says index {h} is available"),
            QueueError::BadNext(n) => write!(f, "Desc next is {n}"),
            QueueError::Loop => write!(f, "Looped descriptor"),
            QueueError::ZeroSizedBuffer => write!(f, "virtio: zero sized buffers are not allowed"),
            QueueError::BufferOutsideMemory { addr, len } => {
                write!(f, "virtio: bogus descriptor 0x{addr:x}+{len}")
            }
            QueueError::WrongOrder => write!(f, "Incorrect order for descriptors"),
            QueueError::BadIndirectSize(n) => {
                write!(f, "Invalid size for indirect buffer table {n}")
            }
            QueueError::NestedIndirect => write!(f, "Nested indirect descriptor"),
            QueueError::MisplacedIndirect => write!(f, "Indirect descriptor not alone in chain"),
            QueueError::IndirectNotNegotiated => write!(f, "Indirect descriptor not negotiated"),
        }
    }
}

/// One split virtqueue: the driver's configuration plus the device's position in it.
#[derive(Clone, Debug)]
pub struct Queue {
    /// Largest size the device supports.
    pub max_size: u16,
    /// Size the driver chose (a power of two).
    pub size: u16,
    /// Whether the driver enabled the queue.
    pub ready: bool,
    /// Guest address of the descriptor table.
    pub desc_table: GuestAddress,
    /// Guest address of the available ring ("driver area").
    pub avail_ring: GuestAddress,
    /// Guest address of the used ring ("device area").
    pub used_ring: GuestAddress,
    next_avail: u16,
    next_used: u16,
    in_flight: u16,
    signalled_used: Option<u16>,
    /// Whether the device wants kicks now (off while it is popping).
    notification: bool,
    event_idx: bool,
    indirect: bool,
    /// The (size, desc, avail, used) last found valid, so the check runs once per setup.
    validated: Option<(u16, GuestAddress, GuestAddress, GuestAddress)>,
    /// Host pointers to the validated rings.
    cache: Option<RingCache>,
}

impl Queue {
    /// A disabled queue of at most `max_size` entries.
    pub fn new(max_size: u16) -> Queue {
        Queue {
            max_size,
            size: max_size,
            ready: false,
            desc_table: GuestAddress(0),
            avail_ring: GuestAddress(0),
            used_ring: GuestAddress(0),
            next_avail: 0,
            next_used: 0,
            in_flight: 0,
            signalled_used: None,
            notification: true,
            event_idx: false,
            indirect: false,
            validated: None,
            cache: None,
        }
    }

    /// Back to the state after device reset (the ring features are renegotiated too).
    pub fn reset(&mut self) {
        *self = Queue::new(self.max_size);
    }

    /// Applies the negotiated ring features.
    pub fn set_ring_features(&mut self, event_idx: bool, indirect: bool) {
        self.event_idx = event_idx;
        self.indirect = indirect;
    }

    /// Sets the ring addresses the legacy way: one page frame, rings laid out contiguously
    /// with the used ring aligned to `align` (4096 for virtio-pci legacy).
    pub fn set_legacy_pfn(&mut self, pfn: u32, align: u64) {
        if pfn == 0 {
            self.reset_position();
            self.ready = false;
            return;
        }
        let base = u64::from(pfn) << 12;
        let size = u64::from(self.size);
        let avail = base + DESC_SIZE * size;
        let used = (avail + 6 + 2 * size).next_multiple_of(align);
        self.desc_table = GuestAddress(base);
        self.avail_ring = GuestAddress(avail);
        self.used_ring = GuestAddress(used);
        self.ready = true;
    }

    fn reset_position(&mut self) {
        self.next_avail = 0;
        self.next_used = 0;
        self.in_flight = 0;
        self.signalled_used = None;
        self.notification = true;
    }

    /// Number of chains popped and not yet returned.
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// Whether the configuration names a usable queue: a non-zero power-of-two size no larger
    /// than the maximum, and rings entirely inside guest memory.
    pub fn check_config(&mut self, mem: &Arc<GuestMemoryMmap>) -> Result<(), QueueError> {
        let config = (self.size, self.desc_table, self.avail_ring, self.used_ring);
        if self.validated == Some(config) && self.cache.as_ref().is_some_and(|c| c.is_for(mem)) {
            return Ok(());
        }
        if self.size == 0 || !self.size.is_power_of_two() || self.size > self.max_size {
            return Err(QueueError::BadSize(self.size));
        }
        let size = u64::from(self.size);
        let rings = [
            (self.desc_table, DESC_SIZE * size),
            (self.avail_ring, 6 + 2 * size),
            (self.used_ring, 6 + 8 * size),
        ];
        for (addr, len) in rings {
            if !in_ram(mem, addr, len as usize) {
                return Err(QueueError::RingOutsideMemory(addr.0));
            }
        }
        self.validated = Some(config);
        self.cache = Some(RingCache::new(mem, rings[0], rings[1], rings[2]));
        Ok(())
    }

    fn base(&self, ring: Ring) -> GuestAddress {
        match ring {
            Ring::Desc => self.desc_table,
            Ring::Avail => self.avail_ring,
            Ring::Used => self.used_ring,
        }
    }

    fn cache_for(&self, mem: &Arc<GuestMemoryMmap>) -> Option<&RingCache> {
        self.cache.as_ref().filter(|c| c.is_for(mem))
    }

    /// Reads the u16 at `offset` of a ring: through the cache, else vm-memory's accessors.
    fn read_u16(
        &self,
        mem: &Arc<GuestMemoryMmap>,
        ring: Ring,
        offset: u64,
    ) -> Result<u16, QueueError> {
        if let Some(v) = self.cache_for(mem).and_then(|c| c.read_u16(ring, offset)) {
            return Ok(v);
        }
        let addr = off(self.base(ring), offset);
        mem.read_obj::<u16>(addr)
            .map(u16::from_le)
            .map_err(|_| QueueError::RingOutsideMemory(addr.0))
    }

    /// Writes the u16 at `offset` of a ring.
    fn write_u16(
        &self,
        mem: &Arc<GuestMemoryMmap>,
        ring: Ring,
        offset: u64,
        v: u16,
    ) -> Result<(), QueueError> {
        if self
            .cache_for(mem)
            .is_some_and(|c| c.write_u16(ring, offset, v))
        {
            return Ok(());
        }
        let addr = off(self.base(ring), offset);
        mem.write_obj(v.to_le(), addr)
            .map_err(|_| QueueError::RingOutsideMemory(addr.0))
    }

    fn avail_idx(&self, mem: &Arc<GuestMemoryMmap>) -> Result<u16, QueueError> {
        let idx = self.read_u16(mem, Ring::Avail, 2)?;
        // Read the ring entries only after the index that published them (smp_rmb).
        fence(Ordering::Acquire);
        Ok(idx)
    }

    /// Whether the driver published chains the device has not popped yet.
    pub fn has_pending(&self, mem: &Arc<GuestMemoryMmap>) -> Result<bool, QueueError> {
        Ok(self.avail_idx(mem)? != self.next_avail)
    }

    /// Takes the next available chain into `chain`, validated (virtqueue_pop); false if there
    /// is none. The caller's chain is reused from one pop to the next, so popping neither
    /// allocates nor moves the buffer list around.
    pub fn pop(
        &mut self,
        mem: &Arc<GuestMemoryMmap>,
        chain: &mut DescriptorChain,
    ) -> Result<bool, QueueError> {
        if !self.ready {
            return Ok(false);
        }
        self.check_config(mem)?;
        let avail = self.avail_idx(mem)?;
        let pending = avail.wrapping_sub(self.next_avail);
        if pending > self.size {
            return Err(QueueError::AvailIndexJump {
                from: self.next_avail,
                to: avail,
            });
        }
        if pending == 0 {
            return Ok(false);
        }
        if self.in_flight >= self.size {
            return Err(QueueError::SizeExceeded);
        }
        let slot = u64::from(self.next_avail % self.size);
        let head = self.read_u16(mem, Ring::Avail, 4 + 2 * slot)?;
        if head >= self.size {
            return Err(QueueError::BadHead(head));
        }
        self.read_chain(mem, head, chain)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        self.in_flight += 1;
        if self.event_idx && self.notification {
            // Tell the driver how far we have read: it kicks again only past this point.
            // (While kicks are off, [`Queue::set_notification`] writes it when they come back.)
            self.set_avail_event(mem, self.next_avail)?;
        }
        Ok(true)
    }

    /// Returns finished chains to the driver, as (head, bytes written) pairs: each element
    /// is written to the used ring (virtqueue_fill), then the used index moves once for all
    /// of them (virtqueue_flush), so the driver sees the batch at once. Returns how many
    /// were returned.
    pub fn push_used(
        &mut self,
        mem: &Arc<GuestMemoryMmap>,
        elems: impl IntoIterator<Item = (u16, u32)>,
    ) -> Result<u16, QueueError> {
        // The driver may have reconfigured the queue while the requests ran.
        self.check_config(mem)?;
        let mut count = 0u16;
        for (head, len) in elems {
            let slot = u64::from(self.next_used.wrapping_add(count) % self.size);
            let at = 4 + 8 * slot;
            let cached = self.cache_for(mem).is_some_and(|c| {
                c.write_u32(Ring::Used, at, u32::from(head)) && c.write_u32(Ring::Used, at + 4, len)
            });
            if !cached {
                let elem = off(self.used_ring, at);
                let mut raw = [0u8; 8];
                raw[..4].copy_from_slice(&u32::from(head).to_le_bytes());
                raw[4..].copy_from_slice(&len.to_le_bytes());
                mem.write_slice(&raw, elem)
                    .map_err(|_| QueueError::RingOutsideMemory(elem.0))?;
            }
            count += 1;
        }
        if count > 0 {
            // The elements must be visible before the index that publishes them (smp_wmb).
            fence(Ordering::Release);
            self.next_used = self.next_used.wrapping_add(count);
            self.write_u16(mem, Ring::Used, 2, self.next_used)?;
            self.in_flight = self.in_flight.saturating_sub(count);
        }
        Ok(count)
    }

    fn set_avail_event(&self, mem: &Arc<GuestMemoryMmap>, idx: u16) -> Result<(), QueueError> {
        self.write_u16(mem, Ring::Used, 4 + 8 * u64::from(self.size), idx)
    }

    /// Turns guest notifications (kicks) on or off (virtio_queue_set_notification). Returns
    /// whether chains are pending, to be re-checked after enabling: a chain published just
    /// before notifications came back on would otherwise wait for the next kick.
    pub fn set_notification(
        &mut self,
        mem: &Arc<GuestMemoryMmap>,
        enable: bool,
    ) -> Result<bool, QueueError> {
        self.check_config(mem)?;
        self.notification = enable;
        if self.event_idx {
            if enable {
                let idx = self.read_u16(mem, Ring::Avail, 2)?;
                self.set_avail_event(mem, idx)?;
            }
        } else {
            let flags = if enable { 0 } else { VRING_USED_F_NO_NOTIFY };
            self.write_u16(mem, Ring::Used, 0, flags)?;
        }
        // The flag write must be visible before we look at the index again (smp_mb).
        fence(Ordering::SeqCst);
        self.has_pending(mem)
    }

    /// Whether the driver wants an interrupt for the used elements added since the last one
    /// (virtio_should_notify). `notify_on_empty` is the legacy NOTIFY_ON_EMPTY feature.
    pub fn needs_notification(
        &mut self,
        mem: &Arc<GuestMemoryMmap>,
        notify_on_empty: bool,
    ) -> Result<bool, QueueError> {
        self.check_config(mem)?;
        // The used index must be visible before we read the driver's suppression state (smp_mb).
        fence(Ordering::SeqCst);
        if notify_on_empty && self.in_flight == 0 && !self.has_pending(mem)? {
            return Ok(true);
        }
        if !self.event_idx {
            let flags = self.read_u16(mem, Ring::Avail, 0)?;
            return Ok(flags & VRING_AVAIL_F_NO_INTERRUPT == 0);
        }
        let used_event = self.read_u16(mem, Ring::Avail, 4 + 2 * u64::from(self.size))?;
        let new = self.next_used;
        let old = self.signalled_used.replace(new);
        Ok(match old {
            None => true,
            Some(old) => vring_need_event(used_event, new, old),
        })
    }
}

/// `base + n` as a guest address. Guest-chosen ring addresses may sit anywhere, so the sum
/// wraps instead of overflowing; whatever it yields is checked against guest RAM on access.
fn off(base: GuestAddress, n: u64) -> GuestAddress {
    GuestAddress(base.0.wrapping_add(n))
}

/// Whether moving the used index from `old` to `new` crossed `event` (the driver's
/// used_event), all modulo 2^16: the virtio spec's vring_need_event.
pub fn vring_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_follows_the_spec_formula() {
        assert!(vring_need_event(0, 1, 0));
        assert!(!vring_need_event(5, 3, 0));
        assert!(vring_need_event(5, 6, 0));
        assert!(!vring_need_event(5, 7, 6));
        assert!(vring_need_event(0xffff, 0, 0xfffe));
    }
}

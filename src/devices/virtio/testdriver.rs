//! A minimal guest-side virtio driver over guest memory, for tests and benchmarks.
//!
//! Plays the role of Linux's drivers/virtio/virtio_ring.c in miniature: it lays out a split
//! ring in a GuestMemoryMmap, writes descriptor chains, publishes them in the available ring,
//! and collects used elements — so the device can be driven with no vCPU. It also writes raw
//! descriptors, which is how the tests build malformed chains a real driver never would.

use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use block::aio::notifier::EventNotifier;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::pci::{legacy, VirtioPciDevice, LEGACY_BAR};
use super::queue::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use super::ring_cache::{Ring, RingCache};
use super::VIRTIO_CONFIG_S_DRIVER_OK;
use super::{VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER};
use crate::devices::IrqLine;

/// One buffer of a chain as the driver describes it.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    /// Guest address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Device-writable.
    pub writable: bool,
}

impl Buf {
    /// A device-readable buffer.
    pub fn r(addr: u64, len: u32) -> Buf {
        Buf {
            addr,
            len,
            writable: false,
        }
    }

    /// A device-writable buffer.
    pub fn w(addr: u64, len: u32) -> Buf {
        Buf {
            addr,
            len,
            writable: true,
        }
    }
}

/// The driver side of one legacy-layout split ring.
pub struct TestDriver {
    mem: Arc<GuestMemoryMmap>,
    /// Guest address of the descriptor table (page aligned for legacy: the PFN is base >> 12).
    pub base: u64,
    /// Queue size.
    pub size: u16,
    avail: u64,
    used: u64,
    avail_idx: u16,
    last_used: u16,
    free: Vec<u16>,
    /// The descriptors of the chain each head starts, to free when it comes back.
    chains: Vec<Vec<u16>>,
    /// Host views of the rings; the accessors below fall back to vm-memory without them.
    cache: RingCache,
}

impl TestDriver {
    /// A ring of `size` entries at page-aligned `base`, laid out as legacy virtio-pci does.
    pub fn new(mem: Arc<GuestMemoryMmap>, base: u64, size: u16) -> TestDriver {
        let avail = base + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size)).next_multiple_of(4096);
        TestDriver::with_layout(mem, base, avail, used, size)
    }

    /// A ring with the three areas where the caller wants them (modern drivers choose each;
    /// tests use it for misaligned rings). The areas must not overlap; `desc` comes first.
    pub fn with_layout(
        mem: Arc<GuestMemoryMmap>,
        desc: u64,
        avail: u64,
        used: u64,
        size: u16,
    ) -> TestDriver {
        let n = u64::from(size);
        let cache = RingCache::new(
            &mem,
            (GuestAddress(desc), 16 * n),
            (GuestAddress(avail), 6 + 2 * n),
            (GuestAddress(used), 6 + 8 * n),
        );
        let end = (avail + 6 + 2 * n).max(used + 6 + 8 * n);
        let zeroes = vec![0u8; (end - desc) as usize];
        mem.write_slice(&zeroes, GuestAddress(desc))
            .expect("ring in RAM");
        TestDriver {
            cache,
            mem,
            base: desc,
            size,
            avail,
            used,
            avail_idx: 0,
            last_used: 0,
            free: (0..size).rev().collect(),
            chains: vec![Vec::new(); usize::from(size)],
        }
    }

    /// Brings a legacy device up as SeaBIOS does: reset, ACK|DRIVER, features, PFN,
    /// DRIVER_OK. Returns the device features.
    pub fn legacy_init(&self, dev: &mut VirtioPciDevice, features: u32) -> u32 {
        let status = |dev: &mut VirtioPciDevice, v: u8| {
            dev.bar_write(LEGACY_BAR, legacy::VIRTIO_PCI_STATUS, &[v])
        };
        status(dev, 0);
        status(dev, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
        let mut host = [0u8; 4];
        dev.bar_read(LEGACY_BAR, legacy::VIRTIO_PCI_HOST_FEATURES, &mut host);
        let host = u32::from_le_bytes(host);
        let guest = (host & features).to_le_bytes();
        dev.bar_write(LEGACY_BAR, legacy::VIRTIO_PCI_GUEST_FEATURES, &guest);
        dev.bar_write(LEGACY_BAR, legacy::VIRTIO_PCI_QUEUE_SEL, &[0, 0]);
        let pfn = ((self.base >> 12) as u32).to_le_bytes();
        dev.bar_write(LEGACY_BAR, legacy::VIRTIO_PCI_QUEUE_PFN, &pfn);
        let ok = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK;
        status(dev, ok);
        host
    }

    /// Writes descriptor `i` as given, without any checking.
    pub fn write_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        if !self.cache.write_desc(i, desc_bytes(addr, len, flags, next)) {
            self.write_desc_at(self.base + 16 * u64::from(i), addr, len, flags, next);
        }
    }

    /// Writes a descriptor at any guest address (for indirect tables).
    pub fn write_desc_at(&self, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let raw = desc_bytes(addr, len, flags, next);
        self.mem
            .write_slice(&raw, GuestAddress(at))
            .expect("descriptor in RAM");
    }

    /// Writes `bufs` as a chain in free descriptors and publishes it; `None` if the ring is
    /// full.
    pub fn add_chain(&mut self, bufs: &[Buf]) -> Option<u16> {
        if bufs.is_empty() || self.free.len() < bufs.len() {
            return None;
        }
        let ids_start = self.free.len() - bufs.len();
        let head = *self.free.last().unwrap();
        for (k, b) in bufs.iter().enumerate() {
            let id = self.free[self.free.len() - 1 - k];
            let next = (k + 1 < bufs.len()).then(|| self.free[self.free.len() - 2 - k]);
            let flags = if b.writable { VRING_DESC_F_WRITE } else { 0 }
                | if next.is_some() { VRING_DESC_F_NEXT } else { 0 };
            self.write_desc(id, b.addr, b.len, flags, next.unwrap_or(0));
        }
        let chain = &mut self.chains[usize::from(head)];
        chain.clear();
        chain.extend(self.free.drain(ids_start..).rev());
        self.publish(head);
        Some(head)
    }

    /// Puts `head` in the available ring and bumps its index.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.write_u16(self.avail + 4 + 2 * slot, head);
        fence(Ordering::Release);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.write_u16(self.avail + 2, self.avail_idx);
    }

    /// Sets the available index to any value (to test index jumps).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        self.write_u16(self.avail + 2, idx);
    }

    /// Sets the avail ring's used_event field (EVENT_IDX).
    pub fn set_used_event(&self, v: u16) {
        self.write_u16(self.avail + 4 + 2 * u64::from(self.size), v);
    }

    /// The index of the next used element the driver will take.
    pub fn last_used(&self) -> u16 {
        self.last_used
    }

    /// The used ring's avail_event field (EVENT_IDX).
    pub fn avail_event(&self) -> u16 {
        self.read_u16(self.used + 4 + 8 * u64::from(self.size))
    }

    /// Takes the next used element (id, len), freeing its descriptors.
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        if self.read_u16(self.used + 2) == self.last_used {
            return None;
        }
        fence(Ordering::Acquire);
        let off = 4 + 8 * u64::from(self.last_used % self.size);
        let read_u32 = |off: u64| {
            self.cache.read_u32(Ring::Used, off).unwrap_or_else(|| {
                let v: u32 = self
                    .mem
                    .read_obj(GuestAddress(self.used + off))
                    .expect("used ring in RAM");
                u32::from_le(v)
            })
        };
        let (id, len) = (read_u32(off), read_u32(off + 4));
        self.last_used = self.last_used.wrapping_add(1);
        if let Some(chain) = self.chains.get_mut(id as usize) {
            self.free.extend(chain.drain(..).rev());
        }
        Some((id, len))
    }

    /// Kicks queue 0 through the legacy notify register.
    pub fn kick(&self, dev: &mut VirtioPciDevice) {
        dev.bar_write(LEGACY_BAR, legacy::VIRTIO_PCI_QUEUE_NOTIFY, &[0, 0]);
    }

    /// The ring and offset of guest address `at` inside this driver's rings.
    fn locate(&self, at: u64) -> (Ring, u64) {
        let n = u64::from(self.size);
        if (self.used..self.used + 6 + 8 * n).contains(&at) {
            (Ring::Used, at - self.used)
        } else if (self.avail..self.avail + 6 + 2 * n).contains(&at) {
            (Ring::Avail, at - self.avail)
        } else {
            (Ring::Desc, at - self.base)
        }
    }

    fn write_u16(&self, at: u64, v: u16) {
        let (ring, off) = self.locate(at);
        if !self.cache.write_u16(ring, off, v) {
            self.mem
                .write_obj(v.to_le(), GuestAddress(at))
                .expect("ring in RAM");
        }
    }

    fn read_u16(&self, at: u64) -> u16 {
        let (ring, off) = self.locate(at);
        self.cache.read_u16(ring, off).unwrap_or_else(|| {
            u16::from_le(self.mem.read_obj(GuestAddress(at)).expect("ring in RAM"))
        })
    }
}

fn desc_bytes(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut raw = [0u8; 16];
    raw[0..8].copy_from_slice(&addr.to_le_bytes());
    raw[8..12].copy_from_slice(&len.to_le_bytes());
    raw[12..14].copy_from_slice(&flags.to_le_bytes());
    raw[14..16].copy_from_slice(&next.to_le_bytes());
    raw
}

/// An interrupt line that counts rising edges and signals an eventfd, as an irqfd would.
#[derive(Default)]
pub struct IrqCounter {
    /// Rising edges seen.
    pub raised: AtomicU64,
    level: std::sync::atomic::AtomicBool,
    /// Signalled on each rising edge, if set.
    pub event: Option<EventNotifier>,
    /// Woken on each rising edge: a simulated vCPU taking the interrupt (see
    /// [`IrqCounter::raised_after`]).
    vcpu: Mutex<Option<Waker>>,
}

impl IrqCounter {
    /// A counter that also signals a fresh eventfd.
    pub fn with_event() -> block::Result<IrqCounter> {
        Ok(IrqCounter {
            event: Some(EventNotifier::new()?),
            ..IrqCounter::default()
        })
    }

    /// Whether the line is asserted now.
    pub fn level(&self) -> bool {
        self.level.load(Ordering::SeqCst)
    }

    /// Waits until the line has risen more than `seen` times in all, and returns the count:
    /// the interrupt as a vCPU receives it. The eventfd is left alone, as in a VM, where KVM
    /// consumes the irqfd and the event loop never reads it.
    pub async fn raised_after(&self, seen: u64) -> u64 {
        std::future::poll_fn(|cx| {
            let check = || Some(self.raised.load(Ordering::SeqCst)).filter(|&n| n > seen);
            if let Some(n) = check() {
                return Poll::Ready(n);
            }
            *lock_vcpu(&self.vcpu) = Some(cx.waker().clone());
            // An edge between the check and the store woke nobody: look again.
            check().map_or(Poll::Pending, Poll::Ready)
        })
        .await
    }
}

fn lock_vcpu(m: &Mutex<Option<Waker>>) -> std::sync::MutexGuard<'_, Option<Waker>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl IrqLine for IrqCounter {
    fn set_level(&self, asserted: bool) {
        let was = self.level.swap(asserted, Ordering::SeqCst);
        if asserted && !was {
            self.raised.fetch_add(1, Ordering::SeqCst);
            if let Some(e) = &self.event {
                e.set();
            }
            if let Some(vcpu) = lock_vcpu(&self.vcpu).take() {
                vcpu.wake();
            }
        }
    }
}

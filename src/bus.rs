//! Port-I/O and MMIO dispatch: which device answers an access at a given address.
//!
//! QEMU's system/ioport.c and the address-space dispatch of system/memory.c, reduced to what
//! a PC without memory-mapped devices needs. A vCPU exit (`KVM_EXIT_IO`, `KVM_EXIT_MMIO`)
//! arrives here with an address and a byte slice; the bus finds the range that covers it and
//! calls the device with the offset inside its range. Unclaimed reads return all-ones, as an
//! ISA bus with nothing driving the lines does, and unclaimed writes vanish.
//!
//! All buses live inside [`Bql`], the one device lock (QEMU's "big QEMU lock"): the vCPU
//! thread takes it for each exit and the main loop takes it for its timers, so a device never
//! sees two callers at once. Each device also sits in its own `Mutex` so that several owners
//! (the bus, a completion bottom half) can hold it. A disk's completion bottom half takes only
//! that device lock, not the BQL: it touches nothing else, and the vCPU's next exit need not
//! wait for it.

use crate::error::MachineError;
use std::sync::{Arc, Mutex, MutexGuard};

/// A device model reachable through a bus.
pub trait BusDevice: Send {
    /// A read of `data.len()` bytes at `offset` within the range registered at `base`.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    /// A write of `data` at `offset` within the range registered at `base`.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);

    /// A string read (`rep ins`): `data.len() / size` reads of `size` bytes from the same
    /// port. The default makes them one by one; a device that can take the whole buffer at
    /// once (the IDE data port) overrides this to save a lock round and call per element.
    fn read_string(&mut self, base: u64, offset: u64, size: usize, data: &mut [u8]) {
        for chunk in data.chunks_mut(size.max(1)) {
            self.read(base, offset, chunk);
        }
    }

    /// A string write (`rep outs`), split by default like [`BusDevice::read_string`].
    fn write_string(&mut self, base: u64, offset: u64, size: usize, data: &[u8]) {
        for chunk in data.chunks(size.max(1)) {
            self.write(base, offset, chunk);
        }
    }
}

/// A shared device handle as the buses keep it.
pub type DeviceRef = Arc<Mutex<dyn BusDevice>>;

struct Range {
    base: u64,
    len: u64,
    device: DeviceRef,
}

/// One address space (I/O ports or memory) of non-overlapping device ranges, plus an
/// optional fallback that sees every access no range claims (with base 0 and the address as
/// offset): the PCI bus, whose BARs move wherever firmware programs them.
#[derive(Default)]
pub struct Bus {
    ranges: Vec<Range>,
    fallback: Option<DeviceRef>,
}

impl Bus {
    /// Registers `device` for `[base, base + len)`; fails if that overlaps a registered range.
    pub fn insert(&mut self, base: u64, len: u64, device: DeviceRef) -> Result<(), MachineError> {
        if len == 0 {
            return Err(MachineError::Device(format!(
                "empty bus range at {base:#x}"
            )));
        }
        if let Some(r) = self
            .ranges
            .iter()
            .find(|r| base < r.base + r.len && r.base < base + len)
        {
            return Err(MachineError::Device(format!(
                "bus range {base:#x}+{len:#x} overlaps {:#x}+{:#x}",
                r.base, r.len
            )));
        }
        let at = self.ranges.partition_point(|r| r.base < base);
        self.ranges.insert(at, Range { base, len, device });
        Ok(())
    }

    /// Sets the device that answers unclaimed accesses.
    pub fn set_fallback(&mut self, device: DeviceRef) {
        self.fallback = Some(device);
    }

    /// Removes the range registered at `base`.
    pub fn remove(&mut self, base: u64) -> Option<DeviceRef> {
        let at = self.ranges.iter().position(|r| r.base == base)?;
        Some(self.ranges.remove(at).device)
    }

    fn find(&self, addr: u64, len: u64) -> Option<&Range> {
        let at = self.ranges.partition_point(|r| r.base <= addr);
        let r = self.ranges[..at].last()?;
        (addr + len <= r.base + r.len).then_some(r)
    }

    /// Dispatches a read; returns whether a device claimed it (unclaimed bytes read 0xFF).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        self.read_string(addr, data.len(), data)
    }

    /// Dispatches a write; returns whether a device claimed it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        self.write_string(addr, data.len(), data)
    }

    /// Dispatches `data.len() / size` reads of `size` bytes at `addr` (a string instruction;
    /// `size == data.len()` for a single access) to one device in one call.
    pub fn read_string(&self, addr: u64, size: usize, data: &mut [u8]) -> bool {
        match self.find(addr, size as u64) {
            Some(r) => {
                lock(&r.device).read_string(r.base, addr - r.base, size, data);
                true
            }
            None => match &self.fallback {
                Some(dev) => {
                    lock(dev).read_string(0, addr, size, data);
                    true
                }
                None => {
                    data.fill(0xFF);
                    false
                }
            },
        }
    }

    /// Dispatches `data.len() / size` writes of `size` bytes at `addr` in one call.
    pub fn write_string(&self, addr: u64, size: usize, data: &[u8]) -> bool {
        match self.find(addr, size as u64) {
            Some(r) => {
                lock(&r.device).write_string(r.base, addr - r.base, size, data);
                true
            }
            None => match &self.fallback {
                Some(dev) => {
                    lock(dev).write_string(0, addr, size, data);
                    true
                }
                None => false,
            },
        }
    }
}

/// Locks a device, ignoring poisoning: a panicking device thread already ends the process.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The I/O-port and memory buses of one machine.
#[derive(Default)]
pub struct IoBuses {
    /// Port I/O (`in`/`out`), 64 KiB of ports.
    pub pio: Bus,
    /// Memory-mapped I/O.
    pub mmio: Bus,
}

/// The device lock: the buses, and through them every device (QEMU's BQL).
#[derive(Clone, Default)]
pub struct Bql(Arc<Mutex<IoBuses>>);

impl Bql {
    /// Wraps the machine's buses.
    pub fn new(buses: IoBuses) -> Bql {
        Bql(Arc::new(Mutex::new(buses)))
    }

    /// Takes the lock (qemu_mutex_lock_iothread).
    pub fn lock(&self) -> MutexGuard<'_, IoBuses> {
        lock(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, u64, u8)>);
    impl BusDevice for Echo {
        fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
            data.fill((base + offset) as u8);
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.0.push((base, offset, data[0]));
        }
    }

    #[test]
    fn dispatches_by_range_with_offsets_and_reads_ff_when_unclaimed() {
        let dev = Arc::new(Mutex::new(Echo(Vec::new())));
        let mut bus = Bus::default();
        bus.insert(0x60, 1, dev.clone()).unwrap();
        bus.insert(0x64, 1, dev.clone()).unwrap();
        bus.insert(0x3F8, 8, dev.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3FD, &mut b));
        assert_eq!(b[0], 0xFD);
        assert!(!bus.read(0x61, &mut b));
        assert_eq!(b[0], 0xFF);
        assert!(bus.write(0x64, &[0xFE]));
        assert!(!bus.write(0x400, &[1]));
        let mut w = [0u8; 2];
        assert!(!bus.read(0x3FF, &mut w), "an access crossing the range end");
        assert_eq!(dev.lock().unwrap().0, vec![(0x64, 0, 0xFE)]);
    }

    #[test]
    fn overlapping_ranges_are_refused_and_ranges_can_move() {
        let dev = Arc::new(Mutex::new(Echo(Vec::new())));
        let mut bus = Bus::default();
        bus.insert(0xCF8, 8, dev.clone()).unwrap();
        assert!(bus.insert(0xCFC, 1, dev.clone()).is_err());
        assert!(bus.remove(0xCF8).is_some());
        bus.insert(0xCFC, 1, dev).unwrap();
    }
}

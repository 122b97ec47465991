//! Guest physical memory of the PC: RAM around the PCI hole and the BIOS ROM below 4 GiB.
//!
//! QEMU's hw/i386/pc.c (pc_memory_init) and hw/i386/x86.c (x86_bios_rom_init). RAM is split
//! in two at the "PCI hole": the low part starts at 0, the rest continues at 4 GiB, and the
//! addresses in between are left to device MMIO, the IOAPIC, the LAPIC, KVM's TSS pages
//! and the firmware. The BIOS image is mapped read-only so that it ends exactly at 4 GiB (the
//! reset vector is its last 16 bytes); its last 128 KiB also appear at 0xE0000-0xFFFFF, where
//! real-mode code runs. QEMU aliases those with PAM-controlled regions; here the low copy is
//! plain RAM filled at start, which SeaBIOS's shadowing treats the same way.

use crate::error::MachineError;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Where RAM below 4 GiB stops when the guest has more than [`LOWMEM_LIMIT`] of it
/// (QEMU's pc machine with gigabyte alignment: 3 GiB).
pub const PCI_HOLE_START: u64 = 0xC000_0000;
/// Guests up to this size keep all their RAM below 4 GiB (QEMU's 0xE0000000).
pub const LOWMEM_LIMIT: u64 = 0xE000_0000;
/// The start of RAM above the hole.
pub const HIGHMEM_START: u64 = 1 << 32;
/// The low BIOS window: the image's last 128 KiB are visible at 0xE0000.
pub const LOW_BIOS_START: u64 = 0xE_0000;
/// Size of the low BIOS window.
pub const LOW_BIOS_SIZE: usize = 128 << 10;
/// KVM's identity-map page (real-mode emulation on VMX), reserved in the e820 map.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xFEFF_C000;
/// KVM's 3-page TSS area, right after the identity-map page.
pub const KVM_TSS_ADDR: u64 = 0xFEFF_D000;
/// The reserved range covering both (QEMU reserves the same 16 KiB).
pub const KVM_RESERVED: (u64, u64) = (KVM_IDENTITY_MAP_ADDR, 0x4000);

/// One KVM memory slot to register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Guest physical start.
    pub guest_addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Whether guest writes must exit to the VMM instead of changing memory.
    pub read_only: bool,
}

/// The RAM ranges `(start, size)` for `ram_size` bytes of guest RAM.
pub fn ram_ranges(ram_size: u64) -> Vec<(u64, u64)> {
    let below = if ram_size >= LOWMEM_LIMIT {
        PCI_HOLE_START
    } else {
        ram_size
    };
    let mut ranges = vec![(0, below)];
    if ram_size > below {
        ranges.push((HIGHMEM_START, ram_size - below));
    }
    ranges
}

/// The guest's memory: RAM plus the mapped firmware.
pub struct GuestRam {
    mem: GuestMemoryMmap,
    ram_size: u64,
    slots: Vec<Slot>,
}

impl GuestRam {
    /// Allocates `ram_size` bytes of RAM and, if `bios` is given, maps it below 4 GiB and
    /// copies its tail into the low BIOS window.
    pub fn new(ram_size: u64, bios: Option<&[u8]>) -> Result<GuestRam, MachineError> {
        let mut ranges: Vec<(GuestAddress, usize)> = Vec::new();
        let mut slots = Vec::new();
        for (start, size) in ram_ranges(ram_size) {
            ranges.push((GuestAddress(start), size as usize));
            slots.push(Slot {
                guest_addr: start,
                size,
                read_only: false,
            });
        }
        if let Some(image) = bios {
            let size = image.len() as u64;
            ranges.push((GuestAddress(HIGHMEM_START - size), image.len()));
            slots.push(Slot {
                guest_addr: HIGHMEM_START - size,
                size,
                read_only: true,
            });
        }
        // vm-memory wants its regions in address order: the ROM sits between the two RAM parts.
        ranges.sort_by_key(|r| r.0);
        let mem = GuestMemoryMmap::from_ranges(&ranges)
            .map_err(|e| MachineError::Machine(format!("cannot allocate guest memory: {e}")))?;
        for slot in slots.iter().filter(|s| !s.read_only) {
            advise_huge_pages(&mem, slot);
        }
        let ram = GuestRam {
            mem,
            ram_size,
            slots,
        };
        if let Some(image) = bios {
            ram.load_bios(image)?;
        }
        Ok(ram)
    }

    fn load_bios(&self, image: &[u8]) -> Result<(), MachineError> {
        let high = GuestAddress(HIGHMEM_START - image.len() as u64);
        self.write(high, image)?;
        let tail = &image[image.len().saturating_sub(LOW_BIOS_SIZE)..];
        let low = LOW_BIOS_START + (LOW_BIOS_SIZE - tail.len()) as u64;
        self.write(GuestAddress(low), tail)
    }

    /// Guest RAM size in bytes (without the ROM).
    pub fn ram_size(&self) -> u64 {
        self.ram_size
    }

    /// RAM below 4 GiB in bytes.
    pub fn below_4g(&self) -> u64 {
        ram_ranges(self.ram_size)[0].1
    }

    /// RAM above 4 GiB in bytes.
    pub fn above_4g(&self) -> u64 {
        self.ram_size - self.below_4g()
    }

    /// The slots KVM must know about, in guest-address order of creation.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The host address backing guest address `addr` (for KVM_SET_USER_MEMORY_REGION).
    pub fn host_address(&self, addr: u64) -> Option<u64> {
        self.mem
            .get_host_address(GuestAddress(addr))
            .ok()
            .map(|p| p as u64)
    }

    /// The vm-memory view, for loaders that write guest structures.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Copies `data` into guest memory at `addr`.
    pub fn write(&self, addr: GuestAddress, data: &[u8]) -> Result<(), MachineError> {
        self.mem.write_slice(data, addr).map_err(|e| {
            MachineError::Machine(format!("cannot write guest memory at {:#x}: {e}", addr.0))
        })
    }

    /// Copies guest memory at `addr` into `data`.
    pub fn read(&self, addr: GuestAddress, data: &mut [u8]) -> Result<(), MachineError> {
        self.mem.read_slice(data, addr).map_err(|e| {
            MachineError::Machine(format!("cannot read guest memory at {:#x}: {e}", addr.0))
        })
    }
}

/// Asks the kernel to back a RAM slot with transparent huge pages, as QEMU does for guest
/// RAM (QEMU_MADV_HUGEPAGE): with the host in THP "madvise" mode, that is the only way to get
/// them, and 2 MiB mappings spare the guest most of its TLB misses. Only advice: an error
/// (no THP in this kernel) changes nothing.
fn advise_huge_pages(mem: &GuestMemoryMmap, slot: &Slot) {
    if let Ok(host) = mem.get_host_address(GuestAddress(slot.guest_addr)) {
        // SAFETY: `host..host+size` is the slot's own anonymous mapping, which vm-memory
        // created; MADV_HUGEPAGE changes how it is backed, never its contents.
        unsafe { libc::madvise(host.cast(), slot.size as usize, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guests_keep_all_ram_low_and_big_ones_split_at_3g() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_ranges(0xD000_0000), vec![(0, 0xD000_0000)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![
                (0, PCI_HOLE_START),
                (HIGHMEM_START, (4 << 30) - PCI_HOLE_START)
            ]
        );
    }

    #[test]
    fn bios_ends_at_4g_and_its_tail_is_copied_to_0xe0000() {
        let mut image = vec![0u8; 256 << 10];
        image[0] = 0x11;
        *image.last_mut().unwrap() = 0x22;
        image[(256 << 10) - LOW_BIOS_SIZE] = 0x33;
        let ram = GuestRam::new(16 << 20, Some(&image)).unwrap();
        let mut b = [0u8; 1];
        ram.read(GuestAddress(HIGHMEM_START - (256 << 10)), &mut b)
            .unwrap();
        assert_eq!(b[0], 0x11);
        ram.read(GuestAddress(0xF_FFFF), &mut b).unwrap();
        assert_eq!(b[0], 0x22);
        ram.read(GuestAddress(LOW_BIOS_START), &mut b).unwrap();
        assert_eq!(b[0], 0x33);
        let rom = ram.slots().iter().find(|s| s.read_only).unwrap();
        assert_eq!(rom.guest_addr + rom.size, HIGHMEM_START);
    }

    #[test]
    fn big_guests_with_a_bios_map_ram_on_both_sides_of_the_rom() {
        let image = vec![0xF4u8; 256 << 10];
        let ram = GuestRam::new(4 << 30, Some(&image)).unwrap();
        assert_eq!(ram.below_4g(), PCI_HOLE_START);
        assert_eq!(ram.above_4g(), 1 << 30);
        assert_eq!(ram.slots().len(), 3);
        assert!(ram.host_address(HIGHMEM_START + (1 << 30) - 1).is_some());
        assert!(
            ram.host_address(PCI_HOLE_START).is_none(),
            "the PCI hole has no RAM"
        );
    }

    #[test]
    fn a_128k_bios_fills_the_whole_low_window() {
        let image = vec![0x5Au8; 128 << 10];
        let ram = GuestRam::new(8 << 20, Some(&image)).unwrap();
        let mut b = [0u8; 1];
        ram.read(GuestAddress(LOW_BIOS_START), &mut b).unwrap();
        assert_eq!(b[0], 0x5A);
    }
}

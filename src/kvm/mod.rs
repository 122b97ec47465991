//! The KVM virtual machine: what the kernel emulates for us, and the memory it maps.
//!
//! QEMU's accel/kvm/kvm-all.c and target/i386/kvm/kvm.c (kvm_arch_init). Setting up a PC
//! VM takes, in order: the TSS and identity-map pages KVM needs for real-mode emulation on
//! Intel hosts (placed just below the firmware, reserved in the e820 map); the in-kernel
//! interrupt controllers (two 8259s, an IOAPIC and the LAPICs, with GSIs 0-15 routed to both
//! the PIC and the IOAPIC); the in-kernel PIT (the clock tick of a PIC-mode guest); and one
//! memory slot per guest RAM/ROM range. vCPUs are configured in [`cpu`] and run in [`vcpu`].

pub mod cpu;
pub mod vcpu;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MEM_READONLY, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};

use crate::devices::{Irq, IrqLine};
use crate::error::MachineError;
use crate::memory::{GuestRam, KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR};

/// The device node.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// A created VM with its irqchip, PIT and memory in place.
pub struct Vm {
    kvm: Kvm,
    fd: Arc<VmFd>,
}

fn kvm_err(what: &str) -> impl Fn(kvm_ioctls::Error) -> MachineError + '_ {
    move |e| MachineError::Kvm(format!("{what} failed: {e}"))
}

impl Vm {
    /// Opens /dev/kvm and creates a VM over `ram`.
    pub fn new(ram: &GuestRam) -> Result<Vm, MachineError> {
        let kvm = Kvm::new()
            .map_err(|e| MachineError::Kvm(format!("Could not access KVM kernel module: {e}")))?;
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
            .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
        fd.set_tss_address(KVM_TSS_ADDR as usize)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        fd.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
        let vm = Vm {
            kvm,
            fd: Arc::new(fd),
        };
        vm.map_memory(ram)?;
        Ok(vm)
    }

    fn map_memory(&self, ram: &GuestRam) -> Result<(), MachineError> {
        let readonly_ok = self.fd.check_extension(Cap::ReadonlyMem);
        for (slot, s) in ram.slots().iter().enumerate() {
            let host = ram.host_address(s.guest_addr).ok_or_else(|| {
                MachineError::Kvm(format!("no host mapping for {:#x}", s.guest_addr))
            })?;
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                // Without read-only slots the ROM is writable RAM, harmless for SeaBIOS.
                flags: if s.read_only && readonly_ok {
                    KVM_MEM_READONLY
                } else {
                    0
                },
                guest_phys_addr: s.guest_addr,
                memory_size: s.size,
                userspace_addr: host,
            };
            // SAFETY: `host` points into a mapping owned by `ram` of `s.size` bytes. The
            // machine drops `ram` last, after its vCPU: without a vCPU KVM does not touch
            // guest memory, even if the VM fd itself is closed a little later.
            unsafe { self.fd.set_user_memory_region(region) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(())
    }

    /// The VM file descriptor, shared with interrupt lines.
    pub fn fd(&self) -> &Arc<VmFd> {
        &self.fd
    }

    /// An interrupt line driving GSI `gsi` of the in-kernel PIC/IOAPIC.
    pub fn irq(&self, gsi: u32) -> Irq {
        Arc::new(KvmIrq {
            vm: self.fd.clone(),
            gsi,
            level: AtomicBool::new(false),
        })
    }

    /// Creates vCPU `id` with CPUID, MSRs, LAPIC and FPU in their power-on configuration.
    pub fn create_vcpu(&self, id: u8) -> Result<VcpuFd, MachineError> {
        let vcpu = self
            .fd
            .create_vcpu(id as u64)
            .map_err(kvm_err("KVM_CREATE_VCPU"))?;
        cpu::setup_cpuid(&self.kvm, &vcpu, id)?;
        cpu::setup_msrs(&vcpu)?;
        cpu::setup_lapic(&vcpu)?;
        cpu::setup_fpu(&vcpu)?;
        Ok(vcpu)
    }
}

/// A GSI of the in-kernel irqchip (KVM_IRQ_LINE).
pub struct KvmIrq {
    vm: Arc<VmFd>,
    gsi: u32,
    /// The level last sent, so that repeating it costs no ioctl.
    level: AtomicBool,
}

impl IrqLine for KvmIrq {
    fn set_level(&self, level: bool) {
        if self.level.swap(level, Ordering::SeqCst) == level {
            return;
        }
        if let Err(e) = self.vm.set_irq_line(self.gsi, level) {
            eprintln!("rqemu: KVM_IRQ_LINE gsi {} failed: {e}", self.gsi);
        }
    }
}

/// Whether /dev/kvm can be opened (tests and the launcher check this first).
pub fn available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(KVM_DEVICE)
        .is_ok()
}

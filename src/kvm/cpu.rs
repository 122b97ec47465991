//! A vCPU's architectural setup: CPUID, MSRs, LAPIC, FPU, and a readable register dump.
//!
//! QEMU's target/i386/kvm/kvm.c (kvm_arch_init_vcpu, kvm_put_msrs, kvm_apic_put). The vCPU
//! starts in the state KVM gives it, the reset state (CS base 0xFFFF0000, IP 0xFFF0), which
//! is what firmware expects; direct Linux boot overwrites registers later (boot/linux.rs).

use kvm_bindings::{kvm_fpu, kvm_msr_entry, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};

use crate::error::MachineError;

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1A0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2FF;
const MSR_STAR: u32 = 0xC000_0081;
const MSR_LSTAR: u32 = 0xC000_0082;
const MSR_CSTAR: u32 = 0xC000_0083;
const MSR_SYSCALL_MASK: u32 = 0xC000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xC000_0102;
/// IA32_MISC_ENABLE bit 0: fast string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default type write-back.
const MTRR_DEF_TYPE_WB_ENABLED: u64 = 0xC06;

/// LAPIC register offsets and delivery modes.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Exposes what KVM supports, with the topology fields of a single-thread package.
pub fn setup_cpuid(kvm: &Kvm, vcpu: &VcpuFd, id: u8) -> Result<(), MachineError> {
    let mut cpuid: CpuId = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| MachineError::Kvm(format!("KVM_GET_SUPPORTED_CPUID failed: {e}")))?;
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => {
                // EBX: initial APIC id in 31:24, logical processors per package in 23:16.
                entry.ebx = (entry.ebx & 0x0000_FFFF) | (id as u32) << 24 | 1 << 16;
                // ECX bit 31: running under a hypervisor.
                entry.ecx |= 1 << 31;
            }
            // Cores per package - 1 in EAX 31:26.
            4 => entry.eax &= 0x03FF_FFFF,
            // x2APIC id of this logical processor.
            0xB => entry.edx = id as u32,
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid)
        .map_err(|e| MachineError::Kvm(format!("KVM_SET_CPUID2 failed: {e}")))
}

/// The MSR values of a freshly reset CPU as QEMU programs them.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), MachineError> {
    let values = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_DEF_TYPE_WB_ENABLED),
    ];
    let entries: Vec<kvm_msr_entry> = values
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs =
        Msrs::from_entries(&entries).map_err(|e| MachineError::Kvm(format!("MSR list: {e:?}")))?;
    let set = vcpu
        .set_msrs(&msrs)
        .map_err(|e| MachineError::Kvm(format!("KVM_SET_MSRS failed: {e}")))?;
    if set != entries.len() {
        // KVM stops at the first MSR it refuses; the rest keep their reset values.
        let refused = entries[set].index;
        eprintln!("rqemu: warning: KVM refused MSR {refused:#x}; continuing");
    }
    Ok(())
}

fn lapic_reg(regs: &[std::os::raw::c_char], off: usize) -> u32 {
    let b: Vec<u8> = regs[off..off + 4].iter().map(|&c| c as u8).collect();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn set_lapic_reg(regs: &mut [std::os::raw::c_char], off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        regs[off + i] = *b as std::os::raw::c_char;
    }
}

/// LINT0 = ExtINT (the 8259's output), LINT1 = NMI: the wiring of a PC's local APIC. Without
/// it the in-kernel PIC's interrupts are not accepted once the guest enables the LAPIC.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), MachineError> {
    let mut lapic = vcpu
        .get_lapic()
        .map_err(|e| MachineError::Kvm(format!("KVM_GET_LAPIC failed: {e}")))?;
    for (off, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let v = lapic_reg(&lapic.regs, off);
        set_lapic_reg(&mut lapic.regs, off, (v & !0x700) | mode << 8);
    }
    vcpu.set_lapic(&lapic)
        .map_err(|e| MachineError::Kvm(format!("KVM_SET_LAPIC failed: {e}")))
}

/// x87 control word and MXCSR at their reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), MachineError> {
    let fpu = kvm_fpu {
        fcw: 0x37F,
        mxcsr: 0x1F80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)
        .map_err(|e| MachineError::Kvm(format!("KVM_SET_FPU failed: {e}")))
}

/// The registers in the layout QEMU prints on a KVM internal error (abridged).
pub fn dump_state(vcpu: &VcpuFd) -> String {
    let (Ok(r), Ok(s)) = (vcpu.get_regs(), vcpu.get_sregs()) else {
        return "(vCPU registers unavailable)".to_string();
    };
    let seg = |name: &str, sg: &kvm_bindings::kvm_segment| {
        format!(
            "{name} ={:04x} {:016x} {:08x}\n",
            sg.selector, sg.base, sg.limit
        )
    };
    let mut out = format!(
        "RAX={:016x} RBX={:016x} RCX={:016x} RDX={:016x}\n\
         RSI={:016x} RDI={:016x} RBP={:016x} RSP={:016x}\n\
         RIP={:016x} RFL={:08x}\n",
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.rip, r.rflags
    );
    for (name, sg) in [
        ("ES", &s.es),
        ("CS", &s.cs),
        ("SS", &s.ss),
        ("DS", &s.ds),
        ("FS", &s.fs),
        ("GS", &s.gs),
    ] {
        out.push_str(&seg(name, sg));
    }
    out.push_str(&format!(
        "GDT=     {:016x} {:08x}\nIDT=     {:016x} {:08x}\n\
         CR0={:08x} CR2={:016x} CR3={:016x} CR4={:08x} EFER={:016x}",
        s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit, s.cr0, s.cr2, s.cr3, s.cr4, s.efer
    ));
    out
}

/// Puts the vCPU at a Linux kernel's 64-bit entry point: long mode with paging, the boot
/// GDT's code (0x10) and data (0x18) segments, interrupts off.
pub fn enter_linux(
    vcpu: &VcpuFd,
    entry: &crate::boot::linux::EntryState,
) -> Result<(), MachineError> {
    use crate::boot::linux::{BOOT_CS, BOOT_DS, GDT};
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| MachineError::Kvm(format!("KVM_GET_SREGS failed: {e}")))?;
    let segment = |selector: u16| {
        let desc = GDT[(selector >> 3) as usize];
        kvm_bindings::kvm_segment {
            base: 0,
            limit: 0xFFFF_FFFF,
            selector,
            type_: ((desc >> 40) & 0xF) as u8,
            present: 1,
            dpl: 0,
            db: ((desc >> 54) & 1) as u8,
            s: 1,
            l: ((desc >> 53) & 1) as u8,
            g: 1,
            ..Default::default()
        }
    };
    sregs.cs = segment(BOOT_CS);
    let data = segment(BOOT_DS);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.gdt.base = entry.gdt.0;
    sregs.gdt.limit = entry.gdt.1;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    // CR0: PE | ET | NE | PG; CR4: PAE; EFER: LME | LMA.
    sregs.cr0 = 0x8000_0031;
    sregs.cr4 = 0x20;
    sregs.efer = 0x500;
    sregs.cr3 = entry.cr3;
    vcpu.set_sregs(&sregs)
        .map_err(|e| MachineError::Kvm(format!("KVM_SET_SREGS failed: {e}")))?;
    let regs = kvm_bindings::kvm_regs {
        rip: entry.rip,
        rsi: entry.rsi,
        rsp: entry.rsp,
        rbp: entry.rsp,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(|e| MachineError::Kvm(format!("KVM_SET_REGS failed: {e}")))
}

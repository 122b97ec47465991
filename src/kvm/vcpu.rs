//! The vCPU thread's loop: KVM_RUN, then dispatch whatever made the guest exit.
//!
//! QEMU's accel/kvm/kvm-all.c (kvm_cpu_exec). Port and MMIO exits go to the buses under
//! the device lock; a string instruction (`rep insw`) arrives as one exit carrying
//! `count * size` bytes, which is split here into `count` accesses of `size` bytes so that a
//! device sees exactly what the guest did. A reset request from a device, a triple fault
//! (KVM_EXIT_SHUTDOWN) or a reset system event ends the loop with [`RunExit::Reset`];
//! anything KVM could not handle ends it with an error carrying the register state.

use kvm_bindings::{
    kvm_run, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::cpu::dump_state;
use crate::bus::Bql;
use crate::devices::ResetRequest;

/// Why the loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RunExit {
    /// The guest reset the machine (keyboard controller, 0xCF9, port 0x92, triple fault).
    Reset,
    /// The guest powered off.
    PowerOff,
}

/// Runs `vcpu` until the guest resets or powers off, or KVM fails.
pub fn run_loop(vcpu: &mut VcpuFd, bql: &Bql, reset: &ResetRequest) -> Result<RunExit, String> {
    let run: *const kvm_run = vcpu.get_kvm_run();
    loop {
        // Read the access size before `run()` borrows the vCPU: the exit data only has the
        // total length. SAFETY: `run` points at the vCPU's kvm_run mapping, which lives as
        // long as `vcpu`; KVM writes it only while KVM_RUN executes, not during this read.
        let io_size = || unsafe { (*run).__bindgen_anon_1.io.size.max(1) as usize };
        match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                let size = io_size();
                let buses = bql.lock();
                for chunk in data.chunks_mut(size) {
                    buses.pio.read(port as u64, chunk);
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                let size = io_size();
                let buses = bql.lock();
                for chunk in data.chunks(size) {
                    buses.pio.write(port as u64, chunk);
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                bql.lock().mmio.read(addr, data);
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                // Writes to the read-only BIOS slot land here too and are dropped.
                bql.lock().mmio.write(addr, data);
            }
            Ok(VcpuExit::Shutdown) => return Ok(RunExit::Reset),
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_RESET => return Ok(RunExit::Reset),
                KVM_SYSTEM_EVENT_SHUTDOWN => return Ok(RunExit::PowerOff),
                KVM_SYSTEM_EVENT_CRASH => return Err(failure(vcpu, "guest crashed")),
                _ => return Err(failure(vcpu, &format!("system event {kind}"))),
            },
            // With the in-kernel irqchip KVM handles HLT itself; these are benign wakeups.
            Ok(VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr) => {}
            Ok(VcpuExit::InternalError) => {
                return Err(failure(vcpu, "KVM internal error"));
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                let what = format!("KVM entry failed on CPU {cpu}, hardware reason {reason:#x}");
                return Err(failure(vcpu, &what));
            }
            Ok(other) => {
                let what = format!("unhandled KVM exit {other:?}");
                return Err(failure(vcpu, &what));
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Err(failure(vcpu, &format!("KVM_RUN failed: {e}"))),
        }
        if reset.take() {
            return Ok(RunExit::Reset);
        }
    }
}

fn failure(vcpu: &VcpuFd, what: &str) -> String {
    format!("{what}\n{}", dump_state(vcpu))
}

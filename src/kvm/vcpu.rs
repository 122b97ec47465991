//! The vCPU thread's loop: KVM_RUN, then dispatch whatever made the guest exit.
//!
//! QEMU's accel/kvm/kvm-all.c (kvm_cpu_exec). Port and MMIO exits go to the buses under
//! the device lock; a string instruction (`rep insw`) arrives as one exit carrying
//! `count * size` bytes (up to a page), which goes to the device as one buffer with its
//! element size: a device that moves whole buffers (the IDE data port) copies it at once,
//! the others get `count` single accesses (`BusDevice::read_string`). QEMU's
//! kvm_handle_io makes the single accesses for every device. A reset request from a device, a triple fault
//! (KVM_EXIT_SHUTDOWN) or a reset system event ends the loop with [`RunExit::Reset`];
//! anything KVM could not handle ends it with an error carrying the register state.

use kvm_bindings::{
    kvm_run, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::cpu::dump_state;
use crate::bus::{Bql, Bus};
use crate::devices::ResetRequest;
use crate::error::MachineError;

/// Why the loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RunExit {
    /// The guest reset the machine (keyboard controller, 0xCF9, port 0x92, triple fault).
    Reset,
    /// The guest powered off.
    PowerOff,
    /// rqemu was asked to quit (a termination signal).
    Stopped,
}

/// Runs `vcpu` until the guest resets or powers off, or KVM fails.
pub fn run_loop(
    vcpu: &mut VcpuFd,
    bql: &Bql,
    reset: &ResetRequest,
) -> Result<RunExit, MachineError> {
    let run: *const kvm_run = vcpu.get_kvm_run();
    loop {
        // A stopped VM (`stop`, an I/O error's stop) parks here until `cont`.
        crate::runstate::vm::vcpu_wait_while_paused();
        if crate::runstate::stop_requested() {
            return Ok(RunExit::Stopped);
        }
        // Read the access size before `run()` borrows the vCPU: the exit data only has the
        // total length. SAFETY: `run` points at the vCPU's kvm_run mapping, which lives as
        // long as `vcpu`; KVM writes it only while KVM_RUN executes, not during this read.
        let io_size = || unsafe { (*run).__bindgen_anon_1.io.size.max(1) as usize };
        let exit = vcpu.run();
        // SAFETY: as above; the exit reason is plain data written before KVM_RUN returned.
        block::trace!(kvm_run_exit, "cpu_index 0, reason {}", unsafe {
            (*run).exit_reason
        });
        match exit {
            Ok(VcpuExit::IoIn(port, data)) => {
                let size = io_size();
                pio_in(&bql.lock().pio, port, data, size);
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                let size = io_size();
                pio_out(&bql.lock().pio, port, data, size);
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
            // A kick (runstate.rs) or another signal: the loop head checks why.
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Err(failure(vcpu, &format!("KVM_RUN failed: {e}"))),
        }
        if reset.take() {
            return Ok(RunExit::Reset);
        }
        if reset.power_off_requested() {
            return Ok(RunExit::PowerOff);
        }
    }
}

/// An `in`/`ins` exit: `data` holds `data.len() / size` accesses of `size` bytes each.
pub fn pio_in(bus: &Bus, port: u16, data: &mut [u8], size: usize) {
    bus.read_string(port as u64, size, data);
}

/// An `out`/`outs` exit, likewise.
pub fn pio_out(bus: &Bus, port: u16, data: &[u8], size: usize) {
    bus.write_string(port as u64, size, data);
}

fn failure(vcpu: &VcpuFd, what: &str) -> MachineError {
    MachineError::Kvm(format!("{what}\n{}", dump_state(vcpu)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;
    use std::sync::{Arc, Mutex};

    /// Records the size of every access and answers reads with a counter.
    #[derive(Default)]
    struct Port(Vec<usize>, u8);
    impl BusDevice for Port {
        fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
            self.0.push(data.len());
            self.1 += 1;
            data.fill(self.1);
        }
        fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
            self.0.push(data.len());
        }
    }

    /// Takes string accesses whole.
    #[derive(Default)]
    struct Fifo(Vec<(usize, usize)>);
    impl BusDevice for Fifo {
        fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
            self.0.push((data.len(), data.len()));
        }
        fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
            self.0.push((data.len(), data.len()));
        }
        fn read_string(&mut self, _base: u64, _offset: u64, size: usize, data: &mut [u8]) {
            self.0.push((size, data.len()));
        }
        fn write_string(&mut self, _base: u64, _offset: u64, size: usize, data: &[u8]) {
            self.0.push((size, data.len()));
        }
    }

    #[test]
    fn string_io_reaches_a_buffer_device_whole() {
        let fifo = Arc::new(Mutex::new(Fifo::default()));
        let mut bus = Bus::default();
        bus.insert(0x1F0, 8, fifo.clone()).unwrap();
        pio_in(&bus, 0x1F0, &mut [0u8; 512], 2);
        pio_out(&bus, 0x1F0, &[0u8; 4096], 4);
        pio_in(&bus, 0x1F7, &mut [0u8; 1], 1);
        assert_eq!(fifo.lock().unwrap().0, vec![(2, 512), (4, 4096), (1, 1)]);
    }

    #[test]
    fn string_io_is_split_into_single_accesses() {
        let port = Arc::new(Mutex::new(Port::default()));
        let mut bus = Bus::default();
        bus.insert(0x1F0, 8, port.clone()).unwrap();
        // rep insw, count 3: three 2-byte reads.
        let mut data = [0u8; 6];
        pio_in(&bus, 0x1F0, &mut data, 2);
        assert_eq!(data, [1, 1, 2, 2, 3, 3]);
        // rep outsd, count 2, then a single outb.
        pio_out(&bus, 0x1F0, &[0; 8], 4);
        pio_out(&bus, 0x1F7, &[0xEC], 1);
        assert_eq!(port.lock().unwrap().0, vec![2, 2, 2, 4, 4, 1]);
    }
}

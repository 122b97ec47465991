//! The machine under the qtest accelerator: the drives on the main loop, the monitors and
//! the qtest protocol, and no vCPU (QEMU's accel/qtest/qtest.c with system/qtest.c).
//!
//! The devices of the command line keep their drives attached, so the monitor sees the
//! same backends a running guest's devices would hold, but no guest code runs: a test
//! drives the block layer through the monitor. The run ends on `quit` or a termination
//! signal; the drives are then drained and closed.

use crate::error::MachineError;
use crate::main_loop::MainLoop;
use crate::vm_config::VmConfig;

/// Runs until the monitor or a signal ends the run.
pub fn run(cfg: &VmConfig) -> Result<(), MachineError> {
    crate::runstate::init().map_err(MachineError::Machine)?;
    let main = MainLoop::start(cfg.drives.clone()).map_err(MachineError::Machine)?;
    let handle = main.handle();
    // The disk devices attach their drives (a `-blockdev` node gets its device backend).
    let attached: Vec<String> = cfg
        .virtio_disks
        .iter()
        .map(|d| d.drive.clone())
        .chain(cfg.ide.iter().flatten().flatten().cloned())
        .collect();
    let scsi = cfg.scsi_disks.clone();
    let buses = cfg.scsi_buses.clone();
    handle.schedule_bh(move || {
        for drive in &attached {
            if let Some(blk) = crate::drives::lookup(drive) {
                blk.attach_dev();
            }
        }
        crate::monitor::qmp::devices::set_scsi_buses(buses);
        for disk in &scsi {
            let iothread = disk.iothread.as_deref();
            if let Some(Err(e)) = crate::drives::attach_device(&disk.id, &disk.drive, iothread) {
                block::error::error_report(&format!("-device scsi-hd,drive={}: {e}", disk.drive));
            }
        }
    });
    // Throttling follows the virtual clock the test steps, as in QEMU under qtest.
    block::throttle::clock::use_virtual_clock(handle.clone());
    crate::monitor::qmp::machine::init(cfg.accel, cfg.start_paused);
    if let Some(backend) = &cfg.qtest {
        crate::qtest::start(backend).map_err(MachineError::Machine)?;
    }
    crate::monitor::start_all(cfg, &handle).map_err(MachineError::Machine)?;
    crate::runstate::wait_for_stop();
    main.shutdown();
    Ok(())
}

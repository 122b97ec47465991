//! virtio-blk-pci disks in the `pc` machine: how one is plugged in (device model on the vCPU
//! side, request handler on the main loop). Their command-line properties are parsed in
//! `crate::vm_config`.
//!
//! QEMU's virtio_blk_pci_realize (hw/virtio/virtio-blk-pci.c) and virtio_blk_device_realize
//! (hw/block/virtio-blk.c). A disk is built in three
//! steps, because the BlockBackend lives on the main-loop thread and the device on the vCPU
//! side: ask the loop for the drive's size and read-only flag, build the [`VirtioPciDevice`]
//! and plug it into PCI bus 0 (slot 2 up, or `addr=`), then start its
//! [`VirtioBlkHandler`] on the loop over a clone of the machine's guest memory. The
//! handler's coroutines stop when the [`VirtioDisks`] the machine keeps is dropped.

use std::collections::BTreeSet;
use std::sync::{mpsc, Arc};

use block::aio::notifier::EventNotifier;
use block::aio::AioContextHandle;
use block::AioContext;
use vm_memory::GuestMemoryMmap;

use crate::devices::pci::PciBus;
use crate::devices::virtio::block::{VirtioBlk, VirtioBlkConf, VirtioBlkHandler};
use crate::devices::virtio::kvm_glue::{IntxLine, IsaIrqLevels, VirtioPciFunction};
use crate::devices::virtio::pci::VirtioPciDevice;
use crate::error::MachineError;
use crate::kvm::Vm;
use crate::vm_config::{VirtioDiskConfig, FIRST_VIRTIO_SLOT};

/// The handlers of a machine's virtio disks; dropping it stops them on the main loop.
pub struct VirtioDisks {
    stop: Arc<EventNotifier>,
}

impl Drop for VirtioDisks {
    fn drop(&mut self) {
        self.stop.set();
    }
}

/// Asks the loop for each drive's (length in bytes, read-only); `None` for unknown ids.
fn drive_facts(
    main: &AioContextHandle,
    ids: Vec<String>,
) -> Result<Vec<Option<(u64, bool)>>, MachineError> {
    let (tx, rx) = mpsc::channel();
    main.schedule_bh(move || {
        let facts = ids
            .iter()
            .map(|id| crate::drives::lookup(id).map(|b| (b.getlength(), b.is_read_only())))
            .collect::<Vec<_>>();
        let _ = tx.send(facts);
    });
    rx.recv().map_err(|_| {
        MachineError::Machine("the main loop ended while plugging virtio disks".to_string())
    })
}

/// The fw_cfg `bootorder` file: the OpenFirmware paths of the disks with a `bootindex`, in
/// its order (QEMU's get_boot_devices_list); SeaBIOS boots them first. A virtio-blk function
/// at slot S of the i440FX bus is "/pci@i0cf8/scsi@S/disk@0,0" (class 01: "scsi").
pub fn bootorder(disks: &[VirtioDiskConfig]) -> Vec<u8> {
    let Ok(slots) = assign_slots(disks) else {
        return Vec::new();
    };
    let mut entries: Vec<(u32, u8)> = disks
        .iter()
        .zip(slots)
        .filter_map(|(d, slot)| d.bootindex.map(|i| (i, slot)))
        .collect();
    entries.sort();
    if entries.is_empty() {
        return Vec::new();
    }
    let lines: Vec<String> = entries
        .iter()
        .map(|(_, slot)| format!("/pci@i0cf8/scsi@{slot:x}/disk@0,0"))
        .collect();
    let mut file = lines.join("\n").into_bytes();
    file.push(0);
    file
}

/// Picks each disk's slot: explicit `addr=` first, then the free slots from 02 up.
fn assign_slots(disks: &[VirtioDiskConfig]) -> Result<Vec<u8>, MachineError> {
    let mut taken = BTreeSet::new();
    for d in disks {
        if let Some(s) = d.slot {
            if !taken.insert(s) {
                return Err(MachineError::Machine(format!(
                    "{}: PCI slot {s:02x}.0 is already in use",
                    d.origin
                )));
            }
        }
    }
    let mut next = FIRST_VIRTIO_SLOT;
    let mut out = Vec::new();
    for d in disks {
        let slot = match d.slot {
            Some(s) => s,
            None => {
                while taken.contains(&next) {
                    next += 1;
                }
                if next >= 32 {
                    return Err(MachineError::Machine(format!(
                        "{}: no free PCI slot",
                        d.origin
                    )));
                }
                taken.insert(next);
                next
            }
        };
        out.push(slot);
    }
    Ok(out)
}

/// Plugs every disk of `disks` into `bus` and starts their handlers on `main`.
pub fn plug_all(
    disks: &[VirtioDiskConfig],
    bus: &mut PciBus,
    vm: &Vm,
    mem: &GuestMemoryMmap,
    main: &AioContextHandle,
) -> Result<VirtioDisks, MachineError> {
    let stop = Arc::new(EventNotifier::new().map_err(|e| MachineError::Machine(e.to_string()))?);
    let guard = VirtioDisks { stop: stop.clone() };
    if disks.is_empty() {
        return Ok(guard);
    }
    let mut used = BTreeSet::new();
    for d in disks {
        if !used.insert(d.drive.as_str()) {
            return Err(MachineError::Machine(format!(
                "{}: Drive '{}' is already in use by another device",
                d.origin, d.drive
            )));
        }
    }
    let facts = drive_facts(main, disks.iter().map(|d| d.drive.clone()).collect())?;
    let slots = assign_slots(disks)?;
    let mem = Arc::new(mem.clone());
    let levels = IsaIrqLevels::new(vm.fd().clone());
    for ((disk, fact), slot) in disks.iter().zip(facts).zip(slots) {
        let Some((length, read_only)) = fact else {
            return Err(MachineError::Machine(format!(
                "{}: Property 'virtio-blk-pci.drive' can't find value '{}'",
                disk.origin, disk.drive
            )));
        };
        plug_one(
            disk,
            (length, read_only),
            slot,
            bus,
            vm,
            &levels,
            &mem,
            main,
            &stop,
        )?;
    }
    Ok(guard)
}

#[allow(clippy::too_many_arguments)]
fn plug_one(
    disk: &VirtioDiskConfig,
    (length, read_only): (u64, bool),
    slot: u8,
    bus: &mut PciBus,
    vm: &Vm,
    levels: &Arc<IsaIrqLevels>,
    mem: &Arc<GuestMemoryMmap>,
    main: &AioContextHandle,
    stop: &Arc<EventNotifier>,
) -> Result<(), MachineError> {
    let err = |e: block::Error| MachineError::Machine(format!("{}: {e}", disk.origin));
    let conf = VirtioBlkConf {
        serial: disk.serial.clone(),
        ..VirtioBlkConf::default()
    };
    let model = VirtioBlk::new(conf, length >> 9, read_only);
    let shared = model.shared();
    let irq = Arc::new(IntxLine::new(levels.clone()));
    let dev = VirtioPciDevice::new(Box::new(model), disk.transport, irq.clone()).map_err(err)?;
    let core = dev.core();
    let notifiers = dev.notifiers();
    let function = VirtioPciFunction::new(dev, irq.clone(), vm.fd().clone())?;
    bus.add(slot << 3, Arc::new(std::sync::Mutex::new(function)))
        .map_err(|e| MachineError::Machine(format!("{}: {e}", disk.origin)))?;
    let (mem, stop, drive) = (mem.clone(), stop.clone(), disk.drive.clone());
    main.schedule_bh(move || {
        let Some(blk) = crate::drives::lookup(&drive) else {
            eprintln!("rqemu: virtio-blk: drive '{drive}' went away");
            return;
        };
        let handler = VirtioBlkHandler::new(shared, core, mem, blk, notifiers);
        let tasks = handler.start();
        let serve = async move {
            let _tasks = tasks;
            let _ = stop.wait().await;
            // Wake the other handlers of this machine too.
            stop.set();
        };
        AioContext::current().spawn(serve).detach();
    });
    Ok(())
}

//! The modern (virtio 1.0) interface: vendor capabilities pointing into memory BAR4.
//!
//! QEMU's virtio_pci_common_read/write, virtio_pci_isr_read, virtio_pci_device_read/write,
//! virtio_pci_notify_write and the VIRTIO_PCI_CAP_PCI_CFG window in hw/virtio/virtio-pci.c.
//! BAR4 (16 KiB) holds four windows, each announced by a capability in config space:
//!
//! | BAR offset | capability (cfg_type) | contents |
//! |---|---|---|
//! | 0x0000 | common (1) | features, status, queue select/size/enable/addresses |
//! | 0x1000 | ISR (3) | read-to-clear interrupt status |
//! | 0x2000 | device (4) | the device configuration |
//! | 0x3000 | notify (2) | queue q's doorbell at 0x3000 + 4 q |
//!
//! A fifth capability (PCI_CFG, 5) lets a driver reach BAR registers through config space
//! alone: it names bar/offset/length, then reads or writes the 4-byte data field.

use vm_memory::GuestAddress;

use super::{le_value, put_le, VirtioPciDevice, MODERN_BAR};
use crate::bus::lock;
use crate::devices::virtio::VIRTIO_CONFIG_S_FEATURES_OK;

/// Size of BAR4.
pub const BAR_SIZE: u64 = 0x4000;
const COMMON: u64 = 0x0000;
const ISR: u64 = 0x1000;
const DEVICE: u64 = 0x2000;
const NOTIFY: u64 = 0x3000;
const WINDOW: u64 = 0x1000;
/// Bytes between two queues' doorbells.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// "No MSI-X vector" as read back from the vector registers.
const VIRTIO_MSI_NO_VECTOR: u64 = 0xffff;

/// Where the PCI_CFG capability sits in config space; its data field is 16 bytes in.
const PCI_CFG_CAP: usize = 0x84;
const PCI_CFG_DATA: usize = PCI_CFG_CAP + 16;

/// The selectors and staged values of the common configuration.
#[derive(Clone, Copy, Debug, Default)]
pub struct CommonRegs {
    /// Queue select (also used by the legacy interface).
    pub queue_select: u16,
    /// Which 32 bits of device features are shown.
    pub device_feature_select: u32,
    /// Which 32 bits of driver features are written.
    pub driver_feature_select: u32,
    /// Driver features written so far, applied when the driver sets FEATURES_OK.
    pub driver_features: u64,
}

/// BAR4 offset of queue `q`'s doorbell.
pub fn notify_offset(q: usize) -> u64 {
    NOTIFY + q as u64 * u64::from(NOTIFY_OFF_MULTIPLIER)
}

/// Writes the vendor capabilities chain at 0x40 and points the capability pointer at it.
pub(super) fn add_capabilities(dev: &mut VirtioPciDevice) {
    let caps: [(usize, u8, u64, u32, usize); 5] = [
        (0x40, 1, COMMON, WINDOW as u32, 0x50),
        (0x50, 3, ISR, WINDOW as u32, 0x60),
        (0x60, 4, DEVICE, WINDOW as u32, 0x70),
        (0x70, 2, NOTIFY, WINDOW as u32, PCI_CFG_CAP),
        (PCI_CFG_CAP, 5, 0, 0, 0),
    ];
    dev.config[0x34] = 0x40;
    for (at, cfg_type, offset, length, next) in caps {
        let len = match cfg_type {
            2 | 5 => 20,
            _ => 16,
        };
        dev.config[at..at + 4].copy_from_slice(&[0x09, next as u8, len, cfg_type]);
        dev.config[at + 4] = if cfg_type == 5 { 0 } else { MODERN_BAR as u8 };
        dev.set_long(at + 8, offset as u32);
        dev.set_long(at + 12, length);
    }
    dev.set_long(0x70 + 16, NOTIFY_OFF_MULTIPLIER);
    // The PCI_CFG window: bar, offset and length are the driver's to set.
    dev.writable(PCI_CFG_CAP + 4, 1);
    dev.writable(PCI_CFG_CAP + 8, 8);
}

/// Whether a config access falls in the PCI_CFG data field.
pub(super) fn in_pci_cfg_window(offset: usize, len: usize) -> bool {
    offset >= PCI_CFG_DATA
        && offset
            .checked_add(len)
            .is_some_and(|end| end <= PCI_CFG_DATA + 4)
}

fn pci_cfg_target(dev: &VirtioPciDevice, len: usize) -> Option<u64> {
    let c = &dev.config;
    let bar = c[PCI_CFG_CAP + 4] as usize;
    let offset = u64::from(u32::from_le_bytes(
        c[PCI_CFG_CAP + 8..PCI_CFG_CAP + 12].try_into().unwrap(),
    ));
    let length = u32::from_le_bytes(c[PCI_CFG_CAP + 12..PCI_CFG_CAP + 16].try_into().unwrap());
    let ok = bar == MODERN_BAR && matches!(length, 1 | 2 | 4) && length as usize == len;
    (ok && offset + u64::from(length) <= BAR_SIZE).then_some(offset)
}

/// A read of the PCI_CFG data field reads the BAR location it names.
pub(super) fn pci_cfg_read(dev: &mut VirtioPciDevice, data: &mut [u8]) {
    data.fill(0);
    if let Some(offset) = pci_cfg_target(dev, data.len()) {
        read(dev, offset, data);
    }
}

/// A write of the PCI_CFG data field writes the BAR location it names.
pub(super) fn pci_cfg_write(dev: &mut VirtioPciDevice, data: &[u8]) {
    if let Some(offset) = pci_cfg_target(dev, data.len()) {
        write(dev, offset, data);
    }
}

/// Reads BAR4.
pub(super) fn read(dev: &mut VirtioPciDevice, offset: u64, data: &mut [u8]) {
    match offset / WINDOW * WINDOW {
        COMMON => put_le(data, common_read(dev, offset - COMMON)),
        ISR => put_le(data, u64::from(lock(&dev.core).read_isr())),
        DEVICE => dev.device.read_config((offset - DEVICE) as usize, data),
        _ => {}
    }
}

/// Writes BAR4.
pub(super) fn write(dev: &mut VirtioPciDevice, offset: u64, data: &[u8]) {
    match offset / WINDOW * WINDOW {
        COMMON => common_write(dev, offset - COMMON, le_value(data)),
        DEVICE => dev.device.write_config((offset - DEVICE) as usize, data),
        NOTIFY => dev.notify((offset - NOTIFY) / u64::from(NOTIFY_OFF_MULTIPLIER)),
        _ => {}
    }
}

fn common_read(dev: &VirtioPciDevice, offset: u64) -> u64 {
    let r = &dev.regs;
    let core = lock(&dev.core);
    let q = core.queues.get(usize::from(r.queue_select));
    let half = |v: u64, sel: u32| {
        if sel < 2 {
            v >> (32 * sel) & 0xffff_ffff
        } else {
            0
        }
    };
    match offset {
        0 => u64::from(r.device_feature_select),
        4 => half(core.host_features, r.device_feature_select),
        8 => u64::from(r.driver_feature_select),
        12 => half(r.driver_features, r.driver_feature_select),
        16 | 26 => VIRTIO_MSI_NO_VECTOR,
        18 => core.queues.len() as u64,
        20 => u64::from(core.status),
        21 => u64::from(core.config_generation),
        22 => u64::from(r.queue_select),
        24 => q.map_or(0, |q| u64::from(q.size)),
        28 => q.map_or(0, |q| u64::from(q.ready)),
        30 => u64::from(r.queue_select),
        32 => q.map_or(0, |q| q.desc_table.0 & 0xffff_ffff),
        36 => q.map_or(0, |q| q.desc_table.0 >> 32),
        40 => q.map_or(0, |q| q.avail_ring.0 & 0xffff_ffff),
        44 => q.map_or(0, |q| q.avail_ring.0 >> 32),
        48 => q.map_or(0, |q| q.used_ring.0 & 0xffff_ffff),
        52 => q.map_or(0, |q| q.used_ring.0 >> 32),
        _ => 0,
    }
}

fn common_write(dev: &mut VirtioPciDevice, offset: u64, value: u64) {
    match offset {
        0 => dev.regs.device_feature_select = value as u32,
        8 => dev.regs.driver_feature_select = value as u32,
        12 => {
            let shift = 32 * u64::from(dev.regs.driver_feature_select);
            if shift < 64 {
                let f = &mut dev.regs.driver_features;
                *f = (*f & !(0xffff_ffff << shift)) | (value & 0xffff_ffff) << shift;
            }
        }
        20 => {
            let ok = VIRTIO_CONFIG_S_FEATURES_OK;
            if value & u64::from(ok) != 0 && lock(&dev.core).status & ok == 0 {
                dev.set_features(dev.regs.driver_features);
            }
            dev.set_status(value as u8);
        }
        22 => dev.regs.queue_select = value as u16,
        _ => queue_write(dev, offset, value),
    }
}

fn queue_write(dev: &mut VirtioPciDevice, offset: u64, value: u64) {
    let sel = usize::from(dev.regs.queue_select);
    let mut core = lock(&dev.core);
    let Some(q) = core.queues.get_mut(sel) else {
        return;
    };
    let set_lo = |a: &mut GuestAddress| a.0 = (a.0 & !0xffff_ffff) | value;
    let set_hi = |a: &mut GuestAddress| a.0 = (a.0 & 0xffff_ffff) | value << 32;
    match offset {
        24 => q.size = value as u16,
        28 => q.ready = value & 1 == 1,
        32 => set_lo(&mut q.desc_table),
        36 => set_hi(&mut q.desc_table),
        40 => set_lo(&mut q.avail_ring),
        44 => set_hi(&mut q.avail_ring),
        48 => set_lo(&mut q.used_ring),
        52 => set_hi(&mut q.used_ring),
        _ => {}
    }
}

//! The legacy (virtio 0.9.5) register block in I/O BAR0.
//!
//! QEMU's virtio_ioport_read / virtio_ioport_write in hw/virtio/virtio-pci.c. Layout:
//!
//! | offset | size | register |
//! |---|---|---|
//! | 0x00 | 4 | device features (bits 0-31, read-only) |
//! | 0x04 | 4 | driver features |
//! | 0x08 | 4 | queue address as a page frame number (0 resets the device) |
//! | 0x0c | 2 | queue size (read-only) |
//! | 0x0e | 2 | queue select |
//! | 0x10 | 2 | queue notify (write the queue index) |
//! | 0x12 | 1 | device status (0 resets) |
//! | 0x13 | 1 | ISR (reading clears it and drops INTx) |
//! | 0x14 | - | device configuration |

use super::{le_value, put_le, VirtioPciDevice};
use crate::bus::lock;

/// Device features.
pub const VIRTIO_PCI_HOST_FEATURES: u64 = 0x00;
/// Driver features.
pub const VIRTIO_PCI_GUEST_FEATURES: u64 = 0x04;
/// Queue page frame number.
pub const VIRTIO_PCI_QUEUE_PFN: u64 = 0x08;
/// Queue size.
pub const VIRTIO_PCI_QUEUE_NUM: u64 = 0x0c;
/// Queue select.
pub const VIRTIO_PCI_QUEUE_SEL: u64 = 0x0e;
/// Queue notify.
pub const VIRTIO_PCI_QUEUE_NOTIFY: u64 = 0x10;
/// Device status.
pub const VIRTIO_PCI_STATUS: u64 = 0x12;
/// Interrupt status.
pub const VIRTIO_PCI_ISR: u64 = 0x13;
/// Start of the device configuration (no MSI-X).
pub const VIRTIO_PCI_CONFIG: u64 = 0x14;
/// Legacy rings align the used ring to a page.
pub const VIRTIO_PCI_VRING_ALIGN: u64 = 4096;

/// Reads a legacy register.
pub(super) fn read(dev: &mut VirtioPciDevice, offset: u64, data: &mut [u8]) {
    if offset >= VIRTIO_PCI_CONFIG {
        return dev
            .device
            .read_config((offset - VIRTIO_PCI_CONFIG) as usize, data);
    }
    let sel = usize::from(dev.regs.queue_select);
    let mut core = lock(&dev.core);
    let value = match offset {
        VIRTIO_PCI_HOST_FEATURES => core.host_features & 0xffff_ffff,
        VIRTIO_PCI_GUEST_FEATURES => core.guest_features & 0xffff_ffff,
        VIRTIO_PCI_QUEUE_PFN => core.queues.get(sel).map_or(0, |q| q.desc_table.0 >> 12),
        VIRTIO_PCI_QUEUE_NUM => core.queues.get(sel).map_or(0, |q| u64::from(q.max_size)),
        VIRTIO_PCI_QUEUE_SEL => sel as u64,
        VIRTIO_PCI_STATUS => u64::from(core.status),
        VIRTIO_PCI_ISR => u64::from(core.read_isr()),
        _ => 0,
    };
    put_le(data, value);
}

/// Writes a legacy register.
pub(super) fn write(dev: &mut VirtioPciDevice, offset: u64, data: &[u8]) {
    if offset >= VIRTIO_PCI_CONFIG {
        return dev
            .device
            .write_config((offset - VIRTIO_PCI_CONFIG) as usize, data);
    }
    let value = le_value(data);
    match offset {
        VIRTIO_PCI_GUEST_FEATURES => dev.set_features(value & 0xffff_ffff),
        VIRTIO_PCI_QUEUE_PFN if value == 0 => dev.reset(),
        VIRTIO_PCI_QUEUE_PFN => {
            let sel = usize::from(dev.regs.queue_select);
            if let Some(q) = lock(&dev.core).queues.get_mut(sel) {
                q.size = q.max_size;
                q.set_legacy_pfn(value as u32, VIRTIO_PCI_VRING_ALIGN);
            }
        }
        VIRTIO_PCI_QUEUE_SEL => dev.regs.queue_select = value as u16,
        VIRTIO_PCI_QUEUE_NOTIFY => dev.notify(value),
        VIRTIO_PCI_STATUS => dev.set_status(value as u8),
        _ => {}
    }
}

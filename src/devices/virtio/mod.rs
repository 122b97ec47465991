//! Virtio: paravirtual devices that talk to the guest through rings in guest memory.
//!
//! QEMU's hw/virtio/virtio.c (the VirtIODevice core) plus include/standard-headers/linux/
//! virtio_*.h (the constants). A virtio device is three layers, one module each:
//!
//! * [`queue`]: the split virtqueue — descriptor table, available ring, used ring — and the
//!   validation of every value the guest put there;
//! * a device: [`block`] (virtio-blk) with [`request`] parsing its requests;
//! * a transport: [`pci`] (legacy and modern virtio-pci) maps the device's registers into
//!   PCI config space and a BAR.
//!
//! [`VirtioCore`] is the state every device shares with its transport (status, features,
//! queues, interrupt status): the transport changes it from the vCPU thread, the device's queue
//! handlers from the main loop, always under the one mutex of [`SharedCore`] (the role of
//! QEMU's big lock for this device).
//!
//! Wiring a virtio-blk disk into a machine (what `-device virtio-blk-pci,drive=d0` does) is
//! the machine's (`crate::machine::virtio`): the model and its [`pci::VirtioPciDevice`] on the
//! vCPU side, plugged into PCI
//! bus 0 through [`kvm_glue::VirtioPciFunction`] (which also keeps the KVM ioeventfds of the
//! queue kicks and the INTx GSI in step with the guest's BARs and Interrupt
//! Line), and the [`block::VirtioBlkHandler`] on the main loop over the machine's guest memory.

pub mod block;
pub mod guest_mem;
pub mod kvm_glue;
pub mod pci;
pub mod queue;
pub mod request;
pub mod ring_cache;
pub mod testdriver;

use std::sync::{Arc, Mutex};

use queue::Queue;

use crate::devices::Irq;

/// Device status: the guest has noticed the device.
pub const VIRTIO_CONFIG_S_ACKNOWLEDGE: u8 = 1;
/// Device status: the guest knows how to drive the device.
pub const VIRTIO_CONFIG_S_DRIVER: u8 = 2;
/// Device status: the driver is ready, queues may be used.
pub const VIRTIO_CONFIG_S_DRIVER_OK: u8 = 4;
/// Device status: feature negotiation is complete (virtio 1.0).
pub const VIRTIO_CONFIG_S_FEATURES_OK: u8 = 8;
/// Device status: the device hit an error and must be reset (virtio 1.0).
pub const VIRTIO_CONFIG_S_NEEDS_RESET: u8 = 0x40;
/// Device status: the driver gave up on the device.
pub const VIRTIO_CONFIG_S_FAILED: u8 = 0x80;

/// Feature: interrupt even with notifications suppressed when the queue runs empty (legacy).
pub const VIRTIO_F_NOTIFY_ON_EMPTY: u32 = 24;
/// Feature: the device accepts any split of headers and data over descriptors.
pub const VIRTIO_F_ANY_LAYOUT: u32 = 27;
/// Feature: descriptors may point to indirect descriptor tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// Feature: used_event / avail_event notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
/// Feature: virtio 1.0 (modern) device.
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// ISR bit: the device used buffers of some queue.
pub const VIRTIO_ISR_QUEUE: u8 = 1;
/// ISR bit: the device configuration changed (also raised with NEEDS_RESET).
pub const VIRTIO_ISR_CONFIG: u8 = 2;

/// What a transport needs from a device model (QEMU's VirtioDeviceClass). Everything here is
/// `Send`: it lives with the transport on the vCPU side. The queue processing lives in a
/// separate handler on the main loop (see [`block::VirtioBlkHandler`]).
pub trait VirtioDevice: Send {
    /// The virtio device type (2 = block), used in PCI IDs.
    fn device_type(&self) -> u16;
    /// Features the device offers (all 64 bits; the transport adds VERSION_1 when modern).
    fn host_features(&self) -> u64;
    /// Number of virtqueues.
    fn num_queues(&self) -> usize;
    /// Largest size of each queue.
    fn queue_max_size(&self) -> u16;
    /// Size of the device-specific configuration space in bytes.
    fn config_len(&self) -> usize;
    /// Reads device configuration bytes at `offset` (out-of-range bytes read as zero).
    fn read_config(&self, offset: usize, data: &mut [u8]);
    /// Writes device configuration bytes (read-only fields ignore writes).
    fn write_config(&mut self, offset: usize, data: &[u8]);
    /// The driver's accepted features were set (virtio_set_features).
    fn set_features(&mut self, features: u64);
    /// The device was reset by the driver.
    fn reset(&mut self);
}

/// The device-independent state of a virtio device (QEMU's VirtIODevice fields).
pub struct VirtioCore {
    /// Device status register.
    pub status: u8,
    /// Features offered by the device, as the transport presents them.
    pub host_features: u64,
    /// Features the driver accepted.
    pub guest_features: u64,
    /// The virtqueues.
    pub queues: Vec<Queue>,
    /// Interrupt status (ISR): VIRTIO_ISR_QUEUE | VIRTIO_ISR_CONFIG.
    pub isr: u8,
    /// Bumped on every device configuration change (modern config_generation).
    pub config_generation: u8,
    /// Set by [`VirtioCore::error`]: the device stops processing until reset.
    pub broken: bool,
    /// Counts resets, so a request that completes after a reset leaves the new rings alone.
    pub reset_count: u64,
    irq: Irq,
}

/// The core as shared by the transport and the device's handlers.
pub type SharedCore = Arc<Mutex<VirtioCore>>;

impl VirtioCore {
    /// A reset core with `num_queues` queues of at most `max_size` entries.
    pub fn new(num_queues: usize, max_size: u16, irq: Irq) -> VirtioCore {
        VirtioCore {
            status: 0,
            host_features: 0,
            guest_features: 0,
            queues: (0..num_queues).map(|_| Queue::new(max_size)).collect(),
            isr: 0,
            config_generation: 0,
            broken: false,
            reset_count: 0,
            irq,
        }
    }

    /// Whether the driver accepted feature `bit`.
    pub fn has_feature(&self, bit: u32) -> bool {
        self.guest_features & (1u64 << bit) != 0
    }

    /// Records the driver's features and tells the queues which ring features apply.
    pub fn set_guest_features(&mut self, features: u64) {
        self.guest_features = features & self.host_features;
        let event_idx = self.has_feature(VIRTIO_RING_F_EVENT_IDX);
        let indirect = self.has_feature(VIRTIO_RING_F_INDIRECT_DESC);
        for q in &mut self.queues {
            q.set_ring_features(event_idx, indirect);
        }
    }

    /// Whether queues may be processed: driver ready and device not broken.
    pub fn running(&self) -> bool {
        !self.broken && self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
    }

    /// Resets the device state (virtio_reset); the interrupt line drops.
    pub fn reset(&mut self) {
        self.status = 0;
        self.guest_features = 0;
        self.isr = 0;
        self.broken = false;
        self.reset_count += 1;
        for q in &mut self.queues {
            q.reset();
        }
        self.irq.set_level(false);
    }

    /// Marks the device broken after a guest error (virtio_error). Like QEMU, the device stops
    /// touching its queues; a virtio 1.0 driver also sees NEEDS_RESET and a config interrupt.
    /// A legacy driver has no such bit: it sees its requests never complete.
    pub fn error(&mut self, message: &str) {
        ::block::trace!(virtio_error, "{}", message);
        self.broken = true;
        if self.has_feature(VIRTIO_F_VERSION_1) {
            self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
            self.notify_config();
        }
    }

    /// Raises the configuration-change interrupt (virtio_notify_config).
    pub fn notify_config(&mut self) {
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0 {
            return;
        }
        self.config_generation = self.config_generation.wrapping_add(1);
        self.raise(VIRTIO_ISR_CONFIG);
    }

    /// Sets ISR bits and asserts the line (virtio_notify_vector).
    pub fn raise(&mut self, bits: u8) {
        self.isr |= bits;
        self.irq.set_level(true);
    }

    /// Reads and clears the ISR, deasserting the line (the legacy read-to-clear register).
    pub fn read_isr(&mut self) -> u8 {
        let isr = std::mem::take(&mut self.isr);
        self.irq.set_level(false);
        isr
    }
}

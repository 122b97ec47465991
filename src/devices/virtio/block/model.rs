//! virtio-blk's device model half, on the vCPU side: the feature bits, the configuration
//! space (capacity, limits, topology, the write-cache switch) and reset (QEMU's
//! hw/block/virtio-blk.c: virtio_blk_update_config, virtio_blk_get_features,
//! virtio_blk_set_config).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::super::request::DiskLimits;
use super::super::{VirtioDevice, VIRTIO_F_ANY_LAYOUT, VIRTIO_F_NOTIFY_ON_EMPTY};
use super::super::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// Feature: `size_max` is valid.
pub const VIRTIO_BLK_F_SIZE_MAX: u32 = 1;
/// Feature: `seg_max` is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// Feature: the disk is read-only.
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// Feature: `blk_size` is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
/// Feature: FLUSH requests.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
/// Feature: topology fields are valid.
pub const VIRTIO_BLK_F_TOPOLOGY: u32 = 10;
/// Feature: the write-cache mode is switchable in config space.
pub const VIRTIO_BLK_F_CONFIG_WCE: u32 = 11;
/// Feature: DISCARD requests.
pub const VIRTIO_BLK_F_DISCARD: u32 = 13;
/// Feature: WRITE_ZEROES requests.
pub const VIRTIO_BLK_F_WRITE_ZEROES: u32 = 14;

/// virtio device type of a block device.
pub const VIRTIO_ID_BLOCK: u16 = 2;
/// Size of the configuration space we expose (through `write_zeroes_may_unmap` + padding).
pub const VIRTIO_BLK_CONFIG_LEN: usize = 60;
/// Offset of the `writeback` byte in the configuration space.
const CONFIG_WRITEBACK: usize = 32;

/// User-settable properties of a virtio-blk device (QEMU's `-device virtio-blk-pci,...`).
#[derive(Clone, Debug)]
pub struct VirtioBlkConf {
    /// GET_ID answer (`serial=`), at most 20 bytes are returned.
    pub serial: String,
    /// Queue size (`queue-size=`, default 256).
    pub queue_size: u16,
    /// Offer CONFIG_WCE (`config-wce=`, default on).
    pub config_wce: bool,
    /// Offer DISCARD (`discard=`, default on).
    pub discard: bool,
    /// Offer WRITE_ZEROES (`write-zeroes=`, default on).
    pub write_zeroes: bool,
    /// Logical block size (`logical_block_size=`, default 512).
    pub logical_block_size: u32,
    /// Physical block size (`physical_block_size=`, default 512).
    pub physical_block_size: u32,
    /// Largest segment in bytes announced as size_max.
    pub size_max: u32,
}

impl Default for VirtioBlkConf {
    fn default() -> Self {
        VirtioBlkConf {
            serial: String::new(),
            queue_size: 256,
            config_wce: true,
            discard: true,
            write_zeroes: true,
            logical_block_size: 512,
            physical_block_size: 512,
            size_max: 1 << 20,
        }
    }
}

/// The device model half: features and configuration space (QEMU's VirtIOBlock fields).
pub struct VirtioBlk {
    conf: VirtioBlkConf,
    capacity: u64,
    read_only: bool,
    /// Write cache on (writeback) or off (writethrough); read by the handler per request.
    wce: Arc<AtomicBool>,
}

impl VirtioBlk {
    /// A device over a disk of `capacity` sectors.
    pub fn new(conf: VirtioBlkConf, capacity: u64, read_only: bool) -> VirtioBlk {
        VirtioBlk {
            conf,
            capacity,
            read_only,
            wce: Arc::new(AtomicBool::new(true)),
        }
    }

    /// What the main-loop handler shares with this model; take it before boxing the model
    /// into its transport.
    pub fn shared(&self) -> VirtioBlkShared {
        VirtioBlkShared {
            limits: DiskLimits {
                capacity: self.capacity,
                logical_block_size: self.conf.logical_block_size,
                discard: self.conf.discard,
                write_zeroes: self.conf.write_zeroes,
                max_discard_sectors: MAX_DWZ_SECTORS,
                max_write_zeroes_sectors: MAX_DWZ_SECTORS,
                serial: self.conf.serial.clone(),
            },
            wce: self.wce.clone(),
        }
    }

    fn config_bytes(&self) -> [u8; VIRTIO_BLK_CONFIG_LEN] {
        let c = &self.conf;
        let mut b = [0u8; VIRTIO_BLK_CONFIG_LEN];
        let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
        put(0, &self.capacity.to_le_bytes());
        put(8, &c.size_max.to_le_bytes());
        put(12, &u32::from(c.queue_size.saturating_sub(2)).to_le_bytes());
        put(20, &c.logical_block_size.to_le_bytes());
        let exp = (c.physical_block_size / c.logical_block_size.max(1))
            .max(1)
            .ilog2() as u8;
        put(24, &[exp, 0]);
        put(
            26,
            &((c.physical_block_size / c.logical_block_size.max(1)) as u16).to_le_bytes(),
        );
        put(CONFIG_WRITEBACK, &[self.wce.load(Ordering::Relaxed) as u8]);
        put(34, &1u16.to_le_bytes());
        let discard_align = (c.logical_block_size >> 9).max(1);
        put(36, &MAX_DWZ_SECTORS.to_le_bytes());
        put(40, &1u32.to_le_bytes());
        put(44, &discard_align.to_le_bytes());
        put(48, &MAX_DWZ_SECTORS.to_le_bytes());
        put(52, &1u32.to_le_bytes());
        put(56, &[1]);
        b
    }
}

/// The part of the device model the handler needs: request limits and the write-cache switch.
#[derive(Clone, Debug)]
pub struct VirtioBlkShared {
    /// The limits requests are judged against.
    pub limits: DiskLimits,
    /// Write cache on (writeback) or off (writethrough), switched by the driver.
    pub wce: Arc<AtomicBool>,
}

/// Largest discard / write-zeroes in sectors (QEMU's default max-*-sectors).
const MAX_DWZ_SECTORS: u32 = (i32::MAX as u32) >> 9;

impl VirtioDevice for VirtioBlk {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_BLOCK
    }

    fn host_features(&self) -> u64 {
        let mut bits = vec![
            VIRTIO_BLK_F_SIZE_MAX,
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_BLK_F_TOPOLOGY,
            VIRTIO_F_NOTIFY_ON_EMPTY,
            VIRTIO_F_ANY_LAYOUT,
            VIRTIO_RING_F_INDIRECT_DESC,
            VIRTIO_RING_F_EVENT_IDX,
        ];
        let optional = [
            (self.read_only, VIRTIO_BLK_F_RO),
            (self.conf.config_wce, VIRTIO_BLK_F_CONFIG_WCE),
            (self.conf.discard, VIRTIO_BLK_F_DISCARD),
            (self.conf.write_zeroes, VIRTIO_BLK_F_WRITE_ZEROES),
        ];
        bits.extend(optional.iter().filter(|(on, _)| *on).map(|(_, b)| *b));
        bits.iter().fold(0, |f, b| f | 1u64 << b)
    }

    fn num_queues(&self) -> usize {
        1
    }

    fn queue_max_size(&self) -> u16 {
        self.conf.queue_size
    }

    fn config_len(&self) -> usize {
        VIRTIO_BLK_CONFIG_LEN
    }

    fn read_config(&self, offset: usize, data: &mut [u8]) {
        let bytes = self.config_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = offset
                .checked_add(i)
                .and_then(|o| bytes.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        // Only `writeback` is writable, and only when CONFIG_WCE is offered.
        if self.conf.config_wce && offset <= CONFIG_WRITEBACK {
            if let Some(&v) = data.get(CONFIG_WRITEBACK - offset) {
                self.wce.store(v != 0, Ordering::Relaxed);
            }
        }
    }

    fn set_features(&mut self, features: u64) {
        // A driver that cannot switch the cache gets writeback only if it can flush
        // (virtio_blk_set_features); a modern driver always gets writeback.
        let has = |bit: u32| features & (1u64 << bit) != 0;
        if !has(VIRTIO_BLK_F_CONFIG_WCE) && !has(VIRTIO_F_VERSION_1) {
            self.wce.store(has(VIRTIO_BLK_F_FLUSH), Ordering::Relaxed);
        }
    }

    fn reset(&mut self) {
        self.wce.store(true, Ordering::Relaxed);
    }
}

//! rqemu's image formats: drivers that map a virtual disk onto the bytes of their `file`
//! child (QEMU's block/raw-format.c, block/qcow2*.c...).
//!
//! A format never touches the host itself; it reads and writes its child node through the
//! generic request path, so the same qcow2 code runs over a file, a null device or any filter.
//! [`register_all`] adds every format to the block layer's registry, where probing finds them.

pub mod bochs;
pub mod cloop;
pub mod dmg;
mod image_file;
pub mod luks;
pub mod parallels;
pub mod qcow;
pub mod qcow2;
pub mod qed;
pub mod raw;
mod read_only;
mod table_cache;
pub mod vdi;
pub mod vhdx;
pub mod vmdk;
pub mod vpc;

/// Registers every format driver with the block layer (QEMU's block_init).
pub fn register_all() {
    block::registry::register(&raw::RAW);
    block::registry::register(&qcow2::QCOW2);
    block::registry::register(&luks::LUKS);
    block::registry::register(&qed::QED);
    block::registry::register(&qcow::QCOW);
    block::registry::register(&vdi::VDI);
    block::registry::register(&vpc::VPC);
    block::registry::register(&vhdx::VHDX);
    block::registry::register(&parallels::PARALLELS);
    block::registry::register(&vmdk::VMDK);
    block::registry::register(&dmg::DMG);
    block::registry::register(&cloop::CLOOP);
    block::registry::register(&bochs::BOCHS);
}

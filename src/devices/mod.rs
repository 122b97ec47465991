//! Device models (QEMU's hw/): what the guest sees on its buses.

pub mod virtio;

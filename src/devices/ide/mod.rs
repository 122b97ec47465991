//! IDE: the PIIX3 IDE function with two ATA channels of PIO disks (QEMU's hw/ide/).
//!
//! Read in this order:
//! [`ata`] one channel's registers as a sans-IO state machine, [`data_port`] its PIO
//! transfers, [`commands`]
//! the ATA commands and the completion of their block requests, [`identify`] the IDENTIFY
//! page and geometry, [`piix`] the PCI function and port routing, [`glue`] the port-bus
//! device and the path to the block layer (whose drives the loop thread keeps in
//! [`crate::drives`]).
//!
//! # How a port write becomes disk I/O
//!
//! ```text
//! vCPU thread                         main loop thread (AioContext)
//! -----------                         -----------------------------
//! KVM_EXIT_IO out 0x1F0 (rep outsw, up to a page)
//!   BQL, Bus::write_string -> IdePorts::write_string
//!   lock device (Arc<Mutex<Piix3Ide>>)
//!   Piix3Ide::pio_write -> AtaChannel::data_write_buf (whole buffer)
//!     last byte of the DRQ block: status BSY, BlockRequest queued
//!   IdeBlockSubmitter::after_access
//!     take_request -> queue, kick (eventfd) ------------> IdeBlockSubmitter::serve: the
//!                                                       channel's IdeBus holds the blk
//!   unlock, KVM_RUN again (guest polls BSY             blk.aio_pwritev(IoVector::from_slice)
//!   or waits for IRQ14)                                  coroutine -> format -> file -> pool
//!                                                      completion BH (blk_aio_complete_bh):
//!                                                        lock device
//!                                                        AtaChannel::complete: BSY off, DRQ
//!                                                        for the next block or done, IRQ
//!                                                        after_access: irq_update ->
//!                                                          IrqLine::set_level(true)
//!                                                          = KVM_IRQ_LINE 14 (in-kernel PIC)
//! ```
//!
//! The machine (`crate::machine`) puts the function at PCI 00:01.1 and its ports 0x1F0-0x1F7,
//! 0x3F6, 0x170-0x177, 0x376 on the port bus; `-drive if=ide,index=N` or `-device ide-hd`
//! fill the slots. With `-trace 'ide_*' -trace 'blk_*'` one request shows as
//! `ide_bus_exec_cmd`, `ide_sector_read`, `blk_co_preadv`, `blk_aio_complete`,
//! `ide_transfer_start`.
//!
//! The state machine never blocks and never calls out: every effect is a value the glue
//! collects (`take_request`, `irq_update`), so tests drive it register by register without
//! threads, and the same code runs under the real loop. The BlockBackend stays on the loop
//! thread (it is `Rc`, like all block-graph state); devices name drives by their `-drive id=`.
//! Request data is copied twice each way, at most 16 sectors per DRQ block: a write's
//! sectors go from the sector buffer into the `BlockRequest` (plain bytes, so the state
//! machine stays free of block-layer types and the request can cross to the loop thread),
//! then into an aligned `IoVector`; a read comes back as bytes copied out of its `IoVector`,
//! then into the sector buffer. QEMU copies once, because its `qiov` points straight into
//! `io_buffer` under the one lock both sides hold.

pub mod ata;
pub mod atapi;
pub mod commands;
pub mod data_port;
pub mod glue;
pub mod identify;
pub mod piix;

pub use ata::{AtaChannel, BlockOp, BlockRequest, DriveConfig, DriveKind, RequestId};
pub use glue::{AtaController, ChannelWiring, IdeBlockSubmitter, IdePorts};
pub use identify::DriveInfo;
pub use piix::Piix3Ide;

#[cfg(test)]
mod tests;

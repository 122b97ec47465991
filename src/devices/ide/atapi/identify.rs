//! The 512-byte IDENTIFY PACKET DEVICE page of the CD/DVD drive.
//!
//! QEMU's hw/ide/core.c (ide_atapi_identify). Word 0 says what the host talks to: an ATAPI
//! device (bits 15:14 = 10b) of type 5 (CD/DVD), removable, that asserts DRQ within 50 us of
//! PACKET and takes 12-byte packets. Like the disk, this drive does PIO only: word 49 does not
//! claim DMA and the DMA mode words are zero; word 82 bit 4 advertises the PACKET feature set.

use super::super::identify::{page_bytes, put_string, DriveInfo};

/// Builds the IDENTIFY PACKET DEVICE page.
pub fn identify_packet_page(info: &DriveInfo) -> [u8; 512] {
    let mut w = [0u16; 256];
    w[0] = (2 << 14) | (5 << 8) | (1 << 7) | (2 << 5); // ATAPI CD/DVD, removable, 50 us DRQ
    put_string(&mut w[10..20], &info.serial);
    w[20] = 3; // retired: buffer type
    w[21] = 512; // retired: buffer size in sectors
    w[22] = 4; // obsolete: ECC bytes
    put_string(&mut w[23..27], &info.firmware);
    put_string(&mut w[27..47], &info.model);
    w[48] = 1; // 32-bit data port I/O
    w[49] = (1 << 11) | (1 << 9); // IORDY, LBA (no DMA)
    w[53] = 0x0003; // words 54-58 and 64-70 valid
    w[64] = 0x0003; // PIO modes 3 and 4
    w[65..=68].fill(120); // minimum cycle times (ns)
    w[71] = 30; // typical time from PACKET to bus release (ns)
    w[72] = 30; // typical time from SERVICE to BSY clear (ns)
    w[80] = 0x001E; // ATA/ATAPI-1 to -4
    w[82] = 1 << 4; // PACKET feature set
    w[83] = 1 << 14;
    w[84] = 1 << 14;
    w[85] = 1 << 4;
    w[87] = 1 << 14;
    page_bytes(&w)
}

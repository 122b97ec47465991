//! The data port of an ATA channel: PIO transfers of DRQ blocks between the host and the
//! selected drive's sector buffer.
//!
//! QEMU's hw/ide/core.c (ide_data_readw/writew/readl/writel). A command opens the port for one
//! DRQ block (`transfer_start`); each 16- or 32-bit access moves the next bytes; the access
//! that moves the last byte closes the port and runs the block's end action (read the next
//! block, write this one, or stop). A `rep ins/outs` arrives from KVM as one buffer and is
//! moved with one copy.

use block::trace;

use super::ata::{reg, AtaChannel, EndTransfer, DRQ};

impl AtaChannel {
    /// One 16- or 32-bit read of the data port (ide_data_readw/readl). An 8-bit read is a
    /// register read of base+0 (0xFF), as on QEMU's port layout.
    pub fn data_read(&mut self, size: usize) -> u32 {
        if size == 1 {
            return self.ioport_read(reg::DATA) as u32;
        }
        let mut bytes = [0u8; 4];
        self.data_read_buf(size, &mut bytes[..size.min(4)]);
        u32::from_le_bytes(bytes)
    }

    /// One 16- or 32-bit write of the data port; 8-bit writes are ignored.
    pub fn data_write(&mut self, size: usize, val: u32) {
        if size == 1 {
            return self.ioport_write(reg::DATA, val as u8);
        }
        let bytes = val.to_le_bytes();
        self.data_write_buf(size, &bytes[..size.min(4)]);
    }

    /// Traces each access of a buffer as QEMU traces its single accesses, so that a trace
    /// reads the same whether KVM delivered `rep insw` whole or word by word.
    fn trace_data(&self, write: bool, size: usize, buf: &[u8]) {
        let (base, bus, ifs) = (self.base, self as *const Self, &self.drives[self.unit]);
        for access in buf.chunks_exact(size) {
            let val = access.iter().rev().fold(0u32, |v, &b| v << 8 | b as u32);
            match (write, size) {
                (false, 2) => trace!(
                    ide_data_readw,
                    "IDE PIO rd @ 0x{base:x} (Data: Word); val 0x{val:04x}; bus {bus:p}; IDEState {ifs:p}"
                ),
                (false, _) => trace!(
                    ide_data_readl,
                    "IDE PIO rd @ 0x{base:x} (Data: Long); val 0x{val:08x}; bus {bus:p}; IDEState {ifs:p}"
                ),
                (true, 2) => trace!(
                    ide_data_writew,
                    "IDE PIO wr @ 0x{base:x} (Data: Word); val 0x{val:04x}; bus {bus:p}; IDEState {ifs:p}"
                ),
                (true, _) => trace!(
                    ide_data_writel,
                    "IDE PIO wr @ 0x{base:x} (Data: Long); val 0x{val:08x}; bus {bus:p}; IDEState {ifs:p}"
                ),
            }
        }
    }

    /// A `rep ins` of `buf.len() / size` accesses of `size` (2 or 4) bytes. Accesses past the
    /// end of the DRQ block read zero and move nothing, as single accesses without DRQ do: the
    /// next block is never ready within the same exit on real hardware either. A block of odd
    /// length (an ATAPI reply) ends in an access that carries a zero pad byte.
    pub fn data_read_buf(&mut self, size: usize, buf: &mut [u8]) {
        if size != 2 && size != 4 {
            buf.fill(if size == 1 { 0xFF } else { 0 });
            return;
        }
        let d = &mut self.drives[self.unit];
        let avail = d.data_end - d.data_pos;
        let n = if d.status & DRQ != 0 && d.data_in() {
            avail.min(buf.len() / size * size)
        } else {
            0
        };
        buf[..n].copy_from_slice(&d.buffer[d.data_pos..d.data_pos + n]);
        buf[n..].fill(0);
        self.trace_data(false, size, buf);
        self.advance(n);
    }

    /// A `rep outs` of `buf.len() / size` accesses; accesses without DRQ or past the end of
    /// the DRQ block are dropped.
    pub fn data_write_buf(&mut self, size: usize, buf: &[u8]) {
        if size != 2 && size != 4 {
            return;
        }
        self.trace_data(true, size, buf);
        let d = &mut self.drives[self.unit];
        let avail = d.data_end - d.data_pos;
        if d.status & DRQ == 0 || d.data_in() {
            return;
        }
        let n = (avail.min(buf.len()) / size) * size;
        d.buffer[d.data_pos..d.data_pos + n].copy_from_slice(&buf[..n]);
        self.advance(n);
    }

    /// Moves the data pointer by `n` bytes; the end of the DRQ block runs its end action.
    fn advance(&mut self, n: usize) {
        let d = &mut self.drives[self.unit];
        if n == 0 {
            return;
        }
        d.data_pos += n;
        if d.data_pos >= d.data_end {
            d.status &= !DRQ;
            self.end_transfer();
        }
    }

    /// The host moved the last byte of the DRQ block of the selected drive.
    fn end_transfer(&mut self) {
        match self.cur().end_transfer {
            EndTransfer::Stop => self.cur().transfer_stop(),
            EndTransfer::SectorRead => self.sector_read(),
            EndTransfer::SectorWrite => self.sector_write(),
            EndTransfer::AtapiPacket => self.atapi_packet_received(),
            EndTransfer::AtapiReply => self.atapi_reply_end(),
        }
    }
}

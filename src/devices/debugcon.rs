//! The debug console: a write-only port firmware prints its log to (QEMU's
//! hw/char/debugcon.c, here at SeaBIOS's port 0x402).
//!
//! Reading the port returns 0xE9, the value SeaBIOS checks to decide that a debug console is
//! present and keep logging to it.

use std::io::Write;

use crate::bus::BusDevice;
use crate::chardev::CharOut;

/// SeaBIOS's debug port under QEMU.
pub const DEBUGCON_PORT: u16 = 0x402;
/// What a read of the port returns.
pub const DEBUGCON_READBACK: u8 = 0xE9;

/// The debug console.
pub struct DebugCon {
    out: CharOut,
}

impl DebugCon {
    /// A console writing to `out`.
    pub fn new(out: CharOut) -> DebugCon {
        DebugCon { out }
    }
}

impl BusDevice for DebugCon {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = DEBUGCON_READBACK;
    }

    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
        // A log that cannot be written is not the guest's problem; drop the byte.
        let _ = self.out.write_all(&data[..1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_e9_and_appends_writes_to_its_file() {
        let path = std::env::temp_dir().join(format!("rqemu-debugcon-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let mut con = DebugCon::new(CharOut::File(std::sync::Arc::new(file)));
        let mut b = [0u8];
        con.read(0x402, 0, &mut b);
        assert_eq!(b[0], 0xE9);
        for &c in b"log\n" {
            con.write(0x402, 0, &[c]);
        }
        drop(con);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "log\n");
        std::fs::remove_file(&path).unwrap();
    }
}

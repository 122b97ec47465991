//! Loading the firmware image (QEMU's x86_bios_rom_init).
//!
//! The image is mapped so that it ends at 4 GiB (memory.rs) and the vCPU starts at the
//! reset vector, its last 16 bytes. Like QEMU, only images that are a multiple of 64 KiB are
//! accepted: SeaBIOS's bios.bin is 128 KiB and bios-256k.bin 256 KiB.

use std::path::Path;

use crate::error::MachineError;

/// The largest image accepted (the ROM window below 4 GiB must not reach device memory).
pub const MAX_BIOS_SIZE: u64 = 16 << 20;

/// Reads a firmware image, with QEMU's message when it is missing or malformed.
pub fn load_bios(path: &Path) -> Result<Vec<u8>, MachineError> {
    let error = || MachineError::Boot(format!("could not load PC BIOS '{}'", path.display()));
    let size = std::fs::metadata(path).map_err(|_| error())?.len();
    if size == 0 || size % 65536 != 0 || size > MAX_BIOS_SIZE {
        return Err(error());
    }
    std::fs::read(path).map_err(|_| error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_must_exist_and_be_multiples_of_64k() {
        let dir = std::env::temp_dir();
        let good = dir.join(format!("rqemu-bios-good-{}", std::process::id()));
        let bad = dir.join(format!("rqemu-bios-bad-{}", std::process::id()));
        std::fs::write(&good, vec![0u8; 128 << 10]).unwrap();
        std::fs::write(&bad, vec![0u8; 1000]).unwrap();
        assert_eq!(load_bios(&good).unwrap().len(), 128 << 10);
        let err = load_bios(&bad).unwrap_err();
        assert_eq!(
            err,
            MachineError::Boot(format!("could not load PC BIOS '{}'", bad.display()))
        );
        assert!(load_bios(Path::new("/nonexistent/bios.bin")).is_err());
        std::fs::remove_file(good).unwrap();
        std::fs::remove_file(bad).unwrap();
    }
}

//! The firmware's table loader: the commands (`etc/table-loader`) that tell SeaBIOS where to
//! put the ACPI blobs rqemu hands it through fw_cfg and how to link them.
//!
//! QEMU's hw/acpi/bios-linker-loader.c; SeaBIOS runs the script in src/fw/romfile_loader.c.
//! The tables are built once, at addresses nobody knows yet: every pointer between them holds
//! the target's offset within its file. The script is a list of 128-byte commands:
//! ALLOCATE a file in a memory zone (and load it there), ADD_POINTER (add the base address
//! of the source file to the little-endian pointer of `size` bytes at `offset` in the
//! destination file), ADD_CHECKSUM (fix the checksum byte at `offset` so that the bytes
//! `start..start+length` sum to zero, after the pointers changed them).

/// The size of one command.
pub const ENTRY_SIZE: usize = 128;
/// Longest file name, NUL included (fw_cfg's limit).
pub const FILE_NAME_LEN: usize = 56;

/// Command: allocate and load a file.
pub const COMMAND_ALLOCATE: u32 = 1;
/// Command: relocate a pointer.
pub const COMMAND_ADD_POINTER: u32 = 2;
/// Command: fix a checksum.
pub const COMMAND_ADD_CHECKSUM: u32 = 3;

/// Where ALLOCATE puts a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Zone {
    /// High memory (below 4 GiB, reserved in e820): the tables.
    High = 1,
    /// The BIOS F segment (0xE0000-0xFFFFF), where an OS searches for the RSDP.
    Fseg = 2,
}

/// A table-loader script under construction (QEMU's BIOSLinker).
#[derive(Default)]
pub struct Linker {
    script: Vec<u8>,
}

impl Linker {
    fn entry(&mut self, command: u32) -> &mut [u8] {
        let start = self.script.len();
        self.script.resize(start + ENTRY_SIZE, 0);
        let e = &mut self.script[start..];
        e[..4].copy_from_slice(&command.to_le_bytes());
        &mut e[4..]
    }

    /// ALLOCATE `file` aligned to `align` bytes in `zone`.
    pub fn allocate(&mut self, file: &str, align: u32, zone: Zone) {
        let e = self.entry(COMMAND_ALLOCATE);
        put_name(&mut e[..FILE_NAME_LEN], file);
        e[FILE_NAME_LEN..FILE_NAME_LEN + 4].copy_from_slice(&align.to_le_bytes());
        e[FILE_NAME_LEN + 4] = zone as u8;
    }

    /// ADD_POINTER: the `size`-byte pointer at `offset` of `dest` points into `src`.
    pub fn add_pointer(&mut self, dest: &str, offset: usize, size: u8, src: &str) {
        let e = self.entry(COMMAND_ADD_POINTER);
        put_name(&mut e[..FILE_NAME_LEN], dest);
        put_name(&mut e[FILE_NAME_LEN..2 * FILE_NAME_LEN], src);
        let at = 2 * FILE_NAME_LEN;
        e[at..at + 4].copy_from_slice(&(offset as u32).to_le_bytes());
        e[at + 4] = size;
    }

    /// ADD_CHECKSUM: the table at `start..start + length` of `file` has its checksum byte at
    /// `start + 9` (every ACPI table header puts it there).
    pub fn add_table_checksum(&mut self, file: &str, start: usize, length: usize) {
        self.add_checksum(file, start + 9, start, length);
    }

    /// ADD_CHECKSUM of the byte at `offset` over `start..start + length`.
    pub fn add_checksum(&mut self, file: &str, offset: usize, start: usize, length: usize) {
        let e = self.entry(COMMAND_ADD_CHECKSUM);
        put_name(&mut e[..FILE_NAME_LEN], file);
        for (i, v) in [offset, start, length].into_iter().enumerate() {
            let at = FILE_NAME_LEN + 4 * i;
            e[at..at + 4].copy_from_slice(&(v as u32).to_le_bytes());
        }
    }

    /// The script, as `etc/table-loader` holds it.
    pub fn into_bytes(self) -> Vec<u8> {
        self.script
    }
}

/// A NUL-padded file name; the tables' names are short constants.
fn put_name(field: &mut [u8], name: &str) {
    assert!(name.len() < FILE_NAME_LEN, "fw_cfg file name too long");
    field[..name.len()].copy_from_slice(name.as_bytes());
}

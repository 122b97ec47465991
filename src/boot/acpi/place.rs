//! The firmware's half of the table loader, run on the host: executes `etc/table-loader`
//! over the fw_cfg files, so that a kernel booted without firmware finds the same tables.
//!
//! SeaBIOS's src/fw/romfile_loader.c plays this role when rqemu boots through firmware. QEMU
//! needs no host-side copy, because its direct boot still runs SeaBIOS (the linuxboot option
//! ROM); rqemu enters the kernel directly, so it does the firmware's work itself: ALLOCATE
//! puts each file at the next aligned address of its zone, ADD_POINTER adds the target file's
//! address to a pointer, ADD_CHECKSUM fixes a checksum byte. The result is a list of
//! relocated files and their guest addresses, written into guest RAM by [`Loaded::write`].

use std::ops::Range;

use vm_memory::GuestAddress;

use super::loader::{
    Zone, COMMAND_ADD_CHECKSUM, COMMAND_ADD_POINTER, COMMAND_ALLOCATE, ENTRY_SIZE, FILE_NAME_LEN,
};
use super::AcpiBuild;
use crate::error::MachineError;
use crate::memory::GuestRam;

/// The guest addresses each zone of the script may allocate from.
pub struct Zones {
    /// [`Zone::Fseg`]: where an OS scans for the RSDP.
    pub fseg: Range<u64>,
    /// [`Zone::High`]: the tables.
    pub high: Range<u64>,
}

/// One loaded file: its name, guest address and relocated bytes.
pub struct LoadedFile {
    /// The fw_cfg file name.
    pub name: String,
    /// Where it is in guest memory.
    pub addr: u64,
    /// Its contents after the pointers and checksums were patched.
    pub bytes: Vec<u8>,
}

/// The files the script allocated, in allocation order.
pub struct Loaded {
    /// The files.
    pub files: Vec<LoadedFile>,
}

impl Loaded {
    /// The loaded file named `name`.
    pub fn file(&self, name: &str) -> Option<&LoadedFile> {
        self.files.iter().find(|f| f.name == name)
    }

    /// Copies every file to its address in guest RAM.
    pub fn write(&self, ram: &GuestRam) -> Result<(), MachineError> {
        for f in &self.files {
            ram.write(GuestAddress(f.addr), &f.bytes)?;
        }
        Ok(())
    }
}

/// Runs `acpi`'s loader script with allocations taken from `zones`.
pub fn run_loader(acpi: &AcpiBuild, zones: &Zones) -> Result<Loaded, MachineError> {
    if !acpi.loader.len().is_multiple_of(ENTRY_SIZE) {
        return Err(MachineError::Boot(
            "table-loader script is not a whole number of commands".to_string(),
        ));
    }
    let mut cursors = [zones.fseg.start, zones.high.start];
    let mut files: Vec<LoadedFile> = Vec::new();
    for entry in acpi.loader.chunks(ENTRY_SIZE) {
        let (command, body) = (u32_at(entry, 0), &entry[4..]);
        let name = file_name(&body[..FILE_NAME_LEN])?;
        match command {
            COMMAND_ALLOCATE => {
                let align = u64::from(u32_at(body, FILE_NAME_LEN)).max(1);
                let (cursor, limit) = match body[FILE_NAME_LEN + 4] {
                    z if z == Zone::Fseg as u8 => (&mut cursors[0], zones.fseg.end),
                    z if z == Zone::High as u8 => (&mut cursors[1], zones.high.end),
                    z => {
                        return Err(MachineError::Boot(format!(
                            "table-loader: unknown zone {z} for {name}"
                        )))
                    }
                };
                let bytes = acpi
                    .file(&name)
                    .ok_or_else(|| {
                        MachineError::Boot(format!("table-loader: no fw_cfg file {name}"))
                    })?
                    .to_vec();
                let addr = cursor.next_multiple_of(align);
                let end = addr + bytes.len() as u64;
                if end > limit {
                    return Err(MachineError::Boot(format!(
                        "ACPI file {name} does not fit below {limit:#x}"
                    )));
                }
                *cursor = end;
                files.push(LoadedFile { name, addr, bytes });
            }
            COMMAND_ADD_POINTER => {
                let src = file_name(&body[FILE_NAME_LEN..2 * FILE_NAME_LEN])?;
                let at = 2 * FILE_NAME_LEN;
                let (offset, size) = (u32_at(body, at) as usize, body[at + 4] as usize);
                let base = find(&mut files, &src)?.addr;
                let dest = &mut find(&mut files, &name)?.bytes;
                if ![1, 2, 4, 8].contains(&size) || offset + size > dest.len() {
                    return Err(MachineError::Boot(format!(
                        "table-loader: bad pointer at {offset} in {name}"
                    )));
                }
                let mut value = [0u8; 8];
                value[..size].copy_from_slice(&dest[offset..offset + size]);
                let patched = u64::from_le_bytes(value).wrapping_add(base);
                dest[offset..offset + size].copy_from_slice(&patched.to_le_bytes()[..size]);
            }
            COMMAND_ADD_CHECKSUM => {
                let [offset, start, len] =
                    [0, 4, 8].map(|i| u32_at(body, FILE_NAME_LEN + i) as usize);
                let data = &mut find(&mut files, &name)?.bytes;
                if offset >= data.len() || start + len > data.len() {
                    return Err(MachineError::Boot(format!(
                        "table-loader: bad checksum range in {name}"
                    )));
                }
                let sum = data[start..start + len]
                    .iter()
                    .fold(0u8, |s, b| s.wrapping_add(*b));
                data[offset] = data[offset].wrapping_sub(sum);
            }
            other => {
                return Err(MachineError::Boot(format!(
                    "table-loader command {other} is not supported"
                )))
            }
        }
    }
    Ok(Loaded { files })
}

/// The allocated file `name`: a command may only refer to files allocated before it.
fn find<'a>(files: &'a mut [LoadedFile], name: &str) -> Result<&'a mut LoadedFile, MachineError> {
    files.iter_mut().find(|f| f.name == name).ok_or_else(|| {
        MachineError::Boot(format!("table-loader: {name} used before it is allocated"))
    })
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A NUL-padded name field.
fn file_name(field: &[u8]) -> Result<String, MachineError> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8(field[..end].to_vec())
        .map_err(|_| MachineError::Boot("table-loader: file name is not UTF-8".to_string()))
}

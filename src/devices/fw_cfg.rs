//! fw_cfg: the channel through which the VMM hands configuration to the firmware
//! (QEMU's hw/nvram/fw_cfg.c; the interface is documented in QEMU's docs/specs/fw_cfg.rst).
//!
//! The firmware writes a 16-bit key to the selector port (0x510) and reads the item's bytes
//! one at a time from the data port (0x511); reading past the end returns 0. Fixed keys hold
//! the signature "QEMU", the interface ID and a few numbers; key 0x19 holds a directory of
//! named files (big-endian count, then `{be32 size, be16 key, u16 reserved, name[56]}`), each
//! file living at its own key from 0x20 on. Only this traditional port interface is offered
//! (ID bit 1 clear), so SeaBIOS does not try the DMA interface.

use std::collections::BTreeMap;

use crate::bus::BusDevice;
use crate::error::MachineError;

/// The selector port; the data port follows it.
pub const FW_CFG_PORT_SEL: u16 = 0x510;
/// Signature key: reads "QEMU".
pub const FW_CFG_SIGNATURE: u16 = 0x00;
/// Interface ID key: bit 0 = traditional interface.
pub const FW_CFG_ID: u16 = 0x01;
/// RAM size (le64).
pub const FW_CFG_RAM_SIZE: u16 = 0x03;
/// Non-zero when there is no display (le16).
pub const FW_CFG_NOGRAPHIC: u16 = 0x04;
/// Number of CPUs present at boot (le16).
pub const FW_CFG_NB_CPUS: u16 = 0x05;
/// Whether the boot menu is shown (le16).
pub const FW_CFG_BOOT_MENU: u16 = 0x0E;
/// Maximum number of CPUs (le16).
pub const FW_CFG_MAX_CPUS: u16 = 0x0F;
/// The file directory.
pub const FW_CFG_FILE_DIR: u16 = 0x19;
/// The key of the first file.
pub const FW_CFG_FILE_FIRST: u16 = 0x20;
/// Longest file name, NUL included.
const FILE_NAME_LEN: usize = 56;

/// An e820 memory type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Type {
    /// Usable RAM.
    Ram = 1,
    /// Reserved.
    Reserved = 2,
}

/// Encodes e820 entries the way `etc/e820` carries them: le64 address, le64 length, le32 type.
pub fn e820_bytes(entries: &[(u64, u64, E820Type)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 20);
    for &(addr, len, kind) in entries {
        out.extend_from_slice(&addr.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(kind as u32).to_le_bytes());
    }
    out
}

/// The fw_cfg device: items by key, and the selection cursor.
pub struct FwCfg {
    items: BTreeMap<u16, Vec<u8>>,
    files: BTreeMap<String, u16>,
    selected: u16,
    offset: usize,
}

impl Default for FwCfg {
    fn default() -> Self {
        let mut fw = FwCfg {
            items: BTreeMap::new(),
            files: BTreeMap::new(),
            selected: 0,
            offset: 0,
        };
        fw.add_bytes(FW_CFG_SIGNATURE, b"QEMU".to_vec());
        fw.add_bytes(FW_CFG_ID, 1u32.to_le_bytes().to_vec());
        fw.update_directory();
        fw
    }
}

impl FwCfg {
    /// Sets a fixed-key item.
    pub fn add_bytes(&mut self, key: u16, data: Vec<u8>) {
        self.items.insert(key, data);
    }

    /// Sets a le16 item.
    pub fn add_u16(&mut self, key: u16, value: u16) {
        self.add_bytes(key, value.to_le_bytes().to_vec());
    }

    /// Adds (or replaces) a named file; names longer than 55 bytes are refused.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<(), MachineError> {
        if name.len() >= FILE_NAME_LEN {
            return Err(MachineError::Device(format!(
                "fw_cfg file name too long: {name}"
            )));
        }
        let key = match self.files.get(name) {
            Some(&key) => key,
            None => FW_CFG_FILE_FIRST + self.files.len() as u16,
        };
        self.files.insert(name.to_string(), key);
        self.items.insert(key, data);
        self.update_directory();
        Ok(())
    }

    /// Rebuilds key 0x19, files sorted by name as QEMU lists them.
    fn update_directory(&mut self) {
        let mut dir = (self.files.len() as u32).to_be_bytes().to_vec();
        for (name, &key) in &self.files {
            let size = self.items.get(&key).map_or(0, Vec::len) as u32;
            dir.extend_from_slice(&size.to_be_bytes());
            dir.extend_from_slice(&key.to_be_bytes());
            dir.extend_from_slice(&0u16.to_be_bytes());
            let mut raw = [0u8; FILE_NAME_LEN];
            raw[..name.len()].copy_from_slice(name.as_bytes());
            dir.extend_from_slice(&raw);
        }
        self.items.insert(FW_CFG_FILE_DIR, dir);
    }

    /// Selects an item and rewinds it (a write to the selector port).
    pub fn select(&mut self, key: u16) {
        let known = self.items.contains_key(&key);
        block::trace!(fw_cfg_select, "key 0x{:04x} ret: {}", key, known as i32);
        self.selected = key;
        self.offset = 0;
    }

    /// The next byte of the selected item, 0 past its end or for unknown keys.
    pub fn read_byte(&mut self) -> u8 {
        let byte = self
            .items
            .get(&self.selected)
            .and_then(|d| d.get(self.offset))
            .copied()
            .unwrap_or(0);
        self.offset = self.offset.saturating_add(1);
        byte
    }
}

impl BusDevice for FwCfg {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match offset {
            1 => data.iter_mut().for_each(|b| *b = self.read_byte()),
            _ => data.fill(0xFF),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        // The selector takes 16-bit writes; the data port has been read-only since QEMU 2.4.
        if offset == 0 {
            let mut key = [0u8; 2];
            key[..data.len().min(2)].copy_from_slice(&data[..data.len().min(2)]);
            self.select(u16::from_le_bytes(key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_item(fw: &mut FwCfg, key: u16, len: usize) -> Vec<u8> {
        fw.write(0x510, 0, &key.to_le_bytes());
        let mut out = vec![0u8; len];
        for b in out.iter_mut() {
            let mut d = [0u8];
            fw.read(0x510, 1, &mut d);
            *b = d[0];
        }
        out
    }

    #[test]
    fn signature_id_and_reads_past_the_end() {
        let mut fw = FwCfg::default();
        assert_eq!(read_item(&mut fw, FW_CFG_SIGNATURE, 6), b"QEMU\0\0");
        assert_eq!(read_item(&mut fw, FW_CFG_ID, 4), [1, 0, 0, 0]);
        assert_eq!(read_item(&mut fw, 0x1234, 2), [0, 0], "unknown key");
    }

    #[test]
    fn directory_lists_files_sorted_with_big_endian_fields() {
        let mut fw = FwCfg::default();
        fw.add_file("etc/sercon-port", 0x3F8u16.to_le_bytes().to_vec())
            .unwrap();
        fw.add_file("bootorder", b"/pci@i0cf8/ide@1,1/drive@0/disk@0\n".to_vec())
            .unwrap();
        let dir = read_item(&mut fw, FW_CFG_FILE_DIR, 4 + 2 * 64);
        assert_eq!(&dir[..4], &2u32.to_be_bytes());
        let first = &dir[4..68];
        assert_eq!(&first[0..4], &34u32.to_be_bytes());
        assert_eq!(
            &first[4..6],
            &0x21u16.to_be_bytes(),
            "bootorder was added second"
        );
        assert_eq!(&first[8..17], b"bootorder");
        assert_eq!(first[17], 0);
        let second = &dir[68..132];
        assert_eq!(&second[4..6], &0x20u16.to_be_bytes());
        assert_eq!(&second[8..23], b"etc/sercon-port");
        assert_eq!(read_item(&mut fw, 0x20, 2), [0xF8, 0x03]);
    }

    #[test]
    fn replacing_a_file_keeps_its_key_and_long_names_are_refused() {
        let mut fw = FwCfg::default();
        fw.add_file("etc/boot-fail-wait", vec![1, 0, 0, 0]).unwrap();
        fw.add_file("etc/boot-fail-wait", vec![0, 0, 0, 0]).unwrap();
        let dir = read_item(&mut fw, FW_CFG_FILE_DIR, 4);
        assert_eq!(dir, 1u32.to_be_bytes());
        assert_eq!(read_item(&mut fw, 0x20, 4), [0, 0, 0, 0]);
        assert!(fw.add_file(&"x".repeat(56), vec![]).is_err());
    }

    #[test]
    fn e820_entries_are_20_bytes_little_endian() {
        let b = e820_bytes(&[(0, 0x800_0000, E820Type::Ram)]);
        assert_eq!(b.len(), 20);
        assert_eq!(&b[8..16], &0x800_0000u64.to_le_bytes());
        assert_eq!(&b[16..20], &1u32.to_le_bytes());
    }
}

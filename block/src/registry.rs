//! The driver registry: every driver class the process knows, found by name, by protocol
//! prefix, or by probing an image's first bytes.
//!
//! QEMU's bdrv_drivers list and bdrv_register/bdrv_find_format/bdrv_find_protocol/
//! bdrv_probe_all (block.c). QEMU's drivers add themselves from module constructors
//! (block_init); here the crate root hands over the drivers built into this crate
//! (`protocols::ALL`, `filters::ALL`) when the registry is first used, and other crates
//! register theirs (`formats::register_all`), so neither the registry nor the BlockDriver
//! contract names an implementation.

use std::sync::{Mutex, OnceLock};

use crate::driver::DriverClass;
use crate::error::{Error, Result};

static REGISTRY: OnceLock<Mutex<Vec<&'static DriverClass>>> = OnceLock::new();

fn registry() -> &'static Mutex<Vec<&'static DriverClass>> {
    REGISTRY.get_or_init(|| Mutex::new(crate::builtin_drivers()))
}

/// Adds a driver class (bdrv_register). Registering the same name twice keeps the first.
pub fn register(class: &'static DriverClass) {
    let mut r = registry().lock().unwrap();
    if !r.iter().any(|c| c.format_name == class.format_name) {
        r.push(class);
    }
}

/// Finds a driver by format name (bdrv_find_format).
pub fn find_driver(name: &str) -> Option<&'static DriverClass> {
    registry()
        .lock()
        .unwrap()
        .iter()
        .copied()
        .find(|c| c.format_name == name)
}

/// Finds the protocol driver for a filename's `proto:` prefix; plain paths use `file`, or
/// `host_device` when they name a host device.
pub fn find_protocol(filename: &str) -> Result<&'static DriverClass> {
    let prefix = filename
        .split_once(':')
        .map(|(p, _)| p)
        .filter(|p| !p.contains('/'));
    let name = match prefix {
        Some(p) => p,
        None => return Ok(crate::builtin_protocol_for_path(filename)),
    };
    registry()
        .lock()
        .unwrap()
        .iter()
        .copied()
        .find(|c| c.protocol_name == Some(name))
        .ok_or_else(|| Error::invalid(format!("Unknown protocol '{name}'")))
}

/// Picks the format whose probe scores highest for these first bytes (bdrv_probe_all).
pub fn probe_format(buf: &[u8], filename: &str) -> Option<&'static DriverClass> {
    let r = registry().lock().unwrap();
    let mut best: Option<(&'static DriverClass, u32)> = None;
    for class in r.iter().copied().filter(|c| c.is_format) {
        if let Some(probe) = class.probe {
            let score = probe(buf, filename);
            if score > best.map_or(0, |(_, s)| s) {
                best = Some((class, score));
            }
        }
    }
    best.map(|(c, _)| c)
}

/// Names of all registered drivers, sorted (the "Supported formats" line).
pub fn driver_names() -> Vec<&'static str> {
    let mut names: Vec<_> = registry()
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.format_name)
        .collect();
    names.sort_unstable();
    names
}

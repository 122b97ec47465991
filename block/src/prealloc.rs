//! Preallocation modes: how much of an image's space create and truncate reserve up front
//! (QEMU's PreallocMode in qapi/block-core.json).

use crate::error::{Error, Result};

/// Preallocation modes for create and truncate (QEMU's PreallocMode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreallocMode {
    /// No preallocation.
    Off,
    /// Allocate metadata only (formats).
    Metadata,
    /// posix_fallocate the space.
    Falloc,
    /// Write zeroes to the space.
    Full,
}

impl PreallocMode {
    /// Parses QEMU's names.
    pub fn parse(s: &str) -> Result<PreallocMode> {
        match s {
            "off" => Ok(PreallocMode::Off),
            "metadata" => Ok(PreallocMode::Metadata),
            "falloc" => Ok(PreallocMode::Falloc),
            "full" => Ok(PreallocMode::Full),
            _ => Err(Error::invalid(format!("Invalid parameter '{s}'"))),
        }
    }

    /// QEMU's name.
    pub fn name(self) -> &'static str {
        match self {
            PreallocMode::Off => "off",
            PreallocMode::Metadata => "metadata",
            PreallocMode::Falloc => "falloc",
            PreallocMode::Full => "full",
        }
    }
}

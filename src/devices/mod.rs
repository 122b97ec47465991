//! Device emulation: what the guest sees on its buses.

pub mod ide;

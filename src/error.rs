//! The machine side's error type: what setting up and running a VM can fail with, by layer
//! (QEMU reports these through `Error **errp` and error_report; the text is QEMU's where it
//! has one, and the tests compare it).
//!
//! Each variant carries the message rqemu prints; the variant says which layer refused, so a
//! caller can tell a configuration mistake from a KVM or device failure without parsing text.

use std::fmt;

/// An error of the machine side (src/machine, devices, kvm, boot, vm_config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MachineError {
    /// A command-line option or its value is wrong (vl.c's option parsing).
    Config(String),
    /// A KVM ioctl failed or the guest stopped the vCPU (accel/kvm).
    Kvm(String),
    /// Firmware, kernel, initrd or ACPI tables could not be loaded (hw/i386/x86.c, pc.c).
    Boot(String),
    /// A device could not be set up (hw/).
    Device(String),
    /// Assembling or running the machine failed (hw/i386/pc_piix.c, the main loop).
    Machine(String),
}

impl MachineError {
    /// The message, as rqemu prints it.
    pub fn message(&self) -> &str {
        match self {
            MachineError::Config(m)
            | MachineError::Kvm(m)
            | MachineError::Boot(m)
            | MachineError::Device(m)
            | MachineError::Machine(m) => m,
        }
    }
}

impl fmt::Display for MachineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for MachineError {}

impl From<MachineError> for String {
    fn from(e: MachineError) -> String {
        e.message().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device that ignores every access.
    struct Nop;
    impl crate::bus::BusDevice for Nop {
        fn read(&mut self, _base: u64, _offset: u64, _data: &mut [u8]) {}
        fn write(&mut self, _base: u64, _offset: u64, _data: &[u8]) {}
    }

    #[test]
    fn displays_the_message_alone() {
        let e = MachineError::Kvm("KVM_RUN failed: EINTR".into());
        assert_eq!(e.to_string(), "KVM_RUN failed: EINTR");
        assert_eq!(String::from(e), "KVM_RUN failed: EINTR");
    }

    #[test]
    fn each_layer_names_its_variant() {
        let boot = crate::boot::linux::check_header(0, 0x020F, 1).unwrap_err();
        assert!(matches!(boot, MachineError::Boot(_)), "{boot:?}");
        let mut bus = crate::bus::Bus::default();
        let empty = bus
            .insert(0x80, 0, std::sync::Arc::new(std::sync::Mutex::new(Nop)))
            .unwrap_err();
        assert_eq!(
            empty,
            MachineError::Device("empty bus range at 0x80".to_string())
        );
    }
}

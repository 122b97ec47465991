//! How the guest starts: through firmware (SeaBIOS, [`bios`]) or by entering a Linux kernel
//! directly ([`linux`]). QEMU's hw/i386/x86-common.c (x86_bios_rom_init, x86_load_linux).

pub mod acpi;
pub mod bios;
pub mod linux;

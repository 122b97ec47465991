//! Direct Linux boot enters a bzImage's 64-bit entry point in long mode.
//!
//! A stock kernel cannot run on the nested-PVM KVM of the development machines, so the
//! "kernel" here is a hand-made bzImage: a valid setup header and, at startup_64 (the load
//! address plus 0x200), 64-bit code that reads the zero page RSI points to (type_of_loader
//! 0xFF, the command line's first byte at cmd_line_ptr, the 8-byte signature at
//! acpi_rsdp_addr), prints "L64" and what it read on COM1, and resets through the keyboard controller. Needs /dev/kvm: skipped with a printed reason
//! when absent, failed instead when RQEMU_REQUIRE_KVM=1.

mod common;

use std::time::Duration;

use common::{kvm_usable, run, temp_path};

/// 64-bit code: print "L64", then [rsi+0x210] (type_of_loader), then the first byte of the
/// command line (through cmd_line_ptr at [rsi+0x228]), the RSDP's signature (through
/// acpi_rsdp_addr at [rsi+0x70]), "\n", and reset.
fn entry_code() -> Vec<u8> {
    let mut c = vec![0x66, 0xBA, 0xF8, 0x03]; // mov dx, 0x3f8
    for &ch in b"L64" {
        c.extend_from_slice(&[0xB0, ch, 0xEE]); // mov al, ch; out dx, al
    }
    c.extend_from_slice(&[0x8A, 0x86, 0x10, 0x02, 0x00, 0x00, 0xEE]); // mov al, [rsi+0x210]; out
    c.extend_from_slice(&[0x8B, 0x9E, 0x28, 0x02, 0x00, 0x00]); // mov ebx, [rsi+0x228]
    c.extend_from_slice(&[0x8A, 0x03, 0xEE]); // mov al, [rbx]; out dx, al
    c.extend_from_slice(&[0x48, 0x8B, 0x5E, 0x70]); // mov rbx, [rsi+0x70]
    for i in 0..8 {
        c.extend_from_slice(&[0x8A, 0x43, i, 0xEE]); // mov al, [rbx+i]; out dx, al
    }
    c.extend_from_slice(&[0xB0, b'\n', 0xEE]);
    c.extend_from_slice(&[0xB0, 0xFE, 0xE6, 0x64, 0xF4, 0xEB, 0xFD]); // reset; hlt loop
    c
}

fn fake_bzimage() -> std::path::PathBuf {
    let mut img = vec![0u8; 5 * 512];
    img[0x1F1] = 4; // setup_sects
    img[0x1FE..0x200].copy_from_slice(&0xAA55u16.to_le_bytes());
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020Fu16.to_le_bytes());
    img[0x211] = 0x01; // LOADED_HIGH
    img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    img[0x22C..0x230].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
    img[0x236..0x238].copy_from_slice(&0x1u16.to_le_bytes()); // XLF_KERNEL_64
    img[0x238..0x23C].copy_from_slice(&2047u32.to_le_bytes());
    let mut payload = vec![0xF4u8; 0x200]; // startup_32 (unused)
    payload.extend_from_slice(&entry_code());
    img.extend_from_slice(&payload);
    let path = temp_path("bzImage");
    std::fs::write(&path, img).unwrap();
    path
}

#[test]
fn fake_kernel_runs_its_64_bit_entry_with_the_zero_page() {
    if !kvm_usable() {
        return;
    }
    let kernel = fake_bzimage();
    let initrd = kernel.with_extension("initrd");
    std::fs::write(&initrd, vec![0x5Au8; 4096]).unwrap();
    let args = [
        "-kernel",
        kernel.to_str().unwrap(),
        "-initrd",
        initrd.to_str().unwrap(),
        "-append",
        "Xconsole=ttyS0",
        "-nographic",
        "-no-reboot",
        "-m",
        "256",
    ];
    let r = run(&args, b"", Duration::from_secs(30));
    std::fs::remove_file(&kernel).unwrap();
    std::fs::remove_file(&initrd).unwrap();
    assert_eq!(r.exited, Some(true), "rqemu failed: {}", r.stderr);
    assert_eq!(r.stdout, b"L64\xFFXRSD PTR \n", "stderr: {}", r.stderr);
}

//! qed: open, check, read and write a mutated image (seeds from QEMU's qemu-img).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| rqemu_fuzz::open_check_write(data, "qed"));

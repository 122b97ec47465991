//! qcow2: open, check, read, write and check -r all of a mutated image (seeds: images that
//! QEMU's qemu-img made, see scripts/fuzz.sh).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| rqemu_fuzz::open_check_write(data, "qcow2"));

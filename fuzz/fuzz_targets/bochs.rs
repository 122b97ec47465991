//! bochs: open and read a mutated image (a read-only format).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| rqemu_fuzz::open_and_read(data, "bochs"));

//! luks: parse a mutated header as `qemu-img info` does (no key: unlocking runs PBKDF2,
//! far too slow to fuzz, and the cipher is a crate's).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| rqemu_fuzz::open_header_only(data, "luks"));

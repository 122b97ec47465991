//! virtio-blk: descriptor chains a hostile driver could post (any address, length, flag and
//! next index, direct or indirect) over request headers of any type and sector, run through
//! the device and the main loop. It must complete the request, fail it, or mark itself
//! broken, never panic or touch memory outside guest RAM; and a broken device must come
//! back after a reset. The device is the one the virtio tests wire up (tests/virtio_rig).
#![no_main]
#[path = "../../tests/virtio_rig/mod.rs"]
#[allow(dead_code, unused_imports)]
mod virtio_rig;

use std::time::Duration;

use block::AioContext;
use virtio_rig::{Rig, DATA, HDRS, RAM, STATUS};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((head, descs)) = data.split_first_chunk::<64>() else {
        return;
    };
    let mut rig = Rig::new(1 << 20, u32::MAX);
    rig.mem_write(HDRS, head);
    for (i, d) in descs.chunks_exact(16).take(32).enumerate() {
        let raw = u64::from_le_bytes(d[0..8].try_into().unwrap());
        let addr = match d[8] % 5 {
            0 => HDRS + (raw & 0xff),
            1 => STATUS + (raw & 0xff),
            2 => DATA + (raw & 0xffff),
            3 => RAM as u64 - (raw & 0xfff),
            _ => raw,
        };
        let len = u32::from_le_bytes(d[9..13].try_into().unwrap()) & 0x3ffff;
        let flags = u16::from(d[13] & 7);
        let next = u16::from_le_bytes([d[14], d[15]]) % 40;
        rig.drv.write_desc(i as u16, addr, len, flags, next);
    }
    rig.drv.publish(0);
    rig.drv.kick(&mut rig.dev);
    AioContext::current().run_until(block::aio::co_sleep(Duration::from_millis(1)));
    rig.drain();
    while rig.drv.pop_used().is_some() {}
});

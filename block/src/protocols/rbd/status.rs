//! Block status of an rbd image from librbd's diff iteration (QEMU's
//! qemu_rbd_co_block_status and qemu_rbd_diff_iterate_cb in block/rbd.c).
//!
//! With the fast-diff feature the object map says, object by object, which parts of the
//! image exist. rbd_diff_iterate2 walks it from the start of the range and calls back for
//! each existing extent; the callback stops at the first change between "exists" and "does
//! not", so the answer covers the longest run of one kind from the offset. Images without a
//! usable object map answer "all data", as QEMU does.

use std::ffi::{c_int, c_void};

use super::cluster::Image;

/// What the callback collects (RBDDiffIterateReq).
struct DiffReq {
    offs: u64,
    bytes: u64,
    exists: bool,
}

/// A return value librbd passes through to stop the iteration early.
const EXIT_DIFF_ITERATE2: c_int = -9000;

extern "C" fn diff_iterate_cb(offs: u64, len: usize, exists: c_int, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the &mut DiffReq `block_status` passes, alive for the whole call,
    // and librbd calls back on the calling thread.
    let req = unsafe { &mut *(arg as *mut DiffReq) };
    // A hole reported inside the range is treated like an unallocated area.
    if exists == 0 {
        return 0;
    }
    if !req.exists && offs > req.offs {
        // The range started unallocated: it ends where the first extent begins.
        req.bytes = offs - req.offs;
        return EXIT_DIFF_ITERATE2;
    }
    if req.exists && offs > req.offs + req.bytes {
        // The range started allocated and a gap follows: it ends before the gap.
        return EXIT_DIFF_ITERATE2;
    }
    req.bytes += len as u64;
    req.exists = true;
    0
}

/// Whether `offset..offset+bytes` starts with data, and for how many bytes that holds.
///
/// `align_start` rounds the query down to an object boundary first: librbd before 1.17
/// reported wrong offsets for unaligned starts, and QEMU works around it the same way.
pub fn block_status(
    image: &Image,
    offset: u64,
    bytes: u64,
    object_size: u64,
    align_start: bool,
) -> (bool, u64) {
    let all_data = (true, bytes);
    match image.fast_diff_usable() {
        Ok(true) => {}
        _ => return all_data,
    }
    let head = if align_start && object_size.is_power_of_two() {
        offset & (object_size - 1)
    } else {
        0
    };
    let mut req = DiffReq {
        offs: offset - head,
        bytes: 0,
        exists: false,
    };
    let api = image.api();
    // SAFETY: live image; the callback receives `req`, which outlives the call.
    let r = unsafe {
        (api.rbd_diff_iterate2)(
            image.raw(),
            std::ptr::null(),
            offset - head,
            bytes + head,
            1,
            1,
            diff_iterate_cb,
            &mut req as *mut DiffReq as *mut c_void,
        )
    };
    if r < 0 && r != EXIT_DIFF_ITERATE2 {
        return all_data;
    }
    if !req.exists && r == 0 {
        // No callback at all: the whole range is unallocated.
        req.bytes = bytes + head;
    }
    if req.bytes <= head {
        return all_data;
    }
    (req.exists, (req.bytes - head).min(bytes))
}

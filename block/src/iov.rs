//! IoVector: a scatter/gather list of memory that a request reads into or writes from.
//!
//! QEMU calls it QEMUIOVector (util/iov.c). A segment points either into a buffer the block
//! layer allocated itself (bounce buffers, tool buffers) or into foreign memory such as guest
//! RAM, so a virtio request can be served with no copy. Segments are raw pointers because the
//! memory is shared with kernel I/O (preadv, io_uring) and worker threads; what keeps it alive
//! is the list of `keepalive` owners carried along with every vector and every slice of it.

use std::alloc::{self, Layout};
use std::any::Any;
use std::sync::Arc;

use smallvec::SmallVec;

/// Alignment of buffers the block layer allocates: enough for O_DIRECT on any device.
pub const BUFFER_ALIGN: usize = 4096;

/// A zero-filled heap buffer aligned to [`BUFFER_ALIGN`] (QEMU's `qemu_blockalign`).
pub struct AlignedBuffer {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is plain owned memory; all access goes through IoVector's raw-pointer
// copies, and sharing between a worker thread and the loop thread is ordered by the request's
// submit/complete handshake, as with QEMU's bounce buffers.
unsafe impl Send for AlignedBuffer {}
// SAFETY: see above; `AlignedBuffer` exposes no `&mut` access through `&self`.
unsafe impl Sync for AlignedBuffer {}

impl AlignedBuffer {
    /// Allocates `len` zeroed bytes (at least one page, so a zero-length buffer is valid).
    pub fn new(len: usize) -> AlignedBuffer {
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size and a power-of-two alignment.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            alloc::handle_alloc_error(layout);
        }
        AlignedBuffer { ptr, len }
    }

    /// Allocates `len` bytes left as the allocator hands them out, for a buffer that a read
    /// fills whole before anything looks at it (QEMU's qemu_blockalign does not clear
    /// either): clearing megabytes only to overwrite them was a tenth of an NBD server's
    /// time serving large reads.
    fn new_for_read(len: usize) -> AlignedBuffer {
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size and a power-of-two alignment. The bytes are
        // only ever reached through raw pointers (the kernel and the drivers write them,
        // every driver fills the whole vector of a read that succeeds, file reads zero-fill
        // past the end of the file); a vector whose read failed is dropped unread.
        let ptr = unsafe { alloc::alloc(layout) };
        if ptr.is_null() {
            alloc::handle_alloc_error(layout);
        }
        AlignedBuffer { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len.max(1).next_multiple_of(BUFFER_ALIGN), BUFFER_ALIGN)
            .expect("buffer size overflows")
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout.
        unsafe { alloc::dealloc(self.ptr, Self::layout(self.len)) }
    }
}

/// The iovec array of a vector; small ones stay inline.
pub type IovecArray = SmallVec<[libc::iovec; 2]>;

#[derive(Clone, Copy)]
struct Segment {
    base: *mut u8,
    len: usize,
}

/// A scatter/gather list (QEMUIOVector). Cloning or slicing shares the same memory.
///
/// Most vectors have one or two segments and one owner, so those live inline: cloning and
/// slicing a request's vector on its way down the graph allocates nothing.
#[derive(Default)]
pub struct IoVector {
    segments: SmallVec<[Segment; 2]>,
    size: usize,
    keepalive: SmallVec<[Arc<dyn Any + Send + Sync>; 2]>,
}

impl Clone for IoVector {
    /// Every request clones its vector on the way down; the segments are plain pointers
    /// and are copied in one go rather than element by element as a derived Clone would.
    fn clone(&self) -> IoVector {
        let mut keepalive = SmallVec::new();
        for owner in &self.keepalive {
            keepalive.push(owner.clone());
        }
        IoVector {
            segments: SmallVec::from_slice(&self.segments),
            size: self.size,
            keepalive,
        }
    }
}

// SAFETY: the segments point into memory owned by `keepalive` (or, for `push_raw_parts`,
// memory the caller promised outlives the vector). The block layer hands a vector to one
// worker or to the kernel at a time, as QEMU does with its iovecs.
unsafe impl Send for IoVector {}
// SAFETY: shared references only read the segment list; data access is through raw pointers.
unsafe impl Sync for IoVector {}

impl IoVector {
    /// An empty vector, to be filled with `push_*`.
    pub fn new() -> IoVector {
        IoVector::default()
    }

    /// A vector over a freshly allocated, aligned, zero-filled buffer of `len` bytes.
    pub fn alloc(len: usize) -> IoVector {
        let buffer = Arc::new(AlignedBuffer::new(len));
        let mut v = IoVector::new();
        v.push_raw(buffer.ptr, len);
        v.keepalive.push(buffer);
        v
    }

    /// A vector over a freshly allocated, aligned buffer that is not cleared first: only
    /// for the destination of a read, whose data is used only once the read succeeded.
    pub fn alloc_for_read(len: usize) -> IoVector {
        let buffer = Arc::new(AlignedBuffer::new_for_read(len));
        let mut v = IoVector::new();
        v.push_raw(buffer.ptr, len);
        v.keepalive.push(buffer);
        v
    }

    /// A vector over a copy of `data` in an aligned buffer.
    pub fn from_slice(data: &[u8]) -> IoVector {
        let v = IoVector::alloc(data.len());
        v.copy_from_slice(0, data);
        v
    }

    /// A vector over `data` itself, which it keeps alive: a payload already received into a
    /// `Vec` goes down the graph with no second buffer and no copy (QEMU reads an NBD write's
    /// payload straight into the request's buffer).
    pub fn from_vec(mut data: Vec<u8>) -> IoVector {
        let (base, len) = (data.as_mut_ptr(), data.len());
        // Moving the Vec into its owner does not move its heap buffer, so `base` stays valid
        // for as long as the owner lives.
        let mut v = IoVector::with_owner(Arc::new(data));
        v.push_raw(base, len);
        v
    }

    /// An empty vector that keeps `owner` alive as long as it lives: the start of a vector
    /// over foreign memory (guest RAM) that `owner` holds, filled with
    /// [`IoVector::push_raw_parts`].
    pub fn with_owner(owner: Arc<dyn Any + Send + Sync>) -> IoVector {
        let mut v = IoVector::new();
        v.keepalive.push(owner);
        v
    }

    /// Appends `base..base+len` of foreign memory that an owner the vector keeps holds (see
    /// [`IoVector::with_owner`]).
    ///
    /// # Safety
    /// `base..base+len` must be valid for reads and writes for as long as the vector's owners
    /// live.
    pub unsafe fn push_raw_parts(&mut self, base: *mut u8, len: usize) {
        self.push_raw(base, len);
    }

    fn push_raw(&mut self, base: *mut u8, len: usize) {
        if len > 0 {
            self.segments.push(Segment { base, len });
            self.size += len;
        }
    }

    /// Appends the bytes `offset..offset+len` of `other` (qemu_iovec_concat).
    pub fn push_slice(&mut self, other: &IoVector, offset: usize, len: usize) {
        assert!(offset + len <= other.size, "IoVector slice out of range");
        for (base, seg_len) in other.ranges(offset, len) {
            self.push_raw(base, seg_len);
        }
        for k in &other.keepalive {
            if !self.keepalive.iter().any(|o| Arc::ptr_eq(o, k)) {
                self.keepalive.push(k.clone());
            }
        }
    }

    /// Appends all of `other`.
    pub fn push_vector(&mut self, other: &IoVector) {
        self.push_slice(other, 0, other.size);
    }

    /// A new vector over `offset..offset+len` of this one, sharing its memory.
    pub fn slice(&self, offset: usize, len: usize) -> IoVector {
        let mut v = IoVector::new();
        v.push_slice(self, offset, len);
        v
    }

    /// Total number of bytes.
    pub fn len(&self) -> usize {
        self.size
    }

    /// Whether the vector has no bytes.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Number of segments (iovec entries).
    pub fn niov(&self) -> usize {
        self.segments.len()
    }

    /// The segments as `struct iovec`s, for preadv/pwritev and io_uring.
    pub fn iovecs(&self) -> IovecArray {
        self.segments
            .iter()
            .map(|s| libc::iovec {
                iov_base: s.base.cast(),
                iov_len: s.len,
            })
            .collect()
    }

    /// Whether every segment's address and length are multiples of `align` (O_DIRECT rule).
    pub fn is_aligned(&self, align: usize) -> bool {
        self.segments
            .iter()
            .all(|s| (s.base as usize).is_multiple_of(align) && s.len.is_multiple_of(align))
    }

    /// Walks the (pointer, length) pieces covering `offset..offset+len`.
    fn ranges(
        &self,
        mut offset: usize,
        mut len: usize,
    ) -> impl Iterator<Item = (*mut u8, usize)> + '_ {
        self.segments.iter().filter_map(move |s| {
            if len == 0 {
                return None;
            }
            if offset >= s.len {
                offset -= s.len;
                return None;
            }
            let n = (s.len - offset).min(len);
            // SAFETY: offset < s.len, so the pointer stays inside the segment.
            let p = unsafe { s.base.add(offset) };
            offset = 0;
            len -= n;
            Some((p, n))
        })
    }

    fn check_range(&self, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.size),
            "IoVector access {offset}+{len} beyond {} bytes",
            self.size
        );
    }

    /// Copies `data` into the vector at `offset` (qemu_iovec_from_buf).
    pub fn copy_from_slice(&self, offset: usize, data: &[u8]) {
        self.check_range(offset, data.len());
        let mut done = 0;
        for (p, n) in self.ranges(offset, data.len()) {
            // SAFETY: `p..p+n` lies inside a live segment (check_range + ranges).
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr().add(done), p, n) };
            done += n;
        }
    }

    /// Copies bytes at `offset` out of the vector into `out` (qemu_iovec_to_buf).
    pub fn copy_to_slice(&self, offset: usize, out: &mut [u8]) {
        self.check_range(offset, out.len());
        let mut done = 0;
        for (p, n) in self.ranges(offset, out.len()) {
            // SAFETY: `p..p+n` lies inside a live segment (check_range + ranges).
            unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr().add(done), n) };
            done += n;
        }
    }

    /// Copies `len` bytes from `src` at `src_offset` into this vector at `offset`.
    pub fn copy_from(&self, offset: usize, src: &IoVector, src_offset: usize, len: usize) {
        self.check_range(offset, len);
        src.check_range(src_offset, len);
        let mut done = 0;
        for (p, n) in src.ranges(src_offset, len) {
            let mut part = 0;
            for (q, m) in self.ranges(offset + done, n) {
                // SAFETY: both ranges lie inside live segments; `copy` tolerates overlap.
                unsafe { std::ptr::copy(p.add(part), q, m) };
                part += m;
            }
            done += n;
        }
    }

    /// Sets `len` bytes at `offset` to `byte` (qemu_iovec_memset).
    pub fn fill(&self, offset: usize, len: usize, byte: u8) {
        self.check_range(offset, len);
        for (p, n) in self.ranges(offset, len) {
            // SAFETY: `p..p+n` lies inside a live segment.
            unsafe { std::ptr::write_bytes(p, byte, n) };
        }
    }

    /// Whether `len` bytes at `offset` are all zero (buffer_is_zero over the range).
    pub fn is_zero_range(&self, offset: usize, len: usize) -> bool {
        self.check_range(offset, len);
        self.ranges(offset, len).all(|(p, n)| {
            // SAFETY: `p..p+n` lies inside a live segment; read-only view for the check.
            let bytes = unsafe { std::slice::from_raw_parts(p, n) };
            buffer_is_zero(bytes)
        })
    }

    /// The segments as byte slices, to send them with no copy (a socket's writev of the
    /// request's own buffer, as QEMU's NBD server does). Only for a vector whose I/O has
    /// completed: the slices must not be read while a request still writes into the memory.
    pub fn slices(&self) -> SmallVec<[&[u8]; 2]> {
        self.ranges(0, self.size)
            .map(|(p, n)| {
                // SAFETY: `p..p+n` is a live segment, kept alive by `keepalive` for as long
                // as `self` is borrowed; no request writes it once its I/O has completed.
                unsafe { std::slice::from_raw_parts(p as *const u8, n) }
            })
            .collect()
    }

    /// Whether the whole vector is zero.
    pub fn is_zero(&self) -> bool {
        self.is_zero_range(0, self.size)
    }

    /// The offset of the first byte that differs from `other`, or None if equal
    /// (qemu_iovec_compare). Both must be the same length.
    pub fn compare(&self, other: &IoVector) -> Option<usize> {
        assert_eq!(self.size, other.size);
        let a = self.to_vec();
        let b = other.to_vec();
        a.iter().zip(&b).position(|(x, y)| x != y)
    }

    /// The contents as an owned byte vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0; self.size];
        self.copy_to_slice(0, &mut out);
        out
    }
}

impl std::fmt::Debug for IoVector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "IoVector({} bytes in {} segments)",
            self.size,
            self.segments.len()
        )
    }
}

/// Whether every byte is zero (QEMU's buffer_is_zero). Whole blocks are OR-ed together,
/// which the compiler turns into vector instructions, with an early exit per block: convert
/// asks this of every sector it copies.
fn buffer_is_zero(bytes: &[u8]) -> bool {
    const BLOCK: usize = 256;
    let mut blocks = bytes.chunks_exact(BLOCK);
    for block in &mut blocks {
        if block.iter().fold(0, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_segments() -> IoVector {
        let mut v = IoVector::new();
        v.push_vector(&IoVector::from_slice(&[1, 2, 3]));
        v.push_vector(&IoVector::from_slice(&[4, 5, 6, 7]));
        v
    }

    #[test]
    fn zero_check_finds_any_non_zero_byte() {
        let mut bytes = vec![0u8; 1000];
        assert!(buffer_is_zero(&bytes));
        for at in [0, 255, 256, 511, 767, 768, 999] {
            bytes[at] = 0x80;
            assert!(!buffer_is_zero(&bytes), "byte {at}");
            let v = IoVector::from_slice(&bytes);
            assert!(!v.is_zero_range(at & !7, 8));
            assert!(v.is_zero_range(0, at));
            bytes[at] = 0;
        }
    }

    #[test]
    fn slices_cross_segment_boundaries() {
        let v = two_segments();
        assert_eq!(v.len(), 7);
        assert_eq!(v.niov(), 2);
        assert_eq!(v.slice(2, 3).to_vec(), vec![3, 4, 5]);
    }

    #[test]
    fn writes_through_a_slice_reach_the_parent() {
        let v = two_segments();
        v.slice(1, 4).fill(1, 2, 0xee);
        assert_eq!(v.to_vec(), vec![1, 2, 0xee, 0xee, 5, 6, 7]);
    }

    #[test]
    fn copy_compare_and_zero_checks() {
        let v = two_segments();
        let w = IoVector::alloc(7);
        assert!(w.is_zero());
        w.copy_from(0, &v, 0, 7);
        assert_eq!(v.compare(&w), None);
        w.copy_from_slice(5, &[9]);
        assert_eq!(v.compare(&w), Some(5));
        assert!(!w.is_zero_range(0, 1));
    }

    #[test]
    fn allocated_buffers_are_aligned_and_survive_their_creator() {
        let slice = {
            let v = IoVector::alloc(8192);
            v.slice(4096, 4096)
        };
        assert!(slice.is_aligned(4096));
        slice.fill(0, 4096, 7);
        assert_eq!(slice.to_vec()[4095], 7);
    }

    #[test]
    #[should_panic(expected = "beyond")]
    fn out_of_range_access_panics_in_debug_contract() {
        IoVector::alloc(4).fill(2, 4, 0);
    }
}

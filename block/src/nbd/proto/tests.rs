//! Unit tests of the wire format: layouts, round trips and refusals.

use super::*;

#[test]
fn request_round_trips_in_both_forms() {
    let req = Request {
        flags: cflags::FUA,
        kind: cmd::WRITE,
        cookie: 0x0102_0304_0506_0708,
        offset: 1 << 40,
        length: 4096,
    };
    let compact = req.encode(false);
    assert_eq!(compact.len(), REQUEST_LEN);
    assert_eq!(&compact[..4], &[0x25, 0x60, 0x95, 0x13]);
    assert_eq!(Request::parse(&compact, false), Some(req));
    assert_eq!(Request::parse(&compact, true), None);
    let big = Request {
        length: 5 << 32,
        ..req
    };
    let ext = big.encode(true);
    assert_eq!(ext.len(), EXTENDED_REQUEST_LEN);
    assert_eq!(Request::parse(&ext, true), Some(big));
    assert_eq!(Request::parse(&ext, false), None);
}

#[test]
fn option_header_checks_its_magic() {
    let bytes = OptionHeader::encode(opt::GO, b"abc");
    let head: [u8; 16] = bytes[..16].try_into().unwrap();
    assert_eq!(
        OptionHeader::parse(&head),
        Some(OptionHeader {
            option: opt::GO,
            length: 3
        })
    );
    let mut bad = head;
    bad[0] ^= 1;
    assert_eq!(OptionHeader::parse(&bad), None);
}

#[test]
fn reply_headers_have_the_spec_layout() {
    let r = simple_reply(errno::EIO, 7);
    assert_eq!(
        r,
        [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 7]
    );
    let o = option_reply_header(opt::LIST, rep::ERR_UNSUP, 9);
    assert_eq!(&o[..8], &NBD_REP_MAGIC.to_be_bytes());
    assert_eq!(&o[12..16], &[0x80, 0, 0, 1]);
    let c = ChunkHeader {
        flags: NBD_REPLY_FLAG_DONE,
        kind: chunk::OFFSET_HOLE,
        cookie: 9,
        offset: 512,
        length: 12,
    };
    let compact = c.encode(false);
    assert_eq!(compact.len(), 20);
    let parsed = ChunkHeader::parse(NBD_STRUCTURED_REPLY_MAGIC, &compact[4..]).unwrap();
    assert_eq!(parsed, ChunkHeader { offset: 0, ..c });
    let ext = c.encode(true);
    assert_eq!(ext.len(), 32);
    assert_eq!(
        ChunkHeader::parse(NBD_EXTENDED_REPLY_MAGIC, &ext[4..]),
        Some(c)
    );
    assert_eq!(ChunkHeader::parse(NBD_SIMPLE_REPLY_MAGIC, &ext[4..]), None);
}

#[test]
fn reader_refuses_short_and_oversized_input() {
    let mut r = WireReader::new(&[0, 0, 0, 5, b'a', b'b']);
    assert_eq!(r.string(), None);
    let mut big = WireBuf::default();
    big.u32(NBD_MAX_STRING_SIZE as u32 + 1);
    big.bytes(&vec![b'x'; NBD_MAX_STRING_SIZE + 1]);
    assert_eq!(WireReader::new(&big.0).string(), None);
    let mut ok = WireReader::new(&[0, 0, 0, 2, b'h', b'i', 0, 1]);
    assert_eq!(ok.string(), Some("hi"));
    assert_eq!(ok.u16(), Some(1));
    assert_eq!(ok.u16(), None);
}

#[test]
fn errno_mapping_matches_qemu() {
    assert_eq!(system_errno_to_nbd(libc::EROFS), errno::EPERM);
    assert_eq!(system_errno_to_nbd(libc::EFBIG), errno::ENOSPC);
    assert_eq!(system_errno_to_nbd(libc::ENOENT), errno::EINVAL);
    assert_eq!(nbd_errno_to_system(errno::ESHUTDOWN), libc::ESHUTDOWN);
    assert_eq!(nbd_errno_to_system(4242), libc::EINVAL);
}

#[test]
fn block_status_payloads() {
    let ext = [
        Extent {
            length: 4096,
            flags: NBD_STATE_HOLE | NBD_STATE_ZERO,
        },
        Extent {
            length: 512,
            flags: 0,
        },
    ];
    let p = block_status_payload(1, &ext, false);
    assert_eq!(p.len(), 4 + 16);
    assert_eq!(&p[4..12], &[0, 0, 0x10, 0, 0, 0, 0, 3]);
    let e = block_status_payload(1, &ext, true);
    assert_eq!(e.len(), 8 + 32);
    assert_eq!(&e[4..8], &[0, 0, 0, 2]);
    let err = error_chunk_payload(errno::EIO, "bad");
    assert_eq!(err, [0, 0, 0, 5, 0, 3, b'b', b'a', b'd']);
}

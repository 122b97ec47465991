//! The read-only bochs driver: growing redolog images built here (qemu-img cannot create
//! them), of both header versions, read as their contents and as the reference qemu-img
//! reads them, the sample of qemu-iotests too, and malformed headers fail with QEMU's
//! messages.

mod common;

use common::*;

const EXTENT: usize = 32 << 10;
const EXTENTS: usize = 8;

/// A growing redolog: extents 1, 2, 4 and 7 are stored (in scrambled slot order), and in
/// each only the sectors whose bitmap bit is set; the rest must read as zeroes however
/// the slot's bytes are filled. Returns the file and the disk it holds.
fn build(version: u32) -> (Vec<u8>, Vec<u8>) {
    let sectors = EXTENT / 512;
    let bitmap_len = sectors / 8;
    let mut h = vec![0u8; 512];
    h[0..22].copy_from_slice(b"Bochs Virtual HD Image");
    h[32..39].copy_from_slice(b"Redolog");
    h[48..55].copy_from_slice(b"Growing");
    h[64..68].copy_from_slice(&version.to_le_bytes());
    h[68..72].copy_from_slice(&512u32.to_le_bytes());
    h[72..76].copy_from_slice(&(EXTENTS as u32).to_le_bytes());
    h[76..80].copy_from_slice(&(bitmap_len as u32).to_le_bytes());
    h[80..84].copy_from_slice(&(EXTENT as u32).to_le_bytes());
    let disk_size = (EXTENT * EXTENTS) as u64;
    let at = if version == 0x1_0000 { 84 } else { 88 };
    h[at..at + 8].copy_from_slice(&disk_size.to_le_bytes());
    let stored = [(1usize, 2u32), (2, 0), (4, 3), (7, 1)];
    let mut catalog = [0xffff_ffffu32; EXTENTS];
    let mut slots = vec![Vec::new(); stored.len()];
    let mut disk = vec![0u8; EXTENT * EXTENTS];
    for &(extent, slot) in &stored {
        catalog[extent] = slot;
        let mut bitmap = vec![0u8; 512];
        let mut data = vec![0u8; EXTENT];
        for s in 0..sectors {
            let fill = (extent * 31 + s) as u8 | 1;
            data[s * 512..(s + 1) * 512].fill(fill);
            if (s + extent) % 3 != 0 {
                bitmap[s / 8] |= 1 << (s % 8);
                let at = extent * EXTENT + s * 512;
                disk[at..at + 512].fill(fill);
            }
        }
        bitmap.extend_from_slice(&data);
        slots[slot as usize] = bitmap;
    }
    let mut f = h;
    f.extend(catalog.iter().flat_map(|e| e.to_le_bytes()));
    for s in slots {
        f.extend_from_slice(&s);
    }
    (f, disk)
}

#[test]
fn both_header_versions_read_as_their_contents_and_as_qemu_reads_them() {
    let _serial = setup();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    for version in [0x1_0000, 0x2_0000] {
        let (f, disk) = build(version);
        let img = write_image(&dir, &format!("v{version:x}.bochs"), &f);
        assert_eq!(first_diff(&read_like_reference(&img, "bochs"), &disk), None);
    }
}

#[test]
fn the_iotests_sample_reads_as_in_qemu() {
    let _serial = setup();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    if let Some(img) = iotests_sample("empty.bochs", dir.path()) {
        assert_eq!(read_like_reference(&img, "bochs").len(), 1_032_192);
    }
}

#[test]
fn probing_and_read_only_open() {
    let _serial = setup();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let (f, _) = build(0x2_0000);
    let probed = |buf: &[u8]| block::registry::probe_format(buf, "x").map(|c| c.format_name);
    assert_eq!(probed(&f), Some("bochs"));
    let mut other = f.clone();
    other[48..55].copy_from_slice(b"Volatil");
    assert_ne!(probed(&other), Some("bochs"));
    let img = write_image(&dir, "o.bochs", &other);
    assert_eq!(open_error(&img, "bochs"), "Image not in Bochs format");
    let img = write_image(&dir, "w.bochs", &f);
    let err = block_on(open_fmt(&img, "bochs", true))
        .map(drop)
        .expect_err("opened rw");
    assert_eq!(err.to_string(), "Image is read-only");
}

#[test]
fn malformed_headers_fail_with_qemus_messages() {
    let _serial = setup();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let (good, _) = build(0x2_0000);
    let cases: [(&str, u64, &[u8], &str); 5] = [
        ("negcat", 0x48, &[0xff; 4], "Catalog size is too large"),
        (
            "bigcat",
            0x48,
            &[0, 0, 0, 0x40],
            "Catalog size is too large",
        ),
        (
            "smallcat",
            0x58,
            &[0, 0xc0, 0x0f, 0, 0, 0, 0, 0x7f],
            "Catalog size is too small for this disk size",
        ),
        (
            "negext",
            0x50,
            &[0, 0, 0, 0x80],
            "Extent size 2147483648 is too large",
        ),
        (
            "zeroext",
            0x50,
            &[0, 0, 0, 0],
            "Extent size must be at least 512",
        ),
    ];
    for (name, at, bytes, message) in cases {
        let img = write_image(&dir, name, &good);
        poke(&img, at, bytes);
        assert_eq!(open_error(&img, "bochs"), message, "{name}");
        if let Some(err) = reference_open_error(&img, "bochs") {
            assert!(err.contains(message), "{name}: qemu-img says {err}");
        }
    }
}

#[test]
fn slots_past_the_end_read_as_qemu_reads_them_and_overflows_fail() {
    let _serial = setup();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let (f, mut disk) = build(0x2_0000);
    let img = write_image(&dir, "slot.bochs", &f);
    // Extent 1's catalog entry names a slot far past the end of the file: its bitmap
    // reads as zeroes there, so the extent does too.
    poke(&img, 512 + 4, &0xffff_fffeu32.to_le_bytes());
    disk[EXTENT..2 * EXTENT].fill(0);
    assert_eq!(first_diff(&read_like_reference(&img, "bochs"), &disk), None);
    // With a 4 GiB bitmap per slot that slot's offset does not fit in 64 bits.
    poke(&img, 76, &u32::MAX.to_le_bytes());
    block_on(async {
        let blk = open_fmt(&img, "bochs", false).await.expect("open");
        let buf = block::IoVector::alloc(512);
        let r = blk
            .co_preadv(EXTENT as u64, &buf, block::RequestFlags::empty())
            .await;
        assert_eq!(r.unwrap_err().errno(), libc::EIO);
    });
}

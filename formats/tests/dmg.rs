//! The read-only dmg driver: images built here (qemu-img cannot create dmg) with zero,
//! raw, ignored, zlib and bzip2 chunks, through an XML property list or a resource fork,
//! read as their contents and as the reference qemu-img reads them; macOS's sample from
//! qemu-iotests; and malformed trailers and tables fail with QEMU's messages.

mod common;

use std::io::Write;

use base64::Engine;
use common::*;

const UDZE: u32 = 0;
const UDRW: u32 = 1;
const UDIG: u32 = 2;
const UDZO: u32 = 0x8000_0005;
const UDBZ: u32 = 0x8000_0006;
const ULFO: u32 = 0x8000_0007;
const UDCM: u32 = 0x7fff_fffe;
const UDLE: u32 = 0xffff_ffff;

/// A chunk to build: its type, its sectors' contents, and the bytes stored for it.
struct Part {
    kind: u32,
    sectors: u64,
    stored: Vec<u8>,
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn bzip2(data: &[u8]) -> Vec<u8> {
    let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Sector contents that differ per sector and per image.
fn pattern(sectors: u64, seed: u8) -> Vec<u8> {
    (0..sectors * 512)
        .map(|i| (i / 512) as u8 ^ (i as u8).wrapping_mul(seed))
        .collect()
}

/// The chunks of the test image and the disk they describe.
fn parts(with_bzip2: bool) -> (Vec<Part>, Vec<u8>) {
    let mut disk = Vec::new();
    let mut parts = Vec::new();
    let mut add = |kind: u32, data: Vec<u8>, stored: Vec<u8>| {
        parts.push(Part {
            kind,
            sectors: data.len() as u64 / 512,
            stored,
        });
        disk.extend_from_slice(&data);
    };
    let a = pattern(300, 7);
    add(UDZO, a.clone(), zlib(&a));
    add(UDZE, vec![0; 64 * 512], Vec::new());
    let b = pattern(5, 3);
    add(UDRW, b.clone(), b);
    add(UDIG, vec![0; 2 * 512], Vec::new());
    if with_bzip2 {
        let c = pattern(200, 11);
        add(UDBZ, c.clone(), bzip2(&c));
    }
    let d = pattern(129, 5);
    add(UDZO, d.clone(), zlib(&d));
    (parts, disk)
}

/// A mish block for the chunks: its sectors start at disk sector `first_sector` and its
/// data at `data_offset` of the data fork, and chunk entries count from both; `extra`
/// entries (comments, the end marker) carry no sectors.
fn mish(parts: &[Part], first_sector: u64, data_offset: u64, extra: &[u32]) -> Vec<u8> {
    let mut m = vec![0u8; 204];
    m[0..4].copy_from_slice(b"mish");
    m[4..8].copy_from_slice(&1u32.to_be_bytes());
    let total: u64 = parts.iter().map(|p| p.sectors).sum();
    m[8..16].copy_from_slice(&first_sector.to_be_bytes());
    m[0x10..0x18].copy_from_slice(&total.to_be_bytes());
    m[0x18..0x20].copy_from_slice(&data_offset.to_be_bytes());
    let (mut sector, mut offset) = (0u64, 0u64);
    for p in parts {
        let mut e = [0u8; 40];
        e[0..4].copy_from_slice(&p.kind.to_be_bytes());
        e[8..16].copy_from_slice(&sector.to_be_bytes());
        e[16..24].copy_from_slice(&p.sectors.to_be_bytes());
        e[24..32].copy_from_slice(&offset.to_be_bytes());
        e[32..40].copy_from_slice(&(p.stored.len() as u64).to_be_bytes());
        m.extend_from_slice(&e);
        sector += p.sectors;
        offset += p.stored.len() as u64;
    }
    for &kind in extra {
        let mut e = [0u8; 40];
        e[0..4].copy_from_slice(&kind.to_be_bytes());
        e[8..16].copy_from_slice(&sector.to_be_bytes());
        m.extend_from_slice(&e);
    }
    m
}

/// The UDIF trailer.
fn koly(rsrc: (u64, u64), xml: (u64, u64), sectors: u64) -> Vec<u8> {
    let mut k = vec![0u8; 512];
    k[0..4].copy_from_slice(b"koly");
    k[4..8].copy_from_slice(&4u32.to_be_bytes());
    k[8..12].copy_from_slice(&512u32.to_be_bytes());
    for (at, v) in [
        (0x28, rsrc.0),
        (0x30, rsrc.1),
        (0xd8, xml.0),
        (0xe0, xml.1),
        (0x1ec, sectors),
    ] {
        k[at..at + 8].copy_from_slice(&v.to_be_bytes());
    }
    k
}

/// How the image lists its mish blocks.
#[derive(Clone, Copy)]
enum Table {
    Xml,
    ResourceFork,
}

/// A dmg of the parts: data fork, table, trailer; its length is deliberately odd so the
/// trailer must be searched for.
fn build(parts: &[Part], table: Table) -> Vec<u8> {
    let mut f: Vec<u8> = parts.iter().flat_map(|p| p.stored.clone()).collect();
    f.push(0xaa);
    let sectors: u64 = parts.iter().map(|p| p.sectors).sum();
    // Two partitions, as real images have: each mish block maps half of the chunks.
    let half = parts.len() / 2;
    let first_len: u64 = parts[..half].iter().map(|p| p.stored.len() as u64).sum();
    let start: u64 = parts[..half].iter().map(|p| p.sectors).sum();
    let blocks = [
        mish(&parts[..half], 0, 0, &[UDLE]),
        mish(&parts[half..], start, first_len, &[UDCM, UDLE]),
    ];
    let table_at = f.len() as u64;
    let (rsrc, xml) = match table {
        Table::Xml => {
            let mut x =
                String::from("<?xml version=\"1.0\"?>\n<plist><dict><key>blkx</key><array>\n");
            for b in &blocks {
                let enc = base64::engine::general_purpose::STANDARD.encode(b);
                x.push_str("<dict><key>Data</key><data>\n");
                for line in enc.as_bytes().chunks(52) {
                    x.push_str("\t\t\t");
                    x.push_str(std::str::from_utf8(line).unwrap());
                    x.push('\n');
                }
                x.push_str("\t\t\t</data></dict>\n");
            }
            x.push_str("</array></dict></plist>\n");
            f.extend_from_slice(x.as_bytes());
            ((0, 0), (table_at, x.len() as u64))
        }
        Table::ResourceFork => {
            // A resource that is not a mish block comes first and must be skipped.
            let mut data = Vec::new();
            for r in [vec![0x5a; 300]].iter().chain(blocks.iter()) {
                data.extend_from_slice(&(r.len() as u32).to_be_bytes());
                data.extend_from_slice(r);
            }
            let mut fork = Vec::new();
            fork.extend_from_slice(&16u32.to_be_bytes());
            fork.extend_from_slice(&(16 + data.len() as u32).to_be_bytes());
            fork.extend_from_slice(&(data.len() as u32).to_be_bytes());
            fork.extend_from_slice(&0u32.to_be_bytes());
            fork.extend_from_slice(&data);
            f.extend_from_slice(&fork);
            ((table_at, fork.len() as u64), (0, 0))
        }
    };
    f.extend_from_slice(&koly(rsrc, xml, sectors));
    f
}

#[test]
fn zlib_raw_zero_and_ignored_chunks_read_as_qemu_reads_them() {
    let _serial = setup();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let (parts, disk) = parts(false);
    for (name, table) in [("x.dmg", Table::Xml), ("r.dmg", Table::ResourceFork)] {
        let img = write_image(&dir, name, &build(&parts, table));
        assert_eq!(read_like_reference(&img, "dmg"), disk, "{name}");
    }
}

#[test]
fn bzip2_chunks_decode() {
    // Debian's qemu-img is built without its dmg-bz2 module, so only the contents can
    // say whether these read right.
    let _serial = setup();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let (parts, disk) = parts(true);
    for (name, table) in [("x.dmg", Table::Xml), ("r.dmg", Table::ResourceFork)] {
        let img = write_image(&dir, name, &build(&parts, table));
        let ours = block_on(async {
            let blk = open_fmt(&img, "dmg", false).await.expect("open");
            read_all(&blk, 200 << 10).await
        });
        assert_eq!(first_diff(&ours, &disk), None, "{name}");
    }
}

#[test]
fn the_macos_sample_reads_as_in_qemu() {
    let _serial = setup();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    if let Some(img) = iotests_sample("simple-dmg.dmg", dir.path()) {
        assert_eq!(read_like_reference(&img, "dmg").len(), 1_799_168);
    }
}

#[test]
fn probing_goes_by_the_extension_and_writes_are_refused() {
    let _serial = setup();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let (parts, _) = parts(false);
    let img = write_image(&dir, "p.dmg", &build(&parts, Table::Xml));
    let head = std::fs::read(&img).unwrap();
    let probed = |name: &str| block::registry::probe_format(&head, name).map(|c| c.format_name);
    assert_eq!(probed(&img), Some("dmg"));
    assert_ne!(probed("p.img"), Some("dmg"));
    let err = block_on(open_fmt(&img, "dmg", true))
        .map(drop)
        .expect_err("opened rw");
    assert_eq!(err.to_string(), "Image is read-only");
}

/// Our open error for an image, checked against the reference's when it is installed.
fn refused(img: &str, message: &str) {
    assert_eq!(open_error(img, "dmg"), message, "{img}");
    if let Some(err) = reference_open_error(img, "dmg") {
        assert!(err.contains(message), "{img}: qemu-img says {err}");
    }
}

#[test]
fn malformed_images_fail_cleanly() {
    let _serial = setup();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let (parts, disk) = parts(false);
    let good = build(&parts, Table::Xml);
    let k = good.len() - 512;
    // QEMU's open wraps an errno-only failure, and the tools prefix that again.
    let einval = |img: &str| format!("Could not open '{img}': Invalid argument");

    // The file's length is seen in whole sectors: only an empty file is too short.
    let img = write_image(&dir, "short.dmg", &[]);
    refused(&img, "dmg file must be at least 512 bytes long");
    let img = write_image(&dir, "sector.dmg", &good[..300]);
    refused(&img, "Could not locate UDIF trailer in dmg file");

    let mut bad = good.clone();
    bad[k..k + 4].copy_from_slice(b"kolx");
    let img = write_image(&dir, "nokoly.dmg", &bad);
    refused(&img, "Could not locate UDIF trailer in dmg file");

    // A property list that would run past the trailer, or be huge.
    let mut bad = good.clone();
    bad[k + 0xe0..k + 0xe8].copy_from_slice(&u64::MAX.to_be_bytes());
    let img = write_image(&dir, "xmllen.dmg", &bad);
    refused(&img, &einval(&img));

    // No table at all.
    let mut bad = good.clone();
    bad[k + 0xe0..k + 0xe8].copy_from_slice(&0u64.to_be_bytes());
    let img = write_image(&dir, "notable.dmg", &bad);
    refused(&img, &einval(&img));

    // A chunk claiming more than 64 MiB of sectors or of stored data.
    for (field, name) in [(16, "count.dmg"), (32, "length.dmg")] {
        let mut blocks = mish(&parts, 0, 0, &[]);
        blocks[204 + field..204 + field + 8].copy_from_slice(&(1u64 << 40).to_be_bytes());
        let mut f = vec![0u8; 4096];
        let enc = base64::engine::general_purpose::STANDARD.encode(&blocks);
        let xml = format!("<data>{enc}</data>");
        f.extend_from_slice(xml.as_bytes());
        f.extend_from_slice(&koly((0, 0), (4096, xml.len() as u64), 1 << 20));
        let img = write_image(&dir, name, &f);
        refused(&img, &einval(&img));
    }

    // A resource fork whose resource runs past its end.
    let rf = build(&parts, Table::ResourceFork);
    let rk = rf.len() - 512;
    let fork_at = u64::from_be_bytes(rf[rk + 0x28..rk + 0x30].try_into().unwrap()) as usize;
    let mut bad = rf.clone();
    bad[fork_at + 16..fork_at + 20].copy_from_slice(&u32::MAX.to_be_bytes());
    let img = write_image(&dir, "rsrc.dmg", &bad);
    refused(&img, &einval(&img));

    // A corrupt zlib chunk fails its reads, not the open; other chunks still read.
    let mut bad = good.clone();
    bad[10..20].fill(0xff);
    let img = write_image(&dir, "zlib.dmg", &bad);
    block_on(async {
        let blk = open_fmt(&img, "dmg", false).await.expect("open");
        let buf = block::IoVector::alloc(512);
        let err = blk
            .co_preadv(0, &buf, block::RequestFlags::empty())
            .await
            .unwrap_err();
        assert_eq!(err.errno(), libc::EIO);
        blk.co_preadv(300 * 512, &buf, block::RequestFlags::empty())
            .await
            .expect("zero chunk");
        assert_eq!(buf.to_vec(), &disk[300 * 512..301 * 512]);
    });
}

#[test]
fn lzfse_chunks_are_skipped_and_their_sectors_fail() {
    let _serial = setup();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let data = pattern(8, 9);
    let parts = vec![
        Part {
            kind: UDRW,
            sectors: 8,
            stored: data.clone(),
        },
        Part {
            kind: ULFO,
            sectors: 8,
            stored: vec![1; 100],
        },
    ];
    let img = write_image(&dir, "l.dmg", &build(&parts, Table::Xml));
    block_on(async {
        let blk = open_fmt(&img, "dmg", false).await.expect("open");
        let buf = block::IoVector::alloc(4096);
        blk.co_preadv(0, &buf, block::RequestFlags::empty())
            .await
            .expect("raw chunk");
        assert_eq!(buf.to_vec(), data);
        let err = blk
            .co_preadv(4096, &buf, block::RequestFlags::empty())
            .await
            .unwrap_err();
        assert_eq!(err.errno(), libc::EIO);
    });
}

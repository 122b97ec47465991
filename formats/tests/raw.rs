//! The raw format: offset/size windows, probing, and the probe guard on block 0.

use block::{AioContext, BlockBackend, IoVector, OpenFlags, Options, RequestFlags};

fn image(len: usize) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
    std::fs::write(
        f.path(),
        (0..len).map(|i| (i % 256) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    f
}

fn open(opts: &str) -> block::Result<std::rc::Rc<BlockBackend>> {
    formats::register_all();
    let options = Options::parse_keyval(opts, None).unwrap();
    AioContext::current().run_until(BlockBackend::open(None, options, OpenFlags::default()))
}

#[test]
fn an_offset_and_size_window_maps_onto_the_file() {
    let f = image(8192);
    let blk = open(&format!(
        "driver=raw,offset=1024,size=2048,file.filename={}",
        f.path().display()
    ))
    .unwrap();
    assert_eq!(blk.getlength(), 2048);
    let b = blk.clone();
    let got = AioContext::current().run_until(async move {
        let buf = IoVector::alloc(4);
        b.co_preadv(0, &buf, RequestFlags::empty()).await.unwrap();
        b.co_pwritev(2044, &IoVector::from_slice(&[9; 4]), RequestFlags::empty())
            .await
            .unwrap();
        let past = b
            .co_preadv(2048, &IoVector::alloc(1), RequestFlags::empty())
            .await;
        assert_eq!(past.unwrap_err().errno(), libc::EIO);
        buf.to_vec()
    });
    assert_eq!(got, vec![0, 1, 2, 3]); // byte 1024 of the file is 1024 % 256 = 0
    let raw = std::fs::read(f.path()).unwrap();
    assert_eq!(&raw[3068..3072], &[9; 4]);
    assert_eq!(raw[3072], (3072 % 256) as u8);
}

#[test]
fn a_window_past_the_file_end_is_refused() {
    let f = image(4096);
    let err = open(&format!(
        "driver=raw,offset=1024,size=4096,file.filename={}",
        f.path().display()
    ))
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("The sum of offset (1024) and size (4096)"),
        "{err}"
    );
}

#[test]
fn probing_picks_raw_for_unknown_content_and_remembers_it() {
    let f = image(4096);
    formats::register_all();
    let path = f.path().to_str().unwrap().to_string();
    let blk = AioContext::current()
        .run_until(BlockBackend::open(
            Some(&path),
            Options::new(),
            OpenFlags::default(),
        ))
        .unwrap();
    assert_eq!(blk.bs().format_name(), "raw");
    assert!(blk.bs().was_probed());
    drop(blk); // closing releases the image lock
    let named = open(&format!("driver=raw,file.filename={path}")).unwrap();
    assert!(!named.bs().was_probed());
}

#[test]
fn compressed_writes_are_refused_by_formats_that_cannot_compress() {
    let f = image(65536);
    let blk = open(&format!("driver=raw,file.filename={}", f.path().display())).unwrap();
    let err = AioContext::current()
        .run_until(async move {
            blk.co_pwritev(0, &IoVector::alloc(65536), RequestFlags::WRITE_COMPRESSED)
                .await
        })
        .unwrap_err();
    assert_eq!(err.errno(), libc::ENOTSUP);
    assert!(
        std::fs::read(f.path()).unwrap()[1] == 1,
        "nothing was written"
    );
}

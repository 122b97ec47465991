//! The NBD server: a client byte stream (handshake, options, then requests) fed to one
//! connection over a 1 MiB raw export. The server must answer or hang up, never panic, and
//! must not hang: a stream that ends makes it see EOF.
#![no_main]
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use block::nbd::{ExportOptions, NbdExport, NbdServer};
use block::{AioContext, BlockBackend, OpenFlags, Options};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    formats::register_all();
    let path = std::env::temp_dir().join(format!("rqemu-fuzz-nbd-{}.img", std::process::id()));
    std::fs::File::create(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let mut opts = Options::new();
    opts.set("driver", "raw");
    let ctx = AioContext::current();
    let blk = ctx
        .run_until(BlockBackend::open(
            path.to_str(),
            opts,
            OpenFlags::default(),
        ))
        .unwrap();
    let export = NbdExport::new(
        blk,
        ExportOptions {
            name: String::new(),
            description: None,
            read_only: data.first().is_some_and(|b| b & 1 == 1),
            allocation_depth: true,
            multi_conn: false,
            bitmaps: Vec::new(),
        },
    )
    .unwrap();
    let server = NbdServer::new(export, 1, Duration::from_secs(5), None);
    let (mut client, server_end) = UnixStream::pair().unwrap();
    let input = data.to_vec();
    // The client side: send the stream, then read every reply until the server hangs up.
    let peer = std::thread::spawn(move || {
        let _ = client.write_all(&input);
        let _ = client.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = client.read_to_end(&mut sink);
    });
    ctx.run_until(server.serve_client(server_end.into()));
    peer.join().unwrap();
});

//! An NBD server offering several exports (block/src/nbd/server.rs, server_negotiate.rs):
//! a client picks one by name, a name no export has is refused, a removed export is no
//! longer offered, and the server can cut the connections using an export.

mod common;

use std::path::Path;
use std::rc::Rc;

use block::nbd::server::{listen_unix, DEFAULT_HANDSHAKE_LIMIT};
use block::nbd::{ExportOptions, NbdExport, NbdServer};
use block::{
    AioContext, BlockBackend, BlockDriverState, IoVector, OpenFlags, Options, RequestFlags,
};
use common::open_mem;

fn export(size: u64, name: &str) -> Rc<NbdExport> {
    let (bs, _mem) = open_mem(&format!("size={size}"));
    let opts = ExportOptions {
        name: name.to_string(),
        ..Default::default()
    };
    NbdExport::new(BlockBackend::new(bs), opts).unwrap()
}

async fn connect(path: &Path, name: &str) -> block::Result<Rc<BlockDriverState>> {
    let mut o = Options::new();
    o.set("driver", "nbd");
    o.set("server.type", "unix");
    o.set("server.path", path.to_str().unwrap());
    o.set("export", name);
    block::bdrv_open(None, o, OpenFlags::default()).await
}

#[test]
fn clients_pick_exports_by_name_and_are_cut_with_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nbd.sock");
    let server = NbdServer::without_exports(0, DEFAULT_HANDSHAKE_LIMIT, None);
    server.add_export(export(65536, "a")).unwrap();
    server.add_export(export(131072, "b")).unwrap();
    let dup = server.add_export(export(512, "a")).unwrap_err();
    assert_eq!(dup.to_string(), "NBD server already has export named 'a'");
    let ctx = AioContext::current();
    let listener = listen_unix(&path).unwrap();
    let serving = server.clone();
    let _accept = ctx.spawn(async move {
        let _ = serving.serve(listener).await;
    });
    ctx.run_until(async {
        let a = connect(&path, "a").await.unwrap();
        let b = connect(&path, "b").await.unwrap();
        assert_eq!(a.getlength(), 65536);
        assert_eq!(b.getlength(), 131072);
        assert!(connect(&path, "c").await.is_err());
        assert!(server.remove_export("a").is_some());
        assert!(connect(&path, "a").await.is_err());
        // The connection already using "a" keeps it until it is cut.
        let (blk_a, blk_b) = (BlockBackend::new(a), BlockBackend::new(b));
        let buf = IoVector::alloc(512);
        blk_a
            .co_preadv(0, &buf, RequestFlags::empty())
            .await
            .unwrap();
        let exp_b = server.find_export("b").unwrap();
        assert_eq!(exp_b.clients(), 1);
        server.close_clients(Some(&exp_b));
        assert!(blk_b
            .co_preadv(0, &buf, RequestFlags::empty())
            .await
            .is_err());
        blk_a
            .co_preadv(0, &buf, RequestFlags::empty())
            .await
            .unwrap();
    });
}

//! An NBD export: a BlockBackend offered under a name, with the facts the handshake
//! advertises (QEMU's NBDExport in nbd/server.c, made by nbd_export_create).

use std::cell::Cell;
use std::rc::Rc;

use super::meta_context::MAX_EXPORT_BITMAPS;
use super::proto::{tflags, NBD_MAX_BUFFER_SIZE};
use crate::backend::BlockBackend;
use crate::dirty_bitmap::{BdrvDirtyBitmap, BitmapCheck};
use crate::error::{Error, Result};
use crate::jobs::filter_or_cow;

/// How an export is offered (the knobs of qemu-nbd's command line that reach the server).
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    /// The export's name (`-x`; "" is the default export).
    pub name: String,
    /// A description shown by NBD_OPT_LIST and NBD_INFO_DESCRIPTION (`-D`).
    pub description: Option<String>,
    /// Refuse writes (`-r`).
    pub read_only: bool,
    /// Offer the `qemu:allocation-depth` metadata context (`-A`).
    pub allocation_depth: bool,
    /// Tell clients a flush on one connection covers all (NBD_FLAG_CAN_MULTI_CONN); qemu-nbd
    /// sets it when more than one client may connect.
    pub multi_conn: bool,
    /// Dirty bitmaps offered as `qemu:dirty-bitmap:NAME` contexts (`-B`).
    pub bitmaps: Vec<String>,
}

/// One export of a server.
pub struct NbdExport {
    blk: Rc<BlockBackend>,
    opts: ExportOptions,
    /// The `-B` bitmaps by name, marked busy while exported.
    bitmaps: Vec<(String, Rc<BdrvDirtyBitmap>)>,
    /// Connections in their transmission phase on this export (the clients holding a
    /// reference to QEMU's NBDExport).
    clients: Cell<usize>,
}

impl NbdExport {
    /// Offers `blk` as described by `opts`. Each bitmap is looked for on the node and down
    /// its chain of filters and backing files, and refused when busy, inconsistent, or
    /// still recording while the export is read-only (nbd_export_create).
    pub fn new(blk: Rc<BlockBackend>, opts: ExportOptions) -> Result<Rc<NbdExport>> {
        if opts.bitmaps.len() > MAX_EXPORT_BITMAPS {
            return Err(Error::invalid(format!(
                "Exporting more than {MAX_EXPORT_BITMAPS} bitmaps is not supported"
            )));
        }
        let mut bitmaps = Vec::new();
        for name in &opts.bitmaps {
            let mut node = Some(blk.bs().clone());
            let mut found = None;
            while let (Some(bs), None) = (node.clone(), &found) {
                found = bs.find_dirty_bitmap(name).map(|bm| (bs.clone(), bm));
                node = filter_or_cow(&bs);
            }
            let Some((bs, bm)) = found else {
                return Err(Error::new(
                    libc::ENOENT,
                    format!("Bitmap '{name}' is not found"),
                ));
            };
            bm.check(BitmapCheck::ALLOW_RO)?;
            if opts.read_only && !bs.is_read_only() && bm.enabled() {
                return Err(Error::invalid(format!(
                    "Enabled bitmap '{name}' incompatible with readonly export"
                )));
            }
            bitmaps.push((name.clone(), bm));
        }
        // Marked in a loop of its own, so that a failure above leaves nothing to undo.
        for (_, bm) in &bitmaps {
            bm.set_busy(true);
        }
        Ok(Rc::new(NbdExport {
            blk,
            opts,
            bitmaps,
            clients: Cell::new(0),
        }))
    }

    /// The exported dirty bitmaps with their names, in context-id order.
    pub fn bitmaps(&self) -> &[(String, Rc<BdrvDirtyBitmap>)] {
        &self.bitmaps
    }

    /// The backend requests go to.
    pub fn blk(&self) -> &Rc<BlockBackend> {
        &self.blk
    }

    /// Counts a client that starts (`true`) or stops (`false`) using the export.
    pub(crate) fn client_connected(&self, connected: bool) {
        let n = self.clients.get();
        self.clients.set(if connected { n + 1 } else { n - 1 });
    }

    /// Connections using the export now.
    pub fn clients(&self) -> usize {
        self.clients.get()
    }

    /// The export's name.
    pub fn name(&self) -> &str {
        &self.opts.name
    }

    /// The export's description, if it has one.
    pub fn description(&self) -> Option<&str> {
        self.opts.description.as_deref()
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.opts.read_only
    }

    /// Whether the qemu:allocation-depth context is offered.
    pub fn allocation_depth(&self) -> bool {
        self.opts.allocation_depth
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.blk.getlength()
    }

    /// The transmission flags sent with the size: what the export supports (with
    /// `extended` headers, a block-status request may also name its contexts).
    pub fn transmission_flags(&self, extended: bool) -> u16 {
        let mut flags = tflags::HAS_FLAGS
            | tflags::SEND_FLUSH
            | tflags::SEND_FUA
            | tflags::SEND_DF
            | tflags::SEND_CACHE;
        if extended {
            flags |= tflags::BLOCK_STAT_PAYLOAD;
        }
        if self.opts.read_only {
            flags |= tflags::READ_ONLY;
        } else {
            flags |= tflags::SEND_TRIM | tflags::SEND_WRITE_ZEROES | tflags::SEND_FAST_ZERO;
        }
        // Every connection shares this one backend on one thread, so a flush flushes what
        // every connection wrote; as QEMU, it is advertised when several may connect.
        if self.opts.multi_conn {
            flags |= tflags::CAN_MULTI_CONN;
        }
        flags
    }

    /// Minimum, preferred and maximum block sizes (NBD_INFO_BLOCK_SIZE). The minimum is
    /// the image's request alignment for a client that will honour it (one that asked for
    /// block sizes, or NBD_OPT_INFO, which only looks); 1 otherwise, as older clients send
    /// any length and the block layer does read-modify-write for them.
    pub fn block_sizes(&self, honoured: bool) -> [u32; 3] {
        let limits = self.blk.bs().limits();
        let min = if honoured {
            limits.request_alignment.max(1)
        } else {
            1
        };
        let max = if limits.max_transfer == 0 {
            NBD_MAX_BUFFER_SIZE
        } else {
            limits.max_transfer.min(NBD_MAX_BUFFER_SIZE as u64) as u32
        };
        [min, 4096.max(min).min(max), max]
    }
}

impl Drop for NbdExport {
    /// Releases the exported bitmaps (nbd_export_delete).
    fn drop(&mut self) {
        for (_, bm) in &self.bitmaps {
            bm.set_busy(false);
        }
    }
}

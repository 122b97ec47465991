//! Snapshot mode (`-s`, `snapshot=on`): writes go to a throw-away qcow2 overlay.
//!
//! QEMU's block.c bdrv_append_temp_snapshot. The image is opened read-only; a temporary qcow2
//! file as large as the image is created, opened with no backing file of its own, and the image
//! node is attached beneath it as its backing child. Reads of anything not yet written fall
//! through to the image; writes stay in the overlay, whose file is unlinked at once so nothing
//! remains when the process ends.

use std::ffi::CString;
use std::rc::Rc;

use super::open_node;
use crate::error::{Error, Result};
use crate::node::{BlockDriverState, OpenFlags};
use crate::options::Options;
use crate::registry::find_driver;

/// Puts a temporary qcow2 overlay on top of `bs` and returns the overlay.
pub(super) async fn bdrv_append_temp_snapshot(
    bs: Rc<BlockDriverState>,
    flags: OpenFlags,
) -> Result<Rc<BlockDriverState>> {
    let qcow2 = find_driver("qcow2").and_then(|c| c.create.map(|create| (c, create)));
    let Some((_, create)) = qcow2 else {
        return Err(Error::not_supported(
            "snapshot mode needs the qcow2 format driver, which is not available",
        ));
    };
    let path = make_temp_file()?;
    let mut create_opts = Options::new();
    create_opts.set("size", bs.getlength().to_string());
    let created = create(&path, &mut create_opts).await;
    let overlay = match created {
        Ok(()) => {
            let mut open_opts = Options::new();
            open_opts.set("driver", "qcow2");
            open_opts.set("file.driver", "file");
            open_opts.set("file.filename", path.clone());
            open_opts.set("backing", "");
            let overlay_flags = OpenFlags {
                read_only: false,
                force_share: false,
                ..flags
            };
            open_node(None, open_opts, overlay_flags, false).await
        }
        Err(e) => Err(e),
    };
    // The open file keeps the overlay alive; the name is not needed any more.
    let _ = std::fs::remove_file(&path);
    let overlay = overlay.map_err(|e| e.context("Could not create temporary overlay: "))?;
    overlay.attach_child("backing", bs);
    Ok(overlay)
}

/// Creates an empty file with a unique name in $TMPDIR or /var/tmp (get_tmp_filename).
fn make_temp_file() -> Result<String> {
    let dir = std::env::var("TMPDIR").unwrap_or_else(|_| "/var/tmp".to_string());
    let template = CString::new(format!("{dir}/vl.XXXXXX"))
        .map_err(|_| Error::invalid("TMPDIR contains a NUL byte"))?;
    let mut bytes = template.into_bytes_with_nul();
    // SAFETY: mkstemp rewrites the XXXXXX of a NUL-terminated buffer we own.
    let fd = unsafe { libc::mkstemp(bytes.as_mut_ptr().cast()) };
    if fd < 0 {
        return Err(Error::with_errno_message(
            Error::last_os_error().errno(),
            "Could not get temporary filename",
        ));
    }
    // SAFETY: closing the descriptor mkstemp just returned.
    unsafe { libc::close(fd) };
    bytes.pop();
    String::from_utf8(bytes).map_err(|_| Error::invalid("TMPDIR is not valid UTF-8"))
}

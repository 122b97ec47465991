//! `-s` / `open -s`: open the image under a temporary qcow2 overlay, so that writes never
//! reach it (QEMU's BDRV_O_SNAPSHOT, bdrv_append_temp_snapshot in block.c).
//!
//! The overlay is a qcow2 file in the temporary directory whose backing file is the image; it
//! is unlinked as soon as it is open, so it disappears with the process. Without a qcow2
//! driver registered there is no way to build the overlay, and `-s` fails saying so.

use std::rc::Rc;

use block::driver::find_driver;
use block::{bdrv_open, BlockBackend, Error, OpenFlags, Options, Result};

/// How the overlay refers to the image: its absolute path, or a `json:` description when the
/// image was given as options.
fn backing_reference(name: Option<&str>, opts: &Options) -> Result<String> {
    let plain = opts.iter().all(|(k, _)| k == "driver");
    match name {
        Some(n) if plain && !n.starts_with("json:") && !n.contains(':') => {
            let abs = std::path::absolute(n).map_err(Error::from)?;
            Ok(abs.to_string_lossy().into_owned())
        }
        _ => {
            let mut all = match name {
                Some(n) if n.starts_with("json:") => Options::parse_json_filename(n)?,
                Some(n) => {
                    let mut o = Options::new();
                    o.set("file.filename", n);
                    o
                }
                None => Options::new(),
            };
            for (k, v) in opts.iter() {
                all.set(k, v);
            }
            Ok(format!("json:{}", all.to_json()))
        }
    }
}

/// A fresh, empty temporary file name (get_tmp_filename: $TMPDIR or /var/tmp, "vl.XXXXXX").
fn temp_file() -> Result<String> {
    let dir = std::env::var("TMPDIR").unwrap_or_else(|_| "/var/tmp".to_string());
    let mut template = format!("{dir}/vl.XXXXXX\0").into_bytes();
    // SAFETY: `template` is a writable NUL-terminated buffer that mkstemp fills in place.
    let fd = unsafe { libc::mkstemp(template.as_mut_ptr().cast()) };
    if fd < 0 {
        return Err(Error::last_os_error().context("Could not get temporary filename: "));
    }
    // SAFETY: `fd` was just returned by mkstemp and is owned here.
    unsafe { libc::close(fd) };
    template.pop();
    String::from_utf8(template).map_err(|_| Error::invalid("temporary path is not UTF-8"))
}

/// Opens `name`/`opts` read-only as the backing file of a new temporary qcow2 overlay and
/// returns a backend on the overlay.
pub async fn open_with_temp_overlay(
    name: Option<&str>,
    opts: Options,
    flags: OpenFlags,
) -> Result<Rc<BlockBackend>> {
    let qcow2 = find_driver("qcow2").ok_or_else(|| {
        Error::not_supported(
            "snapshot mode (-s) needs a temporary qcow2 overlay, and rqemu has no qcow2 driver yet",
        )
    })?;
    let create = qcow2
        .create
        .ok_or_else(|| Error::not_supported("the qcow2 driver cannot create images"))?;
    let base_flags = OpenFlags {
        read_only: true,
        ..flags
    };
    let base = bdrv_open(name, opts.clone(), base_flags).await?;
    let size = base.getlength();
    let format = base.format_name();
    BlockBackend::new(base).close().await?;

    let overlay = temp_file()?;
    let mut create_opts = Options::new();
    create_opts.set("size", size.to_string());
    create_opts.set("backing_file", backing_reference(name, &opts)?);
    create_opts.set("backing_fmt", format);
    let opened = async {
        create(&overlay, &mut create_opts).await?;
        let mut overlay_opts = Options::new();
        overlay_opts.set("driver", "qcow2");
        BlockBackend::open(Some(&overlay), overlay_opts, flags).await
    }
    .await;
    // The open overlay keeps its descriptor; the name is no longer needed.
    let _ = std::fs::remove_file(&overlay);
    opened
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backing_reference_is_absolute_or_json() {
        let plain = backing_reference(Some("/x/a.img"), &Options::new()).unwrap();
        assert_eq!(plain, "/x/a.img");
        let mut opts = Options::new();
        opts.set("driver", "raw");
        opts.set("size", "4096");
        let json = backing_reference(Some("/x/a.img"), &opts).unwrap();
        let parsed = Options::parse_json_filename(&json).unwrap();
        assert_eq!(parsed.get("file.filename"), Some("/x/a.img"));
        assert_eq!(parsed.get("size"), Some("4096"));
    }

    #[test]
    fn snapshot_without_qcow2_names_the_missing_driver() {
        if find_driver("qcow2").is_some() {
            return;
        }
        let ctx = block::AioContext::current();
        let err = ctx
            .run_until(open_with_temp_overlay(
                Some("/nonexistent"),
                Options::new(),
                OpenFlags::default(),
            ))
            .err()
            .expect("no qcow2 driver: -s must fail");
        assert!(err.to_string().contains("qcow2"), "{err}");
    }
}

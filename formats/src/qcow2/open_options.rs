//! The checks and runtime options of opening a qcow2 image that are not about its metadata:
//! features this driver refuses, lazy refcounts, and the tuning options QEMU accepts
//! (the option handling of qcow2_update_options and qcow2_do_open in block/qcow2.c).

use block::{Error, Options, Result};

use super::header::{self, Header};

/// Refuses what this driver does not implement, naming it.
pub(super) fn refuse_unimplemented(h: &Header) -> Result<()> {
    h.check_incompatible()?;
    if h.crypt_method != 0 {
        return Err(Error::not_supported(
            "qcow2: encrypted images (AES or LUKS) are not supported by rqemu",
        ));
    }
    Ok(())
}

/// Whether refcount updates may be deferred behind the dirty bit: the `lazy-refcounts`
/// option, by default the header's compatible bit (QCOW2_OPT_LAZY_REFCOUNTS).
pub(super) fn take_lazy_refcounts(options: &mut Options, h: &Header) -> Result<bool> {
    let lazy = options
        .take_bool("lazy-refcounts")?
        .unwrap_or(h.compatible_features & header::COMPAT_LAZY_REFCOUNTS != 0);
    if lazy && h.version < 3 {
        return Err(Error::invalid(
            "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level",
        ));
    }
    Ok(lazy)
}

/// Takes the other qcow2 runtime options QEMU accepts (discard and overlap-check policies,
/// which this driver fixes at QEMU's defaults).
pub(super) fn take_runtime_options(options: &mut Options) -> Result<()> {
    for key in [
        "l2-cache-size",
        "refcount-cache-size",
        "cache-size",
        "l2-cache-entry-size",
    ] {
        options.take_size(key)?;
    }
    options.take_u64("cache-clean-interval")?;
    for key in [
        "pass-discard-request",
        "pass-discard-snapshot",
        "pass-discard-other",
        "discard-no-unref",
    ] {
        options.take_bool(key)?;
    }
    for key in ["overlap-check", "overlap-check.template"] {
        options.take(key);
    }
    Ok(())
}

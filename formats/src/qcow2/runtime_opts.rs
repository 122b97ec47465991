//! The qcow2 runtime options, read at open and at each reopen: the cache sizes, the cache
//! clean interval, and the discard and overlap-check policies (QEMU's read_cache_sizes,
//! qcow2_update_options_prepare and qcow2_join_options in block/qcow2.c).
//!
//! The discard and overlap-check policies are checked as QEMU checks them, but this driver
//! keeps QEMU's defaults whatever they say: it always runs its fixed set of overlap checks.

use block::{Error, Options, Result};

use super::header::Header;

/// Cache sizes a user asked for (`cache-size`, `l2-cache-size`, `refcount-cache-size`),
/// in tables; None leaves the driver's default.
#[derive(Clone, Copy, Debug, Default)]
pub struct CacheSizes {
    /// L2 tables.
    pub l2_tables: Option<usize>,
    /// Refcount blocks.
    pub refblocks: Option<usize>,
}

/// QEMU's default ceiling of the L2 cache (DEFAULT_L2_CACHE_MAX_SIZE on Linux).
const DEFAULT_L2_CACHE_MAX: u64 = 32 << 20;

/// The options a reopen may leave out (qcow2's mutable_opts).
pub(super) const MUTABLE_OPTS: &[&str] = &[
    "lazy-refcounts",
    "l2-cache-size",
    "l2-cache-entry-size",
    "refcount-cache-size",
    "cache-size",
    "cache-clean-interval",
    "pass-discard-request",
    "pass-discard-snapshot",
    "pass-discard-other",
    "discard-no-unref",
    "overlap-check",
    "overlap-check.template",
    "overlap-check.main-header",
    "overlap-check.active-l1",
    "overlap-check.active-l2",
    "overlap-check.refcount-table",
    "overlap-check.refcount-block",
    "overlap-check.snapshot-table",
    "overlap-check.inactive-l1",
    "overlap-check.inactive-l2",
    "overlap-check.bitmap-directory",
];

/// The structures the overlap check can guard, one boolean option each
/// (overlap_bool_option_names): the last nine of [`MUTABLE_OPTS`].
const OVERLAP_CHECKS: &[&str] = MUTABLE_OPTS.split_at(MUTABLE_OPTS.len() - 9).1;

/// Reads and checks the cache options with QEMU's rules and messages (read_cache_sizes and
/// the size limits of qcow2_update_options_prepare), and the cache clean interval.
pub fn take_cache_options(options: &mut Options, h: &Header) -> Result<CacheSizes> {
    let cluster_size = h.cluster_size();
    let combined = options.take_size("cache-size")?;
    let l2 = options.take_size("l2-cache-size")?;
    let refcount = options.take_size("refcount-cache-size")?;
    let entry = options.take_size("l2-cache-entry-size")?;
    let clean_interval = options.take("cache-clean-interval");
    if combined.is_some() && l2.is_some() && refcount.is_some() {
        return Err(Error::invalid(
            "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time",
        ));
    }
    if let Some(c) = combined {
        if l2.is_some_and(|l| l > c) {
            return Err(Error::invalid("l2-cache-size may not exceed cache-size"));
        }
        if refcount.is_some_and(|r| r > c) {
            return Err(Error::invalid(
                "refcount-cache-size may not exceed cache-size",
            ));
        }
    }
    let (l2_bytes, refcount_bytes) = effective_sizes(h, combined, l2, refcount);
    let max_l2 = max_l2_cache(h);
    let entry_size = match entry {
        Some(e) => e,
        // A cache too small for the whole disk gets small entries (QEMU's choice).
        None if l2_bytes < max_l2 => cluster_size.min(4096),
        None => cluster_size,
    };
    if !entry_size.is_power_of_two() || entry_size < 512 || entry_size > cluster_size {
        return Err(Error::invalid(format!(
            "L2 cache entry size must be a power of two between 512 and the cluster size ({cluster_size})"
        )));
    }
    if l2_bytes / entry_size > i32::MAX as u64 {
        return Err(Error::invalid("L2 cache size too big"));
    }
    if refcount_bytes / cluster_size > i32::MAX as u64 {
        return Err(Error::invalid("Refcount cache size too big"));
    }
    if let Some(v) = clean_interval {
        if parse_number(&v).ok_or_else(|| {
            Error::invalid(format!(
                "Parameter 'cache-clean-interval' expects a number, got '{v}'"
            ))
        })? > u32::MAX as u64
        {
            return Err(Error::invalid("Cache clean interval too big"));
        }
    }
    let tables = |bytes: u64| Some((bytes / cluster_size).clamp(2, 1 << 16) as usize);
    let (l2, refcount) = match (combined, l2, refcount) {
        (Some(c), Some(l), None) => (Some(l), Some(c - l)),
        (Some(c), None, Some(r)) => (Some(c - r), Some(r)),
        (Some(c), None, None) => (Some(c - c / 4), Some(c / 4)),
        (_, l, r) => (l, r),
    };
    Ok(CacheSizes {
        l2_tables: l2.and_then(tables),
        refblocks: refcount.and_then(tables),
    })
}

/// The L2 cache that covers the whole disk, in bytes of whole tables.
fn max_l2_cache(h: &Header) -> u64 {
    let cs = h.cluster_size();
    let entry = if h.extended_l2() { 16 } else { 8 };
    (h.size.div_ceil(cs) * entry).next_multiple_of(cs)
}

/// The L2 and refcount cache sizes in bytes QEMU derives from the options given.
fn effective_sizes(
    h: &Header,
    combined: Option<u64>,
    l2: Option<u64>,
    refcount: Option<u64>,
) -> (u64, u64) {
    let max_l2 = max_l2_cache(h);
    let min_refcount = 4 * h.cluster_size();
    let l2_bytes = max_l2.min(l2.unwrap_or(DEFAULT_L2_CACHE_MAX));
    let refcount_bytes = refcount.unwrap_or(0);
    match (combined, l2, refcount) {
        (Some(c), Some(_), _) => (l2_bytes, c - l2_bytes.min(c)),
        (Some(c), None, Some(r)) => (c - r, r),
        (Some(c), None, None) if c >= max_l2 + min_refcount => (max_l2, c - max_l2),
        (Some(c), None, None) => (c - c.min(min_refcount), c.min(min_refcount)),
        (None, _, _) => (l2_bytes, refcount_bytes),
    }
}

/// An unsigned number as QEMU's option parser reads it: a negative one wraps around.
fn parse_number(v: &str) -> Option<u64> {
    match v.strip_prefix('-') {
        Some(n) => block::options::parse_u64(n).map(|n| n.wrapping_neg()),
        None => block::options::parse_u64(v),
    }
}

/// Takes the discard and overlap-check policies, with QEMU's checks and messages.
pub fn take_policies(options: &mut Options) -> Result<()> {
    for key in [
        "pass-discard-request",
        "pass-discard-snapshot",
        "pass-discard-other",
        "discard-no-unref",
    ] {
        options.take_bool(key)?;
    }
    let check = options.take("overlap-check");
    let template = options.take("overlap-check.template");
    if let (Some(c), Some(t)) = (&check, &template) {
        if c != t {
            return Err(Error::invalid(format!(
                "Conflicting values for qcow2 options 'overlap-check' ('{c}') and 'overlap-check.template' ('{t}')"
            )));
        }
    }
    let mode = check.or(template).unwrap_or_else(|| "cached".into());
    if !["none", "constant", "cached", "all"].contains(&mode.as_str()) {
        return Err(Error::invalid(format!(
            "Unsupported value '{mode}' for qcow2 option 'overlap-check'. Allowed are any of the following: none, constant, cached, all"
        )));
    }
    for key in OVERLAP_CHECKS {
        options.take_bool(key)?;
    }
    Ok(())
}

/// Merges a node's old explicit options into a reopen's new ones (qcow2_join_options): a
/// new overlap-check policy replaces every old overlap option, and a new total cache size
/// the old partial ones.
pub fn join_options(options: &mut Options, old: &Options) {
    let mut old = old.clone();
    if options.contains("overlap-check") || options.contains("overlap-check.template") {
        old.take("overlap-check");
        old.extract_prefix("overlap-check");
    }
    let new_total = options.contains("cache-size");
    if new_total {
        old.take("l2-cache-size");
        old.take("refcount-cache-size");
    }
    for (k, v) in old.iter() {
        options.set_default(k, v);
    }
    // QEMU drops an old total size as soon as any cache size is set after the merge
    // (its test is "any", though its comment says "all").
    let any_cache_size = ["cache-size", "l2-cache-size", "refcount-cache-size"]
        .iter()
        .any(|k| options.contains(k));
    if any_cache_size && !new_total {
        options.take("cache-size");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(text: &str) -> Options {
        Options::parse_keyval(text, None).unwrap()
    }

    #[test]
    fn a_new_partial_cache_size_drops_the_old_total() {
        let mut new = opts("l2-cache-size=512k");
        join_options(&mut new, &opts("cache-size=1M"));
        assert_eq!(new.get("cache-size"), None);
        assert_eq!(new.get("l2-cache-size"), Some("512k"));
    }

    #[test]
    fn a_new_overlap_policy_replaces_the_old_options() {
        let mut new = opts("overlap-check=none");
        join_options(
            &mut new,
            &opts("overlap-check.template=all,overlap-check.active-l1=on"),
        );
        assert_eq!(new.get("overlap-check.template"), None);
        assert_eq!(new.get("overlap-check.active-l1"), None);
        let mut new = opts("overlap-check.active-l2=off");
        join_options(&mut new, &opts("overlap-check=all"));
        assert_eq!(new.get("overlap-check"), Some("all"));
    }

    #[test]
    fn policies_are_checked() {
        let err = take_policies(&mut opts("overlap-check=blubb")).unwrap_err();
        assert!(
            err.to_string().contains("Unsupported value 'blubb'"),
            "{err}"
        );
        let err =
            take_policies(&mut opts("overlap-check=none,overlap-check.template=all")).unwrap_err();
        assert!(err.to_string().contains("Conflicting values"), "{err}");
        take_policies(&mut opts("overlap-check.inactive-l2=on")).unwrap();
    }

    #[test]
    fn oversized_caches_and_intervals_are_refused() {
        let h = Header::new(3, 16, 64 << 20);
        let err = take_cache_options(&mut opts("refcount-cache-size=256T"), &h).unwrap_err();
        assert!(
            err.to_string().contains("Refcount cache size too big"),
            "{err}"
        );
        let err = take_cache_options(&mut opts("cache-clean-interval=-1"), &h).unwrap_err();
        assert!(
            err.to_string().contains("Cache clean interval too big"),
            "{err}"
        );
        let big = Header::new(3, 18, 32 << 50);
        let err = take_cache_options(&mut opts("l2-cache-entry-size=512,l2-cache-size=1T"), &big)
            .unwrap_err();
        assert!(err.to_string().contains("L2 cache size too big"), "{err}");
    }
}

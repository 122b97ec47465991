//! The `iothread` object: a named event-loop thread that devices and block nodes can be
//! given to, instead of the main loop (QEMU's iothread.c and its properties).
//!
//! What rqemu keeps of an iothread is its identity: the AioContext a node belongs to
//! (`crate::graph::aio_context`) is the main loop's or an iothread's, and moving graphs
//! between them follows QEMU's rules and refusals. Its requests are still served by the
//! main loop's thread; a thread of its own per iothread is not built yet. The tuning
//! properties are checked and kept, as QEMU keeps them for its loop.

use super::{check_unused, UserObject};
use crate::error::{Error, Result};
use crate::options::Options;

/// An iothread's settings (IOThread's properties).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IoThread {
    /// `poll-max-ns`: how long the loop busy-polls before sleeping (0: never).
    pub poll_max_ns: Option<u64>,
    /// `poll-grow`, `poll-shrink`: how the polling time adapts.
    pub poll_grow: Option<u64>,
    /// See `poll_grow`.
    pub poll_shrink: Option<u64>,
    /// `aio-max-batch`: requests submitted to the kernel at once.
    pub aio_max_batch: Option<u64>,
}

impl IoThread {
    /// Builds an iothread from its properties (iothread_complete's checks).
    pub fn create(opts: &mut Options) -> Result<UserObject> {
        let mut take = |key: &str| -> Result<Option<u64>> {
            let v = opts.take_u64(key)?;
            if v.is_some_and(|v| v > i64::MAX as u64) {
                return Err(Error::invalid(format!(
                    "Parameter '{key}' expects a value in range [0, {}]",
                    i64::MAX
                )));
            }
            Ok(v)
        };
        let thread = IoThread {
            poll_max_ns: take("poll-max-ns")?,
            poll_grow: take("poll-grow")?,
            poll_shrink: take("poll-shrink")?,
            aio_max_batch: take("aio-max-batch")?,
        };
        // The thread pool's bounds belong to the event loop base class (EventLoopBase).
        for key in ["thread-pool-min", "thread-pool-max"] {
            opts.take_u64(key)?;
        }
        check_unused(opts)?;
        Ok(UserObject::IoThread(thread))
    }
}

/// Whether `id` names an iothread object (what a device's `iothread=` link resolves).
pub fn exists(id: &str) -> bool {
    super::lookup(id).is_some_and(|o| matches!(*o, UserObject::IoThread(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_are_checked_and_unknown_ones_refused() {
        let mut o = Options::parse_keyval("poll-max-ns=32768,poll-grow=2", None).unwrap();
        let Ok(UserObject::IoThread(t)) = IoThread::create(&mut o) else {
            panic!("not an iothread")
        };
        assert_eq!(t.poll_max_ns, Some(32768));
        assert_eq!(t.poll_grow, Some(2));
        let mut o = Options::parse_keyval("bogus=1", None).unwrap();
        assert!(IoThread::create(&mut o).is_err());
        let mut o = Options::parse_keyval("poll-max-ns=x", None).unwrap();
        assert!(IoThread::create(&mut o).is_err());
    }

    #[test]
    fn an_added_iothread_is_found_by_id() {
        crate::objects::user_creatable_add_from_str("iothread,id=iothread-unit-test").unwrap();
        assert!(exists("iothread-unit-test"));
        assert!(!exists("no-such-iothread"));
    }
}

//! Throttle groups: the limits one `throttle-group` object sets, shared by every throttle
//! node that names it, and the wait a request makes before it may go on (QEMU's
//! block/throttle-groups.c, throttle_group_co_io_limits_intercept).
//!
//! The object holds the configuration (it is created on the command line or by
//! object-add); the buckets' state lives on the main loop, created from it the first time
//! a node uses the group.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use super::clock;
use super::ThrottleConfig;
use crate::error::{Error, Result};

/// A group's live buckets (ThrottleGroup).
pub struct ThrottleGroup {
    name: String,
    state: RefCell<ThrottleConfig>,
}

thread_local! {
    static GROUPS: RefCell<BTreeMap<String, Rc<ThrottleGroup>>> = const { RefCell::new(BTreeMap::new()) };
}

impl ThrottleGroup {
    /// The group `name` (throttle_group_register_tgm); the first use builds its buckets
    /// from `config`, the limits of the `throttle-group` object of that name.
    pub fn get(
        name: &str,
        config: impl FnOnce() -> Option<ThrottleConfig>,
    ) -> Result<Rc<ThrottleGroup>> {
        if let Some(g) = GROUPS.with(|g| g.borrow().get(name).cloned()) {
            return Ok(g);
        }
        let cfg = config()
            .ok_or_else(|| Error::invalid(format!("Throttle group '{name}' does not exist")))?;
        let group = Rc::new(ThrottleGroup {
            name: name.to_string(),
            state: RefCell::new(cfg),
        });
        GROUPS.with(|g| g.borrow_mut().insert(name.to_string(), group.clone()));
        Ok(group)
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until the limits let a request of `bytes` through, then counts it; waits not
    /// at all while `unthrottled` says so (a drained section lifts the limits).
    pub async fn co_io_limits_intercept(
        &self,
        is_write: bool,
        bytes: u64,
        unthrottled: impl Fn() -> bool,
    ) {
        loop {
            if unthrottled() {
                break;
            }
            let now = clock::now_ns();
            let wait = self.state.borrow_mut().wait_ns(now, is_write);
            if wait <= 0 {
                break;
            }
            crate::trace!(
                throttle_group_wait,
                "group {} write {} bytes {} wait_ns {}",
                self.name,
                is_write,
                bytes,
                wait
            );
            clock::sleep_until(now + wait).await;
        }
        self.state.borrow_mut().account(is_write, bytes);
    }
}

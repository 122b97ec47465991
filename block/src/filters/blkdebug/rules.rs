//! blkdebug's rule engine: the rules of each event, the active error rules, the state, and
//! the requests suspended at breakpoints (QEMU's blkdebug_debug_event, process_rule,
//! rule_check and the breakpoint callbacks of block/blkdebug.c).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::config::{parse_rule, Action, Rule};
use crate::coroutine::{CoQueue, LocalBoxFuture};
use crate::debug_event::BlkdbgEvent;
use crate::error::{Error, Result};
use crate::options::Options;

thread_local! {
    static SINK: Cell<fn(&str)> = const { Cell::new(print_stdout) };
}

fn print_stdout(text: &str) {
    print!("{text}");
}

/// Routes blkdebug's "Suspended request" lines through a tool's own stdout buffer, so that
/// they interleave with its output as QEMU's printf does.
pub fn set_message_sink(sink: fn(&str)) {
    SINK.with(|s| s.set(sink));
}

fn message(text: &str) {
    SINK.with(|s| (s.get())(text));
}

/// A request waiting at a breakpoint.
struct Suspended {
    id: u64,
    tag: String,
}

/// Everything blkdebug decides with (BDRVBlkdebugState without the limits).
pub struct RuleSet {
    /// Rules per event, most recently added first (QEMU inserts at the list head).
    rules: RefCell<Vec<Vec<Rule>>>,
    /// Error rules made active by their event, newest first.
    active: RefCell<Vec<Rule>>,
    state: Cell<i64>,
    suspended: RefCell<Vec<Suspended>>,
    /// Restarted when a request is suspended or resumed.
    changed: CoQueue,
    next_id: Cell<u64>,
}

/// Returns Pending once, to let the main loop run before going on (aio_co_schedule +
/// qemu_coroutine_yield).
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl RuleSet {
    /// No rules, in state 1.
    pub fn new() -> RuleSet {
        RuleSet {
            rules: RefCell::new(vec![Vec::new(); BlkdbgEvent::ALL.len()]),
            active: RefCell::new(Vec::new()),
            state: Cell::new(1),
            suspended: RefCell::new(Vec::new()),
            changed: CoQueue::new(),
            next_id: Cell::new(1),
        }
    }

    fn id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    /// Adds an `inject-error` or `set-state` rule from its options (add_rule).
    pub fn add(&self, kind: &str, opts: Options) -> Result<()> {
        let rule = parse_rule(kind, opts, self.id())?;
        self.rules.borrow_mut()[rule.event.index()].insert(0, rule);
        Ok(())
    }

    fn remove_rule(&self, id: u64) {
        for list in self.rules.borrow_mut().iter_mut() {
            list.retain(|r| r.id != id);
        }
        self.active.borrow_mut().retain(|r| r.id != id);
    }

    /// The node's current state.
    pub fn state(&self) -> i64 {
        self.state.get()
    }

    /// Runs the rules of `event`; a future only when the event suspends the request
    /// (blkdebug_debug_event).
    pub fn event(&self, event: BlkdbgEvent) -> Option<LocalBoxFuture<'_, ()>> {
        let rules = self.rules.borrow()[event.index()].clone();
        if rules.is_empty() {
            return None;
        }
        let old_state = self.state.get();
        let mut new_state = old_state;
        let mut injected = false;
        let mut suspended = Vec::new();
        for rule in rules {
            if rule.state != 0 && rule.state != old_state {
                continue;
            }
            match &rule.action {
                Action::InjectError(_) => {
                    let mut active = self.active.borrow_mut();
                    if !injected {
                        active.clear();
                        injected = true;
                    }
                    active.insert(0, rule.clone());
                }
                Action::SetState(n) => new_state = *n,
                Action::Suspend(tag) => {
                    // Breakpoints fire once.
                    self.remove_rule(rule.id);
                    let id = self.id();
                    self.suspended.borrow_mut().insert(
                        0,
                        Suspended {
                            id,
                            tag: tag.clone(),
                        },
                    );
                    message(&format!("blkdebug: Suspended request '{tag}'\n"));
                    suspended.push(id);
                }
            }
        }
        self.state.set(new_state);
        if suspended.is_empty() {
            return None;
        }
        self.changed.restart_all();
        Some(Box::pin(async move {
            for id in suspended {
                self.changed
                    .wait_while(|| self.suspended.borrow().iter().any(|s| s.id == id))
                    .await;
            }
        }))
    }

    /// Fails a request of kind `iotype` on `offset..offset+bytes` if an active error rule
    /// covers it (rule_check).
    pub async fn check(&self, offset: u64, bytes: u64, iotype: u32) -> Result<()> {
        let hit = self
            .active
            .borrow()
            .iter()
            .find_map(|rule| match &rule.action {
                Action::InjectError(inject)
                    if inject.iotypes & iotype != 0
                        && inject
                            .offset
                            .is_none_or(|o| bytes != 0 && o >= offset && o - offset < bytes) =>
                {
                    Some((rule.id, inject.clone()))
                }
                _ => None,
            });
        let Some((id, inject)) = hit else {
            return Ok(());
        };
        if inject.errno == 0 {
            return Ok(());
        }
        if inject.once {
            self.remove_rule(id);
        }
        if !inject.immediately {
            YieldNow(false).await;
        }
        Err(Error::from_errno(inject.errno))
    }

    /// `break EVENT TAG` (blkdebug_debug_breakpoint).
    pub fn add_breakpoint(&self, event: &str, tag: &str) -> Result<()> {
        let event = BlkdbgEvent::parse(event).ok_or_else(|| Error::from_errno(libc::ENOENT))?;
        let rule = Rule {
            id: self.id(),
            event,
            state: 0,
            action: Action::Suspend(tag.to_string()),
        };
        self.rules.borrow_mut()[event.index()].insert(0, rule);
        Ok(())
    }

    /// Resumes the first request suspended as `tag`, or all of them; whether any was.
    fn resume_tagged(&self, tag: &str, all: bool) -> bool {
        let mut resumed = false;
        loop {
            let pos = self.suspended.borrow().iter().position(|s| s.tag == tag);
            let Some(pos) = pos else { break };
            self.suspended.borrow_mut().remove(pos);
            message(&format!("blkdebug: Resuming request '{tag}'\n"));
            resumed = true;
            if !all {
                break;
            }
        }
        if resumed {
            self.changed.restart_all();
        }
        resumed
    }

    /// `remove_break TAG`: resumes requests waiting there and drops the breakpoints; ENOENT
    /// when no breakpoint rule had the tag (blkdebug_debug_remove_breakpoint).
    pub fn remove_breakpoint(&self, tag: &str) -> Result<()> {
        self.resume_tagged(tag, true);
        let mut found = false;
        for list in self.rules.borrow_mut().iter_mut() {
            list.retain(|r| {
                let hit = matches!(&r.action, Action::Suspend(t) if t == tag);
                found |= hit;
                !hit
            });
        }
        if found {
            Ok(())
        } else {
            Err(Error::from_errno(libc::ENOENT))
        }
    }

    /// `resume TAG` (blkdebug_debug_resume).
    pub fn resume(&self, tag: &str) -> Result<()> {
        if self.resume_tagged(tag, false) {
            Ok(())
        } else {
            Err(Error::from_errno(libc::ENOENT))
        }
    }

    /// Whether a request waits at `tag` (blkdebug_debug_is_suspended).
    pub fn is_suspended(&self, tag: &str) -> bool {
        self.suspended.borrow().iter().any(|s| s.tag == tag)
    }

    /// Waits until a request waits at `tag` (qemu-io's wait_break loop).
    pub async fn wait_suspended(&self, tag: &str) {
        self.changed.wait_while(|| !self.is_suspended(tag)).await;
    }
}

impl Default for RuleSet {
    fn default() -> Self {
        RuleSet::new()
    }
}

//! Permissions: what each user of a node needs to do with it and what it lets others do
//! (QEMU's BLK_PERM_* and bdrv_check_perm / bdrv_a_allow_b in block.c).
//!
//! A user (a device's BlockBackend, a parent node, a job) takes a claim on a node: the
//! permissions it needs (`perm`) and those it shares with others (`shared`). A new claim is
//! refused when some user needs what another does not share, with QEMU's message naming
//! both users. A mirror's target, for instance, is written by the job and shares only
//! unchanged writes, so a second job writing there is refused.

use std::cell::Cell;
use std::rc::{Rc, Weak};

use crate::error::{Error, Result};
use crate::node::BlockDriverState;

bitflags::bitflags! {
    /// What a user may do with a node (BLK_PERM_*).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Perm: u32 {
        /// Read data that is consistent with what was written (not mid-copy).
        const CONSISTENT_READ = 0x01;
        /// Change the data.
        const WRITE = 0x02;
        /// Write data identical to what is there (copy-on-read, stream).
        const WRITE_UNCHANGED = 0x04;
        /// Change the size.
        const RESIZE = 0x08;
        /// Change the node's children (QEMU before 7.0; kept for teaching the model).
        const GRAPH_MOD = 0x10;
    }
}

/// The names bdrv_perm_names prints, in QEMU's order.
const NAMES: [(Perm, &str); 5] = [
    (Perm::CONSISTENT_READ, "consistent read"),
    (Perm::WRITE, "write"),
    (Perm::WRITE_UNCHANGED, "write unchanged"),
    (Perm::RESIZE, "resize"),
    (Perm::GRAPH_MOD, "change children"),
];

/// "write, resize": the names of a set of permissions (bdrv_perm_names).
pub fn perm_names(perm: Perm) -> String {
    NAMES
        .iter()
        .filter(|(p, _)| perm.contains(*p))
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// One user's claim on a node (a BdrvChild's perm and shared_perm).
#[derive(Clone, Debug)]
pub struct PermClaim {
    id: u64,
    /// Who holds it: "block device 'drive0'", "node 'top'", "mirror job 'job0'".
    user: String,
    /// The role under which the user holds the node: "root", "file", "target".
    child: String,
    perm: Perm,
    shared: Perm,
}

impl PermClaim {
    /// The claim a parent node holds on a child in `role` (a BdrvChild's permissions).
    pub(crate) fn node(parent: &str, role: &str, perm: Perm, shared: Perm) -> PermClaim {
        PermClaim {
            id: 0,
            user: format!("node '{parent}'"),
            child: role.to_string(),
            perm,
            shared,
        }
    }

    /// The permissions the user needs.
    pub(crate) fn perm(&self) -> Perm {
        self.perm
    }
}

/// Checks a claim about to be taken on `bs` against `links` (the other parents' claims)
/// and the claims held on it, as `claim` does (bdrv_check_perm for a new child link).
pub(crate) fn check_new_claim(
    bs: &BlockDriverState,
    new: &PermClaim,
    links: &[PermClaim],
) -> Result<()> {
    let node = bs.node_name();
    for held in links.iter().chain(bs.graph.perms.borrow().iter()) {
        a_allows_b(node, new, held)?;
        a_allows_b(node, held, new)?;
    }
    Ok(())
}

thread_local! {
    static NEXT_CLAIM: Cell<u64> = const { Cell::new(1) };
}

/// Refuses `b` if `a` does not share what `b` needs (bdrv_a_allow_b).
fn a_allows_b(node: &str, a: &PermClaim, b: &PermClaim) -> Result<()> {
    let missing = b.perm & !a.shared;
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::new(
        libc::EPERM,
        format!(
            "Permission conflict on node '{node}': permissions '{}' are both required by {} \
             (uses node '{node}' as '{}' child) and unshared by {} (uses node '{node}' as \
             '{}' child).",
            perm_names(missing),
            b.user,
            b.child,
            a.user,
            a.child
        ),
    ))
}

/// A claim held on a node; dropping it gives the permissions back.
pub struct PermHandle {
    bs: Weak<BlockDriverState>,
    id: u64,
}

/// Takes `perm` on `bs` for `user` holding it as `child`, sharing `shared` with the other
/// users; refused when it conflicts with a claim already held.
pub fn claim(
    bs: &Rc<BlockDriverState>,
    user: &str,
    child: &str,
    perm: Perm,
    shared: Perm,
) -> Result<PermHandle> {
    if perm.intersects(Perm::WRITE | Perm::RESIZE) && bs.is_read_only() {
        return Err(Error::new(libc::EPERM, "Block node is read-only"));
    }
    let id = NEXT_CLAIM.with(|n| n.replace(n.get() + 1));
    let new = PermClaim {
        id,
        user: user.to_string(),
        child: child.to_string(),
        perm,
        shared,
    };
    let node = bs.node_name();
    for held in bs.graph.perms.borrow().iter() {
        // The newest user comes first in QEMU's parent list: it is checked as `a` first.
        a_allows_b(node, &new, held)?;
        a_allows_b(node, held, &new)?;
    }
    bs.graph.perms.borrow_mut().push(new);
    Ok(PermHandle {
        bs: Rc::downgrade(bs),
        id,
    })
}

impl Drop for PermHandle {
    fn drop(&mut self) {
        if let Some(bs) = self.bs.upgrade() {
            bs.graph.perms.borrow_mut().retain(|c| c.id != self.id);
        }
    }
}

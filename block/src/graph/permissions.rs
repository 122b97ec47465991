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
pub use crate::node::graph_state::Perm;
use crate::node::graph_state::PermClaim;
use crate::node::BlockDriverState;

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

thread_local! {
    static NEXT_CLAIM: Cell<u64> = const { Cell::new(1) };
}

/// The claim a parent node holds on a child in `role` (a BdrvChild's permissions), for a
/// check of a link not made yet.
pub(crate) fn node_claim(parent: &str, role: &str, perm: Perm, shared: Perm) -> PermClaim {
    PermClaim {
        id: 0,
        user: format!("node '{parent}'"),
        child: role.to_string(),
        perm,
        shared,
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

/// What the claims held on `bs` under the role `child` need and share together (the
/// permissions of that child link; everything shared when none is held).
pub fn held_as(bs: &BlockDriverState, child: &str) -> (Perm, Perm) {
    bs.graph
        .perms
        .borrow()
        .iter()
        .filter(|c| c.child == child)
        .fold((Perm::empty(), Perm::all()), |(p, s), c| {
            (p | c.perm, s & c.shared)
        })
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
        let held_here =
            |bs: &BlockDriverState| bs.graph.perms.borrow().iter().any(|c| c.id == self.id);
        // A node replacement may have moved the claim to the new node.
        let bs = self
            .bs
            .upgrade()
            .filter(|bs| held_here(bs))
            .or_else(|| super::all_nodes().into_iter().find(|n| held_here(n)));
        if let Some(bs) = bs {
            bs.graph.perms.borrow_mut().retain(|c| c.id != self.id);
        }
    }
}

/// The user name a node takes its claims on its children under.
pub fn node_user(parent: &BlockDriverState) -> String {
    format!("node '{}'", parent.node_name())
}

/// Checks that the claims `parents` hold on `from` are compatible with those held on `to`,
/// and moves them there (the permission side of bdrv_replace_node); on a conflict nothing
/// moves.
pub fn move_claims(
    from: &BlockDriverState,
    to: &BlockDriverState,
    parents: &[Rc<BlockDriverState>],
) -> Result<()> {
    let users: Vec<String> = parents.iter().map(|p| node_user(p)).collect();
    let moving: Vec<PermClaim> = from
        .graph
        .perms
        .borrow()
        .iter()
        .filter(|c| users.contains(&c.user))
        .cloned()
        .collect();
    let node = to.node_name();
    for c in &moving {
        for held in to.graph.perms.borrow().iter() {
            a_allows_b(node, c, held)?;
            a_allows_b(node, held, c)?;
        }
    }
    from.graph
        .perms
        .borrow_mut()
        .retain(|c| !users.contains(&c.user));
    to.graph.perms.borrow_mut().extend(moving);
    Ok(())
}

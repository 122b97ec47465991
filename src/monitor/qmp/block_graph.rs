//! `x-debug-query-block-graph`: the whole block graph as nodes and edges — the drives'
//! BlockBackends, the jobs' nodes, and every BlockDriverState with its child links (QEMU's
//! block.c bdrv_get_xdbg_block_graph).
//!
//! rqemu keeps permissions as claims users take on a node ([`block::graph::permissions`]),
//! not on each child link, so an edge reports the claims held on its child under the
//! edge's role.

use std::rc::Rc;

use block::graph::permissions::{self, Perm};
use block::BlockDriverState;
use serde_json::{json, Value};

use super::{Args, CmdResult};
use crate::drives;

/// QAPI's BlockPermission names of a permission set.
fn perm_list(perm: Perm) -> Vec<&'static str> {
    [
        (Perm::CONSISTENT_READ, "consistent-read"),
        (Perm::WRITE, "write"),
        (Perm::WRITE_UNCHANGED, "write-unchanged"),
        (Perm::RESIZE, "resize"),
    ]
    .into_iter()
    .filter(|(p, _)| perm.contains(*p))
    .map(|(_, n)| n)
    .collect()
}

/// `x-debug-query-block-graph`.
pub async fn x_debug_query_block_graph(args: Args) -> CmdResult {
    args.finish()?;
    let bdrv = block::graph::all_nodes();
    let id_of = |bs: &Rc<BlockDriverState>| bdrv.iter().position(|n| Rc::ptr_eq(n, bs));
    let mut nodes: Vec<Value> = bdrv
        .iter()
        .enumerate()
        .map(|(i, bs)| json!({"id": i, "type": "block-driver", "name": bs.node_name()}))
        .collect();
    let mut edges = Vec::new();
    let mut edge = |parent: usize, child: &Rc<BlockDriverState>, name: &str| {
        if let Some(c) = id_of(child) {
            let (perm, shared) = permissions::held_as(child, name);
            edges.push(json!({"parent": parent, "child": c, "name": name,
                              "perm": perm_list(perm), "shared-perm": perm_list(shared)}));
        }
    };
    for (i, bs) in bdrv.iter().enumerate() {
        for child in bs.children() {
            edge(i, &child.bs, &child.name);
        }
    }
    let backends = drives::named_backends().into_iter().chain(
        drives::device_backends()
            .into_iter()
            .map(|(_, b)| (String::new(), b)),
    );
    for (name, blk) in backends {
        let id = nodes.len();
        nodes.push(json!({"id": id, "type": "block-backend", "name": name}));
        edge(id, &blk.bs(), "root");
    }
    Ok(json!({"nodes": nodes, "edges": edges}))
}

//! Evaluates nodes whose inputs are all constants and replaces them by their results.
//! The importer calls [`fold_node`] as it goes (static attributes often come from
//! Shape/Gather/Concat chains); the pass catches whatever later rewrites expose.
//!
//! Deliberately not folded: ops whose result would be large *and* bigger than their inputs
//! (Expand/Tile/Pad of a small constant into a big one); that would trade a cheap op for
//! flash. Small results (up to [`ALWAYS_FOLD`] elements) always fold, which covers shape
//! arithmetic.

use kiln_ir::{Graph, IrError, NodeId, TensorType, eval};

/// Results up to this many elements are always folded.
pub const ALWAYS_FOLD: usize = 1 << 16;

/// Folds node `n` if all its inputs are constant; returns whether it did.
pub fn fold_node(g: &mut Graph, n: NodeId) -> Result<bool, IrError> {
    let node = g.node(n);
    let Some(args) = node
        .inputs
        .iter()
        .map(|&v| g.const_value(v).cloned())
        .collect::<Option<Vec<_>>>()
    else {
        return Ok(false);
    };
    let in_elems: usize = args.iter().map(|t| t.numel()).sum();
    let out_types: Vec<TensorType> = node.outputs.iter().map(|&o| g.value(o).ty.clone()).collect();
    let out_elems: usize = out_types.iter().map(|t| t.numel()).sum();
    if out_elems > ALWAYS_FOLD && out_elems > in_elems {
        return Ok(false);
    }
    let refs: Vec<&kiln_ir::Tensor> = args.iter().map(|t| &**t).collect();
    let results = eval::eval_node(&node.op, &refs, &out_types).map_err(|e| e.at(&node.name))?;
    let outs = node.outputs.clone();
    for (v, t) in outs.into_iter().zip(results) {
        g.make_const(v, t);
    }
    g.remove_node(n);
    Ok(true)
}

pub fn run(g: &mut Graph) -> Result<bool, IrError> {
    let mut changed = false;
    for n in g.topo_order()? {
        changed |= fold_node(g, n)?;
    }
    Ok(changed)
}

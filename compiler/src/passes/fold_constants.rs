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

/// The bytes folding node `n` would make, or `None` when it would not fold (an input is
/// not constant, or the result is large and bigger than the inputs).
pub fn fold_bytes(g: &Graph, n: NodeId) -> Option<usize> {
    let node = g.node(n);
    let mut in_elems = 0usize;
    for &v in &node.inputs {
        in_elems += g.const_value(v)?.numel();
    }
    let outs = node.outputs.iter().map(|&o| &g.value(o).ty);
    let out_elems: usize = outs.clone().map(|t| t.numel()).sum();
    (out_elems <= ALWAYS_FOLD || out_elems <= in_elems).then(|| outs.map(|t| t.bytes()).sum())
}

/// Folds node `n` if all its inputs are constant; returns whether it did.
pub fn fold_node(g: &mut Graph, n: NodeId) -> Result<bool, IrError> {
    if fold_bytes(g, n).is_none() {
        return Ok(false);
    }
    let node = g.node(n);
    let args: Vec<_> = node.inputs.iter().filter_map(|&v| g.const_value(v).cloned()).collect();
    let out_types: Vec<TensorType> = node.outputs.iter().map(|&o| g.value(o).ty.clone()).collect();
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

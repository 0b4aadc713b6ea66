//! Analyses over a finished graph: multiply-accumulate counts and parameter sizes, used by
//! `kiln inspect` and, later, by reports and budgets.

use crate::graph::{Graph, NodeId, ValueId};
use crate::op::{Op, RnnKind};

/// Multiply-accumulates one execution of node `n` performs (0 for ops without products).
pub fn macs(g: &Graph, n: NodeId) -> u64 {
    let node = g.node(n);
    let ty = |i: usize| &g.value(node.inputs[i]).ty;
    let out = &g.value(node.outputs[0]).ty;
    let prod = |s: &[usize]| s.iter().map(|&d| d as u64).product::<u64>();
    match &node.op {
        // Weights are [M, C/group, k...]: each output element reads C/group * k... products.
        Op::Conv(_) => prod(&out.shape) * prod(&ty(1).shape[1..]),
        Op::ConvTranspose(_) => {
            let (x, w) = (ty(0), ty(1));
            prod(&x.shape) * prod(&w.shape[1..])
        }
        Op::Gemm { trans_a, .. } => {
            let a = ty(0);
            let k = if *trans_a { a.shape[0] } else { a.shape[1] };
            prod(&out.shape) * k as u64
        }
        Op::MatMul => prod(&out.shape) * *ty(0).shape.last().unwrap_or(&1) as u64,
        Op::Rnn(r) => {
            let x = ty(0);
            let gates = match r.kind {
                RnnKind::Rnn => 1,
                RnnKind::Gru { .. } => 3,
                RnnKind::Lstm { .. } => 4,
            };
            let (seq_batch, isz) = (x.shape[0] as u64 * x.shape[1] as u64, x.shape[2] as u64);
            seq_batch * r.direction.count() as u64 * gates * r.hidden as u64 * (isz + r.hidden as u64)
        }
        _ => 0,
    }
}

/// Total elements of all constants the graph reads (its parameters).
pub fn parameter_count(g: &Graph) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    for n in g.node_ids() {
        for &v in &g.node(n).inputs {
            if let Some(t) = g.const_value(v)
                && seen.insert(v)
            {
                total += t.numel() as u64;
            }
        }
    }
    total
}

/// The packed width of constant `v` when every node reading it takes it as the weight of an
/// integer Conv/MatMul narrower than 8 bits (see `QLinear::weight_bits`).
pub fn packed_weight_bits(g: &Graph, v: ValueId) -> Option<u8> {
    g.const_value(v)?;
    let cons = g.consumers(v);
    let mut bits = None;
    for n in &cons {
        let node = g.node(*n);
        match &node.op {
            Op::QConv { q, .. } | Op::QMatMul { q } | Op::QBlockMatMul { q, .. }
                if q.weight_bits < 8 && node.inputs.get(1) == Some(&v) =>
            {
                if bits.is_some_and(|b| b != q.weight_bits) {
                    return None;
                }
                bits = Some(q.weight_bits);
            }
            &Op::DynMatMul { weight_bits, .. } if weight_bits < 8 && node.inputs.get(1) == Some(&v) => {
                if bits.is_some_and(|b| b != weight_bits) {
                    return None;
                }
                bits = Some(weight_bits);
            }
            _ => return None,
        }
    }
    bits
}

/// Bytes the constants the graph reads take when stored (packed weights at their width).
pub fn constant_bytes(g: &Graph) -> usize {
    let mut seen = std::collections::HashSet::new();
    g.node_ids()
        .flat_map(|n| g.node(n).inputs.clone())
        .filter(|&v| g.const_value(v).is_some() && seen.insert(v))
        .map(|v| match packed_weight_bits(g, v) {
            Some(b) => kiln_runtime::packed_len(g.value(v).ty.numel(), b),
            None => g.value(v).ty.bytes(),
        })
        .sum()
}

//! The verifier: structural and type invariants every pass must preserve. It re-runs shape
//! inference on every node, so a pass that edits an op without fixing types is caught here.

use crate::dtype::QParams;
use crate::error::{IrError, Result};
use crate::graph::{Graph, ValueDef};
use crate::shape;

pub fn verify(g: &Graph) -> Result<()> {
    let bad = |m: String| Err(IrError::Invalid(m));
    let order = g.topo_order()?;
    for (i, &v) in g.inputs().iter().enumerate() {
        if g.value(v).def != ValueDef::Input(i) {
            return bad(format!(
                "graph input {i} (`{}`) is not marked as input {i}",
                g.value(v).name
            ));
        }
    }
    for n in order {
        let node = g.node(n);
        for &v in &node.inputs {
            if v.index() >= g.num_values() {
                return bad(format!("node `{}` reads a value that does not exist", node.name));
            }
            if let ValueDef::Node(p, k) = g.value(v).def
                && (!g.contains_node(p) || g.node(p).outputs.get(k) != Some(&v))
            {
                return bad(format!(
                    "node `{}` reads `{}` whose producer is gone",
                    node.name,
                    g.value(v).name
                ));
            }
        }
        for (k, &o) in node.outputs.iter().enumerate() {
            if g.value(o).def != ValueDef::Node(n, k) {
                return bad(format!("output {k} of node `{}` is not linked back to it", node.name));
            }
        }
        let narrow = match &node.op {
            crate::Op::QConv { q, .. } | crate::Op::QMatMul { q } | crate::Op::QBlockMatMul { q, .. } => q.weight_bits,
            crate::Op::DynMatMul { weight_bits, .. } => *weight_bits,
            _ => 8,
        };
        if narrow < 8 {
            // packed weights are constants whose every value fits the width
            let w = node.inputs.get(1).and_then(|&v| g.const_value(v));
            let max = (1i64 << (narrow - 1)) - 1;
            if !w.is_some_and(|t| t.to_i64_vec().iter().all(|x| (-max - 1..=max).contains(x))) {
                return bad(format!(
                    "node `{}`: its weights are not constants in {}..={max} ({} bits)",
                    node.name,
                    -max - 1,
                    narrow
                ));
            }
        }
        let types: Vec<_> = node.inputs.iter().map(|&v| &g.value(v).ty).collect();
        let inferred = shape::infer(&node.op, &types).map_err(|e| e.at(&node.name))?;
        if inferred.len() != node.outputs.len() {
            return bad(format!(
                "node `{}` has {} outputs, its op makes {}",
                node.name,
                node.outputs.len(),
                inferred.len()
            ));
        }
        for (t, &o) in inferred.iter().zip(&node.outputs) {
            let have = &g.value(o).ty;
            if t.shape != have.shape || t.dtype.scalar != have.dtype.scalar {
                return bad(format!(
                    "node `{}`: output `{}` is recorded as {have} but the op makes {t}",
                    node.name,
                    g.value(o).name
                ));
            }
        }
    }
    for &v in g.outputs() {
        match g.value(v).def {
            ValueDef::Node(p, _) if !g.contains_node(p) => {
                return bad(format!("graph output `{}` has no producer", g.value(v).name));
            }
            _ => {}
        }
    }
    for i in 0..g.num_values() {
        let val = g.value(crate::graph::ValueId::from_index(i));
        if let ValueDef::Const(t) = &val.def
            && t.ty() != val.ty
        {
            return bad(format!(
                "constant `{}` holds {} but is typed {}",
                val.name,
                t.ty(),
                val.ty
            ));
        }
        if let Some(q) = &val.ty.dtype.quant {
            let ok = match q {
                QParams::PerTensor { scale, .. } => scale.is_finite() && *scale > 0.0,
                QParams::PerAxis {
                    axis,
                    scales,
                    zero_points,
                } => {
                    val.ty.shape.get(*axis) == Some(&scales.len())
                        && scales.len() == zero_points.len()
                        && scales.iter().all(|s| s.is_finite() && *s > 0.0)
                }
                QParams::Blocked {
                    axis,
                    block,
                    scales,
                    zero_points,
                } => {
                    let len = val.ty.shape.get(*axis).copied().unwrap_or(0);
                    // signed: a model's blocked scales keep their sign
                    *block > 0
                        && scales.len() == val.ty.numel() / len.max(1) * len.div_ceil(*block)
                        && scales.len() == zero_points.len()
                        && scales.iter().all(|s| s.is_finite() && *s != 0.0)
                }
            };
            if !ok {
                return bad(format!(
                    "value `{}` has invalid quantization parameters {}",
                    val.name, val.ty.dtype
                ));
            }
        }
    }
    Ok(())
}

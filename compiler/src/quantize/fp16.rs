//! Reduced float: the weights of Conv, Gemm and MatMul stored as IEEE binary16, half the
//! bytes, with activations, biases and arithmetic left in f32. Kernels widen each weight as
//! they read it (exactly: every binary16 value is an f32), so the result is the float model
//! with its weights rounded to the nearest binary16 — no data needed.

use kiln_ir::{Graph, Op, Scalar, ValueId};
use std::collections::HashMap;

/// The reduced-float graph and what changed.
pub struct Fp16 {
    pub graph: Graph,
    /// Weight bytes of the converted tensors before (f32) and after (f16).
    pub bytes_f32: usize,
    pub bytes_f16: usize,
    /// Weights kept in f32 because binary16 cannot hold them (magnitude above 65504).
    pub notes: Vec<String>,
}

/// Converts every constant f32 weight (input 1) of a Conv, Gemm or MatMul on f32 data.
pub fn to_fp16(g: &Graph) -> Result<Fp16, kiln_ir::IrError> {
    let mut g = g.clone();
    let mut done: HashMap<ValueId, ValueId> = HashMap::new();
    let (mut bytes_f32, mut bytes_f16, mut notes) = (0, 0, Vec::new());
    for n in g.topo_order()? {
        let node = g.node(n);
        if !matches!(node.op, Op::Conv(_) | Op::Gemm { .. } | Op::MatMul) || node.inputs.len() < 2 {
            continue;
        }
        let (x, w) = (node.inputs[0], node.inputs[1]);
        if g.value(x).ty.dtype.scalar != Scalar::F32 {
            continue;
        }
        let Some(t) = g.const_value(w).filter(|t| t.data.scalar() == Scalar::F32) else {
            continue;
        };
        if let Some(&h) = done.get(&w) {
            g.set_input(n, 1, h);
            continue;
        }
        if t.to_f32_vec().iter().any(|v| v.abs() > 65504.0) {
            notes.push(format!(
                "node `{}`: weight `{}` exceeds the binary16 range; kept in f32",
                node.name,
                g.value(w).name
            ));
            continue;
        }
        let half = t.cast(Scalar::F16);
        let name = format!("{}:f16", g.value(w).name);
        bytes_f32 += t.data.len() * 4;
        bytes_f16 += t.data.len() * 2;
        let h = g.add_const(&name, half);
        done.insert(w, h);
        g.set_input(n, 1, h);
    }
    Ok(Fp16 {
        graph: g,
        bytes_f32,
        bytes_f16,
        notes,
    })
}

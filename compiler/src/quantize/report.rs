//! Accuracy of a quantized graph against its float original, layer by layer: each integer
//! value `v:q` is dequantized with its type's scale and zero point and compared with the
//! float value `v` it stands for, and each float value computed under the name of a float
//! original (the result of a hybrid or float16 layer, a layer kept in float) with that
//! original, as a signal-to-quantization-noise ratio accumulated over all samples given.

use kiln_ir::{Graph, QParams, Tensor, ValueDef};
use std::collections::HashMap;

/// Per-layer SQNR in dB, in the quantized graph's node order: (value name, dB).
pub fn layer_sqnr(
    float: &Graph,
    int8: &Graph,
    samples: &[Vec<Tensor>],
) -> Result<Vec<(String, f64)>, kiln_ir::IrError> {
    let mut acc: HashMap<String, (f64, f64)> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for inputs in samples {
        let mut fvals: HashMap<String, Vec<f64>> = HashMap::new();
        kiln_ir::eval::run_observed(float, inputs, |v, t| {
            if t.data.scalar().is_float() {
                fvals.insert(float.value(v).name.clone(), t.to_f64_vec());
            }
        })?;
        kiln_ir::eval::run_observed(int8, inputs, |v, t| {
            let val = int8.value(v);
            let (name, (scale, zero_point)) = match (val.name.strip_suffix(":q"), &val.ty.dtype.quant) {
                (Some(name), Some(QParams::PerTensor { scale, zero_point })) => {
                    (name, (*scale as f64, *zero_point as f64))
                }
                (None, None) if t.data.scalar().is_float() && matches!(val.def, ValueDef::Node(..)) => {
                    (val.name.as_str(), (1.0, 0.0))
                }
                _ => return,
            };
            let Some(f) = fvals.get(name) else {
                return;
            };
            let e = acc.entry(name.to_string()).or_insert_with(|| {
                order.push(name.to_string());
                (0.0, 0.0)
            });
            for (&qi, &fi) in t.to_f64_vec().iter().zip(f) {
                let d = (qi - zero_point) * scale;
                e.0 += fi * fi;
                e.1 += (d - fi) * (d - fi);
            }
        })?;
    }
    Ok(order
        .into_iter()
        .map(|n| {
            let (s, e) = acc[&n];
            let db = if e == 0.0 {
                f64::INFINITY
            } else {
                10.0 * (s.max(1e-30) / e).log10()
            };
            (n, db)
        })
        .collect())
}

/// How each product (Conv, Gemm, MatMul and their integer forms) of a built graph computes,
/// by node name in topological order: `int8`, `16x8`, `int8 with 4-bit weights`, `hybrid
/// int8`, `float16 weights`, `float`, ...
pub fn precisions(g: &Graph) -> Vec<(String, String)> {
    use kiln_ir::{Op, Scalar};
    let narrow = |bits: u8| {
        if bits < 8 {
            format!(" with {bits}-bit weights")
        } else {
            String::new()
        }
    };
    let order = g.topo_order().unwrap_or_else(|_| g.node_ids().collect());
    let mut out = Vec::new();
    for n in order {
        let node = g.node(n);
        let kind = match &node.op {
            Op::QConv { q, .. } | Op::QMatMul { q } | Op::QBlockMatMul { q, .. } => {
                let act = match g.value(node.inputs[0]).ty.dtype.scalar {
                    Scalar::I16 => "16x8",
                    _ => "int8",
                };
                let blocked = if matches!(node.op, Op::QBlockMatMul { .. }) {
                    " (blocked scales)"
                } else {
                    ""
                };
                format!("{act}{}{blocked}", narrow(q.weight_bits))
            }
            Op::DynConv { .. } => "hybrid int8".to_string(),
            Op::DynMatMul { weight_bits, block, .. } => {
                let blocked = if *block > 0 { " (blocked scales)" } else { "" };
                format!("hybrid int8{}{blocked}", narrow(*weight_bits))
            }
            Op::Conv(_) | Op::Gemm { .. } | Op::MatMul | Op::ConvTranspose(_) => {
                match node.inputs.get(1).map(|&w| g.value(w).ty.dtype.scalar) {
                    Some(Scalar::F16) => "float16 weights".to_string(),
                    _ => "float".to_string(),
                }
            }
            _ => continue,
        };
        out.push((node.name.clone(), kind));
    }
    out
}

/// [`precisions`] counted by kind: e.g. `7 int8, 3 int8 with 4-bit weights, 1 float`.
pub fn precision_mix(g: &Graph) -> String {
    let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for (_, kind) in precisions(g) {
        *counts.entry(kind).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(k, c)| format!("{c} {k}")).collect();
    if parts.is_empty() {
        "no products".to_string()
    } else {
        parts.join(", ")
    }
}

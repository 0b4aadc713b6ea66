//! Empirical bias correction. Rounding weights and activations to int8 moves each output
//! channel's mean a little, and the moves add up along the network. With the float and the
//! integer graph run on the same samples, each integer product's bias is moved by the
//! difference of its channel means (in accumulator units), so the layer is unbiased on
//! that data. Layers are corrected in graph order, each measured on what the corrected
//! layers before it give, in one walk over the graph: every node is evaluated once per
//! sample, a product twice (before and after its correction). Whether the result is kept is
//! decided on held-out samples (`refine`), since the means are fitted to the data.

use super::QuantError;
use kiln_ir::{Graph, NodeId, Op, QParams, Tensor, TensorType, ValueId};
use std::collections::HashMap;

/// Corrects the bias of every int8 convolution and product in `q` that has a float
/// counterpart of the same name in `float`, on `samples`; returns how many moved.
pub fn correct(float: &Graph, q: &mut Graph, samples: &[Vec<Tensor>]) -> Result<usize, QuantError> {
    let order = q.topo_order().map_err(QuantError::Ir)?;
    let targets: HashMap<NodeId, (ValueId, usize)> = (order.iter())
        .filter_map(|&n| counterpart(float, q, n).map(|(fv, axis)| (n, (fv, axis))))
        .collect();
    let want = float_values(float, samples, &targets)?;
    // every sample's values, filled in graph order
    let mut vals: Vec<HashMap<ValueId, Tensor>> = samples
        .iter()
        .map(|x| q.inputs().iter().copied().zip(x.iter().cloned()).collect())
        .collect();
    let mut moved = 0;
    for n in order {
        eval_all(q, n, &mut vals)?;
        let Some(&(fv, axis)) = targets.get(&n) else { continue };
        let out = q.node(n).outputs[0];
        let got: Vec<&Tensor> = vals.iter().map(|v| &v[&out]).collect();
        let d = shift(&want[&fv], &got, axis, params(q, out));
        if apply(q, n, &d) {
            moved += 1;
            eval_all(q, n, &mut vals)?;
        }
    }
    Ok(moved)
}

/// Node `n` evaluated on every sample's values.
fn eval_all(q: &Graph, n: NodeId, vals: &mut [HashMap<ValueId, Tensor>]) -> Result<(), QuantError> {
    let node = q.node(n);
    let types: Vec<TensorType> = node.outputs.iter().map(|&o| q.value(o).ty.clone()).collect();
    for v in vals.iter_mut() {
        let ins: Vec<&Tensor> = (node.inputs.iter())
            .map(|i| q.const_value(*i).map(|c| &**c).or_else(|| v.get(i)))
            .collect::<Option<_>>()
            .ok_or_else(|| QuantError::Internal(format!("node `{}`: an input has no value", node.name)))?;
        let outs = kiln_ir::eval::eval_node(&node.op, &ins, &types).map_err(QuantError::Eval)?;
        v.extend(node.outputs.iter().copied().zip(outs));
    }
    Ok(())
}

/// The float output and channel axis of integer product `n`'s counterpart.
fn counterpart(float: &Graph, q: &Graph, n: NodeId) -> Option<(ValueId, usize)> {
    let node = q.node(n);
    let (Op::QConv { .. } | Op::QMatMul { .. }) = node.op else {
        return None;
    };
    let qv = node.outputs[0];
    let f = float.node_ids().find(|&m| float.node(m).name == node.name)?;
    let f = float.node(f);
    if !matches!(f.op, Op::Conv(_) | Op::Gemm { .. } | Op::MatMul) || f.outputs.len() != 1 {
        return None;
    }
    let rank = q.value(qv).ty.shape.len();
    let axis = if matches!(node.op, Op::QConv { .. }) {
        1
    } else {
        rank.checked_sub(1)?
    };
    (float.value(f.outputs[0]).ty.shape == q.value(qv).ty.shape).then_some((f.outputs[0], axis))
}

/// Scale and zero point of an integer value (1 and 0 for a float one).
fn params(g: &Graph, v: ValueId) -> (f64, f64) {
    match g.value(v).ty.dtype.quant {
        Some(QParams::PerTensor { scale, zero_point }) => (scale as f64, zero_point as f64),
        _ => (1.0, 0.0),
    }
}

/// Every target's float value on each sample.
fn float_values(
    float: &Graph,
    samples: &[Vec<Tensor>],
    targets: &HashMap<NodeId, (ValueId, usize)>,
) -> Result<HashMap<ValueId, Vec<Tensor>>, QuantError> {
    let wanted: std::collections::HashSet<ValueId> = targets.values().map(|t| t.0).collect();
    let mut seen: HashMap<ValueId, Vec<Tensor>> = HashMap::new();
    for x in samples {
        kiln_ir::eval::run_observed(float, x, |v, t| {
            if wanted.contains(&v) {
                seen.entry(v).or_default().push(t.clone());
            }
        })
        .map_err(QuantError::Eval)?;
    }
    Ok(seen)
}

/// Per index along `axis`, the mean of float minus dequantized integer over all samples and
/// positions, or 0 where that mean is within two standard errors of 0: a shift the data
/// cannot tell from noise is not corrected (with few samples per channel, as in a fully
/// connected layer, the estimate would otherwise move biases at random).
fn shift(want: &[Tensor], got: &[&Tensor], axis: usize, (scale, zp): (f64, f64)) -> Vec<f64> {
    let Some(first) = want.first() else { return Vec::new() };
    let c = first.shape[axis];
    let inner: usize = first.shape[axis + 1..].iter().product();
    let (mut sum, mut sq, mut count) = (vec![0f64; c], vec![0f64; c], vec![0usize; c]);
    for (f, q) in want.iter().zip(got) {
        for (i, (a, b)) in f.to_f64_vec().into_iter().zip(q.to_f64_vec()).enumerate() {
            let ch = (i / inner.max(1)) % c;
            let d = a - (b - zp) * scale;
            sum[ch] += d;
            sq[ch] += d * d;
            count[ch] += 1;
        }
    }
    (0..c)
        .map(|ch| {
            let n = count[ch].max(1) as f64;
            let mean = sum[ch] / n;
            let var = (sq[ch] / n - mean * mean).max(0.0);
            let se = (var / (n - 1.0).max(1.0)).sqrt();
            if mean.abs() > 2.0 * se { mean } else { 0.0 }
        })
        .collect()
}

/// Moves the bias of product `n` by `d` per channel (output units); false when nothing moved.
fn apply(q: &mut Graph, n: NodeId, d: &[f64]) -> bool {
    let node = q.node(n).clone();
    let (Some(QParams::PerTensor { scale: sx, .. }), Some(wq)) = (
        q.value(node.inputs[0]).ty.dtype.quant.clone(),
        q.value(node.inputs[1]).ty.dtype.quant.clone(),
    ) else {
        return false;
    };
    let ws: Vec<f64> = match wq {
        QParams::PerTensor { scale, .. } => vec![scale as f64],
        QParams::PerAxis { scales, .. } => scales.iter().map(|&s| s as f64).collect(),
        QParams::Blocked { .. } => return false,
    };
    let c = d.len();
    if ws.len() != 1 && ws.len() != c {
        return false;
    }
    let unit = |ch: usize| sx as f64 * ws[if ws.len() == 1 { 0 } else { ch }];
    let old: Vec<i64> = match node.inputs.get(2).and_then(|&b| q.const_value(b)) {
        Some(b) => b.to_f64_vec().iter().map(|&v| v as i64).collect(),
        None => vec![0; c],
    };
    let wide = q.value(node.inputs[0]).ty.dtype.scalar == kiln_ir::Scalar::I16;
    let (lo, hi) = if wide {
        (-(1i64 << 47), 1i64 << 47)
    } else {
        (i32::MIN as i64, i32::MAX as i64)
    };
    let new: Vec<i64> = (0..c)
        .map(|ch| old[ch].saturating_add((d[ch] / unit(ch)).round() as i64).clamp(lo, hi))
        .collect();
    if new == old || old.len() != c {
        return false;
    }
    let mut t = if wide {
        Tensor::from_vec(vec![c], new)
    } else {
        Tensor::from_vec(vec![c], new.iter().map(|&v| v as i32).collect::<Vec<_>>())
    };
    t.quant = Some(QParams::PerAxis {
        axis: 0,
        scales: (0..c).map(|ch| unit(ch) as f32).collect(),
        zero_points: vec![0; c].into(),
    });
    let name = q.fresh_name(&format!("{}:bias", node.name));
    let b = q.add_const(&name, t);
    if node.inputs.len() > 2 {
        q.set_input(n, 2, b);
    } else {
        q.push_input(n, b);
    }
    true
}

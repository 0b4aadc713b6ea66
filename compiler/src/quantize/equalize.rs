//! Activation equalization before a depthwise convolution. An int8 activation has one scale
//! for all its channels, so in a depthwise-separable network a channel whose values stay far
//! below the tensor's largest is resolved by a few steps only. Where a convolution's output
//! goes through ReLU (or nothing) into a depthwise convolution alone, channel `i` can be
//! scaled by `s_i` in the first convolution (its weights and bias; ReLU commutes with a
//! positive scale) and by `1 / s_i` in the depthwise weights of that channel: the float
//! function is unchanged, every channel of the activation spans the tensor's range, and
//! since both products take one weight scale per output channel their weight rounding does
//! not change either. The scales come from the channels' largest values on the calibration
//! data, limited to `MAX_SCALE`.

use kiln_ir::op::UnaryOp;
use kiln_ir::{Graph, IrError, NodeId, Op, Tensor, ValueId};

/// The largest factor a channel is scaled by (keeps the weights far from overflow and a
/// channel that is almost dead from being blown up).
const MAX_SCALE: f64 = 16.0;

/// The (convolution, depthwise convolution) pairs that can be equalized, with the value
/// between them.
pub fn pairs(g: &Graph) -> Vec<(NodeId, NodeId, ValueId)> {
    let mut out = Vec::new();
    for a in g.node_ids() {
        let na = g.node(a);
        let Op::Conv(ca) = &na.op else { continue };
        if !matches!(ca.fused, None | Some(UnaryOp::Relu))
            || na.inputs.get(1).and_then(|&w| g.const_value(w)).is_none()
            || na.inputs.get(2).is_some_and(|&b| g.const_value(b).is_none())
        {
            continue;
        }
        let v = na.outputs[0];
        let readers = g.consumers(v);
        let [b] = readers[..] else { continue };
        let nb = g.node(b);
        let Op::Conv(cb) = &nb.op else { continue };
        let channels = g.value(v).ty.shape.get(1).copied().unwrap_or(0);
        let wb = nb.inputs.get(1).and_then(|&w| g.const_value(w));
        let depthwise = cb.group == channels && channels > 1 && wb.is_some_and(|w| w.shape[1] == 1);
        if depthwise && nb.inputs[0] == v && !g.is_output(v) && nb.inputs[1..].iter().all(|&i| i != v) {
            out.push((a, b, v));
        }
    }
    out
}

/// Scales each pair's channels so that each reaches the tensor's largest value `top`, given
/// each channel's largest value `peaks[k][c]` on the data; returns how many pairs changed.
pub fn apply(g: &mut Graph, pairs: &[(NodeId, NodeId, ValueId)], peaks: &[Vec<f32>]) -> usize {
    let mut changed = 0;
    for (&(a, b, _), peak) in pairs.iter().zip(peaks) {
        let top = peak.iter().copied().fold(0f32, f32::max) as f64;
        if top <= 0.0 {
            continue;
        }
        let s: Vec<f64> = (peak.iter())
            .map(|&p| if p > 0.0 { (top / p as f64).min(MAX_SCALE) } else { 1.0 })
            .collect();
        if s.iter().all(|&x| x == 1.0) {
            continue;
        }
        scale_rows(g, a, 1, &s, false);
        if let Some(&bias) = g.node(a).inputs.get(2) {
            scale_const(g, a, 2, bias, &s, false);
        }
        scale_rows(g, b, 1, &s, true);
        changed += 1;
    }
    changed
}

/// Multiplies (or divides) output row `r` of node `n`'s weight in `slot` by the scale of the
/// channel it reads or writes (`r / (rows / channels)`, for a depthwise multiplier).
fn scale_rows(g: &mut Graph, n: NodeId, slot: usize, s: &[f64], divide: bool) {
    let v = g.node(n).inputs[slot];
    scale_const(g, n, slot, v, s, divide);
}

fn scale_const(g: &mut Graph, n: NodeId, slot: usize, v: ValueId, s: &[f64], divide: bool) {
    let t = g.const_value(v).expect("checked constant");
    let rows = t.shape[0];
    let per = t.numel() / rows.max(1);
    let mult = (rows / s.len()).max(1);
    let data: Vec<f32> = (t.to_f32_vec().into_iter().enumerate())
        .map(|(i, x)| {
            let f = s[(i / per / mult).min(s.len() - 1)];
            (if divide { x as f64 / f } else { x as f64 * f }) as f32
        })
        .collect();
    let mut nt = Tensor::from_vec(t.shape.clone(), data);
    nt.quant = None;
    let name = g.fresh_name(&format!("{}:equalized", g.value(v).name));
    let c = g.add_const(&name, nt);
    g.set_input(n, slot, c);
}

/// The largest magnitude of each channel (axis 1) of each pair's activation on `samples`.
pub fn peaks(
    g: &Graph,
    samples: &[Vec<Tensor>],
    pairs: &[(NodeId, NodeId, ValueId)],
) -> Result<Vec<Vec<f32>>, IrError> {
    let mut peaks: Vec<Vec<f32>> = pairs.iter().map(|p| vec![0f32; g.value(p.2).ty.shape[1]]).collect();
    for x in samples {
        kiln_ir::eval::run_observed(g, x, |v, t| {
            for k in (0..pairs.len()).filter(|&k| pairs[k].2 == v) {
                let c = peaks[k].len();
                let inner: usize = t.shape[2..].iter().product();
                for (j, x) in t.to_f32_vec().into_iter().enumerate() {
                    let ch = (j / inner.max(1)) % c;
                    peaks[k][ch] = peaks[k][ch].max(x.abs());
                }
            }
        })?;
    }
    Ok(peaks)
}

/// `g` with every pair equalized on `samples`, and how many pairs changed.
pub fn equalized(g: &Graph, samples: &[Vec<Tensor>]) -> Result<(Graph, usize), IrError> {
    let pairs = pairs(g);
    let mut e = g.clone();
    if pairs.is_empty() {
        return Ok((e, 0));
    }
    let peaks = peaks(g, samples, &pairs)?;
    let k = apply(&mut e, &pairs, &peaks);
    kiln_ir::verify::verify(&e)?;
    Ok((e, k))
}

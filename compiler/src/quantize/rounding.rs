//! Weight rounding chosen for the data (the objective of AdaRound, with a greedy solver).
//! Rounding each weight to the nearest step minimizes each weight's own error, not the
//! layer's: what matters is the output error `Δᵀ H Δ` of each output channel, with `Δ` the
//! channel's weight errors and `H = E[x xᵀ]` the second moment of the inputs it multiplies
//! (a convolution's patches), measured on the calibration data. Starting from the nearest
//! steps, each weight may move to its other neighbour (up or down, never further) when that
//! lowers the channel's output error; a few sweeps settle it. Scales, biases and the
//! integer arithmetic stay as they are, so only the stored integers change. It matters most
//! at 4 and 2 bits, where one step is a large part of a weight.

use super::QuantError;
use kiln_ir::{Graph, NodeId, Op, QParams, Tensor, ValueId};
use std::collections::HashMap;

/// Output positions of a convolution sampled per input sample for its statistics.
const MAX_POSITIONS: usize = 256;
/// Rows of a product's input sampled per input sample.
const MAX_ROWS: usize = 1024;
/// Largest `K` (inputs per output) whose `K x K` moment is gathered.
const MAX_K: usize = 1024;
/// Sweeps over each channel's weights.
const SWEEPS: usize = 4;

/// One integer product to re-round: its weight value in `q`, the float weights as
/// `[outputs][K]`, the groups (each output's moment) and how to read an input's rows.
struct Target {
    weight: ValueId,
    float_w: Vec<Vec<f64>>,
    scales: Vec<f64>,
    qmax: i32,
    input: ValueId,
    kind: Kind,
}

enum Kind {
    /// `[.., K] x [K, N]`: one moment for all outputs; `q`'s weight is `[K, N]`.
    Product { k: usize },
    /// NC(H)W convolution: one moment per group; `q`'s weight is `[M, C/g, k..]`.
    Conv {
        group: usize,
        plane: kiln_ir::op::Plane,
        channels: usize,
    },
}

/// Re-rounds the weights of every int8 convolution and product in `q` with a float
/// counterpart of the same name in `float`, on `samples`; returns how many changed.
pub fn round(float: &Graph, q: &mut Graph, samples: &[Vec<Tensor>]) -> Result<usize, QuantError> {
    let targets: Vec<Target> = q.node_ids().filter_map(|n| target(float, q, n)).collect();
    let inputs: std::collections::HashSet<ValueId> = targets.iter().map(|t| t.input).collect();
    let mut seen: HashMap<ValueId, Vec<Tensor>> = HashMap::new();
    for x in samples {
        kiln_ir::eval::run_observed(float, x, |v, t| {
            if inputs.contains(&v) {
                seen.entry(v).or_default().push(t.clone());
            }
        })
        .map_err(QuantError::Eval)?;
        for (&v, t) in float.inputs().iter().zip(x) {
            if inputs.contains(&v) {
                seen.entry(v).or_default().push(t.clone());
            }
        }
    }
    let mut changed = 0;
    for t in &targets {
        let Some(xs) = seen.get(&t.input) else { continue };
        let moments = moments(t, xs);
        let old = q.const_value(t.weight).expect("constant weight").clone();
        let mut ints: Vec<i32> = old.to_i64_vec().iter().map(|&v| v as i32).collect();
        let outputs = t.float_w.len();
        let mut moved = false;
        for (o, w) in t.float_w.iter().enumerate() {
            let h = &moments[group_of(t, o, outputs)];
            let idx: Vec<usize> = (0..w.len()).map(|k| index(t, o, k, outputs)).collect();
            let mut qv: Vec<i32> = idx.iter().map(|&i| ints[i]).collect();
            if greedy(w, t.scales[if t.scales.len() == 1 { 0 } else { o }], t.qmax, h, &mut qv) {
                moved = true;
                for (&i, &v) in idx.iter().zip(&qv) {
                    ints[i] = v;
                }
            }
        }
        if moved {
            let mut nt = Tensor::from_vec(old.shape.clone(), ints.iter().map(|&v| v as i8).collect::<Vec<_>>());
            nt.quant = old.quant.clone();
            let name = q.fresh_name(&format!("{}:rounded", q.value(t.weight).name));
            let c = q.add_const(&name, nt);
            q.replace_uses(t.weight, c);
            changed += 1;
        }
    }
    Ok(changed)
}

/// Channel `o`'s weights `q` (nearest steps of `w / s` to start) moved to the other
/// neighbour wherever that lowers `Δᵀ H Δ`; true when any moved.
fn greedy(w: &[f64], s: f64, qmax: i32, h: &[f64], q: &mut [i32]) -> bool {
    let k = w.len();
    let delta: Vec<f64> = (0..k).map(|i| w[i] - s * q[i] as f64).collect();
    // g = H Δ
    let mut g: Vec<f64> = (0..k).map(|i| (0..k).map(|j| h[i * k + j] * delta[j]).sum()).collect();
    let mut delta = delta;
    let mut moved = false;
    for _ in 0..SWEEPS {
        let mut any = false;
        for i in 0..k {
            let exact = w[i] / s;
            let (lo, hi) = (exact.floor() as i32, exact.ceil() as i32);
            let other = if q[i] == lo { hi } else { lo };
            if other == q[i] || other.abs() > qmax {
                continue;
            }
            // Δ_i changes by d: the cost changes by 2 d g_i + d² H_ii
            let d = -s * (other - q[i]) as f64;
            if 2.0 * d * g[i] + d * d * h[i * k + i] < -1e-12 * (1.0 + h[i * k + i]) {
                q[i] = other;
                delta[i] += d;
                for (j, gj) in g.iter_mut().enumerate() {
                    *gj += h[j * k + i] * d;
                }
                any = true;
                moved = true;
            }
        }
        if !any {
            break;
        }
    }
    moved
}

/// The product or convolution integer node `n` stands for, when it can be re-rounded.
fn target(float: &Graph, q: &Graph, n: NodeId) -> Option<Target> {
    let node = q.node(n);
    let (Op::QConv { q: ql, .. } | Op::QMatMul { q: ql }) = &node.op else {
        return None;
    };
    let qmax = ql.weight_max();
    let f = float.node_ids().find(|&m| float.node(m).name == node.name)?;
    let fnode = float.node(f);
    let fw = float.const_value(*fnode.inputs.get(1)?)?;
    let wq = q.const_value(node.inputs[1])?;
    let scales: Vec<f64> = match &wq.quant {
        Some(QParams::PerTensor { scale, .. }) => vec![*scale as f64],
        Some(QParams::PerAxis { scales, .. }) => scales.iter().map(|&s| s as f64).collect(),
        _ => return None,
    };
    let fv: Vec<f64> = fw.to_f32_vec().iter().map(|&v| v as f64).collect();
    let input = fnode.inputs[0];
    match (&node.op, &fnode.op) {
        (Op::QMatMul { .. }, Op::Gemm { .. } | Op::MatMul) if wq.shape.len() == 2 => {
            let (k, nn) = (wq.shape[0], wq.shape[1]);
            let trans = matches!(fnode.op, Op::Gemm { trans_b: true, .. });
            if fv.len() != k * nn || k > MAX_K {
                return None;
            }
            let float_w = (0..nn)
                .map(|j| {
                    (0..k)
                        .map(|i| if trans { fv[j * k + i] } else { fv[i * nn + j] })
                        .collect()
                })
                .collect();
            Some(Target {
                weight: node.inputs[1],
                float_w,
                scales,
                qmax,
                input,
                kind: Kind::Product { k },
            })
        }
        (Op::QConv { window, group, .. }, Op::Conv(_)) if fv.len() == wq.numel() => {
            let xs = &float.value(input).ty.shape;
            let os = &q.value(node.outputs[0]).ty.shape;
            if !matches!(xs.len(), 3 | 4) {
                return None;
            }
            let m = wq.shape[0];
            let k = wq.numel() / m.max(1);
            if k > MAX_K {
                return None;
            }
            let float_w = (0..m).map(|o| fv[o * k..][..k].to_vec()).collect();
            Some(Target {
                weight: node.inputs[1],
                float_w,
                scales,
                qmax,
                input,
                kind: Kind::Conv {
                    group: *group,
                    plane: window.plane(xs, os),
                    channels: xs[1],
                },
            })
        }
        _ => None,
    }
}

/// The moment each output's row is scored with.
fn group_of(t: &Target, o: usize, outputs: usize) -> usize {
    match t.kind {
        Kind::Product { .. } => 0,
        Kind::Conv { group, .. } => o / (outputs / group).max(1),
    }
}

/// Where weight `k` of output `o` sits in `q`'s weight tensor.
fn index(t: &Target, o: usize, k: usize, outputs: usize) -> usize {
    match t.kind {
        Kind::Product { .. } => k * outputs + o,
        Kind::Conv { .. } => o * t.float_w[0].len() + k,
    }
}

/// `E[x xᵀ]` (up to a constant factor) of the inputs each group of outputs multiplies,
/// row-major `K x K`, from a sample of rows or patch positions of every input.
fn moments(t: &Target, xs: &[Tensor]) -> Vec<Vec<f64>> {
    let k = t.float_w.first().map_or(0, |w| w.len());
    let groups = match t.kind {
        Kind::Product { .. } => 1,
        Kind::Conv { group, .. } => group,
    };
    let mut h = vec![vec![0f64; k * k]; groups];
    let mut add = |g: usize, v: &[f64]| {
        for i in 0..k {
            if v[i] == 0.0 {
                continue;
            }
            for j in 0..k {
                h[g][i * k + j] += v[i] * v[j];
            }
        }
    };
    for x in xs {
        let xv: Vec<f64> = x.to_f32_vec().iter().map(|&v| v as f64).collect();
        match &t.kind {
            Kind::Product { k } => {
                let rows = xv.len() / k.max(&1);
                let step = rows.div_ceil(MAX_ROWS).max(1);
                for r in (0..rows).step_by(step) {
                    add(0, &xv[r * k..][..*k]);
                }
            }
            Kind::Conv {
                group,
                plane: p,
                channels,
            } => {
                let cg = channels / group;
                let (pin, pos) = (p.h * p.w, p.oh * p.ow);
                let step = pos.div_ceil(MAX_POSITIONS).max(1);
                let batch = xv.len() / (channels * pin).max(1);
                let mut patch = vec![0f64; k];
                for b in 0..batch {
                    for at in (0..pos).step_by(step) {
                        let (oy, ox) = (at / p.ow, at % p.ow);
                        for g in 0..*group {
                            for c in 0..cg {
                                let plane = &xv[(b * channels + g * cg + c) * pin..][..pin];
                                for ky in 0..p.kh {
                                    for kx in 0..p.kw {
                                        patch[(c * p.kh + ky) * p.kw + kx] =
                                            p.tap(oy, ox, ky, kx).map_or(0.0, |i| plane[i]);
                                    }
                                }
                            }
                            add(g, &patch);
                        }
                    }
                }
            }
        }
    }
    h
}

//! Hybrid (dynamic-range) int8: the constant weights of Conv, Gemm, MatMul, LSTM and GRU
//! become int8, symmetric per output channel, while activations, biases and every other op
//! stay f32. Recurrent layers are written out step by step first (`passes::unroll_rnn`, the
//! same as for int8), so their products are hybrid products like any other.
//! Each rewritten op quantizes its input when it runs (`kiln_runtime::dynamic_quantize`:
//! per tensor for a convolution, per row for a product), sums int8 products in i32 and
//! rescales to f32; a bias and fused activation follow as ordinary float ops, so no backend
//! has to fuse a multiply-add whose rounding a C compiler might contract. No data needed.

use super::quantize_static::per_channel;
use kiln_ir::op::BinaryOp;
use kiln_ir::{Graph, IrError, NodeId, Op, QParams, Scalar, Tensor, ValueId};
use std::collections::HashMap;
use std::sync::Arc;

/// The hybrid graph and what changed.
pub struct Dynamic {
    pub graph: Graph,
    /// Bytes of the converted weights as f32, and as int8 plus their f32 scales.
    pub bytes_f32: usize,
    pub bytes_int8: usize,
    /// Ops with weights that stay float, and why.
    pub notes: Vec<String>,
}

/// Rewrites every Conv (1-D/2-D), MatMul and Gemm whose weight is a constant f32 matrix and
/// every LSTM/GRU `unrollable` accepts, except nodes named in `keep_float` by name or op type
/// (case-insensitive), which the caller has checked exist (`quantize_static::check_keep_float`).
pub fn to_dynamic(src: &Graph, keep_float: &[String]) -> Result<Dynamic, IrError> {
    let kept =
        |node: &kiln_ir::Node| (keep_float.iter()).any(|k| node.name == *k || node.op.name().eq_ignore_ascii_case(k));
    let mut notes = Vec::new();
    for n in src.node_ids() {
        if let Some(why) = crate::passes::unroll_rnn::refusal(src, n).filter(|_| !kept(src.node(n))) {
            notes.push(format!("node `{}` stays float: {why}", src.node(n).name));
        }
    }
    let mut unrolled = src.clone();
    crate::passes::unroll_rnn::run_where(&mut unrolled, |node| !kept(node))?;
    let mut r = Rewriter {
        g: unrolled.clone(),
        weights: HashMap::new(),
        bytes_f32: 0,
        bytes_int8: 0,
        notes,
    };
    for n in unrolled.topo_order()? {
        if !kept(unrolled.node(n)) {
            r.node(n)?;
        }
    }
    Ok(Dynamic {
        graph: r.g,
        bytes_f32: r.bytes_f32,
        bytes_int8: r.bytes_int8,
        notes: r.notes,
    })
}

/// The model's own int8 weights, scales and block length (0: per channel) of a float
/// weight that records its grid, as `weight` lays them out: `[K, N]` (after the transpose)
/// with scales per column or `[blocks, N]` blocked along K, or `[M, ...]` per output
/// channel for a convolution. `None` when the grid is missing, another shape, or does not
/// reproduce every value exactly in int8.
pub(super) fn own_grid(t: &Tensor, transpose: bool, conv: bool) -> Option<(Vec<i8>, Vec<f32>, usize)> {
    let grid = t.quant.as_ref()?;
    // the axes of the output channel and of K in `t` as stored
    let (out_axis, k_axis) = match (conv, transpose) {
        (true, _) => (0, usize::MAX),
        (false, false) => (1, 0),
        (false, true) => (0, 1),
    };
    let (scales, block): (Vec<f32>, usize) = match grid {
        QParams::PerTensor { scale, .. } => (vec![*scale], 0),
        QParams::PerAxis { axis, scales, .. } if *axis == out_axis => (scales.to_vec(), 0),
        QParams::Blocked {
            axis, block, scales, ..
        } if *axis == k_axis => {
            if transpose {
                // stored [N, blocks]: to [blocks, N]
                let (nn, nb) = (t.shape[0], scales.len() / t.shape[0].max(1));
                ((0..nb * nn).map(|i| scales[(i % nn) * nb + i / nn]).collect(), *block)
            } else {
                (scales.to_vec(), *block)
            }
        }
        _ => return None,
    };
    let vals = t.to_f32_vec();
    let idx = grid.index(&t.shape);
    let mut q = Vec::with_capacity(vals.len());
    for (&v, &i) in vals.iter().zip(&idx) {
        let s = match grid {
            QParams::PerTensor { scale, .. } => *scale,
            QParams::PerAxis { scales, .. } | QParams::Blocked { scales, .. } => scales[i],
        };
        let r = (v / s).round();
        if !(-128.0..=127.0).contains(&r) || r * s != v {
            return None;
        }
        q.push(r as i8);
    }
    if transpose {
        let (r, c) = (t.shape[0], t.shape[1]);
        q = (0..c * r).map(|i| q[(i % r) * c + i / r]).collect();
    }
    Some((q, scales, block))
}

/// An int8 weight constant, its scales, their block length along K (0: per channel) and
/// the width its values fit (a model's own 4-bit grid stays packed).
#[derive(Clone)]
struct Weight {
    value: ValueId,
    scales: Arc<[f32]>,
    block: usize,
    bits: u8,
}

struct Rewriter {
    g: Graph,
    /// Quantized weights (value, scales, block) by (float weight, transposed), shared
    /// between nodes.
    weights: HashMap<(ValueId, bool), Weight>,
    bytes_f32: usize,
    bytes_int8: usize,
    notes: Vec<String>,
}

impl Rewriter {
    fn node(&mut self, n: NodeId) -> Result<(), IrError> {
        let node = self.g.node(n).clone();
        let is_f32 = |g: &Graph, v: ValueId| g.value(v).ty.dtype.scalar == Scalar::F32;
        if node.inputs.len() < 2 || !is_f32(&self.g, node.inputs[0]) {
            return Ok(());
        }
        let (x, w) = (node.inputs[0], node.inputs[1]);
        let Some(wt) = self
            .g
            .const_value(w)
            .filter(|t| t.data.scalar() == Scalar::F32)
            .cloned()
        else {
            if matches!(node.op, Op::Conv(_) | Op::Gemm { .. }) {
                self.note(&node.name, "its weight is not a constant");
            }
            return Ok(());
        };
        match &node.op {
            Op::Conv(c) => {
                let rank = self.g.value(x).ty.shape.len();
                if rank != 3 && rank != 4 {
                    self.note(&node.name, "only 1-D and 2-D convolutions have an integer kernel");
                    return Ok(());
                }
                let wq = self.weight(&node.name, w, &wt, false, true)?;
                let op = Op::DynConv {
                    window: c.window.clone(),
                    group: c.group,
                    weight_scales: wq.scales,
                };
                // the bias as [M, 1, ...] against the NC* output
                let bias = node.inputs.get(2).map(|&b| (b, rank - 1));
                self.replace(n, op, vec![x, wq.value], bias, 1.0, c.fused)
            }
            Op::MatMul if wt.shape.len() == 2 => {
                let wq = self.weight(&node.name, w, &wt, false, false)?;
                let op = Op::DynMatMul {
                    weight_scales: wq.scales,
                    block: wq.block,
                    weight_bits: wq.bits,
                };
                self.replace(n, op, vec![x, wq.value], None, 1.0, None)
            }
            &Op::Gemm {
                alpha,
                beta,
                trans_a,
                trans_b,
                fused,
            } => {
                if trans_a {
                    self.note(&node.name, "a transposed activation operand has no integer kernel");
                    return Ok(());
                }
                let c = node.inputs.get(2).copied();
                if c.is_some_and(|c| self.g.const_value(c).is_none()) {
                    self.note(&node.name, "its C operand is not a constant");
                    return Ok(());
                }
                let wq = self.weight(&node.name, w, &wt, trans_b, false)?;
                let op = Op::DynMatMul {
                    weight_scales: wq.scales.iter().map(|&s| s * alpha).collect(),
                    block: wq.block,
                    weight_bits: wq.bits,
                };
                self.replace(n, op, vec![x, wq.value], c.map(|c| (c, 0)), beta, fused)
            }
            _ => Ok(()),
        }
    }

    fn note(&mut self, node: &str, why: &str) {
        self.notes.push(format!("node `{node}` stays float: {why}"));
    }

    /// The int8 form of weight `w` (`[K, N]` after an optional transpose, or `[M, ...]`
    /// for a convolution), shared between nodes reading it, with its scales and their block
    /// length along K (0: per output channel). A weight that records the integer grid it
    /// came from (a dequantized weight of a quantized model) keeps the model's integers and
    /// scales where the hybrid ops can express them; any other is quantized per channel.
    fn weight(&mut self, node: &str, w: ValueId, t: &Tensor, transpose: bool, conv: bool) -> Result<Weight, IrError> {
        if let Some(done) = self.weights.get(&(w, transpose)) {
            return Ok(done.clone());
        }
        let mut shape = t.shape.clone();
        if transpose {
            shape.swap(0, 1);
        }
        let channels = shape[if conv { 0 } else { 1 }];
        let own = own_grid(t, transpose, conv);
        if own.is_none() && t.quant.is_some() {
            self.notes.push(format!(
                "node `{node}`: its weights' own grid has no hybrid form (int8 values blocked along K, or one scale per output channel), so Kiln quantized them again"
            ));
        }
        let own_values = own.is_some();
        let (q, scales, block) = own.unwrap_or_else(|| {
            let mut vals = t.to_f32_vec();
            if transpose {
                let (r, c) = (t.shape[0], t.shape[1]);
                vals = (0..c * r).map(|i| vals[(i % r) * c + i / r]).collect();
            }
            let per = vals.len() / channels.max(1);
            let (q, scales) = if conv {
                per_channel(&vals, channels, |i| i / per)
            } else {
                per_channel(&vals, channels, |i| i % channels)
            };
            (q, scales, 0)
        });
        let numel = q.len();
        // a product keeps the model's own narrow integers packed (the hybrid convolution and
        // Kiln's own per-channel weights are int8)
        let bits = if own_values && !conv {
            let (lo, hi) = q.iter().fold((0i8, 0i8), |(l, h), &v| (l.min(v), h.max(v)));
            [2u8, 4, 8]
                .into_iter()
                .find(|&b| lo as i32 >= -(1 << (b - 1)) && (hi as i32) < 1 << (b - 1))
                .unwrap_or(8)
        } else {
            8
        };
        let mut qt = Tensor::from_vec(shape, q);
        qt.quant = Some(match block {
            0 if scales.len() == 1 => QParams::PerTensor {
                scale: scales[0],
                zero_point: 0,
            },
            0 => QParams::PerAxis {
                axis: if conv { 0 } else { 1 },
                scales: scales.clone().into(),
                zero_points: vec![0; channels].into(),
            },
            _ => QParams::Blocked {
                axis: 0,
                block,
                scales: scales.clone().into(),
                zero_points: vec![0; scales.len()].into(),
            },
        });
        self.bytes_f32 += numel * 4;
        self.bytes_int8 += kiln_runtime::packed_len(numel, bits) + 4 * scales.len();
        let name = self.g.fresh_name(&format!("{}:int8", self.g.value(w).name));
        let done = Weight {
            value: self.g.add_const(&name, qt),
            scales: Arc::from(scales),
            block,
            bits,
        };
        self.weights.insert((w, transpose), done.clone());
        Ok(done)
    }

    /// Puts `op` in node `n`'s place, followed by `+ beta * bias` (the bias reshaped to end
    /// in `trailing` unit axes) and the fused activation, each a float op of its own.
    fn replace(
        &mut self,
        n: NodeId,
        op: Op,
        inputs: Vec<ValueId>,
        bias: Option<(ValueId, usize)>,
        beta: f32,
        fused: Option<kiln_ir::op::UnaryOp>,
    ) -> Result<(), IrError> {
        let g = &mut self.g;
        let name = g.node(n).name.clone();
        let y = g.node(n).outputs[0];
        let yname = g.value(y).name.clone();
        let (_, outs) = g.add_node(&name, op, inputs, &[])?;
        let mut last = outs[0];
        if let Some((b, trailing)) = bias {
            let bt = g.const_value(b).expect("checked constant").as_ref().clone();
            let mut shape = bt.shape.clone();
            shape.extend(std::iter::repeat_n(1, trailing.saturating_sub(1)));
            let vals: Vec<f32> = bt.to_f32_vec().iter().map(|&v| v * beta).collect();
            let bname = g.fresh_name(&format!("{}:bias", g.value(b).name));
            let bv = g.add_const(&bname, Tensor::from_vec(shape, vals));
            let an = g.fresh_name(&format!("{name}:bias"));
            let (_, o) = g.add_node(&an, Op::Binary(BinaryOp::Add), vec![last, bv], &[])?;
            last = o[0];
        }
        if let Some(u) = fused {
            let un = g.fresh_name(&format!("{name}:act"));
            let (_, o) = g.add_node(&un, Op::Unary(u), vec![last], &[])?;
            last = o[0];
        }
        g.replace_uses(y, last);
        g.remove_node(n);
        g.rename(last, &yname);
        Ok(())
    }
}

//! Hybrid (dynamic-range) int8: the constant weights of Conv, Gemm, MatMul, LSTM and GRU
//! become int8, symmetric per output channel, while activations, biases and every other op
//! stay f32. Recurrent layers are written out step by step around hybrid products.
//! Each rewritten op quantizes its input when it runs (`kiln_runtime::dynamic_quantize`:
//! per tensor for a convolution, per row for a product), sums int8 products in i32 and
//! rescales to f32; a bias and fused activation follow as ordinary float ops, so no backend
//! has to fuse a multiply-add whose rounding a C compiler might contract. No data needed.

use super::quantize_static::per_channel;
use kiln_ir::op::{Activation, BinaryOp, Rnn, RnnDirection, RnnKind, SliceAxis, UnaryOp};
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
    let mut r = Rewriter {
        g: src.clone(),
        weights: HashMap::new(),
        bytes_f32: 0,
        bytes_int8: 0,
        notes: Vec::new(),
    };
    for n in src.topo_order()? {
        let node = src.node(n);
        let kept = keep_float
            .iter()
            .any(|k| node.name == *k || node.op.name().eq_ignore_ascii_case(k));
        if !kept {
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

/// The longest sequence written out step by step.
const MAX_UNROLL: usize = 64;

/// Whether a recurrent layer can run hybrid (written out by `Rewriter::unroll`).
fn unrollable(g: &Graph, node: &kiln_ir::Node, r: &Rnn) -> Result<(), &'static str> {
    use Activation::{Sigmoid, Tanh};
    let defaults: &[Activation] = match r.kind {
        RnnKind::Lstm { input_forget: false } => &[Sigmoid, Tanh, Tanh],
        RnnKind::Gru { .. } => &[Sigmoid, Tanh],
        _ => return Err("only LSTM (without coupled input-forget gates) and GRU run hybrid"),
    };
    if r.direction == RnnDirection::Bidirectional || r.batch_major {
        return Err("bidirectional and batch-major recurrent layers keep float weights");
    }
    if r.activations != defaults || r.clip.is_some() {
        return Err("recurrent layers with custom activations or clipping keep float weights");
    }
    if node.inputs.len() > 6 {
        return Err("LSTM peepholes keep float weights");
    }
    if !node.inputs[1..4].iter().all(|&v| g.const_value(v).is_some()) {
        return Err("its weights are not constants");
    }
    if g.value(node.inputs[0]).ty.shape[0] > MAX_UNROLL {
        return Err("sequences longer than 64 steps keep float weights");
    }
    Ok(())
}

/// A weight in int8 and its per-channel scales.
type IntWeight = (ValueId, Arc<[f32]>);
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
            Op::Rnn(r) => match unrollable(&self.g, &node, r) {
                Ok(()) => self.unroll(n, r),
                Err(why) => {
                    self.note(&node.name, why);
                    Ok(())
                }
            },
            _ => Ok(()),
        }
    }

    /// Adds one node and returns its first output.
    fn op(&mut self, base: &str, op: Op, inputs: Vec<ValueId>) -> Result<ValueId, IrError> {
        let name = self.g.fresh_name(base);
        Ok(self.g.add_node(&name, op, inputs, &[])?.1[0])
    }

    fn bin(&mut self, base: &str, b: BinaryOp, x: ValueId, y: ValueId) -> Result<ValueId, IrError> {
        self.op(base, Op::Binary(b), vec![x, y])
    }

    fn un(&mut self, base: &str, u: UnaryOp, x: ValueId) -> Result<ValueId, IrError> {
        self.op(base, Op::Unary(u), vec![x])
    }

    fn reshape(&mut self, base: &str, x: ValueId, shape: Vec<usize>) -> Result<ValueId, IrError> {
        self.op(base, Op::Reshape { shape }, vec![x])
    }

    /// Rows `[start, start + len)` of axis `axis` of `x`.
    fn slice(&mut self, base: &str, x: ValueId, axis: usize, start: usize, len: usize) -> Result<ValueId, IrError> {
        let axes = (self.g.value(x).ty.shape.clone().into_iter().enumerate())
            .map(|(a, d)| {
                let (s, l) = if a == axis { (start, len) } else { (0, d) };
                SliceAxis {
                    start: s as i64,
                    step: 1,
                    len: l,
                }
            })
            .collect();
        self.op(base, Op::Slice { axes }, vec![x])
    }

    /// Rows `r0..r1` of the constant `m` (`[rows, K]` row-major, one output per row) as the
    /// int8 `[K, r1 - r0]` weight of a hybrid product.
    fn matrix(&mut self, base: &str, m: &[f32], k: usize, (r0, r1): (usize, usize)) -> IntWeight {
        let t: Vec<f32> = (0..k * (r1 - r0))
            .map(|i| m[(r0 + i % (r1 - r0)) * k + i / (r1 - r0)])
            .collect();
        let (q, scales) = per_channel(&t, r1 - r0, |i| i % (r1 - r0));
        self.bytes_f32 += t.len() * 4;
        self.bytes_int8 += t.len() + 4 * (r1 - r0);
        let mut qt = Tensor::from_vec(vec![k, r1 - r0], q);
        qt.quant = Some(QParams::PerAxis {
            axis: 1,
            scales: scales.clone().into(),
            zero_points: vec![0; r1 - r0].into(),
        });
        let wname = self.g.fresh_name(&format!("{base}:int8"));
        (self.g.add_const(&wname, qt), scales.into())
    }

    fn product(&mut self, base: &str, x: ValueId, (w, scales): &IntWeight) -> Result<ValueId, IrError> {
        let op = Op::DynMatMul {
            weight_scales: scales.clone(),
            block: 0,
            weight_bits: 8,
        };
        self.op(base, op, vec![x, *w])
    }

    fn constant(&mut self, base: &str, shape: Vec<usize>, v: Vec<f32>) -> ValueId {
        let name = self.g.fresh_name(base);
        self.g.add_const(&name, Tensor::from_vec(shape, v))
    }

    /// An LSTM or GRU (one direction, time-major, default activations) written out step by
    /// step in float ops around hybrid products: the input projection of all steps at once
    /// (each row quantized on its own, as step by step), the recurrent one per step.
    fn unroll(&mut self, n: NodeId, r: &Rnn) -> Result<(), IrError> {
        let node = self.g.node(n).clone();
        let base = node.name.clone();
        let xs = self.g.value(node.inputs[0]).ty.shape.clone();
        let (seq, batch, isz, h) = (xs[0], xs[1], xs[2], r.hidden);
        let lstm = matches!(r.kind, RnnKind::Lstm { .. });
        let gates = if lstm { 4 } else { 3 };
        let cf = |g: &Graph, i: usize| g.const_value(node.inputs[i]).expect("checked constant").to_f32_vec();
        let (w, rw, b) = (cf(&self.g, 1), cf(&self.g, 2), cf(&self.g, 3));
        let gx_all = {
            let x2 = self.reshape(&base, node.inputs[0], vec![seq * batch, isz])?;
            let wq = self.matrix(&format!("{base}/W"), &w, isz, (0, gates * h));
            let p = self.product(&base, x2, &wq)?;
            self.reshape(&base, p, vec![seq, batch, gates * h])?
        };
        // recurrent weights (LSTM: all four gates; GRU: z and r, then h) and summed biases
        let rq = self.matrix(&format!("{base}/R"), &rw, h, (0, if lstm { 4 * h } else { 2 * h }));
        let rq_h = (!lstm).then(|| self.matrix(&format!("{base}/Rh"), &rw, h, (2 * h, 3 * h)));
        let g_bias: Vec<f32> = (0..gates * h).map(|j| b[j] + b[gates * h + j]).collect();
        let bv = if lstm {
            self.constant(&format!("{base}/B"), vec![4 * h], g_bias.clone())
        } else {
            self.constant(&format!("{base}/B"), vec![2 * h], g_bias[..2 * h].to_vec())
        };
        // GRU's h gate: the W and R biases apart (linear_before_reset) or summed
        let gru_bias = (!lstm).then(|| {
            (
                self.constant(&format!("{base}/Wbh"), vec![h], b[2 * h..3 * h].to_vec()),
                self.constant(&format!("{base}/Rbh"), vec![h], b[5 * h..6 * h].to_vec()),
                self.constant(&format!("{base}/Bh"), vec![h], g_bias[2 * h..3 * h].to_vec()),
            )
        });
        let mut hs = self.reshape(&base, node.inputs[4], vec![batch, h])?;
        let mut cs = if lstm {
            Some(self.reshape(&base, node.inputs[5], vec![batch, h])?)
        } else {
            None
        };
        let one = self.constant(&format!("{base}/one"), vec![1], vec![1.0]);
        let mut ys = vec![None; seq];
        for s in 0..seq {
            let t = if r.direction == RnnDirection::Reverse {
                seq - 1 - s
            } else {
                s
            };
            let gx = self.slice(&base, gx_all, 0, t, 1)?;
            let gx = self.reshape(&base, gx, vec![batch, gates * h])?;
            let split = |me: &mut Self, v: ValueId, parts: usize| -> Result<Vec<ValueId>, IrError> {
                let name = me.g.fresh_name(&base);
                Ok(me
                    .g
                    .add_node(
                        &name,
                        Op::Split {
                            axis: 1,
                            sizes: vec![h; parts],
                        },
                        vec![v],
                        &[],
                    )?
                    .1)
            };
            if let Some(c) = cs {
                // gates i, o, f, c (ONNX order)
                let gh = self.product(&base, hs, &rq)?;
                let pre = self.bin(&base, BinaryOp::Add, gx, gh)?;
                let pre = self.bin(&base, BinaryOp::Add, pre, bv)?;
                let g = split(self, pre, 4)?;
                let i = self.un(&base, UnaryOp::Sigmoid, g[0])?;
                let o = self.un(&base, UnaryOp::Sigmoid, g[1])?;
                let f = self.un(&base, UnaryOp::Sigmoid, g[2])?;
                let cand = self.un(&base, UnaryOp::Tanh, g[3])?;
                let fc = self.bin(&base, BinaryOp::Mul, f, c)?;
                let ic = self.bin(&base, BinaryOp::Mul, i, cand)?;
                let c = self.bin(&base, BinaryOp::Add, fc, ic)?;
                let tc = self.un(&base, UnaryOp::Tanh, c)?;
                hs = self.bin(&base, BinaryOp::Mul, o, tc)?;
                cs = Some(c);
            } else {
                let RnnKind::Gru { linear_before_reset } = r.kind else {
                    unreachable!("LSTM or GRU")
                };
                // gates z, r, h (ONNX order)
                let g = split(self, gx, 3)?;
                let rq_h = rq_h.as_ref().expect("GRU");
                let (wbh, rbh, bh) = gru_bias.expect("GRU");
                let gh_zr = self.product(&base, hs, &rq)?;
                let gx_zr = self.op(&base, Op::Concat { axis: 1 }, vec![g[0], g[1]])?;
                let pre = self.bin(&base, BinaryOp::Add, gx_zr, gh_zr)?;
                let pre = self.bin(&base, BinaryOp::Add, pre, bv)?;
                let zr = self.un(&base, UnaryOp::Sigmoid, pre)?;
                let zr = split(self, zr, 2)?;
                let (z, rg) = (zr[0], zr[1]);
                let cand_pre = if linear_before_reset {
                    let gh_h = self.product(&base, hs, rq_h)?;
                    let gh_h = self.bin(&base, BinaryOp::Add, gh_h, rbh)?;
                    let rgh = self.bin(&base, BinaryOp::Mul, rg, gh_h)?;
                    let xh = self.bin(&base, BinaryOp::Add, g[2], wbh)?;
                    self.bin(&base, BinaryOp::Add, xh, rgh)?
                } else {
                    let rh = self.bin(&base, BinaryOp::Mul, rg, hs)?;
                    let gh_h = self.product(&base, rh, rq_h)?;
                    let pre = self.bin(&base, BinaryOp::Add, g[2], gh_h)?;
                    self.bin(&base, BinaryOp::Add, pre, bh)?
                };
                let cand = self.un(&base, UnaryOp::Tanh, cand_pre)?;
                let keep = self.bin(&base, BinaryOp::Sub, one, z)?;
                let a = self.bin(&base, BinaryOp::Mul, keep, cand)?;
                let zb = self.bin(&base, BinaryOp::Mul, z, hs)?;
                hs = self.bin(&base, BinaryOp::Add, a, zb)?;
            }
            ys[t] = Some(self.reshape(&base, hs, vec![1, 1, batch, h])?);
        }
        let ys: Vec<ValueId> = ys.into_iter().map(|y| y.expect("every step")).collect();
        let y = if ys.len() == 1 {
            ys[0]
        } else {
            self.op(&base, Op::Concat { axis: 0 }, ys)?
        };
        let mut results = vec![y, self.reshape(&base, hs, vec![1, batch, h])?];
        if let Some(c) = cs {
            results.push(self.reshape(&base, c, vec![1, batch, h])?);
        }
        for (&old, new) in node.outputs.iter().zip(results) {
            let name = self.g.value(old).name.clone();
            self.g.replace_uses(old, new);
            self.g.rename(new, &name);
        }
        self.g.remove_node(n);
        Ok(())
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

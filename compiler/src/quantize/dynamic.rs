//! Hybrid (dynamic-range) int8: the constant weights of Conv, Gemm and MatMul become int8,
//! symmetric per output channel, while activations, biases and every other op stay f32.
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
    /// Bytes of the converted weights as f32, and as int8 plus one f32 scale per channel.
    pub bytes_f32: usize,
    pub bytes_int8: usize,
    /// Ops with weights that stay float, and why.
    pub notes: Vec<String>,
}

/// Rewrites every Conv (1-D/2-D), MatMul and Gemm whose weight is a constant f32 matrix,
/// except nodes named in `keep_float` by name or op type (case-insensitive), which the
/// caller has checked exist (`quantize_static::check_keep_float`).
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

/// A weight in int8 and its per-channel scales.
type IntWeight = (ValueId, Arc<[f32]>);

struct Rewriter {
    g: Graph,
    /// Quantized weights by (float weight, transposed), shared between nodes.
    weights: HashMap<(ValueId, bool), IntWeight>,
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
                let (wq, scales) = self.weight(w, &wt, false, true)?;
                let op = Op::DynConv {
                    window: c.window.clone(),
                    group: c.group,
                    weight_scales: scales,
                };
                // the bias as [M, 1, ...] against the NC* output
                let bias = node.inputs.get(2).map(|&b| (b, rank - 1));
                self.replace(n, op, vec![x, wq], bias, 1.0, c.fused)
            }
            Op::MatMul if wt.shape.len() == 2 => {
                let (wq, scales) = self.weight(w, &wt, false, false)?;
                self.replace(n, Op::DynMatMul { weight_scales: scales }, vec![x, wq], None, 1.0, None)
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
                let (wq, scales) = self.weight(w, &wt, trans_b, false)?;
                let scales: Arc<[f32]> = scales.iter().map(|&s| s * alpha).collect();
                let op = Op::DynMatMul { weight_scales: scales };
                self.replace(n, op, vec![x, wq], c.map(|c| (c, 0)), beta, fused)
            }
            Op::Rnn(_) => {
                self.note(&node.name, "recurrent layers keep float weights in hybrid mode");
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn note(&mut self, node: &str, why: &str) {
        self.notes.push(format!("node `{node}` stays float: {why}"));
    }

    /// The int8 form of weight `w` (`[K, N]` after an optional transpose, or `[M, ...]`
    /// for a convolution), per output channel, shared between nodes reading it.
    fn weight(
        &mut self,
        w: ValueId,
        t: &Tensor,
        transpose: bool,
        conv: bool,
    ) -> Result<(ValueId, Arc<[f32]>), IrError> {
        if let Some(done) = self.weights.get(&(w, transpose)) {
            return Ok(done.clone());
        }
        let mut vals = t.to_f32_vec();
        let mut shape = t.shape.clone();
        if transpose {
            let (r, c) = (shape[0], shape[1]);
            vals = (0..c * r).map(|i| vals[(i % r) * c + i / r]).collect();
            shape = vec![c, r];
        }
        let channels = shape[if conv { 0 } else { 1 }];
        let per = vals.len() / channels.max(1);
        let (q, scales) = if conv {
            per_channel(&vals, channels, |i| i / per)
        } else {
            per_channel(&vals, channels, |i| i % channels)
        };
        let mut qt = Tensor::from_vec(shape, q);
        qt.quant = Some(QParams::PerAxis {
            axis: if conv { 0 } else { 1 },
            scales: scales.clone().into(),
            zero_points: vec![0; channels].into(),
        });
        self.bytes_f32 += vals.len() * 4;
        self.bytes_int8 += vals.len() + 4 * channels;
        let name = self.g.fresh_name(&format!("{}:int8", self.g.value(w).name));
        let v = self.g.add_const(&name, qt);
        let done = (v, Arc::from(scales));
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

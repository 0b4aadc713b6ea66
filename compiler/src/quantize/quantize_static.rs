//! Rewrites a calibrated float graph into an integer one (TFLite's full-integer scheme):
//! activations int8 asymmetric per tensor from their calibrated range, weights int8
//! symmetric per output channel, biases int32 at `s_in * s_w`, a fused ReLU/Clip folded into
//! the output clamp, and every one-input elementwise function turned into a 256-entry table
//! computed here with the evaluator's own float kernel. Data movement (reshape, transpose,
//! max/average pooling) runs on int8 with its input's scale and zero point.
//!
//! Anything else stays float, with Quantize/Dequantize inserted where integer and float
//! parts meet; the returned notes say which nodes and why. The graph keeps its float
//! inputs and outputs: Quantize at each input, Dequantize at each output.
//!
//! A range that collapses to a point (a tensor that is constant zero on the calibration
//! data) gets scale 1e-6, which represents it exactly.

use super::calibrate::Ranges;
use super::{QuantError, QuantOptions};
use kiln_ir::op::Numerics;
use kiln_ir::op::{BinaryOp, PoolKind, QAdd, QLinear, QMul, QPRelu, ReduceKind, UnaryOp};
use kiln_ir::{DType, Graph, NodeId, Op, QParams, Scalar, Tensor, TensorType, ValueDef, ValueId};
use kiln_runtime as rt;
use std::collections::HashMap;
use std::sync::Arc;

/// The words every note about a node left in float carries (`--strict-integer` looks for them).
pub const STAYS_FLOAT: &str = "stays float";

/// Scale, zero point and width (8 or 16 bits) of a per-tensor integer value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Q {
    pub scale: f32,
    pub zp: i32,
    pub bits: u8,
}

impl Q {
    pub fn new(scale: f32, zp: i32, bits: u8) -> Q {
        Q { scale, zp, bits }
    }

    fn int8(scale: f32, zp: i32) -> Q {
        Q { scale, zp, bits: 8 }
    }

    fn scalar(self) -> Scalar {
        if self.bits == 16 { Scalar::I16 } else { Scalar::I8 }
    }

    fn dtype(self) -> DType {
        DType::quantized(
            self.scalar(),
            QParams::PerTensor {
                scale: self.scale,
                zero_point: self.zp,
            },
        )
    }

    fn range(self) -> (i32, i32) {
        if self.bits == 16 { (-32768, 32767) } else { (-128, 127) }
    }

    fn quantize(self, x: f32) -> i32 {
        let (lo, hi) = self.range();
        rt::quantize(x, self.scale, self.zp, lo, hi)
    }
}

/// Asymmetric int8 parameters covering `[lo, hi]` and zero.
pub fn activation_params(lo: f32, hi: f32) -> Q {
    let (lo, hi) = (lo.min(0.0) as f64, hi.max(0.0) as f64);
    let mut scale = (hi - lo) / 255.0;
    if scale.is_nan() || scale <= 0.0 {
        scale = 1e-6;
    }
    let scale = scale as f32;
    let zp = (-128.0 - lo / scale as f64).round().clamp(-128.0, 127.0) as i32;
    Q::int8(scale, zp)
}

/// Symmetric int16 parameters covering `[lo, hi]` (zero point 0, TFLite's 16x8 scheme).
pub fn activation_params16(lo: f32, hi: f32) -> Q {
    let m = (lo.abs().max(hi.abs())) as f64;
    let scale = if m > 0.0 && m.is_finite() {
        (m / 32767.0) as f32
    } else {
        1e-6
    };
    Q { scale, zp: 0, bits: 16 }
}

struct Rewriter<'a> {
    src: &'a Graph,
    ranges: &'a Ranges,
    /// Parameters fixed by the model itself (QDQ pairs), which take precedence over ranges.
    pins: &'a HashMap<ValueId, Q>,
    opts: &'a QuantOptions,
    dst: Graph,
    float: HashMap<ValueId, ValueId>,
    /// The integer version each value was computed in (int8, or int16 from a 16x8 layer).
    int: HashMap<ValueId, (ValueId, Q)>,
    /// Versions in the other width, requantized through float where widths meet.
    other: HashMap<(ValueId, u8), (ValueId, Q)>,
    /// Values that are one-input functions of an int8, not yet made into a table because
    /// their only reader is another such function (`table`).
    pending: HashMap<ValueId, Pending>,
    notes: Vec<String>,
}

/// One function of a table: the op and, for a binary op, its constant operand and slot.
type Step = (Op, Option<(usize, Tensor)>);

/// A chain of one-input functions waiting to become one table: the node that ends it, the
/// int8 value it starts from and that value's parameters.
struct Pending {
    node: NodeId,
    from: ValueId,
    px: Q,
    steps: Vec<Step>,
}

/// The rewritten graph and a note per node left in float.
pub struct Quantized {
    pub graph: Graph,
    pub notes: Vec<String>,
}

/// A `--keep-float` that matches nothing is a typo, not a request to do nothing.
pub fn check_keep_float(src: &Graph, opts: &QuantOptions) -> Result<(), QuantError> {
    let int16 = opts.int16.iter().filter(|k| !k.eq_ignore_ascii_case("all"));
    for k in opts.keep_float.iter().chain(int16) {
        let hit = src
            .node_ids()
            .any(|n| src.node(n).name == *k || src.node(n).op.name().eq_ignore_ascii_case(k));
        if !hit {
            return Err(QuantError::NoSuchNode(k.clone()));
        }
    }
    Ok(())
}

pub fn run(src: &Graph, ranges: &Ranges, opts: &QuantOptions) -> Result<Quantized, QuantError> {
    run_pinned(src, ranges, &HashMap::new(), opts)
}

/// [`run`] with some values' parameters fixed in advance (a model's own QDQ parameters).
/// A node whose values have neither a pin nor a range then stays float, with a note.
pub fn run_pinned(
    src: &Graph,
    ranges: &Ranges,
    pins: &HashMap<ValueId, Q>,
    opts: &QuantOptions,
) -> Result<Quantized, QuantError> {
    check_keep_float(src, opts)?;
    let mut r = Rewriter {
        src,
        ranges,
        pins,
        opts,
        dst: Graph::new(src.name.clone()),
        float: HashMap::new(),
        int: HashMap::new(),
        other: HashMap::new(),
        pending: HashMap::new(),
        notes: Vec::new(),
    };
    for &v in src.inputs() {
        let nv = r.dst.add_input(&src.value(v).name, src.value(v).ty.clone());
        r.float.insert(v, nv);
    }
    // An input that only feeds layout ops (a transpose to NCHW, a reshape, a pad, a slice)
    // on their way to integer ops is quantized first, so the layout ops move int8 and the
    // model's integer entry point takes the input as it is.
    for &v in src.inputs() {
        let mut reached = Vec::new();
        if feeds_integer_ops(src, v, 8, &mut reached)
            && (ranges.by_value.contains_key(&v) || pins.contains_key(&v))
            && src.value(v).ty.dtype.scalar == Scalar::F32
        {
            // At the width of the layers it reaches (16x8 ones get all 16 bits of the input),
            // and 16 bits when a part selected from it spans under 1/16 of its range (a
            // state tensor holding values of different magnitudes): the part is then
            // requantized to int8 at its own scale, losing nothing to the whole's scale.
            let span = |v: ValueId| ranges.by_value.get(&v).map(|&(lo, hi)| hi as f64 - lo as f64);
            let narrow = (span(v), pins.is_empty());
            let narrow = matches!(narrow, (Some(s), true) if reached.iter().any(|&(_, e)| span(e).is_some_and(|p| p * 16.0 < s)));
            let wide = narrow || reached.iter().all(|&(m, _)| r.width(m) == 16);
            r.int_bits(v, pins.get(&v).map_or(if wide { 16 } else { 8 }, |p| p.bits))?;
        }
    }
    for n in src.topo_order().map_err(QuantError::Ir)? {
        r.node(n)?;
    }
    let outs: Vec<ValueId> = src
        .outputs()
        .iter()
        .map(|&v| r.output_of(v))
        .collect::<Result<_, _>>()?;
    r.dst.set_outputs(outs);
    // a node that stayed float after trying integer inputs leaves unused Quantize nodes
    crate::passes::eliminate_dead_nodes::run(&mut r.dst).map_err(QuantError::Ir)?;
    crate::passes::fold_clamp_tables::run(&mut r.dst).map_err(QuantError::Ir)?;
    crate::passes::flatten_full_window_convs::run(&mut r.dst).map_err(QuantError::Ir)?;
    if let Some(n) = opts.numerics {
        super::set_numerics(&mut r.dst, n);
    }
    kiln_ir::verify::verify(&r.dst).map_err(QuantError::Ir)?;
    Ok(Quantized {
        graph: r.dst,
        notes: r.notes,
    })
}

impl Rewriter<'_> {
    fn name(&self, v: ValueId) -> String {
        self.src.value(v).name.clone()
    }

    /// The float version of `v`, dequantizing its integer version if that is all there is.
    fn float_of(&mut self, v: ValueId) -> Result<ValueId, QuantError> {
        self.flush(v)?;
        if let Some(&f) = self.float.get(&v) {
            return Ok(f);
        }
        let f = if let ValueDef::Const(t) = &self.src.value(v).def {
            self.dst.add_const(&self.name(v), (**t).clone())
        } else {
            let (q, p) = *self
                .int
                .get(&v)
                .ok_or_else(|| QuantError::Internal(format!("`{}` has no value", self.name(v))))?;
            let ty = TensorType::new(DType::plain(Scalar::F32), self.src.value(v).ty.shape.clone());
            let name = self.name(v);
            self.dst
                .add_node_typed(
                    &format!("{name}:dequantize"),
                    Op::Dequantize {
                        scale: p.scale,
                        zero_point: p.zp,
                    },
                    vec![q],
                    vec![(name, ty)],
                )
                .1[0]
        };
        self.float.insert(v, f);
        Ok(f)
    }

    /// The value the rewritten graph outputs for `v`: its float version, or for an integer
    /// output (a model that ends in QuantizeLinear) its integer version.
    fn output_of(&mut self, v: ValueId) -> Result<ValueId, QuantError> {
        if self.src.value(v).ty.dtype.scalar.is_float() {
            return self.float_of(v);
        }
        match self.int.get(&v) {
            Some(&(q, _)) => Ok(q),
            None => self.float_of(v),
        }
    }

    /// The int8 version of `v`.
    fn int_of(&mut self, v: ValueId) -> Result<(ValueId, Q), QuantError> {
        self.int_bits(v, 8)
    }

    /// Whether `v` was computed as int8 (so layout ops can move it as it is).
    /// The `bits`-wide integer version of `v`: as computed, else a quantized constant, a
    /// `Requant` of the other width's version, or a Quantize of its float version.
    fn int_bits(&mut self, v: ValueId, bits: u8) -> Result<(ValueId, Q), QuantError> {
        self.flush(v)?;
        if let Some(&q) = self.int.get(&v) {
            if q.1.bits == bits {
                return Ok(q);
            }
            if let Some(&q) = self.other.get(&(v, bits)) {
                return Ok(q);
            }
        }
        let params = |lo: f32, hi: f32| {
            if bits == 16 {
                activation_params16(lo, hi)
            } else {
                activation_params(lo, hi)
            }
        };
        let name = self.name(v);
        let res = if let ValueDef::Const(t) = &self.src.value(v).def {
            let x = t.to_f32_vec();
            let lo = x.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            // a constant the model quantized itself keeps its integers
            let p = match t.quant {
                Some(QParams::PerTensor { scale, zero_point }) if bits == 8 && (-128..=127).contains(&zero_point) => {
                    Q::int8(scale, zero_point)
                }
                _ => params(lo, hi),
            };
            let q: Vec<i32> = x.iter().map(|&e| p.quantize(e)).collect();
            let mut qt = if bits == 16 {
                Tensor::from_vec(t.shape.clone(), q.iter().map(|&e| e as i16).collect::<Vec<_>>())
            } else {
                Tensor::from_vec(t.shape.clone(), q.iter().map(|&e| e as i8).collect::<Vec<_>>())
            };
            qt.quant = p.dtype().quant;
            (self.dst.add_const(&self.dst.fresh_name(&format!("{name}:q")), qt), p)
        } else {
            let p = match self.pins.get(&v) {
                Some(&p) if p.bits == bits => p,
                // the model fixed the other width and gives no range for this one
                Some(&p) if !self.ranges.by_value.contains_key(&v) => {
                    return Err(QuantError::Width(name.clone(), p.bits));
                }
                _ => {
                    let &(lo, hi) = self
                        .ranges
                        .by_value
                        .get(&v)
                        .ok_or_else(|| QuantError::NoRange(name.clone()))?;
                    params(lo, hi)
                }
            };
            let ty = TensorType::new(p.dtype(), self.src.value(v).ty.shape.clone());
            // from the other width: an integer rescale, no float in between
            let other = self.int.get(&v).copied();
            if let Some((iv, ip)) = other
                && let Some(r) = rt::quantize_multiplier(ip.scale as f64 / p.scale as f64)
            {
                let op = Op::Requant {
                    to: p.scalar(),
                    input_zp: ip.zp,
                    requant: r,
                    scale: p.scale,
                    zero_point: p.zp,
                };
                let q = self
                    .dst
                    .add_node_typed(
                        &format!("{name}:requant{bits}"),
                        op,
                        vec![iv],
                        vec![(format!("{name}:q{bits}"), ty)],
                    )
                    .1[0];
                self.other.insert((v, bits), (q, p));
                return Ok((q, p));
            }
            let f = self.float_of(v)?;
            let suffix = if self.int.contains_key(&v) {
                format!(":q{bits}")
            } else {
                ":q".into()
            };
            let q = self
                .dst
                .add_node_typed(
                    &format!("{name}:quantize{}", if bits == 16 { "16" } else { "" }),
                    Op::Quantize {
                        to: p.scalar(),
                        scale: p.scale,
                        zero_point: p.zp,
                    },
                    vec![f],
                    vec![(format!("{name}{suffix}"), ty)],
                )
                .1[0];
            (q, p)
        };
        match self.int.entry(v) {
            std::collections::hash_map::Entry::Occupied(_) => {
                self.other.insert((v, bits), res);
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(res);
            }
        }
        Ok(res)
    }

    fn out_params(&self, v: ValueId) -> Result<Q, QuantError> {
        self.out_params_bits(v, 8)
    }

    fn out_params_bits(&self, v: ValueId, bits: u8) -> Result<Q, QuantError> {
        if let Some(&p) = self.pins.get(&v)
            && p.bits == bits
        {
            return Ok(p);
        }
        let &(lo, hi) = self
            .ranges
            .by_value
            .get(&v)
            .ok_or_else(|| QuantError::NoRange(self.name(v)))?;
        Ok(if bits == 16 {
            activation_params16(lo, hi)
        } else {
            activation_params(lo, hi)
        })
    }

    /// The activation width of node `n`'s products: the model's when it fixes the output's
    /// parameters, else 16 when `--int16` names it.
    fn width(&self, n: NodeId) -> u8 {
        let node = self.src.node(n);
        if let Some(p) = node.outputs.first().and_then(|o| self.pins.get(o)) {
            return p.bits;
        }
        let hit = self
            .opts
            .int16
            .iter()
            .any(|k| *k == node.name || k.eq_ignore_ascii_case(node.op.name()) || k.eq_ignore_ascii_case("all"));
        if hit { 16 } else { 8 }
    }

    /// Adds an integer node producing the int8 version of `out`.
    /// `x` (uint8 or int8) plus `by` (±128) in type `to`, through int16: the exact move
    /// between a uint8 grid and the same grid in int8 terms.
    fn offset_u8(&mut self, x: ValueId, name: &str, to: Scalar, by: i16) -> ValueId {
        let shape = self.dst.value(x).ty.shape.clone();
        let step = |g: &mut Graph, what: &str, op: Op, ins: Vec<ValueId>, s: Scalar| {
            let n = g.fresh_name(&format!("{name}:{what}"));
            g.add_node_typed(&n, op, ins, vec![(n.clone(), TensorType::new(s, shape.clone()))])
                .1[0]
        };
        let wide = step(
            &mut self.dst,
            "wide",
            Op::Cast { to: Scalar::I16 },
            vec![x],
            Scalar::I16,
        );
        let c = self.dst.fresh_name(&format!("{name}:offset"));
        let c = self.dst.add_const(&c, Tensor::from_vec(vec![], vec![by]));
        let moved = step(
            &mut self.dst,
            "moved",
            Op::Binary(BinaryOp::Add),
            vec![wide, c],
            Scalar::I16,
        );
        step(&mut self.dst, "narrow", Op::Cast { to }, vec![moved], to)
    }

    fn emit_int(&mut self, n: NodeId, op: Op, inputs: Vec<ValueId>, out: ValueId, p: Q) {
        let node = self.src.node(n);
        let ty = TensorType::new(p.dtype(), self.src.value(out).ty.shape.clone());
        let name = format!("{}:q", self.name(out));
        let v = self.dst.add_node_typed(&node.name, op, inputs, vec![(name, ty)]).1[0];
        self.int.insert(out, (v, p));
    }

    fn keep_float(&mut self, n: NodeId, why: &str) -> Result<(), QuantError> {
        let node = self.src.node(n).clone();
        if !why.is_empty() {
            self.notes.push(format!(
                "node `{}` ({}) {STAYS_FLOAT}: {why}",
                node.name,
                node.op.name()
            ));
        }
        let ins: Vec<ValueId> = node
            .inputs
            .iter()
            .map(|&v| self.float_of(v))
            .collect::<Result<_, _>>()?;
        let outs: Vec<(String, TensorType)> = node
            .outputs
            .iter()
            .map(|&o| (self.name(o), self.src.value(o).ty.clone()))
            .collect();
        let (_, new) = self.dst.add_node_typed(&node.name, node.op.clone(), ins, outs);
        for (&o, nv) in node.outputs.iter().zip(new) {
            self.float.insert(o, nv);
        }
        Ok(())
    }

    fn node(&mut self, n: NodeId) -> Result<(), QuantError> {
        match self.node_int(n) {
            // a model with its own parameters may leave values unquantized on purpose
            Err(QuantError::NoRange(v)) if !self.pins.is_empty() => {
                self.keep_float(n, &format!("the model gives no quantization parameters for `{v}`"))
            }
            Err(QuantError::Width(v, bits)) => self.keep_float(
                n,
                &format!("the model quantizes `{v}` to {bits} bits, which this op's integer kernel does not take"),
            ),
            r => r,
        }
    }

    fn node_int(&mut self, n: NodeId) -> Result<(), QuantError> {
        let node = self.src.node(n).clone();
        let out = node.outputs[0];
        match &node.op {
            // a model with int8 (or 16x8's int16) inputs, maybe moved by layout ops: already
            // the integer version
            Op::Dequantize { scale, zero_point }
                if self.float.contains_key(&node.inputs[0])
                    && int_width(self.src.value(node.inputs[0]).ty.dtype.scalar, *zero_point).is_some() =>
            {
                let x = self.float[&node.inputs[0]];
                let bits = int_width(self.src.value(node.inputs[0]).ty.dtype.scalar, *zero_point).expect("checked");
                self.int.insert(out, (x, Q::new(*scale, *zero_point, bits)));
            }
            // a model with uint8 inputs (TFLite's older quantization): moved to int8 exactly
            Op::Dequantize { scale, zero_point }
                if self.src.value(node.inputs[0]).ty.dtype.scalar == Scalar::U8
                    && self.float.contains_key(&node.inputs[0]) =>
            {
                let x = self.float[&node.inputs[0]];
                let v = self.offset_u8(x, &node.name, Scalar::I8, -128);
                self.int.insert(out, (v, Q::int8(*scale, *zero_point - 128)));
            }
            // a model with uint8 outputs: the int8 value moved back
            Op::Quantize {
                to: Scalar::U8,
                scale,
                zero_point,
            } if self
                .int
                .get(&node.inputs[0])
                .is_some_and(|(_, q)| *q == Q::int8(*scale, *zero_point - 128)) =>
            {
                let (x, _) = self.int[&node.inputs[0]];
                let v = self.offset_u8(x, &node.name, Scalar::U8, 128);
                self.float.insert(out, v);
                return Ok(());
            }
            // a model with int8 (int16) outputs: the value at the model's parameters, as it is
            Op::Quantize { to, scale, zero_point }
                if int_width(*to, *zero_point).is_some_and(|bits| {
                    self.int
                        .get(&node.inputs[0])
                        .is_some_and(|(_, q)| *q == Q::new(*scale, *zero_point, bits))
                }) =>
            {
                let q = self.int[&node.inputs[0]];
                self.int.insert(out, q);
            }
            // an int8 value moved to other int8 parameters (a requantization): a table
            Op::Quantize {
                to: Scalar::I8,
                scale,
                zero_point,
            } if self.int.get(&node.inputs[0]).is_some_and(|(_, q)| q.bits == 8) => {
                let (x, px) = self.int[&node.inputs[0]];
                let po = Q::int8(*scale, *zero_point);
                let table = match self.opts.numerics {
                    Some(Numerics::Tflite) => super::tflite_tables::requantize(px, po),
                    _ => None,
                };
                let op = match table {
                    Some(t) => table_op(t.into(), po),
                    None => lut(&[(Op::Identity, None)], px, po, None)?,
                };
                self.emit_int(n, op, vec![x], out, po);
            }
            _ => {}
        }
        if self.int.contains_key(&out) {
            return Ok(());
        }
        let moves = matches!(
            node.op,
            Op::Pool(_) | Op::GlobalPool(_) | Op::Reshape { .. } | Op::Transpose { .. } | Op::Pad { .. }
        );
        if !self.pins.is_empty() && !moves && !node.outputs.iter().all(|o| self.pins.contains_key(o)) {
            return self.keep_float(n, "the model leaves its output in float");
        }
        if self
            .opts
            .keep_float
            .iter()
            .any(|k| *k == node.name || k.eq_ignore_ascii_case(node.op.name()))
        {
            return self.keep_float(n, "asked for by --keep-float");
        }
        // a Gather's indices are integers
        let f32_in = (node.inputs.iter().enumerate()).all(|(i, &v)| {
            self.src.value(v).ty.dtype.scalar == Scalar::F32 || (i == 1 && matches!(node.op, Op::Gather { .. }))
        });
        if !f32_in {
            return self.keep_float(n, "");
        }
        if node.outputs.len() != 1 {
            return self.keep_float(n, "no integer kernel for this op yet");
        }
        match &node.op {
            Op::Conv(_) | Op::Gemm { .. } | Op::MatMul => self.int_product(n, &node),
            Op::Binary(_) | Op::Reduce { .. } | Op::Unary(_) => self.int_pointwise(n, &node),
            Op::Softmax { .. }
            | Op::Pad { .. }
            | Op::Concat { .. }
            | Op::Pool(_)
            | Op::GlobalPool(_)
            | Op::Reshape { .. }
            | Op::Transpose { .. }
            | Op::Slice { .. }
            | Op::Gather { .. } => self.int_layout(n, &node),
            _ => self.keep_float(n, "no integer kernel for this op yet"),
        }
    }

    /// Convolutions and products (int8 or 16x8, per-channel weights).
    fn int_product(&mut self, n: NodeId, node: &kiln_ir::Node) -> Result<(), QuantError> {
        let out = node.outputs[0];
        let cst = |i: usize| node.inputs.get(i).and_then(|&v| self.src.const_value(v)).cloned();
        match &node.op {
            Op::Conv(c) => {
                let Some(act) = fused_clamp(c.fused) else {
                    return self.keep_float(n, "its fused activation is not ReLU or Clip");
                };
                let Some(w) = cst(1) else {
                    return self.keep_float(n, "its weights are not constant");
                };
                let bias = match node.inputs.get(2) {
                    Some(_) => match cst(2) {
                        Some(b) => Some(b),
                        None => return self.keep_float(n, "its bias is not constant"),
                    },
                    None => None,
                };
                let bits = self.width(n);
                let (x, px) = self.int_bits(node.inputs[0], bits)?;
                let po = self.out_params_bits(out, bits)?;
                let m = w.shape[0];
                let per = w.numel() / m;
                let grid = model_grid(&mut self.notes, &node.name, &w, 0);
                let (wq, ws, wbits) = self.weights(&node.name, &w.to_f32_vec(), grid, m, |i| i / per);
                let wname = format!("{}:q", self.name(node.inputs[1]));
                let wv = self.add_weights(&wname, w.shape.clone(), wq, &ws, 0);
                let mut ins = vec![x, wv];
                if let Some(b) = bias {
                    ins.push(self.add_bias(node.inputs[2], &b.to_f32_vec(), px, &ws));
                }
                let q = self.qlinear(&node.name, px, po, &ws, act, wbits)?;
                self.emit_int(
                    n,
                    Op::QConv {
                        window: c.window.clone(),
                        group: c.group,
                        q,
                    },
                    ins,
                    out,
                    po,
                );
            }
            Op::Gemm {
                alpha,
                beta,
                trans_a,
                trans_b,
                fused,
            } => {
                let Some(act) = fused_clamp(*fused) else {
                    return self.keep_float(n, "its fused activation is not ReLU or Clip");
                };
                let Some(b) = cst(1) else {
                    return self.keep_float(n, "its weights are not constant");
                };
                let c = cst(2);
                if *trans_a || *alpha != 1.0 || (node.inputs.len() > 2 && (c.is_none() || *beta != 1.0)) {
                    return self.keep_float(
                        n,
                        "only Gemm with alpha = beta = 1, no transposed A and a constant bias is integer",
                    );
                }
                let (k, nn) = if *trans_b {
                    (b.shape[1], b.shape[0])
                } else {
                    (b.shape[0], b.shape[1])
                };
                if c.as_ref().is_some_and(|c| c.numel() != nn) {
                    return self.keep_float(n, "its bias is not one value per output");
                }
                let bv = b.to_f32_vec();
                let w: Vec<f32> = (0..k * nn)
                    .map(|i| {
                        let (kk, j) = (i / nn, i % nn);
                        if *trans_b { bv[j * k + kk] } else { bv[kk * nn + j] }
                    })
                    .collect();
                if let Some(bw) = self.blocked(n, &b, *trans_b) {
                    return self.block_matmul(n, bw, nn, c.map(|c| c.to_f32_vec()), act);
                }
                let grid = model_grid(&mut self.notes, &node.name, &b, if *trans_b { 0 } else { 1 });
                self.matmul(n, (&w, k, nn), grid, c.map(|c| c.to_f32_vec()), act)?;
            }
            Op::MatMul => {
                let Some(b) = cst(1) else {
                    return self.keep_float(n, "its second input is not a constant matrix");
                };
                if b.shape.len() != 2 || self.src.value(node.inputs[0]).ty.shape.is_empty() {
                    return self.keep_float(n, "its second input is not a constant matrix");
                }
                if let Some(bw) = self.blocked(n, &b, false) {
                    return self.block_matmul(n, bw, b.shape[1], None, (None, None));
                }
                let grid = model_grid(&mut self.notes, &node.name, &b, 1);
                self.matmul(n, (&b.to_f32_vec(), b.shape[0], b.shape[1]), grid, None, (None, None))?;
            }
            _ => return self.keep_float(n, "no integer kernel for this op yet"),
        }
        Ok(())
    }

    /// Binary and unary maps and reductions: integer kernels, tables, or 16-bit forms.
    fn int_pointwise(&mut self, n: NodeId, node: &kiln_ir::Node) -> Result<(), QuantError> {
        let out = node.outputs[0];
        match &node.op {
            // A binary op with a scalar constant is a function of one integer: after a 16x8
            // layer the interpolated int16 table, else the int8 table.
            Op::Binary(_)
                if self.scalar_const_operand(node).is_some_and(|(slot, _)| {
                    self.int.get(&node.inputs[1 - slot]).is_some_and(|(_, q)| q.bits == 16)
                }) =>
            {
                let (slot, c) = self.scalar_const_operand(node).expect("checked");
                let (x, px) = self.int_bits(node.inputs[1 - slot], 16)?;
                let po = match self.pins.get(&out) {
                    Some(&p) if p.bits == 16 => p,
                    _ => self.out_params_bits(out, 16)?,
                };
                let op = lut16(&node.op, px, po, Some((slot, &c)))?;
                self.emit_int(n, op, vec![x], out, po);
            }
            Op::Binary(_) if self.scalar_const_operand(node).is_some() => {
                let (slot, c) = self.scalar_const_operand(node).expect("checked");
                self.table(n, node.inputs[1 - slot], (node.op.clone(), Some((slot, c))), None)?;
            }
            // a slope per channel (a single one became a table above): TFLite's int8 PRelu,
            // whose multipliers TFLite computes from the scales in f32
            Op::Binary(BinaryOp::PRelu) if self.src.value(out).ty.shape == self.src.value(node.inputs[0]).ty.shape => {
                let tflite = self.opts.numerics == Some(Numerics::Tflite);
                let ratio = |x: f32, o: f32, a: f32| {
                    if tflite {
                        (x * a / o) as f64
                    } else {
                        x as f64 * a as f64 / o as f64
                    }
                };
                let (x, px) = self.int_of(node.inputs[0])?;
                let (a, pa) = self.int_of(node.inputs[1])?;
                let po = self.out_params(out)?;
                let m = |x: f64, what: &str| {
                    rt::quantize_multiplier(x).ok_or_else(|| QuantError::Scale(node.name.clone(), what.to_string()))
                };
                let op = Op::QPRelu(QPRelu {
                    input_zp: px.zp,
                    alpha_zp: pa.zp,
                    output_scale: po.scale,
                    output_zp: po.zp,
                    identity: m(ratio(px.scale, po.scale, 1.0), "output")?,
                    alpha: m(ratio(px.scale, po.scale, pa.scale), "slope")?,
                    numerics: Default::default(),
                });
                self.emit_int(n, op, vec![x, a], out, po);
            }
            Op::Reduce {
                kind: kind @ (ReduceKind::Sum | ReduceKind::Mean),
                axes,
                ..
            } if !axes.is_empty() => self.reduce(n, *kind == ReduceKind::Mean, axes)?,
            Op::Binary(kiln_ir::op::BinaryOp::Mul) => {
                // int16 when both sides come from 16x8 layers (zero points 0), else int8
                let wide = node
                    .inputs
                    .iter()
                    .all(|v| self.int.get(v).is_some_and(|(_, q)| q.bits == 16));
                let bits = if wide { 16 } else { 8 };
                let (a, pa) = self.int_bits(node.inputs[0], bits)?;
                let (b, pb) = self.int_bits(node.inputs[1], bits)?;
                let po = self.out_params_bits(out, bits)?;
                let requant = rt::quantize_multiplier(pa.scale as f64 * pb.scale as f64 / po.scale as f64)
                    .ok_or_else(|| QuantError::Scale(node.name.clone(), "output".into()))?;
                let op = Op::QMul(QMul {
                    a_zp: pa.zp,
                    b_zp: pb.zp,
                    output_scale: po.scale,
                    output_zp: po.zp,
                    requant,
                    act_min: po.range().0,
                    act_max: po.range().1,
                    numerics: Default::default(),
                });
                self.emit_int(n, op, vec![a, b], out, po);
            }
            Op::Binary(BinaryOp::Add | BinaryOp::Sub) => {
                // Sub is Add with b's multiplier negated, as TFLite computes it
                let sign = if node.op == Op::Binary(BinaryOp::Sub) { -1 } else { 1 };
                // int16 when both sides come from 16x8 layers (zero points 0), else int8
                let wide = node
                    .inputs
                    .iter()
                    .all(|v| self.int.get(v).is_some_and(|(_, q)| q.bits == 16));
                let bits = if wide { 16 } else { 8 };
                let (a, pa) = self.int_bits(node.inputs[0], bits)?;
                let (b, pb) = self.int_bits(node.inputs[1], bits)?;
                let po = self.out_params_bits(out, bits)?;
                let shift = if wide {
                    rt::ADD_LEFT_SHIFT_16
                } else {
                    rt::ADD_LEFT_SHIFT
                };
                let twice = 2.0 * (pa.scale.max(pb.scale) as f64);
                let m = |x: f64, what: &str| {
                    rt::quantize_multiplier(x).ok_or_else(|| QuantError::Scale(node.name.clone(), what.to_string()))
                };
                let op = Op::QAdd(QAdd {
                    a_zp: pa.zp,
                    a: m(pa.scale as f64 / twice, "input a")?,
                    b_zp: pb.zp,
                    b: m(pb.scale as f64 / twice, "input b").map(|r| rt::Requant {
                        multiplier: sign * r.multiplier,
                        ..r
                    })?,
                    output_scale: po.scale,
                    output_zp: po.zp,
                    out: m(twice / ((1u64 << shift) as f64 * po.scale as f64), "output")?,
                    act_min: po.range().0,
                    act_max: po.range().1,
                    numerics: Default::default(),
                });
                self.emit_int(n, op, vec![a, b], out, po);
            }
            // after a 16x8 layer: a 513-entry int16 table with interpolation
            Op::Unary(u) if self.int.get(&node.inputs[0]).is_some_and(|(_, q)| q.bits == 16) => {
                let (x, px) = self.int_bits(node.inputs[0], 16)?;
                let po = match (u, self.pins.get(&out)) {
                    (_, Some(&p)) if p.bits == 16 => p,
                    (UnaryOp::Sigmoid | UnaryOp::Tanh, _) => Q::new(1.0 / 32768.0, 0, 16),
                    _ => self.out_params_bits(out, 16)?,
                };
                let op = lut16(&node.op, px, po, None)?;
                self.emit_int(n, op, vec![x], out, po);
            }
            Op::Unary(u) => {
                let po = match (u, self.pins.get(&out)) {
                    (_, Some(&p)) if p.bits == 8 => Some(p),
                    (UnaryOp::Sigmoid, _) => Some(Q::int8(1.0 / 256.0, -128)),
                    (UnaryOp::Tanh, _) => Some(Q::int8(1.0 / 128.0, 0)),
                    _ => None,
                };
                self.table(n, node.inputs[0], (node.op.clone(), None), po)?;
            }
            _ => return self.keep_float(n, "no integer kernel for this op yet"),
        }
        Ok(())
    }

    /// Softmax, padding, concatenation, pooling and the ops that move integers unchanged.
    fn int_layout(&mut self, n: NodeId, node: &kiln_ir::Node) -> Result<(), QuantError> {
        let out = node.outputs[0];
        let cst = |i: usize| node.inputs.get(i).and_then(|&v| self.src.const_value(v)).cloned();
        match &node.op {
            // after a 16x8 layer: int16 softmax, probabilities in steps of 1/32768
            Op::Softmax { axis }
                if self.int.get(&node.inputs[0]).is_some_and(|(_, q)| q.bits == 16)
                    && self.src.value(node.inputs[0]).ty.shape[*axis] <= 1 << 16 =>
            {
                let (x, px) = self.int_bits(node.inputs[0], 16)?;
                let (hi, lo) = rt::softmax16_tables(px.scale);
                let po = Q::new(1.0 / 32768.0, 0, 16);
                let op = Op::QSoftmax16 {
                    axis: *axis,
                    exp_hi: hi.to_vec().into(),
                    exp_lo: lo.to_vec().into(),
                };
                match self.pins.get(&out) {
                    // the model's own output parameters: an integer rescale to them
                    Some(&pin) if pin != po => {
                        let ty = TensorType::new(po.dtype(), self.src.value(out).ty.shape.clone());
                        let name = self.dst.fresh_name(&format!("{}:softmax", self.name(out)));
                        let t = self.dst.add_node_typed(&node.name, op, vec![x], vec![(name, ty)]).1[0];
                        let requant = rt::quantize_multiplier(po.scale as f64 / pin.scale as f64)
                            .ok_or_else(|| QuantError::Scale(node.name.clone(), "output".into()))?;
                        let op = Op::Requant {
                            to: pin.scalar(),
                            input_zp: 0,
                            requant,
                            scale: pin.scale,
                            zero_point: pin.zp,
                        };
                        let ty = TensorType::new(pin.dtype(), self.src.value(out).ty.shape.clone());
                        let name = format!("{}:q", self.name(out));
                        let r = (self.dst)
                            .add_node_typed(&format!("{}:requant", node.name), op, vec![t], vec![(name, ty)])
                            .1[0];
                        self.int.insert(out, (r, pin));
                    }
                    _ => self.emit_int(n, op, vec![x], out, po),
                }
            }
            Op::Softmax { axis } if self.src.value(node.inputs[0]).ty.shape[*axis] <= rt::SOFTMAX_MAX_LEN => {
                let (x, px) = self.int_of(node.inputs[0])?;
                let po = Q::int8(1.0 / 256.0, -128);
                let exp_table: Arc<[i32]> = rt::softmax_exp_table(px.scale).to_vec().into();
                let op = Op::QSoftmax { axis: *axis, exp_table };
                match self.pins.get(&out) {
                    // the model's own output parameters: one table from Kiln's to them
                    Some(&pin) if pin != po && pin.bits == 8 => {
                        let ty = TensorType::new(po.dtype(), self.src.value(out).ty.shape.clone());
                        let name = self.dst.fresh_name(&format!("{}:softmax", self.name(out)));
                        let t = self.dst.add_node_typed(&node.name, op, vec![x], vec![(name, ty)]).1[0];
                        let table: Arc<[i8]> = (-128..128)
                            .map(|i| pin.quantize(rt::dequantize(i, po.scale, po.zp)) as i8)
                            .collect();
                        let ty = TensorType::new(pin.dtype(), self.src.value(out).ty.shape.clone());
                        let name = format!("{}:q", self.name(out));
                        let r = self
                            .dst
                            .add_node_typed(
                                &format!("{}:requant", node.name),
                                table_op(table, pin),
                                vec![t],
                                vec![(name, ty)],
                            )
                            .1[0];
                        self.int.insert(out, (r, pin));
                    }
                    _ => self.emit_int(n, op, vec![x], out, po),
                }
            }
            Op::Pad { .. } if self.int.contains_key(&node.inputs[0]) => {
                // Padding with the input's own scale (int8, or the int16 of a 16x8 layer): the
                // fill value becomes one integer constant.
                let (x, px) = self.int[&node.inputs[0]];
                let fill = cst(1).map_or(0.0, |t| t.to_f32_vec().first().copied().unwrap_or(0.0));
                let mut t = if px.bits == 16 {
                    Tensor::from_vec(vec![], vec![px.quantize(fill) as i16])
                } else {
                    Tensor::from_vec(vec![], vec![px.quantize(fill) as i8])
                };
                t.quant = px.dtype().quant;
                let name = format!("{}:fill", node.name);
                let fv = self.dst.add_const(&self.dst.fresh_name(&name), t);
                self.emit_int(n, node.op.clone(), vec![x, fv], out, px);
            }
            Op::Concat { .. }
                if node
                    .inputs
                    .iter()
                    .all(|v| self.int.get(v).is_some_and(|(_, q)| q.bits == 16))
                    || self.concat_needs_16(node) =>
            {
                // All from 16x8 layers, or parts of very different ranges (an LSTM's hidden
                // and cell state): int16 throughout, each input moved to the output's scale
                // by an integer rescale, then copied.
                let po = self.out_params_bits(out, 16)?;
                let mut ins = Vec::new();
                for &v in &node.inputs {
                    // int8 parts go straight to the output's int16 scale
                    let (q, pq) = match self.int.get(&v) {
                        Some(&q) => q,
                        None => self.int_bits(v, 16)?,
                    };
                    if pq == po {
                        ins.push(q);
                        continue;
                    }
                    let requant = rt::quantize_multiplier(pq.scale as f64 / po.scale as f64)
                        .ok_or_else(|| QuantError::Scale(node.name.clone(), "input".into()))?;
                    let op = Op::Requant {
                        to: Scalar::I16,
                        input_zp: pq.zp,
                        requant,
                        scale: po.scale,
                        zero_point: po.zp,
                    };
                    let ty = TensorType::new(po.dtype(), self.src.value(v).ty.shape.clone());
                    let name = format!("{}:to_{}", self.name(v), node.name);
                    let r = self
                        .dst
                        .add_node_typed(
                            &format!("{name}:requant"),
                            op,
                            vec![q],
                            vec![(self.dst.fresh_name(&name), ty)],
                        )
                        .1[0];
                    ins.push(r);
                }
                self.emit_int(n, node.op.clone(), ins, out, po);
            }
            Op::Concat { .. } => {
                // Each input is brought to the output's scale by a table, then copied.
                let po = self.out_params(out)?;
                let mut ins = Vec::new();
                for &v in &node.inputs {
                    let (q, pq) = self.int_of(v)?;
                    if pq == po {
                        ins.push(q);
                        continue;
                    }
                    let table: Arc<[i8]> = (-128..128)
                        .map(|i| po.quantize(rt::dequantize(i, pq.scale, pq.zp)) as i8)
                        .collect();
                    let ty = TensorType::new(po.dtype(), self.src.value(v).ty.shape.clone());
                    let name = format!("{}:to_{}", self.name(v), node.name);
                    let r = self
                        .dst
                        .add_node_typed(
                            &format!("{name}:requant"),
                            table_op(table, po),
                            vec![q],
                            vec![(self.dst.fresh_name(&name), ty)],
                        )
                        .1[0];
                    ins.push(r);
                }
                self.emit_int(n, node.op.clone(), ins, out, po);
            }
            Op::Pool(p)
                if p.kind == PoolKind::Max
                    || p.kind
                        == (PoolKind::Avg {
                            count_include_pad: false,
                        }) =>
            {
                self.pass_through(n)?
            }
            Op::GlobalPool(PoolKind::Max | PoolKind::Avg { .. })
            | Op::Reshape { .. }
            | Op::Transpose { .. }
            | Op::Slice { .. } => self.pass_through(n)?,
            Op::Gather { .. } if cst(1).is_some() => self.pass_through(n)?,
            _ => return self.keep_float(n, "no integer kernel for this op yet"),
        }
        Ok(())
    }

    /// Node `n`, a one-input function of `input`, as an int8 table to `po` (else its
    /// calibrated parameters). Consecutive such functions compose: while the output's only
    /// reader is another one, the chain waits (`pending`) and becomes one table evaluated in
    /// float end to end, so `rsqrt(v + eps)` is one rounding, not three.
    fn table(&mut self, n: NodeId, input: ValueId, step: Step, po: Option<Q>) -> Result<(), QuantError> {
        let out = self.src.node(n).outputs[0];
        let (from, px, mut steps) = match self.pending.remove(&input) {
            Some(p) => (p.from, p.px, p.steps),
            None => {
                let (x, px) = self.int_of(input)?;
                (x, px, Vec::new())
            }
        };
        steps.push(step);
        if po.is_none() && self.composes(out) {
            let node = n;
            self.pending.insert(out, Pending { node, from, px, steps });
            return Ok(());
        }
        let po = match po {
            Some(p) => p,
            None => self.out_params(out)?,
        };
        let op = lut(&steps, px, po, self.opts.numerics)?;
        self.emit_int(n, op, vec![from], out, po);
        Ok(())
    }

    /// Whether `v`'s only use is as the input of another one-input function of an int8, in
    /// a calibrated graph (a model's own parameters are kept where it puts them).
    fn composes(&self, v: ValueId) -> bool {
        let readers = self.src.consumers(v);
        let [m] = readers[..] else { return false };
        let node = self.src.node(m);
        self.pins.is_empty()
            && !self.src.is_output(v)
            && node.inputs.iter().filter(|&&i| i == v).count() == 1
            && match node.op {
                Op::Unary(_) => true,
                Op::Binary(_) => self.scalar_const_operand(node).is_some(),
                _ => false,
            }
    }

    /// Makes the table of a waiting chain ending at `v`, when something other than the next
    /// function needs `v` after all (a `--keep-float` reader, a fallback).
    fn flush(&mut self, v: ValueId) -> Result<(), QuantError> {
        let Some(p) = self.pending.remove(&v) else {
            return Ok(());
        };
        let po = self.out_params(v)?;
        let op = lut(&p.steps, p.px, po, self.opts.numerics)?;
        self.emit_int(p.node, op, vec![p.from], v, po);
        Ok(())
    }

    /// ReduceSum/ReduceMean as an int8 product with a column of ones: the reduced axes moved
    /// last (a transpose when they are not), the input viewed as `[rows, reduced]`, one
    /// exact sum per row and one rescale (by `1 / count` for a mean), reshaped to the output.
    fn reduce(&mut self, n: NodeId, mean: bool, axes: &[usize]) -> Result<(), QuantError> {
        let node = self.src.node(n).clone();
        let out = node.outputs[0];
        let (mut x, px) = self.int_of(node.inputs[0])?;
        let po = self.out_params(out)?;
        let xs = self.src.value(node.inputs[0]).ty.shape.clone();
        let mut perm: Vec<usize> = (0..xs.len()).filter(|a| !axes.contains(a)).collect();
        let kept = perm.len();
        perm.extend((0..xs.len()).filter(|a| axes.contains(a)));
        let step = |me: &mut Self, x: ValueId, op: Op, shape: Vec<usize>, what: &str| {
            let ty = TensorType::new(px.dtype(), shape);
            let name = me.dst.fresh_name(&format!("{}:{what}", me.name(out)));
            (me.dst)
                .add_node_typed(&format!("{}:{what}", node.name), op, vec![x], vec![(name, ty)])
                .1[0]
        };
        if perm.iter().enumerate().any(|(i, &a)| i != a) {
            let shape = perm.iter().map(|&a| xs[a]).collect();
            x = step(self, x, Op::Transpose { perm: perm.clone() }, shape, "moved");
        }
        let rows: usize = perm[..kept].iter().map(|&a| xs[a]).product();
        let k: usize = perm[kept..].iter().map(|&a| xs[a]).product();
        x = step(self, x, Op::Reshape { shape: vec![rows, k] }, vec![rows, k], "rows");
        let ws = [if mean { 1.0 / k as f32 } else { 1.0 }];
        let name = self.dst.fresh_name(&format!("{}:ones", node.name));
        let w = self.add_weights(&name, vec![k, 1], vec![1; k], &ws, 1);
        let q = self.qlinear(&node.name, px, po, &ws, (None, None), 8)?;
        let ty = TensorType::new(po.dtype(), vec![rows, 1]);
        let name = self.dst.fresh_name(&format!("{}:sums", self.name(out)));
        let sums = (self.dst)
            .add_node_typed(
                &format!("{}:sum", node.name),
                Op::QMatMul { q },
                vec![x, w],
                vec![(name, ty)],
            )
            .1[0];
        let shape = self.src.value(out).ty.shape.clone();
        self.emit_int(n, Op::Reshape { shape }, vec![sums], out, po);
        Ok(())
    }

    /// Whether a Concat in a calibrated graph joins a part that spans under 1/16 of the
    /// result's range, which one int8 scale would resolve in a few steps only.
    fn concat_needs_16(&self, node: &kiln_ir::Node) -> bool {
        let span = |v: &ValueId| self.ranges.by_value.get(v).map(|&(lo, hi)| hi as f64 - lo as f64);
        let Some(whole) = span(&node.outputs[0]) else {
            return false;
        };
        self.pins.is_empty() && node.inputs.iter().any(|v| span(v).is_some_and(|p| p * 16.0 < whole))
    }

    /// The slot and value of a one-element constant operand of a two-input node, if the
    /// other operand is computed and the output has its shape.
    fn scalar_const_operand(&self, node: &kiln_ir::Node) -> Option<(usize, Tensor)> {
        if node.inputs.len() != 2 {
            return None;
        }
        (0..2).find_map(|slot| {
            let c = self.src.const_value(node.inputs[slot])?;
            let other = &self.src.value(node.inputs[1 - slot]).ty.shape;
            (c.numel() == 1
                && self.src.const_value(node.inputs[1 - slot]).is_none()
                && *other == self.src.value(node.outputs[0]).ty.shape)
                .then(|| (slot, (**c).clone().reshaped(vec![])))
        })
    }

    /// Ops that move or select integer values (int8, or the int16 of a 16x8 layer) without
    /// changing their scale.
    ///
    /// A model may give the output its own parameters (QOperator pooling): an average then
    /// becomes a depthwise convolution with unit weights (one exact rescale of the window sum),
    /// anything else is followed by a 256-entry requantization table (one rounding of exact
    /// values).
    fn pass_through(&mut self, n: NodeId) -> Result<(), QuantError> {
        let node = self.src.node(n).clone();
        let Some(&(x, px)) = self.int.get(&node.inputs[0]) else {
            return self.keep_float(n, "");
        };
        let out = node.outputs[0];
        let pin = self
            .pins
            .get(&out)
            .copied()
            .filter(|&p| p != px && p.bits == 8 && px.bits == 8);
        // the other inputs are constants (a Gather's indices)
        let mut ins = vec![x];
        for &v in &node.inputs[1..] {
            ins.push(self.float_of(v)?);
        }
        let Some(po) = pin else {
            self.emit_int(n, node.op.clone(), ins, out, px);
            return Ok(());
        };
        if let Some(window) = self.average_window(&node) {
            let shape = &self.src.value(node.inputs[0]).ty.shape;
            let c = shape[1];
            let count: usize = window.kernel.iter().product();
            let ws = [1.0 / count as f32];
            let mut wshape = vec![c, 1];
            wshape.extend(&window.kernel);
            let name = format!("{}:ones", node.name);
            let name = self.dst.fresh_name(&name);
            let w = self.add_weights(&name, wshape, vec![1; c * count], &ws, 0);
            let q = self.qlinear(&node.name, px, po, &ws, (None, None), 8)?;
            self.emit_int(n, Op::QConv { window, group: c, q }, vec![x, w], out, po);
            return Ok(());
        }
        let ty = TensorType::new(px.dtype(), self.src.value(out).ty.shape.clone());
        let name = self.dst.fresh_name(&format!("{}:moved", self.name(out)));
        let moved = self
            .dst
            .add_node_typed(&node.name, node.op.clone(), ins, vec![(name, ty)])
            .1[0];
        let table: Arc<[i8]> = (-128..128)
            .map(|i| po.quantize(rt::dequantize(i, px.scale, px.zp)) as i8)
            .collect();
        let ty = TensorType::new(po.dtype(), self.src.value(out).ty.shape.clone());
        let name = format!("{}:q", self.name(out));
        let r = self
            .dst
            .add_node_typed(
                &format!("{}:requant", node.name),
                table_op(table, po),
                vec![moved],
                vec![(name, ty)],
            )
            .1[0];
        self.int.insert(out, (r, po));
        Ok(())
    }

    /// The window of an average pooling that every output takes over whole, unpadded
    /// (global, or padding 0 and no partial windows), as a convolution window.
    fn average_window(&self, node: &kiln_ir::Node) -> Option<kiln_ir::op::Window> {
        let shape = &self.src.value(node.inputs[0]).ty.shape;
        match &node.op {
            Op::GlobalPool(PoolKind::Avg { .. }) if shape.len() >= 3 => {
                let r = shape.len() - 2;
                Some(kiln_ir::op::Window {
                    kernel: shape[2..].to_vec(),
                    strides: vec![1; r],
                    dilations: vec![1; r],
                    pads: vec![0; 2 * r],
                })
            }
            Op::Pool(p) if matches!(p.kind, PoolKind::Avg { .. }) && p.window.pads.iter().all(|&x| x == 0) => {
                let whole = (shape[2..].iter().zip(&p.window.kernel).zip(&p.window.strides))
                    .all(|((&d, &k), &s)| d >= k && (d - k).is_multiple_of(s));
                (whole && p.window.dilations.iter().all(|&d| d == 1)).then(|| p.window.clone())
            }
            _ => None,
        }
    }

    /// Node `n` as an integer product with the `[k, nn]` float matrix `w` (row-major).
    fn matmul(
        &mut self,
        n: NodeId,
        (w, k, nn): (&[f32], usize, usize),
        grid: Option<Vec<f32>>,
        bias: Option<Vec<f32>>,
        act: (Option<f32>, Option<f32>),
    ) -> Result<(), QuantError> {
        let node = self.src.node(n).clone();
        let out = node.outputs[0];
        let bits = self.width(n);
        let (x, px) = self.int_bits(node.inputs[0], bits)?;
        let po = self.out_params_bits(out, bits)?;
        let (wq, ws, wbits) = self.weights(&node.name, w, grid, nn, |i| i % nn);
        let wname = format!("{}:q", self.name(node.inputs[1]));
        let wv = self.add_weights(&wname, vec![k, nn], wq, &ws, 1);
        let mut ins = vec![x, wv];
        if let Some(b) = bias {
            ins.push(self.add_bias(node.inputs[2], &b, px, &ws));
        }
        let q = self.qlinear(&node.name, px, po, &ws, act, wbits)?;
        self.emit_int(n, Op::QMatMul { q }, ins, out, po);
        Ok(())
    }

    /// The model's own int8 weights `[K, N]`, scales `[blocks, N]` and block length when
    /// `b` (transposed when `transpose`) records a grid blocked along K and node `n` runs
    /// int8 (a 16x8 product takes one scale per column).
    fn blocked(&self, n: NodeId, b: &Tensor, transpose: bool) -> Option<(Vec<i8>, Vec<f32>, usize)> {
        if !matches!(b.quant, Some(QParams::Blocked { .. })) || self.width(n) != 8 {
            return None;
        }
        super::dynamic::own_grid(b, transpose, false).filter(|g| g.2 > 0)
    }

    /// Node `n` as an int8 product with the model's blocked weights `(w, scales, block)`
    /// (`QBlockMatMul`): per column one shift, from its largest block factor, and each
    /// block's multiplier at that shift; the bias in the same units.
    fn block_matmul(
        &mut self,
        n: NodeId,
        (wq, ws, block): (Vec<i8>, Vec<f32>, usize),
        nn: usize,
        bias: Option<Vec<f32>>,
        act: (Option<f32>, Option<f32>),
    ) -> Result<(), QuantError> {
        let node = self.src.node(n).clone();
        let out = node.outputs[0];
        let (x, px) = self.int_bits(node.inputs[0], 8)?;
        let po = self.out_params_bits(out, 8)?;
        let k = wq.len() / nn.max(1);
        let blocks = ws.len() / nn.max(1);
        let factor = |i: usize| px.scale as f64 * ws[i] as f64 / po.scale as f64;
        let mut requant = vec![
            rt::Requant {
                multiplier: 0,
                shift: 0
            };
            ws.len()
        ];
        for j in 0..nn {
            // a model's blocked scales may be negative: the shift from the largest magnitude
            let top = (0..blocks).map(|b| factor(b * nn + j).abs()).fold(0.0, f64::max);
            let r = rt::quantize_multiplier(top)
                .filter(|r| r.multiplier > 0)
                .ok_or_else(|| QuantError::Scale(node.name.clone(), "output".into()))?;
            for b in 0..blocks {
                let m = (factor(b * nn + j) * 2f64.powi(31 - r.shift)).round();
                let lim = r.multiplier as f64;
                requant[b * nn + j] = rt::Requant {
                    multiplier: m.clamp(-lim, lim) as i32,
                    shift: r.shift,
                };
            }
        }
        let (lo, hi) = wq.iter().fold((0i8, 0i8), |(l, h), &v| (l.min(v), h.max(v)));
        let weight_bits = [2u8, 4, 8]
            .into_iter()
            .find(|&b| lo as i32 >= -(1 << (b - 1)) && (hi as i32) < 1 << (b - 1))
            .unwrap_or(8);
        let mut wt = Tensor::from_vec(vec![k, nn], wq);
        wt.quant = Some(QParams::Blocked {
            axis: 0,
            block,
            scales: ws.clone().into(),
            zero_points: vec![0; ws.len()].into(),
        });
        let wname = format!("{}:q", self.name(node.inputs[1]));
        let wv = self.dst.add_const(&wname, wt);
        let mut ins = vec![x, wv];
        if let Some(b) = bias {
            // output steps times 2^(31 - shift), kept within 2^61 (`rounding_shift_wide`)
            let q: Vec<i64> = (b.iter().enumerate())
                .map(|(j, &v)| {
                    let e = 31 - requant[j].shift;
                    let lim = 2f64.powi(61);
                    (v as f64 / po.scale as f64 * 2f64.powi(e)).round().clamp(-lim, lim) as i64
                })
                .collect();
            let bname = format!("{}:q", self.name(node.inputs[2]));
            ins.push(self.dst.add_const(&bname, Tensor::from_vec(vec![nn], q)));
        }
        let q = QLinear {
            input_zp: px.zp,
            output_scale: po.scale,
            output_zp: po.zp,
            requant: requant.into(),
            act_min: act.0.map_or(po.range().0, |lo| po.quantize(lo)),
            act_max: act.1.map_or(po.range().1, |hi| po.quantize(hi)),
            weight_bits,
            numerics: Default::default(),
        };
        self.emit_int(n, Op::QBlockMatMul { q, block }, ins, out, po);
        Ok(())
    }

    /// A product's integer weights, their scales and storage width: the model's own (from
    /// `grid`) at the narrowest width that holds them, else Kiln's, symmetric per channel
    /// (or per tensor) at `--weight-bits`.
    fn weights(
        &mut self,
        node: &str,
        w: &[f32],
        grid: Option<Vec<f32>>,
        channels: usize,
        channel_of: impl Fn(usize) -> usize,
    ) -> (Vec<i8>, Vec<f32>, u8) {
        if let Some(scales) = grid
            && let Some((q, scales)) = self.on_grid(node, w, scales, &channel_of)
        {
            let (lo, hi) = q.iter().fold((0i8, 0i8), |(l, h), &v| (l.min(v), h.max(v)));
            let bits = [2u8, 4, 8]
                .into_iter()
                .find(|&b| (lo as i32) >= -(1 << (b - 1)) && (hi as i32) < 1 << (b - 1))
                .unwrap_or(8);
            return (q, scales, bits);
        }
        let bits = (self.opts.weight_bits_of.iter())
            .find(|(name, _)| name == node)
            .map(|&(_, b)| b)
            .or(self.opts.weight_bits)
            .unwrap_or(8);
        let qmax = ((1i32 << (bits - 1)) - 1) as f32;
        let (q, s) = if self.opts.per_tensor_weights {
            per_channel_max(w, 1, |_| 0, qmax)
        } else {
            per_channel_max(w, channels, channel_of, qmax)
        };
        (q, s, bits)
    }

    /// The model's own int8 weights: `w` divided by its grid's scales (one, or one per
    /// channel); `None`, with a note, when a value is off the int8 grid.
    fn on_grid(
        &mut self,
        node: &str,
        w: &[f32],
        scales: Vec<f32>,
        channel_of: impl Fn(usize) -> usize,
    ) -> Option<(Vec<i8>, Vec<f32>)> {
        let s = |i: usize| scales[if scales.len() == 1 { 0 } else { channel_of(i) }];
        let q: Option<Vec<i8>> = w
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let q = (x as f64 / s(i) as f64).round();
                ((-128.0..=127.0).contains(&q) && q as f32 * s(i) == x).then_some(q as i8)
            })
            .collect();
        if q.is_none() {
            self.notes.push(format!(
                "node `{node}`: the model's weights are not on a symmetric int8 grid; Kiln quantized them"
            ));
        }
        q.map(|q| (q, scales))
    }

    fn add_weights(&mut self, name: &str, shape: Vec<usize>, q: Vec<i8>, scales: &[f32], axis: usize) -> ValueId {
        let mut t = Tensor::from_vec(shape, q);
        t.quant = Some(if scales.len() == 1 {
            QParams::PerTensor {
                scale: scales[0],
                zero_point: 0,
            }
        } else {
            QParams::PerAxis {
                axis,
                scales: scales.into(),
                zero_points: vec![0; scales.len()].into(),
            }
        });
        self.dst.add_const(name, t)
    }

    /// The bias in the product's accumulator units: int32, or int64 for a 16x8 product.
    fn add_bias(&mut self, v: ValueId, b: &[f32], px: Q, ws: &[f32]) -> ValueId {
        let sx = px.scale;
        let q: Vec<i64> = b
            .iter()
            .enumerate()
            .map(|(c, &x)| {
                let s = sx as f64 * ws[if ws.len() == 1 { 0 } else { c }] as f64;
                let (lo, hi) = if px.bits == 16 {
                    (-(2f64.powi(47)), 2f64.powi(47))
                } else {
                    (i32::MIN as f64, i32::MAX as f64)
                };
                (x as f64 / s).round().clamp(lo, hi) as i64
            })
            .collect();
        let n = q.len();
        let mut t = if px.bits == 16 {
            Tensor::from_vec(vec![n], q)
        } else {
            Tensor::from_vec(vec![n], q.iter().map(|&v| v as i32).collect::<Vec<_>>())
        };
        t.quant = Some(QParams::PerAxis {
            axis: 0,
            scales: (0..n).map(|c| ws[if ws.len() == 1 { 0 } else { c }] * sx).collect(),
            zero_points: vec![0; n].into(),
        });
        self.dst.add_const(&format!("{}:q", self.name(v)), t)
    }

    fn qlinear(
        &self,
        node: &str,
        px: Q,
        po: Q,
        ws: &[f32],
        act: (Option<f32>, Option<f32>),
        weight_bits: u8,
    ) -> Result<QLinear, QuantError> {
        let requant = ws
            .iter()
            .map(|&s| {
                rt::quantize_multiplier(px.scale as f64 * s as f64 / po.scale as f64)
                    // the 64-bit rescale of 16x8 products takes shifts in -31..=7
                    .filter(|r| po.bits == 8 || (-31..=7).contains(&r.shift))
                    .ok_or_else(|| QuantError::Scale(node.to_string(), "output".into()))
            })
            .collect::<Result<Arc<[_]>, _>>()?;
        Ok(QLinear {
            input_zp: px.zp,
            output_scale: po.scale,
            output_zp: po.zp,
            requant,
            act_min: act.0.map_or(po.range().0, |lo| po.quantize(lo)),
            act_max: act.1.map_or(po.range().1, |hi| po.quantize(hi)),
            weight_bits,
            numerics: Default::default(),
        })
    }
}

/// The integer width a model's int8, or 16x8 int16 (zero point 0), value has.
fn int_width(s: Scalar, zero_point: i32) -> Option<u8> {
    match s {
        Scalar::I8 => Some(8),
        Scalar::I16 if zero_point == 0 => Some(16),
        _ => None,
    }
}

/// A `Lut` op producing values with the parameters `po`.
fn table_op(table: Arc<[i8]>, po: Q) -> Op {
    Op::Lut {
        table,
        scale: po.scale,
        zero_point: po.zp,
    }
}

/// The 256-entry table op of a chain of one-input functions of an int8: every input value
/// dequantized, put through the evaluator's float kernel of each step's op in turn (with a
/// binary op's constant operand in its slot), and quantized to the output's parameters.
/// With TFLite numerics, a single activation TFLite computes in fixed point takes its
/// integer algorithm instead (`tflite_tables`).
fn lut(steps: &[Step], px: Q, po: Q, numerics: Option<Numerics>) -> Result<Op, QuantError> {
    if let ([(Op::Unary(u), None)], Some(Numerics::Tflite), 8, 8) = (steps, numerics, px.bits, po.bits)
        && let Some(t) = super::tflite_tables::table(u, px, po)
    {
        return Ok(table_op(t.into(), po));
    }
    let xs: Vec<f32> = (-128..128).map(|q| rt::dequantize(q, px.scale, px.zp)).collect();
    let mut t = Tensor::from_vec(vec![256], xs);
    let ty = TensorType::new(DType::plain(Scalar::F32), vec![256]);
    for (op, constant) in steps {
        let args: Vec<&Tensor> = match constant {
            None => vec![&t],
            Some((1, c)) => vec![&t, c],
            Some((_, c)) => vec![c, &t],
        };
        let y = kiln_ir::eval::eval_node(op, &args, std::slice::from_ref(&ty)).map_err(QuantError::Eval)?;
        t = y.into_iter().next().expect("one output");
    }
    Ok(table_op(
        t.to_f32_vec().iter().map(|&f| po.quantize(f) as i8).collect(),
        po,
    ))
}

/// The 513-entry int16 table of a one-input function (`kiln_runtime::lut16`): the
/// evaluator's float kernel of `op` at every 128th int16 input, quantized to `po`.
/// A binary op's `constant` operand goes in its slot, as for `lut`.
fn lut16(op: &Op, px: Q, po: Q, constant: Option<(usize, &Tensor)>) -> Result<Op, QuantError> {
    let xs: Vec<f32> = (0..rt::LUT16_LEN as i32)
        .map(|j| (j * 128 - 32768) as f32 * px.scale)
        .collect();
    let t = Tensor::from_vec(vec![rt::LUT16_LEN], xs);
    let ty = TensorType::new(DType::plain(Scalar::F32), vec![rt::LUT16_LEN]);
    let args: Vec<&Tensor> = match constant {
        None => vec![&t],
        Some((1, c)) => vec![&t, c],
        Some((_, c)) => vec![c, &t],
    };
    let y = kiln_ir::eval::eval_node(op, &args, &[ty]).map_err(QuantError::Eval)?;
    Ok(Op::Lut16 {
        table: y[0].to_f32_vec().iter().map(|&f| po.quantize(f) as i16).collect(),
        scale: po.scale,
    })
}

/// Whether every use of `v` reaches integer ops through layout ops only (at most `depth` of
/// them), collecting the integer ops reached and the value each reads.
fn feeds_integer_ops(src: &Graph, v: ValueId, depth: usize, reached: &mut Vec<(NodeId, ValueId)>) -> bool {
    let cons = src.consumers(v);
    !cons.is_empty()
        && !src.is_output(v)
        && cons.iter().all(|&n| {
            let node = src.node(n);
            let layout = match node.op {
                Op::Reshape { .. } | Op::Transpose { .. } | Op::Identity | Op::Slice { .. } => true,
                Op::Pad { .. } | Op::Gather { .. } => node.inputs[1..].iter().all(|&i| src.const_value(i).is_some()),
                _ => false,
            };
            if layout && node.inputs[0] == v && node.outputs.len() == 1 {
                depth > 0 && feeds_integer_ops(src, node.outputs[0], depth - 1, reached)
            } else if integer_op(&node.op) && reached.len() < 1024 {
                reached.push((n, v));
                true
            } else {
                false
            }
        })
}

/// Ops this pass usually turns into integer ops (used to decide where to quantize early).
fn integer_op(op: &Op) -> bool {
    matches!(
        op,
        Op::Conv(_)
            | Op::Gemm { .. }
            | Op::MatMul
            | Op::Binary(_)
            | Op::Unary(_)
            | Op::Pool(_)
            | Op::GlobalPool(_)
            | Op::Softmax { .. }
            | Op::Reduce {
                kind: ReduceKind::Sum | ReduceKind::Mean,
                ..
            }
    )
}

/// The weight scales of a float constant that records the integer grid it came from (a
/// dequantized QDQ weight), when that grid is symmetric and per tensor or per `channel_axis`.
/// A blocked grid has no such form (the integer product takes one scale per output); it is
/// noted, and the weights are quantized again.
fn model_grid(notes: &mut Vec<String>, node: &str, w: &Tensor, channel_axis: usize) -> Option<Vec<f32>> {
    match w.quant.as_ref()? {
        QParams::PerTensor { scale, zero_point: 0 } => Some(vec![*scale]),
        QParams::PerAxis {
            axis,
            scales,
            zero_points,
        } if *axis == channel_axis && zero_points.iter().all(|&z| z == 0) => Some(scales.to_vec()),
        QParams::Blocked { block, .. } => {
            notes.push(format!(
                "node `{node}`: the model's weights have one scale per block of {block} along K, which this integer product cannot take; Kiln quantized them per channel (`--quantize dynamic` keeps the blocks)"
            ));
            None
        }
        QParams::PerTensor { zero_point, .. } => {
            notes.push(format!(
                "node `{node}`: the model's weights have zero point {zero_point} (in int8 terms: asymmetric), which this integer product cannot take; Kiln quantized them again, symmetric per channel"
            ));
            None
        }
        _ => None,
    }
}

/// The clamp a fused activation imposes, or `None` if it is not a clamp.
fn fused_clamp(f: Option<UnaryOp>) -> Option<(Option<f32>, Option<f32>)> {
    match f {
        None => Some((None, None)),
        Some(UnaryOp::Relu) => Some((Some(0.0), None)),
        Some(UnaryOp::Clip { min, max }) => Some((Some(min), Some(max))),
        Some(_) => None,
    }
}

/// Symmetric int8 per channel: `scale_c = max|w_c| / 127`, values in `-127..=127`.
pub(crate) fn per_channel(w: &[f32], channels: usize, channel_of: impl Fn(usize) -> usize) -> (Vec<i8>, Vec<f32>) {
    per_channel_max(w, channels, channel_of, 127.0)
}

/// Symmetric per channel into `-qmax..=qmax` (127, 7 for 4-bit weights, 1 for 2-bit). At
/// 8 bits the scale covers the largest weight; narrower grids clip: each channel's range is
/// the fraction of its largest weight (1, 0.95, .., 0.3) whose grid reconstructs the
/// channel with the least squared error, since a few large weights would otherwise leave
/// most of the others at zero.
fn per_channel_max(w: &[f32], channels: usize, channel_of: impl Fn(usize) -> usize, qmax: f32) -> (Vec<i8>, Vec<f32>) {
    let mut amax = vec![0f32; channels];
    for (i, &x) in w.iter().enumerate() {
        let c = channel_of(i);
        amax[c] = amax[c].max(x.abs());
    }
    let mut scales: Vec<f32> = amax.iter().map(|&a| if a > 0.0 { a / qmax } else { 1.0 }).collect();
    if qmax < 127.0 {
        let ratios: Vec<f32> = (0..15).map(|k| 1.0 - 0.05 * k as f32).collect();
        let mut err = vec![vec![0f64; ratios.len()]; channels];
        for (i, &x) in w.iter().enumerate() {
            let c = channel_of(i);
            for (r, e) in ratios.iter().zip(err[c].iter_mut()) {
                let s = scales[c] * r;
                let q = (x as f64 / s as f64).round().clamp(-qmax as f64, qmax as f64);
                *e += (x as f64 - q * s as f64).powi(2);
            }
        }
        for (c, e) in err.iter().enumerate() {
            let best = (0..ratios.len()).fold(0, |b, k| if e[k] < e[b] { k } else { b });
            scales[c] *= ratios[best];
        }
    }
    let q = w
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            (x as f64 / scales[channel_of(i)] as f64)
                .round()
                .clamp(-qmax as f64, qmax as f64) as i8
        })
        .collect();
    (q, scales)
}

//! QuantizeLinear, DequantizeLinear and the QOperator ops of the default domain (QLinearConv,
//! QLinearMatMul). A quantized model is imported as the float computation it specifies, with
//! every quantization step explicit: per-tensor steps on computed values become `Quantize` /
//! `Dequantize` nodes, and dequantized constants (weights, biases) become float constants
//! whose type records the integer grid they came from. `quantize::qdq` reads the steps and
//! grids back to build integer ops with the model's own scales and zero points; any other
//! pipeline simply runs the float computation (ONNX's own definition of these ops).

use super::conv::conv_op;
use crate::onnx::proto::NodeProto;
use crate::onnx::tensor::scalar_of;
use crate::onnx::{Attrs, Ctx, ImportError};
use kiln_ir::op::{BinaryOp, UnaryOp};
use kiln_ir::{Op, QParams, Scalar, Tensor, ValueId};

/// The parameters of one quantization step, as the node gives them.
struct Params {
    scales: Vec<f32>,
    zero_points: Vec<i64>,
    /// The axis the parameters run along; `None` for one pair for the whole tensor.
    axis: Option<usize>,
    /// Block length along `axis` (blocked quantization), 0 when not blocked.
    block: usize,
    /// The shape of the scale tensor (for blocked parameters).
    shape: Vec<usize>,
    /// The element type of the zero point, when one is given.
    zp_type: Option<Scalar>,
}

impl Params {
    /// Reads the scale (slot `s`) and zero point (slot `z`) of node `n` quantizing `x`, with
    /// `axis` the node's axis for per-axis parameters.
    fn read(cx: &Ctx, n: &NodeProto, x: ValueId, s: usize, z: usize, axis: i64) -> Result<Params, ImportError> {
        let scale = cx
            .const_input(n, s)?
            .ok_or_else(|| cx.err(format!("input {s} (the scale) is required")))?;
        let zp = cx.const_input(n, z)?;
        let scales: Vec<f32> = scale.to_f32_vec();
        if scales.iter().any(|s| !s.is_finite()) {
            return Err(cx.err("the scale is not finite"));
        }
        let zero_points = match &zp {
            Some(t) if t.numel() != scales.len() => {
                return Err(cx.err(format!(
                    "zero point has {} values but the scale has {}",
                    t.numel(),
                    scales.len()
                )));
            }
            Some(t) => t.to_i64_vec(),
            None => vec![0; scales.len()],
        };
        let xs = &cx.ty(x).shape;
        let block = Attrs::of(n).i("block_size", 0).max(0) as usize;
        let per_tensor = scales.len() == 1 && scale.shape.iter().all(|&d| d == 1) && block == 0;
        let axis = if per_tensor {
            None
        } else {
            let a = cx.axis(axis, xs.len())?;
            if block == 0 && (scale.shape.len() != 1 || scales.len() != xs[a]) {
                return Err(cx.err(format!(
                    "per-axis scale {:?} does not match axis {a} of {}",
                    scale.shape,
                    cx.ty(x)
                )));
            }
            if block > 0 {
                let fits = scale.shape.len() == xs.len()
                    && scale
                        .shape
                        .iter()
                        .zip(xs)
                        .enumerate()
                        .all(|(i, (&s, &d))| if i == a { s == d.div_ceil(block) } else { s == d });
                if !fits {
                    return Err(cx.err(format!(
                        "blocked scale {:?} does not match {} with blocks of {block} on axis {a}",
                        scale.shape,
                        cx.ty(x)
                    )));
                }
            }
            Some(a)
        };
        Ok(Params {
            scales,
            zero_points,
            axis,
            block,
            shape: scale.shape.clone(),
            zp_type: zp.map(|t| t.data.scalar()),
        })
    }

    /// Per-tensor parameters with the given scale and zero point.
    fn scalar(scale: f32, zero_point: i64) -> Params {
        Params {
            scales: vec![scale],
            zero_points: vec![zero_point],
            axis: None,
            block: 0,
            shape: vec![],
            zp_type: None,
        }
    }

    /// The parameter index of each element of a tensor of shape `xs`.
    fn index(&self, xs: &[usize]) -> Vec<usize> {
        let total: usize = xs.iter().product();
        let Some(a) = self.axis else {
            return vec![0; total];
        };
        let inner: usize = xs[a + 1..].iter().product();
        if self.block == 0 {
            return (0..total).map(|i| (i / inner) % xs[a]).collect();
        }
        let (outer_p, inner_p) = (self.shape[a], inner);
        (0..total)
            .map(|i| {
                let (o, r) = (i / (inner * xs[a]), i % (inner * xs[a]));
                let (k, j) = (r / inner, r % inner);
                (o * outer_p + k / self.block) * inner_p + j
            })
            .collect()
    }

    /// Parameters as tensors that broadcast against a tensor of shape `xs`.
    fn broadcast(&self, xs: &[usize], v: impl Fn(usize) -> f32) -> Tensor {
        match self.axis {
            None => Tensor::scalar_f32(v(0)),
            Some(a) if self.block == 0 => {
                let mut shape = vec![1; xs.len()];
                shape[a] = xs[a];
                Tensor::from_vec(shape, (0..xs[a]).map(v).collect())
            }
            Some(_) => Tensor::from_vec(xs.to_vec(), self.index(xs).into_iter().map(v).collect()),
        }
    }
}

fn range(s: Scalar) -> Option<(i64, i64)> {
    Some(match s {
        Scalar::I8 => (-128, 127),
        Scalar::U8 => (0, 255),
        Scalar::I16 => (-32768, 32767),
        Scalar::U16 => (0, 65535),
        Scalar::I32 => (i32::MIN as i64, i32::MAX as i64),
        _ => return None,
    })
}

/// `(x - zero_point) * scale` as f32; `out` names the result when it is the node's output.
fn dequantize(cx: &mut Ctx, x: ValueId, p: &Params, out: &str) -> Result<ValueId, ImportError> {
    let from = cx.ty(x).dtype.scalar;
    if range(from).is_none() {
        return Err(cx.err(format!("dequantizing {from} is not supported")));
    }
    if let Some(t) = cx.graph.const_value(x).cloned() {
        let xs = t.shape.clone();
        let q = t.to_i64_vec();
        let idx = p.index(&xs);
        let v: Vec<f32> = q
            .iter()
            .zip(&idx)
            .map(|(&q, &k)| (q - p.zero_points[k]) as f32 * p.scales[k])
            .collect();
        let mut f = Tensor::from_vec(xs, v);
        f.quant = grid(p, from);
        return Ok(cx.constant(out, f));
    }
    if p.axis.is_none() && matches!(from, Scalar::I8 | Scalar::U8 | Scalar::I16 | Scalar::I32) {
        let op = Op::Dequantize {
            scale: p.scales[0],
            zero_point: p.zero_points[0] as i32,
        };
        return cx.add_aux_named(out, op, vec![x]);
    }
    let xs = cx.ty(x).shape.clone();
    let zp = p.broadcast(&xs, |k| p.zero_points[k] as f32);
    let sc = p.broadcast(&xs, |k| p.scales[k]);
    let zp = cx.constant(&format!("{out}/zero_point"), zp);
    let sc = cx.constant(&format!("{out}/scale"), sc);
    let f = cx.add_aux_named(&format!("{out}/float"), Op::Cast { to: Scalar::F32 }, vec![x])?;
    let d = cx.add_aux_named(&format!("{out}/centred"), Op::Binary(BinaryOp::Sub), vec![f, zp])?;
    cx.add_aux_named(out, Op::Binary(BinaryOp::Mul), vec![d, sc])
}

/// The integer grid a dequantized constant lies on, in int8 terms for uint8 data (zero
/// point shifted by 128): one scale per tensor, per axis or per block. A negative scale
/// (ONNX Runtime's symmetric 4-bit quantizer writes them, to reach -8) is kept in a blocked
/// grid, whose ops take signed scales, so the model's own integers stay in 4 bits; per tensor
/// or per axis it is the same grid as its magnitude with the integers and zero point negated.
fn grid(p: &Params, from: Scalar) -> Option<QParams> {
    if p.scales.contains(&0.0) {
        return None;
    }
    let shift = if from == Scalar::U8 { 128 } else { 0 };
    let signed = p.block > 0;
    let zps: Vec<i32> = (p.zero_points.iter().zip(&p.scales))
        .map(|(&z, &s)| ((z - shift) as i32) * if s < 0.0 && !signed { -1 } else { 1 })
        .collect();
    let scales: Vec<f32> = (p.scales.iter()).map(|&s| if signed { s } else { s.abs() }).collect();
    Some(match p.axis {
        None => QParams::PerTensor {
            scale: scales[0],
            zero_point: zps[0],
        },
        Some(axis) if p.block > 0 => QParams::Blocked {
            axis,
            block: p.block,
            scales: scales.into(),
            zero_points: zps.into(),
        },
        Some(axis) => QParams::PerAxis {
            axis,
            scales: scales.into(),
            zero_points: zps.into(),
        },
    })
}

/// `saturate(round_half_even(x / scale) + zero_point)` in type `to`.
fn quantize(cx: &mut Ctx, n: &NodeProto, x: ValueId, p: &Params, to: Scalar) -> Result<Vec<ValueId>, ImportError> {
    if cx.ty(x).dtype.scalar != Scalar::F32 {
        return Err(cx.err(format!(
            "quantizing {} is not supported (only f32)",
            cx.ty(x).dtype.scalar
        )));
    }
    let Some((lo, hi)) = range(to).filter(|_| to != Scalar::I32) else {
        return Err(cx.err(format!("quantizing to {to} is not supported")));
    };
    if p.scales.iter().any(|&s| s <= 0.0) {
        return Err(cx.err("the scale must be positive"));
    }
    if p.axis.is_none() && matches!(to, Scalar::I8 | Scalar::U8 | Scalar::I16) {
        let zero_point = p.zero_points[0] as i32;
        if !(lo..=hi).contains(&(zero_point as i64)) {
            return Err(cx.err(format!("zero point {zero_point} is outside the {to} range")));
        }
        let op = Op::Quantize {
            to,
            scale: p.scales[0],
            zero_point,
        };
        return cx.add(n, op, vec![x]);
    }
    let xs = cx.ty(x).shape.clone();
    let zp = p.broadcast(&xs, |k| p.zero_points[k] as f32);
    let sc = p.broadcast(&xs, |k| p.scales[k]);
    let zp = cx.constant(&format!("{}/zero_point", cx.node_name()), zp);
    let sc = cx.constant(&format!("{}/scale", cx.node_name()), sc);
    let d = cx.add_aux("scaled", Op::Binary(BinaryOp::Div), vec![x, sc])?;
    let r = cx.add_aux("rounded", Op::Unary(UnaryOp::Round), vec![d])?;
    let s = cx.add_aux("shifted", Op::Binary(BinaryOp::Add), vec![r, zp])?;
    let clip = UnaryOp::Clip {
        min: lo as f32,
        max: hi as f32,
    };
    let c = cx.add_aux("saturated", Op::Unary(clip), vec![s])?;
    cx.add(n, Op::Cast { to }, vec![c])
}

/// The element type QuantizeLinear produces: the zero point's, else `output_dtype`, else u8.
fn output_type(cx: &Ctx, n: &NodeProto, p: &Params) -> Result<Scalar, ImportError> {
    if let Some(t) = p.zp_type {
        return Ok(t);
    }
    match Attrs::of(n).i("output_dtype", 0) as i32 {
        0 => Ok(Scalar::U8),
        code => scalar_of(code).ok_or_else(|| {
            cx.err(format!(
                "output type {} is not supported",
                crate::onnx::proto::data_type::name(code)
            ))
        }),
    }
}

pub fn quantize_linear(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    if Attrs::of(n).i("saturate", 1) == 0 {
        return Err(cx.err("saturate = 0 applies to float8 outputs, which are not supported"));
    }
    let x = cx.req(n, 0)?;
    let p = Params::read(cx, n, x, 1, 2, Attrs::of(n).i("axis", 1))?;
    let to = output_type(cx, n, &p)?;
    quantize(cx, n, x, &p, to)
}

pub fn dequantize_linear(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let x = cx.req(n, 0)?;
    let p = Params::read(cx, n, x, 1, 2, Attrs::of(n).i("axis", 1))?;
    let out = n.output[0].clone();
    Ok(vec![dequantize(cx, x, &p, &out)?])
}

/// Per-tensor parameters at slots `s`, `z` (QOperator activations).
fn tensor_params(cx: &Ctx, n: &NodeProto, x: ValueId, s: usize, z: usize) -> Result<Params, ImportError> {
    let p = Params::read(cx, n, x, s, z, 0)?;
    if p.axis.is_some() {
        return Err(cx.err(format!("input {s} must be one scale for the whole tensor")));
    }
    Ok(p)
}

/// The int32 bias of a QLinearConv, dequantized at `x_scale * w_scale[c]`.
fn qlinear_bias(
    cx: &mut Ctx,
    n: &NodeProto,
    xp: &Params,
    wp: &Params,
    m: usize,
) -> Result<Option<ValueId>, ImportError> {
    let Some(b) = cx.input(n, 8) else {
        return Ok(None);
    };
    if cx.ty(b).dtype.scalar != Scalar::I32 || cx.ty(b).shape != [m] {
        return Err(cx.err(format!("bias must be int32 [{m}], not {}", cx.ty(b))));
    }
    let scales: Vec<f32> = (0..m)
        .map(|c| xp.scales[0] * wp.scales[if wp.scales.len() == 1 { 0 } else { c }])
        .collect();
    let p = Params {
        scales,
        zero_points: vec![0; m],
        axis: Some(0),
        block: 0,
        shape: vec![m],
        zp_type: None,
    };
    let name = format!("{}/bias", cx.node_name());
    Ok(Some(dequantize(cx, b, &p, &name)?))
}

/// QLinearConv: dequantize input and weight, float Conv, quantize the result.
pub fn qlinear_conv(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let (x, w) = (cx.req(n, 0)?, cx.req(n, 3)?);
    let xp = tensor_params(cx, n, x, 1, 2)?;
    let wp = Params::read(cx, n, w, 4, 5, 0)?;
    let yp = tensor_params(cx, n, x, 6, 7)?;
    let node = cx.node_name().to_string();
    let xf = dequantize(cx, x, &xp, &format!("{node}/x"))?;
    let wf = dequantize(cx, w, &wp, &format!("{node}/w"))?;
    let m = cx.ty(w).shape.first().copied().unwrap_or(0);
    let mut ins = vec![xf, wf];
    ins.extend(qlinear_bias(cx, n, &xp, &wp, m)?);
    let op = conv_op(cx, n, xf, wf)?;
    let y = cx.add_aux("float", op, ins)?;
    let to = cx.ty(cx.req(n, 7)?).dtype.scalar;
    quantize(cx, n, y, &Params::scalar(yp.scales[0], yp.zero_points[0]), to)
}

/// QLinearMatMul: dequantize both operands (per tensor, per row of `a`, per column of `b`),
/// float MatMul, quantize the result.
pub fn qlinear_matmul(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let (a, b) = (cx.req(n, 0)?, cx.req(n, 3)?);
    let ap = Params::read(cx, n, a, 1, 2, -2)?;
    let bp = Params::read(cx, n, b, 4, 5, -1)?;
    let yp = tensor_params(cx, n, a, 6, 7)?;
    let node = cx.node_name().to_string();
    let af = dequantize(cx, a, &ap, &format!("{node}/a"))?;
    let bf = dequantize(cx, b, &bp, &format!("{node}/b"))?;
    let y = cx.add_aux("float", Op::MatMul, vec![af, bf])?;
    let to = cx.ty(cx.req(n, 7)?).dtype.scalar;
    quantize(cx, n, y, &Params::scalar(yp.scales[0], yp.zero_points[0]), to)
}

// ---- ONNX Runtime's com.microsoft QOperator ops: the same dequantize / float op / quantize
// form, so one integer lowering serves QDQ and QOperator models ----

/// The element type a QOperator op outputs: its zero point's, else its input's.
fn out_type(cx: &Ctx, n: &NodeProto, zp_slot: usize, x: ValueId) -> Scalar {
    cx.input(n, zp_slot)
        .map_or(cx.ty(x).dtype.scalar, |z| cx.ty(z).dtype.scalar)
}

/// Dequantizes input `x` at slot `i` with its scale and zero point in the next two slots.
fn dequantized(cx: &mut Ctx, n: &NodeProto, i: usize, what: &str) -> Result<ValueId, ImportError> {
    let x = cx.req(n, i)?;
    let p = tensor_params(cx, n, x, i + 1, i + 2)?;
    let name = format!("{}/{what}", cx.node_name());
    dequantize(cx, x, &p, &name)
}

/// Quantizes float `y` with the scale and zero point at slots `s`, `s + 1` into node
/// `n`'s output.
fn requantized(cx: &mut Ctx, n: &NodeProto, y: ValueId, s: usize, x: ValueId) -> Result<Vec<ValueId>, ImportError> {
    let p = tensor_params(cx, n, y, s, s + 1)?;
    let to = out_type(cx, n, s + 1, x);
    quantize(cx, n, y, &Params::scalar(p.scales[0], p.zero_points[0]), to)
}

/// QLinearSigmoid, QLinearLeakyRelu, QLinearSoftmax: `[x, x_scale, x_zp, y_scale, y_zp]`.
pub fn qlinear_unary(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let x = cx.req(n, 0)?;
    let xf = dequantized(cx, n, 0, "x")?;
    let a = Attrs::of(n);
    let shape = cx.ty(x).shape.clone();
    let y = match n.op_type.as_str() {
        "QLinearSigmoid" => cx.add_aux("float", Op::Unary(UnaryOp::Sigmoid), vec![xf])?,
        "QLinearLeakyRelu" => {
            let alpha = a.f("alpha", 0.01);
            cx.add_aux("float", Op::Unary(UnaryOp::LeakyRelu { alpha }), vec![xf])?
        }
        _ => {
            // `opset` names the Softmax semantics: before 13, over all axes from `axis` on
            let legacy = a.i("opset", 13) < 13;
            let axis = cx.axis(a.i("axis", if legacy { 1 } else { -1 }), shape.len().max(1))?;
            if legacy && axis + 1 != shape.len() {
                return Err(cx.err("a softmax over several axes (opset < 13 with a middle axis) is not supported"));
            }
            cx.add_aux("float", Op::Softmax { axis }, vec![xf])?
        }
    };
    requantized(cx, n, y, 3, x)
}

/// QLinearAdd, QLinearMul: `[a, a_scale, a_zp, b, b_scale, b_zp, c_scale, c_zp]`.
pub fn qlinear_binary(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let a = cx.req(n, 0)?;
    let af = dequantized(cx, n, 0, "a")?;
    let bf = dequantized(cx, n, 3, "b")?;
    let op = if n.op_type == "QLinearAdd" {
        BinaryOp::Add
    } else {
        BinaryOp::Mul
    };
    let y = cx.add_aux("float", Op::Binary(op), vec![af, bf])?;
    requantized(cx, n, y, 6, a)
}

/// QLinearAveragePool, QLinearGlobalAveragePool: `[x, x_scale, x_zp, y_scale, y_zp]`.
pub fn qlinear_pool(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let a = Attrs::of(n);
    if a.i("channels_last", 0) != 0 {
        return Err(cx.err("channels_last = 1 is not supported"));
    }
    let x = cx.req(n, 0)?;
    let xf = dequantized(cx, n, 0, "x")?;
    let kind = kiln_ir::op::PoolKind::Avg {
        count_include_pad: a.i("count_include_pad", 0) != 0,
    };
    let op = if n.op_type == "QLinearGlobalAveragePool" {
        Op::GlobalPool(kind)
    } else {
        super::pool::pool_op(cx, n, xf, kind)?
    };
    let y = cx.add_aux("float", op, vec![xf])?;
    requantized(cx, n, y, 3, x)
}

/// QLinearConcat: `[y_scale, y_zp, (x, x_scale, x_zp)...]`.
pub fn qlinear_concat(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    if n.input.len() < 5 || !(n.input.len() - 2).is_multiple_of(3) {
        return Err(cx.err("inputs must be y_scale, y_zero_point, then (x, scale, zero point) triples"));
    }
    let x0 = cx.req(n, 2)?;
    let axis = cx.axis(Attrs::of(n).i("axis", 0), cx.rank(x0))?;
    let ins = (2..n.input.len())
        .step_by(3)
        .enumerate()
        .map(|(k, i)| dequantized(cx, n, i, &format!("x{k}")))
        .collect::<Result<Vec<_>, _>>()?;
    let y = cx.add_aux("float", Op::Concat { axis }, ins)?;
    requantized(cx, n, y, 0, x0)
}

/// QGemm: `[a, a_scale, a_zp, b, b_scale, b_zp, c?, y_scale?, y_zp?]`, `c` int32 at
/// `a_scale * b_scale`; without `y_scale` the output is float.
pub fn qgemm(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let at = Attrs::of(n);
    let (trans_a, trans_b) = (at.i("transA", 0) != 0, at.i("transB", 0) != 0);
    let (a, b) = (cx.req(n, 0)?, cx.req(n, 3)?);
    let ap = tensor_params(cx, n, a, 1, 2)?;
    let bp = Params::read(cx, n, b, 4, 5, if trans_b { 0 } else { 1 })?;
    let node = cx.node_name().to_string();
    let af = dequantize(cx, a, &ap, &format!("{node}/a"))?;
    let bf = dequantize(cx, b, &bp, &format!("{node}/b"))?;
    let mut ins = vec![af, bf];
    if let Some(c) = cx.input(n, 6) {
        let cs = cx.ty(c).shape.clone();
        let cols = cs.last().copied().unwrap_or(1);
        if cx.ty(c).dtype.scalar != Scalar::I32 || cs.iter().rev().skip(1).any(|&d| d != 1) {
            return Err(cx.err(format!(
                "bias must be int32 with one value per column, not {}",
                cx.ty(c)
            )));
        }
        let scales: Vec<f32> = (0..cols)
            .map(|j| ap.scales[0] * bp.scales[if bp.scales.len() == 1 { 0 } else { j }])
            .collect();
        let p = Params {
            scales,
            zero_points: vec![0; cols],
            axis: Some(cs.len() - 1),
            block: 0,
            shape: vec![cols],
            zp_type: None,
        };
        ins.push(dequantize(cx, c, &p, &format!("{node}/c"))?);
    }
    let op = Op::Gemm {
        alpha: at.f("alpha", 1.0),
        beta: 1.0,
        trans_a,
        trans_b,
        fused: None,
    };
    if cx.input(n, 7).is_none() {
        return cx.add(n, op, ins);
    }
    let y = cx.add_aux("float", op, ins)?;
    requantized(cx, n, y, 7, a)
}

// ---- dynamic quantization (ONNX Runtime's `quantize_dynamic`) ----

/// DynamicQuantizeLinear: `[y: u8, y_scale, y_zero_point]`.
pub fn dynamic_quantize_linear(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let x = cx.req(n, 0)?;
    cx.add(n, Op::DynamicQuantize, vec![x])
}

/// ConvInteger: `[x, w, x_zero_point?, w_zero_point?] -> i32`.
pub fn conv_integer(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let (x, w) = (cx.req(n, 0)?, cx.req(n, 1)?);
    let Op::Conv(c) = conv_op(cx, n, x, w)? else {
        unreachable!("conv_op makes a Conv")
    };
    let ins = integer_operands(cx, n)?;
    cx.add(
        n,
        Op::IntConv {
            window: c.window,
            group: c.group,
        },
        ins,
    )
}

/// MatMulInteger: `[a, b, a_zero_point?, b_zero_point?] -> i32`.
pub fn matmul_integer(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let ins = integer_operands(cx, n)?;
    cx.add(n, Op::IntMatMul, ins)
}

/// `[a, b, a_zp?, b_zp?]` with a zero of `a`'s type standing in for an absent `a_zp` that
/// `b_zp` follows, so the slots keep their meaning.
fn integer_operands(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let mut ins = vec![cx.req(n, 0)?, cx.req(n, 1)?];
    match (cx.input(n, 2), cx.input(n, 3)) {
        (Some(a), b) => {
            ins.push(a);
            ins.extend(b);
        }
        (None, Some(b)) => {
            let zero = match cx.ty(ins[0]).dtype.scalar {
                Scalar::U8 => Tensor::from_vec(vec![], vec![0u8]),
                _ => Tensor::from_vec(vec![], vec![0i8]),
            };
            let name = format!("{}/a_zero_point", cx.node_name());
            ins.push(cx.constant(&name, zero));
            ins.push(b);
        }
        (None, None) => {}
    }
    Ok(ins)
}

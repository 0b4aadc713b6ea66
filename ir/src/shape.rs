//! Static shape and type inference: given input types, the output types of an op. Used when
//! nodes are added and again by the verifier, so a graph can never hold a stale shape.

use crate::dtype::{DType, QParams, Scalar, TensorType};
use crate::error::{IrError, Result};
use crate::op::*;

/// Numpy-style broadcast of two shapes.
pub fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r { a[i + a.len() - r] } else { 1 };
        let db = if i + b.len() >= r { b[i + b.len() - r] } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// Output length of a sliding window along one axis (convolution and pooling).
pub fn window_out(
    input: usize,
    k: usize,
    stride: usize,
    dil: usize,
    pb: usize,
    pe: usize,
    ceil: bool,
) -> Option<usize> {
    let eff = dil * (k - 1) + 1;
    let padded = input + pb + pe;
    if padded < eff || stride == 0 {
        return None;
    }
    let span = padded - eff;
    let mut out = if ceil {
        span.div_ceil(stride) + 1
    } else {
        span / stride + 1
    };
    // ONNX: with ceil_mode, a window may not start inside the end padding.
    if ceil && (out - 1) * stride >= input + pb {
        out -= 1;
    }
    Some(out)
}

/// A parsed einsum equation: one label list per operand and for the output.
pub struct EinsumSpec {
    pub inputs: Vec<Vec<char>>,
    pub output: Vec<char>,
}

/// Parses `ab,bc->ac` (and the implicit form `ab,bc`); `...` is not supported.
pub fn parse_einsum(eq: &str, n_inputs: usize) -> Result<EinsumSpec> {
    let eq: String = eq.chars().filter(|c| !c.is_whitespace()).collect();
    if eq.contains("...") {
        return Err(IrError::shape("Einsum", "ellipsis (`...`) is not supported"));
    }
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l.to_string(), Some(r.to_string())),
        None => (eq.clone(), None),
    };
    let inputs: Vec<Vec<char>> = lhs.split(',').map(|s| s.chars().collect()).collect();
    if inputs.len() != n_inputs {
        return Err(IrError::shape(
            "Einsum",
            format!("equation has {} operands, node has {n_inputs}", inputs.len()),
        ));
    }
    let output: Vec<char> = match rhs {
        Some(r) => r.chars().collect(),
        None => {
            let mut labels: Vec<char> = inputs.iter().flatten().copied().collect();
            labels.sort();
            labels.dedup();
            labels
                .into_iter()
                .filter(|c| inputs.iter().flatten().filter(|x| *x == c).count() == 1)
                .collect()
        }
    };
    if inputs
        .iter()
        .flatten()
        .chain(output.iter())
        .any(|c| !c.is_ascii_alphabetic())
    {
        return Err(IrError::shape("Einsum", format!("bad equation `{eq}`")));
    }
    Ok(EinsumSpec { inputs, output })
}

fn err<T>(op: &Op, msg: impl Into<String>) -> Result<T> {
    Err(IrError::shape(op.name(), msg))
}

fn arity(op: &Op, inputs: &[&TensorType], min: usize, max: usize) -> Result<()> {
    if inputs.len() < min || inputs.len() > max {
        return err(op, format!("expects {min}..={max} inputs, got {}", inputs.len()));
    }
    Ok(())
}

fn qtype(s: Scalar, scale: f32, zero_point: i32, shape: Vec<usize>) -> TensorType {
    TensorType::new(DType::quantized(s, QParams::PerTensor { scale, zero_point }), shape)
}

/// Integer Conv/MatMul/Add: i8 data and weights, an i32 bias.
fn int_inputs(op: &Op, inputs: &[&TensorType]) -> Result<()> {
    for (i, t) in inputs.iter().enumerate() {
        let want = if i == 2 { Scalar::I32 } else { Scalar::I8 };
        if t.dtype.scalar != want {
            return err(op, format!("input {i} is {}, expected {want}", t.dtype.scalar));
        }
    }
    Ok(())
}

/// An integer product reads int8 activations (int32 bias, int8 result) or int16 ones
/// (16x8: int64 bias, int16 result), and int8 weights; returns the result's type.
fn product_inputs(op: &Op, inputs: &[&TensorType]) -> Result<Scalar> {
    let x = inputs[0].dtype.scalar;
    let bias = match x {
        Scalar::I8 => Scalar::I32,
        Scalar::I16 => Scalar::I64,
        _ => return err(op, format!("input 0 is {x}, expected i8 or i16")),
    };
    for (i, t) in inputs.iter().enumerate().skip(1) {
        let want = if i == 2 { bias } else { Scalar::I8 };
        if t.dtype.scalar != want {
            return err(op, format!("input {i} is {}, expected {want}", t.dtype.scalar));
        }
    }
    Ok(x)
}

/// A hybrid op reads f32 activations and int8 weights.
fn dyn_inputs(op: &Op, inputs: &[&TensorType]) -> Result<()> {
    for (t, want) in inputs.iter().zip([Scalar::F32, Scalar::I8]) {
        if t.dtype.scalar != want {
            return err(op, format!("input {t} is not {want}"));
        }
    }
    Ok(())
}

/// ConvInteger/MatMulInteger operands: 8-bit integers, zero points of the same type with one
/// value (or one per row of `a` / column of `b`, which the evaluator broadcasts).
fn int_operands(op: &Op, inputs: &[&TensorType]) -> Result<()> {
    for (i, t) in inputs.iter().enumerate() {
        let of = inputs[i % 2].dtype.scalar;
        if !matches!(t.dtype.scalar, Scalar::U8 | Scalar::I8) || t.dtype.scalar != of {
            return err(op, format!("input {i} is {t}, not 8-bit integers like its operand"));
        }
    }
    Ok(())
}

fn check_scales(op: &Op, scales: &[f32], channels: usize) -> Result<()> {
    if scales.len() != 1 && scales.len() != channels {
        return err(
            op,
            format!("{} weight scales for {channels} output channels", scales.len()),
        );
    }
    Ok(())
}

fn check_requant(op: &Op, q: &QLinear, channels: usize, out: Scalar) -> Result<()> {
    if q.requant.len() != 1 && q.requant.len() != channels {
        return err(
            op,
            format!("{} rescale factors for {channels} output channels", q.requant.len()),
        );
    }
    let (lo, hi) = if out == Scalar::I16 {
        (-32768, 32767)
    } else {
        (-128, 127)
    };
    if q.act_min > q.act_max || q.act_min < lo || q.act_max > hi {
        return err(op, format!("bad activation range {}..={}", q.act_min, q.act_max));
    }
    if !matches!(q.weight_bits, 2 | 4 | 8) {
        return err(op, format!("weights of {} bits (8, 4 or 2)", q.weight_bits));
    }
    Ok(())
}

/// The element type of a layout op's output: per-axis parameters follow their axis to
/// where `moved` puts it, and are dropped when the axis does not survive.
fn moved_quant(x: &TensorType, shape: &[usize], moved: impl Fn(usize) -> Option<usize>) -> DType {
    let mut d = x.dtype.clone();
    if matches!(x.dtype.quant, Some(QParams::Blocked { .. })) {
        d.quant = None;
    }
    if let Some(QParams::PerAxis {
        axis,
        scales,
        zero_points,
    }) = &x.dtype.quant
    {
        d.quant = moved(*axis)
            .filter(|&a| shape.get(a) == Some(&scales.len()))
            .map(|a| QParams::PerAxis {
                axis: a,
                scales: scales.clone(),
                zero_points: zero_points.clone(),
            });
    }
    d
}

fn plain(s: Scalar, shape: Vec<usize>) -> TensorType {
    TensorType::new(DType::plain(s), shape)
}

fn same_scalar(op: &Op, a: &TensorType, b: &TensorType) -> Result<()> {
    if a.dtype.scalar != b.dtype.scalar {
        return err(
            op,
            format!("element types differ: {} vs {}", a.dtype.scalar, b.dtype.scalar),
        );
    }
    Ok(())
}

/// A product's weight: the input's element type, or binary16 weights of an f32 product
/// (reduced-float builds; every kernel widens them exactly as it reads them).
fn weight_scalar(op: &Op, x: &TensorType, w: &TensorType) -> Result<()> {
    if x.dtype.scalar == Scalar::F32 && w.dtype.scalar == Scalar::F16 {
        return Ok(());
    }
    same_scalar(op, x, w)
}

/// Upper bound on the tap reads of one window op per channel (output positions times kernel
/// taps): kernels fill tables of that size, and a 1 KB model must not ask for gigabytes.
pub const MAX_WINDOW_TAPS: usize = 1 << 27;

fn spatial(op: &Op, x: &TensorType, w: &Window, ceil: bool) -> Result<Vec<usize>> {
    let r = w.kernel.len();
    if x.shape.len() != r + 2 || w.strides.len() != r || w.dilations.len() != r || w.pads.len() != 2 * r {
        return err(op, format!("window of rank {r} does not fit input {x}"));
    }
    if w.kernel.contains(&0) {
        return err(op, format!("kernel {:?} is empty", w.kernel));
    }
    let out = spatial_out(op, x, w, ceil)?;
    let taps = (w.kernel.iter().chain(&out)).try_fold(1usize, |a, &d| a.checked_mul(d));
    if taps.is_none_or(|t| t > MAX_WINDOW_TAPS) {
        return err(
            op,
            format!(
                "kernel {:?} at {out:?} positions exceeds the limit of {MAX_WINDOW_TAPS} tap reads",
                w.kernel
            ),
        );
    }
    Ok(out)
}

fn spatial_out(op: &Op, x: &TensorType, w: &Window, ceil: bool) -> Result<Vec<usize>> {
    let r = w.kernel.len();
    (0..r)
        .map(|i| {
            window_out(
                x.shape[i + 2],
                w.kernel[i],
                w.strides[i],
                w.dilations[i],
                w.pads[i],
                w.pads[i + r],
                ceil,
            )
            .ok_or_else(|| {
                IrError::shape(
                    op.name(),
                    format!("window larger than padded input on spatial axis {i} of {x}"),
                )
            })
        })
        .collect()
}

/// Output types of `op` applied to inputs of the given types. This match is exhaustive
/// (a new op does not compile without an arm); each family's rules live in the function
/// it routes to.
pub fn infer(op: &Op, inputs: &[&TensorType]) -> Result<Vec<TensorType>> {
    use Op::*;
    match op {
        Identity
        | Unary(_)
        | Softmax { .. }
        | LogSoftmax { .. }
        | Hardmax { .. }
        | Lrn { .. }
        | Binary(_)
        | Where
        | Cast { .. } => infer_elementwise(op, inputs),
        QConv { .. }
        | QMatMul { .. }
        | QBlockMatMul { .. }
        | DynConv { .. }
        | DynamicQuantize
        | IntConv { .. }
        | IntMatMul
        | DynMatMul { .. } => infer_products(op, inputs),
        Quantize { .. }
        | Dequantize { .. }
        | QAdd(_)
        | QMul(_)
        | QPRelu(_)
        | QSoftmax16 { .. }
        | QSoftmax { .. }
        | Lut { .. }
        | Requant { .. }
        | Lut16 { .. } => infer_integer(op, inputs),
        Conv(_)
        | ConvTranspose(_)
        | Gemm { .. }
        | MatMul
        | Pool(_)
        | GlobalPool(_)
        | BatchNorm { .. }
        | InstanceNorm { .. }
        | LayerNorm { .. } => infer_layer(op, inputs),
        Einsum { .. } | Rnn(_) | Resize(_) => infer_sequence(op, inputs),
        Reshape { .. }
        | Transpose { .. }
        | Concat { .. }
        | Split { .. }
        | Slice { .. }
        | Pad { .. }
        | Gather { .. }
        | GatherElements { .. }
        | GatherNd { .. }
        | ScatterElements { .. }
        | ScatterNd { .. }
        | Expand { .. }
        | Tile { .. }
        | OneHot { .. }
        | Trilu { .. } => infer_layout(op, inputs),
        Reduce { .. } | ArgMax { .. } | ArgMin { .. } | CumSum { .. } | TopK { .. } => infer_reduction(op, inputs),
    }
}

/// Unary and binary maps, softmax and its kin, LRN, `Where` and `Cast`.
fn infer_elementwise(op: &Op, inputs: &[&TensorType]) -> Result<Vec<TensorType>> {
    use Op::*;
    let x = || inputs[0];
    match op {
        Identity | Unary(_) | Softmax { .. } | LogSoftmax { .. } | Hardmax { .. } | Lrn { .. } => {
            arity(op, inputs, 1, 1)?;
            if let Unary(u) = op {
                let s = x().dtype.scalar;
                let ok = match u {
                    UnaryOp::Not => s == Scalar::Bool,
                    UnaryOp::BitwiseNot => s.is_int(),
                    UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Sign | UnaryOp::Relu => s != Scalar::Bool,
                    _ => s.is_float(),
                };
                if !ok {
                    return err(op, format!("unsupported element type {s}"));
                }
                if matches!(u, UnaryOp::IsNaN | UnaryOp::IsInf { .. }) {
                    return Ok(vec![plain(Scalar::Bool, x().shape.clone())]);
                }
            }
            if let Softmax { axis } | LogSoftmax { axis } | Hardmax { axis } = op
                && *axis >= x().shape.len()
            {
                return err(op, format!("axis {axis} out of range for {}", x()));
            }
            Ok(vec![x().clone()])
        }
        Binary(b) => {
            arity(op, inputs, 2, 2)?;
            let (a, c) = (inputs[0], inputs[1]);
            if !matches!(b, BinaryOp::Pow) {
                same_scalar(op, a, c)?;
            }
            let shape = broadcast(&a.shape, &c.shape)
                .ok_or_else(|| IrError::shape(op.name(), format!("cannot broadcast {a} with {c}")))?;
            if *b == BinaryOp::PRelu && shape != a.shape {
                return err(op, format!("slope {c} must broadcast to {a}"));
            }
            let s = if b.yields_bool() { Scalar::Bool } else { a.dtype.scalar };
            Ok(vec![plain(s, shape)])
        }
        Where => {
            arity(op, inputs, 3, 3)?;
            if inputs[0].dtype.scalar != Scalar::Bool {
                return err(op, "condition must be bool");
            }
            same_scalar(op, inputs[1], inputs[2])?;
            let s = broadcast(&inputs[0].shape, &inputs[1].shape)
                .and_then(|s| broadcast(&s, &inputs[2].shape))
                .ok_or_else(|| IrError::shape("Where", "inputs do not broadcast"))?;
            Ok(vec![plain(inputs[1].dtype.scalar, s)])
        }
        Cast { to } => {
            arity(op, inputs, 1, 1)?;
            Ok(vec![plain(*to, x().shape.clone())])
        }
        other => unreachable!("`infer` routed {} to `infer_elementwise`", other.name()),
    }
}

/// Quantize/Dequantize and the integer and hybrid ops.
fn infer_integer(op: &Op, inputs: &[&TensorType]) -> Result<Vec<TensorType>> {
    use Op::*;
    let x = || inputs[0];
    match op {
        Quantize { to, scale, zero_point } => {
            arity(op, inputs, 1, 1)?;
            if x().dtype.scalar != Scalar::F32 || !matches!(to, Scalar::I8 | Scalar::U8 | Scalar::I16) {
                return err(
                    op,
                    format!("quantizes f32 to i8/u8/i16, not {} to {to}", x().dtype.scalar),
                );
            }
            Ok(vec![qtype(*to, *scale, *zero_point, x().shape.clone())])
        }
        Dequantize { .. } => {
            arity(op, inputs, 1, 1)?;
            if !matches!(x().dtype.scalar, Scalar::I8 | Scalar::U8 | Scalar::I16 | Scalar::I32) {
                return err(op, format!("dequantizes integers, not {}", x().dtype.scalar));
            }
            Ok(vec![plain(Scalar::F32, x().shape.clone())])
        }
        QAdd(_) | QMul(_) if inputs.len() == 2 && inputs.iter().all(|t| t.dtype.scalar == Scalar::I16) => {
            // the int16 of 16x8 layers
            let s = broadcast(&inputs[0].shape, &inputs[1].shape).ok_or_else(|| {
                IrError::shape(op.name(), format!("cannot broadcast {} with {}", inputs[0], inputs[1]))
            })?;
            let (scale, zp, lo, hi) = match op {
                QAdd(a) => (a.output_scale, a.output_zp, a.act_min, a.act_max),
                QMul(m) => (m.output_scale, m.output_zp, m.act_min, m.act_max),
                _ => unreachable!(),
            };
            if lo < -32768 || hi > 32767 || lo > hi {
                return err(op, format!("bad activation range {lo}..={hi}"));
            }
            Ok(vec![qtype(Scalar::I16, scale, zp, s)])
        }
        QAdd(_) | QMul(_) => {
            arity(op, inputs, 2, 2)?;
            int_inputs(op, inputs)?;
            let s = broadcast(&inputs[0].shape, &inputs[1].shape).ok_or_else(|| {
                IrError::shape(op.name(), format!("cannot broadcast {} with {}", inputs[0], inputs[1]))
            })?;
            let (scale, zp) = match op {
                QAdd(a) => (a.output_scale, a.output_zp),
                QMul(m) => (m.output_scale, m.output_zp),
                _ => unreachable!(),
            };
            Ok(vec![qtype(Scalar::I8, scale, zp, s)])
        }
        QPRelu(p) => {
            arity(op, inputs, 2, 2)?;
            if inputs.iter().any(|t| t.dtype.scalar != Scalar::I8) {
                return err(op, "int8 input and alpha");
            }
            let s = broadcast(&inputs[0].shape, &inputs[1].shape)
                .filter(|s| *s == inputs[0].shape)
                .ok_or_else(|| {
                    IrError::shape(
                        op.name(),
                        format!("alpha {} does not broadcast to {}", inputs[1], inputs[0]),
                    )
                })?;
            Ok(vec![qtype(Scalar::I8, p.output_scale, p.output_zp, s)])
        }
        QSoftmax16 { axis, exp_hi, exp_lo } => {
            arity(op, inputs, 1, 1)?;
            if x().dtype.scalar != Scalar::I16 || *axis >= x().shape.len() || x().shape[*axis] > 1 << 16 {
                return err(op, "softmax of i16 along an existing axis of at most 65536");
            }
            // Q30 exponentials: at most 1.0, and exp(0) = 1.0 so no row sums to zero
            let q30 = |t: &[i32]| t.len() == 256 && t[0] == 1 << 30 && t.iter().all(|&v| (0..=1 << 30).contains(&v));
            if !q30(exp_hi) || !q30(exp_lo) {
                return err(op, "takes two 256-entry Q30 exponential tables starting at 1.0");
            }
            Ok(vec![qtype(Scalar::I16, 1.0 / 32768.0, 0, x().shape.clone())])
        }
        QSoftmax { axis, exp_table } => {
            arity(op, inputs, 1, 1)?;
            if x().dtype.scalar != Scalar::I8 || exp_table.len() != 256 || *axis >= x().shape.len() {
                return err(op, "softmax of i8 along an existing axis with a 256-entry table");
            }
            if x().shape[*axis] > kiln_runtime::SOFTMAX_MAX_LEN {
                return err(op, format!("axis longer than {}", kiln_runtime::SOFTMAX_MAX_LEN));
            }
            Ok(vec![qtype(Scalar::I8, 1.0 / 256.0, -128, x().shape.clone())])
        }
        Lut {
            table,
            scale,
            zero_point,
        } => {
            arity(op, inputs, 1, 1)?;
            if x().dtype.scalar != Scalar::I8 || table.len() != 256 {
                return err(op, "maps i8 through a 256-entry table");
            }
            Ok(vec![qtype(Scalar::I8, *scale, *zero_point, x().shape.clone())])
        }
        Requant {
            to, scale, zero_point, ..
        } => {
            arity(op, inputs, 1, 1)?;
            if !matches!(x().dtype.scalar, Scalar::I8 | Scalar::I16) || !matches!(to, Scalar::I8 | Scalar::I16) {
                return err(op, format!("moves i8/i16 to i8/i16, not {} to {to}", x().dtype.scalar));
            }
            Ok(vec![qtype(*to, *scale, *zero_point, x().shape.clone())])
        }
        Lut16 { table, scale } => {
            arity(op, inputs, 1, 1)?;
            if x().dtype.scalar != Scalar::I16 || table.len() != kiln_runtime::LUT16_LEN {
                return err(op, "maps i16 through a 513-entry table");
            }
            Ok(vec![qtype(Scalar::I16, *scale, 0, x().shape.clone())])
        }
        other => unreachable!("`infer` routed {} to `infer_integer`", other.name()),
    }
}

/// The integer and hybrid products and ONNX's dynamic-quantization ops.
fn infer_products(op: &Op, inputs: &[&TensorType]) -> Result<Vec<TensorType>> {
    use Op::*;
    let x = || inputs[0];
    match op {
        QConv { window, group, q } => {
            arity(op, inputs, 2, 3)?;
            let out_scalar = product_inputs(op, inputs)?;
            let f = crate::op::Conv {
                window: window.clone(),
                group: *group,
                fused: None,
            };
            let as_float: Vec<TensorType> = inputs.iter().map(|t| plain(Scalar::F32, t.shape.clone())).collect();
            let refs: Vec<&TensorType> = as_float.iter().collect();
            let out = infer(&Op::Conv(f), &refs)?;
            check_requant(op, q, out[0].shape[1], out_scalar)?;
            Ok(vec![qtype(
                out_scalar,
                q.output_scale,
                q.output_zp,
                out[0].shape.clone(),
            )])
        }
        QMatMul { q } => {
            arity(op, inputs, 2, 3)?;
            let out_scalar = product_inputs(op, inputs)?;
            let (a, w) = (inputs[0], inputs[1]);
            if w.shape.len() != 2 || a.shape.last() != Some(&w.shape[0]) {
                return err(op, format!("cannot multiply {a} by {w}"));
            }
            if let Some(b) = inputs.get(2)
                && b.shape != [w.shape[1]]
            {
                return err(op, format!("bias {b} does not match {} outputs", w.shape[1]));
            }
            check_requant(op, q, w.shape[1], out_scalar)?;
            let mut s = a.shape.clone();
            *s.last_mut().expect("rank >= 1") = w.shape[1];
            Ok(vec![qtype(out_scalar, q.output_scale, q.output_zp, s)])
        }
        QBlockMatMul { q, block } => {
            arity(op, inputs, 2, 3)?;
            let (a, w) = (inputs[0], inputs[1]);
            if a.dtype.scalar != Scalar::I8 || w.dtype.scalar != Scalar::I8 {
                return err(op, format!("takes int8 inputs and weights, not {a} and {w}"));
            }
            if w.shape.len() != 2 || a.shape.last() != Some(&w.shape[0]) {
                return err(op, format!("cannot multiply {a} by {w}"));
            }
            let (k, nn) = (w.shape[0], w.shape[1]);
            if let Some(b) = inputs.get(2)
                && (b.shape != [nn] || b.dtype.scalar != Scalar::I64)
            {
                return err(op, format!("bias {b} is not i64 [{nn}]"));
            }
            // i64 totals: K products of at most 2^15 times multipliers below 2^31
            if *block == 0 || k > 1 << 16 {
                return err(op, format!("blocks of {block} over K = {k}"));
            }
            if q.requant.len() != k.div_ceil(*block) * nn {
                return err(
                    op,
                    format!("{} rescale factors for blocks of {block} in {w}", q.requant.len()),
                );
            }
            let shared = (q.requant.iter().enumerate()).all(|(i, r)| {
                r.shift == q.requant[i % nn].shift && (-31..=30).contains(&r.shift) && r.multiplier != i32::MIN
            });
            if !shared {
                return err(op, "the blocks of a column must share one shift in -31..=30");
            }
            check_requant(
                op,
                &QLinear {
                    requant: q.requant[..nn].into(),
                    ..q.clone()
                },
                nn,
                Scalar::I8,
            )?;
            let mut s = a.shape.clone();
            *s.last_mut().expect("rank >= 1") = nn;
            Ok(vec![qtype(Scalar::I8, q.output_scale, q.output_zp, s)])
        }
        DynConv {
            window,
            group,
            weight_scales,
        } => {
            arity(op, inputs, 2, 2)?;
            dyn_inputs(op, inputs)?;
            let f = crate::op::Conv {
                window: window.clone(),
                group: *group,
                fused: None,
            };
            let as_float: Vec<TensorType> = inputs.iter().map(|t| plain(Scalar::F32, t.shape.clone())).collect();
            let refs: Vec<&TensorType> = as_float.iter().collect();
            let out = infer(&Op::Conv(f), &refs)?;
            check_scales(op, weight_scales, out[0].shape[1])?;
            Ok(out)
        }
        DynamicQuantize => {
            arity(op, inputs, 1, 1)?;
            if x().dtype.scalar != Scalar::F32 {
                return err(op, format!("quantizes f32, not {}", x().dtype.scalar));
            }
            Ok(vec![
                plain(Scalar::U8, x().shape.clone()),
                plain(Scalar::F32, vec![]),
                plain(Scalar::U8, vec![]),
            ])
        }
        IntConv { window, group } => {
            arity(op, inputs, 2, 4)?;
            int_operands(op, inputs)?;
            let f = crate::op::Conv {
                window: window.clone(),
                group: *group,
                fused: None,
            };
            let as_float: Vec<TensorType> = inputs[..2]
                .iter()
                .map(|t| plain(Scalar::F32, t.shape.clone()))
                .collect();
            let refs: Vec<&TensorType> = as_float.iter().collect();
            let out = infer(&Op::Conv(f), &refs)?;
            Ok(vec![plain(Scalar::I32, out[0].shape.clone())])
        }
        IntMatMul => {
            arity(op, inputs, 2, 4)?;
            int_operands(op, inputs)?;
            if inputs[1].shape.len() != 2 {
                return err(op, format!("the second operand {} must be 2-D", inputs[1]));
            }
            let as_float: Vec<TensorType> = inputs[..2]
                .iter()
                .map(|t| plain(Scalar::F32, t.shape.clone()))
                .collect();
            let refs: Vec<&TensorType> = as_float.iter().collect();
            let out = infer(&MatMul, &refs)?;
            Ok(vec![plain(Scalar::I32, out[0].shape.clone())])
        }
        DynMatMul {
            weight_scales,
            block,
            weight_bits,
        } => {
            arity(op, inputs, 2, 2)?;
            dyn_inputs(op, inputs)?;
            let (a, w) = (inputs[0], inputs[1]);
            if w.shape.len() != 2 || a.shape.last() != Some(&w.shape[0]) {
                return err(op, format!("cannot multiply {a} by {w}"));
            }
            if !matches!(weight_bits, 2 | 4 | 8) {
                return err(op, format!("weights of {weight_bits} bits (8, 4 or 2)"));
            }
            if *block == 0 {
                check_scales(op, weight_scales, w.shape[1])?;
            } else if weight_scales.len() != w.shape[0].div_ceil(*block) * w.shape[1] {
                return err(
                    op,
                    format!("{} weight scales for blocks of {block} in {w}", weight_scales.len()),
                );
            }
            let mut s = a.shape.clone();
            *s.last_mut().expect("rank >= 1") = w.shape[1];
            Ok(vec![plain(Scalar::F32, s)])
        }
        other => unreachable!("`infer` routed {} to `infer_products`", other.name()),
    }
}

/// Convolutions, products, pooling, normalizations, Einsum, recurrent layers, Resize.
fn infer_layer(op: &Op, inputs: &[&TensorType]) -> Result<Vec<TensorType>> {
    use Op::*;
    let x = || inputs[0];
    match op {
        Conv(c) => {
            arity(op, inputs, 2, 3)?;
            let (xt, w) = (inputs[0], inputs[1]);
            weight_scalar(op, xt, w)?;
            let sp = spatial(op, xt, &c.window, false)?;
            let ci = xt.shape[1];
            if c.group == 0 || ci % c.group != 0 || w.shape.len() != xt.shape.len() || w.shape[1] * c.group != ci {
                return err(op, format!("weight {w} does not fit input {xt} with group {}", c.group));
            }
            if w.shape[0] % c.group != 0 || w.shape[2..] != c.window.kernel[..] {
                return err(op, format!("weight {w} does not match kernel {:?}", c.window.kernel));
            }
            if let Some(b) = inputs.get(2) {
                same_scalar(op, xt, b)?;
                if b.shape != [w.shape[0]] {
                    return err(op, format!("bias {b} must be [{}]", w.shape[0]));
                }
            }
            let mut s = vec![xt.shape[0], w.shape[0]];
            s.extend(sp);
            Ok(vec![plain(xt.dtype.scalar, s)])
        }
        ConvTranspose(c) => {
            arity(op, inputs, 2, 3)?;
            let (xt, w) = (inputs[0], inputs[1]);
            same_scalar(op, xt, w)?;
            let r = c.window.kernel.len();
            if xt.shape.len() != r + 2
                || w.shape.len() != r + 2
                || w.shape[0] != xt.shape[1]
                || c.group == 0
                || xt.shape[1] % c.group != 0
            {
                return err(op, format!("weight {w} does not fit input {xt}"));
            }
            if w.shape[2..] != c.window.kernel[..] || c.window.kernel.contains(&0) || xt.shape[2..].contains(&0) {
                return err(
                    op,
                    format!("weight {w} and input {xt} do not fit kernel {:?}", c.window.kernel),
                );
            }
            let m = w.shape[1] * c.group;
            if let Some(b) = inputs.get(2) {
                same_scalar(op, xt, b)?;
                if b.shape != [m] {
                    return err(op, format!("bias {b} must be [{m}]"));
                }
            }
            let mut s = vec![xt.shape[0], m];
            for i in 0..r {
                let full = c.window.strides[i] * (xt.shape[i + 2] - 1)
                    + c.output_padding[i]
                    + (c.window.kernel[i] - 1) * c.window.dilations[i]
                    + 1;
                let pads = c.window.pads[i] + c.window.pads[i + r];
                if full <= pads {
                    return err(op, "padding removes the whole output");
                }
                s.push(full - pads);
            }
            Ok(vec![plain(xt.dtype.scalar, s)])
        }
        Gemm { trans_a, trans_b, .. } => {
            arity(op, inputs, 2, 3)?;
            let (a, b) = (inputs[0], inputs[1]);
            weight_scalar(op, a, b)?;
            if a.shape.len() != 2 || b.shape.len() != 2 {
                return err(op, format!("needs 2-D operands, got {a} and {b}"));
            }
            let (m, k) = if *trans_a {
                (a.shape[1], a.shape[0])
            } else {
                (a.shape[0], a.shape[1])
            };
            let (k2, n) = if *trans_b {
                (b.shape[1], b.shape[0])
            } else {
                (b.shape[0], b.shape[1])
            };
            if k != k2 {
                return err(op, format!("inner dimensions differ: {a} x {b}"));
            }
            if let Some(c) = inputs.get(2) {
                same_scalar(op, a, c)?;
                if broadcast(&c.shape, &[m, n]).as_deref() != Some(&[m, n][..]) {
                    return err(op, format!("C {c} does not broadcast to [{m},{n}]"));
                }
            }
            Ok(vec![plain(a.dtype.scalar, vec![m, n])])
        }
        MatMul => {
            arity(op, inputs, 2, 2)?;
            let (a, b) = (inputs[0], inputs[1]);
            weight_scalar(op, a, b)?;
            Ok(vec![plain(
                a.dtype.scalar,
                matmul_shape(&a.shape, &b.shape)
                    .ok_or_else(|| IrError::shape("MatMul", format!("cannot multiply {a} by {b}")))?,
            )])
        }
        Pool(p) => {
            arity(op, inputs, 1, 1)?;
            let sp = spatial(op, x(), &p.window, p.ceil_mode)?;
            let mut s = x().shape[..2].to_vec();
            s.extend(sp);
            Ok(vec![TensorType::new(x().dtype.clone(), s)])
        }
        GlobalPool(_) => {
            arity(op, inputs, 1, 1)?;
            if x().shape.len() < 3 {
                return err(op, format!("needs N,C,spatial input, got {}", x()));
            }
            let mut s = x().shape.clone();
            s[2..].iter_mut().for_each(|d| *d = 1);
            Ok(vec![TensorType::new(x().dtype.clone(), s)])
        }
        BatchNorm { .. } | InstanceNorm { .. } => {
            let n = if matches!(op, BatchNorm { .. }) { 5 } else { 3 };
            arity(op, inputs, n, n)?;
            if x().shape.len() < 2 {
                return err(op, format!("needs N,C,... input, got {}", x()));
            }
            let c = x().shape[1];
            for p in &inputs[1..] {
                if p.numel() != c {
                    return err(op, format!("parameter {p} must have {c} elements"));
                }
            }
            Ok(vec![x().clone()])
        }
        LayerNorm { axis, .. } => {
            arity(op, inputs, 2, 3)?;
            if *axis >= x().shape.len() {
                return err(op, "axis out of range");
            }
            for p in &inputs[1..] {
                if broadcast(&p.shape, &x().shape).as_ref() != Some(&x().shape) {
                    return err(op, format!("parameter {p} does not broadcast to {}", x()));
                }
            }
            Ok(vec![x().clone()])
        }
        other => unreachable!("`infer` routed {} to `infer_layer`", other.name()),
    }
}

/// Einsum, recurrent layers and Resize.
fn infer_sequence(op: &Op, inputs: &[&TensorType]) -> Result<Vec<TensorType>> {
    use Op::*;
    let x = || inputs[0];
    match op {
        Einsum { equation } => {
            let spec = parse_einsum(equation, inputs.len())?;
            let mut dims = std::collections::HashMap::new();
            for (labels, t) in spec.inputs.iter().zip(inputs) {
                if labels.len() != t.shape.len() {
                    return err(
                        op,
                        format!("operand {t} has rank {}, equation says {}", t.shape.len(), labels.len()),
                    );
                }
                same_scalar(op, x(), t)?;
                for (c, &d) in labels.iter().zip(&t.shape) {
                    if *dims.entry(*c).or_insert(d) != d {
                        return err(op, format!("label `{c}` has conflicting sizes"));
                    }
                }
            }
            let s = spec
                .output
                .iter()
                .map(|c| {
                    dims.get(c)
                        .copied()
                        .ok_or_else(|| IrError::shape("Einsum", format!("output label `{c}` not in inputs")))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(vec![plain(x().dtype.scalar, s)])
        }
        Rnn(r) => {
            let gates = match r.kind {
                RnnKind::Rnn => 1,
                RnnKind::Gru { .. } => 3,
                RnnKind::Lstm { .. } => 4,
            };
            let lstm = matches!(r.kind, RnnKind::Lstm { .. });
            arity(op, inputs, if lstm { 6 } else { 5 }, if lstm { 7 } else { 5 })?;
            let xt = x();
            if xt.shape.len() != 3 {
                return err(op, format!("X must be 3-D, got {xt}"));
            }
            let (seq, batch) = if r.batch_major {
                (xt.shape[1], xt.shape[0])
            } else {
                (xt.shape[0], xt.shape[1])
            };
            let (d, h) = (r.direction.count(), r.hidden);
            let want_w = [d, gates * h, xt.shape[2]];
            let want_r = [d, gates * h, h];
            if inputs[1].shape != want_w || inputs[2].shape != want_r || inputs[3].shape != [d, 2 * gates * h] {
                return err(
                    op,
                    format!(
                        "W/R/B shapes {} / {} / {} do not match hidden size {h}",
                        inputs[1], inputs[2], inputs[3]
                    ),
                );
            }
            let state = if r.batch_major {
                vec![batch, d, h]
            } else {
                vec![d, batch, h]
            };
            for t in &inputs[4..if lstm { 6 } else { 5 }] {
                if t.shape != state {
                    return err(op, format!("initial state {t} must be {state:?}"));
                }
            }
            if lstm && inputs.len() == 7 && inputs[6].shape != [d, 3 * h] {
                return err(op, "peephole P must be [dirs, 3*hidden]");
            }
            let y = if r.batch_major {
                vec![batch, seq, d, h]
            } else {
                vec![seq, d, batch, h]
            };
            let s = xt.dtype.scalar;
            let mut outs = vec![plain(s, y), plain(s, state.clone())];
            if lstm {
                outs.push(plain(s, state));
            }
            Ok(outs)
        }
        Resize(rz) => {
            arity(op, inputs, 1, 1)?;
            if rz.scales.len() != x().shape.len() || rz.sizes.len() != x().shape.len() {
                return err(op, "one scale and one size per axis expected");
            }
            Ok(vec![TensorType::new(x().dtype.clone(), rz.sizes.clone())])
        }
        other => unreachable!("`infer` routed {} to `infer_sequence`", other.name()),
    }
}

/// Layout, indexing and reduction ops.
fn infer_layout(op: &Op, inputs: &[&TensorType]) -> Result<Vec<TensorType>> {
    use Op::*;
    let x = || inputs[0];
    match op {
        Reshape { shape } => {
            arity(op, inputs, 1, 1)?;
            if shape.iter().product::<usize>() != x().numel() {
                return err(op, format!("cannot reshape {} to {shape:?}", x()));
            }
            Ok(vec![TensorType::new(
                moved_quant(x(), shape, |a| {
                    // the axis survives where the dims before it multiply to the same count
                    let before: usize = x().shape[..a].iter().product();
                    (0..shape.len())
                        .find(|&j| shape[..j].iter().product::<usize>() == before && shape[j] == x().shape[a])
                }),
                shape.clone(),
            )])
        }
        Transpose { perm } => {
            arity(op, inputs, 1, 1)?;
            let mut seen = vec![false; perm.len()];
            if perm.len() != x().shape.len()
                || perm
                    .iter()
                    .any(|&p| p >= perm.len() || std::mem::replace(&mut seen[p], true))
            {
                return err(op, format!("perm {perm:?} is not a permutation of {}", x()));
            }
            let shape: Vec<usize> = perm.iter().map(|&p| x().shape[p]).collect();
            Ok(vec![TensorType::new(
                moved_quant(x(), &shape, |a| perm.iter().position(|&p| p == a)),
                shape,
            )])
        }
        Concat { axis } => {
            if inputs.is_empty() {
                return err(op, "needs at least one input");
            }
            let mut s = x().shape.clone();
            if *axis >= s.len() {
                return err(op, format!("axis {axis} out of range for {}", x()));
            }
            s[*axis] = 0;
            for t in inputs {
                same_scalar(op, x(), t)?;
                if t.shape.len() != s.len() || (0..s.len()).any(|i| i != *axis && t.shape[i] != s[i]) {
                    return err(op, format!("input {t} does not match {} outside axis {axis}", x()));
                }
                s[*axis] += t.shape[*axis];
            }
            Ok(vec![TensorType::new(x().dtype.clone(), s)])
        }
        Split { axis, sizes } => {
            arity(op, inputs, 1, 1)?;
            if *axis >= x().shape.len() || sizes.iter().sum::<usize>() != x().shape[*axis] {
                return err(op, format!("sizes {sizes:?} do not split axis {axis} of {}", x()));
            }
            Ok(sizes
                .iter()
                .map(|&n| {
                    let mut s = x().shape.clone();
                    s[*axis] = n;
                    TensorType::new(x().dtype.clone(), s)
                })
                .collect())
        }
        Slice { axes } => {
            arity(op, inputs, 1, 1)?;
            if axes.len() != x().shape.len() {
                return err(op, "one slice entry per axis expected");
            }
            for (d, a) in axes.iter().enumerate() {
                if a.len > 0 {
                    let last = a.start + (a.len as i64 - 1) * a.step;
                    let n = x().shape[d] as i64;
                    if a.step == 0 || a.start < 0 || a.start >= n || last < 0 || last >= n {
                        return err(op, format!("slice on axis {d} reads outside {}", x()));
                    }
                }
            }
            Ok(vec![TensorType::new(
                x().dtype.clone(),
                axes.iter().map(|a| a.len).collect(),
            )])
        }
        Pad { pads, mode } => {
            arity(op, inputs, 1, 2)?;
            let r = x().shape.len();
            if pads.len() != 2 * r {
                return err(op, format!("needs {} pads, got {}", 2 * r, pads.len()));
            }
            let mut s = Vec::with_capacity(r);
            for i in 0..r {
                let n = x().shape[i] as i64 + pads[i] + pads[i + r];
                if n < 0 {
                    return err(op, "negative pads remove more than the axis");
                }
                if *mode == PadMode::Reflect && pads[i].max(pads[i + r]) >= x().shape[i] as i64 {
                    return err(op, format!("reflect pad on axis {i} must be smaller than the axis"));
                }
                s.push(n as usize);
            }
            Ok(vec![TensorType::new(x().dtype.clone(), s)])
        }
        Gather { axis } => {
            arity(op, inputs, 2, 2)?;
            let (d, i) = (inputs[0], inputs[1]);
            if *axis >= d.shape.len() || !i.dtype.scalar.is_int() {
                return err(op, format!("bad axis {axis} or index type for {d} / {i}"));
            }
            let mut s = d.shape[..*axis].to_vec();
            s.extend(&i.shape);
            s.extend(&d.shape[axis + 1..]);
            Ok(vec![TensorType::new(d.dtype.clone(), s)])
        }
        GatherElements { axis } => {
            arity(op, inputs, 2, 2)?;
            let (d, i) = (inputs[0], inputs[1]);
            if *axis >= d.shape.len() || i.shape.len() != d.shape.len() || !i.dtype.scalar.is_int() {
                return err(op, format!("indices {i} do not fit {d}"));
            }
            Ok(vec![TensorType::new(d.dtype.clone(), i.shape.clone())])
        }
        GatherNd { batch_dims } => {
            arity(op, inputs, 2, 2)?;
            let (d, i) = (inputs[0], inputs[1]);
            let q = i.shape.len();
            let last = *i.shape.last().unwrap_or(&0);
            if q == 0 || batch_dims + last > d.shape.len() || !i.dtype.scalar.is_int() {
                return err(op, format!("indices {i} do not fit {d}"));
            }
            let mut s = i.shape[..q - 1].to_vec();
            s.extend(&d.shape[batch_dims + last..]);
            Ok(vec![TensorType::new(d.dtype.clone(), s)])
        }
        ScatterElements { .. } | ScatterNd { .. } => {
            arity(op, inputs, 3, 3)?;
            same_scalar(op, inputs[0], inputs[2])?;
            let (data, ind, upd) = (inputs[0], inputs[1], inputs[2]);
            if !ind.dtype.scalar.is_int() {
                return err(op, format!("indices {ind} are not integers"));
            }
            let fits = match op {
                ScatterNd { .. } => ind.shape.last().is_some_and(|&k| {
                    k <= data.shape.len()
                        && upd.shape[..] == [&ind.shape[..ind.shape.len() - 1], &data.shape[k..]].concat()[..]
                }),
                _ => ind.shape.len() == data.shape.len() && upd.shape == ind.shape,
            };
            if !fits {
                return err(op, format!("indices {ind} and updates {upd} do not fit {data}"));
            }
            Ok(vec![x().clone()])
        }
        Expand { shape } => {
            arity(op, inputs, 1, 1)?;
            if broadcast(&x().shape, shape).as_ref() != Some(shape) {
                return err(op, format!("cannot expand {} to {shape:?}", x()));
            }
            Ok(vec![TensorType::new(x().dtype.clone(), shape.clone())])
        }
        Tile { repeats } => {
            arity(op, inputs, 1, 1)?;
            if repeats.len() != x().shape.len() {
                return err(op, "one repeat per axis expected");
            }
            Ok(vec![TensorType::new(
                x().dtype.clone(),
                x().shape.iter().zip(repeats).map(|(a, b)| a * b).collect(),
            )])
        }
        OneHot { axis, depth } => {
            arity(op, inputs, 2, 2)?;
            let mut s = x().shape.clone();
            if *axis > s.len() {
                return err(op, "axis out of range");
            }
            s.insert(*axis, *depth);
            Ok(vec![plain(inputs[1].dtype.scalar, s)])
        }
        Trilu { .. } => {
            arity(op, inputs, 1, 1)?;
            if x().shape.len() < 2 {
                return err(op, "needs rank >= 2");
            }
            Ok(vec![x().clone()])
        }
        other => unreachable!("`infer` routed {} to `infer_layout`", other.name()),
    }
}

/// Reductions, arg-max/min, cumulative sums and top-k.
fn infer_reduction(op: &Op, inputs: &[&TensorType]) -> Result<Vec<TensorType>> {
    use Op::*;
    let x = || inputs[0];
    match op {
        Reduce { axes, keep_dims, .. } => {
            arity(op, inputs, 1, 1)?;
            if axes.iter().any(|&a| a >= x().shape.len()) {
                return err(op, format!("axes {axes:?} out of range for {}", x()));
            }
            Ok(vec![plain(x().dtype.scalar, reduced(&x().shape, axes, *keep_dims))])
        }
        ArgMax { axis, keep_dims, .. } | ArgMin { axis, keep_dims, .. } => {
            arity(op, inputs, 1, 1)?;
            if *axis >= x().shape.len() {
                return err(op, "axis out of range");
            }
            Ok(vec![plain(Scalar::I64, reduced(&x().shape, &[*axis], *keep_dims))])
        }
        CumSum { axis, .. } => {
            arity(op, inputs, 1, 1)?;
            if *axis >= x().shape.len() {
                return err(op, "axis out of range");
            }
            Ok(vec![x().clone()])
        }
        TopK { axis, k, .. } => {
            arity(op, inputs, 1, 1)?;
            if *axis >= x().shape.len() || *k > x().shape[*axis] {
                return err(op, format!("k={k} on axis {axis} does not fit {}", x()));
            }
            let mut s = x().shape.clone();
            s[*axis] = *k;
            Ok(vec![
                TensorType::new(x().dtype.clone(), s.clone()),
                plain(Scalar::I64, s),
            ])
        }
        other => unreachable!("`infer` routed {} to `infer_reduction`", other.name()),
    }
}

/// Shape after reducing `axes` (all axes when empty).
pub fn reduced(shape: &[usize], axes: &[usize], keep: bool) -> Vec<usize> {
    let all = axes.is_empty();
    let mut out = Vec::new();
    for (i, &d) in shape.iter().enumerate() {
        if all || axes.contains(&i) {
            if keep {
                out.push(1);
            }
        } else {
            out.push(d);
        }
    }
    out
}

/// Numpy matmul result shape (1-D operands are promoted and the added axis removed).
pub fn matmul_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let a2: Vec<usize> = if a.len() == 1 { vec![1, a[0]] } else { a.to_vec() };
    let b2: Vec<usize> = if b.len() == 1 { vec![b[0], 1] } else { b.to_vec() };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    if k != k2 {
        return None;
    }
    let mut s = broadcast(&a2[..a2.len() - 2], &b2[..b2.len() - 2])?;
    if a.len() > 1 {
        s.push(m);
    }
    if b.len() > 1 {
        s.push(n);
    }
    Some(s)
}

//! TFLite builtin operators as IR, one function per family. Each reads its tensors through
//! the context (`float` for the real values, `value` for the stored ones), builds the float
//! computation TFLite defines and `define`s the outputs; quantization and layout are the
//! context's business.

use super::flatbuf::Scalar as FbScalar;
use super::lower::{Layout, Lower, Result, TO_NCHW, widen_half};
use super::schema::Operator;
use kiln_ir::op::{
    BinaryOp, Conv, ConvTranspose, CoordMode, PadMode, Pool, PoolKind, ReduceKind, Resize, ResizeMode, SliceAxis,
    UnaryOp, Window,
};
use kiln_ir::{Op, Tensor, ValueId};

/// Builtin operator codes (`BuiltinOperator`).
mod code {
    pub const ADD: i32 = 0;
    pub const AVERAGE_POOL_2D: i32 = 1;
    pub const CONCATENATION: i32 = 2;
    pub const CONV_2D: i32 = 3;
    pub const DEPTHWISE_CONV_2D: i32 = 4;
    pub const DEQUANTIZE: i32 = 6;
    pub const FULLY_CONNECTED: i32 = 9;
    pub const LOGISTIC: i32 = 14;
    pub const MAX_POOL_2D: i32 = 17;
    pub const MUL: i32 = 18;
    pub const RELU: i32 = 19;
    pub const RELU_N1_TO_1: i32 = 20;
    pub const RELU6: i32 = 21;
    pub const RESHAPE: i32 = 22;
    pub const SOFTMAX: i32 = 25;
    pub const TANH: i32 = 28;
    pub const PAD: i32 = 34;
    pub const TRANSPOSE: i32 = 39;
    pub const MEAN: i32 = 40;
    pub const SUB: i32 = 41;
    pub const SQUEEZE: i32 = 43;
    pub const MAXIMUM: i32 = 55;
    pub const MINIMUM: i32 = 57;
    pub const PADV2: i32 = 60;
    pub const EXPAND_DIMS: i32 = 70;
    pub const LEAKY_RELU: i32 = 98;
    pub const QUANTIZE: i32 = 114;
    pub const HARD_SWISH: i32 = 117;
    pub const SPLIT: i32 = 49;
    pub const PRELU: i32 = 54;
    pub const PACK: i32 = 83;
    pub const UNPACK: i32 = 88;
    pub const RESIZE_BILINEAR: i32 = 23;
    pub const STRIDED_SLICE: i32 = 45;
    pub const TRANSPOSE_CONV: i32 = 67;
    pub const RESIZE_NEAREST_NEIGHBOR: i32 = 97;
    pub const SPLIT_V: i32 = 102;
    pub const UNIDIRECTIONAL_SEQUENCE_LSTM: i32 = 44;
    pub const SVDF: i32 = 27;
}

/// The builtin operators this front end lowers, with what they accept (`kiln ops`).
pub const BUILTINS: &[(i32, &str, &str)] = {
    use code::*;
    &[
        (ADD, "ADD", "broadcasting, fused activation"),
        (AVERAGE_POOL_2D, "AVERAGE_POOL_2D", "SAME/VALID, fused activation"),
        (CONCATENATION, "CONCATENATION", "any axis, fused activation"),
        (
            CONV_2D,
            "CONV_2D",
            "SAME/VALID, strides, dilations, groups, fused activation; constant weights",
        ),
        (
            DEPTHWISE_CONV_2D,
            "DEPTHWISE_CONV_2D",
            "any depth multiplier, dilations, fused activation",
        ),
        (
            DEQUANTIZE,
            "DEQUANTIZE",
            "int8/uint8/int16 activations, float16 and int8 constants",
        ),
        (EXPAND_DIMS, "EXPAND_DIMS", ""),
        (
            FULLY_CONNECTED,
            "FULLY_CONNECTED",
            "default weight format, keep_num_dims, fused activation",
        ),
        (HARD_SWISH, "HARD_SWISH", ""),
        (LEAKY_RELU, "LEAKY_RELU", ""),
        (LOGISTIC, "LOGISTIC", ""),
        (MAXIMUM, "MAXIMUM", "broadcasting"),
        (MAX_POOL_2D, "MAX_POOL_2D", "SAME/VALID, fused activation"),
        (MEAN, "MEAN", "constant axes, keep_dims"),
        (MINIMUM, "MINIMUM", "broadcasting"),
        (MUL, "MUL", "broadcasting, fused activation"),
        (PAD, "PAD", "constant paddings"),
        (PADV2, "PADV2", "constant paddings and value"),
        (PACK, "PACK", "any axis"),
        (PRELU, "PRELU", "alpha broadcast to the input"),
        (QUANTIZE, "QUANTIZE", "float to int8/uint8/int16, and requantization"),
        (RELU, "RELU", ""),
        (RELU6, "RELU6", ""),
        (RELU_N1_TO_1, "RELU_N1_TO_1", ""),
        (RESHAPE, "RESHAPE", "to the output shape the model records"),
        (RESIZE_BILINEAR, "RESIZE_BILINEAR", "align_corners, half_pixel_centers"),
        (
            RESIZE_NEAREST_NEIGHBOR,
            "RESIZE_NEAREST_NEIGHBOR",
            "align_corners, half_pixel_centers",
        ),
        (SOFTMAX, "SOFTMAX", "beta (float models)"),
        (SPLIT, "SPLIT", "constant axis, equal parts"),
        (SPLIT_V, "SPLIT_V", "constant sizes (one may be -1) and axis"),
        (SQUEEZE, "SQUEEZE", ""),
        (
            STRIDED_SLICE,
            "STRIDED_SLICE",
            "constant begin/end/strides; begin, end and shrink-axis masks, offset",
        ),
        (SUB, "SUB", "broadcasting, fused activation"),
        (
            SVDF,
            "SVDF",
            "float models, any rank, fused activation; the state is an extra input and output",
        ),
        (TANH, "TANH", ""),
        (TRANSPOSE, "TRANSPOSE", "constant permutation"),
        (
            TRANSPOSE_CONV,
            "TRANSPOSE_CONV",
            "SAME/VALID, strides, constant output shape, bias, fused activation",
        ),
        (
            UNIDIRECTIONAL_SEQUENCE_LSTM,
            "UNIDIRECTIONAL_SEQUENCE_LSTM",
            "float or int8-weight (hybrid) models: peepholes, CIFG, time-major or not, TANH/RELU/NONE activation; the states are an extra input and output each; no projection, layer norm or clipping",
        ),
        (UNPACK, "UNPACK", "any axis"),
    ]
};

pub fn supported(c: i32) -> bool {
    BUILTINS.iter().any(|b| b.0 == c)
}

/// The TFLite section of `SUPPORTED_OPS.md`.
pub fn markdown() -> String {
    let mut s = String::from(
        "\n# Supported TFLite builtin operators\n\n\
         `.tflite` files (recognised by their `TFL3` identifier) are read directly: quantized\n\
         tensors keep the model's own scales and zero points and compile to integer code with\n\
         TFLite's numerics by default. Fused activations: NONE, RELU, RELU_N1_TO_1, RELU6, TANH.\n\n\
         | builtin | notes |\n|---|---|\n",
    );
    for (_, name, notes) in BUILTINS {
        s += &format!("| {name} | {notes} |\n");
    }
    s
}

pub fn lower(cx: &mut Lower, c: i32, op: &Operator) -> Result<()> {
    use code::*;
    match c {
        CONV_2D => conv(cx, op, false),
        DEPTHWISE_CONV_2D => conv(cx, op, true),
        FULLY_CONNECTED => fully_connected(cx, op),
        AVERAGE_POOL_2D => pool(
            cx,
            op,
            PoolKind::Avg {
                count_include_pad: false,
            },
        ),
        MAX_POOL_2D => pool(cx, op, PoolKind::Max),
        ADD => binary(cx, op, BinaryOp::Add, true),
        SUB => binary(cx, op, BinaryOp::Sub, true),
        MUL => binary(cx, op, BinaryOp::Mul, true),
        MAXIMUM => binary(cx, op, BinaryOp::Max, false),
        MINIMUM => binary(cx, op, BinaryOp::Min, false),
        PRELU => binary(cx, op, BinaryOp::PRelu, false),
        RELU => unary(cx, op, UnaryOp::Relu),
        RELU6 => unary(cx, op, UnaryOp::Clip { min: 0.0, max: 6.0 }),
        RELU_N1_TO_1 => unary(cx, op, UnaryOp::Clip { min: -1.0, max: 1.0 }),
        LOGISTIC => unary(cx, op, UnaryOp::Sigmoid),
        TANH => unary(cx, op, UnaryOp::Tanh),
        HARD_SWISH => unary(cx, op, UnaryOp::HardSwish),
        LEAKY_RELU => {
            let alpha = opt(op, 0, 0.0f32)?;
            unary(cx, op, UnaryOp::LeakyRelu { alpha })
        }
        RESHAPE | SQUEEZE | EXPAND_DIMS => reshape(cx, op),
        SOFTMAX => softmax(cx, op),
        CONCATENATION => concat(cx, op),
        PAD | PADV2 => pad(cx, op),
        TRANSPOSE => transpose(cx, op),
        MEAN => mean(cx, op),
        QUANTIZE | DEQUANTIZE => convert(cx, op),
        SPLIT => split(cx, op),
        SPLIT_V => split_v(cx, op),
        STRIDED_SLICE => strided_slice(cx, op),
        RESIZE_BILINEAR => resize(cx, op, false),
        RESIZE_NEAREST_NEIGHBOR => resize(cx, op, true),
        TRANSPOSE_CONV => transpose_conv(cx, op),
        UNIDIRECTIONAL_SEQUENCE_LSTM => super::lstm::lstm(cx, op),
        SVDF => super::svdf::svdf(cx, op),
        PACK => pack(cx, op),
        UNPACK => unpack(cx, op),
        _ => Err(cx.err("not supported")),
    }
}

/// Field `id` of the operator's builtin options, `default` when either is absent.
pub(super) fn opt<T: FbScalar>(op: &Operator, id: usize, default: T) -> Result<T> {
    match &op.options {
        None => Ok(default),
        Some(t) => Ok(t.get(id, default)?),
    }
}

/// A fused activation (`ActivationFunctionType`) applied to `v`.
pub(super) fn activation(cx: &mut Lower, v: ValueId, f: u8) -> Result<ValueId> {
    let u = match f {
        0 => return Ok(v),
        1 => UnaryOp::Relu,
        2 => UnaryOp::Clip { min: -1.0, max: 1.0 },
        3 => UnaryOp::Clip { min: 0.0, max: 6.0 },
        4 => UnaryOp::Tanh,
        other => return Err(cx.err(format!("fused activation {other} is not supported"))),
    };
    cx.emit("activation", Op::Unary(u), vec![v])
}

/// A window over `[h, w]` with TFLite's padding rule (`SAME` = 0 pads so the output is
/// `ceil(in / stride)`, the odd pixel after; `VALID` = 1 pads nothing).
fn window(
    cx: &Lower,
    padding: u8,
    hw: [usize; 2],
    kernel: [usize; 2],
    strides: [i32; 2],
    dilations: [i32; 2],
) -> Result<Window> {
    let pos = |v: [i32; 2], what: &str| -> Result<[usize; 2]> {
        match v {
            [a, b] if a > 0 && b > 0 => Ok([a as usize, b as usize]),
            _ => Err(cx.err(format!("{what} {v:?} must be positive"))),
        }
    };
    let (s, d) = (pos(strides, "strides")?, pos(dilations, "dilations")?);
    if kernel.contains(&0) {
        return Err(cx.err(format!("kernel {kernel:?} is empty")));
    }
    let mut pads = vec![0; 4];
    match padding {
        0 => {
            for i in 0..2 {
                let out = hw[i].div_ceil(s[i]);
                let need = (out.max(1) - 1) * s[i] + (kernel[i] - 1) * d[i] + 1;
                let total = need.saturating_sub(hw[i]);
                pads[i] = total / 2;
                pads[i + 2] = total - total / 2;
            }
        }
        1 => {}
        other => return Err(cx.err(format!("padding {other} is not supported"))),
    }
    Ok(Window {
        kernel: kernel.to_vec(),
        strides: s.to_vec(),
        dilations: d.to_vec(),
        pads,
    })
}

fn rank4(cx: &Lower, t: usize) -> Result<[usize; 4]> {
    let s = cx.shape(t);
    s.as_slice()
        .try_into()
        .map_err(|_| cx.err(format!("`{}` has shape {s:?}, not NHWC", cx.def(t).name)))
}

/// A constant weight tensor (permuted) as an IR constant.
fn weights(cx: &mut Lower, t: usize, perm: Option<&[usize]>) -> Result<ValueId> {
    let mut w = cx.constant(t, perm)?;
    if let Some(f) = widen_half(&w) {
        w = f;
    }
    let name = cx.def(t).name.clone();
    Ok(cx.graph.add_const(&name, w))
}

/// CONV_2D (weights `[O, kh, kw, I]`, grouped when `I` divides the channels) and
/// DEPTHWISE_CONV_2D (weights `[1, kh, kw, C * multiplier]`).
fn conv(cx: &mut Lower, op: &Operator, depthwise: bool) -> Result<()> {
    let (x, w) = (cx.req(op, 0)?, cx.req(op, 1)?);
    let [_, h, wd, c] = rank4(cx, x)?;
    let [wo, kh, kw, wi] = rank4(cx, w)?;
    let padding = opt(op, 0, 0u8)?;
    let strides = [opt(op, 2, 1i32)?, opt(op, 1, 1i32)?];
    let (act, dilations) = if depthwise {
        (opt(op, 4, 0u8)?, [opt(op, 6, 1i32)?, opt(op, 5, 1i32)?])
    } else {
        (opt(op, 3, 0u8)?, [opt(op, 5, 1i32)?, opt(op, 4, 1i32)?])
    };
    let (perm, group) = if depthwise {
        if wo != 1 || c == 0 || wi % c != 0 {
            return Err(cx.err(format!(
                "depthwise weights [{wo},{kh},{kw},{wi}] do not fit {c} channels"
            )));
        }
        ([3, 0, 1, 2], c)
    } else {
        if wi == 0 || c % wi != 0 {
            return Err(cx.err(format!("weights with {wi} input channels do not fit {c} channels")));
        }
        ([0, 3, 1, 2], c / wi)
    };
    let win = window(cx, padding, [h, wd], [kh, kw], strides, dilations)?;
    let xv = cx.float(x, Layout::Nchw)?;
    let wv = weights(cx, w, Some(&perm))?;
    let mut inputs = vec![xv, wv];
    if let Some(b) = cx.input(op, 2) {
        inputs.push(cx.value(b, Layout::Nhwc)?);
    }
    let conv = Op::Conv(Conv {
        window: win,
        group,
        fused: None,
    });
    let y = cx.emit("conv", conv, inputs)?;
    let y = activation(cx, y, act)?;
    cx.define(cx.output(op, 0)?, y, Layout::Nchw)
}

/// `x @ w (+ b)`: the plain product fully connected layers and SVDF's features are.
pub(super) fn product() -> Op {
    Op::Gemm {
        alpha: 1.0,
        beta: 1.0,
        trans_a: false,
        trans_b: false,
        fused: None,
    }
}

/// FULLY_CONNECTED: `x` flattened to `[rows, I]` times weights `[O, I]` transposed, plus
/// the bias; the output takes the shape the model declares.
fn fully_connected(cx: &mut Lower, op: &Operator) -> Result<()> {
    let (x, w, out) = (cx.req(op, 0)?, cx.req(op, 1)?, cx.output(op, 0)?);
    if opt(op, 1, 0u8)? != 0 {
        return Err(cx.err("shuffled weight formats are not supported"));
    }
    let ws = cx.shape(w);
    let [_, k] = ws[..] else {
        return Err(cx.err(format!("weights {ws:?} are not [outputs, inputs]")));
    };
    let numel: usize = cx.shape(x).iter().product();
    if k == 0 || !numel.is_multiple_of(k) {
        return Err(cx.err(format!("input {:?} does not split into rows of {k}", cx.shape(x))));
    }
    let mut xv = cx.float(x, Layout::Nhwc)?;
    if cx.shape(x) != [numel / k, k] {
        xv = cx.emit(
            "rows",
            Op::Reshape {
                shape: vec![numel / k, k],
            },
            vec![xv],
        )?;
    }
    let wv = weights(cx, w, Some(&[1, 0]))?;
    let mut inputs = vec![xv, wv];
    if let Some(b) = cx.input(op, 2) {
        inputs.push(cx.value(b, Layout::Nhwc)?);
    }
    let mut y = cx.emit("gemm", product(), inputs)?;
    y = activation(cx, y, opt(op, 0, 0u8)?)?;
    let want = cx.shape(out);
    if cx.graph.value(y).ty.shape != want {
        y = cx.emit("shaped", Op::Reshape { shape: want }, vec![y])?;
    }
    cx.define(out, y, Layout::Nhwc)
}

fn pool(cx: &mut Lower, op: &Operator, kind: PoolKind) -> Result<()> {
    let x = cx.req(op, 0)?;
    let [_, h, w, _] = rank4(cx, x)?;
    let kernel = [opt(op, 4, 0i32)?, opt(op, 3, 0i32)?];
    if kernel.iter().any(|&k| k <= 0) {
        return Err(cx.err(format!("filter {kernel:?} must be positive")));
    }
    let kernel = kernel.map(|k| k as usize);
    let strides = [opt(op, 2, 1i32)?, opt(op, 1, 1i32)?];
    let win = window(cx, opt(op, 0, 0u8)?, [h, w], kernel, strides, [1, 1])?;
    let xv = cx.float(x, Layout::Nchw)?;
    let p = Op::Pool(Pool {
        kind,
        window: win,
        ceil_mode: false,
        numerics: Default::default(),
    });
    let y = cx.emit("pool", p, vec![xv])?;
    let y = activation(cx, y, opt(op, 5, 0u8)?)?;
    cx.define(cx.output(op, 0)?, y, Layout::Nchw)
}

/// The layout an elementwise op over `ts` runs in: channels-first when every operand is a
/// rank-4 tensor and a computed one already is.
fn shared_layout(cx: &Lower, ts: &[usize]) -> Layout {
    let all4 = ts.iter().all(|&t| cx.shape(t).len() == 4);
    if all4 && ts.iter().any(|&t| cx.layout(t) == Layout::Nchw) {
        Layout::Nchw
    } else {
        Layout::Nhwc
    }
}

fn binary(cx: &mut Lower, op: &Operator, b: BinaryOp, fused: bool) -> Result<()> {
    let (x, y) = (cx.req(op, 0)?, cx.req(op, 1)?);
    let layout = shared_layout(cx, &[x, y]);
    let (xv, yv) = (cx.float(x, layout)?, cx.float(y, layout)?);
    let mut v = cx.emit("binary", Op::Binary(b), vec![xv, yv])?;
    if fused {
        v = activation(cx, v, opt(op, 0, 0u8)?)?;
    }
    cx.define(cx.output(op, 0)?, v, layout)
}

fn unary(cx: &mut Lower, op: &Operator, u: UnaryOp) -> Result<()> {
    let x = cx.req(op, 0)?;
    let layout = cx.layout(x);
    let xv = cx.float(x, layout)?;
    let v = cx.emit("unary", Op::Unary(u), vec![xv])?;
    cx.define(cx.output(op, 0)?, v, layout)
}

/// QUANTIZE (float or quantized in, quantized out: a requantization) and DEQUANTIZE
/// (quantized or float16 in, float out).
fn convert(cx: &mut Lower, op: &Operator) -> Result<()> {
    let (x, out) = (cx.req(op, 0)?, cx.output(op, 0)?);
    let layout = cx.layout(x);
    let mut v = cx.float(x, layout)?;
    if let Some(c) = cx.graph.const_value(v).and_then(|t| widen_half(t)) {
        let name = format!("{}/widened", cx.node);
        v = cx.graph.add_const(&name, c);
    }
    cx.define(out, v, layout)
}

/// RESHAPE, SQUEEZE and EXPAND_DIMS: the output shape the model declares. Stored integers
/// pass through when input and output share their parameters (TFLite requires it).
fn reshape(cx: &mut Lower, op: &Operator) -> Result<()> {
    let (x, out) = (cx.req(op, 0)?, cx.output(op, 0)?);
    let shape = cx.shape(out);
    let v = if cx.act(x).is_some() && cx.act(x) == cx.act(out) {
        cx.value(x, Layout::Nhwc)?
    } else {
        cx.float(x, Layout::Nhwc)?
    };
    let y = cx.emit("reshape", Op::Reshape { shape }, vec![v])?;
    cx.define(out, y, Layout::Nhwc)
}

fn softmax(cx: &mut Lower, op: &Operator) -> Result<()> {
    let (x, out) = (cx.req(op, 0)?, cx.output(op, 0)?);
    let beta = if op.options.is_some() { opt(op, 0, 0.0f32)? } else { 1.0 };
    let rank = cx.shape(x).len();
    if rank == 0 {
        return Err(cx.err("softmax of a scalar"));
    }
    let (layout, axis) = if rank == 4 && cx.layout(x) == Layout::Nchw {
        (Layout::Nchw, 1)
    } else {
        (Layout::Nhwc, rank - 1)
    };
    let mut v = cx.float(x, layout)?;
    if beta != 1.0 {
        if cx.act(x).is_some() {
            return Err(cx.err(format!("beta {beta} on a quantized softmax is not supported")));
        }
        let name = format!("{}/beta", cx.node);
        let b = cx.graph.add_const(&name, Tensor::scalar_f32(beta));
        v = cx.emit("scaled", Op::Binary(BinaryOp::Mul), vec![v, b])?;
    }
    let y = cx.emit("softmax", Op::Softmax { axis }, vec![v])?;
    cx.define(out, y, layout)
}

/// An axis of an NHWC tensor as it is numbered in `layout`.
fn axis_in(layout: Layout, axis: usize) -> usize {
    match layout {
        Layout::Nchw => TO_NCHW
            .iter()
            .position(|&p| p == axis)
            .expect("axis of a rank-4 tensor"),
        Layout::Nhwc => axis,
    }
}

fn normalized_axis(cx: &Lower, a: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    if a < -r || a >= r {
        return Err(cx.err(format!("axis {a} is out of range for rank {rank}")));
    }
    Ok(if a < 0 { (a + r) as usize } else { a as usize })
}

fn concat(cx: &mut Lower, op: &Operator) -> Result<()> {
    let ts: Vec<usize> = op.inputs.iter().filter_map(|&t| usize::try_from(t).ok()).collect();
    let Some(&first) = ts.first() else {
        return Err(cx.err("no inputs"));
    };
    let axis = normalized_axis(cx, opt(op, 0, 0i32)? as i64, cx.shape(first).len())?;
    let layout = shared_layout(cx, &ts);
    let vs = ts.iter().map(|&t| cx.float(t, layout)).collect::<Result<Vec<_>>>()?;
    let y = cx.emit(
        "concat",
        Op::Concat {
            axis: axis_in(layout, axis),
        },
        vs,
    )?;
    let y = activation(cx, y, opt(op, 1, 0u8)?)?;
    cx.define(cx.output(op, 0)?, y, layout)
}

/// A constant integer input.
fn ints(cx: &Lower, op: &Operator, i: usize) -> Result<Vec<i64>> {
    let t = cx.req(op, i)?;
    Ok(cx.constant(t, None)?.to_i64_vec())
}

/// PAD and PADV2 (`paddings` `[rank, 2]`, PADV2's constant value): zeros, which is the
/// zero point of a quantized tensor.
fn pad(cx: &mut Lower, op: &Operator) -> Result<()> {
    let (x, out) = (cx.req(op, 0)?, cx.output(op, 0)?);
    let rank = cx.shape(x).len();
    let p = ints(cx, op, 1)?;
    if p.len() != 2 * rank || p.iter().any(|&v| v < 0) {
        return Err(cx.err(format!("paddings {p:?} do not fit rank {rank}")));
    }
    let layout = if rank == 4 { cx.layout(x) } else { Layout::Nhwc };
    let order: Vec<usize> = (0..rank)
        .map(|i| if layout == Layout::Nchw { TO_NCHW[i] } else { i })
        .collect();
    let pads: Vec<i64> = (order.iter().map(|&a| p[2 * a]))
        .chain(order.iter().map(|&a| p[2 * a + 1]))
        .collect();
    let mut inputs = vec![cx.float(x, layout)?];
    if let Some(c) = cx.input(op, 2) {
        inputs.push(cx.float(c, Layout::Nhwc)?);
    }
    let y = cx.emit(
        "pad",
        Op::Pad {
            mode: PadMode::Constant,
            pads,
        },
        inputs,
    )?;
    cx.define(out, y, layout)
}

fn transpose(cx: &mut Lower, op: &Operator) -> Result<()> {
    let (x, out) = (cx.req(op, 0)?, cx.output(op, 0)?);
    let rank = cx.shape(x).len();
    let perm = ints(cx, op, 1)?;
    let mut seen = vec![false; rank];
    for &p in &perm {
        match usize::try_from(p).ok().filter(|&p| p < rank) {
            Some(p) if !seen[p] => seen[p] = true,
            _ => return Err(cx.err(format!("perm {perm:?} is not a permutation of {rank} axes"))),
        }
    }
    let perm: Vec<usize> = perm.iter().map(|&p| p as usize).collect();
    let v = if cx.act(x) == cx.act(out) {
        cx.value(x, Layout::Nhwc)?
    } else {
        cx.float(x, Layout::Nhwc)?
    };
    let y = cx.permute_value(v, &perm)?;
    cx.define(out, y, Layout::Nhwc)
}

/// MEAN over constant axes (`keep_dims` in the options).
fn mean(cx: &mut Lower, op: &Operator) -> Result<()> {
    let (x, out) = (cx.req(op, 0)?, cx.output(op, 0)?);
    let rank = cx.shape(x).len();
    let keep_dims = opt(op, 0, 0u8)? != 0;
    let mut axes = ints(cx, op, 1)?
        .into_iter()
        .map(|a| normalized_axis(cx, a, rank))
        .collect::<Result<Vec<_>>>()?;
    let layout = if rank == 4 && keep_dims {
        cx.layout(x)
    } else {
        Layout::Nhwc
    };
    axes = axes.into_iter().map(|a| axis_in(layout, a)).collect();
    axes.sort_unstable();
    axes.dedup();
    let xv = cx.float(x, layout)?;
    let r = Op::Reduce {
        kind: ReduceKind::Mean,
        axes,
        keep_dims,
    };
    let y = cx.emit("mean", r, vec![xv])?;
    cx.define(out, y, layout)
}

/// SPLIT: `[axis, x]` into `num_splits` equal parts (the outputs the operator lists).
fn split(cx: &mut Lower, op: &Operator) -> Result<()> {
    let x = cx.req(op, 1)?;
    let shape = cx.shape(x);
    let a = ints(cx, op, 0)?;
    let [a] = a[..] else {
        return Err(cx.err(format!("axis {a:?} is not one value")));
    };
    let axis = normalized_axis(cx, a, shape.len())?;
    let n = op.outputs.len();
    if n == 0 || !shape[axis].is_multiple_of(n) {
        return Err(cx.err(format!("{} does not split into {n} equal parts", shape[axis])));
    }
    let xv = cx.float(x, Layout::Nhwc)?;
    let parts = split_value(cx, xv, axis, vec![shape[axis] / n; n])?;
    for (i, v) in parts.into_iter().enumerate() {
        cx.define(cx.output(op, i)?, v, Layout::Nhwc)?;
    }
    Ok(())
}

/// The outputs of an IR Split of `v` along `axis` into `sizes`.
fn split_value(cx: &mut Lower, v: ValueId, axis: usize, sizes: Vec<usize>) -> Result<Vec<ValueId>> {
    let n = sizes.len();
    let first = cx.emit("split", Op::Split { axis, sizes }, vec![v])?;
    let node = cx.graph.producer(first);
    Ok(match node {
        Some(id) if n > 1 => cx.graph.node(id).outputs.clone(),
        _ => vec![first],
    })
}

/// PACK: the inputs stacked along a new `axis`.
fn pack(cx: &mut Lower, op: &Operator) -> Result<()> {
    let ts: Vec<usize> = op.inputs.iter().filter_map(|&t| usize::try_from(t).ok()).collect();
    let Some(&first) = ts.first() else {
        return Err(cx.err("no inputs"));
    };
    let shape = cx.shape(first);
    let axis = normalized_axis(cx, opt(op, 1, 0i32)? as i64, shape.len() + 1)?;
    let mut one = shape.clone();
    one.insert(axis, 1);
    let mut vs = Vec::new();
    for t in ts {
        let v = cx.float(t, Layout::Nhwc)?;
        vs.push(cx.emit("expanded", Op::Reshape { shape: one.clone() }, vec![v])?);
    }
    let y = cx.emit("pack", Op::Concat { axis }, vs)?;
    cx.define(cx.output(op, 0)?, y, Layout::Nhwc)
}

/// UNPACK: one output per index of `axis`, without that axis.
fn unpack(cx: &mut Lower, op: &Operator) -> Result<()> {
    let x = cx.req(op, 0)?;
    let shape = cx.shape(x);
    let axis = normalized_axis(cx, opt(op, 1, 0i32)? as i64, shape.len())?;
    if op.outputs.len() != shape[axis] {
        return Err(cx.err(format!("{} outputs for an axis of {}", op.outputs.len(), shape[axis])));
    }
    let mut rest = shape.clone();
    rest.remove(axis);
    let xv = cx.float(x, Layout::Nhwc)?;
    let parts = split_value(cx, xv, axis, vec![1; shape[axis]])?;
    for (i, v) in parts.into_iter().enumerate() {
        let y = cx.emit("unpacked", Op::Reshape { shape: rest.clone() }, vec![v])?;
        cx.define(cx.output(op, i)?, y, Layout::Nhwc)?;
    }
    Ok(())
}

/// SPLIT_V: `[x, size_splits, axis]`, one size may be -1 (the rest of the axis).
fn split_v(cx: &mut Lower, op: &Operator) -> Result<()> {
    let x = cx.req(op, 0)?;
    let shape = cx.shape(x);
    let a = ints(cx, op, 2)?;
    let [a] = a[..] else {
        return Err(cx.err(format!("axis {a:?} is not one value")));
    };
    let axis = normalized_axis(cx, a, shape.len())?;
    let sizes = ints(cx, op, 1)?;
    let known: i64 = sizes.iter().filter(|&&s| s >= 0).sum();
    let open = sizes.iter().filter(|&&s| s < 0).count();
    let rest = shape[axis] as i64 - known;
    let bad = open > 1 || sizes.iter().any(|&s| s < -1) || rest < 0 || (open == 0 && rest != 0);
    if bad || sizes.len() != op.outputs.len() {
        return Err(cx.err(format!(
            "sizes {sizes:?} do not split {} into {} parts",
            shape[axis],
            op.outputs.len()
        )));
    }
    let sizes: Vec<usize> = sizes.iter().map(|&s| if s < 0 { rest } else { s } as usize).collect();
    let xv = cx.float(x, Layout::Nhwc)?;
    let parts = split_value(cx, xv, axis, sizes)?;
    for (i, v) in parts.into_iter().enumerate() {
        cx.define(cx.output(op, i)?, v, Layout::Nhwc)?;
    }
    Ok(())
}

/// STRIDED_SLICE with constant begin, end and strides. Begin and end masks take the whole
/// axis on that side, the shrink mask keeps one index and drops the axis, `offset` makes
/// `end` relative to `begin`; ellipsis and new-axis masks are refused.
fn strided_slice(cx: &mut Lower, op: &Operator) -> Result<()> {
    let (x, out) = (cx.req(op, 0)?, cx.output(op, 0)?);
    let shape = cx.shape(x);
    let (begin, end, strides) = (ints(cx, op, 1)?, ints(cx, op, 2)?, ints(cx, op, 3)?);
    let [bm, em, ellipsis, new_axis, shrink] = [0, 1, 2, 3, 4].map(|f| opt(op, f, 0i32));
    let (bm, em, shrink) = (bm?, em?, shrink?);
    if ellipsis? != 0 || new_axis? != 0 {
        return Err(cx.err("ellipsis and new-axis masks are not supported"));
    }
    let offset = opt(op, 5, 0u8)? != 0;
    let n = begin.len();
    if n > shape.len() || end.len() != n || strides.len() != n {
        return Err(cx.err(format!(
            "begin/end/strides of {n}, {}, {} for rank {}",
            end.len(),
            strides.len(),
            shape.len()
        )));
    }
    let mut axes: Vec<SliceAxis> = shape.iter().map(|&len| SliceAxis { start: 0, step: 1, len }).collect();
    for i in 0..n {
        let (dim, step) = (shape[i] as i64, strides[i]);
        if step == 0 {
            return Err(cx.err("stride 0"));
        }
        let norm = |v: i64| if v < 0 { v.saturating_add(dim) } else { v };
        let bit = |m: i32| m >> i & 1 == 1;
        let s = if bit(bm) {
            if step > 0 { 0 } else { dim - 1 }
        } else {
            norm(begin[i])
        };
        let e = if bit(shrink) {
            s + 1
        } else if bit(em) {
            if step > 0 { dim } else { -1 }
        } else if offset {
            s + end[i]
        } else {
            norm(end[i])
        };
        let step = if bit(shrink) { 1 } else { step };
        axes[i] = SliceAxis::clamped(dim, s, e, step);
    }
    let v = if cx.act(x).is_some() && cx.act(x) == cx.act(out) {
        cx.value(x, Layout::Nhwc)?
    } else {
        cx.float(x, Layout::Nhwc)?
    };
    let mut y = cx.emit("slice", Op::Slice { axes }, vec![v])?;
    let want = cx.shape(out);
    if cx.graph.value(y).ty.shape != want {
        y = cx.emit("shrunk", Op::Reshape { shape: want }, vec![y])?;
    }
    cx.define(out, y, Layout::Nhwc)
}

/// RESIZE_BILINEAR and RESIZE_NEAREST_NEIGHBOR to a constant `[height, width]`: TFLite's
/// bilinear coordinate rules are ONNX's asymmetric (default), align_corners and half_pixel;
/// nearest neighbours are two gathers of TFLite's source rows and columns (pure copies, so a
/// quantized tensor moves as integers).
fn resize(cx: &mut Lower, op: &Operator, nearest: bool) -> Result<()> {
    let (x, out) = (cx.req(op, 0)?, cx.output(op, 0)?);
    let [n, h, w, c] = rank4(cx, x)?;
    if h == 0 || w == 0 {
        return Err(cx.err(format!("cannot resize an empty image {:?}", cx.shape(x))));
    }
    let size = ints(cx, op, 1)?;
    let [oh, ow] = size[..] else {
        return Err(cx.err(format!("size {size:?} is not [height, width]")));
    };
    if oh <= 0 || ow <= 0 {
        return Err(cx.err(format!("size {size:?} must be positive")));
    }
    let (align, half) = if nearest {
        (opt(op, 0, 0u8)?, opt(op, 1, 0u8)?)
    } else {
        (opt(op, 2, 0u8)?, opt(op, 3, 0u8)?)
    };
    let coord = match (align != 0, half != 0) {
        (false, false) => CoordMode::Asymmetric,
        (true, false) => CoordMode::AlignCorners,
        (false, true) => CoordMode::HalfPixel,
        (true, true) => return Err(cx.err("align_corners and half_pixel_centers together")),
    };
    let (oh, ow) = (oh as usize, ow as usize);
    let elements = [n, c, oh, ow].iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if elements.is_none_or(|e| e > crate::onnx::MAX_ELEMENTS) {
        return Err(cx.err(format!(
            "size {size:?} exceeds the limit of {} elements",
            crate::onnx::MAX_ELEMENTS
        )));
    }
    if nearest {
        return resize_nearest(cx, x, out, [h, w], [oh, ow], (align != 0, half != 0));
    }
    let r = Resize {
        sizes: vec![n, c, oh, ow],
        mode: ResizeMode::Linear,
        coord,
        scales: vec![1.0, 1.0, oh as f32 / h as f32, ow as f32 / w as f32],
        roi: vec![0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0],
        cubic_a: -0.75,
        exclude_outside: false,
        extrapolation: 0.0,
    };
    let xv = cx.float(x, Layout::Nchw)?;
    let y = cx.emit("resize", Op::Resize(r), vec![xv])?;
    cx.define(out, y, Layout::Nchw)
}

/// TRANSPOSE_CONV: `[output_shape, weights [O, kh, kw, I], x, bias?]`; the padding TFLite
/// derives from SAME/VALID and the output shape it is given.
fn transpose_conv(cx: &mut Lower, op: &Operator) -> Result<()> {
    let (w, x, out) = (cx.req(op, 1)?, cx.req(op, 2)?, cx.output(op, 0)?);
    let [_, h, wd, c] = rank4(cx, x)?;
    let [o, kh, kw, i] = rank4(cx, w)?;
    let [_, oh, ow, oc] = rank4(cx, out)?;
    if i != c || o != oc {
        return Err(cx.err(format!("weights [{o},{kh},{kw},{i}] do not take {c} channels to {oc}")));
    }
    let (padding, strides) = (opt(op, 0, 0u8)?, [opt(op, 2, 1i32)?, opt(op, 1, 1i32)?]);
    if strides.iter().any(|&s| s <= 0) || [kh, kw, h, wd, oh, ow].contains(&0) {
        return Err(cx.err(format!("strides {strides:?}, kernel and image sizes must be positive")));
    }
    let s = strides.map(|s| s as usize);
    let (mut pads, mut output_padding) = (vec![0; 4], vec![0; 2]);
    for (k, (inp, outp, kern)) in [(h, oh, kh), (wd, ow, kw)].into_iter().enumerate() {
        // TFLite pads as a convolution from the output size back to the input would
        let back = match padding {
            0 => outp.div_ceil(s[k]),
            1 => (outp + s[k]).saturating_sub(kern) / s[k],
            other => return Err(cx.err(format!("padding {other} is not supported"))),
        };
        let before = ((back.max(1) - 1) * s[k] + kern).saturating_sub(outp) / 2;
        let end = ((inp - 1) * s[k] + kern) as i64 - before as i64 - outp as i64;
        pads[k] = before;
        if end >= 0 {
            pads[k + 2] = end as usize;
        } else if (-end as usize) < s[k] {
            output_padding[k] = -end as usize;
        } else {
            return Err(cx.err(format!(
                "output size {outp} does not follow from input {inp}, stride {} and kernel {kern}",
                s[k]
            )));
        }
    }
    if cx.act(x).is_some() {
        let y = as_convolution(cx, op, [x, w], [oh, ow], s, [pads[0], pads[1]])?;
        let y = activation(cx, y, opt(op, 3, 0u8)?)?;
        return cx.define(out, y, Layout::Nchw);
    }
    let window = Window {
        kernel: vec![kh, kw],
        strides: s.to_vec(),
        dilations: vec![1, 1],
        pads,
    };
    let xv = cx.float(x, Layout::Nchw)?;
    let wv = weights(cx, w, Some(&[3, 0, 1, 2]))?;
    let mut inputs = vec![xv, wv];
    if let Some(b) = cx.input(op, 3) {
        inputs.push(cx.value(b, Layout::Nhwc)?);
    }
    let ct = Op::ConvTranspose(ConvTranspose {
        window,
        group: 1,
        output_padding,
    });
    let y = cx.emit("transpose_conv", ct, inputs)?;
    let y = activation(cx, y, opt(op, 3, 0u8)?)?;
    cx.define(out, y, Layout::Nchw)
}

/// A quantized TRANSPOSE_CONV as the convolution it equals: the input spread out by the
/// strides (zeros between, the zero point once quantized), bordered, and convolved with the
/// kernel flipped. The quantizer then gives it the integer convolution with TFLite's rescale,
/// whose sums are exactly TFLite's scatter-accumulated ones.
fn as_convolution(
    cx: &mut Lower,
    op: &Operator,
    [x, w]: [usize; 2],
    out: [usize; 2],
    s: [usize; 2],
    before: [usize; 2],
) -> Result<ValueId> {
    let mut v = cx.float(x, Layout::Nchw)?;
    for axis in [2, 3] {
        let stride = s[axis - 2];
        if stride == 1 {
            continue;
        }
        let shape = cx.graph.value(v).ty.shape.clone();
        let mut apart = shape.clone();
        apart.insert(axis + 1, 1);
        v = cx.emit("apart", Op::Reshape { shape: apart }, vec![v])?;
        let mut pads = vec![0i64; 10];
        pads[5 + axis + 1] = stride as i64 - 1;
        v = cx.emit(
            "spread",
            Op::Pad {
                mode: PadMode::Constant,
                pads,
            },
            vec![v],
        )?;
        let mut spread = shape;
        spread[axis] *= stride;
        v = cx.emit("spread", Op::Reshape { shape: spread }, vec![v])?;
    }
    let ws = cx.shape(w);
    let (kh, kw) = (ws[1], ws[2]);
    let len = cx.graph.value(v).ty.shape.clone();
    let mut border = vec![0i64; 8];
    for (k, kern) in [kh, kw].into_iter().enumerate() {
        let lead = kern as i64 - 1 - before[k] as i64;
        border[2 + k] = lead;
        border[6 + k] = (out[k] + kern) as i64 - 1 - len[2 + k] as i64 - lead;
    }
    v = cx.emit(
        "border",
        Op::Pad {
            mode: PadMode::Constant,
            pads: border,
        },
        vec![v],
    )?;
    // [O, kh, kw, I] -> [O, I, kh, kw], each kernel turned by 180 degrees
    let mut wt = cx.constant(w, Some(&[0, 3, 1, 2]))?;
    let plane = kh * kw;
    let flipped = kiln_ir::map_data!(&wt.data, d => d.chunks(plane).flat_map(|p| p.iter().rev().copied()).collect());
    wt.data = flipped;
    let name = format!("{}/flipped", cx.def(w).name);
    let wv = cx.graph.add_const(&name, wt);
    let mut inputs = vec![v, wv];
    if let Some(b) = cx.input(op, 3) {
        inputs.push(cx.value(b, Layout::Nhwc)?);
    }
    let window = Window {
        kernel: vec![kh, kw],
        strides: vec![1, 1],
        dilations: vec![1, 1],
        pads: vec![0; 4],
    };
    cx.emit(
        "conv",
        Op::Conv(Conv {
            window,
            group: 1,
            fused: None,
        }),
        inputs,
    )
}

/// TFLite's nearest source index of each of `out` positions along an axis of `len`.
fn nearest_indices(len: usize, out: usize, align: bool, half: bool) -> Vec<i64> {
    let scale = if align && out > 1 {
        (len - 1) as f32 / (out - 1) as f32
    } else {
        len as f32 / out as f32
    };
    let offset = if half { 0.5f32 } else { 0.0 };
    (0..out)
        .map(|o| {
            let p = (o as f32 + offset) * scale;
            let i = if align { p.round() } else { p.floor() } as i64;
            i.clamp(0, len as i64 - 1)
        })
        .collect()
}

fn resize_nearest(
    cx: &mut Lower,
    x: usize,
    out: usize,
    hw: [usize; 2],
    to: [usize; 2],
    (align, half): (bool, bool),
) -> Result<()> {
    let layout = cx.layout(x);
    let mut v = if cx.act(x).is_some() && cx.act(x) == cx.act(out) {
        cx.value(x, layout)?
    } else {
        cx.float(x, layout)?
    };
    for k in 0..2 {
        let idx = nearest_indices(hw[k], to[k], align, half);
        let name = format!("{}/rows{k}", cx.node);
        let n = idx.len();
        let c = cx.graph.add_const(&name, Tensor::from_vec(vec![n], idx));
        v = cx.emit(
            "nearest",
            Op::Gather {
                axis: axis_in(layout, k + 1),
            },
            vec![v, c],
        )?;
    }
    cx.define(out, v, layout)
}

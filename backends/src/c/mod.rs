//! The C backend: one self-contained C99 file per model — weights as `static const`
//! arrays, one `static` function per layer with its ONNX name in a comment and every shape
//! a constant, and `<prefix>_run` calling them over caller buffers and the arena planned by
//! `kiln_ir::plan`. No malloc, no printf; `<stdint.h>`/`<stddef.h>` only (plus `<math.h>`
//! when a model takes a square root). Float kernels follow the evaluator's order of
//! operations, and exp/tanh/sigmoid use the same Cephes-style approximations as the native
//! backend. Compile with ISO C (`-std=c99`), which keeps multiply-add contraction off.

mod avr;
mod conv;
mod int;
mod linalg;
mod mcu;
mod rom;
mod writer;

use crate::header;
use crate::shapes::{bcast, f32_half_weight, pow_exponent, strides};
use kiln_ir::op::{BinaryOp, Pool, PoolKind, ReduceKind, UnaryOp};
use kiln_ir::plan::{Location, MemoryPlan};
use kiln_ir::{Graph, NodeId, Op, Scalar, ValueId};
use std::fmt::Write;
use thiserror::Error;
use writer::{array, f32_lit, nest};

/// Alignment the C backend asks of the arena.
pub const ARENA_ALIGN: usize = 16;

#[derive(Debug, Error)]
pub enum Error {
    #[error("{count} node(s) the C backend cannot compile yet:{list}", count = .0.len(), list = .0.iter().map(|s| format!("\n  {s}")).collect::<String>())]
    UnsupportedOps(Vec<String>),
    #[error(
        "node `{node}`: its kernel uses constant `{value}` other than by subscript, so it cannot read it from program memory"
    )]
    RomAccess { node: String, value: String },
}

#[derive(Clone, Debug)]
pub struct Options {
    pub prefix: String,
    /// Keep constants in program memory and read them with flash loads (AVR, where a
    /// `static const` array would otherwise be copied into RAM at start-up).
    pub progmem: bool,
    /// A 32-bit Cortex-M part: int8 convolutions use the kernels of `mcu` (stack-buffered
    /// planes, and DSP-extension paths chosen by the C preprocessor).
    pub cortex_m: bool,
}

pub struct Output {
    pub source: String,
}

/// Whether C for `opts` targets a host (vectors, caches, room for scratch) rather than a
/// Cortex-M part or AVR.
pub fn host(opts: &Options) -> bool {
    !opts.cortex_m && !opts.progmem
}

/// Scratch bytes per node: recurrent layers (h, c and the gate vectors), integer
/// convolutions, and on hosts float convolutions over a zero-bordered input copy.
pub fn scratch_bytes(g: &Graph, n: NodeId, opts: &Options) -> usize {
    match &g.node(n).op {
        Op::Rnn(r) => 4 * 10 * r.hidden,
        Op::Conv(c) if host(opts) => conv::scratch_bytes(g, n, c),
        Op::QConv { .. } if opts.progmem && crate::pack::avr_product(g, n).is_some() => avr::conv_scratch(g, n),
        Op::QConv { .. } | Op::DynConv { .. } | Op::DynMatMul { .. } => int::qconv_scratch(g, n),
        _ => 0,
    }
}

fn shape(g: &Graph, v: ValueId) -> &[usize] {
    &g.value(v).ty.shape
}

/// Whether node `n` reads a binary16 weight.
fn half_weight(g: &Graph, n: NodeId) -> bool {
    g.node(n)
        .inputs
        .iter()
        .any(|&v| g.value(v).ty.dtype.scalar == Scalar::F16 && g.const_value(v).is_some())
}

fn f32_io(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    node.inputs
        .iter()
        .chain(&node.outputs)
        .all(|&v| g.value(v).ty.dtype.scalar == Scalar::F32)
}

fn unary_ok(u: UnaryOp) -> bool {
    use UnaryOp::*;
    matches!(
        u,
        Relu | LeakyRelu { .. }
            | Clip { .. }
            | HardSigmoid { .. }
            | HardSwish
            | Sigmoid
            | Tanh
            | Exp
            | Sqrt
            | Neg
            | Abs
            | Reciprocal
            | Elu { .. }
            | Celu { .. }
            | Selu { .. }
            | ThresholdedRelu { .. }
            | Softplus
            | Softsign
            | Mish
            | Gelu { .. }
            | Log
            | Sign
            | Floor
            | Ceil
            | Round
            | Erf
            | Sin
            | Cos
            | Tan
            | Asin
            | Acos
            | Atan
            | Sinh
            | Cosh
            | Asinh
            | Acosh
            | Atanh
    )
}

/// Unary ops whose C form calls `<math.h>` (the rest use Kiln's own approximations).
fn unary_needs_math(u: UnaryOp) -> bool {
    use UnaryOp::*;
    matches!(
        u,
        Sqrt | Softplus
            | Mish
            | Gelu { tanh_approx: false }
            | Log
            | Floor
            | Ceil
            | Round
            | Erf
            | Sin
            | Cos
            | Tan
            | Asin
            | Acos
            | Atan
            | Sinh
            | Cosh
            | Asinh
            | Acosh
            | Atanh
    )
}

/// Why node `n` cannot be compiled to C yet, if it cannot.
pub fn unsupported(g: &Graph, n: NodeId) -> Option<String> {
    let node = g.node(n);
    let ok = if let Some(ok) = int::supported(g, n) {
        ok
    } else {
        float_supported(g, n)
    };
    (!ok).then(|| {
        let types: Vec<String> = node.inputs.iter().map(|&v| g.value(v).ty.to_string()).collect();
        format!("node `{}`: {} on {}", node.name, node.op.name(), types.join(", "))
    })
}

fn float_supported(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    match &node.op {
        Op::Identity
        | Op::Reshape { .. }
        | Op::Transpose { .. }
        | Op::Slice { .. }
        | Op::Concat { .. }
        | Op::Expand { .. } => true,
        Op::Gather { .. } => g.value(node.outputs[0]).ty.dtype.scalar != Scalar::F16,
        Op::Pad { .. } => {
            f32_io(g, n)
                || (matches!(g.value(node.inputs[0]).ty.dtype.scalar, Scalar::I8 | Scalar::I16)
                    && node.inputs.len() == 2)
        }
        Op::Unary(UnaryOp::Not) => g.value(node.inputs[0]).ty.dtype.scalar == Scalar::Bool,
        Op::Unary(u) => f32_io(g, n) && unary_ok(*u),
        Op::Binary(b) if compare_or_logic(*b) => {
            let (sa, sb) = (
                g.value(node.inputs[0]).ty.dtype.scalar,
                g.value(node.inputs[1]).ty.dtype.scalar,
            );
            sa == sb
                && sa != Scalar::F16
                && (!matches!(b, BinaryOp::And | BinaryOp::Or | BinaryOp::Xor) || sa == Scalar::Bool)
        }
        Op::Where => {
            let t = g.value(node.outputs[0]).ty.dtype.scalar;
            t != Scalar::F16 && g.value(node.inputs[0]).ty.dtype.scalar == Scalar::Bool
        }
        Op::Split { .. } => true,
        Op::Trilu { .. } => g.value(node.inputs[0]).ty.dtype.scalar != Scalar::F16,
        Op::Binary(BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Max | BinaryOp::Min) if int_io(g, n) => {
            true
        }
        Op::Cast { to } => *to != Scalar::F16 && g.value(node.inputs[0]).ty.dtype.scalar != Scalar::F16,
        Op::GatherElements { .. } => g.value(node.outputs[0]).ty.dtype.scalar != Scalar::F16,
        Op::ArgMax { .. } | Op::ArgMin { .. } => f32_in(g, n),
        Op::Binary(b) => {
            f32_io(g, n)
                && (matches!(
                    b,
                    BinaryOp::Add
                        | BinaryOp::Sub
                        | BinaryOp::Mul
                        | BinaryOp::Div
                        | BinaryOp::Max
                        | BinaryOp::Min
                        | BinaryOp::PRelu
                ) || (*b == BinaryOp::Pow && pow_exponent(g, n).is_some()))
        }
        Op::Conv(c) => {
            f32_half_weight(g, n) && matches!(shape(g, node.inputs[0]).len(), 3 | 4) && c.fused.is_none_or(unary_ok)
        }
        Op::ConvTranspose(_) => f32_io(g, n),
        Op::Gemm { fused, .. } => f32_half_weight(g, n) && fused.is_none_or(unary_ok),
        Op::MatMul => f32_half_weight(g, n),
        Op::Pool(p) => {
            f32_io(g, n) && matches!(shape(g, node.inputs[0]).len(), 3 | 4) && !matches!(p.kind, PoolKind::Lp { .. })
        }
        Op::GlobalPool(k) => f32_io(g, n) && !matches!(k, PoolKind::Lp { .. }),
        Op::Softmax { .. } | Op::LogSoftmax { .. } | Op::Hardmax { .. } => f32_io(g, n),
        Op::Reduce { .. } => f32_io(g, n),
        Op::BatchNorm { .. } => f32_io(g, n),
        Op::LayerNorm { axis, .. } => {
            // scale and bias spanning exactly the normalized axes
            let x = shape(g, node.inputs[0]);
            let inner: usize = x[*axis..].iter().product();
            f32_io(g, n) && node.inputs[1..].iter().all(|&v| g.value(v).ty.numel() == inner)
        }
        Op::Rnn(r) => {
            use kiln_ir::op::{Activation, RnnKind};
            f32_io(g, n)
                && matches!(r.kind, RnnKind::Lstm { input_forget: false })
                && node.inputs.len() == 6
                && r.activations
                    .chunks(3)
                    .all(|c| c == [Activation::Sigmoid, Activation::Tanh, Activation::Tanh])
        }
        // no C kernel yet (the native backend has them)
        Op::InstanceNorm { .. }
        | Op::Lrn { .. }
        | Op::GatherNd { .. }
        | Op::ScatterElements { .. }
        | Op::ScatterNd { .. }
        | Op::Tile { .. }
        | Op::CumSum { .. }
        | Op::OneHot { .. }
        | Op::Einsum { .. }
        | Op::Resize(_)
        | Op::TopK { .. } => false,
        // integer and hybrid ops: `int::supported` decides
        Op::Quantize { .. }
        | Op::Dequantize { .. }
        | Op::QConv { .. }
        | Op::QMatMul { .. }
        | Op::QBlockMatMul { .. }
        | Op::DynConv { .. }
        | Op::DynMatMul { .. }
        | Op::QAdd(_)
        | Op::QMul(_)
        | Op::QPRelu(_)
        | Op::QSoftmax { .. }
        | Op::Lut { .. }
        | Op::Requant { .. }
        | Op::QSoftmax16 { .. }
        | Op::Lut16 { .. } => false,
        // ONNX's dynamic quantization ops: folded into DynConv/DynMatMul before code is made
        Op::DynamicQuantize | Op::IntConv { .. } | Op::IntMatMul => false,
    }
}

/// `y0[i] = x0[i]` converted as the evaluator converts: through f64 when either side is a
/// float, saturating (NaN to 0) into integers, `!= 0` into bool; integer to integer wraps.
fn cast_stmt(from: Scalar, to: Scalar) -> String {
    let t = header::c_type(to);
    if to == Scalar::Bool {
        return "y0[i] = (uint8_t)(x0[i] != 0);".into();
    }
    if !from.is_float() && !to.is_float() {
        return format!("y0[i] = ({t})x0[i];");
    }
    if to.is_float() {
        return format!("y0[i] = ({t})(double)x0[i];");
    }
    let (lo, hi) = match to {
        Scalar::I8 => ("-128.0", "127.0"),
        Scalar::U8 => ("0.0", "255.0"),
        Scalar::I16 => ("-32768.0", "32767.0"),
        Scalar::U16 => ("0.0", "65535.0"),
        Scalar::I32 => ("-2147483648.0", "2147483647.0"),
        Scalar::U32 => ("0.0", "4294967295.0"),
        Scalar::I64 => ("-9223372036854775808.0", "9223372036854775807.0"),
        _ => ("0.0", "18446744073709551615.0"),
    };
    let (min, max) = match to {
        Scalar::I8 => ("INT8_MIN", "INT8_MAX"),
        Scalar::U8 => ("0", "UINT8_MAX"),
        Scalar::I16 => ("INT16_MIN", "INT16_MAX"),
        Scalar::U16 => ("0", "UINT16_MAX"),
        Scalar::I32 => ("INT32_MIN", "INT32_MAX"),
        Scalar::U32 => ("0", "UINT32_MAX"),
        Scalar::I64 => ("INT64_MIN", "INT64_MAX"),
        _ => ("0", "UINT64_MAX"),
    };
    format!(
        "double v = (double)x0[i];\n        y0[i] = v != v ? ({t})0 : (v <= {lo} ? ({t}){min} : (v >= {hi} ? ({t}){max} : ({t})v));"
    )
}

/// Loops over a two-input node's output with both inputs broadcast to it; `body` gets the
/// output's and the two inputs' index expressions (in that order).
fn broadcast2(out: &mut String, g: &Graph, n: NodeId, body: &dyn Fn(&[String]) -> String) {
    let node = g.node(n);
    let o0 = shape(g, node.outputs[0]);
    let (sa, sb) = (bcast(shape(g, node.inputs[0]), o0), bcast(shape(g, node.inputs[1]), o0));
    nest(out, 1, o0, &[strides(o0), sa, sb], body);
}

/// Comparisons (any element type, bool result) and logic (bool).
fn compare_or_logic(b: BinaryOp) -> bool {
    matches!(
        b,
        BinaryOp::Equal
            | BinaryOp::Less
            | BinaryOp::LessOrEqual
            | BinaryOp::Greater
            | BinaryOp::GreaterOrEqual
            | BinaryOp::And
            | BinaryOp::Or
            | BinaryOp::Xor
    )
}

/// Integer (not bool) inputs and output of one type.
fn int_io(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    let s = g.value(node.outputs[0]).ty.dtype.scalar;
    s.is_int() && node.inputs.iter().all(|&v| g.value(v).ty.dtype.scalar == s)
}

fn f32_in(g: &Graph, n: NodeId) -> bool {
    g.value(g.node(n).inputs[0]).ty.dtype.scalar == Scalar::F32
}

/// The C expression for `u(x)` (x a float expression without side effects).
fn unary_expr(u: UnaryOp, x: &str) -> String {
    let l = |v: f32| f32_lit(v);
    match u {
        UnaryOp::Relu => format!("kiln_maxf({x}, 0.0f)"),
        UnaryOp::LeakyRelu { alpha } => format!("({x} < 0.0f ? {} * {x} : {x})", l(alpha)),
        UnaryOp::Clip { min, max } => {
            let mut e = x.to_string();
            if min > f32::NEG_INFINITY {
                e = format!("kiln_maxf({e}, {})", l(min));
            }
            if max < f32::INFINITY {
                e = format!("kiln_minf({e}, {})", l(max));
            }
            e
        }
        UnaryOp::HardSigmoid { alpha, beta } => {
            format!("kiln_maxf(kiln_minf({} * {x} + {}, 1.0f), 0.0f)", l(alpha), l(beta))
        }
        UnaryOp::HardSwish => format!("({x} * kiln_maxf(kiln_minf({x} / 6.0f + 0.5f, 1.0f), 0.0f))"),
        UnaryOp::Sigmoid => format!("kiln_sigmoidf({x})"),
        UnaryOp::Tanh => format!("kiln_tanhf({x})"),
        UnaryOp::Exp => format!("kiln_expf({x})"),
        UnaryOp::Sqrt => format!("sqrtf({x})"),
        UnaryOp::Neg => format!("(-{x})"),
        UnaryOp::Abs => format!("kiln_absf({x})"),
        UnaryOp::Reciprocal => format!("(1.0f / {x})"),
        UnaryOp::Elu { alpha } => format!("({x} < 0.0f ? {} * (kiln_expf({x}) - 1.0f) : {x})", l(alpha)),
        UnaryOp::Celu { alpha } => format!(
            "(kiln_maxf({x}, 0.0f) + kiln_minf(0.0f, {a} * (kiln_expf({x} / {a}) - 1.0f)))",
            a = l(alpha)
        ),
        UnaryOp::Selu { alpha, gamma } => format!(
            "({g} * ({x} > 0.0f ? {x} : {a} * kiln_expf({x}) - {a}))",
            a = l(alpha),
            g = l(gamma)
        ),
        UnaryOp::ThresholdedRelu { alpha } => format!("({x} > {} ? {x} : 0.0f)", l(alpha)),
        UnaryOp::Softplus => format!("({x} > 0.0f ? {x} + log1pf(kiln_expf(-{x})) : log1pf(kiln_expf({x})))"),
        UnaryOp::Softsign => format!("({x} / (1.0f + kiln_absf({x})))"),
        UnaryOp::Mish => {
            format!("({x} * kiln_tanhf({x} > 0.0f ? {x} + log1pf(kiln_expf(-{x})) : log1pf(kiln_expf({x}))))")
        }
        UnaryOp::Gelu { tanh_approx: false } => format!("(0.5f * {x} * (1.0f + erff({x} / 1.41421356f)))"),
        UnaryOp::Gelu { tanh_approx: true } => {
            format!("(0.5f * {x} * (1.0f + kiln_tanhf(0.797884561f * ({x} + 0.044715f * {x} * {x} * {x}))))")
        }
        UnaryOp::Log => format!("logf({x})"),
        UnaryOp::Sign => format!("({x} > 0.0f ? 1.0f : ({x} < 0.0f ? -1.0f : {x}))"),
        UnaryOp::Floor => format!("floorf({x})"),
        UnaryOp::Ceil => format!("ceilf({x})"),
        UnaryOp::Round => format!("rintf({x})"),
        UnaryOp::Erf => format!("erff({x})"),
        UnaryOp::Sin => format!("sinf({x})"),
        UnaryOp::Cos => format!("cosf({x})"),
        UnaryOp::Tan => format!("tanf({x})"),
        UnaryOp::Asin => format!("asinf({x})"),
        UnaryOp::Acos => format!("acosf({x})"),
        UnaryOp::Atan => format!("atanf({x})"),
        UnaryOp::Sinh => format!("sinhf({x})"),
        UnaryOp::Cosh => format!("coshf({x})"),
        UnaryOp::Asinh => format!("asinhf({x})"),
        UnaryOp::Acosh => format!("acoshf({x})"),
        UnaryOp::Atanh => format!("atanhf({x})"),
        other => unreachable!("{} passed the support check", other.name()),
    }
}

/// binary16 to f32, exact (every binary16 value is an f32), integer operations only.
const HALF_PRELUDE: &str = r#"
static inline float kiln_h2f(uint16_t h) {
    uint32_t s = (uint32_t)(h & 0x8000u) << 16, e = (uint32_t)(h >> 10) & 0x1fu, m = h & 0x3ffu, u;
    union { uint32_t u; float f; } v;
    if (e == 0x1fu) {
        u = s | 0x7f800000u | (m << 13);
    } else if (e != 0) {
        u = s | ((e + 112u) << 23) | (m << 13);
    } else if (m != 0) {
        e = 113u;
        while (!(m & 0x400u)) { m <<= 1; --e; }
        u = s | (e << 23) | ((m & 0x3ffu) << 13);
    } else {
        u = s;
    }
    v.u = u;
    return v.f;
}
"#;

/// Helpers every file carries (unused ones are `static inline`, so no warnings).
/// `KILN_LAYER_BEGIN(k)`/`KILN_LAYER_END(k)` wrap the call of kernel `k` in the entry
/// points: empty unless defined before this file is compiled (e.g. `-D` to a simulator's
/// region markers, for a per-layer profile).
const PRELUDE: &str = r#"
#ifndef KILN_LAYER_BEGIN
#define KILN_LAYER_BEGIN(k)
#endif
#ifndef KILN_LAYER_END
#define KILN_LAYER_END(k)
#endif
static inline float kiln_maxf(float a, float b) { return (a != a || b != b) ? a + b : (a > b ? a : b); }
static inline float kiln_minf(float a, float b) { return (a != a || b != b) ? a + b : (a < b ? a : b); }
static inline float kiln_absf(float a) { return a < 0.0f ? -a : a; }
static inline float kiln_nearbyf(float x) {
    /* round half to even for |x| < 2^23 (exp's range reduction only needs small x) */
    const float big = 8388608.0f;
    float a = kiln_absf(x);
    if (!(a < big)) return x;
    float r = (a + big) - big;
    return x < 0.0f ? -r : r;
}
/* e^x: Cody-Waite reduction by ln 2 and a degree-6 polynomial (as the native backend). */
static inline float kiln_expf(float x) {
    if (x != x) return x;
    if (x > 88.72283f) return 1.0f / 0.0f;
    float xc = x < -87.33654f ? -87.33654f : x;
    float n = kiln_nearbyf(xc * 1.44269504f);
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    int32_t e = (int32_t)n;
    union { uint32_t u; float f; } s;
    if (e >= 128) { s.u = (uint32_t)(127 + 127) << 23; return p * s.f * 2.0f; }
    s.u = (uint32_t)(e + 127) << 23;
    return p * s.f;
}
static inline float kiln_sigmoidf(float x) {
    if (x != x) return x;
    float e = kiln_expf(-kiln_absf(x));
    float d = 1.0f + e;
    return x >= 0.0f ? 1.0f / d : e / d;
}
static inline float kiln_tanhf(float x) {
    float a = kiln_absf(x);
    if (a < 0.625f) {
        float z = x * x;
        float p = -5.70498872745e-3f;
        p = p * z + 2.06390887954e-2f;
        p = p * z - 5.37397155531e-2f;
        p = p * z + 1.33314422036e-1f;
        p = p * z - 3.33332819422e-1f;
        return p * z * x + x;
    }
    float r = 1.0f - 2.0f / (kiln_expf(a + a) + 1.0f);
    return x < 0.0f ? -r : r;
}
"#;

pub fn emit(g: &Graph, plan: &MemoryPlan, opts: &Options) -> Result<Output, Error> {
    let bad: Vec<String> = plan.order.iter().filter_map(|&n| unsupported(g, n)).collect();
    if !bad.is_empty() {
        return Err(Error::UnsupportedOps(bad));
    }
    let p = &opts.prefix;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "/* {p}.c: generated by Kiln {}. Do not edit. */",
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(out, "#include \"{p}.h\"");
    let needs_math = plan.order.iter().any(|&n| {
        matches!(g.node(n).op, Op::Unary(u) if unary_needs_math(u))
            || matches!(
                g.node(n).op,
                Op::LogSoftmax { .. } | Op::LayerNorm { .. } | Op::BatchNorm { .. }
            )
            || matches!(
                g.node(n).op,
                Op::Reduce {
                    kind: ReduceKind::L2 | ReduceKind::LogSum | ReduceKind::LogSumExp,
                    ..
                }
            )
            || matches!(&g.node(n).op, Op::Conv(c) if c.fused.is_some_and(unary_needs_math))
            || matches!(&g.node(n).op, Op::Gemm { fused, .. } if fused.is_some_and(unary_needs_math))
            || matches!(&g.node(n).op, Op::Binary(BinaryOp::Pow) if pow_exponent(g, n) == Some(0.5))
    });
    if needs_math {
        let _ = writeln!(out, "#include <math.h>");
    }
    if opts.progmem {
        out.push_str(rom::PRELUDE);
    }
    out.push_str(PRELUDE);
    if plan.order.iter().any(|&n| int::supported(g, n).is_some()) {
        out.push_str(int::PRELUDE);
    }
    if opts.cortex_m {
        out.push_str(mcu::PRELUDE);
    }
    if opts.progmem && plan.order.iter().any(|&n| crate::pack::avr_product(g, n).is_some()) {
        out.push_str(avr::PRELUDE);
    }
    if plan.order.iter().any(|&n| half_weight(g, n)) {
        out.push_str(HALF_PRELUDE);
        out.push_str(if opts.progmem {
            "static inline float kiln_ld_half(const uint16_t *p) { return kiln_h2f(pgm_read_word(p)); }\n"
        } else {
            "static inline float kiln_ld_half(const uint16_t *p) { return kiln_h2f(*p); }\n"
        });
    }
    let storage = if opts.progmem {
        "static const PROGMEM "
    } else {
        "static const "
    };
    // Weights.
    let mut names: std::collections::HashMap<ValueId, String> = std::collections::HashMap::new();
    let read: Vec<ValueId> = plan
        .order
        .iter()
        .flat_map(|&n| g.node(n).inputs.iter().copied())
        .chain(g.outputs().iter().copied())
        .collect();
    {
        for v in read {
            if let Some(t) = g.const_value(v)
                && !names.contains_key(&v)
            {
                let name = format!("w{}", v.index());
                let packed = kiln_ir::analysis::packed_weight_bits(g, v);
                let reordered = if opts.cortex_m {
                    crate::pack::const_values(g, v)
                } else if opts.progmem {
                    crate::pack::avr_const_values(g, v)
                } else {
                    None
                };
                let items: Vec<String> = match &t.data {
                    _ if reordered.is_some() => reordered.iter().flatten().map(|x| x.to_string()).collect(),
                    _ if packed.is_some() => {
                        let w: Vec<i8> = t.to_i64_vec().iter().map(|&x| x as i8).collect();
                        let bits = packed.unwrap_or(8);
                        let mut p = vec![0u8; kiln_runtime::packed_len(w.len(), bits)];
                        kiln_runtime::pack_weights(&w, bits, &mut p);
                        p.iter().map(|b| b.to_string()).collect()
                    }
                    kiln_ir::Data::F16(h) => h.iter().map(|x| x.to_bits().to_string()).collect(),
                    _ => match t.data.scalar() {
                        Scalar::F32 => t.to_f32_vec().iter().map(|&x| f32_lit(x)).collect(),
                        _ => t.to_i64_vec().iter().map(|x| format!("{x}")).collect(),
                    },
                };
                let _ = writeln!(
                    out,
                    "\n/* `{}`: {} */",
                    crate::text::comment(&g.value(v).name),
                    g.value(v).ty
                );
                let ty = if packed.is_some() {
                    "uint8_t"
                } else {
                    header::c_type(t.data.scalar())
                };
                // the DSP kernels read reordered weights a word (or two) at a time
                let qualifiers = if reordered.is_some() && opts.cortex_m {
                    format!("{storage}KILN_WORDS ")
                } else {
                    storage.to_string()
                };
                array(&mut out, &qualifiers, ty, &name, &items);
                names.insert(v, name);
            }
        }
    }
    // Kernels.
    for (k, &n) in plan.order.iter().enumerate() {
        if !aliased(g, plan, n) {
            let mut text = String::new();
            kernel(&mut text, g, n, k, opts);
            // the AVR product kernels read flash themselves (`avr`: post-increment loads)
            let own_reads = opts.progmem && crate::pack::avr_product(g, n).is_some();
            if !own_reads && (opts.progmem || half_weight(g, n) || packed_weight(g, n)) {
                text = flash_reads(g, n, k, &text, opts)?;
            }
            if opts.cortex_m {
                // kept out of line: one kernel's registers are not the whole model's
                text = text.replacen("*/\nstatic void k", "*/\nKILN_KERNEL k", 1);
            }
            out.push_str(&text);
        }
    }
    // Entry points.
    let api = header::Api::new(g, plan, p, "");
    entry(&mut out, g, plan, opts, &names, &api, None);
    if let Some(int) = &api.int {
        entry(&mut out, g, plan, opts, &names, &api, Some(int));
    }
    // a non-finite constant is spelled with math.h's INFINITY or NAN
    if !needs_math && (out.contains("INFINITY") || out.contains("NAN")) {
        let head = format!("#include \"{p}.h\"\n");
        out = out.replacen(&head, &format!("{head}#include <math.h>\n"), 1);
    }
    Ok(Output { source: out })
}

/// Prints `<prefix>_run`, or with `int` the `<prefix>_run_int` variant, which takes the int8
/// buffers in place of the boundary Quantize/Dequantize nodes (copied at the same point of
/// the schedule, so the memory plan holds). Parameters get positional names here (the header
/// carries the model's), so no ONNX name can collide with a kernel, a weight or a local.
fn entry(
    out: &mut String,
    g: &Graph,
    plan: &MemoryPlan,
    opts: &Options,
    names: &std::collections::HashMap<ValueId, String>,
    api: &header::Api,
    int: Option<&header::IntApi>,
) {
    let p = &opts.prefix;
    let mut params: Vec<String> = Vec::new();
    let mut doc = String::new();
    for (i, q) in api.inputs.iter().enumerate() {
        let ty = header::c_type(int.map_or(q.scalar, |ia| ia.inputs[i].scalar));
        params.push(format!("const {ty} *in{i}"));
        let _ = write!(doc, "\n * in{i}: `{}`", crate::text::comment(&q.name));
    }
    for (i, q) in api.outputs.iter().enumerate() {
        let ty = header::c_type(int.map_or(q.scalar, |ia| ia.outputs[i].scalar));
        params.push(format!("{ty} *out{i}"));
        let _ = write!(doc, "\n * out{i}: `{}`", crate::text::comment(&q.name));
    }
    params.push("void *arena".into());
    let (name, what) = match int {
        Some(_) => (format!("{p}_run_int"), "Entry point on integer buffers."),
        None => (format!("{p}_run"), "Entry point."),
    };
    let _ = writeln!(out, "\n/* {what}{doc} */");
    let _ = writeln!(out, "int {name}({}) {{", params.join(", "));
    let _ = writeln!(out, "    unsigned char *a = (unsigned char *)arena;");
    let unused: Vec<String> = (0..api.inputs.len())
        .map(|i| format!("(void)in{i};"))
        .chain((0..api.outputs.len()).map(|i| format!("(void)out{i};")))
        .chain(["(void)a;".to_string()])
        .collect();
    let _ = writeln!(out, "    {}", unused.join(" "));
    let ptr = |v: ValueId, writable: bool| -> String {
        let ty = header::c_type(g.value(v).ty.dtype.scalar);
        match plan.loc(v) {
            Location::Input(i) => {
                if writable {
                    format!("({ty} *)in{i}")
                } else {
                    format!("in{i}")
                }
            }
            Location::Output(i) => format!("out{i}"),
            Location::Arena(off) => format!("({ty} *)(a + {off})"),
            Location::Const(c) => names.get(&c).cloned().unwrap_or_else(|| "0".into()),
        }
    };
    for (k, &n) in plan.order.iter().enumerate() {
        let node = g.node(n);
        if aliased(g, plan, n) {
            continue; // a Reshape planned onto its input's bytes: nothing to move
        }
        if let Some(int) = int {
            if let Some(i) = int.inputs.iter().position(|q| q.node == n) {
                let _ = writeln!(
                    out,
                    "    for (size_t i = 0; i < {}u; ++i) ({})[i] = in{i}[i];",
                    g.value(node.outputs[0]).ty.numel(),
                    ptr(node.outputs[0], true)
                );
                continue;
            }
            if let Some(j) = int.outputs.iter().position(|q| q.node == n) {
                let _ = writeln!(
                    out,
                    "    for (size_t i = 0; i < {}u; ++i) out{j}[i] = ({})[i];",
                    g.value(node.inputs[0]).ty.numel(),
                    ptr(node.inputs[0], false)
                );
                continue;
            }
        }
        let mut args: Vec<String> = node.inputs.iter().map(|&v| ptr(v, false)).collect();
        args.extend(node.outputs.iter().map(|&v| ptr(v, true)));
        if let Some(off) = plan.scratch.get(&n) {
            args.push(format!("(float *)(a + {off})"));
        }
        let _ = writeln!(
            out,
            "    KILN_LAYER_BEGIN({k}); k{k}({}); KILN_LAYER_END({k});",
            args.join(", ")
        );
    }
    for (i, &v) in g.outputs().iter().enumerate() {
        if int.is_some() {
            break; // every output came from a boundary Dequantize, copied above
        }
        let src = match plan.loc(v) {
            Location::Output(j) if j == i => continue,
            _ if g.value(v).ty.numel() == 0 => continue,
            Location::Const(_) if opts.progmem => {
                let ty = header::c_type(g.value(v).ty.dtype.scalar);
                format!("kiln_ld_{ty}(&{}[i])", ptr(v, false))
            }
            _ => format!("{}[i]", ptr(v, false)),
        };
        let _ = writeln!(
            out,
            "    for (size_t i = 0; i < {}u; ++i) out{i}[i] = {src};",
            g.value(v).ty.numel(),
        );
    }
    let _ = writeln!(out, "    return 0;\n}}");
}

/// Routes a kernel's reads of its constant inputs through loads (see `rom`): flash loads
/// when `progmem`, and binary16 weights through `kiln_ld_half`, which widens them.
fn flash_reads(g: &Graph, n: NodeId, k: usize, text: &str, opts: &Options) -> Result<String, Error> {
    let progmem = opts.progmem;
    let node = g.node(n);
    let rom: Vec<(String, &str)> = node
        .inputs
        .iter()
        .enumerate()
        .filter(|(_, v)| g.const_value(**v).is_some())
        .filter_map(|(i, &v)| match g.value(v).ty.dtype.scalar {
            _ if let Some(b) = kiln_ir::analysis::packed_weight_bits(g, v) => {
                Some((format!("x{i}"), if b == 4 { "w4" } else { "w2" }))
            }
            Scalar::F16 => Some((format!("x{i}"), "half")),
            s if progmem => Some((format!("x{i}"), header::c_type(s))),
            _ => None,
        })
        .collect();
    let head = sig(g, n, k, opts).len();
    let body = rom::rewrite(&text[head..], &rom).map_err(|word| {
        let input = word.strip_prefix('x').and_then(|i| i.parse::<usize>().ok());
        Error::RomAccess {
            node: node.name.clone(),
            value: input.map_or(word, |i| g.value(node.inputs[i]).name.clone()),
        }
    })?;
    Ok(format!("{}{body}", &text[..head]))
}

/// Whether node `n` reads weights stored packed (narrower than 8 bits).
fn packed_weight(g: &Graph, n: NodeId) -> bool {
    g.node(n)
        .inputs
        .iter()
        .any(|&v| kiln_ir::analysis::packed_weight_bits(g, v).is_some())
}

/// A reshape-like node whose output the plan placed on its input's bytes.
fn aliased(g: &Graph, plan: &MemoryPlan, n: NodeId) -> bool {
    let node = g.node(n);
    matches!(node.op, Op::Reshape { .. } | Op::Identity) && plan.loc(node.inputs[0]) == plan.loc(node.outputs[0])
}

fn sig(g: &Graph, n: NodeId, k: usize, opts: &Options) -> String {
    let node = g.node(n);
    let mut ps: Vec<String> = node
        .inputs
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ty = if kiln_ir::analysis::packed_weight_bits(g, v).is_some() {
                "uint8_t"
            } else {
                header::c_type(g.value(v).ty.dtype.scalar)
            };
            format!("const {ty} *x{i}")
        })
        .collect();
    ps.extend(
        node.outputs
            .iter()
            .enumerate()
            .map(|(i, &v)| format!("{} *y{i}", header::c_type(g.value(v).ty.dtype.scalar))),
    );
    if scratch_bytes(g, n, opts) > 0 {
        ps.push("float *s".into());
    }
    let ins: Vec<String> = node.inputs.iter().map(|&v| g.value(v).ty.to_string()).collect();
    let outs: Vec<String> = node.outputs.iter().map(|&v| g.value(v).ty.to_string()).collect();
    // Not every kernel reads every pointer (a Pow by a constant ignores the exponent).
    let voids: Vec<String> = ps
        .iter()
        .map(|p| format!("(void){};", p.rsplit([' ', '*']).next().unwrap_or("")))
        .collect();
    format!(
        "\n/* node `{}` ({}): {} -> {} */\nstatic void k{k}({}) {{\n    {}\n",
        crate::text::comment(&node.name),
        node.op.name(),
        ins.join(", "),
        outs.join(", "),
        ps.join(", "),
        voids.join(" ")
    )
}

fn dims(s: &[usize]) -> Vec<usize> {
    s.to_vec()
}

/// `host`: a target with vectors and caches (not a Cortex-M part nor AVR), where loops
/// over independent outputs innermost let the C compiler vectorize.
fn kernel(out: &mut String, g: &Graph, n: NodeId, k: usize, opts: &Options) {
    let (cortex_m, host) = (opts.cortex_m, host(opts));
    let node = g.node(n);
    out.push_str(&sig(g, n, k, opts));
    if int::supported(g, n).is_some() {
        int::kernel(out, g, n, cortex_m, opts.progmem);
        out.push_str("}\n");
        return;
    }
    let o0 = shape(g, node.outputs[0]).to_vec();
    match &node.op {
        Op::Identity | Op::Reshape { .. } => {
            let _ = writeln!(
                out,
                "    for (int32_t i = 0; i < {}; ++i) y0[i] = x0[i];",
                g.value(node.outputs[0]).ty.numel()
            );
        }
        Op::Transpose { perm } => {
            let ist = strides(shape(g, node.inputs[0]));
            let src: Vec<i64> = perm.iter().map(|&p| ist[p]).collect();
            nest(out, 1, &dims(&o0), &[strides(&o0), src], &|o| {
                format!("y0[{}] = x0[{}];", o[0], o[1])
            });
        }
        Op::Slice { axes } => {
            let ist = strides(shape(g, node.inputs[0]));
            let st: Vec<i64> = axes.iter().zip(&ist).map(|(a, &s)| a.step * s).collect();
            let base: i64 = axes.iter().zip(&ist).map(|(a, &s)| a.start * s).sum();
            nest(out, 1, &dims(&o0), &[strides(&o0), st], &|o| {
                format!("y0[{}] = x0[{base} + {}];", o[0], o[1])
            });
        }
        Op::Expand { .. } => {
            let src = bcast(shape(g, node.inputs[0]), &o0);
            nest(out, 1, &dims(&o0), &[strides(&o0), src], &|o| {
                format!("y0[{}] = x0[{}];", o[0], o[1])
            });
        }
        Op::Concat { axis } => {
            let ost = strides(&o0);
            let mut at = 0i64;
            for (i, &v) in node.inputs.iter().enumerate() {
                let s = shape(g, v).to_vec();
                let base = at * ost[*axis];
                nest(out, 1, &s, &[ost.clone(), strides(&s)], &|o| {
                    format!("y0[{base} + {}] = x{i}[{}];", o[0], o[1])
                });
                at += s[*axis] as i64;
            }
        }
        Op::Gather { axis } => {
            let s = shape(g, node.inputs[0]).to_vec();
            let (outer, dim, inner) = (
                s[..*axis].iter().product::<usize>(),
                s[*axis],
                s[axis + 1..].iter().product::<usize>(),
            );
            let count = g.value(node.inputs[1]).ty.numel();
            let _ = writeln!(
                out,
                "    for (int32_t o = 0; o < {outer}; ++o)\n        for (int32_t p = 0; p < {count}; ++p) {{"
            );
            let _ = writeln!(
                out,
                "            int64_t j = (int64_t)x1[p];\n            if (j < 0) j += {dim};\n            if (j < 0) j = 0;\n            if (j > {}) j = {};",
                dim - 1,
                dim - 1
            );
            let _ = writeln!(
                out,
                "            for (int32_t q = 0; q < {inner}; ++q) y0[(o * {count} + p) * {inner} + q] = x0[(o * {dim} + (int32_t)j) * {inner} + q];\n        }}"
            );
        }
        Op::Pad { mode, pads } => pad(out, g, n, *mode, pads),
        Op::Unary(UnaryOp::Not) => {
            let total = g.value(node.outputs[0]).ty.numel();
            let _ = writeln!(
                out,
                "    for (int32_t i = 0; i < {total}; ++i) y0[i] = (uint8_t)!x0[i];"
            );
        }
        Op::Unary(u) => {
            let total = g.value(node.outputs[0]).ty.numel();
            let _ = writeln!(
                out,
                "    for (int32_t i = 0; i < {total}; ++i) {{\n        float v = x0[i];\n        y0[i] = {};\n    }}",
                unary_expr(*u, "v")
            );
        }
        Op::Binary(b) if compare_or_logic(*b) => {
            let op = match b {
                BinaryOp::Equal => "==",
                BinaryOp::Less => "<",
                BinaryOp::LessOrEqual => "<=",
                BinaryOp::Greater => ">",
                BinaryOp::GreaterOrEqual => ">=",
                BinaryOp::And => "&&",
                BinaryOp::Or => "||",
                _ => "!=",
            };
            broadcast2(out, g, n, &|o| {
                format!("y0[{}] = (uint8_t)(x0[{}] {op} x1[{}]);", o[0], o[1], o[2])
            });
        }
        Op::Where => {
            let (sc, sa, sb) = (
                bcast(shape(g, node.inputs[0]), &o0),
                bcast(shape(g, node.inputs[1]), &o0),
                bcast(shape(g, node.inputs[2]), &o0),
            );
            nest(out, 1, &dims(&o0), &[strides(&o0), sc, sa, sb], &|o| {
                format!("y0[{}] = x0[{}] ? x1[{}] : x2[{}];", o[0], o[1], o[2], o[3])
            });
        }
        Op::Cast { to } => {
            let from = g.value(node.inputs[0]).ty.dtype.scalar;
            let total = g.value(node.outputs[0]).ty.numel();
            let _ = writeln!(
                out,
                "    for (int32_t i = 0; i < {total}; ++i) {{\n        {}\n    }}",
                cast_stmt(from, *to)
            );
        }
        Op::Trilu { upper, k } => {
            let s = shape(g, node.inputs[0]);
            let r = s.len();
            let (rows, cols) = (s[r - 2], s[r - 1]);
            let total = g.value(node.outputs[0]).ty.numel();
            let keep = if *upper {
                format!("j - i >= {k}")
            } else {
                format!("j - i <= {k}")
            };
            let _ = writeln!(
                out,
                "    for (int32_t n = 0; n < {total}; ++n) {{\n        int64_t i = (n / {cols}) % {rows}, j = n % {cols};\n        y0[n] = ({keep}) ? x0[n] : 0;\n    }}"
            );
        }
        Op::Binary(b) if int_io(g, n) => {
            // Wrapping two's-complement arithmetic, as the evaluator's i64 then truncation.
            let t = header::c_type(g.value(node.outputs[0]).ty.dtype.scalar);
            let expr = match b {
                BinaryOp::Add => format!("({t})((uint64_t)(int64_t)a + (uint64_t)(int64_t)b)"),
                BinaryOp::Sub => format!("({t})((uint64_t)(int64_t)a - (uint64_t)(int64_t)b)"),
                BinaryOp::Mul => format!("({t})((uint64_t)(int64_t)a * (uint64_t)(int64_t)b)"),
                BinaryOp::Max => "(a > b ? a : b)".to_string(),
                _ => "(a < b ? a : b)".to_string(),
            };
            broadcast2(out, g, n, &|o| {
                format!("{t} a = x0[{}], b = x1[{}];\ny0[{}] = {expr};", o[1], o[2], o[0])
            });
        }
        Op::GatherElements { axis } => {
            // Out-of-range indices are clamped, as in Gather (the evaluator refuses them).
            let xs = shape(g, node.inputs[0]).to_vec();
            let mut xst = strides(&xs);
            let step = xst[*axis];
            xst[*axis] = 0;
            let dim = xs[*axis] as i64;
            nest(out, 1, &o0, &[strides(&o0), xst], &|o| {
                format!(
                    "int64_t j = (int64_t)x1[{0}];\nif (j < 0) j += {dim};\nif (j < 0) j = 0;\nif (j > {1}) j = {1};\ny0[{0}] = x0[{2} + (int32_t)j * {step}];",
                    o[0],
                    dim - 1,
                    o[1]
                )
            });
        }
        Op::Split { axis, .. } => {
            let xs = shape(g, node.inputs[0]).to_vec();
            let ist = strides(&xs);
            let mut at = 0i64;
            for (i, &v) in node.outputs.iter().enumerate() {
                let s = shape(g, v).to_vec();
                let base = at * ist[*axis];
                nest(out, 1, &s, &[strides(&s), ist.clone()], &|o| {
                    format!("y{i}[{}] = x0[{base} + {}];", o[0], o[1])
                });
                at += s[*axis] as i64;
            }
        }
        Op::ArgMax { axis, last, .. } | Op::ArgMin { axis, last, .. } => {
            let xs = shape(g, node.inputs[0]).to_vec();
            let len = xs[*axis];
            let inner: usize = xs[axis + 1..].iter().product();
            let outer: usize = xs[..*axis].iter().product();
            let better = match (matches!(node.op, Op::ArgMax { .. }), *last) {
                (true, false) => ">",
                (true, true) => ">=",
                (false, false) => "<",
                (false, true) => "<=",
            };
            let _ = writeln!(
                out,
                "    for (int32_t o = 0; o < {outer}; ++o)\n    for (int32_t i = 0; i < {inner}; ++i) {{\n        int32_t best = 0;\n        float bv = x0[o * {len} * {inner} + i];"
            );
            let _ = writeln!(
                out,
                "        for (int32_t k = 1; k < {len}; ++k) {{\n            float v = x0[(o * {len} + k) * {inner} + i];\n            if (v {better} bv || (v != v && bv == bv)) {{ bv = v; best = k; }}\n        }}\n        y0[o * {inner} + i] = best;\n    }}"
            );
        }
        Op::Binary(b) => {
            if *b == BinaryOp::Pow {
                let e = pow_exponent(g, n).expect("checked");
                let sa = bcast(shape(g, node.inputs[0]), &o0);
                let expr = match e {
                    2.0 => "v * v",
                    0.5 => "sqrtf(v)",
                    _ => "v",
                };
                nest(out, 1, &dims(&o0), &[strides(&o0), sa], &|o| {
                    format!("float v = x0[{}];\ny0[{}] = {expr};", o[1], o[0])
                });
            } else {
                let expr = match b {
                    BinaryOp::Add => "a + b",
                    BinaryOp::Sub => "a - b",
                    BinaryOp::Mul => "a * b",
                    BinaryOp::Div => "a / b",
                    BinaryOp::Max => "kiln_maxf(a, b)",
                    BinaryOp::PRelu => "(a < 0.0f ? a * b : a)",
                    _ => "kiln_minf(a, b)",
                };
                broadcast2(out, g, n, &|o| {
                    format!("float a = x0[{}], b = x1[{}];\ny0[{}] = {expr};", o[1], o[2], o[0])
                });
            }
        }
        Op::Conv(c) => conv::conv(out, g, n, c, host),
        Op::ConvTranspose(c) => conv::conv_transpose(out, g, n, c),
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
            fused,
        } => linalg::gemm(out, g, n, (*alpha, *beta), (*trans_a, *trans_b), *fused, host),
        Op::MatMul => linalg::matmul(out, g, n, host),
        Op::Pool(p) => pool(out, g, n, p),
        Op::GlobalPool(kind) => {
            let s = shape(g, node.inputs[0]);
            let planes = s[0] * s[1];
            let size: usize = s[2..].iter().product();
            let max = *kind == PoolKind::Max;
            let _ = writeln!(
                out,
                "    for (int32_t c = 0; c < {planes}; ++c) {{\n        float acc = {};",
                if max { "-1.0f / 0.0f" } else { "0.0f" }
            );
            let step = if max {
                "acc = (v > acc || v != v) ? v : acc;"
            } else {
                "acc = acc + v;"
            };
            let _ = writeln!(
                out,
                "        for (int32_t i = 0; i < {size}; ++i) {{ float v = x0[c * {size} + i]; {step} }}"
            );
            let _ = writeln!(
                out,
                "        y0[c] = {};\n    }}",
                if max {
                    "acc".to_string()
                } else {
                    format!("acc / {}", f32_lit(size as f32))
                }
            );
        }
        Op::Softmax { axis } | Op::LogSoftmax { axis } | Op::Hardmax { axis } => {
            let s = shape(g, node.inputs[0]);
            let (outer, len, inner) = (
                s[..*axis].iter().product::<usize>(),
                s[*axis],
                s[axis + 1..].iter().product::<usize>(),
            );
            let _ = writeln!(
                out,
                "    for (int32_t o = 0; o < {outer}; ++o)\n        for (int32_t i = 0; i < {inner}; ++i) {{"
            );
            let _ = writeln!(
                out,
                "            const float *x = x0 + o * {} + i;\n            float *y = y0 + o * {} + i;",
                len * inner,
                len * inner
            );
            let _ = writeln!(out, "            float mx = -1.0f / 0.0f, sum = 0.0f;");
            let _ = writeln!(
                out,
                "            for (int32_t j = 0; j < {len}; ++j) if (x[j * {inner}] > mx) mx = x[j * {inner}];"
            );
            match &node.op {
                Op::Softmax { .. } => {
                    let _ = writeln!(
                        out,
                        "            for (int32_t j = 0; j < {len}; ++j) {{ float e = kiln_expf(x[j * {inner}] - mx); y[j * {inner}] = e; sum = sum + e; }}"
                    );
                    let _ = writeln!(
                        out,
                        "            for (int32_t j = 0; j < {len}; ++j) y[j * {inner}] = y[j * {inner}] / sum;"
                    );
                }
                Op::LogSoftmax { .. } => {
                    let _ = writeln!(
                        out,
                        "            for (int32_t j = 0; j < {len}; ++j) sum = sum + kiln_expf(x[j * {inner}] - mx);"
                    );
                    let _ = writeln!(
                        out,
                        "            for (int32_t j = 0; j < {len}; ++j) y[j * {inner}] = (x[j * {inner}] - mx) - logf(sum);"
                    );
                }
                _ => {
                    // one-hot of the first maximum
                    let _ = writeln!(
                        out,
                        "            int32_t at = -1;\n            for (int32_t j = 0; j < {len}; ++j) {{ y[j * {inner}] = 0.0f; if (at < 0 && x[j * {inner}] == mx) at = j; }}\n            if (at >= 0) y[at * {inner}] = 1.0f;\n            (void)sum;"
                    );
                }
            }
            let _ = writeln!(out, "        }}");
        }
        Op::Reduce { kind, axes, .. } => {
            // f32 accumulation in index order (the evaluator sums in f64: within the stated bound).
            let s = shape(g, node.inputs[0]).to_vec();
            let st = strides(&s);
            let kept: Vec<usize> = (0..s.len()).filter(|d| !axes.contains(d)).collect();
            let kd: Vec<usize> = kept.iter().map(|&d| s[d]).collect();
            let rd: Vec<usize> = axes.iter().map(|&d| s[d]).collect();
            let count: usize = rd.iter().product();
            let init = match kind {
                ReduceKind::Max | ReduceKind::LogSumExp => "-1.0f / 0.0f",
                ReduceKind::Min => "1.0f / 0.0f",
                ReduceKind::Prod => "1.0f",
                _ => "0.0f",
            };
            let step = match kind {
                ReduceKind::Max | ReduceKind::LogSumExp => "acc = (v > acc || v != v) ? v : acc;",
                ReduceKind::Min => "acc = (v < acc || v != v) ? v : acc;",
                ReduceKind::Prod => "acc = acc * v;",
                ReduceKind::L1 => "acc = acc + kiln_absf(v);",
                ReduceKind::L2 | ReduceKind::SumSquare => "acc = acc + v * v;",
                _ => "acc = acc + v;",
            };
            let fin = match kind {
                ReduceKind::Mean => format!("acc / {}", f32_lit(count as f32)),
                ReduceKind::L2 => "sqrtf(acc)".into(),
                ReduceKind::LogSum => "logf(acc)".into(),
                // a second pass: log(sum(exp(v - max))) + max
                ReduceKind::LogSumExp => {
                    "(acc == acc && acc != 1.0f / 0.0f && acc != -1.0f / 0.0f) ? acc + logf(lse) : acc".into()
                }
                _ => "acc".into(),
            };
            let kst: Vec<i64> = kept.iter().map(|&d| st[d]).collect();
            let rst: Vec<i64> = axes.iter().map(|&d| st[d]).collect();
            let inner_loop = {
                let mut txt = String::new();
                let rd2 = rd.clone();
                nest(&mut txt, 0, &rd2, &[rst], &|o| {
                    format!("float v = x[{}];\n{step}", o[0])
                });
                // rename the inner loop variables so they do not clash with the outer ones
                txt.replace("i0", "r0")
                    .replace("i1", "r1")
                    .replace("i2", "r2")
                    .replace("i3", "r3")
            };
            let second = if *kind == ReduceKind::LogSumExp {
                let mut txt = String::new();
                nest(&mut txt, 0, &rd, &[axes.iter().map(|&d| st[d]).collect()], &|o| {
                    format!("lse = lse + kiln_expf(x[{}] - acc);", o[0])
                });
                format!(
                    "float lse = 0.0f;\n{}",
                    txt.replace("i0", "r0")
                        .replace("i1", "r1")
                        .replace("i2", "r2")
                        .replace("i3", "r3")
                )
            } else {
                String::new()
            };
            nest(out, 1, &kd, &[strides(&kd), kst], &|o| {
                format!(
                    "const float *x = x0 + {};\nfloat acc = {init};\n{inner_loop}{second}y0[{}] = {fin};",
                    o[1], o[0]
                )
            });
        }
        Op::LayerNorm { axis, epsilon } => {
            let x = shape(g, node.inputs[0]);
            let inner: usize = x[*axis..].iter().product();
            let rows = g.value(node.inputs[0]).ty.numel() / inner.max(1);
            let bias = if node.inputs.len() > 2 { " + x2[j]" } else { "" };
            let _ = writeln!(
                out,
                "    for (int32_t r = 0; r < {rows}; ++r) {{\n        const float *x = x0 + r * {inner};\n        float *y = y0 + r * {inner};\n        float mean = 0.0f, var = 0.0f, inv;"
            );
            let _ = writeln!(
                out,
                "        for (int32_t j = 0; j < {inner}; ++j) mean = mean + x[j];\n        mean = mean / {n};\n        for (int32_t j = 0; j < {inner}; ++j) var = var + (x[j] - mean) * (x[j] - mean);\n        var = var / {n};",
                n = f32_lit(inner as f32)
            );
            let _ = writeln!(
                out,
                "        inv = 1.0f / sqrtf(var + {});\n        for (int32_t j = 0; j < {inner}; ++j) y[j] = (x[j] - mean) * inv * x1[j]{bias};\n    }}",
                f32_lit(*epsilon)
            );
        }
        Op::BatchNorm { epsilon } => {
            let s = shape(g, node.inputs[0]);
            let (nb, c, inner) = (s[0], s[1], s[2..].iter().product::<usize>());
            let _ = writeln!(out, "    for (int32_t ch = 0; ch < {c}; ++ch) {{");
            let _ = writeln!(
                out,
                "        float k = x1[ch] / sqrtf(x4[ch] + {});\n        float s = x2[ch] - x3[ch] * k;",
                f32_lit(*epsilon)
            );
            let _ = writeln!(
                out,
                "        for (int32_t b = 0; b < {nb}; ++b)\n            for (int32_t i = 0; i < {inner}; ++i) y0[(b * {c} + ch) * {inner} + i] = x0[(b * {c} + ch) * {inner} + i] * k + s;\n    }}"
            );
        }
        Op::Rnn(r) => lstm(out, g, n, r),
        other => unreachable!("{} passed the support check", other.name()),
    }
    out.push_str("}\n");
}

fn pool(out: &mut String, g: &Graph, n: NodeId, p: &Pool) {
    let node = g.node(n);
    let xs = shape(g, node.inputs[0]);
    let os = shape(g, node.outputs[0]);
    let w = &p.window;
    let two = xs.len() == 4;
    let (h, wd, oh, ow) = if two {
        (xs[2], xs[3], os[2], os[3])
    } else {
        (1, xs[2], 1, os[2])
    };
    let (kh, kw) = if two {
        (w.kernel[0], w.kernel[1])
    } else {
        (1, w.kernel[0])
    };
    let (sh, sw) = if two {
        (w.strides[0], w.strides[1])
    } else {
        (1, w.strides[0])
    };
    let (dh, dw) = if two {
        (w.dilations[0], w.dilations[1])
    } else {
        (1, w.dilations[0])
    };
    let (ph, pw) = if two { (w.pads[0], w.pads[1]) } else { (0, w.pads[0]) };
    let (peh, pew) = if two { (w.pads[2], w.pads[3]) } else { (0, w.pads[1]) };
    let planes = xs[0] * xs[1];
    let max = p.kind == PoolKind::Max;
    let include_pad = matches!(
        p.kind,
        PoolKind::Avg {
            count_include_pad: true
        }
    );
    let _ = writeln!(
        out,
        "    for (int32_t c = 0; c < {planes}; ++c)\n    for (int32_t oy = 0; oy < {oh}; ++oy)\n    for (int32_t ox = 0; ox < {ow}; ++ox) {{"
    );
    let _ = writeln!(
        out,
        "        float acc = {};\n        int32_t cnt = 0, cnt_pad = 0;",
        if max { "-1.0f / 0.0f" } else { "0.0f" }
    );
    let _ = writeln!(
        out,
        "        for (int32_t ky = 0; ky < {kh}; ++ky)\n        for (int32_t kx = 0; kx < {kw}; ++kx) {{"
    );
    let _ = writeln!(
        out,
        "            int32_t iy = oy * {sh} + ky * {dh} - {ph}, ix = ox * {sw} + kx * {dw} - {pw};"
    );
    let _ = writeln!(
        out,
        "            if (iy >= -{ph} && iy < {} && ix >= -{pw} && ix < {}) ++cnt_pad;",
        h + peh,
        wd + pew
    );
    let _ = writeln!(
        out,
        "            if (iy < 0 || iy >= {h} || ix < 0 || ix >= {wd}) continue;"
    );
    let step = if max {
        "acc = (v > acc || v != v) ? v : acc;"
    } else {
        "acc = acc + v;"
    };
    let _ = writeln!(
        out,
        "            {{ float v = x0[(c * {h} + iy) * {wd} + ix]; {step} ++cnt; }}\n        }}"
    );
    let _ = writeln!(out, "        (void)cnt_pad;");
    let fin = if max {
        "acc".to_string()
    } else {
        format!(
            "acc / (float)({} > 0 ? {} : 1)",
            if include_pad { "cnt_pad" } else { "cnt" },
            if include_pad { "cnt_pad" } else { "cnt" }
        )
    };
    let _ = writeln!(out, "        y0[(c * {oh} + oy) * {ow} + ox] = {fin};\n    }}");
}

fn pad(out: &mut String, g: &Graph, n: NodeId, mode: kiln_ir::op::PadMode, pads: &[i64]) {
    use kiln_ir::op::PadMode;
    let node = g.node(n);
    let xs = shape(g, node.inputs[0]).to_vec();
    let os = shape(g, node.outputs[0]).to_vec();
    let r = xs.len();
    let ist = strides(&xs);
    let fill = if node.inputs.len() > 1 { "x1[0]" } else { "0.0f" };
    let mut body = String::from("int32_t inside = 1, off = 0, s;\n");
    for d in 0..r {
        let len = xs[d] as i64;
        let _ = writeln!(body, "s = i{d} - {};", pads[d]);
        match mode {
            PadMode::Constant => {
                let _ = writeln!(body, "if (s < 0 || s >= {len}) inside = 0;");
            }
            PadMode::Edge => {
                let _ = write!(body, "if (s < 0) s = 0;\nif (s >= {len}) s = {};\n", len - 1);
            }
            PadMode::Wrap => {
                let _ = writeln!(body, "s = ((s % {len}) + {len}) % {len};");
            }
            PadMode::Reflect => {
                let p = 2 * (len - 1).max(1);
                let _ = write!(body, "s = ((s % {p}) + {p}) % {p};\nif (s >= {len}) s = {p} - s;\n");
            }
        }
        let _ = writeln!(body, "off += (inside ? s : 0) * {};", ist[d]);
    }
    let _ = write!(body, "y0[{{O}}] = inside ? x0[off] : {fill};");
    nest(out, 1, &os, &[strides(&os)], &|o| body.replace("{O}", &o[0]));
}

/// LSTM (default activations), the evaluator's loop in C: per direction and batch row, the
/// gate vectors W·x and R·h, then the ONNX update with optional clipping.
fn lstm(out: &mut String, g: &Graph, n: NodeId, r: &kiln_ir::op::Rnn) {
    use kiln_ir::op::RnnDirection;
    let xs = shape(g, g.node(n).inputs[0]);
    let (seq, batch, isz) = if r.batch_major {
        (xs[1], xs[0], xs[2])
    } else {
        (xs[0], xs[1], xs[2])
    };
    let h = r.hidden;
    let dirs = r.direction.count();
    let clip = |e: &str| match r.clip {
        Some(c) => format!("kiln_minf(kiln_maxf({e}, {}), {})", f32_lit(-c), f32_lit(c)),
        None => e.to_string(),
    };
    let _ = writeln!(
        out,
        "    float *hs = s, *cs = s + {h}, *gx = s + {}, *gh = s + {};",
        2 * h,
        6 * h
    );
    for d in 0..dirs {
        let reverse = r.direction == RnnDirection::Reverse || (r.direction == RnnDirection::Bidirectional && d == 1);
        let st = if r.batch_major {
            format!("(b * {dirs} + {d}) * {h}")
        } else {
            format!("({d} * {batch} + b) * {h}")
        };
        let _ = writeln!(out, "    for (int32_t b = 0; b < {batch}; ++b) {{");
        let _ = writeln!(
            out,
            "        for (int32_t j = 0; j < {h}; ++j) {{ hs[j] = x4[{st} + j]; cs[j] = x5[{st} + j]; }}"
        );
        let _ = writeln!(out, "        for (int32_t step = 0; step < {seq}; ++step) {{");
        let _ = writeln!(
            out,
            "            int32_t t = {};",
            if reverse {
                format!("{} - step", seq - 1)
            } else {
                "step".into()
            }
        );
        let xo = if r.batch_major {
            format!("(b * {seq} + t) * {isz}")
        } else {
            format!("(t * {batch} + b) * {isz}")
        };
        let (w0, r0, b0) = (d * 4 * h * isz, d * 4 * h * h, d * 8 * h);
        let _ = writeln!(out, "            for (int32_t j = 0; j < {}; ++j) {{", 4 * h);
        let _ = writeln!(out, "                float a = 0.0f, c = 0.0f;");
        let _ = writeln!(
            out,
            "                for (int32_t k = 0; k < {isz}; ++k) a = a + x1[{w0} + j * {isz} + k] * x0[{xo} + k];"
        );
        let _ = writeln!(
            out,
            "                for (int32_t k = 0; k < {h}; ++k) c = c + x2[{r0} + j * {h} + k] * hs[k];"
        );
        let _ = writeln!(
            out,
            "                gx[j] = a;\n                gh[j] = c;\n            }}"
        );
        let pre = |gate: usize| {
            format!(
                "gx[{o} + j] + gh[{o} + j] + x3[{} + j] + x3[{} + j]",
                b0 + gate * h,
                b0 + 4 * h + gate * h,
                o = gate * h
            )
        };
        let _ = writeln!(out, "            for (int32_t j = 0; j < {h}; ++j) {{");
        let _ = writeln!(out, "                float c_old = cs[j];");
        let _ = writeln!(
            out,
            "                float ig = kiln_sigmoidf({});",
            clip(&format!("{} + 0.0f * c_old", pre(0)))
        );
        let _ = writeln!(
            out,
            "                float fg = kiln_sigmoidf({});",
            clip(&format!("{} + 0.0f * c_old", pre(2)))
        );
        let _ = writeln!(out, "                float cg = kiln_tanhf({});", clip(&pre(3)));
        let _ = writeln!(
            out,
            "                float c_new = fg * c_old + ig * cg;\n                cs[j] = c_new;"
        );
        let _ = writeln!(
            out,
            "                float og = kiln_sigmoidf({});",
            clip(&format!("{} + 0.0f * c_new", pre(1)))
        );
        let _ = writeln!(out, "                hs[j] = og * kiln_tanhf(c_new);\n            }}");
        let yo = if r.batch_major {
            format!("((b * {seq} + t) * {dirs} + {d}) * {h}")
        } else {
            format!("((t * {dirs} + {d}) * {batch} + b) * {h}")
        };
        let _ = writeln!(
            out,
            "            for (int32_t j = 0; j < {h}; ++j) y0[{yo} + j] = hs[j];\n        }}"
        );
        let _ = writeln!(
            out,
            "        for (int32_t j = 0; j < {h}; ++j) {{ y1[{st} + j] = hs[j]; y2[{st} + j] = cs[j]; }}\n    }}"
        );
    }
}

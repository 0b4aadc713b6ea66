//! Elementwise lowerings: unary maps, broadcast binary ops, comparisons, `Where` and
//! `Cast`, on every element type the evaluator computes. Integers compute as the
//! evaluator does, in 64 bits with two's-complement wrap, then truncate to the output
//! type (unsigned arithmetic in C, so no signed overflow); binary16 loads widen to `float`
//! and each result rounds once to half (`kiln_d2h`, the evaluator's `f16::from_f64`).

use super::writer::{f32_lit, nest};
use super::{half_weight, shape};
use crate::header;
use crate::shapes::{bcast, pow_exponent, strides};
use crate::{Lowering, need};
use kiln_ir::op::{BinaryOp, UnaryOp};
use kiln_ir::{Graph, NodeId, Scalar};
use std::fmt::Write;

fn scalar(g: &Graph, n: NodeId, input: usize) -> Scalar {
    g.value(g.node(n).inputs[input]).ty.dtype.scalar
}

fn out_scalar(g: &Graph, n: NodeId) -> Scalar {
    g.value(g.node(n).outputs[0]).ty.dtype.scalar
}

/// How a float type is read into and written from the compute type (`float` for f32 and
/// f16, `double` for f64).
struct FloatIo {
    ty: &'static str,
    load: fn(&str) -> String,
    store: fn(&str) -> String,
}

fn float_io(s: Scalar) -> Option<FloatIo> {
    match s {
        Scalar::F32 => Some(FloatIo {
            ty: "float",
            load: |x| x.to_string(),
            store: |x| x.to_string(),
        }),
        Scalar::F64 => Some(FloatIo {
            ty: "double",
            load: |x| x.to_string(),
            store: |x| x.to_string(),
        }),
        Scalar::F16 => Some(FloatIo {
            ty: "float",
            load: |x| format!("kiln_h2f({x})"),
            store: |x| format!("kiln_d2h((double)({x}))"),
        }),
        _ => None,
    }
}

/// The C expression for `u(x)` on `float` (x without side effects), if Kiln has one.
pub(super) fn unary_expr(u: UnaryOp, x: &str) -> Option<String> {
    let l = |v: f32| f32_lit(v);
    Some(match u {
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
        // not float maps: `unary` lowers them on their own types
        UnaryOp::Not | UnaryOp::IsNaN | UnaryOp::IsInf { .. } | UnaryOp::BitwiseNot => return None,
    })
}

/// Unary ops on `double v` that are one `<math.h>` call (or simpler), as the evaluator's
/// f64 forms (Rust's f64 methods, which call the same C library).
fn unary_f64(u: UnaryOp) -> Option<&'static str> {
    use UnaryOp::*;
    Some(match u {
        Relu => "(v < 0.0 ? 0.0 : v)",
        Neg => "(-v)",
        Abs => "fabs(v)",
        Reciprocal => "(1.0 / v)",
        Sqrt => "sqrt(v)",
        Exp => "exp(v)",
        Log => "log(v)",
        Floor => "floor(v)",
        Ceil => "ceil(v)",
        Round => "rint(v)",
        Sin => "sin(v)",
        Cos => "cos(v)",
        Tan => "tan(v)",
        Asin => "asin(v)",
        Acos => "acos(v)",
        Atan => "atan(v)",
        Sinh => "sinh(v)",
        Cosh => "cosh(v)",
        Tanh => "tanh(v)",
        Asinh => "asinh(v)",
        Acosh => "acosh(v)",
        Atanh => "atanh(v)",
        Erf => "erf(v)",
        _ => return None,
    })
}

/// The evaluator's integer unary ops on `int64_t a`.
fn unary_int(u: UnaryOp) -> Option<&'static str> {
    Some(match u {
        UnaryOp::Neg => "(int64_t)(0u - (uint64_t)a)",
        UnaryOp::Abs => "(a < 0 ? (int64_t)(0u - (uint64_t)a) : a)",
        UnaryOp::Sign => "(int64_t)((a > 0) - (a < 0))",
        UnaryOp::Relu => "(a > 0 ? a : 0)",
        UnaryOp::BitwiseNot => "(~a)",
        _ => return None,
    })
}

fn map(out: &mut String, g: &Graph, n: NodeId, body: &str) {
    let total = g.value(g.node(n).outputs[0]).ty.numel();
    let _ = writeln!(
        out,
        "    for (int32_t i = 0; i < {total}; ++i) {{\n        {body}\n    }}"
    );
}

pub(super) fn unary(out: &mut String, g: &Graph, n: NodeId, u: UnaryOp) -> Lowering {
    let (from, to) = (scalar(g, n, 0), out_scalar(g, n));
    need(!half_weight(g, n), "a binary16 constant operand")?;
    match u {
        UnaryOp::Not => {
            need(from == Scalar::Bool, "Not on a non-bool type")?;
            map(out, g, n, "y0[i] = (uint8_t)!x0[i];");
        }
        UnaryOp::IsNaN | UnaryOp::IsInf { .. } => {
            let io = float_io(from).ok_or(crate::Refusal("IsNaN/IsInf on an integer type"))?;
            let test = match u {
                UnaryOp::IsInf { positive, negative } => format!(
                    "({} || {})",
                    if positive { "v > 1.7976931348623157e308" } else { "0" },
                    if negative { "v < -1.7976931348623157e308" } else { "0" }
                ),
                _ => "v != v".to_string(),
            };
            let load = (io.load)("x0[i]");
            map(
                out,
                g,
                n,
                &format!("double v = (double){load};\n        y0[i] = (uint8_t)({test});"),
            );
        }
        _ if from.is_int() => {
            let e = unary_int(u).ok_or(crate::Refusal("no integer form of this unary op"))?;
            let t = header::c_type(to);
            map(
                out,
                g,
                n,
                &format!("int64_t a = (int64_t)x0[i];\n        y0[i] = ({t}){e};"),
            );
        }
        _ if from == Scalar::F64 => {
            need(to == Scalar::F64, "unary op changing type")?;
            let e = unary_f64(u).ok_or(crate::Refusal("no double form of this unary op"))?;
            map(out, g, n, &format!("double v = x0[i];\n        y0[i] = {e};"));
        }
        _ => {
            need(
                matches!(from, Scalar::F32 | Scalar::F16) && from == to,
                "unary op on this type",
            )?;
            let io = float_io(from).expect("float");
            let e = unary_expr(u, "v").ok_or(crate::Refusal("no float form of this unary op"))?;
            let load = (io.load)("x0[i]");
            let store = (io.store)(&e);
            map(out, g, n, &format!("float v = {load};\n        y0[i] = {store};"));
        }
    }
    Ok(())
}

/// Loops over a two-input node's output with both inputs broadcast to it; `body` gets the
/// output's and the two inputs' index expressions (in that order).
pub(super) fn broadcast2(out: &mut String, g: &Graph, n: NodeId, body: &dyn Fn(&[String]) -> String) {
    let node = g.node(n);
    let o0 = shape(g, node.outputs[0]);
    let (sa, sb) = (bcast(shape(g, node.inputs[0]), o0), bcast(shape(g, node.inputs[1]), o0));
    nest(out, 1, o0, &[strides(o0), sa, sb], body);
}

/// The evaluator's integer binary ops on `int64_t a, b` (`bits` wide, `signed`), as an
/// `int64_t` expression; division by zero gives 0 where the evaluator stops.
fn binary_int(b: BinaryOp, bits: usize, signed: bool) -> Option<String> {
    let wrap = |op: &str| format!("(int64_t)((uint64_t)a {op} (uint64_t)b)");
    let bad = "(b == 0 || (a == INT64_MIN && b == -1))";
    Some(match b {
        BinaryOp::Add => wrap("+"),
        BinaryOp::Sub => wrap("-"),
        BinaryOp::Mul => wrap("*"),
        BinaryOp::Div => format!("({bad} ? 0 : a / b)"),
        BinaryOp::Mod { fmod: true } => format!("({bad} ? 0 : a % b)"),
        BinaryOp::Mod { fmod: false } => format!("({bad} ? 0 : kiln_floor_mod(a % b, b))"),
        BinaryOp::Pow => "kiln_powi(a, b)".into(),
        BinaryOp::Max => "(a > b ? a : b)".into(),
        BinaryOp::Min => "(a < b ? a : b)".into(),
        BinaryOp::PRelu => format!("(a < 0 ? {} : a)", wrap("*")),
        BinaryOp::BitwiseAnd => "(a & b)".into(),
        BinaryOp::BitwiseOr => "(a | b)".into(),
        BinaryOp::BitwiseXor => "(a ^ b)".into(),
        BinaryOp::BitShiftLeft => format!("((b < 0 || b >= {bits}) ? 0 : (int64_t)((uint64_t)a << b))"),
        BinaryOp::BitShiftRight if signed => format!("((b < 0 || b >= {bits}) ? 0 : a >> b)"),
        BinaryOp::BitShiftRight => {
            let mask = if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 };
            format!("((b < 0 || b >= {bits}) ? 0 : (int64_t)(((uint64_t)a & {mask}u) >> b))")
        }
        _ => return None,
    })
}

/// Float binary ops on `a, b` of C type `ty` (`float` or `double`).
fn binary_float(b: BinaryOp, ty: &str) -> Option<String> {
    let f = if ty == "float" { "f" } else { "" };
    let zero = if ty == "float" { "0.0f" } else { "0.0" };
    Some(match b {
        BinaryOp::Add => "a + b".into(),
        BinaryOp::Sub => "a - b".into(),
        BinaryOp::Mul => "a * b".into(),
        BinaryOp::Div => "a / b".into(),
        BinaryOp::Max => "((a != a || b != b) ? a + b : (a > b ? a : b))".into(),
        BinaryOp::Min => "((a != a || b != b) ? a + b : (a < b ? a : b))".into(),
        BinaryOp::PRelu => format!("(a < {zero} ? a * b : a)"),
        BinaryOp::Mod { .. } => format!("fmod{f}(a, b)"),
        BinaryOp::Pow => format!("pow{f}(a, b)"),
        _ => return None,
    })
}

fn compare(out: &mut String, g: &Graph, n: NodeId, b: BinaryOp) -> Lowering {
    let (sa, sb) = (scalar(g, n, 0), scalar(g, n, 1));
    let logic = matches!(b, BinaryOp::And | BinaryOp::Or | BinaryOp::Xor);
    need(sa == sb && sa != Scalar::F16, "a comparison of mixed or binary16 types")?;
    need(!logic || sa == Scalar::Bool, "logic on a non-bool type")?;
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
    Ok(())
}

pub(super) fn binary(out: &mut String, g: &Graph, n: NodeId, b: BinaryOp) -> Lowering {
    if b.yields_bool() {
        return compare(out, g, n, b);
    }
    let (sa, sb, so) = (scalar(g, n, 0), scalar(g, n, 1), out_scalar(g, n));
    let konst = |i: usize| g.const_value(g.node(n).inputs[i]).is_some();
    // Pow's exponent may have its own type: the evaluator casts it to the base's.
    need(sa == so && (sa == sb || b == BinaryOp::Pow), "operands of mixed types")?;
    need(sa != Scalar::Bool && sb != Scalar::Bool, "arithmetic on bool")?;
    if sa.is_int() {
        let bits = 8 * sa.size();
        let signed = matches!(sa, Scalar::I8 | Scalar::I16 | Scalar::I32 | Scalar::I64);
        let e = binary_int(b, bits, signed).ok_or(crate::Refusal("no integer form of this op"))?;
        let load_b = if sb.is_float() {
            // the evaluator's cast: through f64, saturating, NaN to 0
            "kiln_f64_to_i64((double)x1[{B}])"
        } else {
            "(int64_t)x1[{B}]"
        };
        let t = header::c_type(so);
        broadcast2(out, g, n, &|o| {
            format!(
                "int64_t a = (int64_t)x0[{}], b = {};\ny0[{}] = ({t}){e};",
                o[1],
                load_b.replace("{B}", &o[2]),
                o[0]
            )
        });
        return Ok(());
    }
    let io = float_io(sa).ok_or(crate::Refusal("arithmetic on this type"))?;
    if b == BinaryOp::Pow
        && sa == Scalar::F32
        && let Some(e) = pow_exponent(g, n)
    {
        let o0 = shape(g, g.node(n).outputs[0]).to_vec();
        let xa = bcast(shape(g, g.node(n).inputs[0]), &o0);
        let expr = match e {
            2.0 => "v * v",
            0.5 => "sqrtf(v)",
            _ => "v",
        };
        nest(out, 1, &o0, &[strides(&o0), xa], &|o| {
            format!("float v = x0[{}];\ny0[{}] = {expr};", o[1], o[0])
        });
        return Ok(());
    }
    let e = binary_float(b, io.ty).ok_or(crate::Refusal("no float form of this op"))?;
    let ty = io.ty;
    // a binary16 constant is widened by `flash_reads` (`kiln_ld_half`), so read it as is
    let load = |i: usize, x: &str| {
        if sa == Scalar::F16 && konst(i) {
            x.to_string()
        } else {
            (io.load)(x)
        }
    };
    let load_b = match sb {
        s if s == sa => load(1, "x1[{B}]"),
        // an exponent of another type, through f64 as the evaluator's cast
        Scalar::F16 => return Err(crate::Refusal("a binary16 exponent")),
        _ => format!("({ty})(double)x1[{{B}}]"),
    };
    let (load_a, store) = (load(0, "x0[{A}]"), (io.store)(&e));
    broadcast2(out, g, n, &|o| {
        format!(
            "{ty} a = {}, b = {};\ny0[{}] = {};",
            load_a.replace("{A}", &o[1]),
            load_b.replace("{B}", &o[2]),
            o[0],
            store
        )
    });
    Ok(())
}

pub(super) fn where_(out: &mut String, g: &Graph, n: NodeId) -> Lowering {
    need(scalar(g, n, 0) == Scalar::Bool, "a non-bool condition")?;
    need(!half_weight(g, n), "a binary16 constant operand")?;
    let node = g.node(n);
    let o0 = shape(g, node.outputs[0]).to_vec();
    let (sc, sa, sb) = (
        bcast(shape(g, node.inputs[0]), &o0),
        bcast(shape(g, node.inputs[1]), &o0),
        bcast(shape(g, node.inputs[2]), &o0),
    );
    nest(out, 1, &o0, &[strides(&o0), sc, sa, sb], &|o| {
        format!("y0[{}] = x0[{}] ? x1[{}] : x2[{}];", o[0], o[1], o[2], o[3])
    });
    Ok(())
}

pub(super) fn cast(out: &mut String, g: &Graph, n: NodeId, to: Scalar) -> Lowering {
    need(!half_weight(g, n), "a binary16 constant operand")?;
    let from = scalar(g, n, 0);
    map(out, g, n, &cast_stmt(from, to));
    Ok(())
}

/// `y0[i] = x0[i]` converted as the evaluator converts: through f64 when either side is a
/// float, saturating (NaN to 0) into integers, `!= 0` into bool; integer to integer wraps.
fn cast_stmt(from: Scalar, to: Scalar) -> String {
    let x = if from == Scalar::F16 {
        "kiln_h2f(x0[i])"
    } else {
        "x0[i]"
    };
    if to == Scalar::Bool {
        return format!("y0[i] = (uint8_t)({x} != 0);");
    }
    if !from.is_float() && !to.is_float() {
        return format!("y0[i] = ({})x0[i];", header::c_type(to));
    }
    format!("double v = (double){x};\n        y0[i] = {};", from_f64(to, "v"))
}

/// The double expression `v` (free of side effects) as type `to`, as the evaluator's
/// `from_f64`: rounded to float types, saturating into integers with NaN to 0.
pub(super) fn from_f64(to: Scalar, v: &str) -> String {
    let t = header::c_type(to);
    let (lo, hi, min, max) = match to {
        Scalar::Bool => return format!("(uint8_t)(({v}) != 0.0)"),
        Scalar::F16 => return format!("kiln_d2h({v})"),
        Scalar::F32 | Scalar::F64 => return format!("({t})({v})"),
        Scalar::I8 => ("-128.0", "127.0", "INT8_MIN", "INT8_MAX"),
        Scalar::U8 => ("0.0", "255.0", "0", "UINT8_MAX"),
        Scalar::I16 => ("-32768.0", "32767.0", "INT16_MIN", "INT16_MAX"),
        Scalar::U16 => ("0.0", "65535.0", "0", "UINT16_MAX"),
        Scalar::I32 => ("-2147483648.0", "2147483647.0", "INT32_MIN", "INT32_MAX"),
        Scalar::U32 => ("0.0", "4294967295.0", "0", "UINT32_MAX"),
        Scalar::I64 => (
            "-9223372036854775808.0",
            "9223372036854775807.0",
            "INT64_MIN",
            "INT64_MAX",
        ),
        Scalar::U64 => ("0.0", "18446744073709551615.0", "0", "UINT64_MAX"),
    };
    format!("(({v}) != ({v}) ? ({t})0 : (({v}) <= {lo} ? ({t}){min} : (({v}) >= {hi} ? ({t}){max} : ({t})({v}))))")
}

/// The names `PRELUDE` defines (it is emitted only when a kernel calls one).
pub(super) const HELPERS: [&str; 4] = ["kiln_floor_mod(", "kiln_powi(", "kiln_powif(", "kiln_f64_to_i64("];

/// Helpers for the typed paths above and the Lp pools.
pub(super) const PRELUDE: &str = r#"
static inline int64_t kiln_floor_mod(int64_t r, int64_t b) {
    return (r != 0 && ((r < 0) != (b < 0))) ? (int64_t)((uint64_t)r + (uint64_t)b) : r;
}
static inline int64_t kiln_powi(int64_t a, int64_t b) {
    uint64_t r = 1u, x = (uint64_t)a;
    if (b < 0) return 0;
    while (b > 0) { if (b & 1) r *= x; x *= x; b >>= 1; }
    return (int64_t)r;
}
static inline float kiln_powif(float a, int32_t b) {
    float r = 1.0f;
    for (;;) { if (b & 1) r *= a; b /= 2; if (b == 0) break; a *= a; }
    return r;
}
static inline int64_t kiln_f64_to_i64(double v) {
    return v != v ? 0 : (v <= -9223372036854775808.0 ? INT64_MIN : (v >= 9223372036854775807.0 ? INT64_MAX : (int64_t)v));
}
"#;

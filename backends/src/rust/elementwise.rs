//! Elementwise lowerings: unary maps, broadcast binary ops, comparisons, `Where` and
//! `Cast`, as closures over `k::map` / `k::zip_nd`. Integers compute as the evaluator
//! does, in i64 with two's-complement wrap, then truncate to the output type.

use super::f32_lit;
use super::kernel::{At, Lowered, list, scalar};
use crate::Refusal;
use crate::header::rust_type;
use crate::shapes::{bcast, f32_half_weight, pow_exponent};
use kiln_ir::Scalar;
use kiln_ir::op::{BinaryOp, UnaryOp};

/// A literal for use as an operand (negative values parenthesised).
fn lp(x: f32) -> String {
    let s = f32_lit(x);
    if s.starts_with('-') { format!("({s})") } else { s }
}

/// The closure body computing `u(v)` for a float `v`, if Kiln has one.
pub(super) fn unary(u: UnaryOp) -> Option<String> {
    use UnaryOp::*;
    let softplus = "if v > 0.0 { v + k::libm::log1pf(k::math::exp(-v)) } else { k::libm::log1pf(k::math::exp(v)) }";
    let libm = |f: &str| Some(format!("k::libm::{f}(v)"));
    match u {
        Relu => Some("if v < 0.0 { 0.0 } else { v }".into()),
        LeakyRelu { alpha } => Some(format!("if v < 0.0 {{ {} * v }} else {{ v }}", lp(alpha))),
        Clip { min, max } => {
            let mut e = "v".to_string();
            if min > f32::NEG_INFINITY {
                e = format!("k::math::max({e}, {})", f32_lit(min));
            }
            if max < f32::INFINITY {
                e = format!("k::math::min({e}, {})", f32_lit(max));
            }
            Some(e)
        }
        HardSigmoid { alpha, beta } => Some(format!(
            "k::math::max(k::math::min({} * v + {}, 1.0), 0.0)",
            lp(alpha),
            lp(beta)
        )),
        HardSwish => Some("v * k::math::max(k::math::min(v / 6.0 + 0.5, 1.0), 0.0)".into()),
        Sigmoid => Some("k::math::sigmoid(v)".into()),
        Tanh => Some("k::math::tanh(v)".into()),
        Exp => Some("k::math::exp(v)".into()),
        Neg => Some("-v".into()),
        Abs => Some("v.abs()".into()),
        Reciprocal => Some("1.0 / v".into()),
        Elu { alpha } => Some(format!(
            "if v < 0.0 {{ {} * (k::math::exp(v) - 1.0) }} else {{ v }}",
            lp(alpha)
        )),
        Celu { alpha } => Some(format!(
            "k::math::max(v, 0.0) + k::math::min(0.0, {a} * (k::math::exp(v / {a}) - 1.0))",
            a = lp(alpha)
        )),
        Selu { alpha, gamma } => Some(format!(
            "{g} * (if v > 0.0 {{ v }} else {{ {a} * k::math::exp(v) - {a} }})",
            a = lp(alpha),
            g = lp(gamma)
        )),
        ThresholdedRelu { alpha } => Some(format!("if v > {} {{ v }} else {{ 0.0 }}", lp(alpha))),
        Softplus => Some(softplus.to_string()),
        Softsign => Some("v / (1.0 + v.abs())".into()),
        Mish => Some(format!("v * k::math::tanh({softplus})")),
        Gelu { tanh_approx: false } => Some("0.5 * v * (1.0 + k::libm::erff(v / 1.41421356))".into()),
        Gelu { tanh_approx: true } => {
            Some("0.5 * v * (1.0 + k::math::tanh(0.797884561 * (v + 0.044715 * v * v * v)))".into())
        }
        Sign => Some("if v > 0.0 { 1.0 } else if v < 0.0 { -1.0 } else { v }".into()),
        Sqrt => libm("sqrtf"),
        Log => libm("logf"),
        Floor => libm("floorf"),
        Ceil => libm("ceilf"),
        Round => libm("rintf"),
        Erf => libm("erff"),
        Sin => libm("sinf"),
        Cos => libm("cosf"),
        Tan => libm("tanf"),
        Asin => libm("asinf"),
        Acos => libm("acosf"),
        Atan => libm("atanf"),
        Sinh => libm("sinhf"),
        Cosh => libm("coshf"),
        Asinh => libm("asinhf"),
        Acosh => libm("acoshf"),
        Atanh => libm("atanhf"),
        Not | IsNaN | IsInf { .. } | BitwiseNot => None,
    }
}

/// A fused activation as a closure (`|v| v` without one).
pub(super) fn act(fused: Option<UnaryOp>) -> Result<String, Refusal> {
    match fused {
        None => Ok("|v| v".into()),
        Some(u) => unary(u)
            .map(|e| format!("|v| {e}"))
            .ok_or(Refusal("a fused activation without a Rust form")),
    }
}

/// Unary ops on `f64 v` that are one libm call (or simpler), as the evaluator's f64 forms.
fn unary_f64(u: UnaryOp) -> Option<&'static str> {
    use UnaryOp::*;
    Some(match u {
        Relu => "if v < 0.0 { 0.0 } else { v }",
        Neg => "-v",
        Abs => "v.abs()",
        Reciprocal => "1.0 / v",
        Sqrt => "k::libm::sqrt(v)",
        Exp => "k::libm::exp(v)",
        Log => "k::libm::log(v)",
        Floor => "k::libm::floor(v)",
        Ceil => "k::libm::ceil(v)",
        Round => "k::libm::rint(v)",
        Sin => "k::libm::sin(v)",
        Cos => "k::libm::cos(v)",
        Tan => "k::libm::tan(v)",
        Asin => "k::libm::asin(v)",
        Acos => "k::libm::acos(v)",
        Atan => "k::libm::atan(v)",
        Sinh => "k::libm::sinh(v)",
        Cosh => "k::libm::cosh(v)",
        Tanh => "k::libm::tanh(v)",
        Asinh => "k::libm::asinh(v)",
        Acosh => "k::libm::acosh(v)",
        Atanh => "k::libm::atanh(v)",
        Erf => "k::libm::erf(v)",
        _ => return None,
    })
}

/// The evaluator's integer unary ops on `ia: i64`.
fn unary_int(u: UnaryOp) -> Option<&'static str> {
    Some(match u {
        UnaryOp::Neg => "ia.wrapping_neg()",
        UnaryOp::Abs => "ia.wrapping_abs()",
        UnaryOp::Sign => "ia.signum()",
        UnaryOp::Relu => "ia.max(0)",
        UnaryOp::BitwiseNot => "!ia",
        _ => return None,
    })
}

/// `v` as a float: binary16 bit patterns widened, other floats as they are.
fn widen(s: Scalar) -> &'static str {
    if s == Scalar::F16 { "k::h2f(v)" } else { "v" }
}

pub(super) fn unary_node(at: &At, u: UnaryOp) -> Lowered {
    let (from, to) = (scalar(at.g, at.ins[0]), scalar(at.g, at.g.node(at.n).outputs[0]));
    let body = match u {
        UnaryOp::Not if from == Scalar::Bool => "(v == 0) as u8".to_string(),
        UnaryOp::IsNaN if from.is_float() => format!("{}.is_nan() as u8", widen(from)),
        UnaryOp::IsInf { positive, negative } if from.is_float() => format!(
            "{{ let w = {} as f64; (({positive} && w == f64::INFINITY) || ({negative} && w == f64::NEG_INFINITY)) as u8 }}",
            widen(from)
        ),
        _ if from.is_int() && from == to => {
            let e = unary_int(u).ok_or(Refusal("no integer form of this unary op"))?;
            format!("{{ let ia = v as i64; ({e}) as {} }}", rust_type(to))
        }
        _ if from == Scalar::F64 && to == Scalar::F64 => unary_f64(u)
            .ok_or(Refusal("no double form of this unary op"))?
            .to_string(),
        _ if f32_half_weight(at.g, at.n) => unary(u).ok_or(Refusal("no float form of this unary op"))?,
        _ if from == Scalar::F16 && to == Scalar::F16 => {
            let e = unary(u).ok_or(Refusal("no float form of this unary op"))?;
            format!("{{ let v = k::h2f(v); k::d2h(({e}) as f64) }}")
        }
        _ => return Err(Refusal("a unary op on this type")),
    };
    Ok(format!("k::map(x0, y0, |v| {body});"))
}

/// The evaluator's integer binary ops on `ia, ib: i64` (`bits` wide, `signed`); division by
/// zero gives 0 where the evaluator stops.
fn binary_int(b: BinaryOp, bits: usize, signed: bool) -> Option<String> {
    let bad = "ib == 0 || (ia == i64::MIN && ib == -1)";
    Some(match b {
        BinaryOp::Add => "ia.wrapping_add(ib)".into(),
        BinaryOp::Sub => "ia.wrapping_sub(ib)".into(),
        BinaryOp::Mul => "ia.wrapping_mul(ib)".into(),
        BinaryOp::Div => format!("if {bad} {{ 0 }} else {{ ia / ib }}"),
        BinaryOp::Mod { fmod: true } => format!("if {bad} {{ 0 }} else {{ ia % ib }}"),
        BinaryOp::Mod { fmod: false } => format!(
            "if {bad} {{ 0 }} else {{ let r = ia % ib; if r != 0 && ((r < 0) != (ib < 0)) {{ r.wrapping_add(ib) }} else {{ r }} }}"
        ),
        BinaryOp::Pow => "if ib < 0 { 0 } else { ia.wrapping_pow(ib.min(u32::MAX as i64) as u32) }".into(),
        BinaryOp::Max => "ia.max(ib)".into(),
        BinaryOp::Min => "ia.min(ib)".into(),
        BinaryOp::PRelu => "if ia < 0 { ia.wrapping_mul(ib) } else { ia }".into(),
        BinaryOp::BitwiseAnd => "ia & ib".into(),
        BinaryOp::BitwiseOr => "ia | ib".into(),
        BinaryOp::BitwiseXor => "ia ^ ib".into(),
        BinaryOp::BitShiftLeft => format!("if ib < 0 || ib >= {bits} {{ 0 }} else {{ ia << ib }}"),
        BinaryOp::BitShiftRight if signed => format!("if ib < 0 || ib >= {bits} {{ 0 }} else {{ ia >> ib }}"),
        BinaryOp::BitShiftRight => {
            let mask = if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 };
            format!("if ib < 0 || ib >= {bits} {{ 0 }} else {{ ((ia as u64 & {mask}) >> ib) as i64 }}")
        }
        _ => return None,
    })
}

/// Float binary ops on `p, q` of type `f32` or `f64`.
fn binary_float(b: BinaryOp, s: Scalar) -> Option<String> {
    let f32 = s == Scalar::F32;
    Some(match b {
        BinaryOp::Add => "p + q".into(),
        BinaryOp::Sub => "p - q".into(),
        BinaryOp::Mul => "p * q".into(),
        BinaryOp::Div => "p / q".into(),
        BinaryOp::Max if f32 => "k::math::max(p, q)".into(),
        BinaryOp::Min if f32 => "k::math::min(p, q)".into(),
        BinaryOp::Max => "if p.is_nan() || q.is_nan() { p + q } else if p > q { p } else { q }".into(),
        BinaryOp::Min => "if p.is_nan() || q.is_nan() { p + q } else if p < q { p } else { q }".into(),
        BinaryOp::Pow if f32 => "k::libm::powf(p, q)".into(),
        BinaryOp::Pow => "k::libm::pow(p, q)".into(),
        BinaryOp::Mod { .. } => "p % q".into(),
        BinaryOp::PRelu => "if p < 0.0 { q * p } else { p }".into(),
        _ => return None,
    })
}

fn zip(at: &At, body: &str) -> String {
    format!(
        "k::zip_nd(x0, &{}, x1, &{}, &{}, y0, |p, q| {body});",
        list(&bcast(&at.x0s, &at.o0)),
        list(&bcast(&at.g.value(at.ins[1]).ty.shape, &at.o0)),
        list(&at.o0)
    )
}

pub(super) fn binary_node(at: &At, b: BinaryOp) -> Lowered {
    let g = at.g;
    let (sa, sb, so) = (
        scalar(g, at.ins[0]),
        scalar(g, at.ins[1]),
        scalar(g, g.node(at.n).outputs[0]),
    );
    if b.yields_bool() {
        let logic = matches!(b, BinaryOp::And | BinaryOp::Or | BinaryOp::Xor);
        if sb != sa || logic != (sa == Scalar::Bool) || sa == Scalar::F16 {
            return Err(Refusal("a comparison of mixed or binary16 types, or logic on non-bool"));
        }
        let e = match b {
            BinaryOp::Equal => "(p == q) as u8",
            BinaryOp::Less => "(p < q) as u8",
            BinaryOp::LessOrEqual => "(p <= q) as u8",
            BinaryOp::Greater => "(p > q) as u8",
            BinaryOp::GreaterOrEqual => "(p >= q) as u8",
            BinaryOp::And => "p & q",
            BinaryOp::Or => "p | q",
            _ => "p ^ q",
        };
        return Ok(zip(at, e));
    }
    if b == BinaryOp::Pow
        && f32_half_weight(g, at.n)
        && let Some(e) = pow_exponent(g, at.n)
    {
        // a constant exponent of 2, 0.5 or 1 needs no powf (slow on small cores)
        let e = match e {
            2.0 => "p * p",
            0.5 => "k::libm::sqrtf(p)",
            _ => "p",
        };
        return Ok(zip(at, e).replace("|p, q|", "|p, _|"));
    }
    if sa == Scalar::F16 && sb == sa && so == sa {
        let e = binary_float(b, Scalar::F32).ok_or(Refusal("no float form of this op"))?;
        return Ok(zip(
            at,
            &format!("{{ let (p, q) = (k::Weight::f32(p), k::Weight::f32(q)); k::d2h(({e}) as f64) }}"),
        ));
    }
    // Pow's exponent may have its own type: the evaluator casts it to the base's.
    if sa != so || (sb != sa && b != BinaryOp::Pow) || [sa, sb].iter().any(|s| matches!(s, Scalar::Bool | Scalar::F16))
    {
        return Err(Refusal("operands of mixed, bool or binary16 types"));
    }
    let t = rust_type(sa);
    let q = if sb == sa {
        "q".to_string()
    } else if sa.is_float() {
        format!("q as f64 as {t}")
    } else {
        format!("q as {t}")
    };
    if sa.is_int() {
        let bits = 8 * sa.size();
        let signed = matches!(sa, Scalar::I8 | Scalar::I16 | Scalar::I32 | Scalar::I64);
        let e = binary_int(b, bits, signed).ok_or(Refusal("no integer form of this op"))?;
        return Ok(zip(
            at,
            &format!("{{ let (ia, ib) = (p as i64, {q} as i64); ({e}) as {t} }}"),
        ));
    }
    let e = binary_float(b, sa).ok_or(Refusal("no float form of this op"))?;
    Ok(zip(at, &if sb == sa { e } else { format!("{{ let q = {q}; {e} }}") }))
}

pub(super) fn where_node(at: &At) -> Lowered {
    let g = at.g;
    if scalar(g, at.ins[0]) != Scalar::Bool {
        return Err(Refusal("a non-bool condition"));
    }
    Ok(format!(
        "k::zip3_nd((x0, &{}), (x1, &{}), (x2, &{}), &{}, y0, |c, p, q| if c != 0 {{ p }} else {{ q }});",
        list(&bcast(&at.x0s, &at.o0)),
        list(&bcast(&g.value(at.ins[1]).ty.shape, &at.o0)),
        list(&bcast(&g.value(at.ins[2]).ty.shape, &at.o0)),
        list(&at.o0)
    ))
}

pub(super) fn cast_node(at: &At, to: Scalar) -> Lowered {
    let from = scalar(at.g, at.ins[0]);
    let t = rust_type(to);
    let v = widen(from);
    let e = if to == Scalar::F16 {
        // rounded once from f64, as the evaluator's cast
        format!("k::d2h({v} as f64)")
    } else if from == Scalar::F16 {
        if to == Scalar::Bool {
            format!("({v} != 0.0) as u8")
        } else {
            format!("{v} as f64 as {t}")
        }
    } else if to == Scalar::Bool {
        if from.is_float() {
            "(v != 0.0) as u8".to_string()
        } else {
            "(v != 0) as u8".to_string()
        }
    } else if from.is_float() || to.is_float() {
        // through f64 as the evaluator converts; float to int saturates, NaN to 0
        format!("v as f64 as {t}")
    } else {
        format!("v as {t}")
    };
    Ok(format!("k::map(x0, y0, |v| {e});"))
}

//! Elementwise ops on every element type other than the f32 fast path: integers (wrapping,
//! as the evaluator), bool (one byte, 0 or 1), f64; plus Cast, comparisons and Where.
//! Scalar loops over the same affine nests; each value is loaded, widened to a working
//! type, computed, and narrowed on store exactly as the evaluator's `as` casts do.

use super::super::fx::Fx;
use super::nest::{Opnd, nest};
use super::{Args, bcast_strides, strides};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32, F64, I8, I16, I32, I64};
use cranelift_codegen::ir::{InstBuilder, Type, Value};
use kiln_ir::op::{BinaryOp, UnaryOp};
use kiln_ir::{Graph, NodeId, Scalar};

/// Memory type of a scalar, and whether integers are signed.
pub(crate) fn mem(s: Scalar) -> (Type, bool) {
    match s {
        Scalar::F32 => (F32, true),
        Scalar::F64 => (F64, true),
        Scalar::I8 => (I8, true),
        Scalar::U8 | Scalar::Bool => (I8, false),
        Scalar::I16 => (I16, true),
        Scalar::U16 => (I16, false),
        Scalar::I32 => (I32, true),
        Scalar::U32 => (I32, false),
        Scalar::I64 => (I64, true),
        Scalar::U64 => (I64, false),
        Scalar::F16 => (I16, false),
    }
}

/// Loads an element as a working value: floats as themselves, integers widened to i64.
pub(crate) fn load(fx: &mut Fx, s: Scalar, addr: Value) -> Value {
    let (ty, signed) = mem(s);
    let v = fx.load(ty, addr);
    if s == Scalar::F16 {
        // Half values work as f32 (the evaluator computes f16 ops in f32 and rounds once).
        let w = fx.b.ins().uextend(I64, v);
        fx.f16_to_f32(w)
    } else if s.is_float() || ty == I64 {
        v
    } else if signed {
        fx.b.ins().sextend(I64, v)
    } else {
        fx.b.ins().uextend(I64, v)
    }
}

/// Stores a working value (i64 for integers, the float itself) into an element of `s`.
pub(crate) fn store(fx: &mut Fx, s: Scalar, v: Value, addr: Value) {
    let (ty, _) = mem(s);
    let v = if s == Scalar::F16 {
        let h = fx.f32_to_f16(v);
        fx.b.ins().ireduce(I16, h)
    } else if !s.is_float() && ty != I64 {
        fx.b.ins().ireduce(ty, v)
    } else {
        v
    };
    fx.store(v, addr);
}

/// Bytes of one element.
fn bytes(s: Scalar) -> i64 {
    s.size() as i64
}

pub(crate) fn supported_scalar(_: Scalar) -> bool {
    true
}

pub(crate) fn unary_supported(u: UnaryOp, s: Scalar) -> bool {
    use UnaryOp::*;
    match s {
        Scalar::Bool => u == Not,
        Scalar::F64 => matches!(
            u,
            Neg | Abs | Sqrt | Floor | Ceil | Round | Relu | Reciprocal | Sign | IsNaN | IsInf { .. } | Exp | Log
        ),
        Scalar::F16 => matches!(
            u,
            Neg | Abs | Sqrt | Floor | Ceil | Round | Relu | Reciprocal | Sign | IsNaN | IsInf { .. }
        ),
        Scalar::F32 => matches!(u, IsNaN | IsInf { .. }),
        _ => matches!(u, Neg | Abs | Sign | Relu | BitwiseNot),
    }
}

pub(crate) fn binary_supported(b: BinaryOp, s: Scalar) -> bool {
    use BinaryOp::*;
    match s {
        Scalar::Bool => matches!(b, And | Or | Xor | Equal),
        Scalar::F64 | Scalar::F32 | Scalar::F16 => matches!(
            b,
            Add | Sub
                | Mul
                | Div
                | Max
                | Min
                | Equal
                | Less
                | LessOrEqual
                | Greater
                | GreaterOrEqual
                | PRelu
                | Mod { fmod: true }
        ),
        _ => !matches!(b, Pow | And | Or | Xor),
    }
}

fn signed(s: Scalar) -> bool {
    matches!(s, Scalar::I8 | Scalar::I16 | Scalar::I32 | Scalar::I64)
}

pub(crate) fn unary(fx: &mut Fx, g: &Graph, n: NodeId, u: UnaryOp, a: &Args) {
    let node = g.node(n);
    let (si, so) = (
        g.value(node.inputs[0]).ty.dtype.scalar,
        g.value(node.outputs[0]).ty.dtype.scalar,
    );
    let shape = &g.value(node.outputs[0]).ty.shape;
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let ops = [
        Opnd::new(a.outs[0], strides(shape), bytes(so)),
        Opnd::new(a.ins[0], strides(shape), bytes(si)),
    ];
    nest(fx, &dims, &ops, I64, None, &mut |fx, _, p, _| {
        let x = load(fx, si, p[1]);
        let y = if si.is_float() {
            let zero = if si == Scalar::F64 {
                fx.b.ins().f64const(0.0)
            } else {
                fx.b.ins().f32const(0.0)
            };
            let one = if si == Scalar::F64 {
                fx.b.ins().f64const(1.0)
            } else {
                fx.b.ins().f32const(1.0)
            };
            match u {
                UnaryOp::Neg => fx.b.ins().fneg(x),
                UnaryOp::Abs => fx.b.ins().fabs(x),
                UnaryOp::Sqrt => fx.b.ins().sqrt(x),
                UnaryOp::Floor => fx.b.ins().floor(x),
                UnaryOp::Ceil => fx.b.ins().ceil(x),
                UnaryOp::Round => fx.b.ins().nearest(x),
                UnaryOp::Relu => fx.b.ins().fmax(x, zero),
                UnaryOp::Reciprocal => fx.b.ins().fdiv(one, x),
                UnaryOp::Exp => fx.exp64(x),
                UnaryOp::Log => fx.log64(x),
                UnaryOp::Sign => {
                    let m1 = fx.b.ins().fneg(one);
                    let p = fx.b.ins().fcmp(FloatCC::GreaterThan, x, zero);
                    let ng = fx.b.ins().fcmp(FloatCC::LessThan, x, zero);
                    let v = fx.b.ins().select(ng, m1, x);
                    fx.b.ins().select(p, one, v)
                }
                UnaryOp::IsNaN => {
                    let c = fx.b.ins().fcmp(FloatCC::Unordered, x, x);
                    fx.b.ins().uextend(I64, c)
                }
                UnaryOp::IsInf { positive, negative } => {
                    let inf = if si == Scalar::F64 {
                        fx.b.ins().f64const(f64::INFINITY)
                    } else {
                        fx.b.ins().f32const(f32::INFINITY)
                    };
                    let ninf = fx.b.ins().fneg(inf);
                    let p = fx.b.ins().fcmp(FloatCC::Equal, x, inf);
                    let q = fx.b.ins().fcmp(FloatCC::Equal, x, ninf);
                    let z8 = fx.b.ins().iconst(I8, 0);
                    let p = if positive { p } else { z8 };
                    let q = if negative { q } else { z8 };
                    let c = fx.b.ins().bor(p, q);
                    fx.b.ins().uextend(I64, c)
                }
                other => unreachable!("{} on {si}", other.name()),
            }
        } else {
            match u {
                UnaryOp::Not => fx.b.ins().bxor_imm_s(x, 1),
                UnaryOp::BitwiseNot => fx.b.ins().bnot(x),
                UnaryOp::Neg => fx.b.ins().ineg(x),
                UnaryOp::Abs => fx.b.ins().iabs(x),
                UnaryOp::Relu => {
                    let z = fx.i(0);
                    fx.b.ins().smax(x, z)
                }
                UnaryOp::Sign => {
                    let z = fx.i(0);
                    let p = fx.b.ins().icmp(IntCC::SignedGreaterThan, x, z);
                    let ng = fx.b.ins().icmp(IntCC::SignedLessThan, x, z);
                    let p = fx.b.ins().uextend(I64, p);
                    let ng = fx.b.ins().uextend(I64, ng);
                    fx.b.ins().isub(p, ng)
                }
                other => unreachable!("{} on {si}", other.name()),
            }
        };
        store(fx, so, y, p[0]);
    });
}

pub(crate) fn binary(fx: &mut Fx, g: &Graph, n: NodeId, b: BinaryOp, a: &Args) {
    use BinaryOp::*;
    let node = g.node(n);
    let s = g.value(node.inputs[0]).ty.dtype.scalar;
    let so = g.value(node.outputs[0]).ty.dtype.scalar;
    let out = &g.value(node.outputs[0]).ty.shape;
    let dims: Vec<i64> = out.iter().map(|&d| d as i64).collect();
    let ops = [
        Opnd::new(a.outs[0], strides(out), bytes(so)),
        Opnd::new(
            a.ins[0],
            bcast_strides(&g.value(node.inputs[0]).ty.shape, out),
            bytes(s),
        ),
        Opnd::new(
            a.ins[1],
            bcast_strides(&g.value(node.inputs[1]).ty.shape, out),
            bytes(s),
        ),
    ];
    let bits = 8 * s.size() as i64;
    nest(fx, &dims, &ops, I64, None, &mut |fx, _, p, _| {
        let x = load(fx, s, p[1]);
        let y = load(fx, s, p[2]);
        let flag = |fx: &mut Fx, c: Value| fx.b.ins().uextend(I64, c);
        let r = if s.is_float() {
            let fcc = |b: BinaryOp| match b {
                Equal => FloatCC::Equal,
                Less => FloatCC::LessThan,
                LessOrEqual => FloatCC::LessThanOrEqual,
                Greater => FloatCC::GreaterThan,
                _ => FloatCC::GreaterThanOrEqual,
            };
            match b {
                Add => fx.b.ins().fadd(x, y),
                Sub => fx.b.ins().fsub(x, y),
                Mul => fx.b.ins().fmul(x, y),
                Div => fx.b.ins().fdiv(x, y),
                Max => fx.b.ins().fmax(x, y),
                Min => fx.b.ins().fmin(x, y),
                Mod { .. } => fmod(fx, s, x, y),
                PRelu => {
                    let zero = if s == Scalar::F64 {
                        fx.b.ins().f64const(0.0)
                    } else {
                        fx.b.ins().f32const(0.0)
                    };
                    let xy = fx.b.ins().fmul(x, y);
                    let c = fx.b.ins().fcmp(FloatCC::LessThan, x, zero);
                    fx.b.ins().select(c, xy, x)
                }
                cmp => {
                    let c = fx.b.ins().fcmp(fcc(cmp), x, y);
                    flag(fx, c)
                }
            }
        } else {
            let sg = signed(s);
            let icc = |b: BinaryOp| match (b, sg) {
                (Equal, _) => IntCC::Equal,
                (Less, true) => IntCC::SignedLessThan,
                (Less, false) => IntCC::UnsignedLessThan,
                (LessOrEqual, true) => IntCC::SignedLessThanOrEqual,
                (LessOrEqual, false) => IntCC::UnsignedLessThanOrEqual,
                (Greater, true) => IntCC::SignedGreaterThan,
                (Greater, false) => IntCC::UnsignedGreaterThan,
                (_, true) => IntCC::SignedGreaterThanOrEqual,
                (_, false) => IntCC::UnsignedGreaterThanOrEqual,
            };
            // Division guards: a zero divisor (an error in the evaluator) or MIN / -1 must
            // not trap in generated code.
            let safe_div = |fx: &mut Fx, y: Value| {
                let z = fx.i(0);
                let one = fx.i(1);
                let is0 = fx.b.ins().icmp(IntCC::Equal, y, z);
                fx.b.ins().select(is0, one, y)
            };
            match b {
                Add => fx.b.ins().iadd(x, y),
                Sub => fx.b.ins().isub(x, y),
                Mul => fx.b.ins().imul(x, y),
                Div | Mod { .. } => {
                    let d = safe_div(fx, y);
                    // Inputs were widened to i64, so an i64 divide gives the narrow type's
                    // result; only i64 MIN / -1 would trap, so -1 is done by negation.
                    let m1 = fx.i(-1);
                    let is_m1 = fx.b.ins().icmp(IntCC::Equal, d, m1);
                    let one = fx.i(1);
                    let d = if sg { fx.b.ins().select(is_m1, one, d) } else { d };
                    if b == Div {
                        let q = if sg {
                            fx.b.ins().sdiv(x, d)
                        } else {
                            fx.b.ins().udiv(x, d)
                        };
                        if sg {
                            let neg = fx.b.ins().ineg(x);
                            fx.b.ins().select(is_m1, neg, q)
                        } else {
                            q
                        }
                    } else {
                        let Mod { fmod } = b else { unreachable!() };
                        let r = if sg {
                            fx.b.ins().srem(x, d)
                        } else {
                            fx.b.ins().urem(x, d)
                        };
                        let z = fx.i(0);
                        let r = if sg { fx.b.ins().select(is_m1, z, r) } else { r };
                        if fmod || !sg {
                            r
                        } else {
                            // The result takes the divisor's sign.
                            let rn = fx.b.ins().icmp(IntCC::SignedLessThan, r, z);
                            let dn = fx.b.ins().icmp(IntCC::SignedLessThan, y, z);
                            let nz = fx.b.ins().icmp(IntCC::NotEqual, r, z);
                            let differ = fx.b.ins().bxor(rn, dn);
                            let fix = fx.b.ins().band(differ, nz);
                            let adj = fx.b.ins().iadd(r, y);
                            fx.b.ins().select(fix, adj, r)
                        }
                    }
                }
                Max => {
                    if sg {
                        fx.b.ins().smax(x, y)
                    } else {
                        fx.b.ins().umax(x, y)
                    }
                }
                Min => {
                    if sg {
                        fx.b.ins().smin(x, y)
                    } else {
                        fx.b.ins().umin(x, y)
                    }
                }
                PRelu => {
                    let z = fx.i(0);
                    let xy = fx.b.ins().imul(x, y);
                    let c = fx.b.ins().icmp(IntCC::SignedLessThan, x, z);
                    fx.b.ins().select(c, xy, x)
                }
                And | BitwiseAnd => fx.b.ins().band(x, y),
                Or | BitwiseOr => fx.b.ins().bor(x, y),
                Xor | BitwiseXor => fx.b.ins().bxor(x, y),
                BitShiftLeft | BitShiftRight => {
                    // Shifts by the type's width or more give 0 (the evaluator's rule).
                    let w = fx.i(bits);
                    let big = fx.b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, y, w);
                    let sh = if b == BitShiftLeft {
                        fx.b.ins().ishl(x, y)
                    } else if sg {
                        fx.b.ins().sshr(x, y)
                    } else {
                        fx.b.ins().ushr(x, y)
                    };
                    let z = fx.i(0);
                    fx.b.ins().select(big, z, sh)
                }
                Pow => unreachable!("checked"),
                cmp => {
                    let c = fx.b.ins().icmp(icc(cmp), x, y);
                    flag(fx, c)
                }
            }
        };
        store(fx, so, r, p[0]);
    });
}

pub(crate) fn where_(fx: &mut Fx, g: &Graph, n: NodeId, a: &Args) {
    let node = g.node(n);
    let out = &g.value(node.outputs[0]).ty.shape;
    let s = g.value(node.outputs[0]).ty.dtype.scalar;
    let dims: Vec<i64> = out.iter().map(|&d| d as i64).collect();
    let st = |i: usize| bcast_strides(&g.value(node.inputs[i]).ty.shape, out);
    let ops = [
        Opnd::new(a.outs[0], strides(out), bytes(s)),
        Opnd::new(a.ins[0], st(0), 1),
        Opnd::new(a.ins[1], st(1), bytes(s)),
        Opnd::new(a.ins[2], st(2), bytes(s)),
    ];
    let (ty, _) = mem(s);
    nest(fx, &dims, &ops, I64, None, &mut |fx, _, p, _| {
        let c = fx.load(I8, p[1]);
        let x = fx.load(ty, p[2]);
        let y = fx.load(ty, p[3]);
        let v = fx.b.ins().select(c, x, y);
        fx.store(v, p[0]);
    });
}

pub(crate) fn cast(fx: &mut Fx, g: &Graph, n: NodeId, a: &Args) {
    let node = g.node(n);
    let (si, so) = (
        g.value(node.inputs[0]).ty.dtype.scalar,
        g.value(node.outputs[0]).ty.dtype.scalar,
    );
    let shape = &g.value(node.outputs[0]).ty.shape;
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let ops = [
        Opnd::new(a.outs[0], strides(shape), bytes(so)),
        Opnd::new(a.ins[0], strides(shape), bytes(si)),
    ];
    nest(fx, &dims, &ops, I64, None, &mut |fx, _, p, _| {
        let x = load(fx, si, p[1]);
        // Everything goes through the evaluator's route: float <-> f64 <-> integer.
        let v = match (si.is_float(), so.is_float()) {
            (true, true) => match (si, so) {
                (Scalar::F32 | Scalar::F16, Scalar::F64) => fx.b.ins().fpromote(F64, x),
                (Scalar::F64, Scalar::F32) => fx.b.ins().fdemote(F32, x),
                // one rounding from f64 to binary16 (`f64_to_f32_odd`)
                (Scalar::F64, Scalar::F16) => fx.f64_to_f32_odd(x),
                _ => x,
            },
            (false, true) => {
                let d = if signed(si) || si == Scalar::Bool || mem(si).0 != I64 {
                    fx.b.ins().fcvt_from_sint(F64, x)
                } else {
                    fx.b.ins().fcvt_from_uint(F64, x)
                };
                if so == Scalar::F64 {
                    d
                } else {
                    fx.b.ins().fdemote(F32, d)
                }
            }
            (true, false) => {
                let d = if si == Scalar::F64 {
                    x
                } else {
                    fx.b.ins().fpromote(F64, x)
                };
                from_f64(fx, so, d)
            }
            (false, false) => {
                if so == Scalar::Bool {
                    let z = fx.i(0);
                    let c = fx.b.ins().icmp(IntCC::NotEqual, x, z);
                    fx.b.ins().uextend(I64, c)
                } else {
                    x
                }
            }
        };
        store(fx, so, v, p[0]);
    });
}

/// An f64 converted to the working value of `so` with the evaluator's `as` semantics:
/// floats round, integers saturate (NaN -> 0), bool is `!= 0`.
pub(crate) fn from_f64(fx: &mut Fx, so: Scalar, d: Value) -> Value {
    match so {
        Scalar::F64 => d,
        Scalar::F32 => fx.b.ins().fdemote(F32, d),
        Scalar::F16 => fx.f64_to_f32_odd(d),
        Scalar::Bool => {
            let z = fx.b.ins().f64const(0.0);
            let c = fx.b.ins().fcmp(FloatCC::NotEqual, d, z);
            fx.b.ins().uextend(I64, c)
        }
        Scalar::U64 => fx.b.ins().fcvt_to_uint_sat(I64, d),
        _ => {
            let (lo, hi) = int_range(so);
            let lo_f = fx.b.ins().f64const(lo as f64);
            let hi_f = fx.b.ins().f64const(hi as f64);
            let c = fx.b.ins().fmax(d, lo_f);
            let c = fx.b.ins().fmin(c, hi_f);
            let nan = fx.b.ins().fcmp(FloatCC::Unordered, d, d);
            let z = fx.b.ins().f64const(0.0);
            let c = fx.b.ins().select(nan, z, c);
            fx.b.ins().fcvt_to_sint_sat(I64, c)
        }
    }
}

/// The working value of `s` as an f64 (the evaluator's `to_f64`).
pub(crate) fn to_f64(fx: &mut Fx, s: Scalar, v: Value) -> Value {
    match s {
        Scalar::F64 => v,
        Scalar::F32 | Scalar::F16 => fx.b.ins().fpromote(F64, v),
        Scalar::U64 => fx.b.ins().fcvt_from_uint(F64, v),
        _ => fx.b.ins().fcvt_from_sint(F64, v),
    }
}

fn int_range(s: Scalar) -> (i64, i64) {
    match s {
        Scalar::I8 => (i8::MIN as i64, i8::MAX as i64),
        Scalar::U8 => (0, u8::MAX as i64),
        Scalar::I16 => (i16::MIN as i64, i16::MAX as i64),
        Scalar::U16 => (0, u16::MAX as i64),
        Scalar::I32 => (i32::MIN as i64, i32::MAX as i64),
        Scalar::U32 => (0, u32::MAX as i64),
        _ => (i64::MIN, i64::MAX),
    }
}

/// Pow whose operands differ in type, or integer Pow. A float base takes the exponent
/// converted to its type (as the evaluator casts it); integers use wrapping
/// square-and-multiply, with negative exponents giving 0.
pub(crate) fn pow(fx: &mut Fx, g: &Graph, n: NodeId, a: &Args) {
    let node = g.node(n);
    let (sb, se) = (
        g.value(node.inputs[0]).ty.dtype.scalar,
        g.value(node.inputs[1]).ty.dtype.scalar,
    );
    let out = &g.value(node.outputs[0]).ty.shape;
    let dims: Vec<i64> = out.iter().map(|&d| d as i64).collect();
    let ops = [
        Opnd::new(a.outs[0], strides(out), bytes(sb)),
        Opnd::new(
            a.ins[0],
            bcast_strides(&g.value(node.inputs[0]).ty.shape, out),
            bytes(sb),
        ),
        Opnd::new(
            a.ins[1],
            bcast_strides(&g.value(node.inputs[1]).ty.shape, out),
            bytes(se),
        ),
    ];
    nest(fx, &dims, &ops, I64, None, &mut |fx, _, p, _| {
        let x = load(fx, sb, p[1]);
        let y = load(fx, se, p[2]);
        let r = if sb.is_float() {
            let yd = to_f64(fx, se, y);
            let (xf, yf) = if sb == Scalar::F64 {
                (x, yd)
            } else {
                (x, fx.b.ins().fdemote(F32, yd))
            };
            if sb == Scalar::F64 {
                let xs = fx.b.ins().fdemote(F32, xf);
                let ys = fx.b.ins().fdemote(F32, yf);
                let v = super::elementwise::pow_general(fx, F32, xs, ys);
                fx.b.ins().fpromote(F64, v)
            } else {
                super::elementwise::pow_general(fx, F32, xf, yf)
            }
        } else {
            let y = if se.is_float() {
                let yd = to_f64(fx, se, y);
                fx.b.ins().fcvt_to_sint_sat(I64, yd)
            } else {
                y
            };
            let acc = fx.b.declare_var(I64);
            let base = fx.b.declare_var(I64);
            let e = fx.b.declare_var(I64);
            let one = fx.i(1);
            fx.b.def_var(acc, one);
            fx.b.def_var(base, x);
            fx.b.def_var(e, y);
            for _ in 0..63 {
                let ev = fx.b.use_var(e);
                let bit = fx.b.ins().band_imm_u(ev, 1);
                let bv = fx.b.use_var(base);
                let av = fx.b.use_var(acc);
                let m = fx.b.ins().imul(av, bv);
                let odd = fx.b.ins().icmp_imm_s(IntCC::NotEqual, bit, 0);
                let na = fx.b.ins().select(odd, m, av);
                fx.b.def_var(acc, na);
                let sq = fx.b.ins().imul(bv, bv);
                fx.b.def_var(base, sq);
                let ne = fx.b.ins().ushr_imm_u(ev, 1);
                fx.b.def_var(e, ne);
            }
            let r = fx.b.use_var(acc);
            let z = fx.i(0);
            let neg = fx.b.ins().icmp_imm_s(IntCC::SignedLessThan, y, 0);
            fx.b.ins().select(neg, z, r)
        };
        store(fx, sb, r, p[0]);
    });
}

/// C fmod: x - trunc(x / y) * y, computed in f64 (exact for f32 and f16 operands whose
/// quotient is below 2^29), then nudged by |y| if rounding left the wrong sign.
fn fmod(fx: &mut Fx, s: Scalar, x: Value, y: Value) -> Value {
    let (xd, yd) = if s == Scalar::F64 {
        (x, y)
    } else {
        (fx.b.ins().fpromote(F64, x), fx.b.ins().fpromote(F64, y))
    };
    let q = fx.b.ins().fdiv(xd, yd);
    let q = fx.b.ins().trunc(q);
    let qy = fx.b.ins().fmul(q, yd);
    let r = fx.b.ins().fsub(xd, qy);
    let z = fx.b.ins().f64const(0.0);
    let ay = fx.b.ins().fabs(yd);
    let rneg = fx.b.ins().fcmp(FloatCC::LessThan, r, z);
    let rpos = fx.b.ins().fcmp(FloatCC::GreaterThan, r, z);
    let xpos = fx.b.ins().fcmp(FloatCC::GreaterThan, xd, z);
    let xneg = fx.b.ins().fcmp(FloatCC::LessThan, xd, z);
    let up = fx.b.ins().band(rneg, xpos);
    let down = fx.b.ins().band(rpos, xneg);
    let ru = fx.b.ins().fadd(r, ay);
    let rd = fx.b.ins().fsub(r, ay);
    let r = fx.b.ins().select(up, ru, r);
    let r = fx.b.ins().select(down, rd, r);
    if s == Scalar::F64 {
        r
    } else {
        fx.b.ins().fdemote(F32, r)
    }
}

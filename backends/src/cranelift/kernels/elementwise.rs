//! Elementwise float kernels: unary maps and broadcasting binary ops over one loop nest.

use super::super::fx::Fx;
use super::nest::{F4, Opnd, ld, nest};
use super::{Args, Target, bcast_strides, strides};
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::types::F32;
use cranelift_codegen::ir::{InstBuilder, Type, Value};
use kiln_ir::op::{BinaryOp, UnaryOp};
use kiln_ir::{Graph, NodeId};

pub(crate) fn unary_supported(u: UnaryOp) -> bool {
    use UnaryOp::*;
    matches!(
        u,
        Relu | LeakyRelu { .. }
            | Elu { .. }
            | Selu { .. }
            | Celu { .. }
            | ThresholdedRelu { .. }
            | HardSigmoid { .. }
            | HardSwish
            | Sigmoid
            | Tanh
            | Softplus
            | Softsign
            | Mish
            | Gelu { .. }
            | Clip { .. }
            | Exp
            | Log
            | Sqrt
            | Neg
            | Abs
            | Reciprocal
            | Floor
            | Ceil
            | Round
            | Erf
            | Sign
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

/// `u(x)` for `f32` or `f32x4` lanes, in the evaluator's operation order.
pub(crate) fn unary_op(fx: &mut Fx, ty: Type, u: UnaryOp, x: Value) -> Value {
    use UnaryOp::*;
    let zero = fx.f(ty, 0.0);
    let one = fx.f(ty, 1.0);
    match u {
        Relu => fx.b.ins().fmax(x, zero),
        LeakyRelu { alpha } => {
            let a = fx.f(ty, alpha);
            let ax = fx.mul(a, x);
            let neg = fx.lt(x, zero);
            fx.sel(ty, neg, ax, x)
        }
        Elu { alpha } => {
            let a = fx.f(ty, alpha);
            let e = fx.exp(ty, x);
            let em = fx.sub(e, one);
            let v = fx.mul(a, em);
            let neg = fx.lt(x, zero);
            fx.sel(ty, neg, v, x)
        }
        Celu { alpha } => {
            let a = fx.f(ty, alpha);
            let q = fx.div(x, a);
            let e = fx.exp(ty, q);
            let em = fx.sub(e, one);
            let v = fx.mul(a, em);
            let lo = fx.b.ins().fmin(zero, v);
            let hi = fx.b.ins().fmax(x, zero);
            fx.add(hi, lo)
        }
        Selu { alpha, gamma } => {
            let (a, gm) = (fx.f(ty, alpha), fx.f(ty, gamma));
            let e = fx.exp(ty, x);
            let ae = fx.mul(a, e);
            let neg = fx.sub(ae, a);
            let pos = fx.gt(x, zero);
            let v = fx.sel(ty, pos, x, neg);
            fx.mul(gm, v)
        }
        ThresholdedRelu { alpha } => {
            let a = fx.f(ty, alpha);
            let c = fx.gt(x, a);
            fx.sel(ty, c, x, zero)
        }
        HardSigmoid { alpha, beta } => {
            let (a, b) = (fx.f(ty, alpha), fx.f(ty, beta));
            let v = fx.mul(a, x);
            let v = fx.add(v, b);
            let v = fx.b.ins().fmin(v, one);
            fx.b.ins().fmax(v, zero)
        }
        HardSwish => {
            let (six, half) = (fx.f(ty, 6.0), fx.f(ty, 0.5));
            let v = fx.div(x, six);
            let v = fx.add(v, half);
            let v = fx.b.ins().fmin(v, one);
            let v = fx.b.ins().fmax(v, zero);
            fx.mul(x, v)
        }
        Sigmoid => fx.sigmoid(ty, x),
        Tanh => fx.tanh(ty, x),
        Softplus => {
            // x > 0: x + log(1 + e^-x); else log(1 + e^x)
            let a = fx.b.ins().fabs(x);
            let na = fx.b.ins().fneg(a);
            let e = fx.exp(ty, na);
            let l = fx.add(one, e);
            let l = fx.log(ty, l);
            let pos = fx.add(x, l);
            let c = fx.gt(x, zero);
            fx.sel(ty, c, pos, l)
        }
        Softsign => {
            let a = fx.b.ins().fabs(x);
            let d = fx.add(one, a);
            fx.div(x, d)
        }
        Mish => {
            let sp = unary_op(fx, ty, Softplus, x);
            let t = fx.tanh(ty, sp);
            fx.mul(x, t)
        }
        Gelu { tanh_approx: false } => {
            let (half, r2) = (fx.f(ty, 0.5), fx.f(ty, std::f32::consts::SQRT_2));
            let q = fx.div(x, r2);
            let e = fx.erf(ty, q);
            let e = fx.add(one, e);
            let h = fx.mul(half, x);
            fx.mul(h, e)
        }
        Gelu { tanh_approx: true } => {
            let (half, c, k) = (
                fx.f(ty, 0.5),
                fx.f(ty, (2.0f64 / std::f64::consts::PI).sqrt() as f32),
                fx.f(ty, 0.044715),
            );
            let x3 = fx.mul(k, x);
            let x3 = fx.mul(x3, x);
            let x3 = fx.mul(x3, x);
            let s = fx.add(x, x3);
            let s = fx.mul(c, s);
            let t = fx.tanh(ty, s);
            let t = fx.add(one, t);
            let h = fx.mul(half, x);
            fx.mul(h, t)
        }
        Clip { min, max } => {
            let mut v = x;
            if min > f32::NEG_INFINITY {
                let lo = fx.f(ty, min);
                v = fx.b.ins().fmax(v, lo);
            }
            if max < f32::INFINITY {
                let hi = fx.f(ty, max);
                v = fx.b.ins().fmin(v, hi);
            }
            v
        }
        Exp => fx.exp(ty, x),
        Log => fx.log(ty, x),
        Sqrt => fx.b.ins().sqrt(x),
        Neg => fx.b.ins().fneg(x),
        Abs => fx.b.ins().fabs(x),
        Reciprocal => fx.div(one, x),
        Floor => fx.b.ins().floor(x),
        Ceil => fx.b.ins().ceil(x),
        Round => fx.b.ins().nearest(x),
        Erf => fx.erf(ty, x),
        Sin => fx.sincos(ty, x).0,
        Cos => fx.sincos(ty, x).1,
        Tan => {
            let (s, c) = fx.sincos(ty, x);
            fx.div(s, c)
        }
        Asin => fx.asin(ty, x),
        Acos => fx.acos(ty, x),
        Atan => fx.atan(ty, x),
        Sinh => fx.sinh(ty, x),
        Cosh => fx.cosh(ty, x),
        Asinh => fx.asinh(ty, x),
        Acosh => fx.acosh(ty, x),
        Atanh => fx.atanh(ty, x),
        Sign => {
            let m1 = fx.f(ty, -1.0);
            let p = fx.gt(x, zero);
            let n = fx.lt(x, zero);
            let v = fx.sel(ty, n, m1, x);
            fx.sel(ty, p, one, v)
        }
        other => unreachable!("unary {} passed the support check", other.name()),
    }
}

/// Applies `u` in place to node `n`'s first output (a fused activation).
pub(crate) fn in_place(fx: &mut Fx, g: &Graph, n: NodeId, u: UnaryOp, buf: Value, t: Target) {
    let shape = &g.value(g.node(n).outputs[0]).ty.shape;
    let total = shape.iter().product::<usize>() as i64;
    let ops = [Opnd::new(buf, vec![1], 4), Opnd::new(buf, vec![1], 4)];
    nest(fx, &[total], &ops, F32, t.simd.then_some(F4), &mut |fx, ty, p, _| {
        let x = fx.load(ty, p[1]);
        let y = unary_op(fx, ty, u, x);
        fx.store(y, p[0]);
    });
}

pub(crate) fn unary(fx: &mut Fx, g: &Graph, n: NodeId, u: UnaryOp, a: &Args, t: Target) {
    let shape = &g.value(g.node(n).outputs[0]).ty.shape;
    let st = strides(shape);
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let ops = [Opnd::new(a.outs[0], st.clone(), 4), Opnd::new(a.ins[0], st, 4)];
    nest(fx, &dims, &ops, F32, t.simd.then_some(F4), &mut |fx, ty, p, bc| {
        let x = ld(fx, ty, p[1], bc[1]);
        let y = unary_op(fx, ty, u, x);
        fx.store(y, p[0]);
    });
}

/// The exponent of a Pow whose exponent input is one constant value.
fn const_exponent(g: &Graph, n: NodeId) -> Option<f32> {
    let t = g.const_value(g.node(n).inputs[1])?;
    let v = t.to_f64_vec();
    (!v.is_empty() && v.iter().all(|&x| x == v[0])).then(|| v[0] as f32)
}

pub(crate) fn binary_supported(b: BinaryOp) -> bool {
    use BinaryOp::*;
    matches!(b, Add | Sub | Mul | Div | Max | Min | PRelu | Pow)
}

fn pow_const(fx: &mut Fx, ty: Type, x: Value, e: f32) -> Value {
    match e {
        1.0 => x,
        2.0 => fx.mul(x, x),
        0.5 => fx.b.ins().sqrt(x),
        -1.0 => {
            let one = fx.f(ty, 1.0);
            fx.div(one, x)
        }
        _ => {
            // |x|^e through exp/log; a negative base keeps its sign for odd integer e and is
            // NaN for non-integer e (as powf).
            let a = fx.b.ins().fabs(x);
            let l = fx.log(ty, a);
            let ev = fx.f(ty, e);
            let m = fx.mul(l, ev);
            let r = fx.exp(ty, m);
            let zero = fx.f(ty, 0.0);
            let neg = fx.lt(x, zero);
            let neg_val = if e.fract() != 0.0 {
                fx.f(ty, f32::NAN)
            } else if (e as i64) % 2 != 0 {
                fx.b.ins().fneg(r)
            } else {
                r
            };
            fx.sel(ty, neg, neg_val, r)
        }
    }
}

/// x^y for run-time y: exp(y log|x|), with powf's sign rules for a negative base (odd
/// integer y keeps the sign, non-integer y gives NaN) and x^0 = 1.
pub(crate) fn pow_general(fx: &mut Fx, ty: Type, x: Value, y: Value) -> Value {
    let a = fx.b.ins().fabs(x);
    let l = fx.log(ty, a);
    let m = fx.mul(y, l);
    let r = fx.exp(ty, m);
    let zero = fx.f(ty, 0.0);
    let one = fx.f(ty, 1.0);
    let half = fx.f(ty, 0.5);
    let yf = fx.b.ins().floor(y);
    let integral = fx.b.ins().fcmp(FloatCC::Equal, yf, y);
    let hy = fx.mul(y, half);
    let hf = fx.b.ins().floor(hy);
    let even = fx.b.ins().fcmp(FloatCC::Equal, hf, hy);
    let nr = fx.b.ins().fneg(r);
    let signed = fx.sel(ty, even, r, nr);
    let nan = fx.f(ty, f32::NAN);
    let neg_val = fx.sel(ty, integral, signed, nan);
    let neg = fx.lt(x, zero);
    let v = fx.sel(ty, neg, neg_val, r);
    let y0 = fx.b.ins().fcmp(FloatCC::Equal, y, zero);
    fx.sel(ty, y0, one, v)
}

pub(crate) fn binary(fx: &mut Fx, g: &Graph, n: NodeId, b: BinaryOp, a: &Args, t: Target) {
    let node = g.node(n);
    let out = &g.value(node.outputs[0]).ty.shape;
    let dims: Vec<i64> = out.iter().map(|&d| d as i64).collect();
    if let (BinaryOp::Pow, None) = (b, const_exponent(g, n)) {
        let ops = [
            Opnd::new(a.outs[0], strides(out), 4),
            Opnd::new(a.ins[0], bcast_strides(&g.value(node.inputs[0]).ty.shape, out), 4),
            Opnd::new(a.ins[1], bcast_strides(&g.value(node.inputs[1]).ty.shape, out), 4),
        ];
        nest(fx, &dims, &ops, F32, t.simd.then_some(F4), &mut |fx, ty, p, bc| {
            let x = ld(fx, ty, p[1], bc[1]);
            let y = ld(fx, ty, p[2], bc[2]);
            let r = pow_general(fx, ty, x, y);
            fx.store(r, p[0]);
        });
        return;
    }
    if b == BinaryOp::Pow {
        let e = const_exponent(g, n).expect("checked");
        let ops = [
            Opnd::new(a.outs[0], strides(out), 4),
            Opnd::new(a.ins[0], bcast_strides(&g.value(node.inputs[0]).ty.shape, out), 4),
        ];
        nest(fx, &dims, &ops, F32, t.simd.then_some(F4), &mut |fx, ty, p, bc| {
            let x = ld(fx, ty, p[1], bc[1]);
            let y = pow_const(fx, ty, x, e);
            fx.store(y, p[0]);
        });
        return;
    }
    let ops = [
        Opnd::new(a.outs[0], strides(out), 4),
        Opnd::new(a.ins[0], bcast_strides(&g.value(node.inputs[0]).ty.shape, out), 4),
        Opnd::new(a.ins[1], bcast_strides(&g.value(node.inputs[1]).ty.shape, out), 4),
    ];
    nest(fx, &dims, &ops, F32, t.simd.then_some(F4), &mut |fx, ty, p, bc| {
        let x = ld(fx, ty, p[1], bc[1]);
        let y = ld(fx, ty, p[2], bc[2]);
        let r = match b {
            BinaryOp::Add => fx.add(x, y),
            BinaryOp::Sub => fx.sub(x, y),
            BinaryOp::Mul => fx.mul(x, y),
            BinaryOp::Div => fx.div(x, y),
            BinaryOp::Max => fx.b.ins().fmax(x, y),
            BinaryOp::Min => fx.b.ins().fmin(x, y),
            BinaryOp::PRelu => {
                let zero = fx.f(ty, 0.0);
                let xy = fx.mul(x, y);
                let c = fx.b.ins().fcmp(FloatCC::LessThan, x, zero);
                fx.sel(ty, c, xy, x)
            }
            other => unreachable!("binary {} passed the support check", other.name()),
        };
        fx.store(r, p[0]);
    });
}

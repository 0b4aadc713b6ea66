//! Elementwise kernels: unary maps, broadcasting binary ops, `Where`.

use super::{Flt, broadcast_offsets, lit, sl, unsupported};
use crate::dtype::{Scalar, TensorType};
use crate::error::{IrError, Result};
use crate::map_data;
use crate::op::{BinaryOp, UnaryOp};
use crate::tensor::{Data, Elem, Tensor};

pub(crate) fn unary_f<T: Flt>(op: UnaryOp, x: T) -> T {
    use UnaryOp::*;
    let zero = T::zero();
    let one = T::one();
    let f = |v: f32| -> T { lit(v as f64) };
    match op {
        Relu => x.max(zero),
        LeakyRelu { alpha } => {
            if x < zero {
                f(alpha) * x
            } else {
                x
            }
        }
        Elu { alpha } => {
            if x < zero {
                f(alpha) * (x.exp() - one)
            } else {
                x
            }
        }
        Celu { alpha } => x.max(zero) + zero.min(f(alpha) * ((x / f(alpha)).exp() - one)),
        Selu { alpha, gamma } => f(gamma) * if x > zero { x } else { f(alpha) * x.exp() - f(alpha) },
        ThresholdedRelu { alpha } => {
            if x > f(alpha) {
                x
            } else {
                zero
            }
        }
        HardSigmoid { alpha, beta } => (f(alpha) * x + f(beta)).min(one).max(zero),
        HardSwish => x * (x / lit(6.0) + lit(0.5)).min(one).max(zero),
        Sigmoid => {
            // Symmetric form: no overflow for large |x|.
            if x >= zero {
                one / (one + (-x).exp())
            } else {
                let e = x.exp();
                e / (one + e)
            }
        }
        Tanh => x.tanh(),
        Softplus => {
            if x > zero {
                x + (-x).exp().ln_1p()
            } else {
                x.exp().ln_1p()
            }
        }
        Softsign => x / (one + x.abs()),
        Mish => x * unary_f(Softplus, x).tanh(),
        Gelu { tanh_approx: false } => lit::<T>(0.5) * x * (one + erf(x / lit(std::f64::consts::SQRT_2))),
        Gelu { tanh_approx: true } => {
            let c: T = lit((2.0 / std::f64::consts::PI).sqrt());
            lit::<T>(0.5) * x * (one + (c * (x + lit::<T>(0.044715) * x * x * x)).tanh())
        }
        Clip { min, max } => {
            if x.is_nan() {
                x
            } else {
                x.max(f(min)).min(f(max))
            }
        }
        Exp => x.exp(),
        Log => x.ln(),
        Sqrt => x.sqrt(),
        Neg => -x,
        Abs => x.abs(),
        Sign => {
            if x > zero {
                one
            } else if x < zero {
                -one
            } else {
                x
            }
        }
        Reciprocal => one / x,
        Floor => x.floor(),
        Ceil => x.ceil(),
        Round => lit(x.to_f64().round_ties_even()),
        Erf => erf(x),
        Sin => x.sin(),
        Cos => x.cos(),
        Tan => x.tan(),
        Asin => x.asin(),
        Acos => x.acos(),
        Atan => x.atan(),
        Sinh => x.sinh(),
        Cosh => x.cosh(),
        Asinh => x.asinh(),
        Acosh => x.acosh(),
        Atanh => x.atanh(),
        Not | IsNaN | IsInf { .. } | BitwiseNot => unreachable!("not a float map"),
    }
}

fn erf<T: Flt>(x: T) -> T {
    if T::SCALAR == Scalar::F32 {
        lit(libm::erff(x.to_f64() as f32) as f64)
    } else {
        lit(libm::erf(x.to_f64()))
    }
}

fn unary_i(op: UnaryOp, x: i64) -> Option<i64> {
    use UnaryOp::*;
    Some(match op {
        Neg => x.wrapping_neg(),
        Abs => x.wrapping_abs(),
        Sign => x.signum(),
        Relu => x.max(0),
        BitwiseNot => !x,
        _ => return None,
    })
}

pub(crate) fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    let shape = x.shape.clone();
    let data = match (&x.data, op) {
        (Data::Bool(v), UnaryOp::Not) => Data::Bool(v.iter().map(|b| !b).collect()),
        (Data::F32(v), UnaryOp::IsNaN) => Data::Bool(v.iter().map(|b| b.is_nan()).collect()),
        (Data::F64(v), UnaryOp::IsNaN) => Data::Bool(v.iter().map(|b| b.is_nan()).collect()),
        (d, UnaryOp::IsInf { positive, negative }) => {
            let v = x.to_f64_vec();
            let _ = d;
            Data::Bool(
                v.iter()
                    .map(|&a| (positive && a == f64::INFINITY) || (negative && a == f64::NEG_INFINITY))
                    .collect(),
            )
        }
        (Data::F32(v), _) => Data::F32(v.iter().map(|&a| unary_f(op, a)).collect()),
        (Data::F64(v), _) => Data::F64(v.iter().map(|&a| unary_f(op, a)).collect()),
        (d, _) if d.scalar().is_int() => {
            if unary_i(op, 0).is_none() {
                return Err(unsupported(op.name(), d));
            }
            map_data!(d, v => v.iter().map(|&a| Elem::from_i64(unary_i(op, a.to_i64()).unwrap_or(0))).collect())
        }
        (d, _) => return Err(unsupported(op.name(), d)),
    };
    Ok(Tensor::new(shape, data))
}

fn binary_f<T: Flt>(op: BinaryOp, a: T, b: T) -> T {
    use BinaryOp::*;
    match op {
        Add => a + b,
        Sub => a - b,
        Mul => a * b,
        Div => a / b,
        Pow => a.powf(b),
        Max => {
            if a.is_nan() || b.is_nan() {
                T::nan()
            } else {
                a.max(b)
            }
        }
        Min => {
            if a.is_nan() || b.is_nan() {
                T::nan()
            } else {
                a.min(b)
            }
        }
        Mod { .. } => a % b,
        PRelu => {
            if a < T::zero() {
                a * b
            } else {
                a
            }
        }
        _ => unreachable!("not a float arithmetic op"),
    }
}

fn binary_i(op: BinaryOp, a: i64, b: i64, bits: u32, signed: bool) -> Result<i64> {
    use BinaryOp::*;
    let div0 = || IrError::eval("Div", "integer division by zero");
    Ok(match op {
        Add => a.wrapping_add(b),
        Sub => a.wrapping_sub(b),
        Mul => a.wrapping_mul(b),
        Div => a.checked_div(b).ok_or_else(div0)?,
        Pow => {
            if b < 0 {
                0
            } else {
                a.wrapping_pow(b.min(u32::MAX as i64) as u32)
            }
        }
        Max => a.max(b),
        Min => a.min(b),
        Mod { fmod: true } => a.checked_rem(b).ok_or_else(div0)?,
        Mod { fmod: false } => {
            let r = a.checked_rem(b).ok_or_else(div0)?;
            if r != 0 && ((r < 0) != (b < 0)) { r + b } else { r }
        }
        PRelu => {
            if a < 0 {
                a.wrapping_mul(b)
            } else {
                a
            }
        }
        BitwiseAnd => a & b,
        BitwiseOr => a | b,
        BitwiseXor => a ^ b,
        BitShiftLeft => {
            if b >= bits as i64 {
                0
            } else {
                a << b
            }
        }
        BitShiftRight => {
            if b >= bits as i64 {
                0
            } else if signed {
                a >> b
            } else {
                ((a as u64 & (u64::MAX >> (64 - bits))) >> b) as i64
            }
        }
        _ => unreachable!("not an integer arithmetic op"),
    })
}

fn compare<T: PartialOrd>(op: BinaryOp, a: T, b: T) -> bool {
    use BinaryOp::*;
    match op {
        Equal => a == b,
        Less => a < b,
        LessOrEqual => a <= b,
        Greater => a > b,
        GreaterOrEqual => a >= b,
        _ => unreachable!(),
    }
}

/// Pairs of flat input offsets for every output element (identity when shapes match).
fn operands(a: &[usize], b: &[usize], out: &[usize]) -> (Option<Vec<usize>>, Option<Vec<usize>>) {
    let ia = (a != out).then(|| broadcast_offsets(a, out));
    let ib = (b != out).then(|| broadcast_offsets(b, out));
    (ia, ib)
}

fn zip_map<A: Copy, B: Copy, R>(
    a: &[A],
    b: &[B],
    ia: &Option<Vec<usize>>,
    ib: &Option<Vec<usize>>,
    n: usize,
    mut f: impl FnMut(A, B) -> R,
) -> Vec<R> {
    match (ia, ib) {
        (None, None) => a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect(),
        (None, Some(_)) if b.len() == 1 => a.iter().map(|&x| f(x, b[0])).collect(),
        _ => (0..n)
            .map(|i| {
                let x = a[ia.as_ref().map_or(i, |v| v[i])];
                let y = b[ib.as_ref().map_or(i, |v| v[i])];
                f(x, y)
            })
            .collect(),
    }
}

pub(crate) fn binary(op: BinaryOp, a: &Tensor, b: &Tensor, out: &TensorType) -> Result<Tensor> {
    use BinaryOp::*;
    let n = out.numel();
    let (ia, ib) = operands(&a.shape, &b.shape, &out.shape);
    // Pow accepts an exponent of another type: bring it to the base's type first.
    let b_cast;
    let b = if b.data.scalar() != a.data.scalar() {
        b_cast = b.cast(a.data.scalar());
        &b_cast
    } else {
        b
    };
    let data = match op {
        Equal | Less | LessOrEqual | Greater | GreaterOrEqual => match (&a.data, &b.data) {
            (Data::F32(x), Data::F32(y)) => Data::Bool(zip_map(x, y, &ia, &ib, n, |p, q| compare(op, p, q))),
            (Data::F64(x), Data::F64(y)) => Data::Bool(zip_map(x, y, &ia, &ib, n, |p, q| compare(op, p, q))),
            (Data::U64(x), Data::U64(y)) => Data::Bool(zip_map(x, y, &ia, &ib, n, |p, q| compare(op, p, q))),
            (Data::Bool(x), Data::Bool(y)) => Data::Bool(zip_map(x, y, &ia, &ib, n, |p, q| compare(op, p, q))),
            _ => {
                let (x, y) = (a.to_i64_vec(), b.to_i64_vec());
                Data::Bool(zip_map(&x, &y, &ia, &ib, n, |p, q| compare(op, p, q)))
            }
        },
        And | Or | Xor => match (&a.data, &b.data) {
            (Data::Bool(x), Data::Bool(y)) => Data::Bool(zip_map(x, y, &ia, &ib, n, |p, q| match op {
                And => p && q,
                Or => p || q,
                _ => p ^ q,
            })),
            (d, _) => return Err(unsupported(op.name(), d)),
        },
        _ => match (&a.data, &b.data) {
            (Data::F32(x), Data::F32(y)) => Data::F32(zip_map(x, y, &ia, &ib, n, |p, q| binary_f(op, p, q))),
            (Data::F64(x), Data::F64(y)) => Data::F64(zip_map(x, y, &ia, &ib, n, |p, q| binary_f(op, p, q))),
            (d, _) if d.scalar().is_int() => {
                let (x, y) = (a.to_i64_vec(), b.to_i64_vec());
                let bits = 8 * d.scalar().size() as u32;
                let signed = matches!(d.scalar(), Scalar::I8 | Scalar::I16 | Scalar::I32 | Scalar::I64);
                let mut err = None;
                let r = zip_map(&x, &y, &ia, &ib, n, |p, q| {
                    binary_i(op, p, q, bits, signed).unwrap_or_else(|e| {
                        err = Some(e);
                        0
                    })
                });
                if let Some(e) = err {
                    return Err(e);
                }
                Data::I64(r).cast(d.scalar())
            }
            (d, _) => return Err(unsupported(op.name(), d)),
        },
    };
    Ok(Tensor::new(out.shape.clone(), data))
}

pub(crate) fn where_(c: &Tensor, a: &Tensor, b: &Tensor, out: &[usize]) -> Tensor {
    let n: usize = out.iter().product();
    let ic = if c.shape == out {
        (0..n).collect()
    } else {
        broadcast_offsets(&c.shape, out)
    };
    let ia = if a.shape == out {
        (0..n).collect()
    } else {
        broadcast_offsets(&a.shape, out)
    };
    let ib = if b.shape == out {
        (0..n).collect()
    } else {
        broadcast_offsets(&b.shape, out)
    };
    let cond: &[bool] = sl(c);
    fn pick<T: Elem>(va: &[T], b: &Data, cond: &[bool], ic: &[usize], ia: &[usize], ib: &[usize]) -> Vec<T> {
        let vb = T::unwrap(b).expect("same element type");
        (0..ic.len())
            .map(|i| if cond[ic[i]] { va[ia[i]] } else { vb[ib[i]] })
            .collect()
    }
    let data = map_data!(&a.data, va => pick(va, &b.data, cond, &ic, &ia, &ib));
    Tensor::new(out.to_vec(), data)
}

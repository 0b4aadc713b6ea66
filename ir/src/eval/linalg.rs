//! Matrix products. One GEMM core (row-major, i-k-j loop order so the inner loop streams
//! contiguous rows) serves Gemm, MatMul and the im2col convolution.

use super::{Flt, for_each_index, lit, sl};
use crate::dtype::{Scalar, TensorType};
use crate::error::{IrError, Result};
use crate::shape::parse_einsum;
use crate::tensor::{Data, Tensor, strides};
use std::collections::HashMap;

/// `c[m x n] += a[m x k] * b[k x n]`, all row-major and contiguous.
pub(crate) fn gemm_acc<T: Flt>(m: usize, n: usize, k: usize, a: &[T], b: &[T], c: &mut [T]) {
    for i in 0..m {
        let crow = &mut c[i * n..(i + 1) * n];
        let arow = &a[i * k..(i + 1) * k];
        for (p, &av) in arow.iter().enumerate() {
            if av == T::zero() {
                continue;
            }
            let brow = &b[p * n..(p + 1) * n];
            for (cv, &bv) in crow.iter_mut().zip(brow) {
                *cv = *cv + av * bv;
            }
        }
    }
}

fn transposed<T: Flt>(v: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut t = vec![T::zero(); v.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = v[r * cols + c];
        }
    }
    t
}

pub(crate) fn gemm<T: Flt>(x: &[&Tensor], alpha: f32, beta: f32, ta: bool, tb: bool, out: &[usize]) -> Result<Tensor> {
    let (m, n) = (out[0], out[1]);
    let a: &[T] = sl(x[0]);
    let b: &[T] = sl(x[1]);
    let k = if ta { x[0].shape[0] } else { x[0].shape[1] };
    let a = if ta { transposed(a, k, m) } else { a.to_vec() };
    let b = if tb { transposed(b, n, k) } else { b.to_vec() };
    let mut c = vec![T::zero(); m * n];
    gemm_acc(m, n, k, &a, &b, &mut c);
    let alpha: T = lit(alpha as f64);
    if alpha != T::one() {
        c.iter_mut().for_each(|v| *v = *v * alpha);
    }
    if let Some(ct) = x.get(2) {
        let beta: T = lit(beta as f64);
        let cv: &[T] = sl(ct);
        let off = super::broadcast_offsets(&ct.shape, out);
        c.iter_mut().zip(off).for_each(|(v, o)| *v = *v + beta * cv[o]);
    }
    Ok(Tensor::from_vec(out.to_vec(), c))
}

fn matmul_t<T: Flt>(a: &Tensor, b: &Tensor, out: &[usize]) -> Vec<T> {
    let a2 = if a.shape.len() == 1 {
        vec![1, a.shape[0]]
    } else {
        a.shape.clone()
    };
    let b2 = if b.shape.len() == 1 {
        vec![b.shape[0], 1]
    } else {
        b.shape.clone()
    };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let n = b2[b2.len() - 1];
    let batch = crate::shape::broadcast(&a2[..a2.len() - 2], &b2[..b2.len() - 2]).expect("checked by inference");
    let nb: usize = batch.iter().product();
    let ab = super::broadcast_offsets(&a2[..a2.len() - 2], &batch);
    let bb = super::broadcast_offsets(&b2[..b2.len() - 2], &batch);
    let (av, bv): (&[T], &[T]) = (sl(a), sl(b));
    let mut c = vec![T::zero(); nb * m * n];
    for i in 0..nb {
        let ao = ab[i] * m * k;
        let bo = bb[i] * k * n;
        gemm_acc(
            m,
            n,
            k,
            &av[ao..ao + m * k],
            &bv[bo..bo + k * n],
            &mut c[i * m * n..(i + 1) * m * n],
        );
    }
    debug_assert_eq!(c.len(), out.iter().product::<usize>());
    c
}

pub(crate) fn matmul(a: &Tensor, b: &Tensor, out: &[usize]) -> Result<Tensor> {
    let data = match a.data.scalar() {
        Scalar::F32 => Data::F32(matmul_t(a, b, out)),
        Scalar::F64 => Data::F64(matmul_t(a, b, out)),
        s if s.is_int() => {
            let (a64, b64) = (a.cast(Scalar::F64), b.cast(Scalar::F64));
            Data::F64(matmul_t(&a64, &b64, out)).cast(s)
        }
        s => return Err(IrError::eval("MatMul", format!("unsupported element type {s}"))),
    };
    Ok(Tensor::new(out.to_vec(), data))
}

/// General einsum by direct summation over every label (fine for the small operands einsum
/// sees in exported models; backends lower the common forms to MatMul).
pub(crate) fn einsum(eq: &str, x: &[&Tensor], out: &TensorType) -> Result<Tensor> {
    let spec = parse_einsum(eq, x.len())?;
    let mut dims: HashMap<char, usize> = HashMap::new();
    for (l, t) in spec.inputs.iter().zip(x) {
        for (c, &d) in l.iter().zip(&t.shape) {
            dims.insert(*c, d);
        }
    }
    let mut labels: Vec<char> = spec.output.clone();
    for l in &spec.inputs {
        for c in l {
            if !labels.contains(c) {
                labels.push(*c);
            }
        }
    }
    let sizes: Vec<usize> = labels.iter().map(|c| dims[c]).collect();
    let pos = |c: &char| {
        labels
            .iter()
            .position(|x| x == c)
            .ok_or_else(|| IrError::eval("Einsum", "bad label"))
    };
    let maps = spec
        .inputs
        .iter()
        .zip(x)
        .map(|(l, t)| {
            let st = strides(&t.shape);
            l.iter()
                .zip(st)
                .map(|(c, s)| Ok((pos(c)?, s)))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    let vals: Vec<Vec<f64>> = x.iter().map(|t| t.to_f64_vec()).collect();
    let ost = strides(&out.shape);
    let mut acc = vec![0f64; out.numel()];
    for_each_index(&sizes, |i| {
        let mut p = 1.0;
        for (m, v) in maps.iter().zip(&vals) {
            let off: usize = m.iter().map(|&(d, s)| i[d] * s).sum();
            p *= v[off];
        }
        let o: usize = (0..spec.output.len()).map(|d| i[d] * ost[d]).sum();
        acc[o] += p;
    });
    Ok(Tensor::new(out.shape.clone(), Data::F64(acc).cast(out.dtype.scalar)))
}

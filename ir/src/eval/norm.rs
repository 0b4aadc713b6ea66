//! Normalization and softmax-family kernels.

use super::{Flt, broadcast_offsets, lit, sl};
use crate::error::Result;
use crate::tensor::Tensor;

pub(crate) fn batch_norm<T: Flt>(x: &[&Tensor], eps: f32) -> Result<Tensor> {
    let xt = x[0];
    let (n, c) = (xt.shape[0], xt.shape[1]);
    let inner: usize = xt.shape[2..].iter().product();
    let p: Vec<Vec<T>> = x[1..5]
        .iter()
        .map(|t| t.cast(T::SCALAR).as_slice::<T>().unwrap().to_vec())
        .collect();
    let (scale, bias, mean, var) = (&p[0], &p[1], &p[2], &p[3]);
    let xv: &[T] = sl(xt);
    let mut y = Vec::with_capacity(xv.len());
    for b in 0..n {
        for ch in 0..c {
            let a = scale[ch] / (var[ch] + lit(eps as f64)).sqrt();
            let s = bias[ch] - mean[ch] * a;
            let base = (b * c + ch) * inner;
            y.extend(xv[base..base + inner].iter().map(|&v| v * a + s));
        }
    }
    Ok(Tensor::from_vec(xt.shape.clone(), y))
}

pub(crate) fn instance_norm<T: Flt>(x: &[&Tensor], eps: f32) -> Result<Tensor> {
    let xt = x[0];
    let (n, c) = (xt.shape[0], xt.shape[1]);
    let inner: usize = xt.shape[2..].iter().product();
    let (scale, bias): (&[T], &[T]) = (sl(x[1]), sl(x[2]));
    let xv: &[T] = sl(xt);
    let mut y = Vec::with_capacity(xv.len());
    for b in 0..n {
        for ch in 0..c {
            let s = &xv[(b * c + ch) * inner..][..inner];
            let (mean, var) = moments(s);
            let a = scale[ch] / (var + lit(eps as f64)).sqrt();
            y.extend(s.iter().map(|&v| (v - mean) * a + bias[ch]));
        }
    }
    Ok(Tensor::from_vec(xt.shape.clone(), y))
}

fn moments<T: Flt>(s: &[T]) -> (T, T) {
    let n: T = lit(s.len() as f64);
    let mean = s.iter().copied().sum::<T>() / n;
    let var = s.iter().map(|&v| (v - mean) * (v - mean)).sum::<T>() / n;
    (mean, var)
}

pub(crate) fn layer_norm<T: Flt>(x: &[&Tensor], axis: usize, eps: f32) -> Result<Tensor> {
    let xt = x[0];
    let inner: usize = xt.shape[axis..].iter().product();
    let xv: &[T] = sl(xt);
    let scale: &[T] = sl(x[1]);
    let so = broadcast_offsets(&x[1].shape, &xt.shape);
    let bias = x.get(2).map(|b| (sl::<T>(b), broadcast_offsets(&b.shape, &xt.shape)));
    let mut y = Vec::with_capacity(xv.len());
    for (r, s) in xv.chunks(inner.max(1)).enumerate() {
        let (mean, var) = moments(s);
        let inv = T::one() / (var + lit(eps as f64)).sqrt();
        for (j, &v) in s.iter().enumerate() {
            let i = r * inner + j;
            let mut o = (v - mean) * inv * scale[so[i]];
            if let Some((b, bo)) = &bias {
                o = o + b[bo[i]];
            }
            y.push(o);
        }
    }
    Ok(Tensor::from_vec(xt.shape.clone(), y))
}

pub(crate) fn lrn<T: Flt>(x: &Tensor, size: usize, alpha: f32, beta: f32, bias: f32) -> Result<Tensor> {
    let (n, c) = (x.shape[0], x.shape[1]);
    let inner: usize = x.shape[2..].iter().product();
    let xv: &[T] = sl(x);
    let lo = (size - 1) / 2;
    let hi = size - 1 - lo;
    let mut y = vec![T::zero(); xv.len()];
    for b in 0..n {
        for ch in 0..c {
            let from = ch.saturating_sub(lo);
            let to = (ch + hi).min(c - 1);
            for i in 0..inner {
                let sq: T = (from..=to)
                    .map(|cc| {
                        let v = xv[(b * c + cc) * inner + i];
                        v * v
                    })
                    .sum();
                let idx = (b * c + ch) * inner + i;
                let d = (lit::<T>(bias as f64) + lit::<T>(alpha as f64 / size as f64) * sq).powf(lit(beta as f64));
                y[idx] = xv[idx] / d;
            }
        }
    }
    Ok(Tensor::from_vec(x.shape.clone(), y))
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum SoftKind {
    Soft,
    Log,
    Hard,
}

pub(crate) fn softmax<T: Flt>(x: &Tensor, axis: usize, kind: SoftKind) -> Result<Tensor> {
    let n = x.shape[axis];
    let inner: usize = x.shape[axis + 1..].iter().product();
    let outer: usize = x.shape[..axis].iter().product();
    let xv: &[T] = sl(x);
    let mut y = vec![T::zero(); xv.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * n + j) * inner + i;
            let mut mx = T::neg_infinity();
            let mut arg = 0;
            for j in 0..n {
                if xv[at(j)] > mx {
                    mx = xv[at(j)];
                    arg = j;
                }
            }
            match kind {
                SoftKind::Hard => y[at(arg)] = T::one(),
                SoftKind::Soft | SoftKind::Log => {
                    let mut sum = T::zero();
                    for j in 0..n {
                        let e = (xv[at(j)] - mx).exp();
                        y[at(j)] = e;
                        sum = sum + e;
                    }
                    for j in 0..n {
                        y[at(j)] = if kind == SoftKind::Soft {
                            y[at(j)] / sum
                        } else {
                            xv[at(j)] - mx - sum.ln()
                        };
                    }
                }
            }
        }
    }
    Ok(Tensor::from_vec(x.shape.clone(), y))
}

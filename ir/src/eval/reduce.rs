//! Reductions, arg-reductions, cumulative sums and top-k. Accumulation is in f64 (exact for
//! integer sums below 2^53) and the result is cast back to the input's element type.

use super::for_each_index;
use crate::op::ReduceKind;
use crate::shape::reduced;
use crate::tensor::{Data, Tensor, strides};

/// Offset in the reduced output for every input element.
fn out_offsets(shape: &[usize], axes: &[usize]) -> (Vec<usize>, usize) {
    let all = axes.is_empty();
    let kept: Vec<usize> = shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if all || axes.contains(&i) { 1 } else { d })
        .collect();
    let st = strides(&kept);
    let mut v = Vec::with_capacity(shape.iter().product());
    for_each_index(shape, |i| {
        v.push(
            i.iter()
                .zip(&kept)
                .zip(&st)
                .map(|((&j, &k), &s)| if k == 1 { 0 } else { j * s })
                .sum(),
        )
    });
    (v, kept.iter().product())
}

pub(crate) fn reduce(x: &Tensor, kind: ReduceKind, axes: &[usize], keep: bool) -> Tensor {
    use ReduceKind::*;
    let (offs, n_out) = out_offsets(&x.shape, axes);
    let count = x.numel().checked_div(n_out).unwrap_or(0);
    let xv = x.to_f64_vec();
    let init = match kind {
        Max => f64::NEG_INFINITY,
        Min => f64::INFINITY,
        Prod => 1.0,
        _ => 0.0,
    };
    let mut acc = vec![init; n_out];
    // LogSumExp subtracts the per-output maximum for stability.
    let shift = if kind == LogSumExp {
        let mut m = vec![f64::NEG_INFINITY; n_out];
        for (&o, &v) in offs.iter().zip(&xv) {
            m[o] = m[o].max(v);
        }
        m.iter().map(|&v| if v.is_finite() { v } else { 0.0 }).collect()
    } else {
        vec![0.0; n_out]
    };
    for (&o, &v) in offs.iter().zip(&xv) {
        let a = &mut acc[o];
        *a = match kind {
            Sum | Mean => *a + v,
            Max => {
                if v.is_nan() || v > *a {
                    v
                } else {
                    *a
                }
            }
            Min => {
                if v.is_nan() || v < *a {
                    v
                } else {
                    *a
                }
            }
            Prod => *a * v,
            L1 => *a + v.abs(),
            L2 | SumSquare => *a + v * v,
            LogSum => *a + v,
            LogSumExp => *a + (v - shift[o]).exp(),
        };
    }
    for (o, a) in acc.iter_mut().enumerate() {
        *a = match kind {
            Mean => *a / count as f64,
            L2 => a.sqrt(),
            LogSum => a.ln(),
            LogSumExp => a.ln() + shift[o],
            _ => *a,
        };
    }
    let shape = reduced(&x.shape, axes, keep);
    Tensor::new(shape, Data::F64(acc).cast(x.data.scalar()))
}

pub(crate) fn arg(x: &Tensor, axis: usize, keep: bool, last: bool, max: bool) -> Tensor {
    let n = x.shape[axis];
    let inner: usize = x.shape[axis + 1..].iter().product();
    let outer: usize = x.shape[..axis].iter().product();
    let xv = x.to_f64_vec();
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let mut best = 0usize;
            for j in 1..n {
                let (v, b) = (xv[(o * n + j) * inner + i], xv[(o * n + best) * inner + i]);
                let better = if max { v > b } else { v < b };
                if better || (last && v == b) {
                    best = j;
                }
            }
            out.push(best as i64);
        }
    }
    Tensor::new(reduced(&x.shape, &[axis], keep), Data::I64(out))
}

pub(crate) fn cumsum(x: &Tensor, axis: usize, exclusive: bool, reverse: bool) -> Tensor {
    let n = x.shape[axis];
    let inner: usize = x.shape[axis + 1..].iter().product();
    let outer: usize = x.shape[..axis].iter().product();
    let xv = x.to_f64_vec();
    let mut y = vec![0f64; xv.len()];
    for o in 0..outer {
        for i in 0..inner {
            let mut acc = 0.0;
            for s in 0..n {
                let j = if reverse { n - 1 - s } else { s };
                let at = (o * n + j) * inner + i;
                if exclusive {
                    y[at] = acc;
                    acc += xv[at];
                } else {
                    acc += xv[at];
                    y[at] = acc;
                }
            }
        }
    }
    Tensor::new(x.shape.clone(), Data::F64(y).cast(x.data.scalar()))
}

pub(crate) fn topk(x: &Tensor, axis: usize, k: usize, largest: bool) -> Vec<Tensor> {
    let n = x.shape[axis];
    let inner: usize = x.shape[axis + 1..].iter().product();
    let outer: usize = x.shape[..axis].iter().product();
    let xv = x.to_f64_vec();
    let mut src = Vec::with_capacity(outer * k * inner);
    let mut ind = Vec::with_capacity(outer * k * inner);
    let mut shape = x.shape.clone();
    shape[axis] = k;
    let mut picked = vec![0usize; outer * k * inner];
    for o in 0..outer {
        for i in 0..inner {
            let mut order: Vec<usize> = (0..n).collect();
            let at = |j: usize| (o * n + j) * inner + i;
            order.sort_by(|&a, &b| {
                let c = xv[at(a)].partial_cmp(&xv[at(b)]).unwrap_or(std::cmp::Ordering::Equal);
                let c = if largest { c.reverse() } else { c };
                c.then(a.cmp(&b))
            });
            for (r, &j) in order.iter().take(k).enumerate() {
                picked[(o * k + r) * inner + i] = j;
            }
        }
    }
    for o in 0..outer {
        for r in 0..k {
            for i in 0..inner {
                let j = picked[(o * k + r) * inner + i];
                src.push((o * n + j) * inner + i);
                ind.push(j as i64);
            }
        }
    }
    vec![
        Tensor::new(shape.clone(), x.data.gather(&src)),
        Tensor::new(shape, Data::I64(ind)),
    ]
}

//! Data-movement kernels. Each computes, for every output element, the flat offset of the
//! input element it copies, then gathers: one mechanism for every element type.

use super::{broadcast_offsets, for_each_index};
use crate::error::{IrError, Result};
use crate::map_data;
use crate::op::{PadMode, ScatterReduction, SliceAxis};
use crate::tensor::{Data, Elem, Tensor, strides};

pub(crate) fn transpose(x: &Tensor, perm: &[usize]) -> Tensor {
    let st = strides(&x.shape);
    let out: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let pst: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
    let mut idx = Vec::with_capacity(x.numel());
    for_each_index(&out, |i| idx.push(i.iter().zip(&pst).map(|(a, b)| a * b).sum()));
    Tensor::new(out, x.data.gather(&idx))
}

pub(crate) fn concat(xs: &[&Tensor], axis: usize, out: Vec<usize>) -> Tensor {
    let outer: usize = out[..axis].iter().product();
    let mut parts: Vec<(usize, usize)> = Vec::new(); // (input, chunk length)
    for (i, t) in xs.iter().enumerate() {
        parts.push((i, t.shape[axis..].iter().product()));
    }
    fn build<T: Elem>(first: &[T], xs: &[&Tensor], parts: &[(usize, usize)], outer: usize) -> Vec<T> {
        let _ = first;
        let mut v = Vec::with_capacity(parts.iter().map(|p| p.1).sum::<usize>() * outer);
        for o in 0..outer {
            for &(i, n) in parts {
                let src = T::unwrap(&xs[i].data).expect("same type");
                v.extend_from_slice(&src[o * n..(o + 1) * n]);
            }
        }
        v
    }
    let data = map_data!(&xs[0].data, f => build(f, xs, &parts, outer));
    Tensor::new(out, data)
}

pub(crate) fn split(x: &Tensor, axis: usize, sizes: &[usize]) -> Vec<Tensor> {
    let mut start = 0;
    sizes
        .iter()
        .map(|&n| {
            let axes = x
                .shape
                .iter()
                .enumerate()
                .map(|(d, &len)| {
                    if d == axis {
                        SliceAxis {
                            start: start as i64,
                            step: 1,
                            len: n,
                        }
                    } else {
                        SliceAxis { start: 0, step: 1, len }
                    }
                })
                .collect::<Vec<_>>();
            start += n;
            slice(x, &axes)
        })
        .collect()
}

pub(crate) fn slice(x: &Tensor, axes: &[SliceAxis]) -> Tensor {
    let st = strides(&x.shape);
    let out: Vec<usize> = axes.iter().map(|a| a.len).collect();
    let mut idx = Vec::with_capacity(out.iter().product());
    for_each_index(&out, |i| {
        idx.push(
            i.iter()
                .zip(axes)
                .zip(&st)
                .map(|((&j, a), &s)| (a.start + j as i64 * a.step) as usize * s)
                .sum(),
        )
    });
    Tensor::new(out, x.data.gather(&idx))
}

/// Maps a padded coordinate back into `0..n`, or `None` for constant padding.
fn pad_source(i: i64, n: i64, mode: PadMode) -> Option<i64> {
    if (0..n).contains(&i) {
        return Some(i);
    }
    match mode {
        PadMode::Constant => None,
        PadMode::Edge => Some(i.clamp(0, n - 1)),
        PadMode::Wrap => Some(i.rem_euclid(n)),
        PadMode::Reflect => {
            if n == 1 {
                return Some(0);
            }
            let p = 2 * (n - 1);
            let m = i.rem_euclid(p);
            Some(if m < n { m } else { p - m })
        }
    }
}

pub(crate) fn pad(x: &Tensor, value: Option<&Tensor>, mode: PadMode, pads: &[i64], out: Vec<usize>) -> Result<Tensor> {
    let r = x.shape.len();
    let st = strides(&x.shape);
    let mut idx = Vec::with_capacity(out.iter().product());
    let mut fill = Vec::new();
    for_each_index(&out, |i| {
        let mut off = 0usize;
        let mut inside = true;
        for d in 0..r {
            match pad_source(i[d] as i64 - pads[d], x.shape[d] as i64, mode) {
                Some(s) => off += s as usize * st[d],
                None => inside = false,
            }
        }
        fill.push(!inside);
        idx.push(if inside { off } else { 0 });
    });
    if x.numel() == 0 {
        let v = value
            .map(|t| t.data.clone())
            .unwrap_or_else(|| Data::zeros(x.data.scalar(), 1));
        return Ok(Tensor::new(out, v.gather(&vec![0; idx.len()])));
    }
    let mut data = x.data.gather(&idx);
    if fill.iter().any(|&f| f) {
        let v = match value {
            Some(t) if t.numel() > 0 => t.cast(x.data.scalar()).data,
            _ => Data::zeros(x.data.scalar(), 1),
        };
        fn put<T: Elem>(d: &mut [T], v: &Data, fill: &[bool]) {
            let c = T::unwrap(v).expect("same type")[0];
            d.iter_mut().zip(fill).filter(|(_, f)| **f).for_each(|(x, _)| *x = c);
        }
        crate::with_data!(&mut data, d => put(d, &v, &fill));
    }
    Ok(Tensor::new(out, data))
}

fn index(i: i64, n: usize, op: &'static str) -> Result<usize> {
    let j = if i < 0 { i + n as i64 } else { i };
    if j < 0 || j >= n as i64 {
        return Err(IrError::eval(
            op,
            format!("index {i} out of range for axis of size {n}"),
        ));
    }
    Ok(j as usize)
}

pub(crate) fn gather(x: &Tensor, ind: &Tensor, axis: usize, out: Vec<usize>) -> Result<Tensor> {
    let n = x.shape[axis];
    let outer: usize = x.shape[..axis].iter().product();
    let inner: usize = x.shape[axis + 1..].iter().product();
    let ids = ind
        .to_i64_vec()
        .into_iter()
        .map(|i| index(i, n, "Gather"))
        .collect::<Result<Vec<_>>>()?;
    let mut idx = Vec::with_capacity(out.iter().product());
    for o in 0..outer {
        for &i in &ids {
            let base = (o * n + i) * inner;
            idx.extend(base..base + inner);
        }
    }
    Ok(Tensor::new(out, x.data.gather(&idx)))
}

pub(crate) fn gather_elements(x: &Tensor, ind: &Tensor, axis: usize) -> Result<Tensor> {
    let st = strides(&x.shape);
    let ids = ind.to_i64_vec();
    let mut idx = Vec::with_capacity(ids.len());
    let mut k = 0;
    let mut err = None;
    for_each_index(&ind.shape, |i| {
        let mut off = 0;
        for d in 0..i.len() {
            let c = if d == axis {
                index(ids[k], x.shape[d], "GatherElements").unwrap_or_else(|e| {
                    err = Some(e);
                    0
                })
            } else {
                i[d]
            };
            off += c * st[d];
        }
        idx.push(off);
        k += 1;
    });
    if let Some(e) = err {
        return Err(e);
    }
    Ok(Tensor::new(ind.shape.clone(), x.data.gather(&idx)))
}

pub(crate) fn gather_nd(x: &Tensor, ind: &Tensor, b: usize, out: Vec<usize>) -> Result<Tensor> {
    let q = ind.shape.len();
    let last = ind.shape[q - 1];
    let st = strides(&x.shape);
    let inner: usize = x.shape[b + last..].iter().product();
    let ids = ind.to_i64_vec();
    let tuples = ids.len() / last.max(1);
    let per_batch: usize = ind.shape[b..q - 1].iter().product::<usize>().max(1);
    let mut idx = Vec::with_capacity(out.iter().product());
    for t in 0..tuples {
        let batch = t / per_batch;
        // Offset of the batch prefix (row-major over the first b axes).
        let mut off = 0;
        let mut rem = batch;
        for d in (0..b).rev() {
            off += (rem % x.shape[d]) * st[d];
            rem /= x.shape[d];
        }
        for j in 0..last {
            off += index(ids[t * last + j], x.shape[b + j], "GatherND")? * st[b + j];
        }
        idx.extend(off..off + inner);
    }
    Ok(Tensor::new(out, x.data.gather(&idx)))
}

/// Writes `per` update elements at each target offset, combining by `red` (in update order,
/// so duplicate indices accumulate as ONNX specifies).
fn scatter(x: &Tensor, upd: &Tensor, targets: &[usize], red: ScatterReduction) -> Tensor {
    fn put<T: Elem>(d: &mut [T], u: &Data, targets: &[usize], per: usize, red: ScatterReduction) {
        let u = T::unwrap(u).expect("same type");
        for (k, &t) in targets.iter().enumerate() {
            for j in 0..per {
                let (old, new) = (d[t + j], u[k * per + j]);
                d[t + j] = match red {
                    ScatterReduction::None => new,
                    ScatterReduction::Add => T::from_f64(old.to_f64() + new.to_f64()),
                    ScatterReduction::Mul => T::from_f64(old.to_f64() * new.to_f64()),
                    ScatterReduction::Max => {
                        if new > old {
                            new
                        } else {
                            old
                        }
                    }
                    ScatterReduction::Min => {
                        if new < old {
                            new
                        } else {
                            old
                        }
                    }
                };
            }
        }
    }
    let mut data = x.data.clone();
    let per = upd.numel() / targets.len().max(1);
    crate::with_data!(&mut data, d => put(d, &upd.data, targets, per, red));
    Tensor::new(x.shape.clone(), data)
}

pub(crate) fn scatter_elements(
    x: &Tensor,
    ind: &Tensor,
    upd: &Tensor,
    axis: usize,
    red: ScatterReduction,
) -> Result<Tensor> {
    let st = strides(&x.shape);
    let ids = ind.to_i64_vec();
    let mut targets = Vec::with_capacity(ids.len());
    let mut k = 0;
    let mut err = None;
    for_each_index(&ind.shape, |i| {
        let mut off = 0;
        for d in 0..i.len() {
            let c = if d == axis {
                index(ids[k], x.shape[d], "ScatterElements").unwrap_or_else(|e| {
                    err = Some(e);
                    0
                })
            } else {
                i[d]
            };
            off += c * st[d];
        }
        targets.push(off);
        k += 1;
    });
    if let Some(e) = err {
        return Err(e);
    }
    Ok(scatter(x, upd, &targets, red))
}

pub(crate) fn scatter_nd(x: &Tensor, ind: &Tensor, upd: &Tensor, red: ScatterReduction) -> Result<Tensor> {
    let last = *ind.shape.last().unwrap_or(&0);
    let st = strides(&x.shape);
    let ids = ind.to_i64_vec();
    let targets = ids
        .chunks(last.max(1))
        .map(|t| {
            t.iter()
                .enumerate()
                .try_fold(0, |acc, (j, &i)| Ok(acc + index(i, x.shape[j], "ScatterND")? * st[j]))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(scatter(x, upd, &targets, red))
}

pub(crate) fn expand(x: &Tensor, shape: &[usize]) -> Tensor {
    Tensor::new(shape.to_vec(), x.data.gather(&broadcast_offsets(&x.shape, shape)))
}

pub(crate) fn tile(x: &Tensor, reps: &[usize]) -> Tensor {
    let st = strides(&x.shape);
    let out: Vec<usize> = x.shape.iter().zip(reps).map(|(a, b)| a * b).collect();
    let mut idx = Vec::with_capacity(out.iter().product());
    for_each_index(&out, |i| {
        idx.push(i.iter().zip(&x.shape).zip(&st).map(|((&j, &n), &s)| (j % n) * s).sum())
    });
    Tensor::new(out, x.data.gather(&idx))
}

pub(crate) fn one_hot(ind: &Tensor, values: &Tensor, axis: usize, depth: usize) -> Result<Tensor> {
    let ids = ind.to_i64_vec();
    let outer: usize = ind.shape[..axis].iter().product();
    let inner: usize = ind.shape[axis..].iter().product();
    let mut on = Vec::with_capacity(outer * depth * inner);
    for o in 0..outer {
        for d in 0..depth {
            for i in 0..inner {
                let v = ids[o * inner + i];
                let v = if v < 0 { v + depth as i64 } else { v };
                on.push(if v == d as i64 { 1 } else { 0 });
            }
        }
    }
    if values.numel() != 2 {
        return Err(IrError::eval("OneHot", "values must hold [off, on]"));
    }
    let mut shape = ind.shape.clone();
    shape.insert(axis, depth);
    Ok(Tensor::new(shape, values.data.gather(&on)))
}

pub(crate) fn trilu(x: &Tensor, upper: bool, k: i64) -> Tensor {
    let r = x.shape.len();
    let (rows, cols) = (x.shape[r - 2], x.shape[r - 1]);
    let mut keep = Vec::with_capacity(x.numel());
    for n in 0..x.numel() {
        let (i, j) = (((n / cols) % rows) as i64, (n % cols) as i64);
        keep.push(if upper { j - i >= k } else { j - i <= k });
    }
    fn mask<T: Elem>(v: &[T], keep: &[bool]) -> Vec<T> {
        v.iter()
            .zip(keep)
            .map(|(&x, &k)| if k { x } else { T::default() })
            .collect()
    }
    Tensor::new(x.shape.clone(), map_data!(&x.data, v => mask(v, &keep)))
}

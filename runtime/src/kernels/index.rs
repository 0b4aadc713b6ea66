//! Index-driven kernels on any element type: tiling, one-hot, GatherND, the scatters,
//! cumulative sums and top-k. Indices count from the end when negative and are clamped
//! to the axis (the evaluator refuses them out of range), so no access leaves its slice.

use super::Num;
use super::layout::MAX_RANK;

/// Index `i` wrapped once if negative and clamped to `[0, len)`.
#[inline]
fn clamp(i: i64, len: usize) -> usize {
    let i = if i < 0 { i + len as i64 } else { i };
    i.clamp(0, len as i64 - 1) as usize
}

/// `Tile`: `y` (shape `ys`) repeats `x` (shape `xs`) along every axis.
pub fn tile<T: Copy>(x: &[T], xs: &[usize], y: &mut [T], ys: &[usize]) {
    let r = xs.len();
    assert!(r <= MAX_RANK && ys.len() == r);
    let mut idx = [0usize; MAX_RANK];
    for v in y.iter_mut() {
        let mut off = 0;
        for d in 0..r {
            off = off * xs[d] + idx[d] % xs[d];
        }
        *v = x[off];
        for d in (0..r).rev() {
            idx[d] += 1;
            if idx[d] < ys[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// `OneHot` (indices of any numeric type, truncated): `y` `[outer, depth, inner]` is `values[1]` where the index equals the depth
/// position, else `values[0]`.
pub fn one_hot<I: Num, T: Copy>(idx: &[I], values: &[T], y: &mut [T], outer: usize, depth: usize, inner: usize) {
    for o in 0..outer {
        for d in 0..depth {
            for i in 0..inner {
                let v = idx[o * inner + i].to_f64() as i64;
                let v = if v < 0 { v + depth as i64 } else { v };
                y[(o * depth + d) * inner + i] = values[usize::from(v == d as i64)];
            }
        }
    }
}

/// The start of the slice one index tuple of `last` entries names in `x` (shape `xs`,
/// strides `st`), after `batch` leading batch axes given by `batch_index`.
fn tuple_offset<I: Copy + Into<i64>>(
    tuple: &[I],
    xs: &[usize],
    st: &[usize],
    batch: usize,
    mut batch_index: usize,
) -> usize {
    let mut off = 0;
    for d in (0..batch).rev() {
        off += (batch_index % xs[d]) * st[d];
        batch_index /= xs[d];
    }
    for (j, &i) in tuple.iter().enumerate() {
        off += clamp(i.into(), xs[batch + j]) * st[batch + j];
    }
    off
}

/// Row-major strides of `s` (rank at most [`MAX_RANK`]).
fn strides(s: &[usize]) -> [usize; MAX_RANK] {
    let mut st = [0usize; MAX_RANK];
    let mut acc = 1;
    for d in (0..s.len()).rev() {
        st[d] = acc;
        acc *= s[d];
    }
    st
}

/// `GatherND` with `batch` batch axes: `idx` holds tuples of `last` indices, `per_batch`
/// tuples per batch element; each copies a slice of `inner` elements.
pub fn gather_nd<T: Copy, I: Copy + Into<i64>>(
    x: &[T],
    xs: &[usize],
    idx: &[I],
    last: usize,
    batch: usize,
    per_batch: usize,
    y: &mut [T],
) {
    let st = strides(xs);
    let inner: usize = xs[batch + last..].iter().product();
    for (t, tuple) in idx.chunks_exact(last.max(1)).enumerate() {
        let off = tuple_offset(&tuple[..last], xs, &st[..xs.len()], batch, t / per_batch.max(1));
        y[t * inner..][..inner].copy_from_slice(&x[off..off + inner]);
    }
}

/// How a scatter combines an update with the element it lands on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combine {
    Replace,
    Add,
    Mul,
    Max,
    Min,
}

#[inline]
fn combine<T: Num>(c: Combine, old: T, new: T) -> T {
    match c {
        Combine::Replace => new,
        Combine::Add => T::from_f64(old.to_f64() + new.to_f64()),
        Combine::Mul => T::from_f64(old.to_f64() * new.to_f64()),
        Combine::Max => {
            if new > old {
                new
            } else {
                old
            }
        }
        Combine::Min => {
            if new < old {
                new
            } else {
                old
            }
        }
    }
}

/// `ScatterElements` along `axis`: `y` starts as `x`; each update at index position `p`
/// of `idx` (shape `is`) lands where `p` does with its `axis` coordinate replaced.
pub fn scatter_elements<T: Num, I: Copy + Into<i64>>(
    x: &[T],
    xs: &[usize],
    (idx, is): (&[I], &[usize]),
    upd: &[T],
    axis: usize,
    c: Combine,
    y: &mut [T],
) {
    y.copy_from_slice(x);
    let r = xs.len();
    let st = strides(xs);
    let mut at = [0usize; MAX_RANK];
    for (k, &i) in idx.iter().enumerate() {
        let mut off = 0;
        for d in 0..r {
            let v = if d == axis { clamp(i.into(), xs[d]) } else { at[d] };
            off += v * st[d];
        }
        y[off] = combine(c, y[off], upd[k]);
        for d in (0..r).rev() {
            at[d] += 1;
            if at[d] < is[d] {
                break;
            }
            at[d] = 0;
        }
    }
}

/// `ScatterND`: `y` starts as `x`; tuple `t` of `last` indices takes the `per` updates
/// `upd[t * per..]`.
pub fn scatter_nd<T: Num, I: Copy + Into<i64>>(
    x: &[T],
    xs: &[usize],
    idx: &[I],
    last: usize,
    upd: &[T],
    c: Combine,
    y: &mut [T],
) {
    y.copy_from_slice(x);
    let st = strides(xs);
    let tuples = idx.len() / last.max(1);
    let per = upd.len() / tuples.max(1);
    for (t, tuple) in idx.chunks_exact(last.max(1)).enumerate() {
        let off = tuple_offset(&tuple[..last], xs, &st[..xs.len()], 0, 0);
        for j in 0..per {
            y[off + j] = combine(c, y[off + j], upd[t * per + j]);
        }
    }
}

/// `CumSum` along the middle axis of `[outer, len, inner]`, accumulated in f64.
pub fn cumsum<T: Num>(
    x: &[T],
    y: &mut [T],
    (outer, len, inner): (usize, usize, usize),
    exclusive: bool,
    reverse: bool,
) {
    for o in 0..outer {
        for i in 0..inner {
            let mut acc = 0.0f64;
            for s in 0..len {
                let j = if reverse { len - 1 - s } else { s };
                let at = (o * len + j) * inner + i;
                if exclusive {
                    y[at] = T::from_f64(acc);
                    acc += x[at].to_f64();
                } else {
                    acc += x[at].to_f64();
                    y[at] = T::from_f64(acc);
                }
            }
        }
    }
}

/// `TopK` along the middle axis of `[outer, len, inner]`: the `k` largest (or smallest)
/// values, sorted, equal values in index order (the evaluator's stable sort), into
/// `values` and `indices` `[outer, k, inner]`.
pub fn top_k<T: Copy + PartialOrd>(
    x: &[T],
    values: &mut [T],
    indices: &mut [i64],
    (outer, len, inner): (usize, usize, usize),
    k: usize,
    largest: bool,
) {
    let better = |a: T, b: T| if largest { a > b } else { a < b };
    if k == 0 {
        return;
    }
    for o in 0..outer {
        for i in 0..inner {
            let at = |r: usize| (o * k + r) * inner + i;
            let mut count = 0;
            for j in 0..len {
                let v = x[(o * len + j) * inner + i];
                if count == k && !better(v, values[at(k - 1)]) {
                    continue;
                }
                let mut p = if count < k { count } else { k - 1 };
                count = (count + 1).min(k);
                while p > 0 && better(v, values[at(p - 1)]) {
                    values[at(p)] = values[at(p - 1)];
                    indices[at(p)] = indices[at(p - 1)];
                    p -= 1;
                }
                values[at(p)] = v;
                indices[at(p)] = j as i64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_index_order_on_ties() {
        let x = [3.0f32, 1.0, 3.0, 2.0];
        let (mut v, mut ix) = ([0.0f32; 3], [0i64; 3]);
        top_k(&x, &mut v, &mut ix, (1, 4, 1), 3, true);
        assert_eq!((v, ix), ([3.0, 3.0, 2.0], [0, 2, 3]));
    }

    #[test]
    fn scatter_nd_adds_duplicates() {
        let mut y = [0i32; 4];
        scatter_nd(&[1, 1, 1, 1], &[4], &[1i64, 1, -1], 1, &[5, 6, 7], Combine::Add, &mut y);
        assert_eq!(y, [1, 12, 1, 8]);
    }

    #[test]
    fn tile_repeats_each_axis() {
        let mut y = [0; 8];
        tile(&[1, 2], &[1, 2], &mut y, &[2, 4]);
        assert_eq!(y, [1, 2, 1, 2, 1, 2, 1, 2]);
    }
}

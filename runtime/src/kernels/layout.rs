//! Element loops over n-d index spaces: one odometer serves transposes, slices, broadcasts,
//! concatenation, padding and every elementwise op, with strides fixed by the generator.

/// Highest rank the n-d loops accept.
pub const MAX_RANK: usize = 8;

/// Calls `f` with `K` element offsets for every index of `shape` in row-major order:
/// offset `j` is `start[j] + sum(index[d] * strides[j][d])`.
#[inline]
pub fn for_each_nd<const K: usize>(
    shape: &[usize],
    start: [usize; K],
    strides: [&[isize]; K],
    mut f: impl FnMut([usize; K]),
) {
    let r = shape.len();
    assert!(r <= MAX_RANK && strides.iter().all(|s| s.len() == r));
    if shape.contains(&0) {
        return;
    }
    let mut idx = [0usize; MAX_RANK];
    let mut off = start;
    loop {
        f(off);
        // advance the odometer, fixing offsets for every digit that wraps
        let mut d = r;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            for (o, s) in off.iter_mut().zip(&strides) {
                *o = o.wrapping_add_signed(s[d]);
            }
            if idx[d] < shape[d] {
                break;
            }
            for (o, s) in off.iter_mut().zip(&strides) {
                *o = o.wrapping_add_signed(-s[d] * shape[d] as isize);
            }
            idx[d] = 0;
        }
    }
}

/// `y[i] = f(x[i])`.
#[inline]
pub fn map<T: Copy, U>(x: &[T], y: &mut [U], f: impl Fn(T) -> U) {
    for (d, &s) in y.iter_mut().zip(x) {
        *d = f(s);
    }
}

/// `y = f(a, b)` over `shape` (y contiguous), `a` and `b` read through broadcast strides.
#[inline]
pub fn zip_nd<A: Copy, B: Copy, C>(
    a: &[A],
    sa: &[isize],
    b: &[B],
    sb: &[isize],
    shape: &[usize],
    y: &mut [C],
    f: impl Fn(A, B) -> C,
) {
    if a.len() == y.len() && b.len() == y.len() && is_dense(sa, shape) && is_dense(sb, shape) {
        for ((d, &p), &q) in y.iter_mut().zip(a).zip(b) {
            *d = f(p, q);
        }
        return;
    }
    let mut i = 0;
    for_each_nd(shape, [0, 0], [sa, sb], |[p, q]| {
        y[i] = f(a[p], b[q]);
        i += 1;
    });
}

/// `y = f(a, b, c)` over `shape` (y contiguous), each input through broadcast strides.
#[inline]
#[allow(clippy::too_many_arguments)]
pub fn zip3_nd<A: Copy, B: Copy, C: Copy, D>(
    (a, sa): (&[A], &[isize]),
    (b, sb): (&[B], &[isize]),
    (c, sc): (&[C], &[isize]),
    shape: &[usize],
    y: &mut [D],
    f: impl Fn(A, B, C) -> D,
) {
    let mut i = 0;
    for_each_nd(shape, [0, 0, 0], [sa, sb, sc], |[p, q, r]| {
        y[i] = f(a[p], b[q], c[r]);
        i += 1;
    });
}

/// Whether `strides` are the row-major strides of `shape`.
fn is_dense(strides: &[isize], shape: &[usize]) -> bool {
    let mut expect = 1isize;
    for (&s, &n) in strides.iter().zip(shape).rev() {
        if n != 1 && s != expect {
            return false;
        }
        expect *= n as isize;
    }
    true
}

/// Copies `shape` elements from `x` to `y`, each side addressed by its own start and strides.
#[inline]
pub fn copy_nd<T: Copy>(
    x: &[T],
    x_start: usize,
    x_strides: &[isize],
    y: &mut [T],
    y_start: usize,
    y_strides: &[isize],
    shape: &[usize],
) {
    for_each_nd(shape, [x_start, y_start], [x_strides, y_strides], |[p, q]| y[q] = x[p]);
}

/// Gather along one axis: `x` seen as `[outer, len, inner]`, `idx` (negative counts from the
/// end, out-of-range clamps to the nearest row) picking rows of the middle axis into `y` `[outer, idx.len(), inner]`.
#[inline]
pub fn gather<T: Copy, I: Copy + Into<i64>>(x: &[T], idx: &[I], outer: usize, len: usize, inner: usize, y: &mut [T]) {
    let mut o = 0;
    for b in 0..outer {
        for &i in idx {
            let i: i64 = i.into();
            let row = if i < 0 { i + len as i64 } else { i }.clamp(0, len as i64 - 1) as usize;
            let src = &x[(b * len + row) * inner..][..inner];
            y[o..o + inner].copy_from_slice(src);
            o += inner;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_by_strides() {
        // x [2, 3] -> y [3, 2]
        let x = [1, 2, 3, 4, 5, 6];
        let mut y = [0; 6];
        copy_nd(&x, 0, &[1, 3], &mut y, 0, &[2, 1], &[3, 2]);
        assert_eq!(y, [1, 4, 2, 5, 3, 6]);
    }

    #[test]
    fn broadcast_and_reverse() {
        let a = [1, 2, 3];
        let b = [10, 20];
        let mut y = [0; 6];
        zip_nd(&a, &[0, 1], &b, &[1, 0], &[2, 3], &mut y, |p, q| p + q);
        assert_eq!(y, [11, 12, 13, 21, 22, 23]);
        let mut r = [0; 3];
        copy_nd(&a, 2, &[-1], &mut r, 0, &[1], &[3]);
        assert_eq!(r, [3, 2, 1]);
    }

    #[test]
    fn gather_negative() {
        let x = [1, 2, 3, 4, 5, 6];
        let mut y = [0; 4];
        gather(&x, &[-1i64, 0], 2, 3, 1, &mut y);
        assert_eq!(y, [3, 1, 6, 4]);
    }
}

/// `Trilu` on the last two axes (`rows x cols` matrices): keeps `j - i >= k` (upper) or
/// `j - i <= k` (lower), zero elsewhere.
pub fn trilu<T: Copy + Default>(x: &[T], y: &mut [T], rows: usize, cols: usize, upper: bool, k: i64) {
    for (n, (d, &v)) in y.iter_mut().zip(x).enumerate() {
        let (i, j) = (((n / cols.max(1)) % rows.max(1)) as i64, (n % cols.max(1)) as i64);
        let keep = if upper { j - i >= k } else { j - i <= k };
        *d = if keep { v } else { T::default() };
    }
}

/// `GatherElements`: `y[i] = x[i with axis coordinate replaced by idx[i]]`, over the index
/// tensor's `shape`; `x_strides` are `x`'s, `len` its extent on `axis` (negative indices
/// count from the end, out-of-range clamps).
pub fn gather_elements<T: Copy, I: Copy + Into<i64>>(
    x: &[T],
    x_strides: &[isize],
    idx: &[I],
    shape: &[usize],
    axis: usize,
    len: usize,
    y: &mut [T],
) {
    let mut strides = [0isize; MAX_RANK];
    strides[..x_strides.len()].copy_from_slice(x_strides);
    strides[axis] = 0; // the axis coordinate comes from the index
    let mut k = 0;
    for_each_nd(shape, [0], [&strides[..shape.len()]], |[base]| {
        let i: i64 = idx[k].into();
        let row = if i < 0 { i + len as i64 } else { i }.clamp(0, len as i64 - 1) as usize;
        y[k] = x[base + row * x_strides[axis] as usize];
        k += 1;
    });
}

/// How [`pad`] fills positions outside the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadMode {
    Constant,
    Reflect,
    Edge,
    Wrap,
}

/// `Pad`: output index `o` reads input index `o - begin` per axis, mapped back inside by
/// `mode` (a negative `begin` crops).
pub fn pad<T: Copy>(
    x: &[T],
    in_shape: &[usize],
    y: &mut [T],
    out_shape: &[usize],
    begin: &[i64],
    mode: PadMode,
    fill: T,
) {
    let r = in_shape.len();
    assert!(r <= MAX_RANK && out_shape.len() == r && begin.len() >= r);
    let mut idx = [0usize; MAX_RANK];
    for v in y.iter_mut() {
        let (mut off, mut inside) = (0usize, true);
        let mut stride = 1usize;
        for d in (0..r).rev() {
            let len = in_shape[d] as i64;
            let mut s = idx[d] as i64 - begin[d];
            match mode {
                PadMode::Constant => inside &= (0..len).contains(&s),
                PadMode::Edge => s = s.clamp(0, len - 1),
                PadMode::Wrap => s = s.rem_euclid(len),
                PadMode::Reflect => {
                    let p = 2 * (len - 1).max(1);
                    s = s.rem_euclid(p);
                    if s >= len {
                        s = p - s;
                    }
                }
            }
            if inside {
                off += s as usize * stride;
            }
            stride *= in_shape[d];
        }
        *v = if inside { x[off] } else { fill };
        for d in (0..r).rev() {
            idx[d] += 1;
            if idx[d] < out_shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// One axis of a [`resize`]: `count` taps per output index, each an input index (`u32::MAX`
/// where the output lies outside the crop and takes the extrapolation value) and a weight.
#[derive(Clone, Copy, Debug)]
pub struct ResizeAxis<'a> {
    pub index: &'a [u32],
    pub weight: &'a [f64],
    pub count: usize,
}

/// `Resize` as a separable sum: each output is `sum over the tap product of (product of the
/// axis weights) * x`, accumulated in f64 in the evaluator's order (zero weights skipped)
/// and rounded once.
pub fn resize(
    x: &[f32],
    in_strides: &[usize],
    out_shape: &[usize],
    axes: &[ResizeAxis],
    extrapolation: f32,
    y: &mut [f32],
) {
    let r = out_shape.len();
    assert!(r <= MAX_RANK && axes.len() == r && in_strides.len() == r);
    let mut o = [0usize; MAX_RANK];
    for v in y.iter_mut() {
        let outside = (0..r).any(|d| axes[d].index[o[d] * axes[d].count] == u32::MAX);
        *v = if outside {
            extrapolation
        } else {
            let mut k = [0usize; MAX_RANK];
            let mut acc = 0.0f64;
            'taps: loop {
                let (mut w, mut off) = (1.0f64, 0usize);
                for d in 0..r {
                    let t = o[d] * axes[d].count + k[d];
                    w *= axes[d].weight[t];
                    off += axes[d].index[t] as usize * in_strides[d];
                }
                if w != 0.0 {
                    acc += w * x[off] as f64;
                }
                let mut d = r;
                loop {
                    if d == 0 {
                        break 'taps;
                    }
                    d -= 1;
                    k[d] += 1;
                    if k[d] < axes[d].count {
                        break;
                    }
                    k[d] = 0;
                }
            }
            acc as f32
        };
        for d in (0..r).rev() {
            o[d] += 1;
            if o[d] < out_shape[d] {
                break;
            }
            o[d] = 0;
        }
    }
}

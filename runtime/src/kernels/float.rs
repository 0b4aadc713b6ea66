//! Float kernels in the evaluator's order of operations: sums start from the bias (or zero)
//! and run over input channels, then kernel taps, in index order; a zero weight is skipped
//! exactly as the evaluator's GEMM skips it.

use super::math;
use super::{ConvShape, Plane, Weight};

/// Convolution over `[N, C, H, W]` (or `[N, C, W]`) with `[M, C/group, KH, KW]` weights;
/// `act` is the fused activation. Weight-stationary: each output plane starts from the bias
/// and takes one pass per input channel and tap over exactly the outputs that tap reaches.
#[inline]
pub fn conv<W: Weight>(
    x: &[f32],
    w: &[W],
    bias: Option<&[f32]>,
    y: &mut [f32],
    s: &ConvShape,
    act: impl Fn(f32) -> f32,
) {
    let p = &s.plane;
    let (cg, mg) = (s.cin / s.group, s.cout / s.group);
    let (pin, pout, k) = (p.h * p.w, p.oh * p.ow, p.kh * p.kw);
    for b in 0..s.batch {
        for oc in 0..s.cout {
            let xg = &x[(b * s.cin + oc / mg * cg) * pin..][..cg * pin];
            let wo = &w[oc * cg * k..][..cg * k];
            let yo = &mut y[(b * s.cout + oc) * pout..][..pout];
            yo.fill(bias.map_or(0.0, |b| b[oc]));
            for (xc, wc) in xg.chunks_exact(pin).zip(wo.chunks_exact(k)) {
                for ky in 0..p.kh {
                    let (oy0, oy1) = p.rows_reached(ky);
                    for kx in 0..p.kw {
                        let wv = wc[ky * p.kw + kx].f32();
                        let (ox0, ox1) = p.cols_reached(kx);
                        if wv == 0.0 || ox0 == ox1 {
                            continue;
                        }
                        for oy in oy0..oy1 {
                            let xrow = &xc[(oy * p.sh + ky * p.dh - p.ph) * p.w..][..p.w];
                            let xs = &xrow[ox0 * p.sw + kx * p.dw - p.pw..];
                            let yrow = &mut yo[oy * p.ow..][ox0..ox1];
                            if p.sw == 1 {
                                for (yv, &xv) in yrow.iter_mut().zip(xs) {
                                    *yv += xv * wv;
                                }
                            } else {
                                for (yv, &xv) in yrow.iter_mut().zip(xs.iter().step_by(p.sw)) {
                                    *yv += xv * wv;
                                }
                            }
                        }
                    }
                }
            }
            for v in yo.iter_mut() {
                *v = act(*v);
            }
        }
    }
}

/// `Gemm`: `[M, N] = alpha * op(A) op(B) + beta * C`, `op` an optional transpose.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    pub beta: f32,
}

/// `Gemm` with `c` broadcast through its (row, column) strides. Each output sums over `k`
/// in order from zero, then scales by alpha and adds `beta * c`.
#[inline]
pub fn gemm<W: Weight>(
    a: &[f32],
    b: &[W],
    c: Option<(&[f32], [isize; 2])>,
    y: &mut [f32],
    s: &GemmShape,
    act: impl Fn(f32) -> f32,
) {
    let (m, n, k) = (s.m, s.n, s.k);
    for (i, yr) in y.chunks_exact_mut(n).take(m).enumerate() {
        let a_at = |p: usize| if s.trans_a { a[p * m + i] } else { a[i * k + p] };
        if s.trans_b {
            for (j, yv) in yr.iter_mut().enumerate() {
                let mut acc = 0.0f32;
                for (p, &bv) in b[j * k..][..k].iter().enumerate() {
                    let av = a_at(p);
                    if av != 0.0 {
                        acc += av * bv.f32();
                    }
                }
                *yv = acc;
            }
        } else {
            yr.fill(0.0);
            for (p, br) in b.chunks_exact(n).take(k).enumerate() {
                let av = a_at(p);
                if av != 0.0 {
                    for (yv, &bv) in yr.iter_mut().zip(br) {
                        *yv += av * bv.f32();
                    }
                }
            }
        }
        for (j, yv) in yr.iter_mut().enumerate() {
            let mut v = *yv;
            if s.alpha != 1.0 {
                v *= s.alpha;
            }
            if let Some((c, [rs, cs])) = c {
                v += s.beta * c[(i as isize * rs + j as isize * cs) as usize];
            }
            *yv = act(v);
        }
    }
}

/// Batched `[M, K] x [K, N]`; `batches` lists each product's element offsets into `a` and `b`.
#[inline]
pub fn matmul<W: Weight>(a: &[f32], b: &[W], y: &mut [f32], m: usize, k: usize, n: usize, batches: &[(usize, usize)]) {
    for (yb, &(ao, bo)) in y.chunks_exact_mut((m * n).max(1)).zip(batches) {
        if k == 0 {
            yb.fill(0.0);
            continue;
        }
        for (ar, yr) in a[ao..][..m * k].chunks_exact(k).zip(yb.chunks_exact_mut(n.max(1))) {
            yr.fill(0.0);
            for (&av, br) in ar.iter().zip(b[bo..][..k * n].chunks_exact(n.max(1))) {
                if av != 0.0 {
                    for (yv, &bv) in yr.iter_mut().zip(br) {
                        *yv += av * bv.f32();
                    }
                }
            }
        }
    }
}

/// [`matmul`] on binary16 operands (bit patterns or weights): each output a dot product
/// in f32 in `p` order, rounded once to binary16 (the evaluator computes f16 in f32).
pub fn matmul_half<A: Weight, B: Weight>(
    a: &[A],
    b: &[B],
    y: &mut [u16],
    (m, k, n): (usize, usize, usize),
    batches: &[(usize, usize)],
) {
    for (yb, &(ao, bo)) in y.chunks_exact_mut((m * n).max(1)).zip(batches) {
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f32;
                for p in 0..k {
                    acc += a[ao + i * k + p].f32() * b[bo + p * n + j].f32();
                }
                yb[i * n + j] = super::d2h(acc as f64);
            }
        }
    }
}

/// [`softmax`] on binary16: the exponentials summed first, then each recomputed and
/// divided, so every output is the evaluator's `e / sum`, rounded once.
pub fn softmax_half<X: Weight>(x: &[X], y: &mut [u16], outer: usize, len: usize, inner: usize) {
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * len + j) * inner + i;
            let mut mx = f32::NEG_INFINITY;
            for j in 0..len {
                if x[at(j)].f32() > mx {
                    mx = x[at(j)].f32();
                }
            }
            let mut sum = 0.0f32;
            for j in 0..len {
                sum += math::exp(x[at(j)].f32() - mx);
            }
            for j in 0..len {
                y[at(j)] = super::d2h((math::exp(x[at(j)].f32() - mx) / sum) as f64);
            }
        }
    }
}

/// Max over each window of `channels` planes; padding never wins. NaN propagates.
#[inline]
pub fn max_pool<T: Copy + PartialOrd>(x: &[T], y: &mut [T], channels: usize, p: &Plane, lowest: T) {
    let (pin, pout) = (p.h * p.w, p.oh * p.ow);
    for c in 0..channels {
        let xc = &x[c * pin..][..pin];
        for oy in 0..p.oh {
            for ox in 0..p.ow {
                let mut m = lowest;
                for ky in 0..p.kh {
                    for kx in 0..p.kw {
                        if let Some(i) = p.tap(oy, ox, ky, kx) {
                            let v = xc[i];
                            #[allow(clippy::eq_op)]
                            if v > m || v != v {
                                m = v;
                            }
                        }
                    }
                }
                y[c * pout + oy * p.ow + ox] = m;
            }
        }
    }
}

/// Mean over each window. With `pad_ends = Some((end_h, end_w))` the divisor counts taps in
/// the padded extent (`count_include_pad`); otherwise only taps inside the input.
#[inline]
pub fn avg_pool(x: &[f32], y: &mut [f32], channels: usize, p: &Plane, pad_ends: Option<(usize, usize)>) {
    let (pin, pout) = (p.h * p.w, p.oh * p.ow);
    let within = |o: usize, k: usize, s: usize, d: usize, pad: usize, n: usize| {
        let pos = (o * s + k * d) as i64 - pad as i64;
        pos >= -(pad as i64) && pos < n as i64
    };
    for c in 0..channels {
        let xc = &x[c * pin..][..pin];
        for oy in 0..p.oh {
            for ox in 0..p.ow {
                let (mut sum, mut n) = (0.0f32, 0usize);
                for ky in 0..p.kh {
                    for kx in 0..p.kw {
                        if let Some(i) = p.tap(oy, ox, ky, kx) {
                            sum += xc[i];
                            n += 1;
                        }
                    }
                }
                if let Some((eh, ew)) = pad_ends {
                    let rows = (0..p.kh).filter(|&k| within(oy, k, p.sh, p.dh, p.ph, p.h + eh)).count();
                    let cols = (0..p.kw).filter(|&k| within(ox, k, p.sw, p.dw, p.pw, p.w + ew)).count();
                    n = rows * cols;
                }
                y[c * pout + oy * p.ow + ox] = sum / n.max(1) as f32;
            }
        }
    }
}

/// Softmax along the middle axis of `[outer, len, inner]`.
#[inline]
pub fn softmax(x: &[f32], y: &mut [f32], outer: usize, len: usize, inner: usize) {
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * len + j) * inner + i;
            let mut mx = f32::NEG_INFINITY;
            for j in 0..len {
                if x[at(j)] > mx {
                    mx = x[at(j)];
                }
            }
            let mut sum = 0.0f32;
            for j in 0..len {
                let e = math::exp(x[at(j)] - mx);
                y[at(j)] = e;
                sum += e;
            }
            for j in 0..len {
                y[at(j)] = y[at(j)] / sum;
            }
        }
    }
}

/// `ConvTranspose` over `[N, C, H, W]` (or `[N, C, W]`) with `[C, M/group, KH, KW]`
/// weights: each input element scatters `x * w` to output `(i * stride + k * dilation -
/// pad)` when that lies inside; `plane` holds the input (`h, w`) and output (`oh, ow`)
/// extents. Sums run in the evaluator's order: input channel, tap, output channel, input
/// position.
#[inline]
pub fn conv_transpose(x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32], s: &ConvShape) {
    let p = &s.plane;
    let (cg, mg) = (s.cin / s.group, s.cout / s.group);
    let (pin, pout, k) = (p.h * p.w, p.oh * p.ow, p.kh * p.kw);
    for b in 0..s.batch {
        for oc in 0..s.cout {
            y[(b * s.cout + oc) * pout..][..pout].fill(bias.map_or(0.0, |b| b[oc]));
        }
        for gi in 0..s.group {
            for cc in 0..cg {
                let ch = gi * cg + cc;
                let xc = &x[(b * s.cin + ch) * pin..][..pin];
                for kk in 0..k {
                    let (ky, kx) = (kk / p.kw, kk % p.kw);
                    for mm in 0..mg {
                        let wv = w[(ch * mg + mm) * k + kk];
                        let yo = &mut y[(b * s.cout + gi * mg + mm) * pout..][..pout];
                        for (i, &xv) in xc.iter().enumerate() {
                            let oy = ((i / p.w) * p.sh + ky * p.dh).checked_sub(p.ph);
                            let ox = ((i % p.w) * p.sw + kx * p.dw).checked_sub(p.pw);
                            if let (Some(oy), Some(ox)) = (oy, ox)
                                && oy < p.oh
                                && ox < p.ow
                            {
                                yo[oy * p.ow + ox] += xv * wv;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `LogSoftmax` along the middle axis of `[outer, len, inner]`: `x - max - ln(sum(e^(x - max)))`.
#[inline]
pub fn log_softmax(x: &[f32], y: &mut [f32], outer: usize, len: usize, inner: usize) {
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * len + j) * inner + i;
            let mut mx = f32::NEG_INFINITY;
            for j in 0..len {
                if x[at(j)] > mx {
                    mx = x[at(j)];
                }
            }
            let mut sum = 0.0f32;
            for j in 0..len {
                sum += math::exp(x[at(j)] - mx);
            }
            let ln = libm::logf(sum);
            for j in 0..len {
                y[at(j)] = x[at(j)] - mx - ln;
            }
        }
    }
}

/// `Hardmax` along the middle axis of `[outer, len, inner]`: 1 at the first maximum.
#[inline]
pub fn hardmax(x: &[f32], y: &mut [f32], outer: usize, len: usize, inner: usize) {
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * len + j) * inner + i;
            let (mut mx, mut arg) = (f32::NEG_INFINITY, 0);
            for j in 0..len {
                y[at(j)] = 0.0;
                if x[at(j)] > mx {
                    mx = x[at(j)];
                    arg = j;
                }
            }
            if len > 0 {
                y[at(arg)] = 1.0;
            }
        }
    }
}

/// `LayerNormalization` over rows of `inner` elements, with a scale (and bias) per element of
/// the row; mean and variance summed in order as the evaluator does.
#[inline]
/// The mean of `x`, then the mean of its squared deviations (each a sum in index order
/// divided by the count, the evaluator's steps).
fn moments(x: &[f32]) -> (f32, f32) {
    let n = x.len() as f32;
    let mut sum = 0.0f32;
    for &v in x {
        sum += v;
    }
    let mean = sum / n;
    let mut sq = 0.0f32;
    for &v in x {
        sq += (v - mean) * (v - mean);
    }
    (mean, sq / n)
}

pub fn layer_norm(x: &[f32], scale: &[f32], bias: Option<&[f32]>, y: &mut [f32], inner: usize, eps: f32) {
    for (xr, yr) in x.chunks_exact(inner.max(1)).zip(y.chunks_exact_mut(inner.max(1))) {
        let (mean, var) = moments(xr);
        let inv = 1.0 / libm::sqrtf(var + eps);
        for (j, (d, &v)) in yr.iter_mut().zip(xr).enumerate() {
            let mut o = (v - mean) * inv * scale[j];
            if let Some(b) = bias {
                o += b[j];
            }
            *d = o;
        }
    }
}

/// Inference BatchNormalization over `[n, c, inner]`: per channel `y = x * k + s` with
/// `k = scale / sqrt(var + eps)` and `s = bias - mean * k` (the evaluator's steps).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm(
    x: &[f32],
    scale: &[f32],
    bias: &[f32],
    mean: &[f32],
    var: &[f32],
    y: &mut [f32],
    c: usize,
    inner: usize,
    eps: f32,
) {
    let plane = (c * inner).max(1);
    for (xb, yb) in x.chunks_exact(plane).zip(y.chunks_exact_mut(plane)) {
        for ch in 0..c {
            let k = scale[ch] / libm::sqrtf(var[ch] + eps);
            let s = bias[ch] - mean[ch] * k;
            let r = ch * inner..(ch + 1) * inner;
            for (d, &v) in yb[r.clone()].iter_mut().zip(&xb[r]) {
                *d = v * k + s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plane(h: usize, w: usize, k: usize, pad: usize) -> Plane {
        let o = |n: usize| n + 2 * pad - k + 1;
        Plane {
            h,
            w,
            oh: o(h),
            ow: o(w),
            kh: k,
            kw: k,
            sh: 1,
            sw: 1,
            dh: 1,
            dw: 1,
            ph: pad,
            pw: pad,
        }
    }

    #[test]
    fn conv_same_padding_sums_neighbours() {
        let x = [1.0f32; 9];
        let w = [1.0f32; 9];
        let mut y = [0.0f32; 9];
        let s = ConvShape {
            batch: 1,
            cin: 1,
            cout: 1,
            group: 1,
            plane: plane(3, 3, 3, 1),
        };
        conv(&x, &w, Some(&[0.5]), &mut y, &s, |v| v);
        assert_eq!(y, [4.5, 6.5, 4.5, 6.5, 9.5, 6.5, 4.5, 6.5, 4.5]);
    }

    #[test]
    fn average_counts_padding_on_request() {
        let x = [4.0f32; 4];
        let p = plane(2, 2, 3, 1);
        let mut y = [0.0f32; 4];
        avg_pool(&x, &mut y, 1, &p, None);
        assert_eq!(y, [4.0; 4]);
        avg_pool(&x, &mut y, 1, &p, Some((1, 1)));
        assert_eq!(y, [16.0 / 9.0; 4]);
    }

    #[test]
    fn gemm_transposes_and_broadcasts() {
        // A^T with A = [[1, 3], [2, 4]] (k x m), B = I, C = [10, 20] per column.
        let s = GemmShape {
            m: 2,
            n: 2,
            k: 2,
            trans_a: true,
            trans_b: false,
            alpha: 2.0,
            beta: 1.0,
        };
        let mut y = [0.0; 4];
        gemm(
            &[1.0, 3.0, 2.0, 4.0],
            &[1.0, 0.0, 0.0, 1.0],
            Some((&[10.0, 20.0], [0, 1])),
            &mut y,
            &s,
            |v| v,
        );
        assert_eq!(y, [12.0, 24.0, 16.0, 28.0]);
    }
}

/// An n-d pooling window: spatial input and output extents, kernel, strides, dilations
/// and pads (all begins, then all ends).
#[derive(Clone, Copy, Debug)]
pub struct WindowNd<'a> {
    pub input: &'a [usize],
    pub output: &'a [usize],
    pub kernel: &'a [usize],
    pub strides: &'a [usize],
    pub dilations: &'a [usize],
    pub pads: &'a [usize],
}

/// How an n-d pool combines its taps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolNd {
    Max,
    /// Average; with `true` the divisor counts taps inside the padded extent.
    Avg(bool),
    /// `(sum |v|^p)^(1/p)`.
    Lp(i32),
}

/// `a^b` by repeated squaring, as compiler-rt's `__powisf2` (what `f32::powi` calls).
#[inline]
fn powi(mut a: f32, mut b: i32) -> f32 {
    let recip = b < 0;
    let mut r = 1.0f32;
    loop {
        if b & 1 != 0 {
            r *= a;
        }
        b /= 2;
        if b == 0 {
            break;
        }
        a *= a;
    }
    if recip { 1.0 / r } else { r }
}

/// Pooling over any number of spatial axes, per plane and output position a loop over
/// the taps in index order (the evaluator's), skipping those in the padding.
pub fn pool_nd(x: &[f32], y: &mut [f32], planes: usize, w: &WindowNd, kind: PoolNd) {
    use super::layout::MAX_RANK;
    let r = w.input.len();
    assert!(r <= MAX_RANK);
    let (pin, pout): (usize, usize) = (w.input.iter().product(), w.output.iter().product());
    let taps: usize = w.kernel.iter().product();
    let mut o = [0usize; MAX_RANK];
    for at in 0..pout {
        for c in 0..planes {
            let mut acc = if kind == PoolNd::Max { f32::NEG_INFINITY } else { 0.0 };
            let (mut cnt, mut cnt_pad) = (0usize, 0usize);
            let mut k = [0usize; MAX_RANK];
            for _ in 0..taps {
                let (mut off, mut inside, mut inside_pad) = (0usize, true, true);
                for d in 0..r {
                    let p = (o[d] * w.strides[d] + k[d] * w.dilations[d]) as i64 - w.pads[d] as i64;
                    inside_pad &= p >= -(w.pads[d] as i64) && p < (w.input[d] + w.pads[d + r]) as i64;
                    inside &= p >= 0 && p < w.input[d] as i64;
                    off = off * w.input[d] + p.max(0) as usize;
                }
                cnt_pad += usize::from(inside_pad);
                if inside {
                    let v = x[c * pin + off];
                    acc = match kind {
                        PoolNd::Max => {
                            if v > acc || v.is_nan() {
                                v
                            } else {
                                acc
                            }
                        }
                        PoolNd::Avg(_) => acc + v,
                        PoolNd::Lp(e) => acc + powi(libm::fabsf(v), e),
                    };
                    cnt += 1;
                }
                for d in (0..r).rev() {
                    k[d] += 1;
                    if k[d] < w.kernel[d] {
                        break;
                    }
                    k[d] = 0;
                }
            }
            y[c * pout + at] = match kind {
                PoolNd::Max => acc,
                PoolNd::Avg(include_pad) => acc / (if include_pad { cnt_pad } else { cnt }).max(1) as f32,
                PoolNd::Lp(e) => libm::powf(acc, 1.0 / e as f32),
            };
        }
        for d in (0..r).rev() {
            o[d] += 1;
            if o[d] < w.output[d] {
                break;
            }
            o[d] = 0;
        }
    }
}

/// InstanceNormalization over `[n, c, inner]`: per plane the mean, then the mean squared
/// deviation, then `(x - mean) * scale / sqrt(var + eps) + bias` (the evaluator's steps).
pub fn instance_norm(x: &[f32], scale: &[f32], bias: &[f32], y: &mut [f32], c: usize, inner: usize, eps: f32) {
    for (p, (xr, yr)) in x
        .chunks_exact(inner.max(1))
        .zip(y.chunks_exact_mut(inner.max(1)))
        .enumerate()
    {
        let (mean, var) = moments(xr);
        let a = scale[p % c] / libm::sqrtf(var + eps);
        for (d, &v) in yr.iter_mut().zip(xr) {
            *d = (v - mean) * a + bias[p % c];
        }
    }
}

/// Local response normalization across the channels of `[n, c, inner]`.
#[allow(clippy::too_many_arguments)]
pub fn lrn(
    x: &[f32],
    y: &mut [f32],
    (n, c, inner): (usize, usize, usize),
    size: usize,
    alpha: f32,
    beta: f32,
    bias: f32,
) {
    let (lo, hi) = ((size - 1) / 2, size - 1 - (size - 1) / 2);
    let scale = (alpha as f64 / size as f64) as f32;
    for b in 0..n {
        for ch in 0..c {
            let (from, to) = (ch.saturating_sub(lo), (ch + hi).min(c - 1));
            for i in 0..inner {
                let mut sq = 0.0f32;
                for cc in from..=to {
                    let v = x[(b * c + cc) * inner + i];
                    sq += v * v;
                }
                let at = (b * c + ch) * inner + i;
                y[at] = x[at] / libm::powf(bias + scale * sq, beta);
            }
        }
    }
}

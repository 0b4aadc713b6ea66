//! Integer kernels, step for step the evaluator's (`kiln_ir::eval::quant`): int32
//! accumulators that wrap, the input zero point subtracted per tap (so padding adds nothing),
//! and the fixed-point rescale of the crate root.

use super::{ConvShape, Plane};
use crate::{ADD_LEFT_SHIFT, Requant, multiply_by_quantized_multiplier as mbqm};

/// Output stage of an integer product: zero points, one rescale per output channel (or one
/// for all), and the clamp that carries a folded activation.
#[derive(Clone, Copy, Debug)]
pub struct QLinear<'a> {
    pub input_zp: i32,
    pub output_zp: i32,
    pub requant: &'a [Requant],
    pub act_min: i32,
    pub act_max: i32,
    /// TFLite's two-step rescale ([`crate::multiply_by_quantized_multiplier_tflite`]).
    pub tflite: bool,
}

/// The input zero point and output stage an integer product is generic over: a static
/// requantization to int8 ([`QLinear`]) or the hybrid rescale to f32 ([`DynRescale`]).
pub trait Rescale {
    type Out: Copy;
    fn input_zp(&self) -> i32;
    fn finish(&self, channel: usize, acc: i32) -> Self::Out;
}

impl Rescale for QLinear<'_> {
    type Out = i8;
    #[inline]
    fn input_zp(&self) -> i32 {
        self.input_zp
    }
    #[inline]
    fn finish(&self, channel: usize, acc: i32) -> i8 {
        let r = self.requant[if self.requant.len() == 1 { 0 } else { channel }];
        rescale(self.tflite, acc, r)
            .saturating_add(self.output_zp)
            .clamp(self.act_min, self.act_max) as i8
    }
}

/// The fixed-point rescale: TFLite's two steps, or ONNX Runtime's one.
#[inline(always)]
pub fn rescale(tflite: bool, x: i32, r: Requant) -> i32 {
    if tflite {
        crate::multiply_by_quantized_multiplier_tflite(x, r)
    } else {
        mbqm(x, r)
    }
}

/// Hybrid output stage: the input's run-time parameters and the weights' per-channel scales.
#[derive(Clone, Copy, Debug)]
pub struct DynRescale<'a> {
    pub input_scale: f32,
    pub input_zp: i32,
    pub weight_scales: &'a [f32],
}

impl Rescale for DynRescale<'_> {
    type Out = f32;
    #[inline]
    fn input_zp(&self) -> i32 {
        self.input_zp
    }
    #[inline]
    fn finish(&self, channel: usize, acc: i32) -> f32 {
        let sw = self.weight_scales[if self.weight_scales.len() == 1 { 0 } else { channel }];
        crate::dynamic_rescale(acc, self.input_scale, sw)
    }
}

/// Unpacks weights packed by [`crate::pack_weights`] into `out` (as many as it holds) and
/// returns them as int8.
pub fn unpack_weights<'a>(p: &[u8], bits: u8, out: &'a mut [u8]) -> &'a [i8] {
    for (i, d) in out.iter_mut().enumerate() {
        *d = crate::packed_weight(p, bits, i) as u8;
    }
    bytemuck::cast_slice(out)
}

/// Integer convolution, int8 input and weights, int32 bias; `acc` holds one output plane
/// of accumulators. Weight-stationary as the float [`conv`](super::float::conv).
#[inline]
pub fn qconv<R: Rescale>(
    x: &[i8],
    w: &[i8],
    bias: Option<&[i32]>,
    y: &mut [R::Out],
    acc: &mut [i32],
    s: &ConvShape,
    q: &R,
) {
    let p = &s.plane;
    let (cg, mg) = (s.cin / s.group, s.cout / s.group);
    let (pin, pout, k) = (p.h * p.w, p.oh * p.ow, p.kh * p.kw);
    if k == 1 && p.sh == 1 && p.sw == 1 && p.ph == 0 && p.pw == 0 && pin == pout && s.group == 1 {
        return qconv_1x1(x, w, bias, y, s, q);
    }
    if pout < 16 {
        return qconv_few_outputs(x, w, bias, y, s, q);
    }
    let acc = &mut acc[..pout];
    let zp = q.input_zp();
    for b in 0..s.batch {
        for oc in 0..s.cout {
            let xg = &x[(b * s.cin + oc / mg * cg) * pin..][..cg * pin];
            let wo = &w[oc * cg * k..][..cg * k];
            acc.fill(bias.map_or(0, |b| b[oc]));
            accumulate_plane(xg, wo, acc, p, zp, |a: &mut i32, v| *a = a.wrapping_add(v));
            let yo = &mut y[(b * s.cout + oc) * pout..][..pout];
            for (d, &a) in yo.iter_mut().zip(acc.iter()) {
                *d = q.finish(oc, a);
            }
        }
    }
}

/// The weight-stationary plane loop both convolutions share: for each input channel of
/// the group (`xg`, planes of `p.h * p.w`) and each nonzero tap of its weights (`wo`), the
/// products `(x - zp) * w` added by `add` into the output plane `acc`, over the outputs
/// whose tap lands inside the input. `(x - zp) * w` fits i32 for int8 and int16 inputs.
#[inline(always)]
fn accumulate_plane<X: Copy + Into<i32>, A>(
    xg: &[X],
    wo: &[i8],
    acc: &mut [A],
    p: &Plane,
    zp: i32,
    add: impl Fn(&mut A, i32),
) {
    let (pin, k) = (p.h * p.w, p.kh * p.kw);
    for (xc, wc) in xg.chunks_exact(pin).zip(wo.chunks_exact(k)) {
        for ky in 0..p.kh {
            let (oy0, oy1) = p.rows_reached(ky);
            for kx in 0..p.kw {
                let wv = wc[ky * p.kw + kx] as i32;
                let (ox0, ox1) = p.cols_reached(kx);
                if wv == 0 || ox0 == ox1 {
                    continue;
                }
                for oy in oy0..oy1 {
                    let xrow = &xc[(oy * p.sh + ky * p.dh - p.ph) * p.w..][..p.w];
                    let xs = &xrow[ox0 * p.sw + kx * p.dw - p.pw..];
                    let arow = &mut acc[oy * p.ow..][ox0..ox1];
                    if p.sw == 1 {
                        for (a, &xv) in arow.iter_mut().zip(xs) {
                            add(a, (xv.into() - zp) * wv);
                        }
                    } else {
                        for (a, &xv) in arow.iter_mut().zip(xs.iter().step_by(p.sw)) {
                            add(a, (xv.into() - zp) * wv);
                        }
                    }
                }
            }
        }
    }
}

/// Output-stationary convolution for small output planes (a long kernel over a short signal,
/// e.g. an STFT as a convolution), where a pass per tap would reach only a few outputs:
/// per output the taps inside the input form one contiguous range per row, summed in a
/// register with the zero point taken out of the sum as in [`qconv_1x1`].
fn qconv_few_outputs<R: Rescale>(x: &[i8], w: &[i8], bias: Option<&[i32]>, y: &mut [R::Out], s: &ConvShape, q: &R) {
    let p = &s.plane;
    let (cg, mg) = (s.cin / s.group, s.cout / s.group);
    let (pin, pout, k) = (p.h * p.w, p.oh * p.ow, p.kh * p.kw);
    for b in 0..s.batch {
        for oc in 0..s.cout {
            let xg = &x[(b * s.cin + oc / mg * cg) * pin..][..cg * pin];
            let wo = &w[oc * cg * k..][..cg * k];
            let yo = &mut y[(b * s.cout + oc) * pout..][..pout];
            for oy in 0..p.oh {
                let (ky0, ky1) = p.taps_y(oy);
                for ox in 0..p.ow {
                    let (kx0, kx1) = p.taps_x(ox);
                    let (mut acc, mut wsum) = (bias.map_or(0, |b| b[oc]), 0i32);
                    if kx0 < kx1 {
                        for (xc, wc) in xg.chunks_exact(pin).zip(wo.chunks_exact(k)) {
                            for ky in ky0..ky1 {
                                let xrow = &xc[(oy * p.sh + ky * p.dh - p.ph) * p.w..][..p.w];
                                let wrow = &wc[ky * p.kw..][kx0..kx1];
                                let xs = &xrow[ox * p.sw + kx0 * p.dw - p.pw..];
                                if p.dw == 1 {
                                    for (&xv, &wv) in xs[..wrow.len()].iter().zip(wrow) {
                                        acc = acc.wrapping_add(xv as i32 * wv as i32);
                                        wsum = wsum.wrapping_add(wv as i32);
                                    }
                                } else {
                                    for (&xv, &wv) in xs.iter().step_by(p.dw).zip(wrow) {
                                        acc = acc.wrapping_add(xv as i32 * wv as i32);
                                        wsum = wsum.wrapping_add(wv as i32);
                                    }
                                }
                            }
                        }
                    }
                    let acc = acc.wrapping_sub(q.input_zp().wrapping_mul(wsum));
                    yo[oy * p.ow + ox] = q.finish(oc, acc);
                }
            }
        }
    }
}

/// A 1x1, stride-1, unpadded convolution, output-stationary: the zero point comes out of the
/// sum (`sum((x - zp) * w) = sum(x * w) - zp * sum(w)`, exact in wrapping i32), so each
/// position is a plain dot product over the input channels kept in a register.
fn qconv_1x1<R: Rescale>(x: &[i8], w: &[i8], bias: Option<&[i32]>, y: &mut [R::Out], s: &ConvShape, q: &R) {
    let pos = s.plane.h * s.plane.w;
    for b in 0..s.batch {
        let xb = &x[b * s.cin * pos..][..s.cin * pos];
        for oc in 0..s.cout {
            let wo = &w[oc * s.cin..][..s.cin];
            let wsum = wo.iter().fold(0i32, |a, &v| a.wrapping_add(v as i32));
            let start = bias.map_or(0, |b| b[oc]).wrapping_sub(q.input_zp().wrapping_mul(wsum));
            let yo = &mut y[(b * s.cout + oc) * pos..][..pos];
            for (i, d) in yo.iter_mut().enumerate() {
                let mut acc = start;
                for (xc, &wv) in xb.chunks_exact(pos).zip(wo) {
                    acc = acc.wrapping_add(xc[i] as i32 * wv as i32);
                }
                *d = q.finish(oc, acc);
            }
        }
    }
}

/// `[rows, K] x [K, N]` integer product (`w` row-major `[K, N]`) with an int32 bias per
/// column; `acc` holds one row of `N` accumulators.
#[inline]
pub fn qmatmul<R: Rescale>(
    x: &[i8],
    w: &[i8],
    bias: Option<&[i32]>,
    y: &mut [R::Out],
    acc: &mut [i32],
    n: usize,
    q: &R,
) {
    let acc = &mut acc[..n];
    let k = w.len() / n.max(1);
    let zp = q.input_zp();
    for (xr, yr) in x.chunks_exact(k.max(1)).zip(y.chunks_exact_mut(n.max(1))) {
        match bias {
            Some(b) => acc.copy_from_slice(&b[..n]),
            None => acc.fill(0),
        }
        for (&xe, wr) in xr.iter().zip(w.chunks_exact(n.max(1))) {
            let xv = xe as i32 - zp;
            if xv != 0 {
                for (a, &we) in acc.iter_mut().zip(wr) {
                    *a = a.wrapping_add(xv * we as i32);
                }
            }
        }
        for (j, (d, &a)) in yr.iter_mut().zip(acc.iter()).enumerate() {
            *d = q.finish(j, a);
        }
    }
}

impl QLinear<'_> {
    /// The 16x8 output stage: the i64 sum rescaled by the 64-bit rule, clamped to int16.
    #[inline]
    fn finish_wide(&self, channel: usize, acc: i64) -> i16 {
        let r = self.requant[if self.requant.len() == 1 { 0 } else { channel }];
        let v = crate::multiply_by_quantized_multiplier_wide(acc, r) + self.output_zp as i64;
        v.clamp(self.act_min as i64, self.act_max as i64) as i16
    }

    /// TFLite's 16x8 fully connected output stage (with `tflite`): the sum saturated to
    /// i32, then the 32-bit single-rounding rescale; otherwise [`QLinear::finish_wide`].
    #[inline]
    fn finish_fc16(&self, channel: usize, acc: i64) -> i16 {
        if !self.tflite {
            return self.finish_wide(channel, acc);
        }
        let r = self.requant[if self.requant.len() == 1 { 0 } else { channel }];
        let a = acc.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
        let v = crate::multiply_by_quantized_multiplier(a, r) as i64 + self.output_zp as i64;
        v.clamp(self.act_min as i64, self.act_max as i64) as i16
    }
}

/// 16x8 convolution: int16 input (symmetric), int8 weights, int64 bias and sums, int16
/// output; weight-stationary as [`qconv`]. `scratch` holds one output plane of i64 sums.
#[inline]
pub fn qconv16(
    x: &[i16],
    w: &[i8],
    bias: Option<&[i64]>,
    y: &mut [i16],
    scratch: &mut [i32],
    s: &ConvShape,
    q: &QLinear,
) {
    let p = &s.plane;
    let (cg, mg) = (s.cin / s.group, s.cout / s.group);
    let (pin, pout, k) = (p.h * p.w, p.oh * p.ow, p.kh * p.kw);
    let acc: &mut [i64] = bytemuck::cast_slice_mut(&mut scratch[..2 * pout]);
    // (x - zp) * w fits i32 (at most 2^16 * 2^7), so only the sum needs 64 bits
    let zp = q.input_zp;
    for b in 0..s.batch {
        for oc in 0..s.cout {
            let xg = &x[(b * s.cin + oc / mg * cg) * pin..][..cg * pin];
            let wo = &w[oc * cg * k..][..cg * k];
            acc.fill(bias.map_or(0, |b| b[oc]));
            accumulate_plane(xg, wo, acc, p, zp, |a: &mut i64, v| *a += v as i64);
            let yo = &mut y[(b * s.cout + oc) * pout..][..pout];
            for (d, &a) in yo.iter_mut().zip(acc.iter()) {
                *d = q.finish_wide(oc, a);
            }
        }
    }
}

/// 16x8 `[rows, K] x [K, N]` product (`w` row-major `[K, N]`, int64 bias); `scratch` holds
/// one row of `N` i64 sums.
#[inline]
pub fn qmatmul16(x: &[i16], w: &[i8], bias: Option<&[i64]>, y: &mut [i16], scratch: &mut [i32], n: usize, q: &QLinear) {
    let acc: &mut [i64] = bytemuck::cast_slice_mut(&mut scratch[..2 * n]);
    let k = w.len() / n.max(1);
    let zp = q.input_zp;
    for (xr, yr) in x.chunks_exact(k.max(1)).zip(y.chunks_exact_mut(n.max(1))) {
        match bias {
            Some(b) => acc.copy_from_slice(&b[..n]),
            None => acc.fill(0),
        }
        for (&xe, wr) in xr.iter().zip(w.chunks_exact(n.max(1))) {
            let xv = xe as i32 - zp;
            if xv != 0 {
                for (a, &we) in acc.iter_mut().zip(wr) {
                    *a += (xv * we as i32) as i64;
                }
            }
        }
        for (j, (d, &a)) in yr.iter_mut().zip(acc.iter()).enumerate() {
            *d = q.finish_fc16(j, a);
        }
    }
}

/// Int8 `[rows, K] x [K, N]` product with blocked weight scales (`q.requant` is
/// `[ceil(K / block), N]`, one shift per column): per column, the i64 bias plus each
/// block's i32 sum times its multiplier, shifted down once by [`crate::rounding_shift_wide`].
/// `(n, block)` are N and the block length; `scratch` holds `N` i64 totals and `N` i32
/// block sums ([`qblock_matmul_scratch`] words).
#[inline]
pub fn qblock_matmul(
    x: &[i8],
    w: &[i8],
    bias: Option<&[i64]>,
    y: &mut [i8],
    scratch: &mut [i32],
    (n, block): (usize, usize),
    q: &QLinear,
) {
    let k = w.len() / n.max(1);
    let (tot, acc) = scratch.split_at_mut(2 * n);
    let tot: &mut [i64] = bytemuck::cast_slice_mut(tot);
    let acc = &mut acc[..n];
    for (xr, yr) in x.chunks_exact(k.max(1)).zip(y.chunks_exact_mut(n.max(1))) {
        match bias {
            Some(b) => tot.copy_from_slice(&b[..n]),
            None => tot.fill(0),
        }
        for (b, k0) in (0..k).step_by(block.max(1)).enumerate() {
            acc.fill(0);
            let k1 = (k0 + block).min(k);
            for (&xe, wr) in xr[k0..k1].iter().zip(w[k0 * n..k1 * n].chunks_exact(n)) {
                let xv = xe as i32 - q.input_zp;
                for (a, &we) in acc.iter_mut().zip(wr) {
                    *a += xv * we as i32;
                }
            }
            for ((t, &a), r) in tot.iter_mut().zip(acc.iter()).zip(&q.requant[b * n..][..n]) {
                *t += a as i64 * r.multiplier as i64;
            }
        }
        for (j, (d, &t)) in yr.iter_mut().zip(tot.iter()).enumerate() {
            let v = crate::rounding_shift_wide(t, q.requant[j].shift);
            *d = v.saturating_add(q.output_zp).clamp(q.act_min, q.act_max) as i8;
        }
    }
}

/// Scratch words of [`qblock_matmul`]: `n` i64 totals and `n` i32 block sums.
pub const fn qblock_matmul_scratch(n: usize) -> usize {
    3 * n
}

/// Hybrid convolution: `x` quantized as one tensor by the dynamic rule
/// ([`crate::dynamic_quantize`]), then the integer convolution with a float output stage.
/// `scratch` holds one output plane of accumulators, then the quantized input
/// ([`dyn_conv_scratch`] words).
#[inline]
pub fn dyn_conv(x: &[f32], w: &[i8], y: &mut [f32], scratch: &mut [i32], s: &ConvShape, weight_scales: &[f32]) {
    let (acc, rest) = scratch.split_at_mut(s.plane.oh * s.plane.ow);
    let xq = &mut bytemuck::cast_slice_mut::<i32, i8>(rest)[..x.len()];
    let (input_scale, input_zp) = crate::dynamic_quantize(x, xq);
    let r = DynRescale {
        input_scale,
        input_zp,
        weight_scales,
    };
    qconv(xq, w, None, y, acc, s, &r);
}

/// Hybrid `[rows, K] x [K, N]` product: each row of `x` quantized on its own, then the
/// integer row product with a float output stage. With `block > 0` the scales are
/// `[ceil(K / block), N]`: each block's sums are rescaled on their own and added to the
/// output in block order. `scratch` holds one row of `N` accumulators, then one quantized
/// row ([`dyn_matmul_scratch`] words).
#[inline]
pub fn dyn_matmul(
    x: &[f32],
    w: &[i8],
    y: &mut [f32],
    scratch: &mut [i32],
    n: usize,
    weight_scales: &[f32],
    block: usize,
) {
    let k = w.len() / n.max(1);
    let (acc, rest) = scratch.split_at_mut(n);
    let xq = &mut bytemuck::cast_slice_mut::<i32, i8>(rest)[..k];
    for (xr, yr) in x.chunks_exact(k.max(1)).zip(y.chunks_exact_mut(n.max(1))) {
        let (input_scale, input_zp) = crate::dynamic_quantize(xr, xq);
        if block == 0 {
            let r = DynRescale {
                input_scale,
                input_zp,
                weight_scales,
            };
            qmatmul(xq, w, None, yr, acc, n, &r);
            continue;
        }
        yr.fill(0.0);
        for (b, k0) in (0..k).step_by(block).enumerate() {
            acc.fill(0);
            let k1 = (k0 + block).min(k);
            for (&xe, wr) in xq[k0..k1].iter().zip(w[k0 * n..k1 * n].chunks_exact(n)) {
                let xv = xe as i32 - input_zp;
                for (a, &we) in acc.iter_mut().zip(wr) {
                    *a += xv * we as i32;
                }
            }
            let scales = &weight_scales[b * n..][..n];
            for ((d, &a), &s) in yr.iter_mut().zip(acc.iter()).zip(scales) {
                *d += crate::dynamic_rescale(a, input_scale, s);
            }
        }
    }
}

/// Scratch words of [`dyn_conv`]: `positions` accumulators and `inputs` int8 values.
pub const fn dyn_conv_scratch(positions: usize, inputs: usize) -> usize {
    positions + inputs.div_ceil(4)
}

/// Scratch words of [`dyn_matmul`]: `n` accumulators and one row of `k` int8 values.
pub const fn dyn_matmul_scratch(n: usize, k: usize) -> usize {
    n + k.div_ceil(4)
}

/// Parameters of an integer Add: both sides rescaled to a common scale after a left shift.
#[derive(Clone, Copy, Debug)]
pub struct QAdd {
    pub a_zp: i32,
    pub a: Requant,
    pub b_zp: i32,
    pub b: Requant,
    pub out: Requant,
    pub output_zp: i32,
    pub act_min: i32,
    pub act_max: i32,
    /// TFLite's two-step rescales.
    pub tflite: bool,
}

impl QAdd {
    #[inline]
    pub fn apply(&self, a: i8, b: i8) -> i8 {
        self.add(a as i32, b as i32, ADD_LEFT_SHIFT) as i8
    }

    /// The int16 Add of 16x8 layers.
    #[inline]
    pub fn apply16(&self, a: i16, b: i16) -> i16 {
        self.add(a as i32, b as i32, crate::ADD_LEFT_SHIFT_16) as i16
    }

    #[inline]
    fn add(&self, a: i32, b: i32, shift: i32) -> i32 {
        let x1 = (a - self.a_zp) << shift;
        let x2 = (b - self.b_zp) << shift;
        let s = rescale(self.tflite, x1, self.a) + rescale(self.tflite, x2, self.b);
        rescale(self.tflite, s, self.out)
            .saturating_add(self.output_zp)
            .clamp(self.act_min, self.act_max)
    }
}

/// Parameters of an integer Mul: one rescale of the product of the centred inputs.
#[derive(Clone, Copy, Debug)]
pub struct QMul {
    pub a_zp: i32,
    pub b_zp: i32,
    pub requant: Requant,
    pub output_zp: i32,
    pub act_min: i32,
    pub act_max: i32,
    /// TFLite's two-step rescale.
    pub tflite: bool,
}

impl QMul {
    #[inline]
    pub fn apply(&self, a: i8, b: i8) -> i8 {
        self.mul(a as i32, b as i32) as i8
    }

    /// The int16 Mul of 16x8 layers (zero points 0, so the product fits i32).
    #[inline]
    pub fn apply16(&self, a: i16, b: i16) -> i16 {
        self.mul(a as i32, b as i32) as i16
    }

    #[inline]
    fn mul(&self, a: i32, b: i32) -> i32 {
        let prod = (a - self.a_zp) * (b - self.b_zp);
        rescale(self.tflite, prod, self.requant)
            .saturating_add(self.output_zp)
            .clamp(self.act_min, self.act_max)
    }
}

/// Parameters of an integer PRelu (TFLite's): the identity rescale at or above the input's
/// zero point, the rescaled product with alpha below it.
#[derive(Clone, Copy, Debug)]
pub struct QPRelu {
    pub input_zp: i32,
    pub alpha_zp: i32,
    pub identity: Requant,
    pub alpha: Requant,
    pub output_zp: i32,
    /// TFLite's two-step rescale.
    pub tflite: bool,
}

impl QPRelu {
    #[inline]
    pub fn apply(&self, x: i8, alpha: i8) -> i8 {
        let d = x as i32 - self.input_zp;
        let r = if d >= 0 {
            rescale(self.tflite, d, self.identity)
        } else {
            rescale(self.tflite, d * (alpha as i32 - self.alpha_zp), self.alpha)
        };
        r.saturating_add(self.output_zp).clamp(-128, 127) as i8
    }
}

/// Int16 softmax ([`crate::softmax_i16`]) of each contiguous row of `len` (the last axis).
#[inline]
pub fn qsoftmax16(x: &[i16], y: &mut [i16], len: usize, hi: &[i32], lo: &[i32]) {
    for (xr, yr) in x.chunks_exact(len).zip(y.chunks_exact_mut(len)) {
        crate::softmax_i16(xr, hi, lo, yr);
    }
}

/// Integer softmax of each contiguous row of `len` (the last axis).
#[inline]
pub fn qsoftmax(x: &[i8], y: &mut [i8], len: usize, exp_table: &[i32]) {
    for (xr, yr) in x.chunks_exact(len).zip(y.chunks_exact_mut(len)) {
        crate::softmax_i8(xr, exp_table, yr);
    }
}

/// Integer average over each window's taps inside the input (padding never counts), rounded
/// half to even, or with `tflite` half away from zero; input and output share scale and
/// zero point.
#[inline]
pub fn avg_pool<T: Quantized>(x: &[T], y: &mut [T], channels: usize, p: &Plane, tflite: bool) {
    let average = if tflite {
        crate::rounded_average_away
    } else {
        crate::rounded_average
    };
    let (pin, pout) = (p.h * p.w, p.oh * p.ow);
    for c in 0..channels {
        let xc = &x[c * pin..][..pin];
        for oy in 0..p.oh {
            for ox in 0..p.ow {
                let (mut s, mut n) = (0i32, 0i32);
                for ky in 0..p.kh {
                    for kx in 0..p.kw {
                        if let Some(i) = p.tap(oy, ox, ky, kx) {
                            s += xc[i].widen();
                            n += 1;
                        }
                    }
                }
                let v = if n == 0 { 0 } else { average(s, n).clamp(T::MIN, T::MAX) };
                y[c * pout + oy * p.ow + ox] = T::narrow(v);
            }
        }
    }
}

/// An integer activation type (int8, or int16 of 16x8 layers).
pub trait Quantized: Copy {
    const MIN: i32;
    const MAX: i32;
    fn widen(self) -> i32;
    /// `v` already clamped to `MIN..=MAX`.
    fn narrow(v: i32) -> Self;
}

impl Quantized for i8 {
    const MIN: i32 = -128;
    const MAX: i32 = 127;
    #[inline]
    fn widen(self) -> i32 {
        self as i32
    }
    #[inline]
    fn narrow(v: i32) -> i8 {
        v as i8
    }
}

impl Quantized for i16 {
    const MIN: i32 = -32768;
    const MAX: i32 = 32767;
    #[inline]
    fn widen(self) -> i32 {
        self as i32
    }
    #[inline]
    fn narrow(v: i32) -> i16 {
        v as i16
    }
}

/// A 256-entry table lookup indexed by the int8 value.
#[inline]
pub fn lut(x: &[i8], y: &mut [i8], table: &[i8; 256]) {
    for (d, &v) in y.iter_mut().zip(x) {
        *d = table[(v as i32 + 128) as usize];
    }
}

/// An integer value moved to other parameters and width: `y = clamp(zp + M(x - input_zp))`.
pub fn requant<X: Quantized, Y: Quantized>(x: &[X], y: &mut [Y], input_zp: i32, r: Requant, zp: i32) {
    for (d, &v) in y.iter_mut().zip(x) {
        let q = crate::multiply_by_quantized_multiplier(v.widen() - input_zp, r) + zp;
        *d = Y::narrow(q.clamp(Y::MIN, Y::MAX));
    }
}

/// [`crate::lut16`] over a tensor.
pub fn lut16(x: &[i16], y: &mut [i16], table: &[i16; crate::LUT16_LEN]) {
    for (d, &v) in y.iter_mut().zip(x) {
        *d = crate::lut16(table, v);
    }
}

/// Rescale factors from `(multiplier, shift)` pairs, for generated constants.
pub const fn requants<const N: usize>(p: [(i32, i32); N]) -> [Requant; N] {
    let mut out = [Requant {
        multiplier: 0,
        shift: 0,
    }; N];
    let mut i = 0;
    while i < N {
        out[i] = Requant {
            multiplier: p[i].0,
            shift: p[i].1,
        };
        i += 1;
    }
    out
}

//! Integer kernels of quantized graphs. Every rescale, rounding and saturation step is a call
//! into `kiln_runtime`, the same functions whose steps the backends print, so the evaluator
//! defines the bytes every backend must reproduce. Accumulators are i32 as on the targets.

use super::window::{PAD, window_table};
use super::{broadcast_offsets, sl};
use crate::dtype::Scalar;
use crate::error::{IrError, Result};
use crate::op::{Numerics, Pool, PoolKind, QAdd, QLinear, QMul, QPRelu, Window};
use crate::tensor::{Data, Tensor};
use kiln_runtime as rt;

fn range(s: Scalar) -> (i32, i32) {
    match s {
        Scalar::U8 => (0, 255),
        Scalar::I16 => (-32768, 32767),
        _ => (-128, 127),
    }
}

/// Widens any integer tensor to i32 values.
fn ints(t: &Tensor) -> Vec<i32> {
    match &t.data {
        Data::I8(v) => v.iter().map(|&x| x as i32).collect(),
        Data::U8(v) => v.iter().map(|&x| x as i32).collect(),
        Data::I16(v) => v.iter().map(|&x| x as i32).collect(),
        Data::I32(v) => v.clone(),
        _ => t.to_i64_vec().into_iter().map(|x| x as i32).collect(),
    }
}

fn narrow(s: Scalar, v: Vec<i32>) -> Data {
    match s {
        Scalar::U8 => Data::U8(v.into_iter().map(|x| x as u8).collect()),
        Scalar::I16 => Data::I16(v.into_iter().map(|x| x as i16).collect()),
        _ => Data::I8(v.into_iter().map(|x| x as i8).collect()),
    }
}

pub(crate) fn quantize(x: &Tensor, to: Scalar, scale: f32, zp: i32) -> Tensor {
    let (lo, hi) = range(to);
    let v = sl::<f32>(x)
        .iter()
        .map(|&f| rt::quantize(f, scale, zp, lo, hi))
        .collect();
    Tensor::new(x.shape.clone(), narrow(to, v))
}

pub(crate) fn dequantize(q: &Tensor, scale: f32, zp: i32) -> Tensor {
    let v: Vec<f32> = ints(q).into_iter().map(|i| rt::dequantize(i, scale, zp)).collect();
    Tensor::from_vec(q.shape.clone(), v)
}

/// The int8 output stage: the sum wraps to i32 (as on the targets), one fixed-point rescale
/// (saturating), then the zero point and the clamp in exact integers (a saturated rescale
/// stays at its end of the range).
fn finish(q: &QLinear, two_step: bool, channel: usize, acc: i64) -> i32 {
    let r = q.requant[if q.requant.len() == 1 { 0 } else { channel }];
    rescale(two_step, acc as i32, r)
        .saturating_add(q.output_zp)
        .clamp(q.act_min, q.act_max)
}

/// The fixed-point rescale: TFLite's two steps, or ONNX Runtime's one.
fn rescale(two_step: bool, x: i32, r: rt::Requant) -> i32 {
    if two_step {
        rt::multiply_by_quantized_multiplier_tflite(x, r)
    } else {
        rt::multiply_by_quantized_multiplier(x, r)
    }
}

/// The 16x8 output stage: the i64 sum rescaled by the 64-bit rule.
fn finish_wide(q: &QLinear, channel: usize, acc: i64) -> i32 {
    let r = q.requant[if q.requant.len() == 1 { 0 } else { channel }];
    let v = rt::multiply_by_quantized_multiplier_wide(acc, r) + q.output_zp as i64;
    v.clamp(q.act_min as i64, q.act_max as i64) as i32
}

/// TFLite's 16x8 fully connected output stage: the sum saturated to i32, then the 32-bit
/// single-rounding rescale (its int8 fully connected layers' too).
fn finish_fc16(q: &QLinear, channel: usize, acc: i64) -> i32 {
    let r = q.requant[if q.requant.len() == 1 { 0 } else { channel }];
    let a = acc.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
    let v = rt::multiply_by_quantized_multiplier(a, r) as i64 + q.output_zp as i64;
    v.clamp(q.act_min as i64, q.act_max as i64) as i32
}

/// An integer product's output from `(channel, sum)` pairs: int8, or int16 when its input
/// is int16 (16x8; a fully connected layer, `fc`, with TFLite numerics rescales as TFLite's).
fn product_out(x: &Tensor, q: &QLinear, out: &[usize], acc: Vec<(usize, i64)>, fc: bool) -> Tensor {
    let two_step = q.numerics == Numerics::Tflite;
    if x.data.scalar() == Scalar::I16 && fc && two_step {
        let y: Vec<i16> = acc.into_iter().map(|(c, a)| finish_fc16(q, c, a) as i16).collect();
        Tensor::from_vec(out.to_vec(), y)
    } else if x.data.scalar() == Scalar::I16 {
        let y: Vec<i16> = acc.into_iter().map(|(c, a)| finish_wide(q, c, a) as i16).collect();
        Tensor::from_vec(out.to_vec(), y)
    } else {
        let y: Vec<i8> = acc.into_iter().map(|(c, a)| finish(q, two_step, c, a) as i8).collect();
        Tensor::from_vec(out.to_vec(), y)
    }
}

/// Integer convolution: padding reads the input zero point, i.e. contributes nothing.
pub(crate) fn qconv(window: &Window, group: usize, q: &QLinear, x: &[&Tensor], out: &[usize]) -> Result<Tensor> {
    let bias = x.get(2).map(|b| b.to_i64_vec());
    let xv = ints(x[0]);
    let acc = int_conv(
        window,
        group,
        q.input_zp,
        (&xv, &x[0].shape),
        (&ints(x[1]), x[1].shape[0]),
        bias.as_deref(),
        out,
        |oc, a| (oc, a),
    );
    Ok(product_out(x[0], q, out, acc, false))
}

/// ONNX `DynamicQuantizeLinear`: `[y: u8, scale, zero_point]`, the int8 rule of
/// `kiln_runtime::dynamic_quantize` shifted by 128 (the same grid).
pub(crate) fn dynamic_quantize_u8(x: &Tensor) -> Vec<Tensor> {
    let xf: &[f32] = sl(x);
    let mut q = vec![0i8; xf.len()];
    let (s, zp) = rt::dynamic_quantize(xf, &mut q);
    let y: Vec<u8> = q.iter().map(|&v| (v as i32 + 128) as u8).collect();
    vec![
        Tensor::from_vec(x.shape.clone(), y),
        Tensor::from_vec(vec![], vec![s]),
        Tensor::from_vec(vec![], vec![(zp + 128) as u8]),
    ]
}

/// A zero point input: one value, or one per index of `axis` of the operand (`None`: 0).
fn zero_points(t: Option<&&Tensor>) -> Vec<i32> {
    t.map_or(vec![0], |t| ints(t))
}

/// ONNX `ConvInteger`: `sum((x - x_zp) * (w - w_zp))` in i32 (per-tensor `x_zp`; `w_zp` one
/// or one per output channel).
pub(crate) fn int_conv_op(window: &Window, group: usize, x: &[&Tensor], out: &[usize]) -> Tensor {
    let xz = zero_points(x.get(2))[0];
    let wz = zero_points(x.get(3));
    let xv = ints(x[0]);
    let m = x[1].shape[0];
    let per = x[1].numel() / m.max(1);
    let wv: Vec<i32> = (ints(x[1]).iter().enumerate())
        .map(|(i, &w)| w - wz[if wz.len() == 1 { 0 } else { i / per }])
        .collect();
    let y = int_conv(window, group, xz, (&xv, &x[0].shape), (&wv, m), None, out, |_, a| {
        a as i32
    });
    Tensor::from_vec(out.to_vec(), y)
}

/// ONNX `MatMulInteger`: batched `(a - a_zp) x (b - b_zp)` in i32 (`a_zp` per tensor or per
/// row, `b_zp` per tensor or per column; `b` 2-D).
pub(crate) fn int_matmul_op(x: &[&Tensor], out: &[usize]) -> Tensor {
    let (av, bv) = (ints(x[0]), ints(x[1]));
    let (az, bz) = (zero_points(x.get(2)), zero_points(x.get(3)));
    let (kd, nd) = (x[1].shape[0], x[1].shape[1]);
    let mut y = Vec::with_capacity(out.iter().product());
    for (r, ar) in av.chunks_exact(kd.max(1)).enumerate() {
        let za = az[if az.len() == 1 { 0 } else { r % az.len() }];
        for j in 0..nd {
            let zb = bz[if bz.len() == 1 { 0 } else { j }];
            let s: i64 = (0..kd)
                .map(|k| (ar[k] - za) as i64 * (bv[k * nd + j] - zb) as i64)
                .sum();
            y.push(s as i32);
        }
    }
    Tensor::from_vec(out.to_vec(), y)
}

/// Hybrid convolution: the input quantized as one tensor by the dynamic rule, then the
/// integer convolution rescaled to f32.
pub(crate) fn dyn_conv(window: &Window, group: usize, scales: &[f32], x: &[&Tensor], out: &[usize]) -> Tensor {
    let xf: &[f32] = sl(x[0]);
    let mut xq = vec![0i8; xf.len()];
    let (sx, zp) = rt::dynamic_quantize(xf, &mut xq);
    let xq: Vec<i32> = xq.iter().map(|&v| v as i32).collect();
    let y = int_conv(
        window,
        group,
        zp,
        (&xq, &x[0].shape),
        (&ints(x[1]), x[1].shape[0]),
        None,
        out,
        |oc, a| rt::dynamic_rescale(a as i32, sx, scales[if scales.len() == 1 { 0 } else { oc }]),
    );
    Tensor::from_vec(out.to_vec(), y)
}

/// The sums of an integer convolution in i64 (an int8 one wraps them to i32 in its output
/// stage, which equals summing in wrapping i32), each passed through `finish(channel, acc)`.
#[allow(clippy::too_many_arguments)]
fn int_conv<T>(
    window: &Window,
    group: usize,
    zp: i32,
    (xv, xs): (&[i32], &[usize]),
    (wv, m): (&[i32], usize),
    bias: Option<&[i64]>,
    out: &[usize],
    mut finish: impl FnMut(usize, i64) -> T,
) -> Vec<T> {
    let (n, ci) = (xs[0], xs[1]);
    let (cg, mg) = (ci / group, m / group);
    let isp = &xs[2..];
    let pin: usize = isp.iter().product();
    let p: usize = out[2..].iter().product();
    let k: usize = window.kernel.iter().product();
    let table = window_table(isp, &out[2..], window);
    let mut y = Vec::with_capacity(n * m * p);
    let mut acc = vec![0i64; p];
    for b in 0..n {
        for gi in 0..group {
            for mm in 0..mg {
                let oc = gi * mg + mm;
                acc.iter_mut().for_each(|a| *a = bias.map_or(0, |bv| bv[oc]));
                for cc in 0..cg {
                    let xc = &xv[(b * ci + gi * cg + cc) * pin..][..pin];
                    for kk in 0..k {
                        let w = wv[(oc * cg + cc) * k + kk] as i64;
                        for (a, &off) in acc.iter_mut().zip(&table[kk * p..][..p]) {
                            if off != PAD {
                                *a += (xc[off] - zp) as i64 * w;
                            }
                        }
                    }
                }
                y.extend(acc.iter().map(|&a| finish(oc, a)));
            }
        }
    }
    y
}

pub(crate) fn qmatmul(q: &QLinear, x: &[&Tensor], out: &[usize]) -> Result<Tensor> {
    let xv = ints(x[0]);
    let bias = x.get(2).map(|b| b.to_i64_vec());
    let kd = x[1].shape[0];
    let mut acc = Vec::with_capacity(out.iter().product());
    for xr in xv.chunks_exact(kd.max(1)) {
        int_row(xr, q.input_zp, x[1], bias.as_deref(), |j, a| acc.push((j, a)));
    }
    Ok(product_out(x[0], q, out, acc, true))
}

/// Int8 product with blocked weight scales: per column, the bias plus each block's i32 sum
/// times its multiplier, in i64, shifted down once (rounding half up) and saturated.
pub(crate) fn qblock_matmul(q: &QLinear, block: usize, x: &[&Tensor], out: &[usize]) -> Tensor {
    let xv = ints(x[0]);
    let wv = ints(x[1]);
    let bias = x.get(2).map(|b| b.to_i64_vec());
    let (kd, nd) = (x[1].shape[0], x[1].shape[1]);
    let mut y = Vec::with_capacity(out.iter().product());
    for xr in xv.chunks_exact(kd.max(1)) {
        for j in 0..nd {
            let mut total: i128 = bias.as_ref().map_or(0, |b| b[j] as i128);
            for (b, k0) in (0..kd).step_by(block).enumerate() {
                let a: i64 = (k0..(k0 + block).min(kd))
                    .map(|kk| (xr[kk] - q.input_zp) as i64 * wv[kk * nd + j] as i64)
                    .sum();
                total += a as i128 * q.requant[b * nd + j].multiplier as i128;
            }
            let e = 31 - q.requant[j].shift;
            let r = ((total + (1i128 << (e - 1))) >> e).clamp(i32::MIN as i128, i32::MAX as i128) as i32;
            y.push(r.saturating_add(q.output_zp).clamp(q.act_min, q.act_max) as i8);
        }
    }
    Tensor::from_vec(out.to_vec(), y)
}

/// Hybrid matrix product: each row of the input quantized on its own by the dynamic rule;
/// with blocked scales, each block of K rescaled on its own and the floats added in order.
pub(crate) fn dyn_matmul(scales: &[f32], block: usize, x: &[&Tensor], out: &[usize]) -> Tensor {
    let xf: &[f32] = sl(x[0]);
    let (kd, nd) = (x[1].shape[0], x[1].shape[1]);
    let wv: &[i8] = sl(x[1]);
    let mut y = Vec::with_capacity(xf.len() / kd.max(1) * nd);
    let mut xq = vec![0i8; kd];
    for xr in xf.chunks_exact(kd.max(1)) {
        let (sx, zp) = rt::dynamic_quantize(xr, &mut xq);
        if block == 0 {
            let xw: Vec<i32> = xq.iter().map(|&v| v as i32).collect();
            int_row(&xw, zp, x[1], None, |j, a| {
                y.push(rt::dynamic_rescale(
                    a as i32,
                    sx,
                    scales[if scales.len() == 1 { 0 } else { j }],
                ))
            });
            continue;
        }
        for j in 0..nd {
            let mut v = 0.0f32;
            for (b, k0) in (0..kd).step_by(block).enumerate() {
                let a: i32 = (k0..(k0 + block).min(kd))
                    .map(|kk| (xq[kk] as i32 - zp) * wv[kk * nd + j] as i32)
                    .sum();
                v += rt::dynamic_rescale(a, sx, scales[b * nd + j]);
            }
            y.push(v);
        }
    }
    Tensor::from_vec(out.to_vec(), y)
}

/// One row of an integer product with `w: [K, N]`: each column's i64 sum passed to `emit`.
fn int_row(xr: &[i32], zp: i32, w: &Tensor, bias: Option<&[i64]>, mut emit: impl FnMut(usize, i64)) {
    let nd = w.shape[1];
    let wv: &[i8] = sl(w);
    for j in 0..nd {
        let mut a = bias.map_or(0, |b| b[j]);
        for (kk, &xe) in xr.iter().enumerate() {
            a += (xe - zp) as i64 * wv[kk * nd + j] as i64;
        }
        emit(j, a);
    }
}

/// TFLite's integer Add: int8 (left shift 20) or the int16 of 16x8 layers (left shift 15).
pub(crate) fn qadd(p: &QAdd, a: &Tensor, b: &Tensor, out: &[usize]) -> Result<Tensor> {
    let scalar = a.data.scalar();
    let shift = if scalar == Scalar::I16 {
        rt::ADD_LEFT_SHIFT_16
    } else {
        rt::ADD_LEFT_SHIFT
    };
    let (av, bv) = (ints(a), ints(b));
    let (oa, ob) = (broadcast_offsets(&a.shape, out), broadcast_offsets(&b.shape, out));
    let y: Vec<i32> = oa
        .iter()
        .zip(&ob)
        .map(|(&i, &j)| {
            let x1 = (av[i] - p.a_zp) << shift;
            let x2 = (bv[j] - p.b_zp) << shift;
            let two = p.numerics == Numerics::Tflite;
            let s = rescale(two, x1, p.a) + rescale(two, x2, p.b);
            rescale(two, s, p.out)
                .saturating_add(p.output_zp)
                .clamp(p.act_min, p.act_max)
        })
        .collect();
    Ok(Tensor::new(out.to_vec(), narrow(scalar, y)))
}

/// TFLite's integer Mul, int8 or the int16 of 16x8 layers (whose product fits i32).
pub(crate) fn qmul(p: &QMul, a: &Tensor, b: &Tensor, out: &[usize]) -> Tensor {
    let (av, bv) = (ints(a), ints(b));
    let (oa, ob) = (broadcast_offsets(&a.shape, out), broadcast_offsets(&b.shape, out));
    let y: Vec<i32> = oa
        .iter()
        .zip(&ob)
        .map(|(&i, &j)| {
            let prod = (av[i] - p.a_zp) * (bv[j] - p.b_zp);
            rescale(p.numerics == Numerics::Tflite, prod, p.requant)
                .saturating_add(p.output_zp)
                .clamp(p.act_min, p.act_max)
        })
        .collect();
    Tensor::new(out.to_vec(), narrow(a.data.scalar(), y))
}

/// TFLite's integer PRelu: identity at or above the input's zero point, the product with
/// alpha below it, each with its own rescale.
pub(crate) fn qprelu(p: &QPRelu, x: &Tensor, alpha: &Tensor, out: &[usize]) -> Tensor {
    let (xv, av) = (ints(x), ints(alpha));
    let two = p.numerics == Numerics::Tflite;
    let (ox, oa) = (broadcast_offsets(&x.shape, out), broadcast_offsets(&alpha.shape, out));
    let y: Vec<i32> = (ox.iter().zip(&oa))
        .map(|(&i, &j)| {
            let d = xv[i] - p.input_zp;
            let r = if d >= 0 {
                rescale(two, d, p.identity)
            } else {
                rescale(two, d * (av[j] - p.alpha_zp), p.alpha)
            };
            r.saturating_add(p.output_zp).clamp(-128, 127)
        })
        .collect();
    Tensor::new(out.to_vec(), narrow(Scalar::I8, y))
}

pub(crate) fn softmax(axis: usize, exp_table: &[i32], x: &Tensor) -> Tensor {
    let xv: &[i8] = sl(x);
    let len = x.shape[axis];
    let inner: usize = x.shape[axis + 1..].iter().product();
    let outer: usize = x.shape[..axis].iter().product();
    let mut y = vec![0i8; xv.len()];
    let mut row = vec![0i8; len];
    let mut out = vec![0i8; len];
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| (o * len + k) * inner + i;
            for (k, r) in row.iter_mut().enumerate() {
                *r = xv[at(k)];
            }
            rt::softmax_i8(&row, exp_table, &mut out);
            for (k, &v) in out.iter().enumerate() {
                y[at(k)] = v;
            }
        }
    }
    Tensor::from_vec(x.shape.clone(), y)
}

pub(crate) fn softmax16(axis: usize, (hi, lo): (&[i32], &[i32]), x: &Tensor) -> Tensor {
    let xv: &[i16] = sl(x);
    let len = x.shape[axis];
    let inner: usize = x.shape[axis + 1..].iter().product();
    let outer: usize = x.shape[..axis].iter().product();
    let mut y = vec![0i16; xv.len()];
    let (mut row, mut out) = (vec![0i16; len], vec![0i16; len]);
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| (o * len + k) * inner + i;
            for (k, r) in row.iter_mut().enumerate() {
                *r = xv[at(k)];
            }
            rt::softmax_i16(&row, hi, lo, &mut out);
            for (k, &v) in out.iter().enumerate() {
                y[at(k)] = v;
            }
        }
    }
    Tensor::from_vec(x.shape.clone(), y)
}

pub(crate) fn lut(table: &[i8], x: &Tensor) -> Tensor {
    let v: Vec<i8> = sl::<i8>(x).iter().map(|&q| table[(q as i32 + 128) as usize]).collect();
    Tensor::from_vec(x.shape.clone(), v)
}

pub(crate) fn requant(x: &Tensor, to: Scalar, input_zp: i32, r: crate::op::Requant, zp: i32) -> Tensor {
    let (lo, hi) = range(to);
    let v: Vec<i32> = (ints(x).into_iter())
        .map(|q| (rt::multiply_by_quantized_multiplier(q - input_zp, r) + zp).clamp(lo, hi))
        .collect();
    Tensor::new(x.shape.clone(), narrow(to, v))
}

pub(crate) fn lut16(table: &[i16], x: &Tensor) -> Tensor {
    let v: Vec<i16> = sl::<i16>(x).iter().map(|&q| rt::lut16(table, q)).collect();
    Tensor::from_vec(x.shape.clone(), v)
}

/// Integer average pooling over the taps inside the input (TFLite: padding never counts),
/// rounded half to even (`Onnx`) or half away from zero (`Tflite`); input and output (int8
/// or int16) share scale and zero point.
pub(crate) fn avg_pool_int(p: &Pool, x: &Tensor, out: &[usize]) -> Result<Tensor> {
    let (window, kind) = (&p.window, p.kind);
    let average = match p.numerics {
        Numerics::Onnx => rt::rounded_average,
        Numerics::Tflite => rt::rounded_average_away,
    };
    if kind
        != (PoolKind::Avg {
            count_include_pad: false,
        })
    {
        return Err(IrError::eval("AveragePool", "int8 pooling does not count padding"));
    }
    let (n, c) = (x.shape[0], x.shape[1]);
    let isp = &x.shape[2..];
    let pin: usize = isp.iter().product();
    let po: usize = out[2..].iter().product();
    let k: usize = window.kernel.iter().product();
    let table = window_table(isp, &out[2..], window);
    let xv = ints(x);
    let (lo, hi) = range(x.data.scalar());
    let mut y = Vec::with_capacity(n * c * po);
    for nc in 0..n * c {
        let xc = &xv[nc * pin..][..pin];
        for o in 0..po {
            let (mut s, mut cnt) = (0i32, 0i32);
            for kk in 0..k {
                let off = table[kk * po + o];
                if off != PAD {
                    s += xc[off];
                    cnt += 1;
                }
            }
            y.push(if cnt == 0 { 0 } else { average(s, cnt).clamp(lo, hi) });
        }
    }
    Ok(Tensor::new(out.to_vec(), narrow(x.data.scalar(), y)))
}

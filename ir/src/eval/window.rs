//! Sliding-window kernels: convolution (im2col + GEMM), transposed convolution, pooling.
//! A window table maps (kernel position, output position) to an input offset once per call,
//! so the same code serves 1-D, 2-D and 3-D.

use super::{Flt, for_each_index, lit, sl};
use crate::dtype::Scalar;
use crate::error::{IrError, Result};
use crate::op::{Conv, ConvTranspose, Pool, PoolKind, Window};
use crate::tensor::{Data, Tensor};

pub(crate) const PAD: usize = usize::MAX;

/// `table[k * P + p]` = spatial input offset read by kernel tap `k` at output position `p`
/// (or `PAD` when it falls in the padding).
pub(crate) fn window_table(input: &[usize], output: &[usize], w: &Window) -> Vec<usize> {
    let r = input.len();
    let in_st = crate::tensor::strides(input);
    let p: usize = output.iter().product();
    let k: usize = w.kernel.iter().product();
    let mut t = Vec::with_capacity(k * p);
    for_each_index(&w.kernel, |kk| {
        for_each_index(output, |o| {
            let mut off = 0usize;
            for d in 0..r {
                let pos = (o[d] * w.strides[d] + kk[d] * w.dilations[d]) as i64 - w.pads[d] as i64;
                if pos < 0 || pos >= input[d] as i64 {
                    t.push(PAD);
                    return;
                }
                off += pos as usize * in_st[d];
            }
            t.push(off);
        })
    });
    t
}

pub(crate) fn conv<T: Flt>(c: &Conv, x: &[&Tensor], out: &[usize]) -> Result<Tensor> {
    let (xt, wt) = (x[0], x[1]);
    let (n, ci) = (xt.shape[0], xt.shape[1]);
    let m = wt.shape[0];
    let g = c.group;
    let (cg, mg) = (ci / g, m / g);
    let isp = &xt.shape[2..];
    let osp = &out[2..];
    let pin: usize = isp.iter().product();
    let p: usize = osp.iter().product();
    let k: usize = c.window.kernel.iter().product();
    let table = window_table(isp, osp, &c.window);
    let (xv, wv): (&[T], &[T]) = (sl(xt), sl(wt));
    let bias: Option<&[T]> = x.get(2).map(|b| sl(b));
    let mut y = vec![T::zero(); n * m * p];
    let mut cols = vec![T::zero(); cg * k * p];
    for b in 0..n {
        for gi in 0..g {
            for cc in 0..cg {
                let xc = &xv[(b * ci + gi * cg + cc) * pin..][..pin];
                for kk in 0..k {
                    let row = &mut cols[(cc * k + kk) * p..][..p];
                    let tab = &table[kk * p..][..p];
                    for (dst, &off) in row.iter_mut().zip(tab) {
                        *dst = if off == PAD { T::zero() } else { xc[off] };
                    }
                }
            }
            let wg = &wv[gi * mg * cg * k..][..mg * cg * k];
            let yg = &mut y[(b * m + gi * mg) * p..][..mg * p];
            if let Some(bias) = bias {
                for (mm, row) in yg.chunks_mut(p).enumerate() {
                    row.iter_mut().for_each(|v| *v = bias[gi * mg + mm]);
                }
            }
            super::linalg::gemm_acc(mg, p, cg * k, wg, &cols, yg);
        }
    }
    Ok(Tensor::from_vec(out.to_vec(), y))
}

pub(crate) fn conv_transpose<T: Flt>(c: &ConvTranspose, x: &[&Tensor], out: &[usize]) -> Result<Tensor> {
    let (xt, wt) = (x[0], x[1]);
    let (n, ci) = (xt.shape[0], xt.shape[1]);
    let g = c.group;
    let (cg, mg) = (ci / g, wt.shape[1]);
    let m = mg * g;
    let isp = &xt.shape[2..];
    let osp = &out[2..];
    let r = isp.len();
    let pin: usize = isp.iter().product();
    let pout: usize = osp.iter().product();
    let k: usize = c.window.kernel.iter().product();
    let ost = crate::tensor::strides(osp);
    // table[kk * pin + i]: output offset written by input position i through tap kk.
    let mut table = Vec::with_capacity(k * pin);
    for_each_index(&c.window.kernel, |kk| {
        for_each_index(isp, |i| {
            let mut off = 0usize;
            for d in 0..r {
                let pos = (i[d] * c.window.strides[d] + kk[d] * c.window.dilations[d]) as i64 - c.window.pads[d] as i64;
                if pos < 0 || pos >= osp[d] as i64 {
                    table.push(PAD);
                    return;
                }
                off += pos as usize * ost[d];
            }
            table.push(off);
        })
    });
    let (xv, wv): (&[T], &[T]) = (sl(xt), sl(wt));
    let mut y = vec![T::zero(); n * m * pout];
    if let Some(b) = x.get(2) {
        let bv: &[T] = sl(b);
        for (i, v) in y.iter_mut().enumerate() {
            *v = bv[(i / pout) % m];
        }
    }
    for b in 0..n {
        for gi in 0..g {
            for cc in 0..cg {
                let ch = gi * cg + cc;
                let xc = &xv[(b * ci + ch) * pin..][..pin];
                for kk in 0..k {
                    let tab = &table[kk * pin..][..pin];
                    for mm in 0..mg {
                        let wgt = wv[(ch * mg + mm) * k + kk];
                        let yo = &mut y[(b * m + gi * mg + mm) * pout..][..pout];
                        for (&off, &xv) in tab.iter().zip(xc) {
                            if off != PAD {
                                yo[off] = yo[off] + xv * wgt;
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(Tensor::from_vec(out.to_vec(), y))
}

fn pool_t<T: Flt>(p: &Pool, x: &Tensor, out: &[usize]) -> Vec<T> {
    let (n, c) = (x.shape[0], x.shape[1]);
    let isp = &x.shape[2..];
    let osp = &out[2..];
    let pin: usize = isp.iter().product();
    let po: usize = osp.iter().product();
    let k: usize = p.window.kernel.iter().product();
    let table = window_table(isp, osp, &p.window);
    let r = isp.len();
    // Divisor when padding counts: taps inside the explicitly padded extent.
    let include_pad_count: Vec<usize> = {
        let mut v = Vec::with_capacity(po);
        for_each_index(osp, |o| {
            let mut cnt = 1usize;
            for d in 0..r {
                let lo = -(p.window.pads[d] as i64);
                let hi = (isp[d] + p.window.pads[d + r]) as i64;
                cnt *= (0..p.window.kernel[d])
                    .filter(|&j| {
                        let pos =
                            (o[d] * p.window.strides[d] + j * p.window.dilations[d]) as i64 - p.window.pads[d] as i64;
                        pos >= lo && pos < hi
                    })
                    .count();
            }
            v.push(cnt);
        });
        v
    };
    let xv: &[T] = sl(x);
    let mut y = vec![T::zero(); n * c * po];
    for nc in 0..n * c {
        let xc = &xv[nc * pin..][..pin];
        let yc = &mut y[nc * po..][..po];
        for (o, yv) in yc.iter_mut().enumerate() {
            let taps = (0..k).map(|kk| table[kk * po + o]).filter(|&off| off != PAD);
            *yv = match p.kind {
                PoolKind::Max => taps
                    .map(|off| xc[off])
                    .fold(T::neg_infinity(), |a, b| if b > a || b.is_nan() { b } else { a }),
                PoolKind::Avg { count_include_pad } => {
                    let (s, cnt) = taps.fold((T::zero(), 0usize), |(s, c), off| (s + xc[off], c + 1));
                    let div = if count_include_pad { include_pad_count[o] } else { cnt };
                    s / lit(div.max(1) as f64)
                }
                PoolKind::Lp { p: e } => {
                    let s: T = taps
                        .map(|off| xc[off].abs().powi(e as i32))
                        .fold(T::zero(), |a, b| a + b);
                    s.powf(T::one() / lit(e as f64))
                }
            };
        }
    }
    y
}

pub(crate) fn pool(p: &Pool, x: &Tensor, out: &[usize]) -> Result<Tensor> {
    if matches!(x.data.scalar(), Scalar::I8 | Scalar::I16) && matches!(p.kind, PoolKind::Avg { .. }) {
        return super::quant::avg_pool_int(p, x, out);
    }
    let data = match x.data.scalar() {
        Scalar::F32 => Data::F32(pool_t(p, x, out)),
        Scalar::F64 => Data::F64(pool_t(p, x, out)),
        s if s.is_int() && p.kind == PoolKind::Max => Data::F64(pool_t(p, &x.cast(Scalar::F64), out)).cast(s),
        s => return Err(IrError::eval("Pool", format!("unsupported element type {s}"))),
    };
    Ok(Tensor::new(out.to_vec(), data))
}

pub(crate) fn global_pool(kind: PoolKind, x: &Tensor, out: &[usize]) -> Result<Tensor> {
    let sp = &x.shape[2..];
    let w = Window {
        kernel: sp.to_vec(),
        strides: vec![1; sp.len()],
        dilations: vec![1; sp.len()],
        pads: vec![0; 2 * sp.len()],
    };
    let kind = match kind {
        PoolKind::Avg { .. } => PoolKind::Avg {
            count_include_pad: false,
        },
        k => k,
    };
    pool(
        &Pool {
            kind,
            window: w,
            ceil_mode: false,
            numerics: Default::default(),
        },
        x,
        out,
    )
}

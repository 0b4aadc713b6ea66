//! Int8 kernels shaped for 32-bit microcontrollers, the Rust-source twins of the C backend's
//! Cortex-M kernels: the same weight orders (decided in `kiln-backends`' `pack` module), the
//! same blocking, the same bytes as [`super::int::qconv`] and [`super::int::qmatmul`].
//!
//! - [`patch_conv`]: one-group convolutions, pointwise included. Per pair of output
//!   positions the taps less the zero point are gathered into int16 patches (a stack array
//!   sized by the caller), then each pair of output channels takes a 2x2 block of sums.
//!   Weight rows hold each group of four taps as `[w0 w2 w1 w3]`, padded to whole groups.
//! - [`dense`]: int8 products with weights in column-pair order.
//!
//! The two-products step is [`smlad`] over a packed int16 pair and `SXTB16` of a weight
//! word. With the crate feature `arm-dsp` on a 32-bit Arm target (Cortex-M4/M7/M33, whose
//! DSP extension has these instructions) they are `SMLAD`/`SXTB16` through stable inline
//! assembly; elsewhere the same arithmetic in plain Rust.

use super::ConvShape;
use super::int::QLinear;
use crate::Requant;

#[cfg(all(feature = "arm-dsp", target_arch = "arm"))]
mod ops {
    use core::arch::asm;

    #[inline(always)]
    pub fn smlad(a: i32, b: i32, acc: i32) -> i32 {
        let r: i32;
        // SAFETY: register-only arithmetic, no memory or flags touched.
        unsafe {
            asm!("smlad {r}, {a}, {b}, {c}", r = lateout(reg) r, a = in(reg) a, b = in(reg) b, c = in(reg) acc, options(pure, nomem, nostack, preserves_flags))
        };
        r
    }

    #[inline(always)]
    pub fn sxtb16(x: i32) -> i32 {
        let r: i32;
        // SAFETY: as above.
        unsafe {
            asm!("sxtb16 {r}, {x}", r = lateout(reg) r, x = in(reg) x, options(pure, nomem, nostack, preserves_flags))
        };
        r
    }

    #[inline(always)]
    pub fn sxtb16_r8(x: i32) -> i32 {
        let r: i32;
        // SAFETY: as above.
        unsafe {
            asm!("sxtb16 {r}, {x}, ror #8", r = lateout(reg) r, x = in(reg) x, options(pure, nomem, nostack, preserves_flags))
        };
        r
    }

    #[inline(always)]
    pub fn smlabb(a: i32, b: i32, acc: i32) -> i32 {
        let r: i32;
        // SAFETY: register-only arithmetic.
        unsafe {
            asm!("smlabb {r}, {a}, {b}, {c}", r = lateout(reg) r, a = in(reg) a, b = in(reg) b, c = in(reg) acc, options(pure, nomem, nostack, preserves_flags))
        };
        r
    }

    #[inline(always)]
    pub fn smlatb(a: i32, b: i32, acc: i32) -> i32 {
        let r: i32;
        // SAFETY: register-only arithmetic.
        unsafe {
            asm!("smlatb {r}, {a}, {b}, {c}", r = lateout(reg) r, a = in(reg) a, b = in(reg) b, c = in(reg) acc, options(pure, nomem, nostack, preserves_flags))
        };
        r
    }

    /// Two words from `*p`, advancing it past them (`LDRD` with write-back).
    ///
    /// # Safety
    /// `*p` and `*p + 1` are in bounds of one allocation and `*p` is 4-byte aligned.
    #[inline(always)]
    pub unsafe fn ld2(p: &mut *const u32) -> (i32, i32) {
        let (a, b): (i32, i32);
        // SAFETY: the caller's; reads the two words, writes back the pointer.
        unsafe {
            asm!("ldrd {a}, {b}, [{p}], #8", a = lateout(reg) a, b = lateout(reg) b, p = inout(reg) *p, options(pure, readonly, nostack, preserves_flags))
        };
        (a, b)
    }

    #[inline(always)]
    pub fn sxtab16(a: i32, x: i32) -> i32 {
        let r: i32;
        // SAFETY: as above.
        unsafe {
            asm!("sxtab16 {r}, {a}, {x}", r = lateout(reg) r, a = in(reg) a, x = in(reg) x, options(pure, nomem, nostack, preserves_flags))
        };
        r
    }

    #[inline(always)]
    pub fn sxtab16_r8(a: i32, x: i32) -> i32 {
        let r: i32;
        // SAFETY: as above.
        unsafe {
            asm!("sxtab16 {r}, {a}, {x}, ror #8", r = lateout(reg) r, a = in(reg) a, x = in(reg) x, options(pure, nomem, nostack, preserves_flags))
        };
        r
    }
}

#[cfg(not(all(feature = "arm-dsp", target_arch = "arm")))]
mod ops {
    /// `acc + lo(a) * lo(b) + hi(a) * hi(b)` on the signed 16-bit halves (SMLAD).
    #[inline(always)]
    pub fn smlad(a: i32, b: i32, acc: i32) -> i32 {
        let (a0, a1) = (a as i16 as i32, (a >> 16) as i16 as i32);
        let (b0, b1) = (b as i16 as i32, (b >> 16) as i16 as i32);
        acc.wrapping_add(a0 * b0).wrapping_add(a1 * b1)
    }

    /// Bytes 0 and 2 sign-extended into the two halves (SXTB16).
    #[inline(always)]
    pub fn sxtb16(x: i32) -> i32 {
        (x as i8 as i16 as u16 as u32 | ((((x >> 16) as i8 as i16 as u16) as u32) << 16)) as i32
    }

    /// Bytes 1 and 3 (SXTB16 with ROR #8).
    #[inline(always)]
    pub fn sxtb16_r8(x: i32) -> i32 {
        sxtb16(x >> 8)
    }

    /// `acc + lo(a) * lo(b)` on signed 16-bit halves (SMLABB).
    #[inline(always)]
    pub fn smlabb(a: i32, b: i32, acc: i32) -> i32 {
        acc.wrapping_add(a as i16 as i32 * b as i16 as i32)
    }

    /// `acc + hi(a) * lo(b)` (SMLATB).
    #[inline(always)]
    pub fn smlatb(a: i32, b: i32, acc: i32) -> i32 {
        acc.wrapping_add((a >> 16) as i16 as i32 * b as i16 as i32)
    }

    /// Two words from `*p`, advancing it past them.
    ///
    /// # Safety
    /// `*p` and `*p + 1` are in bounds of one allocation and aligned.
    #[inline(always)]
    pub unsafe fn ld2(p: &mut *const u32) -> (i32, i32) {
        // SAFETY: the caller's.
        unsafe {
            let r = (p.read() as i32, p.add(1).read() as i32);
            *p = p.add(2);
            r
        }
    }

    /// `a` plus bytes 0 and 2 sign-extended, per 16-bit half, wrapping (SXTAB16).
    #[inline(always)]
    pub fn sxtab16(a: i32, x: i32) -> i32 {
        let b = sxtb16(x);
        let lo = (a as u16).wrapping_add(b as u16) as u32;
        let hi = ((a >> 16) as u16).wrapping_add((b >> 16) as u16) as u32;
        (lo | hi << 16) as i32
    }

    /// `a` plus bytes 1 and 3 (SXTAB16 with ROR #8).
    #[inline(always)]
    pub fn sxtab16_r8(a: i32, x: i32) -> i32 {
        sxtab16(a, x >> 8)
    }
}

pub use ops::{ld2, smlabb, smlad, smlatb, sxtab16, sxtab16_r8, sxtb16, sxtb16_r8};

#[inline(always)]
fn word(b: &[i8]) -> i32 {
    i32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

/// The rescale of one output channel, resolved once per channel rather than per output:
/// the 32-bit form for shifts in -31..=-2 (`((hi32(acc * m) >> r) + 1) >> 1`, exact since
/// the rounding bit is a multiple of 2^32; see the C backend), else the reference one.
#[derive(Clone, Copy)]
pub struct Fin {
    rq: Requant,
    r: u32,
    fast: bool,
    tflite: bool,
    zp: i32,
    lo: i32,
    hi: i32,
}

impl Fin {
    #[inline(always)]
    pub fn new(q: &QLinear, ch: usize) -> Fin {
        let rq: Requant = q.requant[if q.requant.len() == 1 { 0 } else { ch }];
        let fast = (-31..=-2).contains(&rq.shift) && !q.tflite;
        Fin {
            rq,
            r: (-2 - rq.shift) as u32 & 31,
            fast,
            tflite: q.tflite,
            zp: q.output_zp,
            lo: q.act_min,
            hi: q.act_max,
        }
    }

    /// The int8 output of sum `acc`.
    #[inline(always)]
    pub fn apply(&self, acc: i32) -> i8 {
        // the fast form is at most 2^29 in size, so only the general one can saturate
        let v = if self.fast {
            let hi = ((acc as i64 * self.rq.multiplier as i64) >> 32) as i32;
            (((hi >> self.r) + 1) >> 1) + self.zp
        } else {
            super::int::rescale(self.tflite, acc, self.rq).saturating_add(self.zp)
        };
        v.clamp(self.lo, self.hi) as i8
    }
}

/// The int8 output of sum `acc` of channel `ch` (see [`Fin`]).
#[inline(always)]
pub fn finish(q: &QLinear, ch: usize, acc: i32) -> i8 {
    Fin::new(q, ch).apply(acc)
}

/// One patch against one weight row.
#[inline(always)]
fn dot(p: &[u32], w: &[i8], mut acc: i32) -> i32 {
    for (p, w) in p.chunks_exact(2).zip(w.chunks_exact(4)) {
        let v = word(w);
        let (pa, pb) = (u32::from_le(p[0]) as i32, u32::from_le(p[1]) as i32);
        acc = smlad(pb, sxtb16_r8(v), smlad(pa, sxtb16(v), acc));
    }
    acc
}

/// The 2x2 block of sums of two patches (`kk / 2` words apart from `p`) against two weight
/// rows (`kk` bytes apart from `w`), four taps per step, eight where they divide `kk`; one
/// pointer per array with the second patch and row at constant offsets, as the C kernel.
///
/// # Safety
/// `p` points to `kk` readable words and `w` to `2 * kk` readable bytes; `kk % 4 == 0`.
#[inline(always)]
unsafe fn block(acc: &mut [i32; 4], p: *const u32, w: *const i8, kk: usize) {
    #[inline(always)]
    unsafe fn step(s: &mut [i32; 4], p: *const u32, w: *const i8, kk: usize) {
        // SAFETY: the caller's bounds.
        let (pa, pb, qa, qb, v, u) = unsafe {
            (
                u32::from_le(*p) as i32,
                u32::from_le(*p.add(1)) as i32,
                u32::from_le(*p.add(kk / 2)) as i32,
                u32::from_le(*p.add(kk / 2 + 1)) as i32,
                i32::from_le((w as *const i32).read_unaligned()),
                i32::from_le((w.add(kk) as *const i32).read_unaligned()),
            )
        };
        let (a, c) = (sxtb16(v), sxtb16_r8(v));
        s[0] = smlad(pb, c, smlad(pa, a, s[0]));
        s[1] = smlad(qb, c, smlad(qa, a, s[1]));
        let (a, c) = (sxtb16(u), sxtb16_r8(u));
        s[2] = smlad(pb, c, smlad(pa, a, s[2]));
        s[3] = smlad(qb, c, smlad(qa, a, s[3]));
    }
    let (mut p, mut w) = (p, w);
    // SAFETY: `kk / 8` double steps and at most one single step cover `kk` taps.
    unsafe {
        for _ in 0..kk / 8 {
            step(acc, p, w, kk);
            step(acc, p.add(2), w.add(4), kk);
            p = p.add(4);
            w = w.add(8);
        }
        if !kk.is_multiple_of(8) {
            step(acc, p, w, kk);
        }
    }
}

/// Gathers the patch of output position `pos` (row-major) into `t` (length `kk`, taps past
/// the window's stay as they are: zero). A window inside the input is copied without tests,
/// one `KH` x `KW` block per channel (constants, so the rows unroll).
#[inline(always)]
fn gather<const KH: usize, const KW: usize>(x: &[i8], t: &mut [i16], s: &ConvShape, b: usize, pos: usize, zp: i32) {
    let p = &s.plane;
    let hw = p.h * p.w;
    let xb = &x[b * s.cin * hw..][..s.cin * hw];
    let (oy, ox) = (pos / p.ow, pos % p.ow);
    let (iy0, ix0) = (
        (oy * p.sh) as isize - p.ph as isize,
        (ox * p.sw) as isize - p.pw as isize,
    );
    let (ylast, xlast) = (((KH - 1) * p.dh) as isize, ((KW - 1) * p.dw) as isize);
    if iy0 >= 0 && ix0 >= 0 && iy0 + ylast < p.h as isize && ix0 + xlast < p.w as isize {
        let at = iy0 as usize * p.w + ix0 as usize;
        let (rs, cs) = (p.dh * p.w, p.dw);
        for (tc, xc) in t.chunks_exact_mut(KH * KW).zip(xb.chunks_exact(hw)) {
            let win = &xc[at..];
            for (ky, tr) in tc.chunks_exact_mut(KW).enumerate() {
                for (kx, d) in tr.iter_mut().enumerate() {
                    // SAFETY: the window lies inside the plane (tested above), so every tap
                    // `ky * rs + kx * cs` from its corner is inside `xc` past `at`.
                    let v = unsafe { *win.get_unchecked(ky * rs + kx * cs) };
                    *d = (v as i32 - zp) as i16;
                }
            }
        }
        return;
    }
    let mut i = 0;
    for xc in xb.chunks_exact(hw) {
        for ky in 0..KH {
            let iy = iy0 + (ky * p.dh) as isize;
            for kx in 0..KW {
                let ix = ix0 + (kx * p.dw) as isize;
                t[i] = if iy < 0 || iy >= p.h as isize || ix < 0 || ix >= p.w as isize {
                    0
                } else {
                    (xc[iy as usize * p.w + ix as usize] as i32 - zp) as i16
                };
                i += 1;
            }
        }
    }
}

/// A one-group int8 convolution over patch-ordered weights (`[cout][kk]`, `kk` the taps
/// rounded up to a multiple of four); `W` is `kk`, the words of the two int16 patches on the
/// stack (words, so each pair is one aligned load).
#[inline]
pub fn patch_conv<const W: usize, const KH: usize, const KW: usize>(
    x: &[i8],
    w: &[i8],
    bias: Option<&[i32]>,
    y: &mut [i8],
    s: &ConvShape,
    q: &QLinear,
) {
    let kk = W;
    let mut words = [0u32; W];
    let p = &s.plane;
    let pout = p.oh * p.ow;
    let zp = q.input_zp;
    let b0 = |o: usize| bias.map_or(0, |b| b[o]);
    for b in 0..s.batch {
        let yb = &mut y[b * s.cout * pout..][..s.cout * pout];
        let mut pos = 0;
        while pos < pout {
            let two = pos + 1 < pout;
            {
                let pt: &mut [i16] = bytemuck::cast_slice_mut(&mut words[..]);
                let (t0, t1) = pt.split_at_mut(kk);
                gather::<KH, KW>(x, t0, s, b, pos, zp);
                if two {
                    gather::<KH, KW>(x, t1, s, b, pos + 1, zp);
                }
            }
            let (p0, p1) = words.split_at(kk / 2);
            let mut o = 0;
            if two {
                while o + 2 <= s.cout {
                    // One index into the whole patch array and the two weight rows: the
                    // second patch and row sit at constant offsets (`W` is a constant).
                    let wp = &w[o * kk..][..2 * kk];
                    let mut acc = [b0(o), b0(o), b0(o + 1), b0(o + 1)];
                    // SAFETY: `words` holds the two patches (`kk / 2` words each) and `wp` the
                    // two weight rows (`kk` bytes each); every step reads four taps at
                    // index `i < kk` of each, at constant offsets from one pointer per array.
                    unsafe { block(&mut acc, words.as_ptr(), wp.as_ptr(), kk) };
                    let (f0, f1) = (Fin::new(q, o), Fin::new(q, o + 1));
                    yb[o * pout + pos] = f0.apply(acc[0]);
                    yb[o * pout + pos + 1] = f0.apply(acc[1]);
                    yb[(o + 1) * pout + pos] = f1.apply(acc[2]);
                    yb[(o + 1) * pout + pos + 1] = f1.apply(acc[3]);
                    o += 2;
                }
            }
            for oc in o..s.cout {
                let wr = &w[oc * kk..][..kk];
                yb[oc * pout + pos] = finish(q, oc, dot(p0, wr, b0(oc)));
                if two {
                    yb[oc * pout + pos + 1] = finish(q, oc, dot(p1, wr, b0(oc)));
                }
            }
            pos += 2;
        }
    }
}

/// One input channel per group (depthwise above all): per group the input plane copied into
/// a zero-point-padded stack buffer of `N` bytes (the plane the outputs read), the zero point
/// moved into the starting sum, the `KH` x `KW` weights in registers and every tap a fixed
/// offset with no bounds test; rows of three unit-stride taps take two outputs at a time from
/// one word of the plane (`SMLAD` over taps 0 and 2, a halfword multiply for tap 1).
#[inline]
pub fn plane_conv<const N: usize, const KH: usize, const KW: usize>(
    x: &[i8],
    w: &[i8],
    bias: Option<&[i32]>,
    y: &mut [i8],
    s: &ConvShape,
    q: &QLinear,
) {
    let p = &s.plane;
    let (ph, pw) = (
        (p.oh - 1) * p.sh + (KH - 1) * p.dh + 1,
        (p.ow - 1) * p.sw + (KW - 1) * p.dw + 1,
    );
    let (groups, mg) = (s.cin, s.cout / s.cin);
    let (rows, cols) = (p.h.min(ph.saturating_sub(p.ph)), p.w.min(pw.saturating_sub(p.pw)));
    let zp = q.input_zp;
    let pairs = KW == 3 && p.dw == 1 && p.sw == 1;
    let mut pl = [0i8; N];
    let pl = &mut pl[..ph * pw];
    let pout = p.oh * p.ow;
    let (rs, cs) = (p.dh * pw, p.dw);
    for b in 0..s.batch {
        for gi in 0..groups {
            let xp = &x[(b * groups + gi) * p.h * p.w..][..p.h * p.w];
            pl.fill(zp as i8);
            for iy in 0..rows {
                pl[(iy + p.ph) * pw + p.pw..][..cols].copy_from_slice(&xp[iy * p.w..][..cols]);
            }
            for oc in gi * mg..(gi + 1) * mg {
                let mut wk = [[0i32; KW]; KH];
                for (r, wr) in wk.iter_mut().zip(w[oc * KH * KW..][..KH * KW].chunks_exact(KW)) {
                    for (d, &v) in r.iter_mut().zip(wr) {
                        *d = v as i32;
                    }
                }
                let sum: i32 = wk.iter().flatten().sum();
                let s0 = bias.map_or(0, |b| b[oc]) - zp * sum;
                let fin = Fin::new(q, oc);
                let yo = &mut y[(b * s.cout + oc) * pout..][..pout];
                for (oy, yr) in yo.chunks_exact_mut(p.ow).enumerate() {
                    let base = &pl[oy * p.sh * pw..];
                    let mut ox = 0;
                    if pairs {
                        while ox + 2 <= p.ow {
                            let (mut a, mut c) = (s0, s0);
                            for (ky, wr) in wk.iter().enumerate() {
                                // SAFETY: the row holds `(ow - 1) + 3` bytes from the
                                // window's corner, so the word at `ox <= ow - 2` is inside.
                                let v = unsafe { (base.as_ptr().add(ky * rs + ox) as *const i32).read_unaligned() };
                                let v = i32::from_le(v);
                                let (e, f) = (sxtb16(v), sxtb16_r8(v));
                                let w02 = (wr[0] as u16 as u32 | (wr[2] as u32) << 16) as i32;
                                a = smlabb(f, wr[1], smlad(e, w02, a));
                                c = smlatb(e, wr[1], smlad(f, w02, c));
                            }
                            yr[ox] = fin.apply(a);
                            yr[ox + 1] = fin.apply(c);
                            ox += 2;
                        }
                    }
                    for (o, d) in yr.iter_mut().enumerate().skip(ox) {
                        let mut acc = s0;
                        for (ky, wr) in wk.iter().enumerate() {
                            for (kx, &wv) in wr.iter().enumerate() {
                                // SAFETY: every tap of an output's window lies in the
                                // padded plane, which is sized for exactly those windows.
                                let v = unsafe { *base.get_unchecked(ky * rs + o * p.sw + kx * cs) };
                                acc += v as i32 * wv;
                            }
                        }
                        *d = fin.apply(acc);
                    }
                }
            }
        }
    }
}

/// An int8 product `[rows, k] x [k, n]` over weights in dense order, as little-endian words
/// (per group of `C` columns and four rows, per column pair the words of rows 0/2 and 1/3),
/// `k % 4 == 0`; `C` is 4 when it divides `n`, else 2 (`kiln-backends`' `pack::dense_cols`).
/// `zp` is the zero point still to subtract (0 when the compiler folded it into the bias).
/// Each four activations (less `zp`) become two int16 pairs shared by the group's columns;
/// eight rows per step when they divide `k`.
#[inline]
#[allow(clippy::too_many_arguments)]
pub fn dense<const C: usize>(x: &[i8], w: &[u32], bias: Option<&[i32]>, y: &mut [i8], n: usize, zp: i32, q: &QLinear) {
    if zp == 0 {
        dense_zp::<C, false>(x, w, bias, y, n, 0, q);
    } else {
        dense_zp::<C, true>(x, w, bias, y, n, zp, q);
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn dense_zp<const C: usize, const Z: bool>(
    x: &[i8],
    w: &[u32],
    bias: Option<&[i32]>,
    y: &mut [i8],
    n: usize,
    zp: i32,
    q: &QLinear,
) {
    let k = w.len() * 4 / n;
    let kzp = ((zp.wrapping_neg() as u16 as u32) * 0x10001) as i32;
    /// Four rows: `v` the activations, `*wp` the group's next `C` words (advanced past them).
    ///
    /// # Safety
    /// `C` words from `*wp` are in bounds and aligned.
    #[inline(always)]
    unsafe fn quad<const C: usize, const Z: bool>(acc: &mut [i32; C], kzp: i32, v: i32, wp: &mut *const u32) {
        let (xa, xb) = if Z {
            (sxtab16(kzp, v), sxtab16_r8(kzp, v))
        } else {
            (sxtb16(v), sxtb16_r8(v))
        };
        for h in 0..C / 2 {
            // SAFETY: the caller's.
            let (wa, wb) = unsafe { ld2(wp) };
            acc[2 * h] = smlad(xb, sxtb16(wb), smlad(xa, sxtb16(wa), acc[2 * h]));
            acc[2 * h + 1] = smlad(xb, sxtb16_r8(wb), smlad(xa, sxtb16_r8(wa), acc[2 * h + 1]));
        }
    }
    for (xr, yr) in x.chunks_exact(k).zip(y.chunks_exact_mut(n)) {
        for ((j0, wg), yg) in (0..n)
            .step_by(C)
            .zip(w.chunks_exact(C * k / 4))
            .zip(yr.chunks_exact_mut(C))
        {
            let mut acc = [0i32; C];
            for (c, a) in acc.iter_mut().enumerate() {
                *a = bias.map_or(0, |b| b[j0 + c]);
            }
            // k/4 steps of C words each: exactly `wg`, which is whole words of one slice.
            let mut wp = wg.as_ptr();
            if k.is_multiple_of(8) {
                for xs in xr.chunks_exact(8) {
                    // SAFETY: see above.
                    unsafe {
                        quad::<C, Z>(&mut acc, kzp, word(&xs[..4]), &mut wp);
                        quad::<C, Z>(&mut acc, kzp, word(&xs[4..]), &mut wp);
                    }
                }
            } else {
                for xs in xr.chunks_exact(4) {
                    // SAFETY: see above.
                    unsafe { quad::<C, Z>(&mut acc, kzp, word(xs), &mut wp) };
                }
            }
            for (c, (d, &a)) in yg.iter_mut().zip(&acc).enumerate() {
                *d = finish(q, j0 + c, a);
            }
        }
    }
}

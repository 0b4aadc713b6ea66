//! Integer kernels of quantized graphs: the steps of `kiln_runtime`'s fixed-point contract
//! in Cranelift IR, so native results equal the evaluator's byte for byte. Rescale factors
//! that vary per output channel come from read-only tables (`aux`); the saturating case of
//! the doubling high multiply (both operands `i32::MIN`) cannot occur, since multipliers
//! are at least 2^30.

use super::Args;
use super::nn::{Geo, geo, range_row, tap_ranges};
use crate::cranelift::fx::Fx;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32, I8, I16, I32, I64};
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Value};
use kiln_ir::op::{Numerics, PoolKind, QAdd, QLinear, QMul, QPRelu, Requant, Window};
use kiln_ir::{Graph, NodeId, Op};

fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

fn load_i8(fx: &mut Fx, addr: Value) -> Value {
    fx.b.ins().sload8(I32, flags(), addr, 0)
}

fn store_i8(fx: &mut Fx, v: Value, addr: Value) {
    fx.b.ins().istore8(flags(), v, addr, 0);
}

fn c32(fx: &mut Fx, v: i64) -> Value {
    fx.b.ins().iconst(I32, v)
}

/// `acc += sum x[i] * w[i]` over `n` int8 pairs, each pointer with its byte step.
fn dot_i8(fx: &mut Fx, acc: cranelift_frontend::Variable, x: (Value, i64), w: (Value, i64), n: i64) {
    fx.for_ptrs(n, &[x, w], &mut |fx, p| {
        let xv = load_i8(fx, p[0]);
        let wv = load_i8(fx, p[1]);
        let prod = fx.b.ins().imul(xv, wv);
        let cur = fx.b.use_var(acc);
        let nv = fx.b.ins().iadd(cur, prod);
        fx.b.def_var(acc, nv);
    });
}

/// Four int8 at `ptr` sign-extended to an i32x4 (one 4-byte load, so nothing past them is read).
fn widen4(fx: &mut Fx, ptr: Value) -> Value {
    use cranelift_codegen::ir::types::{I8X16, I32X4};
    let four = fx.b.ins().load(I32, flags(), ptr, 0);
    let v = fx.b.ins().scalar_to_vector(I32X4, four);
    let lanes = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
    let bytes = fx.b.ins().bitcast(I8X16, lanes, v);
    let h = fx.b.ins().swiden_low(bytes);
    fx.b.ins().swiden_low(h)
}

/// `kiln_runtime::multiply_by_quantized_multiplier` with run-time `m` and `shift` (i32):
/// the 64-bit product shifted right by `31 - shift` rounding half up, saturated to i32.
fn mbqm(fx: &mut Fx, x: Value, m: Value, shift: Value) -> Value {
    let x64 = fx.b.ins().sextend(I64, x);
    let m64 = fx.b.ins().sextend(I64, m);
    let p = fx.b.ins().imul(x64, m64);
    let r = round_shift(fx, p, shift);
    saturate_i32(fx, r)
}

/// An i64 `t` shifted right by `31 - shift` (`shift` a run-time i32), rounding half up.
fn round_shift(fx: &mut Fx, t: Value, shift: Value) -> Value {
    let s64 = fx.b.ins().sextend(I64, shift);
    let k31 = fx.i(31);
    let e = fx.b.ins().isub(k31, s64);
    let e1 = fx.b.ins().iadd_imm_s(e, -1);
    let one = fx.i(1);
    let half = fx.b.ins().ishl(one, e1);
    let t = fx.b.ins().iadd(t, half);
    fx.b.ins().sshr(t, e)
}

/// TFLite's two-step rescale (`kiln_runtime::multiply_by_quantized_multiplier_tflite`) of an
/// i32 `x` by run-time i32 `m` and `shift`: `x` shifted left by a positive shift, the
/// doubling high multiply rounded half up, `(x * m + 2^30) >> 31`, then a divide by
/// `2^-shift` rounded half away from zero, `(v + 2^(e-1) - [v < 0]) >> e`. Multipliers are
/// positive, so the high multiply's one saturating case (both `i32::MIN`) cannot occur.
fn mbqm_tflite(fx: &mut Fx, x: Value, m: Value, shift: Value) -> Value {
    let zero = c32(fx, 0);
    let left = fx.b.ins().smax(shift, zero);
    let xs = fx.b.ins().ishl(x, left);
    let x64 = fx.b.ins().sextend(I64, xs);
    let m64 = fx.b.ins().sextend(I64, m);
    let p = fx.b.ins().imul(x64, m64);
    let p = fx.b.ins().iadd_imm_s(p, 1 << 30);
    let v = fx.b.ins().sshr_imm_s(p, 31);
    let neg_shift = fx.b.ins().ineg(shift);
    let e = fx.b.ins().smax(neg_shift, zero);
    let e = fx.b.ins().sextend(I64, e);
    let one = fx.i(1);
    let pow = fx.b.ins().ishl(one, e);
    let half = fx.b.ins().sshr_imm_s(pow, 1);
    let neg = fx.b.ins().sshr_imm_s(v, 63);
    let z64 = fx.i(0);
    let any = fx.b.ins().icmp(IntCC::SignedGreaterThan, e, z64);
    let adj = fx.b.ins().select(any, neg, z64);
    let t = fx.b.ins().iadd(v, half);
    let t = fx.b.ins().iadd(t, adj);
    let r = fx.b.ins().sshr(t, e);
    fx.b.ins().ireduce(I32, r)
}

/// The rescale of `x` by the constant `r` in the rounding of `numerics`.
fn rescale_const(fx: &mut Fx, numerics: Numerics, x: Value, r: Requant) -> Value {
    match numerics {
        Numerics::Onnx => mbqm_const(fx, x, r),
        Numerics::Tflite => {
            let (m, s) = (c32(fx, r.multiplier as i64), c32(fx, r.shift as i64));
            mbqm_tflite(fx, x, m, s)
        }
    }
}

/// `mbqm` with the factor known at compile time.
fn mbqm_const(fx: &mut Fx, x: Value, r: Requant) -> Value {
    let total = 31 - r.shift as i64;
    let x64 = fx.b.ins().sextend(I64, x);
    let p = fx.b.ins().imul_imm_s(x64, r.multiplier as i64);
    let p = fx.b.ins().iadd_imm_s(p, 1i64 << (total - 1));
    let q = fx.b.ins().sshr_imm_s(p, total);
    saturate_i32(fx, q)
}

/// An i64 clamped to the i32 range and narrowed.
fn saturate_i32(fx: &mut Fx, v: Value) -> Value {
    let (lo, hi) = (fx.i(i32::MIN as i64), fx.i(i32::MAX as i64));
    let v = fx.b.ins().smax(v, lo);
    let v = fx.b.ins().smin(v, hi);
    fx.b.ins().ireduce(I32, v)
}

fn clamp(fx: &mut Fx, v: Value, lo: i32, hi: i32) -> Value {
    let (l, h) = (c32(fx, lo as i64), c32(fx, hi as i64));
    let v = fx.b.ins().smax(v, l);
    fx.b.ins().smin(v, h)
}

fn numel(g: &Graph, v: kiln_ir::ValueId) -> i64 {
    g.value(v).ty.numel() as i64
}

pub(crate) fn quantize(fx: &mut Fx, g: &Graph, n: NodeId, scale: f32, zp: i32, a: &Args) {
    let total = numel(g, g.node(n).outputs[0]);
    let to = g.value(g.node(n).outputs[0]).ty.dtype.scalar;
    let wide = to == kiln_ir::Scalar::I16;
    let (lo, hi, es) = match to {
        kiln_ir::Scalar::I16 => (-32768, 32767, 2),
        kiln_ir::Scalar::U8 => (0, 255, 1),
        _ => (-128, 127, 1),
    };
    let vec = if fx.simd { total / 4 } else { 0 };
    if vec > 0 {
        quantize4(fx, (a.ins[0], a.outs[0]), vec, scale, zp, to);
    }
    let (xt, yt) = (fx.add_imm(a.ins[0], vec * 16), fx.add_imm(a.outs[0], vec * 4 * es));
    fx.for_ptrs(total - vec * 4, &[(xt, 4), (yt, es)], &mut |fx, p| {
        let x = fx.load(F32, p[0]);
        let s = fx.f(F32, scale);
        let y = fx.b.ins().fdiv(x, s);
        let r = round_even(fx, y);
        let q = fx.b.ins().iadd_imm_s(r, zp as i64);
        let q = clamp(fx, q, lo, hi);
        if wide {
            fx.b.ins().istore16(flags(), q, p[1], 0);
        } else {
            store_i8(fx, q, p[1]);
        }
    });
}

/// Four lanes of `quantize` at a time, `count` times. Rounding half to even is the float
/// add's own: for `|y| <= 2^22`, `(y + 1.5 * 2^23) - 1.5 * 2^23` is `y` rounded to an
/// integer, ties to even. Clamping `y` to that range first changes nothing after the
/// saturation to at most 16 bits, and NaN still converts to 0 (`fcvt_to_sint_sat`), as
/// `kiln_runtime::round_even` has it.
fn quantize4(fx: &mut Fx, (x, y): (Value, Value), count: i64, scale: f32, zp: i32, to: kiln_ir::Scalar) {
    use cranelift_codegen::ir::types::{F32X4, I32X4, I64X2};
    let (lo, hi, es) = match to {
        kiln_ir::Scalar::I16 => (-32768, 32767, 2),
        kiln_ir::Scalar::U8 => (0, 255, 1),
        _ => (-128, 127, 1),
    };
    let splat_f = |fx: &mut Fx, v: f32| {
        let c = fx.f(F32, v);
        fx.b.ins().splat(F32X4, c)
    };
    let splat_i = |fx: &mut Fx, v: i64| {
        let c = c32(fx, v);
        fx.b.ins().splat(I32X4, c)
    };
    let (s4, lim, nlim, magic) = (
        splat_f(fx, scale),
        splat_f(fx, 4194304.0),
        splat_f(fx, -4194304.0),
        splat_f(fx, 12582912.0),
    );
    let (z4, lo4, hi4) = (splat_i(fx, zp as i64), splat_i(fx, lo), splat_i(fx, hi));
    fx.for_ptrs(count, &[(x, 16), (y, 4 * es)], &mut |fx, p| {
        let v = fx.b.ins().load(F32X4, flags(), p[0], 0);
        let v = fx.b.ins().fdiv(v, s4);
        let v = fx.b.ins().fmin(v, lim);
        let v = fx.b.ins().fmax(v, nlim);
        let v = fx.b.ins().fadd(v, magic);
        let v = fx.b.ins().fsub(v, magic);
        let q = fx.b.ins().fcvt_to_sint_sat(I32X4, v);
        let q = fx.b.ins().iadd(q, z4);
        let q = fx.b.ins().smax(q, lo4);
        let q = fx.b.ins().smin(q, hi4);
        let h = fx.b.ins().snarrow(q, q);
        let lanes = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
        if es == 2 {
            let d = fx.b.ins().bitcast(I64X2, lanes, h);
            let d = fx.b.ins().extractlane(d, 0);
            fx.b.ins().store(flags(), d, p[1], 0);
            return;
        }
        let b = if to == kiln_ir::Scalar::U8 {
            fx.b.ins().unarrow(h, h)
        } else {
            fx.b.ins().snarrow(h, h)
        };
        let w = fx.b.ins().bitcast(I32X4, lanes, b);
        let w = fx.b.ins().extractlane(w, 0);
        fx.b.ins().store(flags(), w, p[1], 0);
    });
}

/// `kiln_runtime::round_even`: half to even to i32, NaN to 0, saturated at ±1e9.
fn round_even(fx: &mut Fx, y: Value) -> Value {
    let (lo, hi) = (fx.f(F32, -1.0e9), fx.f(F32, 1.0e9));
    let big = fx.b.ins().fcmp(FloatCC::GreaterThan, y, hi);
    let y1 = fx.b.ins().select(big, hi, y);
    let small = fx.b.ins().fcmp(FloatCC::LessThan, y1, lo);
    let y2 = fx.b.ins().select(small, lo, y1);
    let t = fx.b.ins().fcvt_to_sint_sat(I32, y2);
    let tf = fx.b.ins().fcvt_from_sint(F32, t);
    let f = fx.b.ins().fsub(y2, tf);
    let (half, nhalf) = (fx.f(F32, 0.5), fx.f(F32, -0.5));
    let odd = fx.b.ins().band_imm_s(t, 1);
    let odd = fx.b.ins().icmp_imm_s(IntCC::NotEqual, odd, 0);
    let above = fx.b.ins().fcmp(FloatCC::GreaterThan, f, half);
    let tie_up = fx.b.ins().fcmp(FloatCC::Equal, f, half);
    let tie_up = fx.b.ins().band(tie_up, odd);
    let up = fx.b.ins().bor(above, tie_up);
    let below = fx.b.ins().fcmp(FloatCC::LessThan, f, nhalf);
    let tie_down = fx.b.ins().fcmp(FloatCC::Equal, f, nhalf);
    let tie_down = fx.b.ins().band(tie_down, odd);
    let down = fx.b.ins().bor(below, tie_down);
    let tp = fx.b.ins().iadd_imm_s(t, 1);
    let tm = fx.b.ins().iadd_imm_s(t, -1);
    let r = fx.b.ins().select(down, tm, t);
    let r = fx.b.ins().select(up, tp, r);
    let nan = fx.b.ins().fcmp(FloatCC::Unordered, y, y);
    let zero = c32(fx, 0);
    fx.b.ins().select(nan, zero, r)
}

/// `kiln_runtime::dynamic_quantize` of `n` f32 at `x` into int8 at `q`: returns the scale
/// (f32) and zero point (i32) as values. Four lanes at a time where the target has 128-bit
/// vectors: the range comes out the same in any order (a value replaces the running bound
/// only when strictly beyond it, so NaNs and -0.0 never do), and each lane rounds exactly
/// as the scalar steps.
pub(crate) fn dyn_quantize(fx: &mut Fx, x: Value, q: Value, n: i64) -> (Value, Value) {
    use cranelift_codegen::ir::types::{F32X4, I8X16, I16X8, I32X4};
    let vec = if fx.simd { n / 4 } else { 0 };
    let (lo, hi) = (fx.b.declare_var(F32), fx.b.declare_var(F32));
    let zero = fx.f(F32, 0.0);
    fx.b.def_var(lo, zero);
    fx.b.def_var(hi, zero);
    let widen = |fx: &mut Fx, v: Value, var_lo, var_hi, ty| {
        let (l, h) = (fx.b.use_var(var_lo), fx.b.use_var(var_hi));
        let below = fx.b.ins().fcmp(FloatCC::LessThan, v, l);
        let l = fx.sel(ty, below, v, l);
        let above = fx.b.ins().fcmp(FloatCC::GreaterThan, v, h);
        let h = fx.sel(ty, above, v, h);
        fx.b.def_var(var_lo, l);
        fx.b.def_var(var_hi, h);
    };
    if vec > 0 {
        let (lo4, hi4) = (fx.b.declare_var(F32X4), fx.b.declare_var(F32X4));
        let z4 = fx.f(F32X4, 0.0);
        fx.b.def_var(lo4, z4);
        fx.b.def_var(hi4, z4);
        fx.for_ptrs(vec, &[(x, 16)], &mut |fx, p| {
            let v = fx.load(F32X4, p[0]);
            widen(fx, v, lo4, hi4, F32X4);
        });
        let (l4, h4) = (fx.b.use_var(lo4), fx.b.use_var(hi4));
        for lane in 0..4u8 {
            let l = fx.b.ins().extractlane(l4, lane);
            widen(fx, l, lo, hi, F32);
            let h = fx.b.ins().extractlane(h4, lane);
            widen(fx, h, lo, hi, F32);
        }
    }
    let xt = fx.add_imm(x, vec * 16);
    fx.for_ptrs(n - vec * 4, &[(xt, 4)], &mut |fx, p| {
        let v = fx.load(F32, p[0]);
        widen(fx, v, lo, hi, F32);
    });
    let (l, h) = (fx.b.use_var(lo), fx.b.use_var(hi));
    let range = fx.b.ins().fsub(h, l);
    let d = fx.f(F32, 255.0);
    let s = fx.b.ins().fdiv(range, d);
    // scale > 0 and finite (s - s is 0 only for finite s), else (1.0, 0)
    let pos = fx.b.ins().fcmp(FloatCC::GreaterThan, s, zero);
    let ss = fx.b.ins().fsub(s, s);
    let fin = fx.b.ins().fcmp(FloatCC::Equal, ss, zero);
    let ok = fx.b.ins().band(pos, fin);
    let one = fx.f(F32, 1.0);
    let scale = fx.b.ins().select(ok, s, one);
    let lq = fx.b.ins().fdiv(l, scale);
    let m128 = fx.f(F32, -128.0);
    let z = fx.b.ins().fsub(m128, lq);
    let z = round_even(fx, z);
    let z = clamp(fx, z, -128, 127);
    let zero_i = c32(fx, 0);
    let zp = fx.b.ins().select(ok, z, zero_i);
    let (scale, zp) = (fx.anchor(F32, scale), fx.anchor(I32, zp));
    if vec > 0 {
        let s4 = fx.b.ins().splat(F32X4, scale);
        let z4 = fx.b.ins().splat(I32X4, zp);
        let big = c32(fx, 1_000_000_000);
        let (hi_c, lo_c) = (fx.b.ins().splat(I32X4, big), fx.b.ins().ineg(big));
        let lo_c = fx.b.ins().splat(I32X4, lo_c);
        let (lo_q, hi_q) = (c32(fx, -128), c32(fx, 127));
        let (lo_q, hi_q) = (fx.b.ins().splat(I32X4, lo_q), fx.b.ins().splat(I32X4, hi_q));
        fx.for_ptrs(vec, &[(x, 16), (q, 4)], &mut |fx, p| {
            let v = fx.load(F32X4, p[0]);
            let y = fx.b.ins().fdiv(v, s4);
            // rounded half to even by the ISA (SSE4.1 `roundps`, AArch64 `frintn`), then
            // converted saturating (NaN to 0, as round_even's NaN case) and held well inside
            // i32 before the zero point is added
            let y = fx.b.ins().nearest(y);
            let r = fx.b.ins().fcvt_to_sint_sat(I32X4, y);
            let r = fx.b.ins().smin(r, hi_c);
            let r = fx.b.ins().smax(r, lo_c);
            let r = fx.b.ins().iadd(r, z4);
            let r = fx.b.ins().smax(r, lo_q);
            let r = fx.b.ins().smin(r, hi_q);
            let h = fx.b.ins().snarrow(r, r);
            let b: Value = fx.b.ins().snarrow(h, h);
            debug_assert_eq!(fx.b.func.dfg.value_type(h), I16X8);
            debug_assert_eq!(fx.b.func.dfg.value_type(b), I8X16);
            let w = fx.bits(I32X4, b);
            let w = fx.b.ins().extractlane(w, 0);
            fx.b.ins().store(flags(), w, p[1], 0);
        });
    }
    let (xt, qt) = (fx.add_imm(x, vec * 16), fx.add_imm(q, vec * 4));
    fx.for_ptrs(n - vec * 4, &[(xt, 4), (qt, 1)], &mut |fx, p| {
        let v = fx.load(F32, p[0]);
        let y = fx.b.ins().fdiv(v, scale);
        let r = round_even(fx, y);
        let r = fx.b.ins().iadd(r, zp);
        let r = clamp(fx, r, -128, 127);
        store_i8(fx, r, p[1]);
    });
    (scale, zp)
}

/// The input zero point and output stage an integer product kernel is generic over, with
/// the read-only tables it reads them from.
#[derive(Clone, Copy)]
pub(crate) enum Stage<'a> {
    /// Static int8: per-channel (multiplier, shift) tables and, per output channel,
    /// `zp_in * sum(w)`.
    Static {
        q: &'a QLinear,
        mult: Value,
        shift: Value,
        zsum: Value,
        /// Every rescaled sum provably fits i32 ([`fits_i32`]): no saturation step.
        fits: bool,
    },
    /// Hybrid: the run-time input scale and zero point, the f32 weight scales and, per
    /// output channel, `sum(w)`; results are f32.
    Dynamic {
        sx: Value,
        zp: Value,
        scales: Value,
        per_channel: bool,
        wsum: Value,
    },
}

impl Stage<'_> {
    pub(crate) fn zp(&self, fx: &mut Fx) -> Value {
        match *self {
            Stage::Static { q, .. } => c32(fx, q.input_zp as i64),
            Stage::Dynamic { zp, .. } => zp,
        }
    }

    /// Bytes per output element.
    pub(crate) fn elem(&self) -> i64 {
        match self {
            Stage::Static { .. } => 1,
            Stage::Dynamic { .. } => 4,
        }
    }

    /// `zp_in * sum(w)` of output channel `ch`.
    pub(crate) fn zsum(&self, fx: &mut Fx, ch: Value) -> Value {
        match *self {
            Stage::Static { zsum, .. } => {
                let za = fx.addr(zsum, ch, 4);
                fx.load(I32, za)
            }
            Stage::Dynamic { zp, wsum, .. } => {
                let wa = fx.addr(wsum, ch, 4);
                let w = fx.load(I32, wa);
                fx.b.ins().imul(w, zp)
            }
        }
    }

    /// What `store` needs of output channel `ch`, loaded once per channel.
    pub(crate) fn channel(&self, fx: &mut Fx, ch: Value) -> (Value, Value) {
        match *self {
            Stage::Static { q, mult, shift, .. } => channel_requant(fx, q, mult, shift, ch),
            Stage::Dynamic {
                sx,
                scales,
                per_channel,
                ..
            } => {
                let i = if per_channel { ch } else { fx.i(0) };
                let sa = fx.addr(scales, i, 4);
                let sw = fx.load(F32, sa);
                let s = fx.b.ins().fmul(sx, sw);
                (s, s)
            }
        }
    }

    /// Finishes accumulator `acc` with `chan` from `channel` and stores it at `addr + off`.
    pub(crate) fn store(&self, fx: &mut Fx, acc: Value, chan: (Value, Value), addr: Value, off: i32) {
        match *self {
            Stage::Static { q, fits, .. } => {
                let y = if fits {
                    finish_fit(fx, q, acc, chan.0, chan.1)
                } else {
                    finish(fx, q, acc, chan.0, chan.1)
                };
                fx.b.ins().istore8(flags(), y, addr, off);
            }
            Stage::Dynamic { .. } => {
                let f = fx.b.ins().fcvt_from_sint(F32, acc);
                let y = fx.b.ins().fmul(f, chan.0);
                fx.b.ins().store(flags(), y, addr, off);
            }
        }
    }
}

pub(crate) fn dequantize(fx: &mut Fx, g: &Graph, n: NodeId, scale: f32, zp: i32, a: &Args) {
    let total = numel(g, g.node(n).outputs[0]);
    let from = g.value(g.node(n).inputs[0]).ty.dtype.scalar;
    let wide = from == kiln_ir::Scalar::I16;
    let es = if wide { 2 } else { 1 };
    // four lanes at a time: widened to i32x4, less the zero point, converted, scaled
    let vec = if fx.simd { total / 4 } else { 0 };
    if vec > 0 {
        use cranelift_codegen::ir::types::{F32X4, I8X16, I16X8, I32X4, I64X2};
        let lanes = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
        let (zc, sc) = (c32(fx, zp as i64), fx.f(F32, scale));
        let (z4, s4) = (fx.b.ins().splat(I32X4, zc), fx.b.ins().splat(F32X4, sc));
        fx.for_ptrs(vec, &[(a.ins[0], 4 * es), (a.outs[0], 16)], &mut |fx, p| {
            let q = match from {
                kiln_ir::Scalar::I16 => {
                    let d = fx.b.ins().load(I64, flags(), p[0], 0);
                    let v = fx.b.ins().scalar_to_vector(I64X2, d);
                    let h = fx.b.ins().bitcast(I16X8, lanes, v);
                    fx.b.ins().swiden_low(h)
                }
                kiln_ir::Scalar::U8 => {
                    let w = fx.b.ins().load(I32, flags(), p[0], 0);
                    let v = fx.b.ins().scalar_to_vector(I32X4, w);
                    let bytes = fx.b.ins().bitcast(I8X16, lanes, v);
                    let h = fx.b.ins().uwiden_low(bytes);
                    fx.b.ins().uwiden_low(h)
                }
                _ => widen4(fx, p[0]),
            };
            let d = fx.b.ins().isub(q, z4);
            let f = fx.b.ins().fcvt_from_sint(F32X4, d);
            let y = fx.b.ins().fmul(f, s4);
            fx.b.ins().store(flags(), y, p[1], 0);
        });
    }
    let (xt, yt) = (fx.add_imm(a.ins[0], vec * 4 * es), fx.add_imm(a.outs[0], vec * 16));
    fx.for_ptrs(total - vec * 4, &[(xt, es), (yt, 4)], &mut |fx, p| {
        let q = match from {
            kiln_ir::Scalar::I16 => fx.b.ins().sload16(I32, flags(), p[0], 0),
            kiln_ir::Scalar::U8 => fx.b.ins().uload8(I32, flags(), p[0], 0),
            _ => load_i8(fx, p[0]),
        };
        let d = fx.b.ins().iadd_imm_s(q, -(zp as i64));
        let f = fx.b.ins().fcvt_from_sint(F32, d);
        let s = fx.f(F32, scale);
        let y = fx.b.ins().fmul(f, s);
        fx.store(y, p[1]);
    });
}

pub(crate) fn lut(fx: &mut Fx, g: &Graph, n: NodeId, a: &Args) {
    let total = numel(g, g.node(n).outputs[0]);
    fx.for_ptrs(total, &[(a.ins[0], 1), (a.outs[0], 1)], &mut |fx, p| {
        let q = load_i8(fx, p[0]);
        let i = fx.b.ins().sextend(I64, q);
        let i = fx.add_imm(i, 128);
        let t = fx.addr(a.aux[0], i, 1);
        let v = fx.b.ins().load(I8, flags(), t, 0);
        fx.b.ins().store(flags(), v, p[1], 0);
    });
}

/// `bytes` (int8 values that fit `bits`) packed by `kiln_runtime::pack_weights`.
pub(crate) fn pack(bytes: &[u8], bits: u8) -> Vec<u8> {
    let w: Vec<i8> = bytes.iter().map(|&b| b as i8).collect();
    let mut p = vec![0u8; kiln_runtime::packed_len(w.len(), bits)];
    kiln_runtime::pack_weights(&w, bits, &mut p);
    p
}

/// Unpacks `count` weights of `bits` from `src` into int8 at `dst` (which has room for
/// whole bytes' worth: `count` rounded up to 16).
pub(crate) fn unpack_weights(fx: &mut Fx, src: Value, dst: Value, bits: u8, count: usize) {
    let per = (8 / bits) as i64;
    let bytes = kiln_runtime::packed_len(count, bits) as i64;
    fx.for_ptrs(bytes, &[(src, 1), (dst, per)], &mut |fx, p| {
        let b = fx.b.ins().uload8(I32, flags(), p[0], 0);
        for k in 0..per {
            // field k, sign-extended: shift it to the top of the i32, then arithmetically down
            let up = fx.b.ins().ishl_imm_s(b, 32 - bits as i64 * (k + 1));
            let v = fx.b.ins().sshr_imm_s(up, 32 - bits as i64);
            fx.b.ins().istore8(flags(), v, p[1], k as i32);
        }
    });
}

/// An integer value moved to other parameters (`Op::Requant`), i8/i16 in and out.
pub(crate) fn requant(fx: &mut Fx, g: &Graph, n: NodeId, in_zp: i32, r: Requant, zp: i32, a: &Args) {
    let node = g.node(n);
    let total = numel(g, node.outputs[0]);
    let wide_in = g.value(node.inputs[0]).ty.dtype.scalar == kiln_ir::Scalar::I16;
    let wide_out = g.value(node.outputs[0]).ty.dtype.scalar == kiln_ir::Scalar::I16;
    let (lo, hi) = if wide_out { (-32768, 32767) } else { (-128, 127) };
    let es = |w: bool| if w { 2 } else { 1 };
    fx.for_ptrs(
        total,
        &[(a.ins[0], es(wide_in)), (a.outs[0], es(wide_out))],
        &mut |fx, p| {
            let x = if wide_in {
                fx.b.ins().sload16(I32, flags(), p[0], 0)
            } else {
                load_i8(fx, p[0])
            };
            let x = fx.b.ins().iadd_imm_s(x, -(in_zp as i64));
            let y = mbqm_const(fx, x, r);
            let y = fx.b.ins().iadd_imm_s(y, zp as i64);
            let y = clamp(fx, y, lo, hi);
            if wide_out {
                fx.b.ins().istore16(flags(), y, p[1], 0);
            } else {
                store_i8(fx, y, p[1]);
            }
        },
    );
}

/// `kiln_runtime::lut16`: two table reads and the integer interpolation per element.
pub(crate) fn lut16(fx: &mut Fx, g: &Graph, n: NodeId, a: &Args) {
    let total = numel(g, g.node(n).outputs[0]);
    fx.for_ptrs(total, &[(a.ins[0], 2), (a.outs[0], 2)], &mut |fx, p| {
        let x = fx.b.ins().sload16(I32, flags(), p[0], 0);
        let u = fx.b.ins().iadd_imm_s(x, 32768);
        let j = fx.b.ins().sshr_imm_s(u, 7);
        let f = fx.b.ins().band_imm_s(u, 127);
        let j = fx.b.ins().uextend(I64, j);
        let t = fx.addr(a.aux[0], j, 2);
        let b = fx.b.ins().sload16(I32, flags(), t, 0);
        let nx = fx.b.ins().sload16(I32, flags(), t, 2);
        let d = fx.b.ins().isub(nx, b);
        let d = fx.b.ins().imul(d, f);
        let d = fx.b.ins().iadd_imm_s(d, 64);
        let d = fx.b.ins().sshr_imm_s(d, 7);
        let y = fx.b.ins().iadd(b, d);
        fx.b.ins().istore16(flags(), y, p[1], 0);
    });
}

/// Walks the output of a broadcasting two-input integer op with elements of `es` bytes:
/// `body(fx, a_ptr, b_ptr, out_ptr)`.
fn broadcast2_sized(
    fx: &mut Fx,
    g: &Graph,
    n: NodeId,
    a: &Args,
    es: i64,
    body: &mut dyn FnMut(&mut Fx, Value, Value, Value),
) {
    let node = g.node(n);
    let out = g.value(node.outputs[0]).ty.shape.clone();
    let bst = |v: kiln_ir::ValueId| -> Vec<i64> {
        let s = &g.value(v).ty.shape;
        let st = kiln_ir::tensor::strides(s);
        let r = out.len();
        let mut b = vec![0i64; r];
        for i in 0..s.len() {
            b[r - s.len() + i] = if s[i] == 1 { 0 } else { st[i] as i64 };
        }
        b
    };
    let (sa, sb) = (bst(node.inputs[0]), bst(node.inputs[1]));
    let so: Vec<i64> = kiln_ir::tensor::strides(&out).into_iter().map(|x| x as i64).collect();
    let dims: Vec<i64> = out.iter().map(|&d| d as i64).collect();
    fx.for_index(&dims, &mut |fx, idx| {
        let (ia, ib, io) = (fx.dot(idx, &sa), fx.dot(idx, &sb), fx.dot(idx, &so));
        let pa = fx.addr(a.ins[0], ia, es);
        let pb = fx.addr(a.ins[1], ib, es);
        let po = fx.addr(a.outs[0], io, es);
        body(fx, pa, pb, po);
    });
}

pub(crate) fn qmul(fx: &mut Fx, g: &Graph, n: NodeId, q: &QMul, a: &Args) {
    let wide = g.value(g.node(n).inputs[0]).ty.dtype.scalar == kiln_ir::Scalar::I16;
    let load = move |fx: &mut Fx, p: Value| {
        if wide {
            fx.b.ins().sload16(I32, flags(), p, 0)
        } else {
            load_i8(fx, p)
        }
    };
    broadcast2_sized(fx, g, n, a, if wide { 2 } else { 1 }, &mut |fx, pa, pb, po| {
        let xa = load(fx, pa);
        let xb = load(fx, pb);
        let xa = fx.b.ins().iadd_imm_s(xa, -(q.a_zp as i64));
        let xb = fx.b.ins().iadd_imm_s(xb, -(q.b_zp as i64));
        let p = fx.b.ins().imul(xa, xb);
        let r = rescale_const(fx, q.numerics, p, q.requant);
        let r = add_zp_clamp(fx, r, q.output_zp, q.act_min, q.act_max);
        if wide {
            fx.b.ins().istore16(flags(), r, po, 0);
        } else {
            store_i8(fx, r, po);
        }
    });
}

/// Both rescales are computed and the sign of the centred input selects one (no branch).
pub(crate) fn qprelu(fx: &mut Fx, g: &Graph, n: NodeId, q: &QPRelu, a: &Args) {
    broadcast2_sized(fx, g, n, a, 1, &mut |fx, px, pa, po| {
        let x = load_i8(fx, px);
        let alpha = load_i8(fx, pa);
        let d = fx.b.ins().iadd_imm_s(x, -(q.input_zp as i64));
        let alpha = fx.b.ins().iadd_imm_s(alpha, -(q.alpha_zp as i64));
        let prod = fx.b.ins().imul(d, alpha);
        let neg = rescale_const(fx, q.numerics, prod, q.alpha);
        let pos = rescale_const(fx, q.numerics, d, q.identity);
        let ge = fx.b.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, d, 0);
        let r = fx.b.ins().select(ge, pos, neg);
        let r = add_zp_clamp(fx, r, q.output_zp, -128, 127);
        store_i8(fx, r, po);
    });
}

/// Whether int8 QAdd `n` runs sixteen elements at a time ([`qadd16`]): no broadcast, and
/// every rescale of the vector form (shifts it takes, results within i32) gives what the
/// tables of the scalar form hold.
pub(crate) fn qadd_in_lanes(g: &Graph, n: NodeId, q: &QAdd) -> bool {
    let node = g.node(n);
    let shape = &g.value(node.outputs[0]).ty.shape;
    let same = node.inputs.iter().all(|&v| {
        let t = &g.value(v).ty;
        t.shape == *shape && t.dtype.scalar == kiln_ir::Scalar::I8
    });
    let shift_ok = |r: Requant| match q.numerics {
        Numerics::Tflite => (-31..=0).contains(&r.shift),
        Numerics::Onnx => (-31..=30).contains(&r.shift),
    };
    // |(x - zp) << 20| <= 255 << 20, times m / 2^(31 - shift) (m < 2^31), plus rounding
    let scaled = |x: i128, r: Requant| ((x * r.multiplier.unsigned_abs() as i128) >> (31 - r.shift)) + 1;
    let (sa, sb) = (scaled(255 << 20, q.a), scaled(255 << 20, q.b));
    same && shape.iter().product::<usize>() >= 16
        && [q.a, q.b, q.out].into_iter().all(shift_ok)
        && sa < 1 << 30
        && sb < 1 << 30
        && scaled(sa + sb, q.out) + 256 < i32::MAX as i128
}

/// Int8 QAdd sixteen elements at a time: each side rescaled in i32 lanes from its record
/// (`aux[2]`: a, b, out), summed, rescaled, offset, clamped and narrowed; the last
/// `len % 16` elements by the scalar tables.
fn qadd16(fx: &mut Fx, q: &QAdd, a: &Args, len: i64) {
    use cranelift_codegen::ir::types::{I8X16, I32X4};
    let recs = a.aux[2];
    let (side_a, side_b) = (record(fx, q.numerics, recs), {
        let r = fx.add_imm(recs, RESCALE_RECORD);
        record(fx, q.numerics, r)
    });
    let out = {
        let r = fx.add_imm(recs, 2 * RESCALE_RECORD);
        record(fx, q.numerics, r)
    };
    let ptrs = [(a.ins[0], 16), (a.ins[1], 16), (a.outs[0], 16)];
    fx.for_ptrs(len / 16, &ptrs, &mut |fx, p| {
        let quarters = |fx: &mut Fx, v: Value| -> [Value; 4] {
            let (l, h) = (fx.b.ins().swiden_low(v), fx.b.ins().swiden_high(v));
            let b = &mut fx.b;
            [
                b.ins().swiden_low(l),
                b.ins().swiden_high(l),
                b.ins().swiden_low(h),
                b.ins().swiden_high(h),
            ]
        };
        let va = fx.b.ins().load(I8X16, flags(), p[0], 0);
        let vb = fx.b.ins().load(I8X16, flags(), p[1], 0);
        let (xa, xb) = (quarters(fx, va), quarters(fx, vb));
        let mut r = [xa[0]; 4];
        for j in 0..4 {
            let side = |fx: &mut Fx, x: Value, zp: i32, (c, t): Consts, r: Requant| {
                let z = fx.b.ins().iconst(I32, zp as i64);
                let z = fx.b.ins().splat(I32X4, z);
                let x = fx.b.ins().isub(x, z);
                if let Some(split) = SplitSide::of(r, q.numerics) {
                    return split.apply(fx, x);
                }
                let x = fx.b.ins().ishl_imm_s(x, kiln_runtime::ADD_LEFT_SHIFT as i64);
                rescale4_raw(fx, x, c, t)
            };
            let ra = side(fx, xa[j], q.a_zp, side_a, q.a);
            let rb = side(fx, xb[j], q.b_zp, side_b, q.b);
            let sum = fx.b.ins().iadd(ra, rb);
            let v = rescale4_raw(fx, sum, out.0, out.1);
            r[j] = zp_clamp4(fx, v, q.output_zp, q.act_min, q.act_max);
        }
        let lo = fx.b.ins().snarrow(r[0], r[1]);
        let hi = fx.b.ins().snarrow(r[2], r[3]);
        let bytes = fx.b.ins().snarrow(lo, hi);
        fx.b.ins().store(flags(), bytes, p[2], 0);
    });
}

/// One side of an int8 Add rescaled in 32-bit lanes without a 64-bit product: its input
/// less the zero point, `d` in -255..=255, shifted left by 20 and rescaled by `m / 2^e` is
/// `floor((d * m + 2^(E-1)) / 2^E)` for `E = e - 20` (both roundings: TFLite's high
/// multiply is the `E = 11` case). With `m = mh * 2^11 + ml` (`ml` in 0..2^11) that is
/// `(d * mh + Rh + ((d * ml + Rl) >> 11)) >> (E - 11)` for `2^(E-1) = Rh * 2^11 + Rl`, every
/// term within i32; then TFLite's rounding divide by `2^-shift`. Exact, so the same bits.
struct SplitSide {
    mh: i32,
    ml: i32,
    rh: i32,
    rl: i32,
    /// `E - 11`
    k: i64,
    /// TFLite's rounding divide exponent (0: none)
    e2: i64,
}

impl SplitSide {
    fn of(r: Requant, numerics: Numerics) -> Option<SplitSide> {
        let (e, e2) = match numerics {
            Numerics::Tflite => (31, -(r.shift as i64)),
            Numerics::Onnx => (31 - r.shift as i64, 0),
        };
        let big_e = e - kiln_runtime::ADD_LEFT_SHIFT as i64;
        if !(11..=41).contains(&big_e) || !(0..=31).contains(&e2) {
            return None;
        }
        let half = 1i64 << (big_e - 1);
        let split = SplitSide {
            mh: r.multiplier >> 11,
            ml: r.multiplier & 0x7ff,
            rh: (half >> 11) as i32,
            rl: (half & 0x7ff) as i32,
            k: big_e - 11,
            e2,
        };
        // every input the side can see, against the scalar rescale (511 values)
        let exact = (-255..=255).all(|d: i32| {
            let x = d << kiln_runtime::ADD_LEFT_SHIFT;
            let want = match numerics {
                Numerics::Onnx => kiln_runtime::multiply_by_quantized_multiplier(x, r),
                Numerics::Tflite => kiln_runtime::multiply_by_quantized_multiplier_tflite(x, r),
            };
            split.eval(d) == want
        });
        exact.then_some(split)
    }

    /// [`SplitSide::apply`] on one value, in the same i32 steps.
    fn eval(&self, d: i32) -> i32 {
        let hi = d.wrapping_mul(self.mh).wrapping_add(self.rh);
        let lo = d.wrapping_mul(self.ml).wrapping_add(self.rl) >> 11;
        let v = hi.wrapping_add(lo) >> self.k;
        if self.e2 == 0 {
            return v;
        }
        let mask = ((1i64 << self.e2) - 1) as i32;
        let up = (v & mask) > (mask >> 1) - (v >> 31);
        (v >> self.e2) + up as i32
    }

    fn apply(&self, fx: &mut Fx, d: Value) -> Value {
        use cranelift_codegen::ir::types::I32X4;
        let splat = |fx: &mut Fx, v: i32| {
            let c = fx.b.ins().iconst(I32, v as i64);
            fx.b.ins().splat(I32X4, c)
        };
        let (mh, ml, rh, rl) = (
            splat(fx, self.mh),
            splat(fx, self.ml),
            splat(fx, self.rh),
            splat(fx, self.rl),
        );
        let b = &mut fx.b;
        let hi = b.ins().imul(d, mh);
        let hi = b.ins().iadd(hi, rh);
        let lo = b.ins().imul(d, ml);
        let lo = b.ins().iadd(lo, rl);
        let lo = b.ins().sshr_imm_s(lo, 11);
        let mut v = b.ins().iadd(hi, lo);
        if self.k > 0 {
            v = b.ins().sshr_imm_s(v, self.k);
        }
        if self.e2 > 0 {
            // (v >> e2) + ((v & mask) > (mask >> 1) + [v < 0])
            let mask = (1i64 << self.e2) - 1;
            let quot = b.ins().sshr_imm_s(v, self.e2);
            let m = splat(fx, mask as i32);
            let half = splat(fx, (mask >> 1) as i32);
            let b = &mut fx.b;
            let rem = b.ins().band(v, m);
            let neg = b.ins().sshr_imm_s(v, 31);
            let thr = b.ins().isub(half, neg);
            let up = b.ins().icmp(IntCC::SignedGreaterThan, rem, thr);
            v = b.ins().isub(quot, up);
        }
        v
    }
}

pub(crate) fn qadd(fx: &mut Fx, g: &Graph, n: NodeId, q: &QAdd, a: &Args) {
    let wide = g.value(g.node(n).inputs[0]).ty.dtype.scalar == kiln_ir::Scalar::I16;
    let (ls, es) = if wide {
        (kiln_runtime::ADD_LEFT_SHIFT_16 as i64, 2)
    } else {
        (kiln_runtime::ADD_LEFT_SHIFT as i64, 1)
    };
    let load = move |fx: &mut Fx, p: Value| {
        if wide {
            fx.b.ins().sload16(I32, flags(), p, 0)
        } else {
            load_i8(fx, p)
        }
    };
    let mut elem = |fx: &mut Fx, pa: Value, pb: Value, po: Value| {
        let (ra, rb) = if wide {
            let xa = load(fx, pa);
            let xb = load(fx, pb);
            let xa = fx.b.ins().iadd_imm_s(xa, -(q.a_zp as i64));
            let xb = fx.b.ins().iadd_imm_s(xb, -(q.b_zp as i64));
            let xa = fx.b.ins().ishl_imm_s(xa, ls);
            let xb = fx.b.ins().ishl_imm_s(xb, ls);
            (
                rescale_const(fx, q.numerics, xa, q.a),
                rescale_const(fx, q.numerics, xb, q.b),
            )
        } else {
            // int8 inputs: each side's rescale is one of 256 values, tabled (`aux`)
            let side = |fx: &mut Fx, p: Value, table: Value| {
                let x = fx.b.ins().uload8(I64, flags(), p, 0);
                let at = fx.addr(table, x, 4);
                fx.load(I32, at)
            };
            (side(fx, pa, a.aux[0]), side(fx, pb, a.aux[1]))
        };
        let s = fx.b.ins().iadd(ra, rb);
        let r = rescale_const(fx, q.numerics, s, q.out);
        let r = add_zp_clamp(fx, r, q.output_zp, q.act_min, q.act_max);
        if wide {
            fx.b.ins().istore16(flags(), r, po, 0);
        } else {
            store_i8(fx, r, po);
        }
    };
    if !wide && fx.simd && a.aux.len() > 2 {
        // `qadd_in_lanes`: sixteen at a time, then the rest one by one
        let len = g.value(g.node(n).outputs[0]).ty.shape.iter().product::<usize>() as i64;
        qadd16(fx, q, a, len);
        let done = len / 16 * 16;
        let ptrs = [a.ins[0], a.ins[1], a.outs[0]].map(|p| (fx.add_imm(p, done), 1));
        fx.for_ptrs(len - done, &ptrs, &mut |fx, p| elem(fx, p[0], p[1], p[2]));
        return;
    }
    broadcast2_sized(fx, g, n, a, es, &mut elem);
}

/// Tables of an integer kernel: per-channel multipliers and shifts (i32 little-endian).
fn requant_tables(q: &QLinear) -> Vec<Vec<u8>> {
    let m: Vec<u8> = q.requant.iter().flat_map(|r| r.multiplier.to_le_bytes()).collect();
    let s: Vec<u8> = q.requant.iter().flat_map(|r| r.shift.to_le_bytes()).collect();
    vec![m, s]
}

fn tables_i32(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Loads channel `ch`'s (multiplier, shift) from the tables (index 0 when per tensor).
fn channel_requant(fx: &mut Fx, q: &QLinear, mt: Value, st: Value, ch: Value) -> (Value, Value) {
    let i = if q.requant.len() == 1 { fx.i(0) } else { ch };
    let ma = fx.addr(mt, i, 4);
    let sa = fx.addr(st, i, 4);
    (fx.load(I32, ma), fx.load(I32, sa))
}

/// Whether every sum of integer node `n` rescaled by `q` lies in the i32 range, so the
/// rescale's saturation never acts (the accumulator-range analysis bounds the sums).
pub(crate) fn fits_i32(g: &Graph, n: NodeId, q: &QLinear) -> bool {
    // TFLite's rescale: the vectors take shifts of at most 0 (no left shift first)
    let tfl = q.numerics == Numerics::Tflite;
    if tfl && q.requant.iter().any(|r| r.shift > 0) {
        return false;
    }
    let Some(ranges) = kiln_ir::accumulate::channel_ranges(g, n) else {
        return false;
    };
    ranges.iter().enumerate().all(|(ch, r)| {
        let rq = q.requant[if q.requant.len() == 1 { 0 } else { ch }];
        if tfl {
            // the high multiply's result, plus its rounding and the zero point, within i32
            let big = r.min.unsigned_abs().max(r.max.unsigned_abs()) as i128;
            return ((big * rq.multiplier.unsigned_abs() as i128) >> 31) + 256 < i32::MAX as i128;
        }
        if !(-31..=30).contains(&rq.shift) {
            return false;
        }
        let e = (31 - rq.shift) as u32;
        let big = r.min.unsigned_abs().max(r.max.unsigned_abs()) as i128;
        let v = (big * rq.multiplier.unsigned_abs() as i128 + (1i128 << (e - 1))) >> e;
        v < i32::MAX as i128
    })
}

/// Bytes of one [`rescale_records`] record.
pub(crate) const RESCALE_RECORD: i64 = 80;

/// The constants of the vector rescale ([`rescale4`]) of one channel with `r`: the
/// multiplier in four i32 lanes, the 64-bit addend `k` (rounding plus the 2^62 that makes
/// every product non-negative, so the shift can be a logical one), the i32 correction `c`
/// that removes 2^62 from the shifted result, the mask of TFLite's rounding divide and the
/// two shift counts. As i64 scalars here; [`rescale_records`] lays them out.
struct Rescale {
    m: i64,
    k: i64,
    c: i64,
    mask: i64,
    e: i64,
    e2: i64,
}

fn rescale_consts(numerics: Numerics, r: Requant) -> Rescale {
    let m = r.multiplier as i64;
    match numerics {
        // (x * m + 2^30) >> 31, then the rounding divide by 2^-shift
        Numerics::Tflite => {
            // (shifts outside -31..=0 never reach the vector path: `fits_i32`)
            let e2 = (-(r.shift.min(0)) as i64).min(31);
            Rescale {
                m,
                k: (1 << 30) + (1 << 62),
                c: i32::MIN as i64,
                mask: (1i64 << e2) - 1,
                e: 31,
                e2,
            }
        }
        // (x * m + 2^(e-1)) >> e, e = 31 - shift in 1..=62 (`fits_i32` checks)
        Numerics::Onnx => {
            let e = (31 - r.shift as i64).clamp(1, 62);
            Rescale {
                m,
                k: (1i64 << (e - 1)).wrapping_add(1 << 62),
                c: ((1u64 << (62 - e)) as u32 as i32) as i64,
                mask: 0,
                e,
                e2: 0,
            }
        }
    }
}

/// Per output channel (`channels` of them), the [`Rescale`] constants ready for vectors, so
/// a kernel loads them instead of deriving them per call: `m` x4 (i32), `k` x2 (i64), `c`
/// x4, `mask` x4 (i32), `e`, `e2` (i64); 80 bytes.
pub(crate) fn rescale_records(q: &QLinear, channels: usize) -> Vec<u8> {
    let each: Vec<Requant> = (0..channels)
        .map(|ch| q.requant[if q.requant.len() == 1 { 0 } else { ch }])
        .collect();
    records_of(q.numerics, &each)
}

/// One [`rescale_records`] record per rescale of `each`.
fn records_of(numerics: Numerics, each: &[Requant]) -> Vec<u8> {
    each.iter()
        .flat_map(|&r| {
            let r = rescale_consts(numerics, r);
            let mut rec = Vec::with_capacity(RESCALE_RECORD as usize);
            for _ in 0..4 {
                rec.extend((r.m as i32).to_le_bytes());
            }
            for _ in 0..2 {
                rec.extend(r.k.to_le_bytes());
            }
            for v in [r.c, r.mask] {
                for _ in 0..4 {
                    rec.extend((v as i32).to_le_bytes());
                }
            }
            rec.extend(r.e.to_le_bytes());
            rec.extend(r.e2.to_le_bytes());
            rec
        })
        .collect()
}

/// Per output channel, the record [`super::wide::Finish`] reads: the sums' start `start[ch]`
/// (the bias less the zero-point term), the channel's [`Rescale`] constants, the output
/// zero point and the clamp bounds ([`super::wide::finish_record`] has the layout).
pub(crate) fn finish_records(q: &QLinear, start: &[i32]) -> Vec<u8> {
    use super::wide::finish_record as at;
    let mut out = vec![0u8; start.len() * at::SIZE];
    for (ch, (rec, &s)) in out.chunks_mut(at::SIZE).zip(start).enumerate() {
        let r = rescale_consts(q.numerics, q.requant[if q.requant.len() == 1 { 0 } else { ch }]);
        let mut put = |off: usize, b: &[u8]| rec[off..off + b.len()].copy_from_slice(b);
        put(at::BIAS, &s.to_le_bytes());
        put(at::M, &(r.m as i32).to_le_bytes());
        put(at::K, &r.k.to_le_bytes());
        put(at::E, &r.e.to_le_bytes());
        put(at::C, &(r.c as i32).to_le_bytes());
        put(at::MASK, &(r.mask as i32).to_le_bytes());
        put(at::E2, &r.e2.to_le_bytes());
        put(at::HALF, &((r.mask >> 1) as i32).to_le_bytes());
        put(at::ZP, &q.output_zp.to_le_bytes());
        put(at::LO, &q.act_min.to_le_bytes());
        put(at::HI, &q.act_max.to_le_bytes());
    }
    out
}

/// [`finish_fit4`] with the channel's constants read from its [`rescale_records`] record at
/// `rec`.
pub(crate) fn finish_fit4_rec(fx: &mut Fx, q: &QLinear, acc: Value, rec: Value) -> Value {
    let (consts, tfl) = record(fx, q.numerics, rec);
    rescale4(fx, q, acc, consts, tfl)
}

/// A rescale's vector constants (`m`, `k`, `c`, `e`) and, in TFLite's numerics, its
/// rounding divide's mask and exponent ([`rescale4`]).
type Consts = ((Value, Value, Value, Value), Option<(Value, Value)>);

/// The vector constants of one [`rescale_records`] record at `rec`.
fn record(fx: &mut Fx, numerics: Numerics, rec: Value) -> Consts {
    use cranelift_codegen::ir::types::{I32X4, I64X2};
    let m4 = fx.b.ins().load(I32X4, flags(), rec, 0);
    let k2 = fx.b.ins().load(I64X2, flags(), rec, 16);
    let c4 = fx.b.ins().load(I32X4, flags(), rec, 32);
    let e = fx.b.ins().load(I64, flags(), rec, 64);
    let tfl = (numerics == Numerics::Tflite).then(|| {
        let mask = fx.b.ins().load(I32X4, flags(), rec, 48);
        (mask, fx.b.ins().load(I64, flags(), rec, 72))
    });
    ((m4, k2, c4, e), tfl)
}

/// Four i32 lanes of `v` (an i32), built so that no rewrite turns a widening of them back
/// into a scalar (which would hide the 32x32->64 multiply `rescale4` relies on).
fn lanes_of(fx: &mut Fx, v: Value) -> Value {
    use cranelift_codegen::ir::types::{I32X4, I64X2};
    let lo = fx.b.ins().uextend(I64, v);
    let hi = fx.b.ins().ishl_imm_u(lo, 32);
    let both = fx.b.ins().bor(lo, hi);
    let v2 = fx.b.ins().splat(I64X2, both);
    let lanes = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
    fx.b.ins().bitcast(I32X4, lanes, v2)
}

/// [`finish_fit`] on four sums (i32 lanes) of one channel with multiplier `m` and shift `s`
/// (i32 scalars); the results as i32 lanes.
pub(crate) fn finish_fit4(fx: &mut Fx, q: &QLinear, acc: Value, m: Value, s: Value) -> Value {
    use cranelift_codegen::ir::types::{I32X4, I64X2};
    let m4 = lanes_of(fx, m);
    let b = &mut fx.b;
    let s64 = b.ins().sextend(I64, s);
    let one = b.ins().iconst(I64, 1);
    if q.numerics == Numerics::Tflite {
        let k = b.ins().iconst(I64, (1 << 30) + (1 << 62));
        let k2 = b.ins().splat(I64X2, k);
        let c = b.ins().iconst(I32, i32::MIN as i64);
        let c4 = b.ins().splat(I32X4, c);
        let e = b.ins().iconst(I64, 31);
        // the rounding divide by 2^e2, e2 = -shift (shifts are at most 0: `fits_i32`)
        let e2 = b.ins().ineg(s64);
        let pow = b.ins().ishl(one, e2);
        let mask = b.ins().iadd_imm_s(pow, -1);
        let mask = b.ins().ireduce(I32, mask);
        let mask4 = b.ins().splat(I32X4, mask);
        return rescale4(fx, q, acc, (m4, k2, c4, e), Some((mask4, e2)));
    }
    let k31 = b.ins().iconst(I64, 31);
    let e = b.ins().isub(k31, s64);
    let e1 = b.ins().iadd_imm_s(e, -1);
    let half = b.ins().ishl(one, e1);
    let k = b.ins().iadd_imm_s(half, 1 << 62);
    let k2 = b.ins().splat(I64X2, k);
    let k62 = b.ins().iconst(I64, 62);
    let ce = b.ins().isub(k62, e);
    let c = b.ins().ishl(one, ce);
    let c = b.ins().ireduce(I32, c);
    let c4 = b.ins().splat(I32X4, c);
    rescale4(fx, q, acc, (m4, k2, c4, e), None)
}

/// The body of [`finish_fit4`] (constants as [`Rescale`] describes them, in vectors). Per
/// half, a 32x32->64 multiply of even lanes (`pmuldq`, `smull`), the non-negative sum
/// shifted logically, its low words less `c`: exactly `(x * m + k') >> e` while the result
/// fits i32 (`fits_i32`), with no 64-bit multiply or arithmetic shift (which x86 before
/// AVX-512 lacks). With `tfl` (TFLite's numerics: its mask and exponent) then TFLite's
/// rounding divide in i32 lanes: `(v >> e2) + ((v & mask) > (mask >> 1) + [v < 0])`.
fn rescale4(
    fx: &mut Fx,
    q: &QLinear,
    acc: Value,
    consts: (Value, Value, Value, Value),
    tfl: Option<(Value, Value)>,
) -> Value {
    let r = rescale4_raw(fx, acc, consts, tfl);
    zp_clamp4(fx, r, q.output_zp, q.act_min, q.act_max)
}

/// `r + zp` clamped to `lo..=hi`, in i32 lanes.
fn zp_clamp4(fx: &mut Fx, r: Value, zp: i32, lo: i32, hi: i32) -> Value {
    use cranelift_codegen::ir::types::I32X4;
    let b = &mut fx.b;
    let zp = b.ins().iconst(I32, zp as i64);
    let zp = b.ins().splat(I32X4, zp);
    let r = b.ins().iadd(r, zp);
    let (lo, hi) = (b.ins().iconst(I32, lo as i64), b.ins().iconst(I32, hi as i64));
    let (lo, hi) = (b.ins().splat(I32X4, lo), b.ins().splat(I32X4, hi));
    let r = b.ins().smax(r, lo);
    b.ins().smin(r, hi)
}

/// [`rescale4`] without the zero point and clamp.
fn rescale4_raw(
    fx: &mut Fx,
    acc: Value,
    (m4, k2, c4, e): (Value, Value, Value, Value),
    tfl: Option<(Value, Value)>,
) -> Value {
    use cranelift_codegen::ir::types::{I8X16, I32X4};
    let b = &mut fx.b;
    let lanes = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
    let (al, ah) = (b.ins().swiden_low(acc), b.ins().swiden_high(acc));
    let (ml, mh) = (b.ins().swiden_low(m4), b.ins().swiden_high(m4));
    let parts = [(al, ml), (ah, mh)].map(|(x, m)| {
        let p = b.ins().imul(x, m);
        let p = b.ins().iadd(p, k2);
        let p = b.ins().ushr(p, e);
        b.ins().bitcast(I8X16, lanes, p)
    });
    // the low word of each 64-bit lane
    let mask = b.func.dfg.immediates.push(
        [0u8, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27]
            .as_slice()
            .into(),
    );
    let r = b.ins().shuffle(parts[0], parts[1], mask);
    let r = b.ins().bitcast(I32X4, lanes, r);
    let mut r = b.ins().isub(r, c4);
    if let Some((mask4, e2)) = tfl {
        let quot = b.ins().sshr(r, e2);
        let rem = b.ins().band(r, mask4);
        let neg = b.ins().sshr_imm_s(r, 31);
        let half = b.ins().sshr_imm_s(mask4, 1);
        let thr = b.ins().isub(half, neg);
        let up = b.ins().icmp(IntCC::SignedGreaterThan, rem, thr);
        r = b.ins().isub(quot, up);
    }
    r
}

/// The first `valid` (1..=4) i32 lanes of `v`, each in the int8 range, stored as bytes.
pub(crate) fn store_bytes4(fx: &mut Fx, v: Value, addr: Value, off: i32, valid: i64) {
    use cranelift_codegen::ir::types::I32X4;
    let lanes = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
    let h = fx.b.ins().snarrow(v, v);
    let bytes = fx.b.ins().snarrow(h, h);
    if valid == 4 {
        let w = fx.b.ins().bitcast(I32X4, lanes, bytes);
        let w = fx.b.ins().extractlane(w, 0);
        fx.b.ins().store(flags(), w, addr, off);
        return;
    }
    for j in 0..valid {
        let e = fx.b.ins().extractlane(bytes, j as u8);
        fx.b.ins().store(flags(), e, addr, off + j as i32);
    }
}

/// [`finish`] for sums whose rescale cannot leave the i32 range.
fn finish_fit(fx: &mut Fx, q: &QLinear, acc: Value, m: Value, s: Value) -> Value {
    if q.numerics == Numerics::Tflite {
        let r = mbqm_tflite(fx, acc, m, s);
        let r = fx.b.ins().iadd_imm_s(r, q.output_zp as i64);
        return clamp(fx, r, q.act_min, q.act_max);
    }
    let x64 = fx.b.ins().sextend(I64, acc);
    let m64 = fx.b.ins().sextend(I64, m);
    let p = fx.b.ins().imul(x64, m64);
    let r = round_shift(fx, p, s);
    let r = fx.b.ins().ireduce(I32, r);
    let r = fx.b.ins().iadd_imm_s(r, q.output_zp as i64);
    clamp(fx, r, q.act_min, q.act_max)
}

fn finish(fx: &mut Fx, q: &QLinear, acc: Value, m: Value, s: Value) -> Value {
    let r = match q.numerics {
        Numerics::Onnx => mbqm(fx, acc, m, s),
        Numerics::Tflite => mbqm_tflite(fx, acc, m, s),
    };
    add_zp_clamp(fx, r, q.output_zp, q.act_min, q.act_max)
}

/// `clamp(r + zp, lo, hi)` in exact integers for a saturated rescale `r`: clamped first,
/// against bounds moved by `zp`, so the addition cannot wrap.
fn add_zp_clamp(fx: &mut Fx, r: Value, zp: i32, lo: i32, hi: i32) -> Value {
    let r = clamp(fx, r, lo - zp, hi - zp);
    fx.b.ins().iadd_imm_s(r, zp as i64)
}

fn tables_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A product's constant `[K, N]` weights transposed to `[N, K]` (each output's row
/// contiguous, so the inner loop is a plain dot product) and each column's sum.
fn columns(g: &Graph, n: NodeId) -> (Vec<u8>, Vec<i32>) {
    let w = g.const_value(g.node(n).inputs[1]).expect("constant weights");
    let (k, nn) = (w.shape[0], w.shape[1]);
    let wv: Vec<i8> = w.to_i64_vec().iter().map(|&v| v as i8).collect();
    let t: Vec<u8> = (0..nn)
        .flat_map(|j| (0..k).map(move |kk| (j, kk)))
        .map(|(j, kk)| wv[kk * nn + j] as u8)
        .collect();
    let sums = (0..nn)
        .map(|j| (0..k).map(|kk| wv[kk * nn + j] as i32).sum::<i32>())
        .collect();
    (t, sums)
}

/// The sum of each block of `block` weights of each column of a product's constant `[K, N]`
/// weights, `[blocks, N]` row-major.
fn block_sums(g: &Graph, n: NodeId, block: usize) -> Vec<i32> {
    let w = g.const_value(g.node(n).inputs[1]).expect("constant weights");
    let (k, nn) = (w.shape[0], w.shape[1]);
    let wv = w.to_i64_vec();
    (0..k.div_ceil(block) * nn)
        .map(|i| {
            let (b, j) = (i / nn, i % nn);
            (b * block..((b + 1) * block).min(k))
                .map(|kk| wv[kk * nn + j] as i32)
                .sum()
        })
        .collect()
}

/// A product's column table (`columns`), packed when its weights are stored narrow.
fn packed_columns(g: &Graph, n: NodeId, t: Vec<u8>) -> Vec<u8> {
    match super::packed(g, n) {
        Some((bits, _)) => pack(&t, bits),
        None => t,
    }
}

/// Per output channel of a convolution, the sum of its weights (empty if not constant).
fn channel_sums(g: &Graph, n: NodeId) -> Vec<i32> {
    let node = g.node(n);
    let w = g
        .const_value(node.inputs[1])
        .map(|t| t.to_i64_vec())
        .unwrap_or_default();
    let m = g.value(node.inputs[1]).ty.shape[0];
    let per = w.len() / m.max(1);
    (0..m)
        .map(|o| {
            w[o * per..(o + 1) * per]
                .iter()
                .fold(0i32, |a, &x| a.wrapping_add(x as i32))
        })
        .collect()
}

pub(crate) fn aux(g: &Graph, n: NodeId, dot: Option<super::Dot>) -> Vec<Vec<u8>> {
    let node = g.node(n);
    match &node.op {
        Op::Lut { table, .. } => vec![table.iter().map(|&v| v as u8).collect()],
        Op::Lut16 { table, .. } => vec![table.iter().flat_map(|v| v.to_le_bytes()).collect()],
        Op::QSoftmax { exp_table, .. } => vec![tables_i32(exp_table)],
        Op::QAdd(q) => {
            // per input byte (as u8), its rescaled term: ((x - zp) << 20) * m, rounded
            let side = |zp: i32, r: kiln_runtime::Requant| -> Vec<i32> {
                (0..=255u8)
                    .map(|b| {
                        let x = ((b as i8 as i32) - zp) << kiln_runtime::ADD_LEFT_SHIFT;
                        match q.numerics {
                            Numerics::Onnx => kiln_runtime::multiply_by_quantized_multiplier(x, r),
                            Numerics::Tflite => kiln_runtime::multiply_by_quantized_multiplier_tflite(x, r),
                        }
                    })
                    .collect()
            };
            let mut v = vec![tables_i32(&side(q.a_zp, q.a)), tables_i32(&side(q.b_zp, q.b))];
            if qadd_in_lanes(g, n, q) {
                v.push(records_of(q.numerics, &[q.a, q.b, q.out]));
            }
            v
        }
        Op::QSoftmax16 { exp_hi, exp_lo, .. } => vec![tables_i32(exp_hi), tables_i32(exp_lo)],
        Op::QMatMul { q } => {
            let (t, wsum) = columns(g, n);
            let zsum: Vec<i32> = wsum.iter().map(|&s| q.input_zp.wrapping_mul(s)).collect();
            // (zp + 128) * sum: the same term for activations biased to unsigned (`dot`)
            let zsum128: Vec<i32> = wsum.iter().map(|&s| (q.input_zp + 128).wrapping_mul(s)).collect();
            let mut v = requant_tables(q);
            v.push(packed_columns(g, n, t));
            v.push(tables_i32(&zsum));
            v.push(tables_i32(&zsum128));
            v
        }
        Op::QBlockMatMul { q, block } => {
            let (t, _) = columns(g, n);
            let nn = g.value(node.inputs[1]).ty.shape[1];
            let m: Vec<i32> = q.requant.iter().map(|r| r.multiplier).collect();
            let s: Vec<i32> = q.requant[..nn].iter().map(|r| r.shift).collect();
            vec![
                tables_i32(&m),
                tables_i32(&s),
                packed_columns(g, n, t),
                tables_i32(&block_sums(g, n, *block)),
            ]
        }
        Op::DynMatMul {
            weight_scales, block, ..
        } => {
            let (t, wsum) = columns(g, n);
            let wsum = match *block {
                0 => wsum,
                b => block_sums(g, n, b),
            };
            vec![tables_f32(weight_scales), packed_columns(g, n, t), tables_i32(&wsum)]
        }
        Op::DynConv {
            window, weight_scales, ..
        } => {
            let (xs, out) = (&g.value(node.inputs[0]).ty.shape, &g.value(node.outputs[0]).ty.shape);
            let gm = geo(xs, out, window);
            let mut v = vec![
                tables_i32(&tap_ranges(gm.h, gm.oh, gm.kh, gm.sh, gm.dh, gm.ph)),
                tables_i32(&tap_ranges(gm.w, gm.ow, gm.kw, gm.sw, gm.dw, gm.pw)),
                tables_f32(weight_scales),
                tables_i32(&channel_sums(g, n)),
            ];
            // weight rows as the dot-product kernel reads them, as for QConv; or the
            // channels-last depthwise kernel's packed weights and weight sums
            if let Some(w) = super::dot::weight_rows(g, n, dot) {
                v.push(w);
            } else if let Some(d) = super::qdw::QDw::of(g, n) {
                v.extend(super::qdw::tables(g, n, &d));
            }
            v
        }
        Op::QConv { window, q, .. } => {
            let (xs, out) = (&g.value(node.inputs[0]).ty.shape, &g.value(node.outputs[0]).ty.shape);
            let gm = geo(xs, out, window);
            let mut v = vec![
                tables_i32(&tap_ranges(gm.h, gm.oh, gm.kh, gm.sh, gm.dh, gm.ph)),
                tables_i32(&tap_ranges(gm.w, gm.ow, gm.kw, gm.sw, gm.dw, gm.pw)),
            ];
            v.extend(requant_tables(q));
            // Per output channel, zp_in * sum of its weights (the pointwise kernel's
            // zero-point term).
            let sums = channel_sums(g, n);
            let zsum: Vec<i32> = sums.iter().map(|&s| q.input_zp.wrapping_mul(s)).collect();
            v.push(tables_i32(&zsum));
            // (zp + 128) * sum: the same term for activations biased to unsigned (`dot`)
            let zsum128: Vec<i32> = sums.iter().map(|&s| (q.input_zp + 128).wrapping_mul(s)).collect();
            v.push(tables_i32(&zsum128));
            // weight rows as the dot-product kernel reads them (zero-padded to whole
            // words, halfwords for `Pairs`), when they differ from the weights
            if let Some(w) = super::dot::weight_rows(g, n, dot) {
                v.push(w);
            }
            // packed weights and sum starts for the channels-last depthwise kernel
            if let Some(d) = super::qdw::QDw::of(g, n) {
                v.extend(super::qdw::tables(g, n, &d));
                v.push(rescale_records(q, g.value(node.outputs[0]).ty.shape[1]));
            } else if dot.is_some() && super::dot::applies(g, n) {
                // the dot-product kernel's rescale constants, last
                v.push(rescale_records(q, g.value(node.outputs[0]).ty.shape[1]));
            }
            v
        }
        Op::Pool(_) | Op::GlobalPool(_) => {
            let (xs, out) = (&g.value(node.inputs[0]).ty.shape, &g.value(node.outputs[0]).ty.shape);
            let w = match &node.op {
                Op::Pool(p) => p.window.clone(),
                _ => global_window(xs),
            };
            let gm = geo(xs, out, &w);
            vec![
                tables_i32(&tap_ranges(gm.h, gm.oh, gm.kh, gm.sh, gm.dh, gm.ph)),
                tables_i32(&tap_ranges(gm.w, gm.ow, gm.kw, gm.sw, gm.dw, gm.pw)),
            ]
        }
        _ => vec![],
    }
}

/// Integer `[rows, K] x [K, N]`: static int8 with `q`, or hybrid (`q` is `None`) with each
/// row quantized into the scratch first.
pub(crate) fn qmatmul(fx: &mut Fx, g: &Graph, n: NodeId, q: Option<&QLinear>, a: &Args) {
    let node = g.node(n);
    let ws = &g.value(node.inputs[1]).ty.shape;
    let (k, nn) = (ws[0] as i64, ws[1] as i64);
    let rows = numel(g, node.outputs[0]) / nn.max(1);
    let has_bias = node.inputs.len() > 2;
    let (per_channel, block) = match &node.op {
        Op::DynMatMul {
            weight_scales, block, ..
        } => (weight_scales.len() > 1, *block as i64),
        _ => (false, 0),
    };
    fx.for_n(rows, &mut |fx, r| {
        let (xrow, st, wt) = match q {
            Some(q) => {
                let st = Stage::Static {
                    q,
                    mult: a.aux[0],
                    shift: a.aux[1],
                    zsum: a.aux[3],
                    fits: fits_i32(g, n, q),
                };
                (fx.addr(a.ins[0], r, k), st, a.aux[2])
            }
            None => {
                let x = fx.addr(a.ins[0], r, k * 4);
                let (sx, zp) = dyn_quantize(fx, x, a.scratch, k);
                let st = Stage::Dynamic {
                    sx,
                    zp,
                    scales: a.aux[0],
                    per_channel,
                    wsum: a.aux[2],
                };
                (a.scratch, st, a.aux[1])
            }
        };
        let yrow = fx.addr(a.outs[0], r, nn * st.elem());
        fx.for_n(nn, &mut |fx, j| {
            let wrow = fx.addr(wt, j, k);
            if block > 0 {
                blocked_column(fx, &st, (xrow, wrow), j, (k, nn, block), yrow);
                return;
            }
            let acc = fx.b.declare_var(I32);
            let init = if has_bias {
                let ba = fx.addr(a.ins[2], j, 4);
                fx.load(I32, ba)
            } else {
                c32(fx, 0)
            };
            fx.b.def_var(acc, init);
            dot_row(fx, acc, xrow, wrow, k);
            let zs = st.zsum(fx, j);
            let cur = fx.b.use_var(acc);
            let nv = fx.b.ins().isub(cur, zs);
            fx.b.def_var(acc, nv);
            let chan = st.channel(fx, j);
            let accv = fx.b.use_var(acc);
            let ya = fx.addr(yrow, j, st.elem());
            st.store(fx, accv, chan, ya, 0);
        });
    });
}

/// Int8 product with blocked weight scales (`QBlockMatMul`): per column, the i64 bias plus
/// each block's integer dot product times its multiplier, shifted down once rounding half
/// up (`kiln_runtime::kernels::int::qblock_matmul`). Aux: multipliers `[blocks, N]`, shifts
/// `[N]`, the weights as columns `[N, K]`, the weight sums `[blocks, N]`.
pub(crate) fn qblock_matmul(fx: &mut Fx, g: &Graph, n: NodeId, q: &QLinear, block: usize, a: &Args) {
    let node = g.node(n);
    let ws = &g.value(node.inputs[1]).ty.shape;
    let (k, nn, block) = (ws[0] as i64, ws[1] as i64, block as i64);
    let rows = numel(g, node.outputs[0]) / nn.max(1);
    let has_bias = node.inputs.len() > 2;
    let (mt, st, wt, sums) = (a.aux[0], a.aux[1], a.aux[2], a.aux[3]);
    fx.for_n(rows, &mut |fx, r| {
        let xrow = fx.addr(a.ins[0], r, k);
        let yrow = fx.addr(a.outs[0], r, nn);
        fx.for_n(nn, &mut |fx, j| {
            let wrow = fx.addr(wt, j, k);
            let total = fx.b.declare_var(I64);
            let init = if has_bias {
                let ba = fx.addr(a.ins[2], j, 8);
                fx.load(I64, ba)
            } else {
                fx.i(0)
            };
            fx.b.def_var(total, init);
            let zp = c32(fx, q.input_zp as i64);
            block_dots(fx, (xrow, wrow), j, (k, nn, block), (sums, zp), &|fx, i, dot| {
                let ma = fx.addr(mt, i, 4);
                let m = fx.load(I32, ma);
                let (d64, m64) = (fx.b.ins().sextend(I64, dot), fx.b.ins().sextend(I64, m));
                let p = fx.b.ins().imul(d64, m64);
                let cur = fx.b.use_var(total);
                let nv = fx.b.ins().iadd(cur, p);
                fx.b.def_var(total, nv);
            });
            let sa = fx.addr(st, j, 4);
            let shift = fx.load(I32, sa);
            let t = fx.b.use_var(total);
            let v = round_shift(fx, t, shift);
            let v = fx.b.ins().iadd_imm_s(v, q.output_zp as i64);
            let (lo, hi) = (fx.i(q.act_min as i64), fx.i(q.act_max as i64));
            let v = fx.b.ins().smax(v, lo);
            let v = fx.b.ins().smin(v, hi);
            let ya = fx.addr(yrow, j, 1);
            fx.b.ins().istore8(flags(), v, ya, 0);
        });
    });
}

/// Output `j` of a hybrid product with blocked scales: per block of `block` inputs, the
/// integer dot product rescaled with that block's scale, added to an f32 sum in block order
/// (`kiln_runtime::kernels::int::dyn_matmul`). Scales and weight sums are `[blocks, N]`.
fn blocked_column(
    fx: &mut Fx,
    st: &Stage,
    (xrow, wrow): (Value, Value),
    j: Value,
    (k, nn, block): (i64, i64, i64),
    yrow: Value,
) {
    let Stage::Dynamic {
        sx, zp, scales, wsum, ..
    } = *st
    else {
        unreachable!("only hybrid products have blocked scales")
    };
    let sum = fx.b.declare_var(F32);
    let zero = fx.f(F32, 0.0);
    fx.b.def_var(sum, zero);
    block_dots(fx, (xrow, wrow), j, (k, nn, block), (wsum, zp), &|fx, i, a| {
        let sa = fx.addr(scales, i, 4);
        let sw = fx.load(F32, sa);
        let s = fx.b.ins().fmul(sx, sw);
        let f = fx.b.ins().fcvt_from_sint(F32, a);
        let y = fx.b.ins().fmul(f, s);
        let cur = fx.b.use_var(sum);
        let nv = fx.b.ins().fadd(cur, y);
        fx.b.def_var(sum, nv);
    });
    let v = fx.b.use_var(sum);
    let ya = fx.addr(yrow, j, 4);
    fx.b.ins().store(flags(), v, ya, 0);
}

/// For each block of `block` inputs of output `j` (the last one short when `k` is not a
/// multiple), in order: `each(fx, i, dot)` with `i = b * nn + j` the block's table index and
/// `dot` its integer dot product less `zp * sums[i]` (the input zero point's share).
fn block_dots(
    fx: &mut Fx,
    (xrow, wrow): (Value, Value),
    j: Value,
    (k, nn, block): (i64, i64, i64),
    (sums, zp): (Value, Value),
    each: &dyn Fn(&mut Fx, Value, Value),
) {
    let one = |fx: &mut Fx, b: Value, len: i64| {
        let acc = fx.b.declare_var(I32);
        let z = c32(fx, 0);
        fx.b.def_var(acc, z);
        let (xb, wb) = (fx.addr(xrow, b, block), fx.addr(wrow, b, block));
        dot_row(fx, acc, xb, wb, len);
        let bn = fx.mul_imm(b, nn);
        let i = fx.b.ins().iadd(bn, j);
        let wa = fx.addr(sums, i, 4);
        let w = fx.load(I32, wa);
        let zs = fx.b.ins().imul(w, zp);
        let cur = fx.b.use_var(acc);
        let dot = fx.b.ins().isub(cur, zs);
        each(fx, i, dot);
    };
    let full = k / block;
    fx.for_n(full, &mut |fx, b| one(fx, b, block));
    if k % block != 0 {
        let b = fx.i(full);
        one(fx, b, k % block);
    }
}

/// `acc += x[i] * w[i]` over `k` contiguous int8 pairs: sixteen products at a time (both
/// rows widened to i16, multiplied in i16 lanes, the products widened into i32 sums), then
/// fours, then one by one.
fn dot_row(fx: &mut Fx, acc: cranelift_frontend::Variable, xrow: Value, wrow: Value, k: i64) {
    let (v16, v4) = if fx.simd { (k / 16, k % 16 / 4) } else { (0, 0) };
    if v16 + v4 > 0 {
        use cranelift_codegen::ir::types::{I8X16, I32X4};
        let zero = c32(fx, 0);
        let acc4 = fx.b.declare_var(I32X4);
        let z4 = fx.b.ins().splat(I32X4, zero);
        fx.b.def_var(acc4, z4);
        fx.for_ptrs(v16, &[(xrow, 16), (wrow, 16)], &mut |fx, p| {
            let x = fx.b.ins().load(I8X16, flags(), p[0], 0);
            let w = fx.b.ins().load(I8X16, flags(), p[1], 0);
            let (xl, xh) = (fx.b.ins().swiden_low(x), fx.b.ins().swiden_high(x));
            let (wl, wh) = (fx.b.ins().swiden_low(w), fx.b.ins().swiden_high(w));
            // each half: i16 products summed in adjacent pairs into i32 lanes (the shape
            // Cranelift lowers to one `pmaddwd`)
            let mut cur = fx.b.use_var(acc4);
            for (x16, w16) in [(xl, wl), (xh, wh)] {
                let d = fx.madd_i16(x16, w16);
                cur = fx.b.ins().iadd(cur, d);
            }
            fx.b.def_var(acc4, cur);
        });
        let (x4, w4) = (fx.add_imm(xrow, v16 * 16), fx.add_imm(wrow, v16 * 16));
        fx.for_ptrs(v4, &[(x4, 4), (w4, 4)], &mut |fx, p| {
            let x = widen4(fx, p[0]);
            let w = widen4(fx, p[1]);
            let prod = fx.b.ins().imul(x, w);
            let cur = fx.b.use_var(acc4);
            let nv = fx.b.ins().iadd(cur, prod);
            fx.b.def_var(acc4, nv);
        });
        let v = fx.b.use_var(acc4);
        let mut s = fx.b.use_var(acc);
        for lane in 0..4u8 {
            let e = fx.b.ins().extractlane(v, lane);
            s = fx.b.ins().iadd(s, e);
        }
        fx.b.def_var(acc, s);
    }
    let done = v16 * 16 + v4 * 4;
    let (xt, wt) = (fx.add_imm(xrow, done), fx.add_imm(wrow, done));
    dot_i8(fx, acc, (xt, 1), (wt, 1), k - done);
}

/// `acc[i] += x[i] * w - zw` for `len` contiguous int8 inputs and i32 accumulators: four
/// lanes at a time where the target has 128-bit vectors (a 4-byte load widened to i32x4),
/// `mac` for the rest.
fn mac_run(fx: &mut Fx, x: Value, acc: Value, len: i64, w: Value, zw: Value, mac: &dyn Fn(&mut Fx, &[Value])) {
    use cranelift_codegen::ir::types::I32X4;
    let vec = if fx.simd { len / 4 } else { 0 };
    if vec > 0 {
        let (wv, zv) = (fx.b.ins().splat(I32X4, w), fx.b.ins().splat(I32X4, zw));
        fx.for_ptrs(vec, &[(x, 4), (acc, 16)], &mut |fx, p| {
            let xv = widen4(fx, p[0]);
            let xw = fx.b.ins().imul(xv, wv);
            let t = fx.b.ins().isub(xw, zv);
            let cur = fx.b.ins().load(I32X4, flags(), p[1], 0);
            let nv = fx.b.ins().iadd(cur, t);
            fx.b.ins().store(flags(), nv, p[1], 0);
        });
    }
    let done = vec * 4;
    if len > done {
        let (xt, at) = (fx.add_imm(x, done), fx.add_imm(acc, done * 4));
        fx.for_ptrs(len - done, &[(xt, 1), (at, 4)], &mut |fx, p| mac(fx, p));
    }
}

/// A kernel tap (row, column) and the output rows and columns it reaches.
type Tap = (usize, usize, (i64, i64), (i64, i64));

/// Arena bytes an integer convolution or product needs: i32 accumulators or im2col rows,
/// after (for a hybrid op) the quantized input.
pub(crate) fn qconv_scratch(g: &Graph, n: NodeId) -> usize {
    let node = g.node(n);
    let out = &g.value(node.outputs[0]).ty.shape;
    let positions: usize = out[2..].iter().product();
    let (window, group, input) = match &node.op {
        Op::QConv { .. } if g.value(node.inputs[0]).ty.dtype.scalar == kiln_ir::Scalar::I16 => {
            return qconv16_scratch(g, n);
        }
        Op::QConv { window, group, .. } => (window, *group, 0),
        Op::DynConv { window, group, .. } => (window, *group, dyn_input_bytes(g, n)),
        Op::DynMatMul { .. } => return g.value(node.inputs[1]).ty.shape[0],
        _ => return 0,
    };
    input
        + if pointwise(g, n, window, group) {
            0
        } else if let Some(d) = Depthwise::of(g, n, window, group) {
            d.scratch()
        } else if group == 1 && g.const_value(node.inputs[1]).is_some() {
            // im2col: one int8 row of all output positions per (input channel, tap)
            let ci = g.value(node.inputs[0]).ty.shape[1];
            ci * window.kernel.iter().product::<usize>() * positions
        } else {
            4 * positions
        }
}

/// A depthwise convolution (one input channel per output) with unit strides and dilations,
/// computed per channel on a zero-point-padded copy of its plane: with the rows laid out
/// `pw` apart, every tap is one fixed offset, so all outputs are one run over the flattened
/// plane (vectorized, accumulators in registers across the taps). The `pw - ow` extra
/// columns per row are computed and dropped.
struct Depthwise {
    /// Padded plane rows and columns.
    ph: i64,
    pw: i64,
    /// Where the input plane starts in the padded one.
    top: i64,
    left: i64,
    /// Flattened outputs computed: `oh` rows of `pw`, rounded up to whole vectors.
    run: i64,
    /// Kernel width: the last vector reads up to `kw + 2` bytes past the padded plane.
    kw: i64,
}

impl Depthwise {
    fn of(g: &Graph, n: NodeId, window: &Window, group: usize) -> Option<Depthwise> {
        let node = g.node(n);
        let (xs, ws) = (&g.value(node.inputs[0]).ty.shape, &g.value(node.inputs[1]).ty.shape);
        let out = &g.value(node.outputs[0]).ty.shape;
        let unit = window.strides.iter().chain(&window.dilations).all(|&v| v == 1);
        // (a 1x1 single-channel one with constant weights is pointwise, which comes first)
        if pointwise(g, n, window, group) || xs.len() != 4 || group != xs[1] || ws[0] != xs[1] || !unit {
            return None;
        }
        let gm = geo(xs, out, window);
        let (ph, pw) = ((gm.oh + gm.kh - 1) as i64, (gm.ow + gm.kw - 1) as i64);
        if (gm.ph + gm.h) as i64 > ph || (gm.pw + gm.w) as i64 > pw {
            return None;
        }
        Some(Depthwise {
            ph,
            pw,
            top: gm.ph as i64,
            left: gm.pw as i64,
            run: (gm.oh as i64 * pw + 3) / 4 * 4,
            kw: gm.kw as i64,
        })
    }

    /// The padded plane (with room for an 8-byte read past its end), then the i32 sums.
    fn plane_bytes(&self) -> i64 {
        (self.ph * self.pw + self.kw + 8 + 15) / 16 * 16
    }

    fn scratch(&self) -> usize {
        (self.plane_bytes() + 4 * self.run) as usize
    }
}

/// The depthwise convolution of `Depthwise` with output stage `st`.
fn qconv_depthwise(fx: &mut Fx, g: &Graph, n: NodeId, window: &Window, d: &Depthwise, st: Stage, a: &Args) {
    let node = g.node(n);
    let xs = g.value(node.inputs[0]).ty.shape.clone();
    let out = g.value(node.outputs[0]).ty.shape.clone();
    let gm = geo(&xs, &out, window);
    let (c, hw, ohw) = (xs[1] as i64, (gm.h * gm.w) as i64, (gm.oh * gm.ow) as i64);
    let (kh, kw) = (gm.kh as i64, gm.kw as i64);
    let has_bias = node.inputs.len() > 2;
    let plane = a.scratch;
    let acc = fx.add_imm(a.scratch, d.plane_bytes());
    let lanes = if fx.simd { 4 } else { 1 };
    fx.for_n(xs[0] as i64 * c, &mut |fx, bc| {
        let ch = fx.b.ins().srem_imm_s(bc, c);
        // the padded plane: the zero point everywhere, then the input rows
        let zp = st.zp(fx);
        fill_bytes(fx, plane, d.plane_bytes(), zp);
        let xplane = fx.addr(a.ins[0], bc, hw);
        let first = fx.add_imm(plane, d.top * d.pw + d.left);
        fx.for_ptrs(gm.h as i64, &[(xplane, gm.w as i64), (first, d.pw)], &mut |fx, r| {
            copy_bytes(fx, r[0], r[1], gm.w as i64)
        });
        // this channel's taps, and bias - zp * sum(w)
        let wbase = fx.addr(a.ins[1], ch, kh * kw);
        let taps: Vec<(i64, Value)> = (0..kh * kw)
            .map(|t| {
                let wa = fx.add_imm(wbase, t);
                (t / kw * d.pw + t % kw, load_i8(fx, wa))
            })
            .collect();
        let bias = if has_bias {
            let ba = fx.addr(a.ins[2], ch, 4);
            fx.load(I32, ba)
        } else {
            c32(fx, 0)
        };
        let zs = st.zsum(fx, ch);
        let init = fx.b.ins().isub(bias, zs);
        if lanes == 4 {
            use cranelift_codegen::ir::types::{I8X16, I16X8, I32X4};
            let init4 = fx.b.ins().splat(I32X4, init);
            // Taps in pairs (an odd last one with a zero partner): per four outputs, the two
            // taps' bytes widened, their halfwords interleaved, and one `pmaddwd`-shaped
            // product against (w1, w2) gives both taps' products summed in i32 lanes.
            let lanes16 = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
            let pairs: Vec<(i64, i64, Value)> = taps
                .chunks(2)
                .map(|t| {
                    let (o1, w1) = t[0];
                    let (o2, w2) = t.get(1).copied().unwrap_or((o1, c32(fx, 0)));
                    let hi = fx.b.ins().ishl_imm_u(w2, 16);
                    let lo = fx.b.ins().band_imm_u(w1, 0xffff);
                    let w = fx.b.ins().bor(lo, hi);
                    let w = fx.b.ins().splat(I32X4, w);
                    (o1, o2, fx.b.ins().bitcast(I16X8, lanes16, w))
                })
                .collect();
            let mask: Vec<u8> = (0..4u8)
                .flat_map(|i| [2 * i, 2 * i + 1, 16 + 2 * i, 17 + 2 * i])
                .collect();
            let mask = fx.b.func.dfg.immediates.push(mask.as_slice().into());
            fx.for_ptrs(d.run / 4, &[(plane, 4), (acc, 16)], &mut |fx, p| {
                let mut s = init4;
                for &(o1, o2, w) in &pairs {
                    let a = fx.b.ins().sload8x8(flags(), p[0], o1 as i32);
                    let b = fx.b.ins().sload8x8(flags(), p[0], o2 as i32);
                    let (a8, b8) = (
                        fx.b.ins().bitcast(I8X16, lanes16, a),
                        fx.b.ins().bitcast(I8X16, lanes16, b),
                    );
                    let ab = fx.b.ins().shuffle(a8, b8, mask);
                    let ab = fx.b.ins().bitcast(I16X8, lanes16, ab);
                    let d2 = fx.madd_i16(ab, w);
                    s = fx.b.ins().iadd(s, d2);
                }
                fx.b.ins().store(flags(), s, p[1], 0);
            });
        } else {
            fx.for_ptrs(d.run, &[(plane, 1), (acc, 4)], &mut |fx, p| {
                let mut s = init;
                for &(off, w) in &taps {
                    let xa = fx.add_imm(p[0], off);
                    let x = load_i8(fx, xa);
                    let xw = fx.b.ins().imul(x, w);
                    s = fx.b.ins().iadd(s, xw);
                }
                fx.store(s, p[1]);
            });
        }
        // the valid columns of each row to the output
        let chan = st.channel(fx, ch);
        let es = st.elem();
        let ybase = fx.addr(a.outs[0], bc, ohw * es);
        fx.for_ptrs(
            gm.oh as i64,
            &[(acc, 4 * d.pw), (ybase, gm.ow as i64 * es)],
            &mut |fx, r| {
                // four at a time in vectors where the sums provably fit, the rest one by one
                let quads = match st {
                    Stage::Static { fits: true, .. } if lanes == 4 => gm.ow as i64 / 4,
                    _ => 0,
                };
                if let Stage::Static { q, .. } = st {
                    fx.for_ptrs(quads, &[(r[0], 16), (r[1], 4)], &mut |fx, p| {
                        let v = fx.b.ins().load(cranelift_codegen::ir::types::I32X4, flags(), p[0], 0);
                        let y = finish_fit4(fx, q, v, chan.0, chan.1);
                        store_bytes4(fx, y, p[1], 0, 4);
                    });
                }
                let (a0, y0) = (fx.add_imm(r[0], 16 * quads), fx.add_imm(r[1], 4 * quads * es));
                fx.for_ptrs(gm.ow as i64 - 4 * quads, &[(a0, 4), (y0, es)], &mut |fx, p| {
                    let v = fx.load(I32, p[0]);
                    st.store(fx, v, chan, p[1], 0);
                });
            },
        );
    });
}

/// Bytes of a hybrid convolution's quantized input, rounded up to keep what follows aligned.
pub(crate) fn dyn_input_bytes(g: &Graph, n: NodeId) -> usize {
    g.value(g.node(n).inputs[0]).ty.numel().div_ceil(16) * 16
}

/// The kernel taps of `gm` that reach at least one output, with the rows and columns they
/// reach.
fn taps(gm: &Geo) -> Vec<Tap> {
    (0..gm.kh)
        .flat_map(|kh| (0..gm.kw).map(move |kw| (kh, kw)))
        .map(|(kh, kw)| (kh, kw, reached(gm.rows_reached(kh)), reached(gm.cols_reached(kw))))
        .filter(|t| t.2.1 > t.2.0 && t.3.1 > t.3.0)
        .collect()
}

/// Input element (in the channel plane) that tap (`kh`, `kw`) reads for output (`oy0`, `ox0`).
fn tap_start(gm: &Geo, kh: usize, kw: usize, oy0: i64, ox0: i64) -> i64 {
    (oy0 * gm.sh as i64 + (kh * gm.dh) as i64 - gm.ph as i64) * gm.w as i64 + ox0 * gm.sw as i64 + (kw * gm.dw) as i64
        - gm.pw as i64
}

/// `Plane::rows_reached`/`cols_reached` as i64 pairs.
fn reached((lo, hi): (usize, usize)) -> (i64, i64) {
    (lo as i64, hi as i64)
}

/// Integer convolution, accumulator-stationary: per output channel a row of i32 sums over
/// the output positions (scratch), and per input channel and kernel tap one pass over the
/// output positions that tap reaches (ranges known at compile time, so padding costs no
/// test in the inner loop). The sum order differs from the evaluator's, which integer
/// addition does not notice.
/// A 1x1 convolution over every position with one group: a matrix product, computed in
/// blocks of 4 output channels x 4 positions held in registers across all input channels.
fn pointwise(g: &Graph, n: NodeId, window: &Window, group: usize) -> bool {
    let node = g.node(n);
    group == 1
        && window.kernel.iter().all(|&k| k == 1)
        && window.strides.iter().all(|&s| s == 1)
        && window.pads.iter().all(|&p| p == 0)
        && g.const_value(node.inputs[1]).is_some()
}

/// The blocked product of `qconv_pointwise` on the im2col rows of a spatial convolution
/// (one group): padding taps read the input zero point, which the per-channel zero-point
/// term then cancels exactly.
pub(crate) fn im2col(fx: &mut Fx, g: &Graph, n: NodeId, window: &Window, st: Stage, a: &Args, b: Value) -> Value {
    let node = g.node(n);
    let xs = g.value(node.inputs[0]).ty.shape.clone();
    let out = g.value(node.outputs[0]).ty.shape.clone();
    let gm = geo(&xs, &out, window);
    let (ci, hw, p) = (xs[1] as i64, (gm.h * gm.w) as i64, (gm.oh * gm.ow) as i64);
    let kk = (gm.kh * gm.kw) as i64;
    let xb = fx.addr(a.ins[0], b, ci * hw);
    let zp = st.zp(fx);
    fx.for_n(ci, &mut |fx, c| {
        let xplane = fx.addr(xb, c, hw);
        let rows = fx.addr(a.scratch, c, kk * p);
        for kh in 0..gm.kh {
            for kw in 0..gm.kw {
                let tap = (kh * gm.kw + kw) as i64;
                let row = fx.add_imm(rows, tap * p);
                let (oy0, oy1) = reached(gm.rows_reached(kh));
                let (ox0, ox1) = reached(gm.cols_reached(kw));
                if !(oy0 == 0 && oy1 == gm.oh as i64 && ox0 == 0 && ox1 == gm.ow as i64) {
                    fill_bytes(fx, row, p, zp);
                }
                if oy1 <= oy0 || ox1 <= ox0 {
                    continue;
                }
                let x_first = tap_start(&gm, kh, kw, oy0, ox0);
                let src = fx.add_imm(xplane, x_first);
                let dst = fx.add_imm(row, oy0 * gm.ow as i64 + ox0);
                fx.for_ptrs(
                    oy1 - oy0,
                    &[(src, gm.sh as i64 * gm.w as i64), (dst, gm.ow as i64)],
                    &mut |fx, r| {
                        if gm.sw == 1 {
                            return copy_bytes(fx, r[0], r[1], ox1 - ox0);
                        }
                        let done = if gm.sw == 2 && fx.simd {
                            every_other_byte(fx, r[0], r[1], ox1 - ox0)
                        } else {
                            0
                        };
                        let (s0, d0) = (fx.add_imm(r[0], 2 * done), fx.add_imm(r[1], done));
                        let left = ox1 - ox0 - done;
                        if left <= 16 {
                            // short rows (a first layer's few columns): straight-line copies
                            for j in 0..left {
                                let v = fx.b.ins().load(I8, flags(), s0, (j * gm.sw as i64) as i32);
                                fx.b.ins().store(flags(), v, d0, j as i32);
                            }
                            return;
                        }
                        fx.for_ptrs(left, &[(s0, gm.sw as i64), (d0, 1)], &mut |fx, e| {
                            let v = fx.b.ins().load(I8, flags(), e[0], 0);
                            fx.b.ins().store(flags(), v, e[1], 0);
                        });
                    },
                );
            }
        }
    });
    a.scratch
}

/// The first of every two bytes from `src` to `dst`, eight at a time (one 16-byte load and
/// one byte shuffle) while the load stays within the `2 * len - 1` bytes the row spans;
/// returns how many were copied (the caller copies the rest).
fn every_other_byte(fx: &mut Fx, src: Value, dst: Value, len: i64) -> i64 {
    use cranelift_codegen::ir::types::{I8X16, I64X2};
    let chunks = if 2 * len >= 17 { (2 * len - 17) / 16 + 1 } else { 0 };
    let mask: Vec<u8> = (0..16u8).map(|k| if k < 8 { 2 * k } else { 2 * (k - 8) }).collect();
    let mask = fx.b.func.dfg.immediates.push(mask.as_slice().into());
    let le = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
    fx.for_ptrs(chunks, &[(src, 16), (dst, 8)], &mut |fx, p| {
        let v = fx.b.ins().load(I8X16, flags(), p[0], 0);
        let e = fx.b.ins().shuffle(v, v, mask);
        let e = fx.b.ins().bitcast(I64X2, le, e);
        let e = fx.b.ins().extractlane(e, 0);
        fx.b.ins().store(flags(), e, p[1], 0);
    });
    8 * chunks
}

/// `len` bytes from `src` to `dst` (not overlapping): eight at a time, then one by one.
pub(crate) fn copy_bytes(fx: &mut Fx, src: Value, dst: Value, len: i64) {
    fx.for_ptrs(len / 8, &[(src, 8), (dst, 8)], &mut |fx, p| {
        let v = fx.b.ins().load(I64, flags(), p[0], 0);
        fx.b.ins().store(flags(), v, p[1], 0);
    });
    // the rest in at most three moves (4, 2, 1 bytes)
    let mut at = len / 8 * 8;
    for (size, ty) in [(4, I32), (2, I16), (1, I8)] {
        if len - at >= size {
            let v = fx.b.ins().load(ty, flags(), src, at as i32);
            fx.b.ins().store(flags(), v, dst, at as i32);
            at += size;
        }
    }
}

/// `len` bytes at `dst` set to the low byte of `v` (an i32): eight at a time, then one by one.
pub(crate) fn fill_bytes(fx: &mut Fx, dst: Value, len: i64, v: Value) {
    let b = fx.b.ins().band_imm_s(v, 0xFF);
    let b = fx.b.ins().uextend(I64, b);
    let b8 = fx.b.ins().imul_imm_s(b, 0x0101_0101_0101_0101);
    fx.for_ptrs(len / 8, &[(dst, 8)], &mut |fx, p| {
        fx.b.ins().store(flags(), b8, p[0], 0);
    });
    let mut at = len / 8 * 8;
    for (size, ty) in [(4, I32), (2, I16), (1, I8)] {
        if len - at >= size {
            let part = fx.b.ins().ireduce(ty, b8);
            fx.b.ins().store(flags(), part, dst, at as i32);
            at += size;
        }
    }
}

fn qconv_pointwise(fx: &mut Fx, g: &Graph, n: NodeId, st: Stage, a: &Args, spatial: Option<&Window>) {
    use cranelift_codegen::ir::types::I32X4;
    let node = g.node(n);
    let xs = g.value(node.inputs[0]).ty.shape.clone();
    let m = g.value(node.inputs[1]).ty.shape[0] as i64;
    let kk: i64 = spatial.map_or(1, |w| w.kernel.iter().product::<usize>() as i64);
    let ci = xs[1] as i64 * kk;
    let p: i64 = g.value(node.outputs[0]).ty.shape[2..].iter().product::<usize>() as i64;
    let has_bias = node.inputs.len() > 2;
    let mb = if fx.simd { m / 4 } else { 0 };
    let pb8 = p / 8;
    let done = pb8 * 8 + if p - pb8 * 8 >= 4 { 4 } else { 0 };
    let es = st.elem();
    // One output channel at output position pointer `xp` (scalar), all channels summed.
    let scalar_out = |fx: &mut Fx, xbase: Value, ybase: Value, oc: Value, pos: Value| {
        let wrow = fx.addr(a.ins[1], oc, ci);
        let xp = fx.addr(xbase, pos, 1);
        let acc = fx.b.declare_var(I32);
        let init = if has_bias {
            let ba = fx.addr(a.ins[2], oc, 4);
            fx.load(I32, ba)
        } else {
            c32(fx, 0)
        };
        fx.b.def_var(acc, init);
        dot_i8(fx, acc, (xp, p), (wrow, 1), ci);
        let zs = st.zsum(fx, oc);
        let cur = fx.b.use_var(acc);
        let s = fx.b.ins().isub(cur, zs);
        let chan = st.channel(fx, oc);
        let row = fx.addr(ybase, oc, p * es);
        let ya = fx.addr(row, pos, es);
        st.store(fx, s, chan, ya, 0);
    };
    fx.for_n(xs[0] as i64, &mut |fx, b| {
        let xbase = match spatial {
            Some(w) => im2col(fx, g, n, w, st, a, b),
            None => fx.addr(a.ins[0], b, ci * p),
        };
        let ybase = fx.addr(a.outs[0], b, m * p * es);
        fx.for_n(mb, &mut |fx, ob| {
            let oc0 = fx.mul_imm(ob, 4);
            let ocs: Vec<Value> = (0..4).map(|k| fx.add_imm(oc0, k)).collect();
            // One block of 4 output channels x `width` positions (8: int8 products in i16
            // lanes, exact for int8 x int8, widened into two i32x4 sums; 4: i32 lanes).
            let block = |fx: &mut Fx, pos: Value, width: i64| {
                let halves = (width / 4) as usize;
                let vars: Vec<Vec<_>> = (0..4)
                    .map(|k| {
                        let init = if has_bias {
                            let ba = fx.addr(a.ins[2], ocs[k], 4);
                            fx.load(I32, ba)
                        } else {
                            c32(fx, 0)
                        };
                        let s = fx.b.ins().splat(I32X4, init);
                        (0..halves)
                            .map(|_| {
                                let v = fx.b.declare_var(I32X4);
                                fx.b.def_var(v, s);
                                v
                            })
                            .collect()
                    })
                    .collect();
                let xp = fx.addr(xbase, pos, 1);
                let wrow0 = fx.addr(a.ins[1], oc0, ci);
                // Width 8: input channels two at a time, their bytes interleaved, so each
                // output channel takes two `pmaddwd`-shaped products (pairs of i16 products
                // summed into i32 lanes) per pair; an odd last channel as below.
                let pairs = if width == 8 { ci / 2 } else { 0 };
                fx.for_ptrs(pairs, &[(xp, 2 * p), (wrow0, 2)], &mut |fx, q2| {
                    use cranelift_codegen::ir::types::{I8X16, I16, I16X8, I64X2};
                    let lanes = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
                    let r0 = fx.b.ins().load(I64, flags(), q2[0], 0);
                    let r1 = fx.b.ins().load(I64, flags(), q2[0], p as i32);
                    let v = fx.b.ins().scalar_to_vector(I64X2, r0);
                    let v = fx.b.ins().insertlane(v, r1, 1);
                    let bytes = fx.b.ins().bitcast(I8X16, lanes, v);
                    let mask: Vec<u8> = (0..8u8).flat_map(|i| [i, i + 8]).collect();
                    let mask = fx.b.func.dfg.immediates.push(mask.as_slice().into());
                    let inter = fx.b.ins().shuffle(bytes, bytes, mask);
                    let (xl, xh) = (fx.b.ins().swiden_low(inter), fx.b.ins().swiden_high(inter));
                    for (k, vs) in vars.iter().enumerate() {
                        // the pair of weights (w_c, w_c+1) in every pair of i16 lanes
                        let w2 = fx.b.ins().load(I16, flags(), q2[1], (k as i64 * ci) as i32);
                        let w2 = fx.b.ins().splat(I16X8, w2);
                        let wb = fx.b.ins().bitcast(I8X16, lanes, w2);
                        let wv = fx.b.ins().swiden_low(wb);
                        for (&var, x) in vs.iter().zip([xl, xh]) {
                            let d = fx.madd_i16(x, wv);
                            let cur = fx.b.use_var(var);
                            let nv = fx.b.ins().iadd(cur, d);
                            fx.b.def_var(var, nv);
                        }
                    }
                });
                let (xr, wr) = (fx.add_imm(xp, 2 * pairs * p), fx.add_imm(wrow0, 2 * pairs));
                fx.for_ptrs(ci - 2 * pairs, &[(xr, p), (wr, 1)], &mut |fx, q2| {
                    if width == 8 {
                        use cranelift_codegen::ir::types::{I8X16, I16X8, I64X2};
                        let eight = fx.b.ins().load(I64, flags(), q2[0], 0);
                        let v = fx.b.ins().scalar_to_vector(I64X2, eight);
                        let lanes = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
                        let bytes = fx.b.ins().bitcast(I8X16, lanes, v);
                        let x8 = fx.b.ins().swiden_low(bytes);
                        for (k, vs) in vars.iter().enumerate() {
                            let w = fx.b.ins().sload8(I32, flags(), q2[1], (k as i64 * ci) as i32);
                            let w = fx.b.ins().ireduce(cranelift_codegen::ir::types::I16, w);
                            let wv = fx.b.ins().splat(I16X8, w);
                            let prod = fx.b.ins().imul(x8, wv);
                            let parts = [fx.b.ins().swiden_low(prod), fx.b.ins().swiden_high(prod)];
                            for (&var, part) in vs.iter().zip(parts) {
                                let cur = fx.b.use_var(var);
                                let nv = fx.b.ins().iadd(cur, part);
                                fx.b.def_var(var, nv);
                            }
                        }
                    } else {
                        let x4 = widen4(fx, q2[0]);
                        for (k, vs) in vars.iter().enumerate() {
                            let w = fx.b.ins().sload8(I32, flags(), q2[1], (k as i64 * ci) as i32);
                            let wv = fx.b.ins().splat(I32X4, w);
                            let prod = fx.b.ins().imul(x4, wv);
                            let cur = fx.b.use_var(vs[0]);
                            let nv = fx.b.ins().iadd(cur, prod);
                            fx.b.def_var(vs[0], nv);
                        }
                    }
                });
                for (k, vs) in vars.iter().enumerate() {
                    let zs = st.zsum(fx, ocs[k]);
                    let chan = st.channel(fx, ocs[k]);
                    let row = fx.addr(ybase, ocs[k], p * es);
                    let yp = fx.addr(row, pos, es);
                    for (h, &var) in vs.iter().enumerate() {
                        let acc4 = fx.b.use_var(var);
                        for lane in 0..4u8 {
                            let e = fx.b.ins().extractlane(acc4, lane);
                            let s = fx.b.ins().isub(e, zs);
                            st.store(fx, s, chan, yp, ((h as i64 * 4 + lane as i64) * es) as i32);
                        }
                    }
                }
            };
            fx.for_n(pb8, &mut |fx, pblk| {
                let pos = fx.mul_imm(pblk, 8);
                block(fx, pos, 8);
            });
            if p - pb8 * 8 >= 4 {
                let pos = fx.i(pb8 * 8);
                block(fx, pos, 4);
            }
            // positions left over after the blocks
            for k in 0..4 {
                let oc = ocs[k as usize];
                fx.for_n(p - done, &mut |fx, t| {
                    let pos = fx.add_imm(t, done);
                    scalar_out(fx, xbase, ybase, oc, pos);
                });
            }
        });
        // output channels left over after the blocks of 4
        let rest = m - mb * 4;
        fx.for_n(rest, &mut |fx, r| {
            let oc = fx.add_imm(r, mb * 4);
            fx.for_n(p, &mut |fx, pos| scalar_out(fx, xbase, ybase, oc, pos));
        });
    });
}

pub(crate) fn qconv(fx: &mut Fx, g: &Graph, n: NodeId, window: &Window, group: usize, q: &QLinear, a: &Args) {
    let st = Stage::Static {
        q,
        mult: a.aux[2],
        shift: a.aux[3],
        zsum: a.aux[4],
        fits: fits_i32(g, n, q),
    };
    conv(fx, g, n, window, group, st, a);
}

/// Hybrid convolution: the input quantized as one tensor into the scratch, then the integer
/// convolution reading it (the kernel's own scratch follows) with a float output stage.
pub(crate) fn dyn_conv(
    fx: &mut Fx,
    g: &Graph,
    n: NodeId,
    window: &Window,
    group: usize,
    a: &Args,
    dot: Option<super::Dot>,
) {
    let per_channel = matches!(&g.node(n).op, Op::DynConv { weight_scales, .. } if weight_scales.len() > 1);
    let xn = numel(g, g.node(n).inputs[0]);
    let (sx, zp) = dyn_quantize(fx, a.ins[0], a.scratch, xn);
    let rest = fx.add_imm(a.scratch, dyn_input_bytes(g, n) as i64);
    let mut ins = a.ins.clone();
    ins[0] = a.scratch;
    let inner = Args {
        ins,
        outs: a.outs.clone(),
        scratch: rest,
        aux: a.aux.clone(),
    };
    let st = Stage::Dynamic {
        sx,
        zp,
        scales: a.aux[2],
        per_channel,
        wsum: a.aux[3],
    };
    match (dot, super::qdw::QDw::of(g, n)) {
        (Some(d), _) if super::dot::applies(g, n) => super::dot::dyn_qconv(fx, g, n, window, st, &inner, d),
        (Some(d), Some(w)) => super::qdw::dyn_qconv(fx, &w, st, &inner, d),
        _ => conv(fx, g, n, window, group, st, &inner),
    }
}

/// An int8 convolution with output stage `st`: a blocked product for 1x1 and (one group,
/// constant weights) im2col'ed kernels, accumulator-stationary otherwise.
fn conv(fx: &mut Fx, g: &Graph, n: NodeId, window: &Window, group: usize, st: Stage, a: &Args) {
    if pointwise(g, n, window, group) {
        return qconv_pointwise(fx, g, n, st, a, None);
    }
    if group == 1 && g.const_value(g.node(n).inputs[1]).is_some() {
        return qconv_pointwise(fx, g, n, st, a, Some(window));
    }
    if let Some(d) = Depthwise::of(g, n, window, group) {
        return qconv_depthwise(fx, g, n, window, &d, st, a);
    }
    let cl = ConvLoops::of(g, n, window, group);
    let (gm, m, ohw) = (cl.gm, cl.m, cl.ohw);
    let acc = a.scratch;
    let taps = taps(&gm);
    cl.for_channels(fx, a, 1, &mut |fx, b, oc, xbase, wbase| {
        let bias = cl.bias(fx, a, oc, I32);
        fx.for_ptrs(ohw, &[(acc, 4)], &mut |fx, p| fx.store(bias, p[0]));
        fx.for_n(cl.cg, &mut |fx, c| {
            let xplane = fx.addr(xbase, c, cl.hw);
            let wplane = fx.addr(wbase, c, cl.kk);
            for &tap in &taps {
                let (_, _, (oy0, oy1), (ox0, ox1)) = tap;
                let (w, xrow0, arow0) = tap_rows(fx, &gm, tap, (wplane, xplane, 1), acc);
                let zpv = st.zp(fx);
                let zw = fx.b.ins().imul(w, zpv);
                let mac = |fx: &mut Fx, p: &[Value]| {
                    let x = load_i8(fx, p[0]);
                    let xw = fx.b.ins().imul(x, w);
                    let t = fx.b.ins().isub(xw, zw);
                    let cur = fx.load(I32, p[1]);
                    let nv = fx.b.ins().iadd(cur, t);
                    fx.store(nv, p[1]);
                };
                // Whole rows whose input rows sit back to back (stride 1, same width):
                // one loop over them all.
                if ox0 == 0 && ox1 == gm.ow as i64 && gm.sw == 1 && (gm.sh * gm.w) == gm.ow {
                    let len = (oy1 - oy0) * gm.ow as i64;
                    mac_run(fx, xrow0, arow0, len, w, zw, &mac);
                    continue;
                }
                if gm.sw == 1 {
                    fx.for_ptrs(
                        oy1 - oy0,
                        &[(xrow0, gm.sh as i64 * gm.w as i64), (arow0, gm.ow as i64 * 4)],
                        &mut |fx, r| mac_run(fx, r[0], r[1], ox1 - ox0, w, zw, &mac),
                    );
                    continue;
                }
                fx.for_ptrs(
                    oy1 - oy0,
                    &[(xrow0, gm.sh as i64 * gm.w as i64), (arow0, gm.ow as i64 * 4)],
                    &mut |fx, r| {
                        fx.for_ptrs(ox1 - ox0, &[(r[0], gm.sw as i64), (r[1], 4)], &mut |fx, p| mac(fx, p));
                    },
                );
            }
        });
        let chan = st.channel(fx, oc);
        let bo = fx.mul_imm(b, m);
        let boc = fx.b.ins().iadd(bo, oc);
        let es = st.elem();
        let ybase = fx.addr(a.outs[0], boc, ohw * es);
        fx.for_ptrs(ohw, &[(acc, 4), (ybase, es)], &mut |fx, p| {
            let s = fx.load(I32, p[0]);
            st.store(fx, s, chan, p[1], 0);
        });
    });
}

/// The loop structure the int8 and 16x8 weight-stationary convolutions share.
struct ConvLoops {
    gm: Geo,
    batch: i64,
    m: i64,
    ci: i64,
    cg: i64,
    mg: i64,
    hw: i64,
    ohw: i64,
    kk: i64,
    has_bias: bool,
}

impl ConvLoops {
    fn of(g: &Graph, n: NodeId, window: &Window, group: usize) -> ConvLoops {
        let node = g.node(n);
        let xs = &g.value(node.inputs[0]).ty.shape;
        let ws = &g.value(node.inputs[1]).ty.shape;
        let gm = geo(xs, &g.value(node.outputs[0]).ty.shape, window);
        let (m, ci) = (ws[0] as i64, xs[1] as i64);
        ConvLoops {
            gm,
            batch: xs[0] as i64,
            m,
            ci,
            cg: ci / group as i64,
            mg: m / group as i64,
            hw: (gm.h * gm.w) as i64,
            ohw: (gm.oh * gm.ow) as i64,
            kk: (gm.kh * gm.kw) as i64,
            has_bias: node.inputs.len() > 2,
        }
    }

    /// `body(fx, b, oc, xbase, wbase)` per batch row and output channel, with the input
    /// planes of the channel's group (`es`-byte elements) and its weights.
    fn for_channels(&self, fx: &mut Fx, a: &Args, es: i64, body: &mut dyn FnMut(&mut Fx, Value, Value, Value, Value)) {
        fx.for_n(self.batch, &mut |fx, b| {
            fx.for_n(self.m, &mut |fx, oc| {
                let gi = fx.b.ins().sdiv_imm_s(oc, self.mg);
                let cbase = fx.mul_imm(gi, self.cg);
                let bc = fx.mul_imm(b, self.ci);
                let c0 = fx.b.ins().iadd(bc, cbase);
                let xbase = fx.addr(a.ins[0], c0, self.hw * es);
                let wbase = fx.addr(a.ins[1], oc, self.cg * self.kk);
                body(fx, b, oc, xbase, wbase);
            });
        });
    }

    /// Output channel `oc`'s bias (`ty` I32 or I64), or zero.
    fn bias(&self, fx: &mut Fx, a: &Args, oc: Value, ty: cranelift_codegen::ir::Type) -> Value {
        if !self.has_bias {
            return if ty == I32 { c32(fx, 0) } else { fx.i(0) };
        }
        let ba = fx.addr(a.ins[2], oc, ty.bytes() as i64);
        fx.load(ty, ba)
    }
}

/// For one tap `(kh, kw, rows, cols)` of a channel: its weight (widened), the first input
/// element it reads (`xes`-byte elements) and the first accumulator (i32) it adds to.
/// Row `oy`, first valid column: input `(oy*sh + kh*dh - ph, ox0*sw + kw*dw - pw)`.
fn tap_rows(
    fx: &mut Fx,
    gm: &Geo,
    tap: Tap,
    (wplane, xplane, xes): (Value, Value, i64),
    acc: Value,
) -> (Value, Value, Value) {
    let (kh, kw, (oy0, _), (ox0, _)) = tap;
    let wa = fx.add_imm(wplane, (kh * gm.kw + kw) as i64);
    let w = load_i8(fx, wa);
    let xrow0 = fx.add_imm(xplane, tap_start(gm, kh, kw, oy0, ox0) * xes);
    let arow0 = fx.add_imm(acc, (oy0 * gm.ow as i64 + ox0) * 4);
    (w, xrow0, arow0)
}

/// `kiln_runtime::multiply_by_quantized_multiplier_wide` with run-time `m` and `shift` (i32):
/// the multiplier rounded to 16 bits, one rounding right shift of the i64 product.
fn mbqm_wide(fx: &mut Fx, x: Value, m: Value, shift: Value) -> Value {
    let m64 = fx.b.ins().sextend(I64, m);
    let rounded = fx.b.ins().iadd_imm_s(m64, 1 << 15);
    let rounded = fx.b.ins().sshr_imm_s(rounded, 16);
    let small = fx.b.ins().icmp_imm_s(IntCC::SignedLessThan, m, 0x7FFF_0000);
    let cap = fx.i(0x7FFF);
    let m16 = fx.b.ins().select(small, rounded, cap);
    let s64 = fx.b.ins().sextend(I64, shift);
    let fifteen = fx.i(15);
    let total = fx.b.ins().isub(fifteen, s64);
    let one = fx.i(1);
    let tm1 = fx.b.ins().iadd_imm_s(total, -1);
    let half = fx.b.ins().ishl(one, tm1);
    let p = fx.b.ins().imul(x, m16);
    let p = fx.b.ins().iadd(p, half);
    fx.b.ins().sshr(p, total)
}

/// The 16x8 output stage: rescale, zero point, clamp (all in i64), as an i32 value.
fn finish_wide(fx: &mut Fx, q: &QLinear, acc: Value, m: Value, s: Value) -> Value {
    let r = mbqm_wide(fx, acc, m, s);
    let r = fx.b.ins().iadd_imm_s(r, q.output_zp as i64);
    let (lo, hi) = (fx.i(q.act_min as i64), fx.i(q.act_max as i64));
    let r = fx.b.ins().smax(r, lo);
    let r = fx.b.ins().smin(r, hi);
    fx.b.ins().ireduce(I32, r)
}

/// 16x8 convolution (int16 input, int8 weights, int64 bias and sums), weight-stationary as
/// the int8 one: per output channel, input channels in chunks whose products cannot
/// overflow i32 (at most 255 taps of |(x - zp) * w| < 2^23 per position; a longer kernel
/// flushes within its channel) summed four positions at a time in i32 lanes, each chunk
/// then added to the i64 sums.
pub(crate) fn qconv16(fx: &mut Fx, g: &Graph, n: NodeId, window: &Window, group: usize, q: &QLinear, a: &Args) {
    use cranelift_codegen::ir::types::{I16X8, I32X4, I64X2};
    let cl = ConvLoops::of(g, n, window, group);
    let (gm, m, ohw, hw, kk, cg) = (cl.gm, cl.m, cl.ohw, cl.hw, cl.kk, cl.cg);
    let chunk = (255 / kk).max(1).min(cg);
    let (acc32, acc64) = (a.scratch, fx.add_imm(a.scratch, (ohw * 4 + 7) / 8 * 8));
    let zp = q.input_zp as i64;
    let taps = taps(&gm);
    let simd = fx.simd;
    cl.for_channels(fx, a, 2, &mut |fx, b, oc, xbase, wbase| {
        let bias = cl.bias(fx, a, oc, I64);
        let zero = c32(fx, 0);
        fx.for_ptrs(ohw, &[(acc64, 8), (acc32, 4)], &mut |fx, p| {
            fx.store(bias, p[0]);
            fx.store(zero, p[1]);
        });
        // i32 sums into the i64 ones, and the i32 ones cleared
        let flush = |fx: &mut Fx| {
            fx.for_ptrs(ohw, &[(acc32, 4), (acc64, 8)], &mut |fx, p| {
                let v = fx.load(I32, p[0]);
                let v = fx.b.ins().sextend(I64, v);
                let cur = fx.load(I64, p[1]);
                let nv = fx.b.ins().iadd(cur, v);
                fx.store(nv, p[1]);
                let zero = c32(fx, 0);
                fx.store(zero, p[0]);
            });
        };
        let mut start = 0;
        while start < cg {
            let count = chunk.min(cg - start);
            let xchunk = fx.add_imm(xbase, start * hw * 2);
            let wchunk = fx.add_imm(wbase, start * kk);
            fx.for_n(count, &mut |fx, c| {
                let xplane = fx.addr(xchunk, c, hw * 2);
                let wplane = fx.addr(wchunk, c, kk);
                for (t, &tap) in taps.iter().enumerate() {
                    // a kernel of more than 255 taps (one channel per chunk) flushes
                    // every 255 taps
                    if t > 0 && t % 255 == 0 {
                        flush(fx);
                    }
                    let (_, _, (oy0, oy1), (ox0, ox1)) = tap;
                    let (w, xrow0, arow0) = tap_rows(fx, &gm, tap, (wplane, xplane, 2), acc32);
                    let mac = |fx: &mut Fx, p: &[Value]| {
                        let x = fx.b.ins().sload16(I32, flags(), p[0], 0);
                        let x = fx.b.ins().iadd_imm_s(x, -zp);
                        let xw = fx.b.ins().imul(x, w);
                        let cur = fx.load(I32, p[1]);
                        let nv = fx.b.ins().iadd(cur, xw);
                        fx.store(nv, p[1]);
                    };
                    let run = |fx: &mut Fx, x: Value, acc: Value, len: i64| {
                        let vec = if simd && gm.sw == 1 { len / 4 } else { 0 };
                        if vec > 0 {
                            let wv = fx.b.ins().splat(I32X4, w);
                            let zv = c32(fx, zp);
                            let zv = fx.b.ins().splat(I32X4, zv);
                            fx.for_ptrs(vec, &[(x, 8), (acc, 16)], &mut |fx, p| {
                                let four = fx.b.ins().load(I64, flags(), p[0], 0);
                                let v = fx.b.ins().scalar_to_vector(I64X2, four);
                                let lanes =
                                    MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
                                let h = fx.b.ins().bitcast(I16X8, lanes, v);
                                let xv = fx.b.ins().swiden_low(h);
                                let xv = fx.b.ins().isub(xv, zv);
                                let xw = fx.b.ins().imul(xv, wv);
                                let cur = fx.b.ins().load(I32X4, flags(), p[1], 0);
                                let nv = fx.b.ins().iadd(cur, xw);
                                fx.b.ins().store(flags(), nv, p[1], 0);
                            });
                        }
                        let done = vec * 4;
                        let (xt, at) = (fx.add_imm(x, done * 2 * gm.sw as i64), fx.add_imm(acc, done * 4));
                        fx.for_ptrs(len - done, &[(xt, 2 * gm.sw as i64), (at, 4)], &mut |fx, p| mac(fx, p));
                    };
                    fx.for_ptrs(
                        oy1 - oy0,
                        &[(xrow0, gm.sh as i64 * gm.w as i64 * 2), (arow0, gm.ow as i64 * 4)],
                        &mut |fx, r| run(fx, r[0], r[1], ox1 - ox0),
                    );
                }
            });
            flush(fx);
            start += count;
        }
        let (mult, shift) = channel_requant(fx, q, a.aux[2], a.aux[3], oc);
        let bo = fx.mul_imm(b, m);
        let boc = fx.b.ins().iadd(bo, oc);
        let ybase = fx.addr(a.outs[0], boc, ohw * 2);
        fx.for_ptrs(ohw, &[(acc64, 8), (ybase, 2)], &mut |fx, p| {
            let s = fx.load(I64, p[0]);
            let y = finish_wide(fx, q, s, mult, shift);
            fx.b.ins().istore16(flags(), y, p[1], 0);
        });
    });
}

/// Arena bytes of `qconv16`: i32 and i64 sums for one output plane.
pub(crate) fn qconv16_scratch(g: &Graph, n: NodeId) -> usize {
    let out = &g.value(g.node(n).outputs[0]).ty.shape;
    let ohw = out[2..].iter().product::<usize>();
    (4 * ohw).div_ceil(8) * 8 + 8 * ohw
}

/// `sum (x - zp) * w` over `steps` groups of eight int16 `x` and int8 `w` (at most 127
/// groups, so the i32 lanes cannot overflow), as an i64 value.
fn dot_i16x8(fx: &mut Fx, x: Value, w: Value, steps: i64, zp: i64) -> Value {
    use cranelift_codegen::ir::types::{I8X16, I16X8, I32X4, I64X2};
    let zero = c32(fx, 0);
    let acc = fx.b.declare_var(I32X4);
    let z4 = fx.b.ins().splat(I32X4, zero);
    fx.b.def_var(acc, z4);
    let zpv = c32(fx, zp);
    let zp4 = fx.b.ins().splat(I32X4, zpv);
    fx.for_ptrs(steps, &[(x, 16), (w, 8)], &mut |fx, p| {
        let xv = fx.b.ins().load(I16X8, flags(), p[0], 0);
        let eight = fx.b.ins().load(I64, flags(), p[1], 0);
        let wv = fx.b.ins().scalar_to_vector(I64X2, eight);
        let lanes = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
        let wb = fx.b.ins().bitcast(I8X16, lanes, wv);
        let w16 = fx.b.ins().swiden_low(wb);
        let mut cur = fx.b.use_var(acc);
        for half in 0..2 {
            let (xh, wh) = if half == 0 {
                (fx.b.ins().swiden_low(xv), fx.b.ins().swiden_low(w16))
            } else {
                (fx.b.ins().swiden_high(xv), fx.b.ins().swiden_high(w16))
            };
            let xh = fx.b.ins().isub(xh, zp4);
            let prod = fx.b.ins().imul(xh, wh);
            cur = fx.b.ins().iadd(cur, prod);
        }
        fx.b.def_var(acc, cur);
    });
    let v = fx.b.use_var(acc);
    let mut s = fx.i(0);
    for lane in 0..4u8 {
        let e = fx.b.ins().extractlane(v, lane);
        let e = fx.b.ins().sextend(I64, e);
        s = fx.b.ins().iadd(s, e);
    }
    s
}

/// 16x8 `[rows, K] x [K, N]` over the transposed weights, one i64 sum per output.
pub(crate) fn qmatmul16(fx: &mut Fx, g: &Graph, n: NodeId, q: &QLinear, a: &Args) {
    let node = g.node(n);
    let ws = &g.value(node.inputs[1]).ty.shape;
    let (k, nn) = (ws[0] as i64, ws[1] as i64);
    let rows = numel(g, node.outputs[0]) / nn.max(1);
    let has_bias = node.inputs.len() > 2;
    let zp = q.input_zp as i64;
    fx.for_n(rows, &mut |fx, r| {
        let xrow = fx.addr(a.ins[0], r, k * 2);
        let yrow = fx.addr(a.outs[0], r, nn * 2);
        fx.for_n(nn, &mut |fx, j| {
            let acc = fx.b.declare_var(I64);
            let init = if has_bias {
                let ba = fx.addr(a.ins[2], j, 8);
                fx.load(I64, ba)
            } else {
                fx.i(0)
            };
            fx.b.def_var(acc, init);
            let wrow = fx.addr(a.aux[2], j, k);
            // Eight products at a time in i32 lanes: |(x - zp) * w| < 2^23 and each lane takes
            // two per step, so a chunk of 127 steps stays below 2^31 exactly; each chunk's
            // lanes are then added to the i64 sum.
            let v8 = if fx.simd { k / 8 } else { 0 };
            let mut start = 0;
            while start < v8 {
                let steps = (v8 - start).min(127);
                let (xc, wc) = (fx.add_imm(xrow, start * 16), fx.add_imm(wrow, start * 8));
                let part = dot_i16x8(fx, xc, wc, steps, zp);
                let cur = fx.b.use_var(acc);
                let nv = fx.b.ins().iadd(cur, part);
                fx.b.def_var(acc, nv);
                start += steps;
            }
            let (xt, wtail) = (fx.add_imm(xrow, v8 * 16), fx.add_imm(wrow, v8 * 8));
            fx.for_ptrs(k - v8 * 8, &[(xt, 2), (wtail, 1)], &mut |fx, p| {
                let x = fx.b.ins().sload16(I64, flags(), p[0], 0);
                let x = fx.b.ins().iadd_imm_s(x, -zp);
                let w = fx.b.ins().sload8(I64, flags(), p[1], 0);
                let prod = fx.b.ins().imul(x, w);
                let cur = fx.b.use_var(acc);
                let nv = fx.b.ins().iadd(cur, prod);
                fx.b.def_var(acc, nv);
            });
            let (m, s) = channel_requant(fx, q, a.aux[0], a.aux[1], j);
            let v = fx.b.use_var(acc);
            let y = match q.numerics {
                Numerics::Onnx => finish_wide(fx, q, v, m, s),
                // TFLite's 16x8 fully connected: the sum saturated to i32, one 32-bit rescale
                Numerics::Tflite => {
                    let v = saturate_i32(fx, v);
                    let r = mbqm(fx, v, m, s);
                    add_zp_clamp(fx, r, q.output_zp, q.act_min, q.act_max)
                }
            };
            let ya = fx.addr(yrow, j, 2);
            fx.b.ins().istore16(flags(), y, ya, 0);
        });
    });
}

/// The window of a global pool over input shape `xs`.
pub(crate) fn global_window(xs: &[usize]) -> Window {
    let sp = &xs[2..];
    Window {
        kernel: sp.to_vec(),
        strides: vec![1; sp.len()],
        dilations: vec![1; sp.len()],
        pads: vec![0; 2 * sp.len()],
    }
}

/// Integer max or average pooling (padding never counts; see `kiln_runtime::rounded_average`).
pub(crate) fn pool(fx: &mut Fx, g: &Graph, n: NodeId, window: &Window, kind: PoolKind, numerics: Numerics, a: &Args) {
    let node = g.node(n);
    let xs = g.value(node.inputs[0]).ty.shape.clone();
    let out = g.value(node.outputs[0]).ty.shape.clone();
    let gm = geo(&xs, &out, window);
    let planes = (xs[0] * xs[1]) as i64;
    let (hw, ohw) = ((gm.h * gm.w) as i64, (gm.oh * gm.ow) as i64);
    let is_max = kind == PoolKind::Max;
    let wide = g.value(node.inputs[0]).ty.dtype.scalar == kiln_ir::Scalar::I16;
    let (es, lo) = if wide { (2, -32768) } else { (1, -128) };
    let whole = gm.oh * gm.ow == 1
        && (gm.kh, gm.kw) == (gm.h, gm.w)
        && window.pads.iter().all(|&p| p == 0)
        && window.dilations.iter().all(|&d| d == 1);
    if whole && fx.simd {
        return whole_plane_pool(fx, a, planes, hw, wide, is_max, numerics);
    }
    fx.for_n(planes, &mut |fx, pl| {
        let xplane = fx.addr(a.ins[0], pl, hw * es);
        let oplane = fx.addr(a.outs[0], pl, ohw * es);
        fx.for_n(gm.oh as i64, &mut |fx, oh| {
            let (ih0, khl, khh) = range_row(fx, a.aux[0], oh);
            fx.for_n(gm.ow as i64, &mut |fx, ow| {
                let (iw0, kwl, kwh) = range_row(fx, a.aux[1], ow);
                let acc = fx.b.declare_var(I32);
                let init = c32(fx, if is_max { lo as i64 } else { 0 });
                fx.b.def_var(acc, init);
                fx.for_range(khl, khh, &mut |fx, kh| {
                    let ih = fx.mul_imm(kh, gm.dh as i64);
                    let ih = fx.b.ins().iadd(ih0, ih);
                    let xrow = fx.addr(xplane, ih, gm.w as i64 * es);
                    fx.for_range(kwl, kwh, &mut |fx, kw| {
                        let iw = fx.mul_imm(kw, gm.dw as i64);
                        let iw = fx.b.ins().iadd(iw0, iw);
                        let xa = fx.addr(xrow, iw, es);
                        let x = load_elem(fx, xa, wide);
                        let cur = fx.b.use_var(acc);
                        let nv = pool_step(fx, cur, x, is_max);
                        fx.b.def_var(acc, nv);
                    });
                });
                let v = fx.b.use_var(acc);
                let cnt = (!is_max).then(|| {
                    let rows = fx.b.ins().isub(khh, khl);
                    let cols = fx.b.ins().isub(kwh, kwl);
                    let cnt = fx.b.ins().imul(rows, cols);
                    fx.b.ins().ireduce(I32, cnt)
                });
                let pos = fx.mul_imm(oh, gm.ow as i64);
                let pos = fx.b.ins().iadd(pos, ow);
                let oa = fx.addr(oplane, pos, es);
                pool_store(fx, v, cnt, (wide, numerics), oa);
            });
        });
    });
}

/// A pool whose one window is the whole plane: the plane's elements are contiguous, so
/// sixteen bytes (or eight halfwords) at a time are summed (pairwise products with one) or
/// maxed in vectors, then the lanes and the tail one by one. Integer sums and maxima do not
/// depend on the order.
fn whole_plane_pool(fx: &mut Fx, a: &Args, planes: i64, hw: i64, wide: bool, is_max: bool, numerics: Numerics) {
    use cranelift_codegen::ir::types::{I8X16, I16X8, I32X4};
    let (es, lo) = if wide { (2, -32768) } else { (1, -128) };
    let per = 16 / es;
    let vectors = hw / per;
    fx.for_ptrs(planes, &[(a.ins[0], hw * es), (a.outs[0], es)], &mut |fx, pp| {
        let (xp, yp) = (pp[0], pp[1]);
        let acc = fx.b.declare_var(I32X4);
        let init = c32(fx, if is_max { lo as i64 } else { 0 });
        let init = fx.b.ins().splat(I32X4, init);
        fx.b.def_var(acc, init);
        let one = fx.b.ins().iconst(cranelift_codegen::ir::types::I16, 1);
        let one = fx.b.ins().splat(I16X8, one);
        fx.for_ptrs(vectors, &[(xp, 16)], &mut |fx, q| {
            let halves = if wide {
                vec![fx.b.ins().load(I16X8, flags(), q[0], 0)]
            } else {
                let v = fx.b.ins().load(I8X16, flags(), q[0], 0);
                vec![fx.b.ins().swiden_low(v), fx.b.ins().swiden_high(v)]
            };
            for h in halves {
                let cur = fx.b.use_var(acc);
                let nv = if is_max {
                    let (l, u) = (fx.b.ins().swiden_low(h), fx.b.ins().swiden_high(h));
                    let m = fx.b.ins().smax(l, u);
                    fx.b.ins().smax(cur, m)
                } else {
                    let pair = fx.madd_i16(h, one);
                    fx.b.ins().iadd(cur, pair)
                };
                fx.b.def_var(acc, nv);
            }
        });
        let v4 = fx.b.use_var(acc);
        let mut v = fx.b.ins().extractlane(v4, 0);
        for l in 1..4u8 {
            let x = fx.b.ins().extractlane(v4, l);
            v = if is_max {
                fx.b.ins().smax(v, x)
            } else {
                fx.b.ins().iadd(v, x)
            };
        }
        let sv = fx.b.declare_var(I32);
        fx.b.def_var(sv, v);
        let tail = fx.add_imm(xp, vectors * 16);
        fx.for_ptrs(hw - vectors * per, &[(tail, es)], &mut |fx, q| {
            let x = load_elem(fx, q[0], wide);
            let cur = fx.b.use_var(sv);
            let nv = pool_step(fx, cur, x, is_max);
            fx.b.def_var(sv, nv);
        });
        let v = fx.b.use_var(sv);
        let cnt = (!is_max).then(|| c32(fx, hw));
        pool_store(fx, v, cnt, (wide, numerics), yp);
    });
}

/// An int8 or (`wide`) int16 element at `addr`, widened to i32.
fn load_elem(fx: &mut Fx, addr: Value, wide: bool) -> Value {
    if wide {
        fx.b.ins().sload16(I32, flags(), addr, 0)
    } else {
        load_i8(fx, addr)
    }
}

/// A pool's running value `cur` with `x` taken in: the maximum, or the sum.
fn pool_step(fx: &mut Fx, cur: Value, x: Value, is_max: bool) -> Value {
    if is_max {
        fx.b.ins().smax(cur, x)
    } else {
        fx.b.ins().iadd(cur, x)
    }
}

/// Stores a pooled value at `addr`: a sum averaged over `cnt` taps (with the rounding of
/// `numerics`) and clamped, or, without a count, a maximum as it is.
fn pool_store(fx: &mut Fx, mut v: Value, cnt: Option<Value>, (wide, numerics): (bool, Numerics), addr: Value) {
    if let Some(cnt) = cnt {
        let (lo, hi) = if wide { (-32768, 32767) } else { (-128, 127) };
        v = average(fx, numerics, v, cnt);
        v = clamp(fx, v, lo, hi);
    }
    if wide {
        fx.b.ins().istore16(flags(), v, addr, 0);
    } else {
        store_i8(fx, v, addr);
    }
}

/// Integer softmax along `axis` (`kiln_runtime::softmax_i8`).
pub(crate) fn softmax(fx: &mut Fx, g: &Graph, n: NodeId, axis: usize, a: &Args) {
    let shape = g.value(g.node(n).inputs[0]).ty.shape.clone();
    let len = shape[axis] as i64;
    let inner: i64 = shape[axis + 1..].iter().product::<usize>() as i64;
    let outer: i64 = shape[..axis].iter().product::<usize>() as i64;
    fx.for_n(outer, &mut |fx, o| {
        fx.for_n(inner, &mut |fx, i| {
            let base = fx.mul_imm(o, len * inner);
            let base = fx.b.ins().iadd(base, i);
            let xrow = fx.addr(a.ins[0], base, 1);
            let yrow = fx.addr(a.outs[0], base, 1);
            let m = fx.b.declare_var(I32);
            let init = c32(fx, -128);
            fx.b.def_var(m, init);
            fx.for_ptrs(len, &[(xrow, inner)], &mut |fx, p| {
                let x = load_i8(fx, p[0]);
                let cur = fx.b.use_var(m);
                let nv = fx.b.ins().smax(cur, x);
                fx.b.def_var(m, nv);
            });
            let mv = fx.b.use_var(m);
            let sum = fx.b.declare_var(I64);
            let zero = fx.i(0);
            fx.b.def_var(sum, zero);
            let table = a.aux[0];
            let exp_of = |fx: &mut Fx, p: Value| -> Value {
                let x = load_i8(fx, p);
                let d = fx.b.ins().isub(mv, x);
                let d = fx.b.ins().sextend(I64, d);
                let ta = fx.addr(table, d, 4);
                let e = fx.load(I32, ta);
                fx.b.ins().sextend(I64, e)
            };
            fx.for_ptrs(len, &[(xrow, inner)], &mut |fx, p| {
                let e = exp_of(fx, p[0]);
                let cur = fx.b.use_var(sum);
                let nv = fx.b.ins().iadd(cur, e);
                fx.b.def_var(sum, nv);
            });
            let s = fx.b.use_var(sum);
            let s2 = fx.b.ins().iadd(s, s);
            fx.for_ptrs(len, &[(xrow, inner), (yrow, inner)], &mut |fx, p| {
                let e = exp_of(fx, p[0]);
                let num = fx.b.ins().imul_imm_s(e, 512);
                let num = fx.b.ins().iadd(num, s);
                let q = fx.b.ins().sdiv(num, s2);
                let q = fx.b.ins().iadd_imm_s(q, -128);
                let top = fx.i(127);
                let q = fx.b.ins().smin(q, top);
                let q = fx.b.ins().ireduce(I32, q);
                store_i8(fx, q, p[1]);
            });
        });
    });
}

/// `kiln_runtime::softmax_i16` along `axis` (the exponential tables in aux 0 and 1).
pub(crate) fn softmax16(fx: &mut Fx, g: &Graph, n: NodeId, axis: usize, a: &Args) {
    let shape = g.value(g.node(n).inputs[0]).ty.shape.clone();
    let len = shape[axis] as i64;
    let inner: i64 = shape[axis + 1..].iter().product::<usize>() as i64;
    let outer: i64 = shape[..axis].iter().product::<usize>() as i64;
    let (hi, lo) = (a.aux[0], a.aux[1]);
    fx.for_n(outer, &mut |fx, o| {
        fx.for_n(inner, &mut |fx, i| {
            let base = fx.mul_imm(o, len * inner);
            let base = fx.b.ins().iadd(base, i);
            let xrow = fx.addr(a.ins[0], base, 2);
            let yrow = fx.addr(a.outs[0], base, 2);
            let m = fx.b.declare_var(I32);
            let init = c32(fx, -32768);
            fx.b.def_var(m, init);
            fx.for_ptrs(len, &[(xrow, 2 * inner)], &mut |fx, p| {
                let x = fx.b.ins().sload16(I32, flags(), p[0], 0);
                let cur = fx.b.use_var(m);
                let nv = fx.b.ins().smax(cur, x);
                fx.b.def_var(m, nv);
            });
            let mv = fx.b.use_var(m);
            // exp of max - x in Q30: hi[d >> 8] * lo[d & 255], rounded
            let exp_of = |fx: &mut Fx, p: Value| -> Value {
                let x = fx.b.ins().sload16(I32, flags(), p, 0);
                let d = fx.b.ins().isub(mv, x);
                let dh = fx.b.ins().ushr_imm_u(d, 8);
                let dl = fx.b.ins().band_imm_s(d, 255);
                let (dh, dl) = (fx.b.ins().uextend(I64, dh), fx.b.ins().uextend(I64, dl));
                let (ha, la) = (fx.addr(hi, dh, 4), fx.addr(lo, dl, 4));
                let (h, l) = (fx.load(I32, ha), fx.load(I32, la));
                let (h, l) = (fx.b.ins().sextend(I64, h), fx.b.ins().sextend(I64, l));
                let e = fx.b.ins().imul(h, l);
                let e = fx.b.ins().iadd_imm_s(e, 1 << 29);
                fx.b.ins().sshr_imm_s(e, 30)
            };
            let sum = fx.b.declare_var(I64);
            let zero = fx.i(0);
            fx.b.def_var(sum, zero);
            fx.for_ptrs(len, &[(xrow, 2 * inner)], &mut |fx, p| {
                let e = exp_of(fx, p[0]);
                let cur = fx.b.use_var(sum);
                let nv = fx.b.ins().iadd(cur, e);
                fx.b.def_var(sum, nv);
            });
            let s = fx.b.use_var(sum);
            let s2 = fx.b.ins().iadd(s, s);
            fx.for_ptrs(len, &[(xrow, 2 * inner), (yrow, 2 * inner)], &mut |fx, p| {
                let e = exp_of(fx, p[0]);
                let num = fx.b.ins().imul_imm_s(e, 65536);
                let num = fx.b.ins().iadd(num, s);
                let q = fx.b.ins().sdiv(num, s2);
                let top = fx.i(32767);
                let q = fx.b.ins().smin(q, top);
                let q = fx.b.ins().ireduce(I32, q);
                fx.b.ins().istore16(flags(), q, p[1], 0);
            });
        });
    });
}

/// `kiln_runtime::rounded_average`: `s / n` rounded half to even; 0 when `n` is 0 (a
/// window entirely in padding).
/// `kiln_runtime::rounded_average_away` (TFLite's): `(s + n/2) / n` for positive `s`, else
/// `(s - n/2) / n`, truncating; 0 when `n` is 0.
fn rounded_average_away(fx: &mut Fx, s: Value, n: Value) -> Value {
    let one = c32(fx, 1);
    let safe_n = fx.b.ins().smax(n, one);
    let half = fx.b.ins().sdiv_imm_s(safe_n, 2);
    let neg_half = fx.b.ins().ineg(half);
    let pos = fx.b.ins().icmp_imm_s(IntCC::SignedGreaterThan, s, 0);
    let off = fx.b.ins().select(pos, half, neg_half);
    let t = fx.b.ins().iadd(s, off);
    let q = fx.b.ins().sdiv(t, safe_n);
    let empty = fx.b.ins().icmp_imm_s(IntCC::Equal, n, 0);
    let zero = c32(fx, 0);
    fx.b.ins().select(empty, zero, q)
}

/// The integer average of `numerics`.
fn average(fx: &mut Fx, numerics: Numerics, s: Value, n: Value) -> Value {
    match numerics {
        Numerics::Onnx => rounded_average(fx, s, n),
        Numerics::Tflite => rounded_average_away(fx, s, n),
    }
}

fn rounded_average(fx: &mut Fx, s: Value, n: Value) -> Value {
    let one = c32(fx, 1);
    let safe_n = fx.b.ins().smax(n, one);
    let q = fx.b.ins().sdiv(s, safe_n);
    let r = fx.b.ins().srem(s, safe_n);
    let r = fx.b.ins().iabs(r);
    let r2 = fx.b.ins().iadd(r, r);
    let over = fx.b.ins().icmp(IntCC::SignedGreaterThan, r2, safe_n);
    let tie = fx.b.ins().icmp(IntCC::Equal, r2, safe_n);
    let odd = fx.b.ins().band_imm_s(q, 1);
    let odd = fx.b.ins().icmp_imm_s(IntCC::NotEqual, odd, 0);
    let tie_odd = fx.b.ins().band(tie, odd);
    let away = fx.b.ins().bor(over, tie_odd);
    let neg = fx.b.ins().icmp_imm_s(IntCC::SignedLessThan, s, 0);
    let (m1, p1) = (c32(fx, -1), c32(fx, 1));
    let step = fx.b.ins().select(neg, m1, p1);
    let moved = fx.b.ins().iadd(q, step);
    let q = fx.b.ins().select(away, moved, q);
    let empty = fx.b.ins().icmp_imm_s(IntCC::Equal, n, 0);
    let zero = c32(fx, 0);
    fx.b.ins().select(empty, zero, q)
}

#[cfg(test)]
mod tests {
    use super::{Numerics, SplitSide};

    /// The 32-bit split of an Add side applies to every side scale the quantizer makes
    /// (each side's is at most 1/2 of the common one; here 1/2 down to 2^-20, either sign:
    /// a Sub negates b's), in both roundings, and gives the scalar
    /// rescale's value for every input.
    #[test]
    fn add_sides_split_exactly() {
        for numerics in [Numerics::Onnx, Numerics::Tflite] {
            for i in 10..200 {
                let scale = 2f64.powf(-(i as f64) / 10.0);
                let mut r = kiln_runtime::quantize_multiplier(scale).unwrap();
                if i % 3 == 0 {
                    r.multiplier = -r.multiplier;
                }
                let split = SplitSide::of(r, numerics).unwrap_or_else(|| panic!("{scale} {numerics:?}"));
                for d in -255..=255i32 {
                    let x = d << kiln_runtime::ADD_LEFT_SHIFT;
                    let want = match numerics {
                        Numerics::Onnx => kiln_runtime::multiply_by_quantized_multiplier(x, r),
                        Numerics::Tflite => kiln_runtime::multiply_by_quantized_multiplier_tflite(x, r),
                    };
                    assert_eq!(split.eval(d), want, "{scale} {numerics:?} {d}");
                }
            }
        }
    }
}

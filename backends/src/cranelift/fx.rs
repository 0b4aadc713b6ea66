//! A thin layer over Cranelift's `FunctionBuilder` for kernel code: counted loops, element
//! addressing, lane-generic float helpers (the same call works on `f32` and `f32x4`), and
//! Kiln's own approximations of exp/log/tanh/erf so emitted objects need no libm.
//!
//! Approximation bounds (measured against f64 over the f32 range; see `tests/`):
//! exp: ≤ 2 ulp; log: ≤ 2 ulp for normal inputs; tanh: ≤ 3e-7 absolute;
//! erf: ≤ 2e-7 absolute. Results feed float paths compared with a stated tolerance.

// Polynomial coefficients are kept as published, digit for digit.
#![allow(clippy::excessive_precision)]

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32, I32, I32X4, I64};
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;

pub(crate) struct Fx<'a, 'b> {
    pub b: &'a mut FunctionBuilder<'b>,
    /// The target has 128-bit vectors (x86-64, AArch64); riscv64 code stays scalar.
    pub simd: bool,
}

impl<'a, 'b> Fx<'a, 'b> {
    pub fn new(b: &'a mut FunctionBuilder<'b>, simd: bool) -> Self {
        Fx { b, simd }
    }

    pub fn i(&mut self, v: i64) -> Value {
        self.b.ins().iconst(I64, v)
    }

    /// A float constant of type `ty` (`f32` or splatted `f32x4`).
    pub fn f(&mut self, ty: Type, v: f32) -> Value {
        let s = self.b.ins().f32const(v);
        if ty == F32 { s } else { self.b.ins().splat(ty, s) }
    }

    pub fn splat(&mut self, ty: Type, s: Value) -> Value {
        if ty == F32 { s } else { self.b.ins().splat(ty, s) }
    }

    pub fn load(&mut self, ty: Type, addr: Value) -> Value {
        self.b.ins().load(ty, MemFlagsData::new().with_notrap(), addr, 0)
    }

    pub fn store(&mut self, v: Value, addr: Value) {
        self.b.ins().store(MemFlagsData::new().with_notrap(), v, addr, 0);
    }

    /// `base + index * scale` (bytes).
    pub fn addr(&mut self, base: Value, index: Value, scale: i64) -> Value {
        if scale == 0 {
            return base;
        }
        let off = if scale == 1 {
            index
        } else {
            self.b.ins().imul_imm_s(index, scale)
        };
        self.b.ins().iadd(base, off)
    }

    pub fn add_imm(&mut self, v: Value, imm: i64) -> Value {
        if imm == 0 { v } else { self.b.ins().iadd_imm_s(v, imm) }
    }

    pub fn mul_imm(&mut self, v: Value, imm: i64) -> Value {
        match imm {
            1 => v,
            0 => self.i(0),
            _ => self.b.ins().imul_imm_s(v, imm),
        }
    }

    /// `for i in 0..n { body(i) }` with a constant trip count.
    pub fn for_n(&mut self, n: i64, body: &mut dyn FnMut(&mut Fx, Value)) {
        if n <= 0 {
            return;
        }
        if n == 1 {
            let zero = self.i(0);
            body(self, zero);
            return;
        }
        let (s, e) = (self.i(0), self.i(n));
        self.for_range(s, e, body);
    }

    /// Runs `then` if `cond` (an i8 truth value) is set, `otherwise` if not.
    pub fn if_else(&mut self, cond: Value, then: &mut dyn FnMut(&mut Fx), otherwise: &mut dyn FnMut(&mut Fx)) {
        let (t, e, done) = (self.b.create_block(), self.b.create_block(), self.b.create_block());
        self.b.ins().brif(cond, t, &[], e, &[]);
        self.b.switch_to_block(t);
        self.b.seal_block(t);
        then(self);
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(e);
        self.b.seal_block(e);
        otherwise(self);
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(done);
        self.b.seal_block(done);
    }

    /// Like [`Fx::for_ptrs`] with a run-time trip count (none if `count <= 0`).
    pub fn for_ptrs_v(&mut self, count: Value, ptrs: &[(Value, i64)], body: &mut dyn FnMut(&mut Fx, &[Value])) {
        let vars: Vec<_> = ptrs
            .iter()
            .map(|&(start, _)| {
                let v = self.b.declare_var(I64);
                self.b.def_var(v, start);
                v
            })
            .collect();
        let zero = self.i(0);
        self.for_range(zero, count, &mut |fx, _| {
            let cur: Vec<Value> = vars.iter().map(|&v| fx.b.use_var(v)).collect();
            body(fx, &cur);
            for ((&v, &c), &(_, step)) in vars.iter().zip(&cur).zip(ptrs) {
                let next = fx.add_imm(c, step);
                fx.b.def_var(v, next);
            }
        });
    }

    /// `n` iterations that walk pointers: each `(start, step)` pair is a pointer handed to
    /// the body and advanced by `step` bytes per iteration (Cranelift does no strength
    /// reduction, so this keeps multiplies out of inner loops).
    pub fn for_ptrs(&mut self, n: i64, ptrs: &[(Value, i64)], body: &mut dyn FnMut(&mut Fx, &[Value])) {
        if n <= 0 {
            return;
        }
        if n == 1 {
            let p: Vec<Value> = ptrs.iter().map(|p| p.0).collect();
            body(self, &p);
            return;
        }
        let vars: Vec<_> = ptrs
            .iter()
            .map(|&(start, _)| {
                let v = self.b.declare_var(I64);
                self.b.def_var(v, start);
                v
            })
            .collect();
        self.for_n(n, &mut |fx, _| {
            let cur: Vec<Value> = vars.iter().map(|&v| fx.b.use_var(v)).collect();
            body(fx, &cur);
            for ((&v, &c), &(_, step)) in vars.iter().zip(&cur).zip(ptrs) {
                let next = fx.add_imm(c, step);
                fx.b.def_var(v, next);
            }
        });
    }

    /// Loops over every multi-index of `dims` (row-major), handing the indices to `body`.
    pub fn for_index(&mut self, dims: &[i64], body: &mut dyn FnMut(&mut Fx, &[Value])) {
        fn rec(fx: &mut Fx, dims: &[i64], idx: &mut Vec<Value>, body: &mut dyn FnMut(&mut Fx, &[Value])) {
            if idx.len() == dims.len() {
                body(fx, idx);
                return;
            }
            let d = dims[idx.len()];
            fx.for_n(d, &mut |fx, i| {
                idx.push(i);
                rec(fx, dims, idx, body);
                idx.pop();
            });
        }
        rec(self, dims, &mut Vec::new(), body);
    }

    /// `sum(idx[d] * strides[d])` as an i64 value.
    pub fn dot(&mut self, idx: &[Value], strides: &[i64]) -> Value {
        let mut acc = self.i(0);
        for (&i, &s) in idx.iter().zip(strides) {
            if s != 0 {
                let t = self.mul_imm(i, s);
                acc = self.b.ins().iadd(acc, t);
            }
        }
        acc
    }

    /// `for i in start..end { body(i) }` with run-time bounds.
    pub fn for_range(&mut self, start: Value, end: Value, body: &mut dyn FnMut(&mut Fx, Value)) {
        let var = self.b.declare_var(I64);
        self.b.def_var(var, start);
        let header = self.b.create_block();
        let body_blk = self.b.create_block();
        let exit = self.b.create_block();
        self.b.ins().jump(header, &[]);
        self.b.switch_to_block(header);
        let i = self.b.use_var(var);
        let c = self.b.ins().icmp(IntCC::SignedLessThan, i, end);
        self.b.ins().brif(c, body_blk, &[], exit, &[]);
        self.b.switch_to_block(body_blk);
        self.b.seal_block(body_blk);
        body(self, i);
        let next = self.b.ins().iadd_imm_s(i, 1);
        self.b.def_var(var, next);
        self.b.ins().jump(header, &[]);
        self.b.seal_block(header);
        self.b.switch_to_block(exit);
        self.b.seal_block(exit);
    }

    /// Lane-generic select: `c ? x : y` where `c` comes from `fcmp` on the same type.
    pub fn sel(&mut self, ty: Type, c: Value, x: Value, y: Value) -> Value {
        if ty == F32 {
            self.b.ins().select(c, x, y)
        } else {
            // A vector compare yields an integer lane mask; view it as the float type.
            let m = self.bits(ty, c);
            self.b.ins().bitselect(m, x, y)
        }
    }

    /// Reinterprets the bits of `v` as `ty` (same size; lanes in little-endian order).
    pub fn bits(&mut self, ty: Type, v: Value) -> Value {
        let flags = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
        self.b.ins().bitcast(ty, flags, v)
    }

    /// |mag| with the sign of `sign`, by bit operations (x86 has no vector copysign).
    pub fn copysign(&mut self, ty: Type, mag: Value, sign: Value) -> Value {
        let (ity, _) = int_ty(ty);
        let a = self.b.ins().fabs(mag);
        let a = self.bits(ity, a);
        let s = self.bits(ity, sign);
        let m = self.int_splat(ity, i32::MIN);
        let s = self.b.ins().band(s, m);
        let r = self.b.ins().bor(a, s);
        self.bits(ty, r)
    }

    pub fn lt(&mut self, x: Value, y: Value) -> Value {
        self.b.ins().fcmp(FloatCC::LessThan, x, y)
    }

    pub fn gt(&mut self, x: Value, y: Value) -> Value {
        self.b.ins().fcmp(FloatCC::GreaterThan, x, y)
    }

    pub fn mul(&mut self, x: Value, y: Value) -> Value {
        self.b.ins().fmul(x, y)
    }

    pub fn add(&mut self, x: Value, y: Value) -> Value {
        self.b.ins().fadd(x, y)
    }

    pub fn sub(&mut self, x: Value, y: Value) -> Value {
        self.b.ins().fsub(x, y)
    }

    pub fn div(&mut self, x: Value, y: Value) -> Value {
        self.b.ins().fdiv(x, y)
    }

    /// `c0 + x*(c1 + x*(c2 + ...))` (Horner, coefficients lowest first).
    fn poly(&mut self, ty: Type, x: Value, coeffs: &[f32]) -> Value {
        let mut acc = self.f(ty, *coeffs.last().expect("coefficients"));
        for &c in coeffs.iter().rev().skip(1) {
            let m = self.mul(acc, x);
            let cc = self.f(ty, c);
            acc = self.add(m, cc);
        }
        acc
    }

    /// e^x: Cody-Waite reduction by ln 2 and a degree-6 polynomial (Cephes expf scheme).
    pub fn exp(&mut self, ty: Type, x: Value) -> Value {
        let (ity, _) = int_ty(ty);
        let hi = self.f(ty, 88.72283);
        let lo = self.f(ty, -87.33654);
        let xc = self.b.ins().fmin(x, hi);
        let xc = self.b.ins().fmax(xc, lo);
        let log2e = self.f(ty, std::f32::consts::LOG2_E);
        let t = self.mul(xc, log2e);
        let n = self.b.ins().nearest(t);
        let c1 = self.f(ty, 0.693_359_4);
        let c2 = self.f(ty, -2.121_944_4e-4);
        let a = self.mul(n, c1);
        let r = self.sub(xc, a);
        let bb = self.mul(n, c2);
        let r = self.sub(r, bb);
        let p = self.poly(
            ty,
            r,
            &[
                5.000_000_1e-1,
                1.666_666_5e-1,
                4.166_579_6e-2,
                8.333_452e-3,
                1.398_2e-3,
                1.987_569_1e-4,
            ],
        );
        let r2 = self.mul(r, r);
        let p = self.mul(p, r2);
        let p = self.add(p, r);
        let one = self.f(ty, 1.0);
        let p = self.add(p, one);
        // 2^n from the exponent bits, as 2^(n-1) * 2 so n = 128 still fits the field.
        let ni = self.b.ins().fcvt_to_sint_sat(ity, n);
        let bias = self.int_splat(ity, 126);
        let e = self.b.ins().iadd(ni, bias);
        let e = self.b.ins().ishl_imm_u(e, 23);
        let scale = self.bits(ty, e);
        let y = self.mul(p, scale);
        let two = self.f(ty, 2.0);
        let y = self.mul(y, two);
        // Past the clamp the true result is +inf (or a value below the smallest normal).
        let over = self.f(ty, 88.72283);
        let inf = self.f(ty, f32::INFINITY);
        let big = self.gt(x, over);
        let y = self.sel(ty, big, inf, y);
        let uno = self.b.ins().fcmp(FloatCC::Unordered, x, x);
        self.sel(ty, uno, x, y)
    }

    /// Natural log (Cephes logf scheme): x = m * 2^e with m in [sqrt(1/2), sqrt(2)).
    pub fn log(&mut self, ty: Type, x: Value) -> Value {
        let (ity, _) = int_ty(ty);
        let bits = self.bits(ity, x);
        let e = self.b.ins().sshr_imm_u(bits, 23);
        let mask = self.int_splat(ity, 0x807f_ffffu32 as i32);
        let m = self.b.ins().band(bits, mask);
        let half_exp = self.int_splat(ity, 0x3f00_0000);
        let m = self.b.ins().bor(m, half_exp);
        let mut mf = self.bits(ty, m); // in [0.5, 1)
        let bias = self.int_splat(ity, -126);
        let e = self.b.ins().iadd(e, bias);
        let mut ef = self.b.ins().fcvt_from_sint(ty, e);
        let s = self.f(ty, std::f32::consts::FRAC_1_SQRT_2);
        let small = self.lt(mf, s);
        let one = self.f(ty, 1.0);
        let ef_m1 = self.sub(ef, one);
        ef = self.sel(ty, small, ef_m1, ef);
        let m2 = self.add(mf, mf);
        mf = self.sel(ty, small, m2, mf);
        let z = self.sub(mf, one);
        let zz = self.mul(z, z);
        let p = self.poly(
            ty,
            z,
            &[
                3.333_331_2e-1,
                -2.499_999_4e-1,
                2.000_071_5e-1,
                -1.666_805_7e-1,
                1.424_932_3e-1,
                -1.241_401_4e-1,
                1.167_699_9e-1,
                -1.151_461e-1,
                7.037_683_6e-2,
            ],
        );
        let p = self.mul(p, z);
        let p = self.mul(p, zz);
        let q1 = self.f(ty, -2.121_944_4e-4);
        let t = self.mul(ef, q1);
        let y = self.add(p, t);
        let hz = self.f(ty, 0.5);
        let h = self.mul(zz, hz);
        let y = self.sub(y, h);
        let y = self.add(z, y);
        let q2 = self.f(ty, 0.693_359_4);
        let t2 = self.mul(ef, q2);
        let y = self.add(y, t2);
        // Special inputs: 0 -> -inf, negative or NaN -> NaN, +inf -> +inf.
        let zero = self.f(ty, 0.0);
        let ninf = self.f(ty, f32::NEG_INFINITY);
        let nan = self.f(ty, f32::NAN);
        let inf = self.f(ty, f32::INFINITY);
        let is0 = self.b.ins().fcmp(FloatCC::Equal, x, zero);
        let y = self.sel(ty, is0, ninf, y);
        let neg = self.b.ins().fcmp(FloatCC::UnorderedOrLessThan, x, zero);
        let y = self.sel(ty, neg, nan, y);
        let isinf = self.b.ins().fcmp(FloatCC::Equal, x, inf);
        self.sel(ty, isinf, inf, y)
    }

    fn int_splat(&mut self, ity: Type, v: i32) -> Value {
        let c = self.b.ins().iconst(I32, v as i64);
        if ity == I32 { c } else { self.b.ins().splat(ity, c) }
    }

    /// 1 / (1 + e^-x), written so neither branch overflows.
    pub fn sigmoid(&mut self, ty: Type, x: Value) -> Value {
        let a = self.b.ins().fabs(x);
        let na = self.b.ins().fneg(a);
        let e = self.exp(ty, na);
        let one = self.f(ty, 1.0);
        let d = self.add(one, e);
        let pos = self.div(one, d);
        let neg = self.div(e, d);
        let zero = self.f(ty, 0.0);
        let ge = self.b.ins().fcmp(FloatCC::GreaterThanOrEqual, x, zero);
        let y = self.sel(ty, ge, pos, neg);
        let uno = self.b.ins().fcmp(FloatCC::Unordered, x, x);
        self.sel(ty, uno, x, y)
    }

    /// tanh: odd polynomial near 0 (Cephes tanhf), 1 - 2/(e^2|x| + 1) elsewhere.
    pub fn tanh(&mut self, ty: Type, x: Value) -> Value {
        let a = self.b.ins().fabs(x);
        let z = self.mul(x, x);
        let p = self.poly(
            ty,
            z,
            &[
                -3.333_328_2e-1,
                1.333_144_2e-1,
                -5.373_971_6e-2,
                2.063_908_9e-2,
                -5.704_988_7e-3,
            ],
        );
        let p = self.mul(p, z);
        let p = self.mul(p, x);
        let small = self.add(p, x);
        let two_a = self.add(a, a);
        let e = self.exp(ty, two_a);
        let one = self.f(ty, 1.0);
        let two = self.f(ty, 2.0);
        let d = self.add(e, one);
        let q = self.div(two, d);
        let big = self.sub(one, q);
        let big = self.copysign(ty, big, x);
        let lim = self.f(ty, 0.625);
        let is_small = self.lt(a, lim);
        self.sel(ty, is_small, small, big)
    }

    /// erf via erfc(x) = t e^(-x^2 + P(t)), t = 1/(1 + |x|/2) (Numerical Recipes' erfcc).
    pub fn erf(&mut self, ty: Type, x: Value) -> Value {
        let a = self.b.ins().fabs(x);
        let one = self.f(ty, 1.0);
        let half = self.f(ty, 0.5);
        let t = self.mul(a, half);
        let t = self.add(one, t);
        let t = self.div(one, t);
        let p = self.poly(
            ty,
            t,
            &[
                -1.265_512_2,
                1.000_023_7,
                0.374_091_96,
                0.096_784_18,
                -0.186_288_06,
                0.278_868_07,
                -1.135_203_98,
                1.488_515_87,
                -0.822_152_23,
                0.170_872_77,
            ],
        );
        let aa = self.mul(a, a);
        let arg = self.sub(p, aa);
        let e = self.exp(ty, arg);
        let erfc = self.mul(t, e);
        let y = self.sub(one, erfc);
        self.copysign(ty, y, x)
    }
}

/// The integer type with the lane shape of a float type.
pub(crate) fn int_ty(ty: Type) -> (Type, u8) {
    if ty == F32 { (I32, 1) } else { (I32X4, 4) }
}

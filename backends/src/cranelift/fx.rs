//! A thin layer over Cranelift's `FunctionBuilder` for kernel code: counted loops, element
//! addressing, lane-generic float helpers (the same call works on `f32` and `f32x4`), and
//! Kiln's own approximations of exp/log/tanh/erf so emitted objects need no libm.
//!
//! Approximation bounds, measured by `tests/approx.rs` against f64 on 100,001-point sweeps
//! (and enforced there): exp ≤ 1 ulp on [-87, 88]; log ≤ 3 ulp (2.14 measured, worst near
//! √½) for normal inputs; tanh and sigmoid ≤ 1e-7 absolute; erf ≤ 1.5e-7 absolute; sin and
//! cos ≤ 1e-7 absolute on [-100, 100]; atan and asin ≤ 2e-7 absolute.

// Polynomial coefficients are kept as published, digit for digit.
#![allow(clippy::excessive_precision)]

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32, F64, I32, I32X4, I64};
use cranelift_codegen::ir::{FuncRef, Function, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;

pub(crate) struct Fx<'a, 'b> {
    pub b: &'a mut FunctionBuilder<'b>,
    /// The target has 128-bit vectors (x86-64, AArch64); riscv64 code stays scalar.
    pub simd: bool,
    /// Where hand-encoded machine code the kernel calls is defined: only for targets with
    /// AVX2 and FMA (`Target::wide`), which is all that code assumes.
    pub code: Option<&'a mut dyn CodeSink>,
}

/// Defines machine code (once per distinct byte string) and makes it callable from the
/// function being built, with the System V convention and `params` 64-bit arguments.
pub(crate) trait CodeSink {
    fn func(&mut self, code: &[u8], params: usize, func: &mut Function) -> FuncRef;
}

impl<'a, 'b> Fx<'a, 'b> {
    pub fn new(b: &'a mut FunctionBuilder<'b>, simd: bool) -> Self {
        Fx { b, simd, code: None }
    }

    /// Calls machine code `code` with `args` (64-bit integers), if this kernel may.
    pub fn call_code(&mut self, code: &[u8], args: &[Value]) -> bool {
        let Some(sink) = self.code.as_mut() else { return false };
        let f = sink.func(code, args.len(), self.b.func);
        self.b.ins().call(f, args);
        true
    }

    pub fn i(&mut self, v: i64) -> Value {
        self.b.ins().iconst(I64, v)
    }

    /// A float constant of type `ty` (`f32` or splatted `f32x4`).
    pub fn f(&mut self, ty: Type, v: f32) -> Value {
        let s = self.b.ins().f32const(v);
        if ty == F32 { s } else { self.b.ins().splat(ty, s) }
    }

    /// `v` (a scalar of type `ty`) computed here and only here. Cranelift places pure
    /// instructions at their uses, which for a value computed once per call from a loop's
    /// result (a run-time scale) can mean recomputing the whole chain inside a later loop
    /// nest; a round trip through a stack slot with a fence between (so the load is not
    /// forwarded from the store) pins it, at the cost of one fence per call.
    pub fn anchor(&mut self, ty: Type, v: Value) -> Value {
        use cranelift_codegen::ir::{StackSlotData, StackSlotKind};
        let slot = self
            .b
            .create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, 8, 3));
        self.b.ins().stack_store(I64, v, slot, 0);
        self.b.ins().fence();
        self.b.ins().stack_load(I64, ty, slot, 0)
    }

    pub fn splat(&mut self, ty: Type, s: Value) -> Value {
        if ty == F32 { s } else { self.b.ins().splat(ty, s) }
    }

    pub fn load(&mut self, ty: Type, addr: Value) -> Value {
        self.b.ins().load(ty, MemFlagsData::new().with_notrap(), addr, 0)
    }

    /// A load from memory the current function never writes (weights, a kernel's inputs):
    /// pure to Cranelift, so it is placed next to its use and can fold into it (x86-64
    /// `vbroadcastss` or a memory operand) instead of holding a register.
    pub fn load_ro(&mut self, ty: Type, addr: Value) -> Value {
        let flags = MemFlagsData::new().with_notrap().with_readonly().with_can_move();
        self.b.ins().load(ty, flags, addr, 0)
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
        // 2^n from the exponent bits; n = 128 (x near the top) is built as 2^127 * 2.
        let ni = self.b.ins().fcvt_to_sint_sat(ity, n);
        let top = self.f(ty, 128.0);
        let is_top = self.b.ins().fcmp(FloatCC::GreaterThanOrEqual, n, top);
        let bias = self.int_splat(ity, 127);
        let e = self.b.ins().iadd(ni, bias);
        let one_i = self.int_splat(ity, 1);
        let e_top = self.b.ins().isub(e, one_i);
        let is_top_i = if ty == F32 { is_top } else { self.bits(ity, is_top) };
        let e = if ty == F32 {
            self.b.ins().select(is_top_i, e_top, e)
        } else {
            self.b.ins().bitselect(is_top_i, e_top, e)
        };
        let e = self.b.ins().ishl_imm_u(e, 23);
        let scale = self.bits(ty, e);
        let y = self.mul(p, scale);
        let two = self.f(ty, 2.0);
        let y2 = self.mul(y, two);
        let y = self.sel(ty, is_top, y2, y);
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
        let big = self.copysign(ty, y, x);
        // |x| < 0.5: Maclaurin series (1 - erfc would cancel there).
        let z = self.mul(x, x);
        let p = self.poly(
            ty,
            z,
            &[1.0, -1.0 / 3.0, 1.0 / 10.0, -1.0 / 42.0, 1.0 / 216.0, -1.0 / 1320.0],
        );
        let k = self.f(ty, std::f32::consts::FRAC_2_SQRT_PI);
        let p = self.mul(p, x);
        let small = self.mul(p, k);
        let is_small = self.lt(a, half);
        self.sel(ty, is_small, small, big)
    }
}

impl Fx<'_, '_> {
    fn c64(&mut self, v: f64) -> Value {
        self.b.ins().f64const(v)
    }

    fn poly64(&mut self, x: Value, coeffs: &[f64]) -> Value {
        let mut acc = self.c64(coeffs[0]);
        for &c in &coeffs[1..] {
            let m = self.b.ins().fmul(acc, x);
            let cc = self.c64(c);
            acc = self.b.ins().fadd(m, cc);
        }
        acc
    }

    /// e^x in f64 (Cephes exp: Padé approximation after reduction by ln 2).
    pub fn exp64(&mut self, x: Value) -> Value {
        let hi = self.c64(709.782712893384);
        let lo = self.c64(-708.3964185322641);
        let xc = self.b.ins().fmin(x, hi);
        let xc = self.b.ins().fmax(xc, lo);
        let l2e = self.c64(std::f64::consts::LOG2_E);
        let t = self.b.ins().fmul(xc, l2e);
        let n = self.b.ins().nearest(t);
        let c1 = self.c64(6.931_457_519_531_25E-1);
        let c2 = self.c64(1.428_606_820_309_417_2E-6);
        let a = self.b.ins().fmul(n, c1);
        let r = self.b.ins().fsub(xc, a);
        let bb = self.b.ins().fmul(n, c2);
        let r = self.b.ins().fsub(r, bb);
        let rr = self.b.ins().fmul(r, r);
        let p = self.poly64(
            rr,
            &[
                1.261_771_930_748_105_9E-4,
                3.029_944_077_074_419_6E-2,
                9.999_999_999_999_999_9E-1,
            ],
        );
        let px = self.b.ins().fmul(r, p);
        let q = self.poly64(
            rr,
            &[
                3.001_985_051_386_644_6E-6,
                2.524_483_403_496_841E-3,
                2.272_655_482_081_550_3E-1,
                2.0,
            ],
        );
        let d = self.b.ins().fsub(q, px);
        let f = self.b.ins().fdiv(px, d);
        let two = self.c64(2.0);
        let f = self.b.ins().fmul(two, f);
        let one = self.c64(1.0);
        let f = self.b.ins().fadd(one, f);
        // times 2^n, as 2^(n-1) * 2 so n = 1024 fits
        let ni = self.b.ins().fcvt_to_sint_sat(I64, n);
        let e = self.b.ins().iadd_imm_s(ni, 1022);
        let e = self.b.ins().ishl_imm_u(e, 52);
        let scale = self.bits(F64, e);
        let y = self.b.ins().fmul(f, scale);
        let y = self.b.ins().fmul(y, two);
        let inf = self.c64(f64::INFINITY);
        let over = self.b.ins().fcmp(FloatCC::GreaterThan, x, hi);
        let y = self.b.ins().select(over, inf, y);
        let zero = self.c64(0.0);
        let under = self.b.ins().fcmp(FloatCC::LessThan, x, lo);
        let y = self.b.ins().select(under, zero, y);
        let uno = self.b.ins().fcmp(FloatCC::Unordered, x, x);
        self.b.ins().select(uno, x, y)
    }

    /// Natural log in f64 (Cephes log: rational approximation of log(1+z)).
    pub fn log64(&mut self, x: Value) -> Value {
        let bits = self.bits(I64, x);
        let e = self.b.ins().sshr_imm_u(bits, 52);
        let mask = self.b.ins().iconst(I64, 0x800f_ffff_ffff_ffffu64 as i64);
        let m = self.b.ins().band(bits, mask);
        let half = self.b.ins().iconst(I64, 0x3fe0_0000_0000_0000);
        let m = self.b.ins().bor(m, half);
        let mut mf = self.bits(F64, m); // [0.5, 1)
        let e = self.b.ins().iadd_imm_s(e, -1022);
        let mut ef = self.b.ins().fcvt_from_sint(F64, e);
        let sq = self.c64(std::f64::consts::FRAC_1_SQRT_2);
        let small = self.b.ins().fcmp(FloatCC::LessThan, mf, sq);
        let one = self.c64(1.0);
        let ef1 = self.b.ins().fsub(ef, one);
        ef = self.b.ins().select(small, ef1, ef);
        let m2 = self.b.ins().fadd(mf, mf);
        mf = self.b.ins().select(small, m2, mf);
        let z = self.b.ins().fsub(mf, one);
        let zz = self.b.ins().fmul(z, z);
        let p = self.poly64(
            z,
            &[
                1.018_756_638_045_809_3E-4,
                4.974_949_949_767_47E-1,
                4.705_791_198_788_817E0,
                1.449_892_253_416_109_3E1,
                1.793_686_785_078_198_2E1,
                7.708_387_337_558_854E0,
            ],
        );
        let q = self.poly64(
            z,
            &[
                1.0,
                1.128_735_871_891_674_5E1,
                4.522_791_458_375_322E1,
                8.298_752_669_127_766E1,
                7.115_447_506_185_639E1,
                2.312_516_201_267_653_4E1,
            ],
        );
        let r = self.b.ins().fdiv(p, q);
        let y = self.b.ins().fmul(zz, r);
        let y = self.b.ins().fmul(z, y);
        let k1 = self.c64(2.121_944_400_546_905_8E-4);
        let t = self.b.ins().fmul(ef, k1);
        let y = self.b.ins().fsub(y, t);
        let h = self.c64(0.5);
        let hz = self.b.ins().fmul(zz, h);
        let y = self.b.ins().fsub(y, hz);
        let y = self.b.ins().fadd(z, y);
        let k2 = self.c64(0.693_359_375);
        let t2 = self.b.ins().fmul(ef, k2);
        let y = self.b.ins().fadd(y, t2);
        let zero = self.c64(0.0);
        let is0 = self.b.ins().fcmp(FloatCC::Equal, x, zero);
        let ninf = self.c64(f64::NEG_INFINITY);
        let y = self.b.ins().select(is0, ninf, y);
        let neg = self.b.ins().fcmp(FloatCC::UnorderedOrLessThan, x, zero);
        let nan = self.c64(f64::NAN);
        let y = self.b.ins().select(neg, nan, y);
        let inf = self.c64(f64::INFINITY);
        let isinf = self.b.ins().fcmp(FloatCC::Equal, x, inf);
        self.b.ins().select(isinf, inf, y)
    }

    /// IEEE half (bits in the low 16 of an i64) to f32.
    pub fn f16_to_f32(&mut self, h: Value) -> Value {
        let sign = self.b.ins().ushr_imm_u(h, 15);
        let sign = self.b.ins().ishl_imm_u(sign, 31);
        let exp = self.b.ins().ushr_imm_u(h, 10);
        let exp = self.b.ins().band_imm_u(exp, 31);
        let mant = self.b.ins().band_imm_u(h, 1023);
        // normal: rebias the exponent
        let e32 = self.b.ins().iadd_imm_s(exp, 112);
        let e32 = self.b.ins().ishl_imm_u(e32, 23);
        let m32 = self.b.ins().ishl_imm_u(mant, 13);
        let normal = self.b.ins().bor(e32, m32);
        // inf / NaN
        let special = self.b.ins().bor_imm_u(m32, 0x7f80_0000);
        let is_special = self.b.ins().icmp_imm_s(IntCC::Equal, exp, 31);
        let bits = self.b.ins().select(is_special, special, normal);
        let bits = self.b.ins().bor(bits, sign);
        let bits = self.b.ins().ireduce(I32, bits);
        let nf = self.bits(F32, bits);
        // zero / subnormal: mant * 2^-24
        let mf = self.b.ins().fcvt_from_sint(F32, mant);
        let k = self.f(F32, 1.0 / 16_777_216.0);
        let sub = self.mul(mf, k);
        let sb = self.bits(I32, sub);
        let sign32 = self.b.ins().ireduce(I32, sign);
        let sb = self.b.ins().bor(sb, sign32);
        let sub = self.bits(F32, sb);
        let is_sub = self.b.ins().icmp_imm_s(IntCC::Equal, exp, 0);
        self.b.ins().select(is_sub, sub, nf)
    }

    /// Halfword products of two i16x8 summed in adjacent pairs into i32x4 lanes, exactly:
    /// the shape Cranelift lowers to one `pmaddwd` on x86-64.
    pub fn madd_i16(&mut self, x: Value, y: Value) -> Value {
        let (xl, yl) = (self.b.ins().swiden_low(x), self.b.ins().swiden_low(y));
        let lo = self.b.ins().imul(xl, yl);
        let (xh, yh) = (self.b.ins().swiden_high(x), self.b.ins().swiden_high(y));
        let hi = self.b.ins().imul(xh, yh);
        self.b.ins().iadd_pairwise(lo, hi)
    }

    /// Four binary16 values at `addr` widened to an f32x4, exactly (the vector form of
    /// [`Fx::f16_to_f32`]).
    pub fn load_f16x4(&mut self, addr: Value) -> Value {
        use cranelift_codegen::ir::types::{F32X4, I32X4};
        let h = self.b.ins().uload16x4(MemFlagsData::new().with_notrap(), addr, 0);
        let splat = |fx: &mut Self, v: i32| fx.int_splat(I32X4, v);
        // |h| moved to f32's exponent and mantissa positions, then the exponent rebiased by
        // integer adds (twice for infinities and NaNs, whose exponent must end all ones);
        // zeros and subnormals get the smallest normal exponent and lose its implicit one
        // by an exact subtraction of 2^-14, so no float operation sees a subnormal (which
        // would cost a microcode assist per instruction on x86).
        let c7fff = splat(self, 0x7fff);
        let mag = self.b.ins().band(h, c7fff);
        let o = self.b.ins().ishl_imm_u(mag, 13);
        let emask = splat(self, 0x0f80_0000);
        let e = self.b.ins().band(o, emask);
        let rebias = splat(self, 0x3800_0000);
        let o = self.b.ins().iadd(o, rebias);
        let special = self.b.ins().icmp(IntCC::Equal, e, emask);
        let extra = self.b.ins().band(special, rebias);
        let o = self.b.ins().iadd(o, extra);
        let one = splat(self, 0x0080_0000);
        let low = self.b.ins().iadd(o, one);
        let low = self.bits(F32X4, low);
        let magic = self.f(F32X4, f32::from_bits(0x3880_0000)); // 2^-14
        let low = self.b.ins().fsub(low, magic);
        let low = self.bits(I32X4, low);
        let zero = splat(self, 0);
        let tiny = self.b.ins().icmp(IntCC::Equal, e, zero);
        let bits = self.b.ins().bitselect(tiny, low, o);
        let sign = self.b.ins().bxor(h, mag);
        let sign = self.b.ins().ishl_imm_u(sign, 16);
        let out = self.b.ins().bor(bits, sign);
        self.bits(F32X4, out)
    }

    /// f64 to f32 rounding to odd (truncate, then set the last bit if anything was lost):
    /// a later rounding to binary16 is then the single correct rounding from f64, since
    /// f32 carries more than two bits beyond binary16's eleven.
    pub fn f64_to_f32_odd(&mut self, d: Value) -> Value {
        let r = self.b.ins().fdemote(F32, d);
        let back = self.b.ins().fpromote(F64, r);
        let inexact = self.b.ins().fcmp(FloatCC::OrderedNotEqual, back, d);
        let (ab, ad) = (self.b.ins().fabs(back), self.b.ins().fabs(d));
        let above = self.b.ins().fcmp(FloatCC::GreaterThan, ab, ad);
        let bits = self.bits(I32, r);
        let down = self.b.ins().uextend(I32, above);
        let bits = self.b.ins().isub(bits, down);
        let odd = self.b.ins().uextend(I32, inexact);
        let bits = self.b.ins().bor(bits, odd);
        self.b
            .ins()
            .bitcast(F32, cranelift_codegen::ir::MemFlagsData::new(), bits)
    }

    /// f32 to IEEE half bits (round to nearest even), in the low 16 of an i64.
    pub fn f32_to_f16(&mut self, x: Value) -> Value {
        let b = self.bits(I32, x);
        let b = self.b.ins().uextend(I64, b);
        let sign = self.b.ins().ushr_imm_u(b, 16);
        let sign = self.b.ins().band_imm_u(sign, 0x8000);
        let a = self.b.ins().band_imm_u(b, 0x7fff_ffff);
        // normal range: rebias and round on bit 13
        let r = self.b.ins().iadd_imm_s(a, -0x3800_0000);
        let lsb = self.b.ins().ushr_imm_u(r, 13);
        let lsb = self.b.ins().band_imm_u(lsb, 1);
        let r = self.b.ins().iadd_imm_s(r, 0xfff);
        let r = self.b.ins().iadd(r, lsb);
        let normal = self.b.ins().ushr_imm_u(r, 13);
        // subnormal range: round(|x| * 2^24)
        let ax = self.b.ins().fabs(x);
        let k = self.f(F32, 16_777_216.0);
        let sc = self.mul(ax, k);
        let sc = self.b.ins().nearest(sc);
        let sub = self.b.ins().fcvt_to_sint_sat(I64, sc);
        let is_sub = self.b.ins().icmp_imm_u(IntCC::UnsignedLessThan, a, 0x3880_0000);
        let v = self.b.ins().select(is_sub, sub, normal);
        // overflow -> inf; NaN -> quiet NaN
        let inf = self.i(0x7c00);
        let big = self
            .b
            .ins()
            .icmp_imm_u(IntCC::UnsignedGreaterThanOrEqual, a, 0x477f_f000);
        let v = self.b.ins().select(big, inf, v);
        let nan = self.i(0x7e00);
        let is_nan = self.b.ins().icmp_imm_u(IntCC::UnsignedGreaterThan, a, 0x7f80_0000);
        let v = self.b.ins().select(is_nan, nan, v);
        self.b.ins().bor(v, sign)
    }
}

/// Trigonometric and hyperbolic functions for `f32`/`f32x4` lanes (Cephes single-precision
/// schemes: reduction by pi/4 for sin/cos, rational steps for the inverses).
impl Fx<'_, '_> {
    fn abs(&mut self, x: Value) -> Value {
        self.b.ins().fabs(x)
    }

    /// log(1 + u), accurate for small u: u * log(1+u) / ((1+u) - 1).
    pub fn log1p(&mut self, ty: Type, u: Value) -> Value {
        let one = self.f(ty, 1.0);
        let w = self.add(one, u);
        let l = self.log(ty, w);
        let d = self.sub(w, one);
        let q = self.div(l, d);
        let r = self.mul(u, q);
        let zero = self.f(ty, 0.0);
        let tiny = self.b.ins().fcmp(FloatCC::Equal, d, zero);
        self.sel(ty, tiny, u, r)
    }

    /// (sin x, cos x).
    pub fn sincos(&mut self, ty: Type, x: Value) -> (Value, Value) {
        let (ity, _) = int_ty(ty);
        let a = self.abs(x);
        let fopi = self.f(ty, 4.0 / std::f32::consts::PI);
        let t = self.mul(a, fopi);
        let j = self.b.ins().fcvt_to_sint_sat(ity, t);
        let one_i = self.int_splat(ity, 1);
        let odd = self.b.ins().band(j, one_i);
        let j = self.b.ins().iadd(j, odd);
        let y = self.b.ins().fcvt_from_sint(ty, j);
        let seven = self.int_splat(ity, 7);
        let j = self.b.ins().band(j, seven);
        let (d1, d2, d3) = (
            self.f(ty, 0.785_156_25),
            self.f(ty, 2.418_756_5e-4),
            self.f(ty, 3.774_895e-8),
        );
        let z = self.mul(y, d1);
        let z = self.sub(a, z);
        let t2 = self.mul(y, d2);
        let z = self.sub(z, t2);
        let t3 = self.mul(y, d3);
        let z = self.sub(z, t3);
        let zz = self.mul(z, z);
        let sp = self.poly(ty, zz, &[-1.666_665_5e-1, 8.332_161e-3, -1.951_529_6e-4]);
        let sp = self.mul(sp, zz);
        let sp = self.mul(sp, z);
        let sinp = self.add(sp, z);
        let cp = self.poly(ty, zz, &[4.166_664_6e-2, -1.388_731_6e-3, 2.443_315_7e-5]);
        let cp = self.mul(cp, zz);
        let cp = self.mul(cp, zz);
        let half = self.f(ty, 0.5);
        let hz = self.mul(half, zz);
        let cp = self.sub(cp, hz);
        let one = self.f(ty, 1.0);
        let cosp = self.add(cp, one);
        // Octant logic: j in {0,2,4,6}; j = 2 or 6 swaps; sin negates for j >= 4, cos for j = 2, 4.
        let two = self.int_splat(ity, 2);
        let four = self.int_splat(ity, 4);
        let swap = self.b.ins().band(j, two);
        let iz = self.int_splat(ity, 0);
        let swap = self.b.ins().icmp(IntCC::NotEqual, swap, iz);
        let s = self.sel(ty, swap, cosp, sinp);
        let c = self.sel(ty, swap, sinp, cosp);
        let sneg = self.b.ins().band(j, four);
        let iz = self.int_splat(ity, 0);
        let sneg = self.b.ins().icmp(IntCC::NotEqual, sneg, iz);
        let ns = self.b.ins().fneg(s);
        let s = self.sel(ty, sneg, ns, s);
        let jm = self.b.ins().iadd(j, two);
        let cneg = self.b.ins().band(jm, four);
        let iz = self.int_splat(ity, 0);
        let cneg = self.b.ins().icmp(IntCC::NotEqual, cneg, iz);
        let nc = self.b.ins().fneg(c);
        let c = self.sel(ty, cneg, nc, c);
        // sin is odd
        let s = self.copysign_xor(ty, s, x);
        (s, c)
    }

    /// `v` with its sign flipped when `sign` is negative.
    fn copysign_xor(&mut self, ty: Type, v: Value, sign: Value) -> Value {
        let (ity, _) = int_ty(ty);
        let vb = self.bits(ity, v);
        let sb = self.bits(ity, sign);
        let m = self.int_splat(ity, i32::MIN);
        let sb = self.b.ins().band(sb, m);
        let r = self.b.ins().bxor(vb, sb);
        self.bits(ty, r)
    }

    /// asin for |x| <= 1 (Cephes asinf).
    pub fn asin(&mut self, ty: Type, x: Value) -> Value {
        let a = self.abs(x);
        let half = self.f(ty, 0.5);
        let one = self.f(ty, 1.0);
        let big = self.gt(a, half);
        let om = self.sub(one, a);
        let zb = self.mul(half, om);
        let xb = self.b.ins().sqrt(zb);
        let zs = self.mul(a, a);
        let z = self.sel(ty, big, zb, zs);
        let xx = self.sel(ty, big, xb, a);
        let p = self.poly(
            ty,
            z,
            &[
                1.666_675_2e-1,
                7.495_300_3e-2,
                4.547_002_6e-2,
                2.418_131_1e-2,
                4.216_32e-2,
            ],
        );
        let p = self.mul(p, z);
        let p = self.mul(p, xx);
        let r = self.add(p, xx);
        let r2 = self.add(r, r);
        let pio2 = self.f(ty, std::f32::consts::FRAC_PI_2);
        let rb = self.sub(pio2, r2);
        let r = self.sel(ty, big, rb, r);
        self.copysign(ty, r, x)
    }

    pub fn acos(&mut self, ty: Type, x: Value) -> Value {
        let pio2 = self.f(ty, std::f32::consts::FRAC_PI_2);
        let s = self.asin(ty, x);
        let mid = self.sub(pio2, s);
        // Near ±1 use 2 asin(sqrt((1 ∓ x)/2)) for accuracy.
        let half = self.f(ty, 0.5);
        let one = self.f(ty, 1.0);
        let om = self.sub(one, x);
        let hm = self.mul(half, om);
        let sm = self.b.ins().sqrt(hm);
        let am = self.asin(ty, sm);
        let hi = self.add(am, am);
        let op = self.add(one, x);
        let hp = self.mul(half, op);
        let sp = self.b.ins().sqrt(hp);
        let ap = self.asin(ty, sp);
        let two_ap = self.add(ap, ap);
        let pi = self.f(ty, std::f32::consts::PI);
        let lo = self.sub(pi, two_ap);
        let nh = self.f(ty, -0.5);
        let is_hi = self.gt(x, half);
        let is_lo = self.lt(x, nh);
        let r = self.sel(ty, is_hi, hi, mid);
        self.sel(ty, is_lo, lo, r)
    }

    pub fn atan(&mut self, ty: Type, x: Value) -> Value {
        let a = self.abs(x);
        let t3p8 = self.f(ty, 2.414_213_5);
        let tp8 = self.f(ty, 0.414_213_57);
        let one = self.f(ty, 1.0);
        let big = self.gt(a, t3p8);
        let mid = self.gt(a, tp8);
        let inv = self.div(one, a);
        let xb = self.b.ins().fneg(inv);
        let num = self.sub(a, one);
        let den = self.add(a, one);
        let xm = self.div(num, den);
        let xx = self.sel(ty, mid, xm, a);
        let xx = self.sel(ty, big, xb, xx);
        let zero = self.f(ty, 0.0);
        let pio4 = self.f(ty, std::f32::consts::FRAC_PI_4);
        let pio2 = self.f(ty, std::f32::consts::FRAC_PI_2);
        let y0 = self.sel(ty, mid, pio4, zero);
        let y0 = self.sel(ty, big, pio2, y0);
        let z = self.mul(xx, xx);
        let p = self.poly(ty, z, &[-3.333_295e-1, 1.997_771_1e-1, -1.387_768_6e-1, 8.053_744_5e-2]);
        let p = self.mul(p, z);
        let p = self.mul(p, xx);
        let p = self.add(p, xx);
        let r = self.add(y0, p);
        self.copysign(ty, r, x)
    }

    pub fn sinh(&mut self, ty: Type, x: Value) -> Value {
        let a = self.abs(x);
        let e = self.exp(ty, a);
        let one = self.f(ty, 1.0);
        let ie = self.div(one, e);
        let d = self.sub(e, ie);
        let half = self.f(ty, 0.5);
        let big = self.mul(d, half);
        // small |x|: x + x^3/6 + x^5/120 + x^7/5040
        let z = self.mul(a, a);
        let p = self.poly(ty, z, &[1.0 / 6.0, 1.0 / 120.0, 1.0 / 5040.0]);
        let p = self.mul(p, z);
        let p = self.mul(p, a);
        let small = self.add(p, a);
        let lim = self.f(ty, 0.5);
        let is_small = self.lt(a, lim);
        let r = self.sel(ty, is_small, small, big);
        self.copysign(ty, r, x)
    }

    pub fn cosh(&mut self, ty: Type, x: Value) -> Value {
        let a = self.abs(x);
        let e = self.exp(ty, a);
        let one = self.f(ty, 1.0);
        let ie = self.div(one, e);
        let s = self.add(e, ie);
        let half = self.f(ty, 0.5);
        self.mul(s, half)
    }

    pub fn asinh(&mut self, ty: Type, x: Value) -> Value {
        // asinh|x| = log1p(|x| + x^2 / (1 + sqrt(1 + x^2)))
        let a = self.abs(x);
        let one = self.f(ty, 1.0);
        let z = self.mul(a, a);
        let s = self.add(one, z);
        let s = self.b.ins().sqrt(s);
        let d = self.add(one, s);
        let q = self.div(z, d);
        let u = self.add(a, q);
        let r = self.log1p(ty, u);
        self.copysign(ty, r, x)
    }

    pub fn acosh(&mut self, ty: Type, x: Value) -> Value {
        // log1p((x - 1) + sqrt((x - 1)(x + 1)))
        let one = self.f(ty, 1.0);
        let m = self.sub(x, one);
        let p = self.add(x, one);
        let pr = self.mul(m, p);
        let s = self.b.ins().sqrt(pr);
        let u = self.add(m, s);
        self.log1p(ty, u)
    }

    pub fn atanh(&mut self, ty: Type, x: Value) -> Value {
        // 0.5 * log1p(2x / (1 - x))
        let one = self.f(ty, 1.0);
        let d = self.sub(one, x);
        let tx = self.add(x, x);
        let q = self.div(tx, d);
        let l = self.log1p(ty, q);
        let half = self.f(ty, 0.5);
        self.mul(half, l)
    }
}

/// The integer type with the lane shape of a float type.
pub(crate) fn int_ty(ty: Type) -> (Type, u8) {
    if ty == F32 { (I32, 1) } else { (I32X4, 4) }
}

//! Index-driven kernels: arg-reductions, Hardmax, Trilu, gathers and scatters with run-time
//! indices, CumSum and OneHot. Run-time indices are wrapped when negative and clamped into
//! range, so a bad index can never address memory outside the tensor.

use super::super::fx::Fx;
use super::typed::{load, mem, store};
use super::{Args, strides};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32, F64, I8, I64};
use cranelift_codegen::ir::{InstBuilder, Value};
use kiln_ir::op::ScatterReduction;
use kiln_ir::{Graph, NodeId, Scalar};

fn dims(s: &[usize]) -> Vec<i64> {
    s.iter().map(|&d| d as i64).collect()
}

fn sc(g: &Graph, v: kiln_ir::ValueId) -> Scalar {
    g.value(v).ty.dtype.scalar
}

/// Loads an index element and brings it into `0..n` (negative wraps, then clamps).
fn index(fx: &mut Fx, s: Scalar, addr: Value, n: i64) -> Value {
    let raw = load(fx, s, addr);
    let wrapped = fx.add_imm(raw, n);
    let neg = fx.b.ins().icmp_imm_s(IntCC::SignedLessThan, raw, 0);
    let v = fx.b.ins().select(neg, wrapped, raw);
    let zero = fx.i(0);
    let hi = fx.i((n - 1).max(0));
    let v = fx.b.ins().smax(v, zero);
    fx.b.ins().smin(v, hi)
}

/// A comparable working value: floats as f64, integers as i64.
fn key(fx: &mut Fx, s: Scalar, addr: Value) -> Value {
    let v = load(fx, s, addr);
    if s == Scalar::F32 {
        fx.b.ins().fpromote(F64, v)
    } else {
        v
    }
}

fn better(fx: &mut Fx, s: Scalar, v: Value, b: Value, max: bool, or_equal: bool) -> Value {
    if s.is_float() {
        let cc = match (max, or_equal) {
            (true, false) => FloatCC::GreaterThan,
            (true, true) => FloatCC::GreaterThanOrEqual,
            (false, false) => FloatCC::LessThan,
            (false, true) => FloatCC::LessThanOrEqual,
        };
        fx.b.ins().fcmp(cc, v, b)
    } else {
        let cc = match (max, or_equal) {
            (true, false) => IntCC::SignedGreaterThan,
            (true, true) => IntCC::SignedGreaterThanOrEqual,
            (false, false) => IntCC::SignedLessThan,
            (false, true) => IntCC::SignedLessThanOrEqual,
        };
        fx.b.ins().icmp(cc, v, b)
    }
}

/// Index of the best element along `axis` for every (outer, inner) position, as the
/// evaluator picks it (first best, or last with `last`).
fn best_index(fx: &mut Fx, s: Scalar, base: Value, len: i64, stride_bytes: i64, max: bool, last: bool) -> Value {
    let best = fx.b.declare_var(I64);
    let bv = fx.b.declare_var(if s.is_float() { F64 } else { I64 });
    let z = fx.i(0);
    fx.b.def_var(best, z);
    let first = key(fx, s, base);
    fx.b.def_var(bv, first);
    let one = fx.i(1);
    let end = fx.i(len);
    fx.for_range(one, end, &mut |fx, j| {
        let a = fx.addr(base, j, stride_bytes);
        let v = key(fx, s, a);
        let cur = fx.b.use_var(bv);
        let c = better(fx, s, v, cur, max, last);
        let cb = fx.b.use_var(best);
        let nb = fx.b.ins().select(c, j, cb);
        let nv = fx.b.ins().select(c, v, cur);
        fx.b.def_var(best, nb);
        fx.b.def_var(bv, nv);
    });
    fx.b.use_var(best)
}

pub(crate) fn arg(fx: &mut Fx, g: &Graph, n: NodeId, axis: usize, last: bool, max: bool, a: &Args) {
    let x = g.node(n).inputs[0];
    let (s, shape) = (sc(g, x), g.value(x).ty.shape.clone());
    let len = shape[axis] as i64;
    let inner: i64 = shape[axis + 1..].iter().product::<usize>() as i64;
    let outer: i64 = shape[..axis].iter().product::<usize>() as i64;
    let eb = s.size() as i64;
    fx.for_n(outer, &mut |fx, o| {
        fx.for_n(inner, &mut |fx, i| {
            let row = fx.mul_imm(o, len * inner);
            let row = fx.b.ins().iadd(row, i);
            let base = fx.addr(a.ins[0], row, eb);
            let b = best_index(fx, s, base, len, inner * eb, max, last);
            let oi = fx.mul_imm(o, inner);
            let oi = fx.b.ins().iadd(oi, i);
            let oa = fx.addr(a.outs[0], oi, 8);
            fx.store(b, oa);
        });
    });
}

pub(crate) fn hardmax(fx: &mut Fx, g: &Graph, n: NodeId, axis: usize, a: &Args) {
    let shape = g.value(g.node(n).inputs[0]).ty.shape.clone();
    let len = shape[axis] as i64;
    let inner: i64 = shape[axis + 1..].iter().product::<usize>() as i64;
    let outer: i64 = shape[..axis].iter().product::<usize>() as i64;
    fx.for_n(outer, &mut |fx, o| {
        fx.for_n(inner, &mut |fx, i| {
            let row = fx.mul_imm(o, len * inner);
            let row = fx.b.ins().iadd(row, i);
            let base = fx.addr(a.ins[0], row, 4);
            let best = best_index(fx, Scalar::F32, base, len, inner * 4, true, false);
            let obase = fx.addr(a.outs[0], row, 4);
            fx.for_n(len, &mut |fx, j| {
                let hit = fx.b.ins().icmp(IntCC::Equal, j, best);
                let (one, zero) = (fx.f(F32, 1.0), fx.f(F32, 0.0));
                let v = fx.b.ins().select(hit, one, zero);
                let oa = fx.addr(obase, j, inner * 4);
                fx.store(v, oa);
            });
        });
    });
}

pub(crate) fn trilu(fx: &mut Fx, g: &Graph, n: NodeId, upper: bool, k: i64, a: &Args) {
    let x = g.node(n).inputs[0];
    let (s, shape) = (sc(g, x), g.value(x).ty.shape.clone());
    let r = shape.len();
    let (rows, cols) = (shape[r - 2] as i64, shape[r - 1] as i64);
    let batch: i64 = shape[..r - 2].iter().product::<usize>() as i64;
    let (ty, _) = mem(s);
    let eb = s.size() as i64;
    fx.for_index(&[batch, rows, cols], &mut |fx, ix| {
        let off = fx.dot(ix, &[rows * cols, cols, 1]);
        let d = fx.b.ins().isub(ix[2], ix[1]);
        let keep = if upper {
            fx.b.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, d, k)
        } else {
            fx.b.ins().icmp_imm_s(IntCC::SignedLessThanOrEqual, d, k)
        };
        let sa = fx.addr(a.ins[0], off, eb);
        let v = fx.load(ty, sa);
        let z = if s.is_float() {
            if ty == F32 {
                fx.f(F32, 0.0)
            } else {
                fx.b.ins().f64const(0.0)
            }
        } else {
            fx.b.ins().iconst(ty, 0)
        };
        let v = fx.b.ins().select(keep, v, z);
        let da = fx.addr(a.outs[0], off, eb);
        fx.store(v, da);
    });
}

pub(crate) fn gather_elements(fx: &mut Fx, g: &Graph, n: NodeId, axis: usize, a: &Args) {
    let node = g.node(n);
    let (data, idx) = (node.inputs[0], node.inputs[1]);
    let ds = g.value(data).ty.shape.clone();
    let is = g.value(idx).ty.shape.clone();
    let (s, si) = (sc(g, data), sc(g, idx));
    let (ty, _) = mem(s);
    let (dst, ist) = (strides(&ds), strides(&is));
    let eb = s.size() as i64;
    fx.for_index(&dims(&is), &mut |fx, ix| {
        let ioff = fx.dot(ix, &ist);
        let ia = fx.addr(a.ins[1], ioff, si.size() as i64);
        let j = index(fx, si, ia, ds[axis] as i64);
        let mut src: Vec<Value> = ix.to_vec();
        src[axis] = j;
        let soff = fx.dot(&src, &dst);
        let sa = fx.addr(a.ins[0], soff, eb);
        let v = fx.load(ty, sa);
        let da = fx.addr(a.outs[0], ioff, eb);
        fx.store(v, da);
    });
}

fn copy_all(fx: &mut Fx, from: Value, to: Value, bytes: i64) {
    fx.for_ptrs(bytes, &[(from, 1), (to, 1)], &mut |fx, p| {
        let v = fx.load(I8, p[0]);
        fx.store(v, p[1]);
    });
}

/// Combines `new` into the element at `addr` by `red`, in the element's own type.
fn combine(fx: &mut Fx, s: Scalar, addr: Value, new: Value, red: ScatterReduction) {
    let v = match red {
        ScatterReduction::None => new,
        _ => {
            let old = load(fx, s, addr);
            match (red, s.is_float()) {
                (ScatterReduction::Add, true) => fx.b.ins().fadd(old, new),
                (ScatterReduction::Mul, true) => fx.b.ins().fmul(old, new),
                (ScatterReduction::Add, false) => fx.b.ins().iadd(old, new),
                (ScatterReduction::Mul, false) => fx.b.ins().imul(old, new),
                (max_or_min, _) => {
                    let c = better(fx, s, new, old, max_or_min == ScatterReduction::Max, false);
                    fx.b.ins().select(c, new, old)
                }
            }
        }
    };
    store(fx, s, v, addr);
}

pub(crate) fn scatter_elements(fx: &mut Fx, g: &Graph, n: NodeId, axis: usize, red: ScatterReduction, a: &Args) {
    let node = g.node(n);
    let (data, idx) = (node.inputs[0], node.inputs[1]);
    let ds = g.value(data).ty.shape.clone();
    let is = g.value(idx).ty.shape.clone();
    let (s, si) = (sc(g, data), sc(g, idx));
    let eb = s.size() as i64;
    copy_all(fx, a.ins[0], a.outs[0], g.value(data).ty.bytes() as i64);
    let (dst, ist) = (strides(&ds), strides(&is));
    fx.for_index(&dims(&is), &mut |fx, ix| {
        let ioff = fx.dot(ix, &ist);
        let ia = fx.addr(a.ins[1], ioff, si.size() as i64);
        let j = index(fx, si, ia, ds[axis] as i64);
        let mut t: Vec<Value> = ix.to_vec();
        t[axis] = j;
        let toff = fx.dot(&t, &dst);
        let ua = fx.addr(a.ins[2], ioff, eb);
        let u = load(fx, s, ua);
        let ta = fx.addr(a.outs[0], toff, eb);
        combine(fx, s, ta, u, red);
    });
}

pub(crate) fn scatter_nd(fx: &mut Fx, g: &Graph, n: NodeId, red: ScatterReduction, a: &Args) {
    let node = g.node(n);
    let (data, idx) = (node.inputs[0], node.inputs[1]);
    let ds = g.value(data).ty.shape.clone();
    let is = g.value(idx).ty.shape.clone();
    let (s, si) = (sc(g, data), sc(g, idx));
    let eb = s.size() as i64;
    copy_all(fx, a.ins[0], a.outs[0], g.value(data).ty.bytes() as i64);
    let last = *is.last().unwrap_or(&0);
    let tuples: i64 = is[..is.len() - 1].iter().product::<usize>() as i64;
    let per: i64 = ds[last..].iter().product::<usize>() as i64;
    let dst = strides(&ds);
    fx.for_n(tuples, &mut |fx, t| {
        let mut off = fx.i(0);
        for (j, &stride) in dst.iter().enumerate().take(last) {
            let e = fx.mul_imm(t, last as i64);
            let e = fx.add_imm(e, j as i64);
            let ia = fx.addr(a.ins[1], e, si.size() as i64);
            let v = index(fx, si, ia, ds[j] as i64);
            let v = fx.mul_imm(v, stride);
            off = fx.b.ins().iadd(off, v);
        }
        fx.for_n(per, &mut |fx, q| {
            let src = fx.mul_imm(t, per);
            let src = fx.b.ins().iadd(src, q);
            let ua = fx.addr(a.ins[2], src, eb);
            let u = load(fx, s, ua);
            let to = fx.b.ins().iadd(off, q);
            let ta = fx.addr(a.outs[0], to, eb);
            combine(fx, s, ta, u, red);
        });
    });
}

pub(crate) fn cumsum(fx: &mut Fx, g: &Graph, n: NodeId, axis: usize, exclusive: bool, reverse: bool, a: &Args) {
    let x = g.node(n).inputs[0];
    let (s, shape) = (sc(g, x), g.value(x).ty.shape.clone());
    let len = shape[axis] as i64;
    let inner: i64 = shape[axis + 1..].iter().product::<usize>() as i64;
    let outer: i64 = shape[..axis].iter().product::<usize>() as i64;
    let eb = s.size() as i64;
    // The evaluator sums in f64 (exact for integers below 2^53); so do we, except integers
    // which add exactly in i64.
    let acc_ty = if s.is_float() { F64 } else { I64 };
    fx.for_n(outer, &mut |fx, o| {
        fx.for_n(inner, &mut |fx, i| {
            let acc = fx.b.declare_var(acc_ty);
            let z = if s.is_float() {
                fx.b.ins().f64const(0.0)
            } else {
                fx.i(0)
            };
            fx.b.def_var(acc, z);
            fx.for_n(len, &mut |fx, step| {
                let j = if reverse {
                    let l = fx.i(len - 1);
                    fx.b.ins().isub(l, step)
                } else {
                    step
                };
                let e = fx.mul_imm(o, len);
                let e = fx.b.ins().iadd(e, j);
                let e = fx.mul_imm(e, inner);
                let e = fx.b.ins().iadd(e, i);
                let xa = fx.addr(a.ins[0], e, eb);
                let mut v = load(fx, s, xa);
                if s == Scalar::F32 {
                    v = fx.b.ins().fpromote(F64, v);
                }
                let cur = fx.b.use_var(acc);
                let next = if s.is_float() {
                    fx.b.ins().fadd(cur, v)
                } else {
                    fx.b.ins().iadd(cur, v)
                };
                let out = if exclusive { cur } else { next };
                let out = if s == Scalar::F32 {
                    fx.b.ins().fdemote(F32, out)
                } else {
                    out
                };
                let oa = fx.addr(a.outs[0], e, eb);
                store(fx, s, out, oa);
                fx.b.def_var(acc, next);
            });
        });
    });
}

/// TopK: the k best of each row by repeated selection — the next pick is the best element
/// that ranks after the previous pick (value, then index), which reproduces the
/// evaluator's stable sort without scratch memory.
pub(crate) fn topk(fx: &mut Fx, g: &Graph, n: NodeId, axis: usize, k: usize, largest: bool, a: &Args) {
    let x = g.node(n).inputs[0];
    let (s, shape) = (sc(g, x), g.value(x).ty.shape.clone());
    let len = shape[axis] as i64;
    let inner: i64 = shape[axis + 1..].iter().product::<usize>() as i64;
    let outer: i64 = shape[..axis].iter().product::<usize>() as i64;
    let eb = s.size() as i64;
    let (ty, _) = mem(s);
    let kty = if s.is_float() { F64 } else { I64 };
    fx.for_n(outer, &mut |fx, o| {
        fx.for_n(inner, &mut |fx, i| {
            let row = fx.mul_imm(o, len * inner);
            let row = fx.b.ins().iadd(row, i);
            let base = fx.addr(a.ins[0], row, eb);
            let orow = fx.mul_imm(o, k as i64 * inner);
            let orow = fx.b.ins().iadd(orow, i);
            let (pv, pi) = (fx.b.declare_var(kty), fx.b.declare_var(I64));
            let m1 = fx.i(-1);
            fx.b.def_var(pi, m1);
            let z = if s.is_float() {
                fx.b.ins().f64const(0.0)
            } else {
                fx.i(0)
            };
            fx.b.def_var(pv, z);
            fx.for_n(k as i64, &mut |fx, r| {
                let (prev_v, prev_i) = (fx.b.use_var(pv), fx.b.use_var(pi));
                let (bv, bi) = (fx.b.declare_var(kty), fx.b.declare_var(I64));
                fx.b.def_var(bi, m1);
                fx.b.def_var(bv, z);
                fx.for_n(len, &mut |fx, j| {
                    let ea = fx.addr(base, j, inner * eb);
                    let v = key(fx, s, ea);
                    // Eligible: ranks after the previous pick.
                    let first = fx.b.ins().icmp_imm_s(IntCC::SignedLessThan, prev_i, 0);
                    let after_v = better(fx, s, prev_v, v, largest, false);
                    let same_v = if s.is_float() {
                        fx.b.ins().fcmp(FloatCC::Equal, v, prev_v)
                    } else {
                        fx.b.ins().icmp(IntCC::Equal, v, prev_v)
                    };
                    let later_i = fx.b.ins().icmp(IntCC::SignedGreaterThan, j, prev_i);
                    let tie = fx.b.ins().band(same_v, later_i);
                    let elig = fx.b.ins().bor(after_v, tie);
                    let elig = fx.b.ins().bor(elig, first);
                    // Better than the current best (first in index order wins ties).
                    let (cur_v, cur_i) = (fx.b.use_var(bv), fx.b.use_var(bi));
                    let none = fx.b.ins().icmp_imm_s(IntCC::SignedLessThan, cur_i, 0);
                    let beats = better(fx, s, v, cur_v, largest, false);
                    let take = fx.b.ins().bor(none, beats);
                    let take = fx.b.ins().band(take, elig);
                    let nv = fx.b.ins().select(take, v, cur_v);
                    let ni = fx.b.ins().select(take, j, cur_i);
                    fx.b.def_var(bv, nv);
                    fx.b.def_var(bi, ni);
                });
                let (v, idx) = (fx.b.use_var(bv), fx.b.use_var(bi));
                fx.b.def_var(pv, v);
                fx.b.def_var(pi, idx);
                let oo = fx.mul_imm(r, inner);
                let oo = fx.b.ins().iadd(orow, oo);
                let src = fx.addr(base, idx, inner * eb);
                let raw = fx.load(ty, src);
                let va = fx.addr(a.outs[0], oo, eb);
                fx.store(raw, va);
                let ia = fx.addr(a.outs[1], oo, 8);
                fx.store(idx, ia);
            });
        });
    });
}

pub(crate) fn one_hot(fx: &mut Fx, g: &Graph, n: NodeId, axis: usize, depth: usize, a: &Args) {
    let node = g.node(n);
    let (ind, vals) = (node.inputs[0], node.inputs[1]);
    let is = g.value(ind).ty.shape.clone();
    let (si, sv) = (sc(g, ind), sc(g, vals));
    let (ty, _) = mem(sv);
    let eb = sv.size() as i64;
    let outer: i64 = is[..axis].iter().product::<usize>() as i64;
    let inner: i64 = is[axis..].iter().product::<usize>() as i64;
    let d = depth as i64;
    let off_v = fx.load(ty, a.ins[1]);
    let on_a = fx.add_imm(a.ins[1], eb);
    let on_v = fx.load(ty, on_a);
    fx.for_index(&[outer, d, inner], &mut |fx, ix| {
        let e = fx.mul_imm(ix[0], inner);
        let e = fx.b.ins().iadd(e, ix[2]);
        let ia = fx.addr(a.ins[0], e, si.size() as i64);
        let raw = load(fx, si, ia);
        // Float indices truncate toward zero, as the evaluator reads them.
        let raw = match si {
            Scalar::F32 => {
                let w = fx.b.ins().fpromote(F64, raw);
                fx.b.ins().fcvt_to_sint_sat(I64, w)
            }
            Scalar::F64 => fx.b.ins().fcvt_to_sint_sat(I64, raw),
            _ => raw,
        };
        let wrapped = fx.add_imm(raw, d);
        let neg = fx.b.ins().icmp_imm_s(IntCC::SignedLessThan, raw, 0);
        let v = fx.b.ins().select(neg, wrapped, raw);
        let hit = fx.b.ins().icmp(IntCC::Equal, v, ix[1]);
        let val = fx.b.ins().select(hit, on_v, off_v);
        let o = fx.dot(ix, &[d * inner, inner, 1]);
        let oa = fx.addr(a.outs[0], o, eb);
        fx.store(val, oa);
    });
}

pub(crate) fn gather_nd(fx: &mut Fx, g: &Graph, n: NodeId, batch_dims: usize, a: &Args) {
    let node = g.node(n);
    let (data, idx) = (node.inputs[0], node.inputs[1]);
    let ds = g.value(data).ty.shape.clone();
    let is = g.value(idx).ty.shape.clone();
    let (s, si) = (sc(g, data), sc(g, idx));
    let eb = s.size() as i64;
    let q = is.len();
    let last = is[q - 1];
    let dst = strides(&ds);
    let inner: i64 = ds[batch_dims + last..].iter().product::<usize>() as i64;
    let tuples: i64 = is[..q - 1].iter().product::<usize>() as i64;
    let per_batch: i64 = (is[batch_dims..q - 1].iter().product::<usize>() as i64).max(1);
    fx.for_n(tuples, &mut |fx, t| {
        let batch = fx.b.ins().udiv_imm_u(t, per_batch);
        // Offset of the batch prefix.
        let mut off = fx.i(0);
        let mut rem = batch;
        for dd in (0..batch_dims).rev() {
            let r = fx.b.ins().urem_imm_u(rem, ds[dd] as i64);
            let r = fx.mul_imm(r, dst[dd]);
            off = fx.b.ins().iadd(off, r);
            rem = fx.b.ins().udiv_imm_u(rem, ds[dd] as i64);
        }
        for j in 0..last {
            let e = fx.mul_imm(t, last as i64);
            let e = fx.add_imm(e, j as i64);
            let ia = fx.addr(a.ins[1], e, si.size() as i64);
            let v = index(fx, si, ia, ds[batch_dims + j] as i64);
            let v = fx.mul_imm(v, dst[batch_dims + j]);
            off = fx.b.ins().iadd(off, v);
        }
        let src = fx.addr(a.ins[0], off, eb);
        let dsto = fx.mul_imm(t, inner);
        let dstp = fx.addr(a.outs[0], dsto, eb);
        copy_all(fx, src, dstp, inner * eb);
    });
}

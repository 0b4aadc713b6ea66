//! Compute-heavy kernels: pooling, matrix products, softmax, reductions,
//! BatchNorm and LSTM. Tables that only depend on shapes (valid tap ranges per output row,
//! averaging divisors) and weight layouts that suit the vector loop are built at compile
//! time and passed in as `aux` data.

use super::super::fx::Fx;
use super::gemm::{Mat, gemm as gemm_loop};
use super::nest::{F4, Opnd, ld, nest};
use super::{Args, Target, strides, typed};
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::types::{F32, F64, I32, I64};
use cranelift_codegen::ir::{InstBuilder, Value};
use cranelift_frontend::Variable;
use kiln_ir::op::{Pool, PoolKind, ReduceKind, UnaryOp, Window};
use kiln_ir::{Graph, NodeId};

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn i32s(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Geometry of a 1-D or 2-D window op viewed as 2-D (`H = 1` for 1-D).
pub(super) type Geo = kiln_ir::op::Plane;

pub(super) fn geo(x: &[usize], out: &[usize], win: &Window) -> Geo {
    win.plane(x, out)
}

/// Per output index along one axis: (first input index, first valid tap, end of valid taps).
pub(super) fn tap_ranges(input: usize, out: usize, k: usize, s: usize, d: usize, p: usize) -> Vec<i32> {
    let mut t = Vec::with_capacity(out * 3);
    for o in 0..out {
        let i0 = (o * s) as i64 - p as i64;
        let valid: Vec<usize> = (0..k)
            .filter(|&j| (0..input as i64).contains(&(i0 + (j * d) as i64)))
            .collect();
        let (lo, hi) = match (valid.first(), valid.last()) {
            (Some(&a), Some(&b)) => (a, b + 1),
            _ => (0, 0),
        };
        t.extend([i0 as i32, lo as i32, hi as i32]);
    }
    t
}

/// Loads (start, lo, hi) of a tap-range table row as i64 values.
pub(super) fn range_row(fx: &mut Fx, table: Value, o: Value) -> (Value, Value, Value) {
    let base = fx.addr(table, o, 12);
    let mut get = |off: i64| {
        let a = fx.add_imm(base, off);
        let v = fx.load(I32, a);
        fx.b.ins().sextend(I64, v)
    };
    (get(0), get(4), get(8))
}

pub(crate) fn pool_aux(g: &Graph, n: NodeId) -> Vec<Vec<u8>> {
    let node = g.node(n);
    let kiln_ir::Op::Pool(p) = &node.op else { unreachable!() };
    let xs = &g.value(node.inputs[0]).ty.shape;
    let out = &g.value(node.outputs[0]).ty.shape;
    let gm = geo(xs, out, &p.window);
    let (rows, cols) = (
        tap_ranges(gm.h, gm.oh, gm.kh, gm.sh, gm.dh, gm.ph),
        tap_ranges(gm.w, gm.ow, gm.kw, gm.sw, gm.dw, gm.pw),
    );
    // Averaging divisor per output position, as the evaluator counts it.
    let r = xs.len() - 2;
    let end_h = if r == 2 { p.window.pads[2] } else { 0 };
    let end_w = p.window.pads[r * 2 - 1];
    let count = |input: usize, o: usize, k: usize, s: usize, d: usize, pb: usize, pe: usize| {
        (0..k)
            .filter(|&j| {
                let pos = (o * s + j * d) as i64 - pb as i64;
                pos >= -(pb as i64) && pos < (input + pe) as i64
            })
            .count()
    };
    let mut div = Vec::with_capacity(gm.oh * gm.ow);
    for oh in 0..gm.oh {
        for ow in 0..gm.ow {
            let valid = (rows[oh * 3 + 2] - rows[oh * 3 + 1]).max(0) as usize
                * (cols[ow * 3 + 2] - cols[ow * 3 + 1]).max(0) as usize;
            let d = match p.kind {
                PoolKind::Avg {
                    count_include_pad: true,
                } => {
                    count(gm.h, oh, gm.kh, gm.sh, gm.dh, gm.ph, end_h)
                        * count(gm.w, ow, gm.kw, gm.sw, gm.dw, gm.pw, end_w)
                }
                _ => valid,
            };
            div.push(d.max(1) as f32);
        }
    }
    vec![i32s(&rows), i32s(&cols), f32s(&div)]
}

/// One accumulation step of a pooling window.
fn pool_step(fx: &mut Fx, kind: PoolKind, acc: Value, x: Value) -> Value {
    match kind {
        PoolKind::Max => max_step(fx, acc, x),
        PoolKind::Avg { .. } => fx.add(acc, x),
        PoolKind::Lp { p } => {
            let t = lp_term(fx, x, p);
            fx.add(acc, t)
        }
    }
}

/// |x|^p by repeated multiplication (the evaluator's `powi`).
fn lp_term(fx: &mut Fx, x: Value, p: u32) -> Value {
    let a = fx.b.ins().fabs(x);
    let mut t = a;
    for _ in 1..p {
        t = fx.mul(t, a);
    }
    t
}

/// s^(1/p).
fn lp_root(fx: &mut Fx, s: Value, p: u32) -> Value {
    match p {
        1 => s,
        2 => fx.b.ins().sqrt(s),
        _ => {
            let l = fx.log(F32, s);
            let inv = fx.f(F32, 1.0 / p as f32);
            let m = fx.mul(l, inv);
            fx.exp(F32, m)
        }
    }
}

fn max_step(fx: &mut Fx, acc: Value, x: Value) -> Value {
    // Evaluator rule: take x when x > acc or x is NaN.
    let gt = fx.b.ins().fcmp(FloatCC::GreaterThan, x, acc);
    let nan = fx.b.ins().fcmp(FloatCC::Unordered, x, x);
    let c = fx.b.ins().bor(gt, nan);
    fx.b.ins().select(c, x, acc)
}

/// Planes pooled side by side: each window sum is a chain of dependent adds (kept in the
/// evaluator's order), so independent planes interleaved keep the adder busy.
const PLANES_AT_ONCE: i64 = 4;

/// Runs `body(fx, first_plane, count)` over `planes` in groups of [`PLANES_AT_ONCE`], then
/// one by one.
fn by_plane_groups(fx: &mut Fx, planes: i64, body: &mut dyn FnMut(&mut Fx, Value, i64)) {
    let groups = planes / PLANES_AT_ONCE;
    fx.for_n(groups, &mut |fx, gi| {
        let pl = fx.mul_imm(gi, PLANES_AT_ONCE);
        body(fx, pl, PLANES_AT_ONCE);
    });
    fx.for_n(planes - groups * PLANES_AT_ONCE, &mut |fx, r| {
        let pl = fx.add_imm(r, groups * PLANES_AT_ONCE);
        body(fx, pl, 1);
    });
}

/// One accumulator per plane of a group, set to the pooling start value.
fn pool_accs(fx: &mut Fx, kind: PoolKind, count: i64) -> Vec<Variable> {
    (0..count)
        .map(|_| {
            let acc = fx.b.declare_var(F32);
            let init = fx.f(F32, if kind == PoolKind::Max { f32::NEG_INFINITY } else { 0.0 });
            fx.b.def_var(acc, init);
            acc
        })
        .collect()
}

/// Adds the element at `xa + k * plane` to plane k's accumulator.
fn pool_taps(fx: &mut Fx, kind: PoolKind, accs: &[Variable], xa: Value, plane: i64) {
    for (k, &acc) in accs.iter().enumerate() {
        let pa = fx.add_imm(xa, k as i64 * plane);
        let x = fx.load(F32, pa);
        let cur = fx.b.use_var(acc);
        let nv = pool_step(fx, kind, cur, x);
        fx.b.def_var(acc, nv);
    }
}

pub(crate) fn pool(fx: &mut Fx, g: &Graph, n: NodeId, p: &Pool, a: &Args) {
    let node = g.node(n);
    let xs = &g.value(node.inputs[0]).ty.shape;
    let out = &g.value(node.outputs[0]).ty.shape;
    let gm = geo(xs, out, &p.window);
    let planes = (xs[0] * xs[1]) as i64;
    let (hw, ohw) = ((gm.h * gm.w) as i64, (gm.oh * gm.ow) as i64);
    by_plane_groups(fx, planes, &mut |fx, pl, count| {
        let xplane = fx.addr(a.ins[0], pl, hw * 4);
        let oplane = fx.addr(a.outs[0], pl, ohw * 4);
        fx.for_n(gm.oh as i64, &mut |fx, oh| {
            let (ih0, khl, khh) = range_row(fx, a.aux[0], oh);
            fx.for_n(gm.ow as i64, &mut |fx, ow| {
                let (iw0, kwl, kwh) = range_row(fx, a.aux[1], ow);
                let accs = pool_accs(fx, p.kind, count);
                fx.for_range(khl, khh, &mut |fx, kh| {
                    let ih = fx.mul_imm(kh, gm.dh as i64);
                    let ih = fx.b.ins().iadd(ih0, ih);
                    let xrow = fx.addr(xplane, ih, gm.w as i64 * 4);
                    fx.for_range(kwl, kwh, &mut |fx, kw| {
                        let iw = fx.mul_imm(kw, gm.dw as i64);
                        let iw = fx.b.ins().iadd(iw0, iw);
                        let xa = fx.addr(xrow, iw, 4);
                        pool_taps(fx, p.kind, &accs, xa, hw * 4);
                    });
                });
                let pos = fx.mul_imm(oh, gm.ow as i64);
                let pos = fx.b.ins().iadd(pos, ow);
                let div = match p.kind {
                    PoolKind::Avg { .. } => {
                        let da = fx.addr(a.aux[2], pos, 4);
                        Some(fx.load(F32, da))
                    }
                    _ => None,
                };
                for (k, &acc) in accs.iter().enumerate() {
                    let mut v = fx.b.use_var(acc);
                    match p.kind {
                        PoolKind::Avg { .. } => v = fx.div(v, div.unwrap()),
                        PoolKind::Lp { p: e } => v = lp_root(fx, v, e),
                        PoolKind::Max => {}
                    }
                    let oa = fx.addr(oplane, pos, 4);
                    let oa = fx.add_imm(oa, k as i64 * ohw * 4);
                    fx.store(v, oa);
                }
            });
        });
    });
}

pub(crate) fn global_pool(fx: &mut Fx, g: &Graph, n: NodeId, k: PoolKind, a: &Args) {
    let xs = &g.value(g.node(n).inputs[0]).ty.shape;
    let planes = (xs[0] * xs[1]) as i64;
    let size: i64 = xs[2..].iter().product::<usize>() as i64;
    by_plane_groups(fx, planes, &mut |fx, pl, count| {
        let xplane = fx.addr(a.ins[0], pl, size * 4);
        let accs = pool_accs(fx, k, count);
        fx.for_ptrs(size, &[(xplane, 4)], &mut |fx, q| {
            pool_taps(fx, k, &accs, q[0], size * 4)
        });
        for (i, &acc) in accs.iter().enumerate() {
            let mut v = fx.b.use_var(acc);
            match k {
                PoolKind::Avg { .. } => {
                    let d = fx.f(F32, size as f32);
                    v = fx.div(v, d);
                }
                PoolKind::Lp { p: e } => v = lp_root(fx, v, e),
                PoolKind::Max => {}
            }
            let oa = fx.addr(a.outs[0], pl, 4);
            let oa = fx.add_imm(oa, 4 * i as i64);
            fx.store(v, oa);
        }
    });
}

/// `out = post(a x b)` with `b` `[k, nn]` row-major, in f32 or (`half`) binary16.
#[allow(clippy::too_many_arguments)]
fn matmul_2d(
    fx: &mut Fx,
    t: Target,
    (m, k, nn): (usize, usize, usize),
    a: Value,
    a_st: (i64, i64),
    (b, half): (Value, bool),
    out: Value,
    post: Option<UnaryOp>,
) {
    let zero = |fx: &mut Fx, _: Value| fx.f(F32, 0.0);
    let a = Mat::f32(a, a_st.0 * 4, a_st.1 * 4);
    let es = if half { 2 } else { 4 };
    let b = Mat {
        base: b,
        row: nn as i64 * es,
        col: es,
        half,
    };
    let c = Mat::f32(out, nn as i64 * 4, 4);
    gemm_loop(fx, t, m, k, nn, a, b, c, &zero, post, None);
}

pub(crate) fn gemm_aux(g: &Graph, n: NodeId) -> Vec<Vec<u8>> {
    let node = g.node(n);
    let kiln_ir::Op::Gemm { trans_b: true, .. } = node.op else {
        return vec![];
    };
    let Some(b) = g.const_value(node.inputs[1]) else {
        return vec![];
    };
    let (rows, cols) = (b.shape[0], b.shape[1]);
    if let kiln_ir::Data::F16(h) = &b.data {
        // binary16 weights stay binary16: repack the bit patterns
        let mut t = vec![0u16; h.len()];
        for r in 0..rows {
            for c in 0..cols {
                t[c * rows + r] = h[r * cols + c].to_bits();
            }
        }
        return vec![t.iter().flat_map(|v| v.to_le_bytes()).collect()];
    }
    let v = b.to_f32_vec();
    let mut t = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = v[r * cols + c];
        }
    }
    vec![f32s(&t)]
}

/// `Gemm`; returns whether it applied the `fused` activation (it does when nothing is
/// added after the product, so the product's kernel can).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    fx: &mut Fx,
    g: &Graph,
    n: NodeId,
    (alpha, beta): (f32, f32),
    (ta, tb): (bool, bool),
    fused: Option<UnaryOp>,
    a: &Args,
    t: Target,
) -> bool {
    let node = g.node(n);
    let out = &g.value(node.outputs[0]).ty.shape;
    let (m, nn) = (out[0], out[1]);
    let ash = &g.value(node.inputs[0]).ty.shape;
    let k = if ta { ash[0] } else { ash[1] };
    let a_st = if ta { (1, m as i64) } else { (k as i64, 1) };
    // B as [k, n]: repacked at compile time when it is a transposed constant.
    let b = if !tb {
        a.ins[1]
    } else if let Some(&p) = a.aux.first() {
        p
    } else {
        // Transposed run-time B: copy into [k, n] in the output's shadow is not possible, so
        // read it through a scalar loop nest instead.
        gemm_scalar_bt(fx, g, n, alpha, beta, ta, a);
        return false;
    };
    let half = g.value(node.inputs[1]).ty.dtype.scalar == kiln_ir::Scalar::F16;
    let post = fused.filter(|_| alpha == 1.0 && node.inputs.len() == 2);
    matmul_2d(fx, t, (m, k, nn), a.ins[0], a_st, (b, half), a.outs[0], post);
    gemm_epilogue(fx, g, n, alpha, beta, a, t);
    post.is_some()
}

fn gemm_epilogue(fx: &mut Fx, g: &Graph, n: NodeId, alpha: f32, beta: f32, a: &Args, t: Target) {
    let node = g.node(n);
    let out = &g.value(node.outputs[0]).ty.shape;
    let dims: Vec<i64> = out.iter().map(|&d| d as i64).collect();
    if alpha != 1.0 {
        let ops = [Opnd::new(a.outs[0], strides(out), 4)];
        nest(fx, &dims, &ops, F32, t.simd.then_some(F4), &mut |fx, ty, p, _| {
            let v = fx.load(ty, p[0]);
            let al = fx.f(ty, alpha);
            let r = fx.mul(v, al);
            fx.store(r, p[0]);
        });
    }
    if let Some(&c) = node.inputs.get(2) {
        let cs = super::bcast_strides(&g.value(c).ty.shape, out);
        let ops = [Opnd::new(a.outs[0], strides(out), 4), Opnd::new(a.ins[2], cs, 4)];
        nest(fx, &dims, &ops, F32, t.simd.then_some(F4), &mut |fx, ty, p, bc| {
            let v = fx.load(ty, p[0]);
            let cv = ld(fx, ty, p[1], bc[1]);
            let be = fx.f(ty, beta);
            let bc = fx.mul(be, cv);
            let r = fx.add(v, bc);
            fx.store(r, p[0]);
        });
    }
}

fn gemm_scalar_bt(fx: &mut Fx, g: &Graph, n: NodeId, alpha: f32, beta: f32, ta: bool, a: &Args) {
    let node = g.node(n);
    let out = &g.value(node.outputs[0]).ty.shape;
    let (m, nn) = (out[0], out[1]);
    let ash = &g.value(node.inputs[0]).ty.shape;
    let k = if ta { ash[0] } else { ash[1] };
    fx.for_n(m as i64, &mut |fx, i| {
        fx.for_n(nn as i64, &mut |fx, j| {
            let acc = fx.b.declare_var(F32);
            let z = fx.f(F32, 0.0);
            fx.b.def_var(acc, z);
            fx.for_n(k as i64, &mut |fx, p| {
                let ai = if ta {
                    fx.mul_imm(p, m as i64)
                } else {
                    fx.mul_imm(i, k as i64)
                };
                let ai = fx.b.ins().iadd(ai, if ta { i } else { p });
                let aa = fx.addr(a.ins[0], ai, 4);
                let av = fx.load(F32, aa);
                let bi = fx.mul_imm(j, k as i64);
                let bi = fx.b.ins().iadd(bi, p);
                let ba = fx.addr(a.ins[1], bi, 4);
                let bv = fx.load(F32, ba);
                let pr = fx.mul(av, bv);
                let cur = fx.b.use_var(acc);
                let s = fx.add(cur, pr);
                fx.b.def_var(acc, s);
            });
            let v = fx.b.use_var(acc);
            let oi = fx.mul_imm(i, nn as i64);
            let oi = fx.b.ins().iadd(oi, j);
            let oa = fx.addr(a.outs[0], oi, 4);
            fx.store(v, oa);
        });
    });
    gemm_epilogue(
        fx,
        g,
        n,
        alpha,
        beta,
        a,
        Target {
            simd: false,
            dot: None,
            fma: false,
            wide: false,
        },
    );
}

pub(crate) fn matmul(fx: &mut Fx, g: &Graph, n: NodeId, a: &Args, t: Target) {
    let node = g.node(n);
    let (sa, sb) = (&g.value(node.inputs[0]).ty.shape, &g.value(node.inputs[1]).ty.shape);
    let a2: Vec<usize> = if sa.len() == 1 { vec![1, sa[0]] } else { sa.clone() };
    let b2: Vec<usize> = if sb.len() == 1 { vec![sb[0], 1] } else { sb.clone() };
    let (m, k, nn) = (a2[a2.len() - 2], a2[a2.len() - 1], b2[b2.len() - 1]);
    let batch = kiln_ir::shape::broadcast(&a2[..a2.len() - 2], &b2[..b2.len() - 2]).expect("checked by inference");
    let dims: Vec<i64> = batch.iter().map(|&d| d as i64).collect();
    let scale = |st: Vec<i64>, s: i64| st.into_iter().map(|x| x * s).collect::<Vec<_>>();
    let s = g.value(node.inputs[0]).ty.dtype.scalar;
    let eb = s.size() as i64;
    let ops = [
        Opnd::new(a.outs[0], scale(strides(&batch), (m * nn) as i64), eb),
        Opnd::new(
            a.ins[0],
            scale(super::bcast_strides(&a2[..a2.len() - 2], &batch), (m * k) as i64),
            eb,
        ),
        Opnd::new(
            a.ins[1],
            scale(super::bcast_strides(&b2[..b2.len() - 2], &batch), (k * nn) as i64),
            eb,
        ),
    ];
    if s != kiln_ir::Scalar::F32 {
        // Other element types: scalar loops in the evaluator's working type (f16 and
        // integers through f32 / f64 as it computes them), rounded once on store.
        let work = if s == kiln_ir::Scalar::F16 { F32 } else { F64 };
        nest(fx, &dims, &ops, F32, None, &mut |fx, _, p, _| {
            fx.for_index(&[m as i64, nn as i64], &mut |fx, ij| {
                let acc = fx.b.declare_var(work);
                let z = if work == F32 {
                    fx.f(F32, 0.0)
                } else {
                    fx.b.ins().f64const(0.0)
                };
                fx.b.def_var(acc, z);
                fx.for_n(k as i64, &mut |fx, q| {
                    let ai = fx.mul_imm(ij[0], k as i64);
                    let ai = fx.b.ins().iadd(ai, q);
                    let aa = fx.addr(p[1], ai, eb);
                    let bi = fx.mul_imm(q, nn as i64);
                    let bi = fx.b.ins().iadd(bi, ij[1]);
                    let ba = fx.addr(p[2], bi, eb);
                    let (x, y) = (typed::load(fx, s, aa), typed::load(fx, s, ba));
                    let (x, y) = if work == F64 {
                        (typed::to_f64(fx, s, x), typed::to_f64(fx, s, y))
                    } else {
                        (x, y)
                    };
                    let pr = fx.b.ins().fmul(x, y);
                    let cur = fx.b.use_var(acc);
                    let sum = fx.b.ins().fadd(cur, pr);
                    fx.b.def_var(acc, sum);
                });
                let v = fx.b.use_var(acc);
                let v = if work == F64 { typed::from_f64(fx, s, v) } else { v };
                let oi = fx.mul_imm(ij[0], nn as i64);
                let oi = fx.b.ins().iadd(oi, ij[1]);
                let oa = fx.addr(p[0], oi, eb);
                typed::store(fx, s, v, oa);
            });
        });
        return;
    }
    // binary16 weights (`--quantize fp16`): B's batch strides count 2-byte elements
    let half = g.value(node.inputs[1]).ty.dtype.scalar == kiln_ir::Scalar::F16;
    let ops = if half {
        [
            ops[0].clone(),
            ops[1].clone(),
            Opnd::new(
                a.ins[1],
                scale(super::bcast_strides(&b2[..b2.len() - 2], &batch), (k * nn) as i64),
                2,
            ),
        ]
    } else {
        ops
    };
    nest(fx, &dims, &ops, F32, None, &mut |fx, _, p, _| {
        matmul_2d(fx, t, (m, k, nn), p[1], (k as i64, 1), (p[2], half), p[0], None);
    });
}

pub(crate) fn softmax(fx: &mut Fx, g: &Graph, n: NodeId, axis: usize, log: bool, a: &Args) {
    let shape = &g.value(g.node(n).inputs[0]).ty.shape;
    // f16 works in f32 (the evaluator's rule); exp values are recomputed rather than parked
    // in the half-precision output.
    let s = g.value(g.node(n).inputs[0]).ty.dtype.scalar;
    let eb = s.size() as i64;
    let park = s == kiln_ir::Scalar::F32;
    let len = shape[axis] as i64;
    let inner: i64 = shape[axis + 1..].iter().product::<usize>() as i64;
    let outer: i64 = shape[..axis].iter().product::<usize>() as i64;
    fx.for_n(outer, &mut |fx, o| {
        fx.for_n(inner, &mut |fx, i| {
            let base = fx.mul_imm(o, len * inner);
            let base = fx.b.ins().iadd(base, i);
            let xb = fx.addr(a.ins[0], base, eb);
            let yb = fx.addr(a.outs[0], base, eb);
            let mx = fx.b.declare_var(F32);
            let ninf = fx.f(F32, f32::NEG_INFINITY);
            fx.b.def_var(mx, ninf);
            fx.for_n(len, &mut |fx, j| {
                let xa = fx.addr(xb, j, inner * eb);
                let x = typed::load(fx, s, xa);
                let cur = fx.b.use_var(mx);
                let gt = fx.gt(x, cur);
                let nv = fx.b.ins().select(gt, x, cur);
                fx.b.def_var(mx, nv);
            });
            let m = fx.b.use_var(mx);
            let sum = fx.b.declare_var(F32);
            let z = fx.f(F32, 0.0);
            fx.b.def_var(sum, z);
            fx.for_n(len, &mut |fx, j| {
                let xa = fx.addr(xb, j, inner * eb);
                let x = typed::load(fx, s, xa);
                let d = fx.sub(x, m);
                let e = fx.exp(F32, d);
                if !log && park {
                    let ya = fx.addr(yb, j, inner * eb);
                    fx.store(e, ya);
                }
                let cur = fx.b.use_var(sum);
                let s = fx.add(cur, e);
                fx.b.def_var(sum, s);
            });
            let sum_v = fx.b.use_var(sum);
            // the log pinned, or Cranelift evaluates it inside the next loop (`Fx::anchor`)
            let ls = if log {
                let l = fx.log(F32, sum_v);
                fx.anchor(F32, l)
            } else {
                sum_v
            };
            fx.for_n(len, &mut |fx, j| {
                let ya = fx.addr(yb, j, inner * eb);
                let v = if log {
                    let xa = fx.addr(xb, j, inner * eb);
                    let x = typed::load(fx, s, xa);
                    let d = fx.sub(x, m);
                    fx.sub(d, ls)
                } else {
                    let e = if park {
                        fx.load(F32, ya)
                    } else {
                        let xa = fx.addr(xb, j, inner * eb);
                        let x = typed::load(fx, s, xa);
                        let d = fx.sub(x, m);
                        fx.exp(F32, d)
                    };
                    fx.div(e, sum_v)
                };
                typed::store(fx, s, v, ya);
            });
        });
    });
}

/// Every reduction works on every element type (bool as 0/1, as the evaluator reads it).
pub(crate) fn reduce_supported(_: kiln_ir::Scalar) -> bool {
    true
}

/// Reductions accumulate in f64, like the evaluator, and round once at the end.
pub(crate) fn reduce(fx: &mut Fx, g: &Graph, n: NodeId, kind: ReduceKind, axes: &[usize], a: &Args) {
    let shape = &g.value(g.node(n).inputs[0]).ty.shape;
    let st = strides(shape);
    let kept: Vec<usize> = (0..shape.len()).filter(|d| !axes.contains(d)).collect();
    let kdims: Vec<i64> = kept.iter().map(|&d| shape[d] as i64).collect();
    let rdims: Vec<i64> = axes.iter().map(|&d| shape[d] as i64).collect();
    let kst: Vec<i64> = kept.iter().map(|&d| st[d]).collect();
    let rst: Vec<i64> = axes.iter().map(|&d| st[d]).collect();
    let count: i64 = rdims.iter().product();
    let out_st = strides(&kdims.iter().map(|&d| d as usize).collect::<Vec<_>>());
    let s = g.value(g.node(n).inputs[0]).ty.dtype.scalar;
    let eb = s.size() as i64;
    let ops = [Opnd::new(a.outs[0], out_st, eb), Opnd::new(a.ins[0], kst, eb)];
    nest(fx, &kdims, &ops, F32, None, &mut |fx, _, p, _| {
        let acc = fx.b.declare_var(F64);
        let init = match kind {
            ReduceKind::Max => f64::NEG_INFINITY,
            ReduceKind::Min => f64::INFINITY,
            ReduceKind::Prod => 1.0,
            _ => 0.0,
        };
        let iv = fx.b.ins().f64const(init);
        fx.b.def_var(acc, iv);
        let inner = [Opnd::new(p[1], rst.clone(), eb)];
        // LogSumExp subtracts the per-output maximum first (when finite), as the evaluator.
        let shift = if kind == ReduceKind::LogSumExp {
            let mx = fx.b.declare_var(F64);
            let ninf = fx.b.ins().f64const(f64::NEG_INFINITY);
            fx.b.def_var(mx, ninf);
            nest(fx, &rdims, &inner, F32, None, &mut |fx, _, q, _| {
                let x = typed::load(fx, s, q[0]);
                let x = typed::to_f64(fx, s, x);
                let cur = fx.b.use_var(mx);
                let m = fx.b.ins().fmax(cur, x);
                fx.b.def_var(mx, m);
            });
            let m = fx.b.use_var(mx);
            let d = fx.b.ins().fsub(m, m);
            let finite = fx.b.ins().fcmp(FloatCC::Equal, d, d);
            let z = fx.b.ins().f64const(0.0);
            Some(fx.b.ins().select(finite, m, z))
        } else {
            None
        };
        nest(fx, &rdims, &inner, F32, None, &mut |fx, _, q, _| {
            let x = typed::load(fx, s, q[0]);
            let x = typed::to_f64(fx, s, x);
            let cur = fx.b.use_var(acc);
            let nv = match kind {
                ReduceKind::Sum | ReduceKind::Mean => fx.b.ins().fadd(cur, x),
                ReduceKind::Prod => fx.b.ins().fmul(cur, x),
                ReduceKind::LogSum => fx.b.ins().fadd(cur, x),
                ReduceKind::LogSumExp => {
                    let d = fx.b.ins().fsub(x, shift.expect("computed"));
                    let e = fx.exp64(d);
                    fx.b.ins().fadd(cur, e)
                }
                ReduceKind::SumSquare | ReduceKind::L2 => {
                    let sq = fx.b.ins().fmul(x, x);
                    fx.b.ins().fadd(cur, sq)
                }
                ReduceKind::L1 => {
                    let ab = fx.b.ins().fabs(x);
                    fx.b.ins().fadd(cur, ab)
                }
                ReduceKind::Max | ReduceKind::Min => {
                    let cc = if kind == ReduceKind::Max {
                        FloatCC::GreaterThan
                    } else {
                        FloatCC::LessThan
                    };
                    let better = fx.b.ins().fcmp(cc, x, cur);
                    let nan = fx.b.ins().fcmp(FloatCC::Unordered, x, x);
                    let c = fx.b.ins().bor(better, nan);
                    fx.b.ins().select(c, x, cur)
                }
            };
            fx.b.def_var(acc, nv);
        });
        let mut v = fx.b.use_var(acc);
        match kind {
            ReduceKind::Mean => {
                let c = fx.b.ins().f64const(count as f64);
                v = fx.b.ins().fdiv(v, c);
            }
            ReduceKind::L2 => v = fx.b.ins().sqrt(v),
            ReduceKind::LogSum => v = fx.log64(v),
            ReduceKind::LogSumExp => {
                let l = fx.log64(v);
                v = fx.b.ins().fadd(l, shift.expect("computed"));
            }
            _ => {}
        }
        let r = typed::from_f64(fx, s, v);
        typed::store(fx, s, r, p[0]);
    });
}

pub(crate) fn batch_norm_aux(g: &Graph, n: NodeId) -> Vec<Vec<u8>> {
    let node = g.node(n);
    let kiln_ir::Op::BatchNorm { epsilon } = node.op else {
        unreachable!()
    };
    let p: Vec<Vec<f32>> = node.inputs[1..]
        .iter()
        .map(|&v| g.const_value(v).expect("checked").to_f32_vec())
        .collect();
    // Same f32 operations as the evaluator: a = scale / sqrt(var + eps), s = bias - mean * a.
    let a: Vec<f32> = (0..p[0].len()).map(|c| p[0][c] / (p[3][c] + epsilon).sqrt()).collect();
    let s: Vec<f32> = (0..a.len()).map(|c| p[1][c] - p[2][c] * a[c]).collect();
    vec![f32s(&a), f32s(&s)]
}

pub(crate) fn batch_norm(fx: &mut Fx, g: &Graph, n: NodeId, a: &Args, t: Target) {
    let shape = &g.value(g.node(n).inputs[0]).ty.shape;
    let inner: i64 = shape[2..].iter().product::<usize>() as i64;
    let dims = [shape[0] as i64, shape[1] as i64, inner];
    let full = [shape[1] as i64 * inner, inner, 1];
    let ch = [0, 1, 0];
    let ops = [
        Opnd::new(a.outs[0], full.to_vec(), 4),
        Opnd::new(a.ins[0], full.to_vec(), 4),
        Opnd::new(a.aux[0], ch.to_vec(), 4),
        Opnd::new(a.aux[1], ch.to_vec(), 4),
    ];
    nest(fx, &dims, &ops, F32, t.simd.then_some(F4), &mut |fx, ty, p, bc| {
        let x = ld(fx, ty, p[1], bc[1]);
        let sa = ld(fx, ty, p[2], bc[2]);
        let ss = ld(fx, ty, p[3], bc[3]);
        let v = fx.mul(x, sa);
        let v = fx.add(v, ss);
        fx.store(v, p[0]);
    });
}

/// Pooling over any number of spatial axes (used beyond 2-D): every tap's position is
/// checked at run time, and the averaging divisor is counted as the evaluator counts it.
pub(crate) fn pool_nd(fx: &mut Fx, g: &Graph, n: NodeId, p: &Pool, a: &Args) {
    let node = g.node(n);
    let xs = g.value(node.inputs[0]).ty.shape.clone();
    let out = g.value(node.outputs[0]).ty.shape.clone();
    let r = xs.len() - 2;
    let w = &p.window;
    let planes = (xs[0] * xs[1]) as i64;
    let isp: Vec<i64> = xs[2..].iter().map(|&d| d as i64).collect();
    let osp: Vec<i64> = out[2..].iter().map(|&d| d as i64).collect();
    let kern: Vec<i64> = w.kernel.iter().map(|&d| d as i64).collect();
    let ist = strides(&xs[2..]);
    let ost = strides(&out[2..]);
    let (pin, pout) = (isp.iter().product::<i64>(), osp.iter().product::<i64>());
    // Integer max pooling works in f64, as the evaluator.
    let s = g.value(node.inputs[0]).ty.dtype.scalar;
    let eb = s.size() as i64;
    let work = if s == kiln_ir::Scalar::F32 { F32 } else { F64 };
    fx.for_n(planes, &mut |fx, pl| {
        let xp = fx.addr(a.ins[0], pl, pin * eb);
        let yp = fx.addr(a.outs[0], pl, pout * eb);
        fx.for_index(&osp, &mut |fx, o| {
            let acc = fx.b.declare_var(work);
            let cnt = fx.b.declare_var(I64);
            let start = if p.kind == PoolKind::Max {
                f32::NEG_INFINITY
            } else {
                0.0
            };
            let init = if work == F32 {
                fx.f(F32, start)
            } else {
                fx.b.ins().f64const(start as f64)
            };
            fx.b.def_var(acc, init);
            let z = fx.i(0);
            fx.b.def_var(cnt, z);
            fx.for_index(&kern, &mut |fx, k| {
                let mut ok = fx.b.ins().iconst(cranelift_codegen::ir::types::I8, 1);
                let mut off = fx.i(0);
                for d in 0..r {
                    let pos = fx.mul_imm(o[d], w.strides[d] as i64);
                    let kd = fx.mul_imm(k[d], w.dilations[d] as i64);
                    let pos = fx.b.ins().iadd(pos, kd);
                    let pos = fx.add_imm(pos, -(w.pads[d] as i64));
                    let inside =
                        fx.b.ins()
                            .icmp_imm_u(cranelift_codegen::ir::condcodes::IntCC::UnsignedLessThan, pos, isp[d]);
                    ok = fx.b.ins().band(ok, inside);
                    let t = fx.mul_imm(pos, ist[d]);
                    off = fx.b.ins().iadd(off, t);
                }
                fx.if_else(
                    ok,
                    &mut |fx| {
                        let xa = fx.addr(xp, off, eb);
                        let x = typed::load(fx, s, xa);
                        let x = if work == F64 { typed::to_f64(fx, s, x) } else { x };
                        let cur = fx.b.use_var(acc);
                        let nv = pool_step(fx, p.kind, cur, x);
                        fx.b.def_var(acc, nv);
                        let c = fx.b.use_var(cnt);
                        let c = fx.add_imm(c, 1);
                        fx.b.def_var(cnt, c);
                    },
                    &mut |_| {},
                );
            });
            let mut v = fx.b.use_var(acc);
            match p.kind {
                PoolKind::Avg { count_include_pad } => {
                    let div = if count_include_pad {
                        // taps inside the padded extent, per axis, multiplied
                        let mut total = fx.i(1);
                        for d in 0..r {
                            let c = fx.b.declare_var(I64);
                            let z = fx.i(0);
                            fx.b.def_var(c, z);
                            fx.for_n(kern[d], &mut |fx, j| {
                                let pos = fx.mul_imm(o[d], w.strides[d] as i64);
                                let jd = fx.mul_imm(j, w.dilations[d] as i64);
                                let pos = fx.b.ins().iadd(pos, jd);
                                // inside [0, in + pad_begin + pad_end) after shifting by pad_begin
                                let lim = isp[d] + w.pads[d] as i64 + w.pads[d + r] as i64;
                                let inside = fx.b.ins().icmp_imm_u(
                                    cranelift_codegen::ir::condcodes::IntCC::UnsignedLessThan,
                                    pos,
                                    lim,
                                );
                                let inc = fx.b.ins().uextend(I64, inside);
                                let cv = fx.b.use_var(c);
                                let nc = fx.b.ins().iadd(cv, inc);
                                fx.b.def_var(c, nc);
                            });
                            let cv = fx.b.use_var(c);
                            total = fx.b.ins().imul(total, cv);
                        }
                        total
                    } else {
                        fx.b.use_var(cnt)
                    };
                    let one = fx.i(1);
                    let div = fx.b.ins().smax(div, one);
                    let df = fx.b.ins().fcvt_from_sint(F32, div);
                    v = fx.div(v, df);
                }
                PoolKind::Lp { p: e } => v = lp_root(fx, v, e),
                PoolKind::Max => {}
            }
            let oo = fx.dot(o, &ost);
            let ya = fx.addr(yp, oo, eb);
            let v = if work == F64 { typed::from_f64(fx, s, v) } else { v };
            typed::store(fx, s, v, ya);
        });
    });
}

/// Einsum by direct summation, in f64, over the labels missing from the output (the
/// evaluator's order).
pub(crate) fn einsum(fx: &mut Fx, g: &Graph, n: NodeId, equation: &str, a: &Args) {
    let node = g.node(n);
    let spec = kiln_ir::shape::parse_einsum(equation, node.inputs.len()).expect("checked by inference");
    let mut dims: std::collections::HashMap<char, i64> = std::collections::HashMap::new();
    for (l, &v) in spec.inputs.iter().zip(&node.inputs) {
        for (c, &d) in l.iter().zip(&g.value(v).ty.shape) {
            dims.insert(*c, d as i64);
        }
    }
    let mut rest: Vec<char> = Vec::new();
    for l in &spec.inputs {
        for c in l {
            if !spec.output.contains(c) && !rest.contains(c) {
                rest.push(*c);
            }
        }
    }
    let odims: Vec<i64> = spec.output.iter().map(|c| dims[c]).collect();
    let rdims: Vec<i64> = rest.iter().map(|c| dims[c]).collect();
    let so = g.value(node.outputs[0]).ty.dtype.scalar;
    let ost = strides(&odims.iter().map(|&d| d as usize).collect::<Vec<_>>());
    fx.for_index(&odims, &mut |fx, o| {
        let acc = fx.b.declare_var(F64);
        let z = fx.b.ins().f64const(0.0);
        fx.b.def_var(acc, z);
        fx.for_index(&rdims, &mut |fx, r| {
            let label = |c: &char| -> Value {
                match spec.output.iter().position(|x| x == c) {
                    Some(i) => o[i],
                    None => r[rest.iter().position(|x| x == c).expect("label")],
                }
            };
            let mut p = fx.b.ins().f64const(1.0);
            for (k, l) in spec.inputs.iter().enumerate() {
                let v = node.inputs[k];
                let st = strides(&g.value(v).ty.shape);
                let idx: Vec<Value> = l.iter().map(label).collect();
                let off = fx.dot(&idx, &st);
                let s = g.value(v).ty.dtype.scalar;
                let ea = fx.addr(a.ins[k], off, s.size() as i64);
                let x = typed::load(fx, s, ea);
                let x = typed::to_f64(fx, s, x);
                p = fx.b.ins().fmul(p, x);
            }
            let cur = fx.b.use_var(acc);
            let nv = fx.b.ins().fadd(cur, p);
            fx.b.def_var(acc, nv);
        });
        let v = fx.b.use_var(acc);
        let v = typed::from_f64(fx, so, v);
        let oo = fx.dot(o, &ost);
        let oa = fx.addr(a.outs[0], oo, so.size() as i64);
        typed::store(fx, so, v, oa);
    });
}

/// BatchNorm with run-time parameters: per channel the same f32 steps as the evaluator.
pub(crate) fn batch_norm_dynamic(fx: &mut Fx, g: &Graph, n: NodeId, eps: f32, a: &Args) {
    let shape = &g.value(g.node(n).inputs[0]).ty.shape;
    let (nb, c) = (shape[0] as i64, shape[1] as i64);
    let inner: i64 = shape[2..].iter().product::<usize>() as i64;
    fx.for_n(nb * c, &mut |fx, plane| {
        let ch = fx.b.ins().urem_imm_u(plane, c);
        let ld = |fx: &mut Fx, k: usize| {
            let pa = fx.addr(a.ins[k], ch, 4);
            fx.load(F32, pa)
        };
        let (scale, bias, mean, var) = (ld(fx, 1), ld(fx, 2), ld(fx, 3), ld(fx, 4));
        let e = fx.f(F32, eps);
        let ve = fx.add(var, e);
        let sd = fx.b.ins().sqrt(ve);
        let k = fx.div(scale, sd);
        let mk = fx.mul(mean, k);
        let s = fx.sub(bias, mk);
        let xp = fx.addr(a.ins[0], plane, inner * 4);
        let yp = fx.addr(a.outs[0], plane, inner * 4);
        fx.for_ptrs(inner, &[(xp, 4), (yp, 4)], &mut |fx, q| {
            let x = fx.load(F32, q[0]);
            let v = fx.mul(x, k);
            let v = fx.add(v, s);
            fx.store(v, q[1]);
        });
    });
}

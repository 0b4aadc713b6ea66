//! LayerNorm, InstanceNorm and LRN, in the evaluator's operation order (mean, then the
//! centered variance, both summed from zero in index order).

use super::super::fx::Fx;
use super::Args;
use cranelift_codegen::ir::types::F32;
use cranelift_codegen::ir::{InstBuilder, Value};
use kiln_ir::{Graph, NodeId};

/// (mean, variance) of `len` f32 values at `base` spaced `step` bytes apart.
fn moments(fx: &mut Fx, base: Value, len: i64, step: i64) -> (Value, Value) {
    let sum = fx.b.declare_var(F32);
    let z = fx.f(F32, 0.0);
    fx.b.def_var(sum, z);
    fx.for_ptrs(len, &[(base, step)], &mut |fx, p| {
        let v = fx.load(F32, p[0]);
        let c = fx.b.use_var(sum);
        let s = fx.add(c, v);
        fx.b.def_var(sum, s);
    });
    let nf = fx.f(F32, len as f32);
    let s = fx.b.use_var(sum);
    // pinned, or Cranelift recomputes the division inside the next loop (`Fx::anchor`)
    let mean = fx.div(s, nf);
    let mean = fx.anchor(F32, mean);
    let sq = fx.b.declare_var(F32);
    fx.b.def_var(sq, z);
    fx.for_ptrs(len, &[(base, step)], &mut |fx, p| {
        let v = fx.load(F32, p[0]);
        let d = fx.sub(v, mean);
        let d2 = fx.mul(d, d);
        let c = fx.b.use_var(sq);
        let s = fx.add(c, d2);
        fx.b.def_var(sq, s);
    });
    let s = fx.b.use_var(sq);
    (mean, fx.div(s, nf))
}

pub(crate) fn layer_norm_supported(g: &Graph, n: NodeId, axis: usize) -> bool {
    let node = g.node(n);
    let inner: usize = g.value(node.inputs[0]).ty.shape[axis..].iter().product();
    node.inputs[1..].iter().all(|&v| g.value(v).ty.numel() == inner)
}

pub(crate) fn layer_norm(fx: &mut Fx, g: &Graph, n: NodeId, axis: usize, eps: f32, a: &Args) {
    let node = g.node(n);
    let shape = &g.value(node.inputs[0]).ty.shape;
    let inner: i64 = shape[axis..].iter().product::<usize>() as i64;
    let rows: i64 = shape[..axis].iter().product::<usize>() as i64;
    let bias = a.ins.get(2).copied();
    fx.for_n(rows, &mut |fx, r| {
        let xr = fx.addr(a.ins[0], r, inner * 4);
        let yr = fx.addr(a.outs[0], r, inner * 4);
        let (mean, var) = moments(fx, xr, inner, 4);
        let e = fx.f(F32, eps);
        let ve = fx.add(var, e);
        let sd = fx.b.ins().sqrt(ve);
        let one = fx.f(F32, 1.0);
        let inv = fx.div(one, sd);
        let inv = fx.anchor(F32, inv);
        let mut ptrs = vec![(xr, 4), (yr, 4), (a.ins[1], 4)];
        if let Some(b) = bias {
            ptrs.push((b, 4));
        }
        fx.for_ptrs(inner, &ptrs, &mut |fx, p| {
            let v = fx.load(F32, p[0]);
            let d = fx.sub(v, mean);
            let o = fx.mul(d, inv);
            let sc = fx.load(F32, p[2]);
            let mut o = fx.mul(o, sc);
            if bias.is_some() {
                let bv = fx.load(F32, p[3]);
                o = fx.add(o, bv);
            }
            fx.store(o, p[1]);
        });
    });
}

pub(crate) fn instance_norm(fx: &mut Fx, g: &Graph, n: NodeId, eps: f32, a: &Args) {
    let shape = &g.value(g.node(n).inputs[0]).ty.shape;
    let (nb, c) = (shape[0] as i64, shape[1] as i64);
    let inner: i64 = shape[2..].iter().product::<usize>() as i64;
    fx.for_n(nb * c, &mut |fx, plane| {
        let ch = fx.b.ins().urem_imm_u(plane, c);
        let xr = fx.addr(a.ins[0], plane, inner * 4);
        let yr = fx.addr(a.outs[0], plane, inner * 4);
        let (mean, var) = moments(fx, xr, inner, 4);
        let sa = fx.addr(a.ins[1], ch, 4);
        let scale = fx.load(F32, sa);
        let ba = fx.addr(a.ins[2], ch, 4);
        let bias = fx.load(F32, ba);
        let e = fx.f(F32, eps);
        let ve = fx.add(var, e);
        let sd = fx.b.ins().sqrt(ve);
        let k = fx.div(scale, sd);
        let k = fx.anchor(F32, k);
        fx.for_ptrs(inner, &[(xr, 4), (yr, 4)], &mut |fx, p| {
            let v = fx.load(F32, p[0]);
            let d = fx.sub(v, mean);
            let o = fx.mul(d, k);
            let o = fx.add(o, bias);
            fx.store(o, p[1]);
        });
    });
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn lrn(fx: &mut Fx, g: &Graph, n: NodeId, size: usize, alpha: f32, beta: f32, bias: f32, a: &Args) {
    let shape = &g.value(g.node(n).inputs[0]).ty.shape;
    let (nb, c) = (shape[0] as i64, shape[1] as i64);
    let inner: i64 = shape[2..].iter().product::<usize>() as i64;
    let lo = (size as i64 - 1) / 2;
    let hi = size as i64 - 1 - lo;
    let scale = (alpha as f64 / size as f64) as f32;
    fx.for_index(&[nb, c, inner], &mut |fx, ix| {
        let (b, ch, i) = (ix[0], ix[1], ix[2]);
        let from = fx.add_imm(ch, -lo);
        let zero = fx.i(0);
        let from = fx.b.ins().smax(from, zero);
        let to = fx.add_imm(ch, hi + 1);
        let cend = fx.i(c);
        let to = fx.b.ins().smin(to, cend);
        let sq = fx.b.declare_var(F32);
        let z = fx.f(F32, 0.0);
        fx.b.def_var(sq, z);
        let plane0 = fx.mul_imm(b, c);
        fx.for_range(from, to, &mut |fx, cc| {
            let e = fx.b.ins().iadd(plane0, cc);
            let e = fx.mul_imm(e, inner);
            let e = fx.b.ins().iadd(e, i);
            let xa = fx.addr(a.ins[0], e, 4);
            let v = fx.load(F32, xa);
            let v2 = fx.mul(v, v);
            let cur = fx.b.use_var(sq);
            let s = fx.add(cur, v2);
            fx.b.def_var(sq, s);
        });
        let e = fx.b.ins().iadd(plane0, ch);
        let e = fx.mul_imm(e, inner);
        let e = fx.b.ins().iadd(e, i);
        let s = fx.b.use_var(sq);
        let (bf, sf) = (fx.f(F32, bias), fx.f(F32, scale));
        let t = fx.mul(sf, s);
        let d = fx.add(bf, t);
        let l = fx.log(F32, d);
        let bt = fx.f(F32, beta);
        let l = fx.mul(l, bt);
        let d = fx.exp(F32, l);
        let xa = fx.addr(a.ins[0], e, 4);
        let x = fx.load(F32, xa);
        let y = fx.div(x, d);
        let ya = fx.addr(a.outs[0], e, 4);
        fx.store(y, ya);
    });
}

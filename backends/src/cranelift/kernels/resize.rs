//! Resize through per-axis tap tables built at compile time with the evaluator's own tap
//! rule (`kiln_ir::eval::resize_taps`): each output element sums, in f64 and in the
//! evaluator's order, the product of one tap per axis.

use super::super::fx::Fx;
use super::Args;
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::types::{F32, F64, I32, I64};
use cranelift_codegen::ir::{InstBuilder, Value};
use kiln_ir::op::Resize;
use kiln_ir::{Graph, NodeId};

const ENTRY: i64 = 16; // i32 index, i32 valid, f64 weight

/// Per output index: the (input index, weight) taps, or `None` when extrapolated.
type AxisTaps = Vec<Option<Vec<(usize, f64)>>>;

fn taps_per_axis(g: &Graph, n: NodeId, rz: &Resize) -> Vec<AxisTaps> {
    let xs = &g.value(g.node(n).inputs[0]).ty.shape;
    (0..xs.len())
        .map(|d| kiln_ir::eval::resize_taps(rz, d, xs[d], rz.sizes[d]))
        .collect()
}

fn width(t: &[Option<Vec<(usize, f64)>>]) -> usize {
    t.iter().flatten().map(|v| v.len()).max().unwrap_or(1)
}

pub(crate) fn aux(g: &Graph, n: NodeId) -> Vec<Vec<u8>> {
    let kiln_ir::Op::Resize(rz) = &g.node(n).op else {
        unreachable!()
    };
    taps_per_axis(g, n, rz)
        .iter()
        .map(|axis| {
            let w = width(axis);
            let mut t = Vec::new();
            for o in axis {
                for k in 0..w {
                    let (idx, valid, wt) = match o {
                        Some(v) => v.get(k).map(|&(i, wt)| (i as i32, 1i32, wt)).unwrap_or((0, 1, 0.0)),
                        None => (0, 0, 0.0),
                    };
                    t.extend(idx.to_le_bytes());
                    t.extend(valid.to_le_bytes());
                    t.extend(wt.to_le_bytes());
                }
            }
            t
        })
        .collect()
}

pub(crate) fn resize(fx: &mut Fx, g: &Graph, n: NodeId, rz: &Resize, a: &Args) {
    let xs = g.value(g.node(n).inputs[0]).ty.shape.clone();
    let r = xs.len();
    let taps = taps_per_axis(g, n, rz);
    let widths: Vec<usize> = taps.iter().map(|t| width(t)).collect();
    let ist = super::strides(&xs);
    let out: Vec<i64> = rz.sizes.iter().map(|&d| d as i64).collect();
    let ost = super::strides(&rz.sizes);
    fx.for_index(&out, &mut |fx, ix| {
        // Table entry base per axis for this output index.
        let bases: Vec<Value> = (0..r)
            .map(|d| fx.addr(a.aux[d], ix[d], widths[d] as i64 * ENTRY))
            .collect();
        let mut valid = fx.b.ins().iconst(I32, 1);
        for &b in &bases {
            let v =
                fx.b.ins()
                    .load(I32, cranelift_codegen::ir::MemFlagsData::new().with_notrap(), b, 4);
            valid = fx.b.ins().band(valid, v);
        }
        let acc = fx.b.declare_var(F64);
        let z = fx.b.ins().f64const(0.0);
        fx.b.def_var(acc, z);
        let combos: usize = widths.iter().product();
        for combo in 0..combos {
            let mut rem = combo;
            let mut ks = vec![0usize; r];
            for d in (0..r).rev() {
                ks[d] = rem % widths[d];
                rem /= widths[d];
            }
            let mut w = fx.b.ins().f64const(1.0);
            let mut off = fx.i(0);
            for d in 0..r {
                let e = fx.add_imm(bases[d], ks[d] as i64 * ENTRY);
                let idx = fx.load(I32, e);
                let idx = fx.b.ins().sextend(I64, idx);
                let wa = fx.add_imm(e, 8);
                let wt = fx.load(F64, wa);
                w = fx.b.ins().fmul(w, wt);
                let t = fx.mul_imm(idx, ist[d]);
                off = fx.b.ins().iadd(off, t);
            }
            let xa = fx.addr(a.ins[0], off, 4);
            let xv = fx.load(F32, xa);
            let xv = fx.b.ins().fpromote(F64, xv);
            let cur = fx.b.use_var(acc);
            let prod = fx.b.ins().fmul(w, xv);
            let sum = fx.b.ins().fadd(cur, prod);
            let nz = fx.b.ins().fcmp(FloatCC::NotEqual, w, z);
            let nv = fx.b.ins().select(nz, sum, cur);
            fx.b.def_var(acc, nv);
        }
        let v = fx.b.use_var(acc);
        let ex = fx.b.ins().f64const(rz.extrapolation as f64);
        let v = fx.b.ins().select(valid, v, ex);
        let v = fx.b.ins().fdemote(F32, v);
        let o = fx.dot(ix, &ost);
        let oa = fx.addr(a.outs[0], o, 4);
        fx.store(v, oa);
    });
}

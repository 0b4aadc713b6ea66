//! ConvTranspose by scattering each input element through each kernel tap, in the
//! evaluator's loop order (channel, tap, output channel, input position), so every output
//! element receives its contributions in the same sequence. Any number of spatial axes.

use super::super::fx::Fx;
use super::{Args, strides};
use cranelift_codegen::ir::InstBuilder;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{F32, I8};
use kiln_ir::op::ConvTranspose;
use kiln_ir::{Graph, NodeId};

pub(crate) fn conv_transpose(fx: &mut Fx, g: &Graph, n: NodeId, c: &ConvTranspose, a: &Args) {
    let node = g.node(n);
    let xs = &g.value(node.inputs[0]).ty.shape;
    let ws = &g.value(node.inputs[1]).ty.shape;
    let out = &g.value(node.outputs[0]).ty.shape;
    let r = xs.len() - 2;
    let w = &c.window;
    let (nb, ci) = (xs[0] as i64, xs[1] as i64);
    let grp = c.group as i64;
    let (cg, mg) = (ci / grp, ws[1] as i64);
    let m = mg * grp;
    let isp: Vec<i64> = xs[2..].iter().map(|&d| d as i64).collect();
    let osp: Vec<i64> = out[2..].iter().map(|&d| d as i64).collect();
    let kern: Vec<i64> = w.kernel.iter().map(|&d| d as i64).collect();
    let (pin, pout, k) = (
        isp.iter().product::<i64>(),
        osp.iter().product::<i64>(),
        kern.iter().product::<i64>(),
    );
    let (ist, ost, kst) = (strides(&xs[2..]), strides(&out[2..]), strides(&w.kernel));
    // y = bias (or 0)
    fx.for_n(nb * m, &mut |fx, plane| {
        let oc = fx.b.ins().urem_imm_u(plane, m);
        let init = match a.ins.get(2) {
            Some(&b) => {
                let ba = fx.addr(b, oc, 4);
                fx.load(F32, ba)
            }
            None => fx.f(F32, 0.0),
        };
        let yp = fx.addr(a.outs[0], plane, pout * 4);
        fx.for_ptrs(pout, &[(yp, 4)], &mut |fx, p| fx.store(init, p[0]));
    });
    let mut outer = vec![nb, grp, cg];
    outer.extend(&kern);
    outer.push(mg);
    fx.for_index(&outer, &mut |fx, ix| {
        let (b, gi, cc, mm) = (ix[0], ix[1], ix[2], ix[3 + r]);
        let kk = &ix[3..3 + r];
        let ch = fx.mul_imm(gi, cg);
        let ch = fx.b.ins().iadd(ch, cc);
        let tap = fx.dot(kk, &kst);
        let wi = fx.mul_imm(ch, mg);
        let wi = fx.b.ins().iadd(wi, mm);
        let wi = fx.mul_imm(wi, k);
        let wi = fx.b.ins().iadd(wi, tap);
        let wa = fx.addr(a.ins[1], wi, 4);
        let wv = fx.load(F32, wa);
        let xplane = fx.mul_imm(b, ci);
        let xplane = fx.b.ins().iadd(xplane, ch);
        let xp = fx.addr(a.ins[0], xplane, pin * 4);
        let oc = fx.mul_imm(gi, mg);
        let oc = fx.b.ins().iadd(oc, mm);
        let yplane = fx.mul_imm(b, m);
        let yplane = fx.b.ins().iadd(yplane, oc);
        let yp = fx.addr(a.outs[0], yplane, pout * 4);
        let kk = kk.to_vec();
        fx.for_index(&isp, &mut |fx, ii| {
            let mut ok = fx.b.ins().iconst(I8, 1);
            let mut yo = fx.i(0);
            for d in 0..r {
                let o = fx.mul_imm(ii[d], w.strides[d] as i64);
                let kd = fx.mul_imm(kk[d], w.dilations[d] as i64);
                let o = fx.b.ins().iadd(o, kd);
                let o = fx.add_imm(o, -(w.pads[d] as i64));
                let inside = fx.b.ins().icmp_imm_u(IntCC::UnsignedLessThan, o, osp[d]);
                ok = fx.b.ins().band(ok, inside);
                let t = fx.mul_imm(o, ost[d]);
                yo = fx.b.ins().iadd(yo, t);
            }
            let xo = fx.dot(ii, &ist);
            fx.if_else(
                ok,
                &mut |fx| {
                    let xa = fx.addr(xp, xo, 4);
                    let xv = fx.load(F32, xa);
                    let ya = fx.addr(yp, yo, 4);
                    let yv = fx.load(F32, ya);
                    let pr = fx.mul(xv, wv);
                    let s = fx.add(yv, pr);
                    fx.store(s, ya);
                },
                &mut |_| {},
            );
        });
    });
}

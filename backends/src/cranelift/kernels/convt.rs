//! ConvTranspose by scattering each input element through each kernel tap, in the
//! evaluator's loop order (channel, tap, output channel, input position), so every output
//! element receives its contributions in the same sequence.

use super::super::fx::Fx;
use super::Args;
use cranelift_codegen::ir::InstBuilder;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::F32;
use kiln_ir::op::ConvTranspose;
use kiln_ir::{Graph, NodeId};

pub(crate) fn supported(g: &Graph, n: NodeId) -> bool {
    matches!(g.value(g.node(n).inputs[0]).ty.shape.len(), 3 | 4)
}

pub(crate) fn conv_transpose(fx: &mut Fx, g: &Graph, n: NodeId, c: &ConvTranspose, a: &Args) {
    let node = g.node(n);
    let xs = &g.value(node.inputs[0]).ty.shape;
    let ws = &g.value(node.inputs[1]).ty.shape;
    let out = &g.value(node.outputs[0]).ty.shape;
    let u = |v: usize| v as i64;
    let w = &c.window;
    // View 1-D as 2-D with a unit height.
    let (h, wd, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw) = if xs.len() == 3 {
        (
            1,
            u(xs[2]),
            1,
            u(out[2]),
            1,
            u(w.kernel[0]),
            1,
            u(w.strides[0]),
            1,
            u(w.dilations[0]),
            0,
            u(w.pads[0]),
        )
    } else {
        (
            u(xs[2]),
            u(xs[3]),
            u(out[2]),
            u(out[3]),
            u(w.kernel[0]),
            u(w.kernel[1]),
            u(w.strides[0]),
            u(w.strides[1]),
            u(w.dilations[0]),
            u(w.dilations[1]),
            u(w.pads[0]),
            u(w.pads[1]),
        )
    };
    let (nb, ci) = (u(xs[0]), u(xs[1]));
    let grp = c.group as i64;
    let (cg, mg) = (ci / grp, u(ws[1]));
    let m = mg * grp;
    let (pin, pout, k) = (h * wd, oh * ow, kh * kw);
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
    fx.for_index(&[nb, grp, cg, kh, kw, mg], &mut |fx, ix| {
        let (b, gi, cc, ikh, ikw, mm) = (ix[0], ix[1], ix[2], ix[3], ix[4], ix[5]);
        let ch = fx.mul_imm(gi, cg);
        let ch = fx.b.ins().iadd(ch, cc);
        let tap = fx.mul_imm(ikh, kw);
        let tap = fx.b.ins().iadd(tap, ikw);
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
        let kdh = fx.mul_imm(ikh, dh);
        let kdw = fx.mul_imm(ikw, dw);
        fx.for_n(h, &mut |fx, ih| {
            let o_h = fx.mul_imm(ih, sh);
            let o_h = fx.b.ins().iadd(o_h, kdh);
            let o_h = fx.add_imm(o_h, -ph);
            let okh = fx.b.ins().icmp_imm_u(IntCC::UnsignedLessThan, o_h, oh);
            fx.for_n(wd, &mut |fx, iw| {
                let o_w = fx.mul_imm(iw, sw);
                let o_w = fx.b.ins().iadd(o_w, kdw);
                let o_w = fx.add_imm(o_w, -pw);
                let okw = fx.b.ins().icmp_imm_u(IntCC::UnsignedLessThan, o_w, ow);
                let ok = fx.b.ins().band(okh, okw);
                fx.if_else(
                    ok,
                    &mut |fx| {
                        let xi = fx.mul_imm(ih, wd);
                        let xi = fx.b.ins().iadd(xi, iw);
                        let xa = fx.addr(xp, xi, 4);
                        let xv = fx.load(F32, xa);
                        let yi = fx.mul_imm(o_h, ow);
                        let yi = fx.b.ins().iadd(yi, o_w);
                        let ya = fx.addr(yp, yi, 4);
                        let yv = fx.load(F32, ya);
                        let pr = fx.mul(xv, wv);
                        let s = fx.add(yv, pr);
                        fx.store(s, ya);
                    },
                    &mut |_| {},
                );
            });
        });
    });
}

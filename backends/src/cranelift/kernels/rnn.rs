//! RNN, GRU and LSTM, step by step in the evaluator's order (gate pre-activations summed as
//! W·x + R·h + Wb + Rb, then the ONNX update equations). Scratch holds h, c, the gate
//! vectors W·x and R·h, and GRU's reset-gated temporaries.

use super::super::fx::Fx;
use super::Args;
use super::elementwise::unary_op;
use cranelift_codegen::ir::types::F32;
use cranelift_codegen::ir::{InstBuilder, Value};
use kiln_ir::op::{Activation, Rnn, RnnDirection, RnnKind};
use kiln_ir::{Graph, NodeId};

fn gates(r: &Rnn) -> usize {
    match r.kind {
        RnnKind::Rnn => 1,
        RnnKind::Gru { .. } => 3,
        RnnKind::Lstm { .. } => 4,
    }
}

/// Scratch floats: h, c, W·x, R·h, and three h-sized GRU temporaries.
pub(crate) fn scratch_bytes(r: &Rnn) -> usize {
    4 * r.hidden * (2 + 2 * gates(r) + 3)
}

fn act(fx: &mut Fx, a: Activation, x: Value) -> Value {
    if let Some(u) = a.unary() {
        return unary_op(fx, F32, u, x);
    }
    match a {
        Activation::Affine(al, be) => {
            let (a, b) = (fx.f(F32, al), fx.f(F32, be));
            let m = fx.mul(a, x);
            fx.add(m, b)
        }
        Activation::ScaledTanh(al, be) => {
            let (a, b) = (fx.f(F32, al), fx.f(F32, be));
            let m = fx.mul(b, x);
            let t = fx.tanh(F32, m);
            fx.mul(a, t)
        }
        _ => unreachable!("every other activation is a unary op"),
    }
}

fn clip(fx: &mut Fx, r: &Rnn, v: Value) -> Value {
    match r.clip {
        Some(c) => {
            let lo = fx.f(F32, -c);
            let hi = fx.f(F32, c);
            let v = fx.b.ins().fmax(v, lo);
            fx.b.ins().fmin(v, hi)
        }
        None => v,
    }
}

/// `out[j] = sum_k m[j*len + k] * v[k]` for `rows` rows, accumulated from zero in `k` order.
/// Eight rows at a time where the vectors allow: each 4 x 4 block of `m` transposed in
/// registers so a lane is one row, and each lane adds its products in `k` order, as the
/// scalar loop does (the same bits), with eight sums in flight instead of one.
fn matvec(fx: &mut Fx, m: Value, v: Value, rows: usize, len: usize, out: Value) {
    use cranelift_codegen::ir::types::{F32X4, I32X4};
    let (rows, len) = (rows as i64, len as i64);
    let blocks = if fx.simd && len % 4 == 0 { rows / 8 } else { 0 };
    fx.for_ptrs(blocks, &[(m, 8 * len * 4), (out, 32)], &mut |fx, p| {
        let accs: Vec<_> = (0..2)
            .map(|_| {
                let a = fx.b.declare_var(F32X4);
                let z = fx.f(F32X4, 0.0);
                fx.b.def_var(a, z);
                a
            })
            .collect();
        fx.for_ptrs(len / 4, &[(p[0], 16), (v, 16)], &mut |fx, q| {
            let vv = fx.load(F32X4, q[1]);
            let vs: Vec<Value> = (0..4u8)
                .map(|i| {
                    let e = fx.b.ins().extractlane(vv, i);
                    fx.b.ins().splat(F32X4, e)
                })
                .collect();
            for (blk, &acc) in accs.iter().enumerate() {
                let r: Vec<Value> = (0..4)
                    .map(|i| {
                        let a = fx.add_imm(q[0], (4 * blk as i64 + i) * len * 4);
                        fx.load(I32X4, a)
                    })
                    .collect();
                let cols = super::dwconv::transpose4(fx, [r[0], r[1], r[2], r[3]]);
                for (c, &x) in cols.iter().zip(&vs) {
                    let c = fx.bits(F32X4, *c);
                    let pr = fx.mul(c, x);
                    let cur = fx.b.use_var(acc);
                    let s = fx.add(cur, pr);
                    fx.b.def_var(acc, s);
                }
            }
        });
        for (blk, &acc) in accs.iter().enumerate() {
            let a = fx.add_imm(p[1], 16 * blk as i64);
            let s = fx.b.use_var(acc);
            fx.store(s, a);
        }
    });
    let done = 8 * blocks;
    let (m, out) = (fx.add_imm(m, done * len * 4), fx.add_imm(out, done * 4));
    fx.for_ptrs(rows - done, &[(m, len * 4), (out, 4)], &mut |fx, p| {
        let acc = fx.b.declare_var(F32);
        let z = fx.f(F32, 0.0);
        fx.b.def_var(acc, z);
        fx.for_ptrs(len, &[(p[0], 4), (v, 4)], &mut |fx, q| {
            let (mv, vv) = (fx.load(F32, q[0]), fx.load(F32, q[1]));
            let pr = fx.mul(mv, vv);
            let cur = fx.b.use_var(acc);
            let s = fx.add(cur, pr);
            fx.b.def_var(acc, s);
        });
        let r = fx.b.use_var(acc);
        fx.store(r, p[1]);
    });
}

fn at(fx: &mut Fx, base: Value, j: Value, off: i64) -> Value {
    let p = fx.add_imm(base, off * 4);
    let a = fx.addr(p, j, 4);
    fx.load(F32, a)
}

fn put(fx: &mut Fx, base: Value, j: Value, v: Value) {
    let a = fx.addr(base, j, 4);
    fx.store(v, a);
}

pub(crate) fn rnn(fx: &mut Fx, g: &Graph, n: NodeId, r: &Rnn, a: &Args) {
    let xs = &g.value(g.node(n).inputs[0]).ty.shape;
    let (seq, batch, isz) = if r.batch_major {
        (xs[1], xs[0], xs[2])
    } else {
        (xs[0], xs[1], xs[2])
    };
    let h = r.hidden as i64;
    let dirs = r.direction.count();
    let ng = gates(r) as i64;
    let per_dir = r.activations.len() / dirs;
    let lstm = matches!(r.kind, RnnKind::Lstm { .. });
    let hs = a.scratch;
    let cs = fx.add_imm(hs, h * 4);
    let gx = fx.add_imm(hs, 2 * h * 4);
    let gh = fx.add_imm(gx, ng * h * 4);
    let t1 = fx.add_imm(gh, ng * h * 4);
    let t2 = fx.add_imm(t1, h * 4);
    let t3 = fx.add_imm(t2, h * 4);
    let peep = if lstm { a.ins.get(6).copied() } else { None };
    for d in 0..dirs {
        let acts = &r.activations[d * per_dir..(d + 1) * per_dir];
        let reverse = r.direction == RnnDirection::Reverse || (r.direction == RnnDirection::Bidirectional && d == 1);
        let di = d as i64;
        let wd = fx.add_imm(a.ins[1], di * ng * h * isz as i64 * 4);
        let rd = fx.add_imm(a.ins[2], di * ng * h * h * 4);
        let wb = fx.add_imm(a.ins[3], di * 2 * ng * h * 4);
        let rb = fx.add_imm(wb, ng * h * 4);
        fx.for_n(batch as i64, &mut |fx, bi| {
            let state = if r.batch_major {
                let s = fx.mul_imm(bi, dirs as i64);
                fx.add_imm(s, di)
            } else {
                fx.add_imm(bi, di * batch as i64)
            };
            let so = fx.mul_imm(state, h * 4);
            let mut inits = vec![(hs, a.ins[4])];
            if lstm {
                inits.push((cs, a.ins[5]));
            }
            for (dst, src) in inits {
                let sp = fx.b.ins().iadd(src, so);
                fx.for_ptrs(h, &[(sp, 4), (dst, 4)], &mut |fx, p| {
                    let v = fx.load(F32, p[0]);
                    fx.store(v, p[1]);
                });
            }
            fx.for_n(seq as i64, &mut |fx, s| {
                let tt = if reverse {
                    let last = fx.i(seq as i64 - 1);
                    fx.b.ins().isub(last, s)
                } else {
                    s
                };
                let xo = if r.batch_major {
                    let v = fx.mul_imm(bi, seq as i64);
                    fx.b.ins().iadd(v, tt)
                } else {
                    let v = fx.mul_imm(tt, batch as i64);
                    fx.b.ins().iadd(v, bi)
                };
                let xp = fx.addr(a.ins[0], xo, isz as i64 * 4);
                matvec(fx, wd, xp, (ng * h) as usize, isz, gx);
                matvec(fx, rd, hs, (ng * h) as usize, h as usize, gh);
                // Gate pre-activation: W·x + R·h + Wb + Rb.
                let pre = |fx: &mut Fx, j: Value, gate: i64| {
                    let o = gate * h;
                    let (x1, x2, x3, x4) = (at(fx, gx, j, o), at(fx, gh, j, o), at(fx, wb, j, o), at(fx, rb, j, o));
                    let s = fx.add(x1, x2);
                    let s = fx.add(s, x3);
                    fx.add(s, x4)
                };
                match r.kind {
                    RnnKind::Rnn => fx.for_n(h, &mut |fx, j| {
                        let p = pre(fx, j, 0);
                        let p = clip(fx, r, p);
                        let v = act(fx, acts[0], p);
                        put(fx, hs, j, v);
                    }),
                    RnnKind::Lstm { input_forget } => fx.for_n(h, &mut |fx, j| {
                        let pv = |fx: &mut Fx, k: i64| match peep {
                            Some(p) => at(fx, p, j, di * 3 * h + k * h),
                            None => fx.f(F32, 0.0),
                        };
                        let c_old = at(fx, cs, j, 0);
                        let p0 = pre(fx, j, 0);
                        let pi = pv(fx, 0);
                        let pic = fx.mul(pi, c_old);
                        let iv = fx.add(p0, pic);
                        let iv = clip(fx, r, iv);
                        let ig = act(fx, acts[0], iv);
                        let fg = if input_forget {
                            let one = fx.f(F32, 1.0);
                            fx.sub(one, ig)
                        } else {
                            let p2 = pre(fx, j, 2);
                            let pf = pv(fx, 2);
                            let pfc = fx.mul(pf, c_old);
                            let fv = fx.add(p2, pfc);
                            let fv = clip(fx, r, fv);
                            act(fx, acts[0], fv)
                        };
                        let p3 = pre(fx, j, 3);
                        let cv = clip(fx, r, p3);
                        let cg = act(fx, acts[1], cv);
                        let fc = fx.mul(fg, c_old);
                        let icg = fx.mul(ig, cg);
                        let c_new = fx.add(fc, icg);
                        put(fx, cs, j, c_new);
                        let p1 = pre(fx, j, 1);
                        let po = pv(fx, 1);
                        let poc = fx.mul(po, c_new);
                        let ov = fx.add(p1, poc);
                        let ov = clip(fx, r, ov);
                        let og = act(fx, acts[0], ov);
                        let th = act(fx, acts[2], c_new);
                        let h_new = fx.mul(og, th);
                        put(fx, hs, j, h_new);
                    }),
                    RnnKind::Gru { linear_before_reset } => {
                        if linear_before_reset {
                            fx.for_n(h, &mut |fx, j| {
                                let rp = pre(fx, j, 1);
                                let rp = clip(fx, r, rp);
                                let rg = act(fx, acts[0], rp);
                                let (a2, b2) = (at(fx, gh, j, 2 * h), at(fx, rb, j, 2 * h));
                                let inner = fx.add(a2, b2);
                                let gated = fx.mul(rg, inner);
                                let x2 = at(fx, gx, j, 2 * h);
                                let s = fx.add(x2, gated);
                                let w2 = at(fx, wb, j, 2 * h);
                                let s = fx.add(s, w2);
                                let s = clip(fx, r, s);
                                let hn = act(fx, acts[1], s);
                                put(fx, t3, j, hn);
                            });
                        } else {
                            // r ⊙ h first, then R_h · (r ⊙ h).
                            fx.for_n(h, &mut |fx, j| {
                                let rp = pre(fx, j, 1);
                                let rp = clip(fx, r, rp);
                                let rg = act(fx, acts[0], rp);
                                let hv = at(fx, hs, j, 0);
                                let rh = fx.mul(rg, hv);
                                put(fx, t1, j, rh);
                            });
                            let rh_rows = fx.add_imm(rd, 2 * h * h * 4);
                            matvec(fx, rh_rows, t1, h as usize, h as usize, t2);
                            fx.for_n(h, &mut |fx, j| {
                                let (x2, tmp) = (at(fx, gx, j, 2 * h), at(fx, t2, j, 0));
                                let s = fx.add(x2, tmp);
                                let r2 = at(fx, rb, j, 2 * h);
                                let s = fx.add(s, r2);
                                let w2 = at(fx, wb, j, 2 * h);
                                let s = fx.add(s, w2);
                                let s = clip(fx, r, s);
                                let hn = act(fx, acts[1], s);
                                put(fx, t3, j, hn);
                            });
                        }
                        fx.for_n(h, &mut |fx, j| {
                            let zp = pre(fx, j, 0);
                            let zp = clip(fx, r, zp);
                            let z = act(fx, acts[0], zp);
                            let one = fx.f(F32, 1.0);
                            let omz = fx.sub(one, z);
                            let hn = at(fx, t3, j, 0);
                            let a1 = fx.mul(omz, hn);
                            let hv = at(fx, hs, j, 0);
                            let a2 = fx.mul(z, hv);
                            let v = fx.add(a1, a2);
                            put(fx, hs, j, v);
                        });
                    }
                }
                let yo = if r.batch_major {
                    let v = fx.mul_imm(bi, seq as i64);
                    let v = fx.b.ins().iadd(v, tt);
                    let v = fx.mul_imm(v, dirs as i64);
                    fx.add_imm(v, di)
                } else {
                    let v = fx.mul_imm(tt, dirs as i64);
                    let v = fx.add_imm(v, di);
                    let v = fx.mul_imm(v, batch as i64);
                    fx.b.ins().iadd(v, bi)
                };
                let yp = fx.addr(a.outs[0], yo, h * 4);
                fx.for_ptrs(h, &[(hs, 4), (yp, 4)], &mut |fx, p| {
                    let v = fx.load(F32, p[0]);
                    fx.store(v, p[1]);
                });
            });
            let mut finals = vec![(1usize, hs)];
            if lstm {
                finals.push((2, cs));
            }
            for (k, src) in finals {
                let dp = fx.b.ins().iadd(a.outs[k], so);
                fx.for_ptrs(h, &[(src, 4), (dp, 4)], &mut |fx, p| {
                    let v = fx.load(F32, p[0]);
                    fx.store(v, p[1]);
                });
            }
        });
    }
}

//! The one matrix-product loop behind Conv, MatMul and Gemm: `c[i][j] = init(i) + sum_p
//! a[i][p] * b[p][j]`, added in p order (as the evaluator does), with 4 x f32x4 accumulators
//! held in registers across p, then single vectors, then scalars for the ragged end.
//! Convolutions become this product after im2col into arena scratch; a 1x1, stride-1,
//! unpadded convolution reads its input directly.

use super::super::fx::Fx;
use super::nest::F4;
use super::{Args, Target};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{F32, I32, I64};
use cranelift_codegen::ir::{InstBuilder, Type, Value};
use kiln_ir::op::{Conv, UnaryOp};
use kiln_ir::{Graph, NodeId};

/// A matrix in memory: element (r, c) at `base + r * row + c * col` (bytes). `half`
/// elements are binary16 (weights under `--quantize fp16`), widened exactly as loaded.
#[derive(Clone, Copy)]
pub(crate) struct Mat {
    pub base: Value,
    pub row: i64,
    pub col: i64,
    pub half: bool,
}

impl Mat {
    pub fn f32(base: Value, row: i64, col: i64) -> Mat {
        Mat {
            base,
            row,
            col,
            half: false,
        }
    }

    fn elem(&self) -> i64 {
        if self.half { 2 } else { 4 }
    }
}

/// Loads one f32 (or f32x4) element of `m` at `addr`.
fn load_el(fx: &mut Fx, m: &Mat, ty: Type, addr: Value) -> Value {
    match (m.half, ty == F32) {
        (false, _) => fx.load(ty, addr),
        (true, true) => {
            let h = fx.load(cranelift_codegen::ir::types::I16, addr);
            let h = fx.b.ins().uextend(I64, h);
            fx.f16_to_f32(h)
        }
        (true, false) => fx.load_f16x4(addr),
    }
}

/// Emits `c = init + a * b` for an `m x k` by `k x n` product.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    fx: &mut Fx,
    t: Target,
    m: usize,
    k: usize,
    n: usize,
    a: Mat,
    b: Mat,
    c: Mat,
    init: &dyn Fn(&mut Fx, Value) -> Value,
    post: Option<UnaryOp>,
) {
    let vec_ok = t.simd && b.col == b.elem() && c.col == 4;
    fx.for_n(m as i64, &mut |fx, i| {
        let arow = fx.addr(a.base, i, a.row);
        let crow = fx.addr(c.base, i, c.row);
        let start = init(fx, i);
        let mut j = 0usize;
        let block = |fx: &mut Fx, ty: Type, units: usize, count: usize, j0: usize| {
            let lanes = ty.lane_count() as usize;
            let width = units * lanes;
            let b0 = fx.add_imm(b.base, j0 as i64 * b.col);
            let c0 = fx.add_imm(crow, j0 as i64 * c.col);
            fx.for_ptrs(
                count as i64,
                &[(b0, width as i64 * b.col), (c0, width as i64 * c.col)],
                &mut |fx, pp| {
                    let (bcol, ccol) = (pp[0], pp[1]);
                    let s = fx.splat(ty, start);
                    let accs: Vec<_> = (0..units)
                        .map(|_| {
                            let v = fx.b.declare_var(ty);
                            fx.b.def_var(v, s);
                            v
                        })
                        .collect();
                    fx.for_ptrs(k as i64, &[(arow, a.col), (bcol, b.row)], &mut |fx, pp| {
                        let (aa, brow) = (pp[0], pp[1]);
                        let av = load_el(fx, &a, F32, aa);
                        let av = fx.splat(ty, av);
                        for (u, &acc) in accs.iter().enumerate() {
                            let ba = fx.add_imm(brow, (u * lanes) as i64 * b.col);
                            let bv = load_el(fx, &b, ty, ba);
                            let pr = fx.mul(av, bv);
                            let cur = fx.b.use_var(acc);
                            let sum = fx.add(cur, pr);
                            fx.b.def_var(acc, sum);
                        }
                    });
                    for (u, &acc) in accs.iter().enumerate() {
                        let v = fx.b.use_var(acc);
                        let v = match post {
                            Some(op) => super::elementwise::unary_op(fx, ty, op, v),
                            None => v,
                        };
                        let ca = fx.add_imm(ccol, (u * lanes) as i64 * c.col);
                        fx.store(v, ca);
                    }
                },
            );
        };
        if vec_ok {
            let quads = n / 16;
            block(fx, F4, 4, quads, 0);
            j = quads * 16;
            let singles = (n - j) / 4;
            block(fx, F4, 1, singles, j);
            j += singles * 4;
        }
        let rest = n - j;
        block(fx, F32, 1, rest, j);
    });
}

/// Geometry of a 1-D or 2-D convolution viewed as 2-D.
struct Geo {
    h: i64,
    w: i64,
    oh: i64,
    ow: i64,
    kh: i64,
    kw: i64,
    sh: i64,
    sw: i64,
    dh: i64,
    dw: i64,
    ph: i64,
    pw: i64,
}

fn geo(x: &[usize], out: &[usize], c: &Conv) -> Geo {
    let w = &c.window;
    let u = |v: usize| v as i64;
    if x.len() == 3 {
        Geo {
            h: 1,
            w: u(x[2]),
            oh: 1,
            ow: u(out[2]),
            kh: 1,
            kw: u(w.kernel[0]),
            sh: 1,
            sw: u(w.strides[0]),
            dh: 1,
            dw: u(w.dilations[0]),
            ph: 0,
            pw: u(w.pads[0]),
        }
    } else {
        Geo {
            h: u(x[2]),
            w: u(x[3]),
            oh: u(out[2]),
            ow: u(out[3]),
            kh: u(w.kernel[0]),
            kw: u(w.kernel[1]),
            sh: u(w.strides[0]),
            sw: u(w.strides[1]),
            dh: u(w.dilations[0]),
            dw: u(w.dilations[1]),
            ph: u(w.pads[0]),
            pw: u(w.pads[1]),
        }
    }
}

fn pointwise(c: &Conv) -> bool {
    c.window.kernel.iter().all(|&k| k == 1)
        && c.window.strides.iter().all(|&s| s == 1)
        && c.window.pads.iter().all(|&p| p == 0)
}

/// Bytes of im2col scratch a tile may use; a tile is as many output rows as fit.
const TILE_BYTES: i64 = 64 * 1024;

/// Output rows per im2col tile.
fn tile_rows(gm: &Geo, cg: i64) -> i64 {
    let per_row = cg * gm.kh * gm.kw * gm.ow * 4;
    (TILE_BYTES / per_row.max(1)).clamp(1, gm.oh.max(1))
}

/// im2col scratch: one tile of one group's `[Cg * K, rows * OW]` matrix (none for
/// pointwise convolutions, which read their input directly).
pub(crate) fn conv_scratch(g: &Graph, n: NodeId) -> usize {
    let node = g.node(n);
    let kiln_ir::Op::Conv(c) = &node.op else { return 0 };
    if pointwise(c) {
        return 0;
    }
    if let Some(d) = Depthwise::of(g, n, c) {
        return d.scratch();
    }
    let ws = &g.value(node.inputs[1]).ty.shape;
    let gm = geo(&g.value(node.inputs[0]).ty.shape, &g.value(node.outputs[0]).ty.shape, c);
    let cg = ws[1] as i64;
    (cg * gm.kh * gm.kw * tile_rows(&gm, cg) * gm.ow * 4) as usize
}

pub(crate) fn conv(fx: &mut Fx, g: &Graph, n: NodeId, c: &Conv, a: &Args, t: Target) {
    let node = g.node(n);
    let xs = &g.value(node.inputs[0]).ty.shape;
    let ws = &g.value(node.inputs[1]).ty.shape;
    let out = &g.value(node.outputs[0]).ty.shape;
    let gm = geo(xs, out, c);
    let (nb, ci, m, cg) = (xs[0] as i64, xs[1] as i64, ws[0] as i64, ws[1] as i64);
    let mg = m / c.group as i64;
    let k = gm.kh * gm.kw;
    let (hw, p) = (gm.h * gm.w, gm.oh * gm.ow);
    let has_bias = node.inputs.len() > 2;
    let pw = pointwise(c);
    if let Some(d) = Depthwise::of(g, n, c) {
        return depthwise(fx, g, n, c, &d, a, t);
    }
    fx.for_n(nb, &mut |fx, b| {
        fx.for_n(c.group as i64, &mut |fx, gi| {
            let plane = fx.mul_imm(b, ci);
            let ch0 = fx.mul_imm(gi, cg);
            let plane = fx.b.ins().iadd(plane, ch0);
            let xg = fx.addr(a.ins[0], plane, hw * 4);
            let oc0 = fx.mul_imm(gi, mg);
            let half = g.value(node.inputs[1]).ty.dtype.scalar == kiln_ir::Scalar::F16;
            let es = if half { 2 } else { 4 };
            let wg = fx.addr(a.ins[1], oc0, cg * k * es);
            let oplane = fx.mul_imm(b, m);
            let oplane = fx.b.ins().iadd(oplane, oc0);
            let og = fx.addr(a.outs[0], oplane, p * 4);
            let bias = a.ins.get(2).copied();
            let init = |fx: &mut Fx, i: Value| -> Value {
                match bias.filter(|_| has_bias) {
                    Some(bp) => {
                        let idx = fx.b.ins().iadd(oc0, i);
                        let ba = fx.addr(bp, idx, 4);
                        fx.load(F32, ba)
                    }
                    None => fx.f(F32, 0.0),
                }
            };
            let weights = Mat {
                base: wg,
                row: cg * k * es,
                col: es,
                half,
            };
            if pw {
                let cols = Mat::f32(xg, p * 4, 4);
                let outm = Mat::f32(og, p * 4, 4);
                gemm(
                    fx,
                    t,
                    mg as usize,
                    (cg * k) as usize,
                    p as usize,
                    weights,
                    cols,
                    outm,
                    &init,
                    c.fused,
                );
                return;
            }
            // im2col one band of output rows at a time, then multiply into that band.
            let rows = tile_rows(&gm, cg);
            let band = |fx: &mut Fx, oh0: Value, nrows: i64| {
                im2col(fx, &gm, cg, xg, a.scratch, a.aux[0], oh0, nrows);
                let cols = Mat::f32(a.scratch, nrows * gm.ow * 4, 4);
                let ob = fx.addr(og, oh0, gm.ow * 4);
                let outm = Mat::f32(ob, p * 4, 4);
                gemm(
                    fx,
                    t,
                    mg as usize,
                    (cg * k) as usize,
                    (nrows * gm.ow) as usize,
                    weights,
                    cols,
                    outm,
                    &init,
                    c.fused,
                );
            };
            let full = gm.oh / rows;
            fx.for_n(full, &mut |fx, bi| {
                let oh0 = fx.mul_imm(bi, rows);
                band(fx, oh0, rows);
            });
            let rest = gm.oh - full * rows;
            if rest > 0 {
                let oh0 = fx.i(full * rows);
                band(fx, oh0, rest);
            }
        });
    });
}

/// A depthwise convolution (one input channel per output, f32 weights) with unit strides and
/// dilations: per channel, a zero-padded copy of the plane with rows `pw` apart makes every
/// tap one fixed offset, so the outputs are one run over the flattened plane, four lanes at a
/// time with the sum in registers across the taps (bias first, then the taps in order, as
/// im2col and `gemm` add them). The `pw - ow` extra columns per row are dropped.
struct Depthwise {
    /// Padded plane rows and columns, and where the input starts in it.
    ph: i64,
    pw: i64,
    top: i64,
    left: i64,
    /// Flattened outputs computed: `oh` rows of `pw`, rounded up to whole vectors.
    run: i64,
    kw: i64,
}

impl Depthwise {
    fn of(g: &Graph, n: NodeId, c: &Conv) -> Option<Depthwise> {
        let node = g.node(n);
        let (xs, w) = (&g.value(node.inputs[0]).ty.shape, &g.value(node.inputs[1]).ty);
        let out = &g.value(node.outputs[0]).ty.shape;
        let unit = c.window.strides.iter().chain(&c.window.dilations).all(|&v| v == 1);
        let f32w = w.dtype.scalar == kiln_ir::Scalar::F32;
        if pointwise(c) || xs.len() != 4 || c.group != xs[1] || w.shape[0] != xs[1] || !unit || !f32w {
            return None;
        }
        let gm = geo(xs, out, c);
        let (ph, pw) = (gm.oh + gm.kh - 1, gm.ow + gm.kw - 1);
        if gm.ph + gm.h > ph || gm.pw + gm.w > pw {
            return None;
        }
        Some(Depthwise {
            ph,
            pw,
            top: gm.ph,
            left: gm.pw,
            run: (gm.oh * pw + 3) / 4 * 4,
            kw: gm.kw,
        })
    }

    /// Floats of the padded plane, with room for the last vector's reads past it.
    fn plane(&self) -> i64 {
        (self.ph * self.pw + self.kw + 2 + 3) / 4 * 4
    }

    fn scratch(&self) -> usize {
        (4 * (self.plane() + self.run)) as usize
    }
}

fn depthwise(fx: &mut Fx, g: &Graph, n: NodeId, c: &Conv, d: &Depthwise, a: &Args, t: Target) {
    let node = g.node(n);
    let (xs, out) = (&g.value(node.inputs[0]).ty.shape, &g.value(node.outputs[0]).ty.shape);
    let gm = geo(xs, out, c);
    let (ch, hw, p) = (xs[1] as i64, gm.h * gm.w, gm.oh * gm.ow);
    let k = gm.kh * gm.kw;
    let has_bias = node.inputs.len() > 2;
    let plane = a.scratch;
    let acc = fx.add_imm(a.scratch, 4 * d.plane());
    let (ty, lanes) = if t.simd { (F4, 4) } else { (F32, 1) };
    let zero = fx.f(F32, 0.0);
    fx.for_n(xs[0] as i64 * ch, &mut |fx, bc| {
        let c_ = fx.b.ins().srem_imm_s(bc, ch);
        fx.for_ptrs(d.plane(), &[(plane, 4)], &mut |fx, q| fx.store(zero, q[0]));
        let xplane = fx.addr(a.ins[0], bc, hw * 4);
        let first = fx.add_imm(plane, 4 * (d.top * d.pw + d.left));
        fx.for_ptrs(gm.h, &[(xplane, gm.w * 4), (first, d.pw * 4)], &mut |fx, r| {
            fx.for_ptrs(gm.w, &[(r[0], 4), (r[1], 4)], &mut |fx, q| {
                let v = fx.load(F32, q[0]);
                fx.store(v, q[1]);
            });
        });
        let wbase = fx.addr(a.ins[1], c_, k * 4);
        let taps: Vec<(i64, Value)> = (0..k)
            .map(|i| {
                let wa = fx.add_imm(wbase, 4 * i);
                let w = fx.load(F32, wa);
                (4 * (i / gm.kw * d.pw + i % gm.kw), fx.splat(ty, w))
            })
            .collect();
        let bias = if has_bias {
            let ba = fx.addr(a.ins[2], c_, 4);
            fx.load(F32, ba)
        } else {
            zero
        };
        let b4 = fx.splat(ty, bias);
        fx.for_ptrs(d.run / lanes, &[(plane, 4 * lanes), (acc, 4 * lanes)], &mut |fx, q| {
            let mut s = b4;
            for &(off, w) in &taps {
                let xa = fx.add_imm(q[0], off);
                let x = fx.load(ty, xa);
                let pr = fx.mul(x, w);
                s = fx.add(s, pr);
            }
            let s = match c.fused {
                Some(op) => super::elementwise::unary_op(fx, ty, op, s),
                None => s,
            };
            fx.store(s, q[1]);
        });
        let ybase = fx.addr(a.outs[0], bc, p * 4);
        fx.for_ptrs(gm.oh, &[(acc, 4 * d.pw), (ybase, gm.ow * 4)], &mut |fx, r| {
            fx.for_ptrs(gm.ow, &[(r[0], 4), (r[1], 4)], &mut |fx, q| {
                let v = fx.load(F32, q[0]);
                fx.store(v, q[1]);
            });
        });
    });
}

/// Per kernel column kw: the output columns whose tap lands inside the input
/// (`lo..hi`) and the input column offset `kw*dw - pw`, as i32 triples.
pub(crate) fn conv_aux(g: &Graph, n: NodeId) -> Vec<Vec<u8>> {
    let node = g.node(n);
    let kiln_ir::Op::Conv(c) = &node.op else { unreachable!() };
    if pointwise(c) {
        return vec![];
    }
    let gm = geo(&g.value(node.inputs[0]).ty.shape, &g.value(node.outputs[0]).ty.shape, c);
    let mut t = Vec::new();
    for kw in 0..gm.kw {
        let off = kw * gm.dw - gm.pw;
        let valid: Vec<i64> = (0..gm.ow)
            .filter(|&ow| (0..gm.w).contains(&(ow * gm.sw + off)))
            .collect();
        let (lo, hi) = match (valid.first(), valid.last()) {
            (Some(&a), Some(&b)) => (a, b + 1),
            _ => (0, 0),
        };
        t.extend([lo as i32, hi as i32, off as i32]);
    }
    vec![t.iter().flat_map(|v| v.to_le_bytes()).collect()]
}

/// Fills `cols[(c*KH + kh)*KW + kw][oh*OW + ow]` with the input tap, or 0 in the padding:
/// per row one range check, then a zero run, a strided copy and a zero run.
#[allow(clippy::too_many_arguments)]
fn im2col(fx: &mut Fx, gm: &Geo, cg: i64, xg: Value, cols: Value, kw_tab: Value, oh0: Value, rows: i64) {
    let (hw, p) = (gm.h * gm.w, rows * gm.ow);
    let zero_run = |fx: &mut Fx, dst: Value, count: Value| {
        let z = fx.f(F32, 0.0);
        fx.for_ptrs_v(count, &[(dst, 4)], &mut |fx, q| fx.store(z, q[0]));
    };
    fx.for_n(cg, &mut |fx, cc| {
        let xc = fx.addr(xg, cc, hw * 4);
        let rc = fx.addr(cols, cc, gm.kh * gm.kw * p * 4);
        fx.for_n(gm.kh, &mut |fx, kh| {
            let rk = fx.addr(rc, kh, gm.kw * p * 4);
            let kd = fx.mul_imm(kh, gm.dh);
            let ih0 = fx.add_imm(kd, -gm.ph);
            fx.for_n(gm.kw, &mut |fx, kw| {
                let row = fx.addr(rk, kw, p * 4);
                let te = fx.addr(kw_tab, kw, 12);
                let field = |fx: &mut Fx, o: i64| {
                    let a = fx.add_imm(te, o);
                    let v = fx.load(I32, a);
                    fx.b.ins().sextend(I64, v)
                };
                let (lo, hi, off) = (field(fx, 0), field(fx, 4), field(fx, 8));
                let owv = fx.i(gm.ow);
                let tail = fx.b.ins().isub(owv, hi);
                let body_n = fx.b.ins().isub(hi, lo);
                fx.for_n(rows, &mut |fx, r| {
                    let orow = fx.addr(row, r, gm.ow * 4);
                    let oh = fx.b.ins().iadd(oh0, r);
                    let ih = fx.mul_imm(oh, gm.sh);
                    let ih = fx.b.ins().iadd(ih, ih0);
                    let ok = fx.b.ins().icmp_imm_u(IntCC::UnsignedLessThan, ih, gm.h);
                    fx.if_else(
                        ok,
                        &mut |fx| {
                            zero_run(fx, orow, lo);
                            let src = fx.mul_imm(ih, gm.w);
                            let so = fx.mul_imm(lo, gm.sw);
                            let src = fx.b.ins().iadd(src, so);
                            let src = fx.b.ins().iadd(src, off);
                            let sp = fx.addr(xc, src, 4);
                            let dp = fx.addr(orow, lo, 4);
                            fx.for_ptrs_v(body_n, &[(sp, gm.sw * 4), (dp, 4)], &mut |fx, q| {
                                let v = fx.load(F32, q[0]);
                                fx.store(v, q[1]);
                            });
                            let dt = fx.addr(orow, hi, 4);
                            zero_run(fx, dt, tail);
                        },
                        &mut |fx| {
                            let all = fx.i(gm.ow);
                            zero_run(fx, orow, all);
                        },
                    );
                });
            });
        });
    });
}

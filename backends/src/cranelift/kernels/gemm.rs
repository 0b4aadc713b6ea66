//! The one matrix-product loop behind Conv, MatMul and Gemm: `c[i][j] = init(i) + sum_p
//! a[i][p] * b[p][j]`, added in p order (as the evaluator does), with 4 x f32x4 accumulators
//! held in registers across p, then single vectors, then scalars for the ragged end.
//! Convolutions become this product after im2col into arena scratch; a 1x1, stride-1,
//! unpadded convolution reads its input directly.

use super::super::fx::Fx;
use super::dwconv::Depthwise;
use super::nest::F4;
use super::wide::{Clamp, Product};
use super::{Args, Target};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{F32, I32, I64};
use cranelift_codegen::ir::{InstBuilder, StackSlotData, StackSlotKind, Type, Value};
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

/// Emits `c = init + a * b` for an `m x k` by `k x n` product: rows in panels of
/// [`PANEL_ROWS`] (each `a` element broadcast once per panel column step), columns in blocks
/// of vectors, the sums in registers across `p`. Each sum is still `init` then the products
/// in `p` order, so without `fma` the result is the evaluator's to the bit; with it, every
/// product-and-add rounds once. A binary16 `a` is widened a panel at a time into `widen`
/// ([`widen_bytes`]) when given, else as it is read.
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
    widen: Option<Value>,
) {
    let vec_ok = t.simd && b.col == b.elem() && c.col == 4;
    // the rows' initial values (and a clamp's bounds) in memory for the 256-bit kernels
    let wide = (t.wide && vec_ok && k > 0 && fx.code.is_some()).then(|| {
        let data = StackSlotData::new(StackSlotKind::ExplicitSlot, 4 * (PANEL_ROWS as u32 + 2), 4);
        let slot = fx.b.create_sized_stack_slot(data);
        fx.b.ins().stack_addr(I64, slot, 0)
    });
    let p = Panel {
        t,
        k,
        a,
        b,
        c,
        post,
        widen,
        wide,
    };
    let panels = if vec_ok { m / PANEL_ROWS } else { 0 };
    fx.for_n(panels as i64, &mut |fx, pi| {
        let i0 = fx.mul_imm(pi, PANEL_ROWS as i64);
        p.rows(fx, i0, PANEL_ROWS, n, vec_ok, init);
    });
    let done = (panels * PANEL_ROWS) as i64;
    fx.for_n(m as i64 - done, &mut |fx, r| {
        let i = fx.add_imm(r, done);
        p.rows(fx, i, 1, n, vec_ok, init);
    });
}

/// Output rows computed together: each vector of `b` loaded once serves all of them.
const PANEL_ROWS: usize = 4;

/// The fixed operands of one [`gemm`].
struct Panel {
    t: Target,
    k: usize,
    a: Mat,
    b: Mat,
    c: Mat,
    post: Option<UnaryOp>,
    /// Scratch for a panel's rows of a binary16 `a` widened to f32 ([`widen_bytes`]).
    widen: Option<Value>,
    /// With the 256-bit kernels: where the rows' initial values go for them.
    wide: Option<Value>,
}

/// Scratch bytes [`gemm`] needs to widen a binary16 `a` with depth `k`, a panel at a time.
pub(crate) fn widen_bytes(k: usize) -> usize {
    PANEL_ROWS * k * 4
}

/// `k` binary16 values `step` bytes apart at `src` widened to f32 at `dst`: four at a time
/// where they are contiguous, the rest one by one.
pub(crate) fn widen_row(fx: &mut Fx, src: Value, step: i64, dst: Value, k: i64) {
    let quads = if step == 2 && fx.simd { k / 4 } else { 0 };
    fx.for_ptrs(quads, &[(src, 8), (dst, 16)], &mut |fx, q| {
        let v = fx.load_f16x4(q[0]);
        fx.store(v, q[1]);
    });
    let (s, d) = (fx.add_imm(src, quads * 4 * step), fx.add_imm(dst, quads * 16));
    fx.for_ptrs(k - 4 * quads, &[(s, step), (d, 4)], &mut |fx, q| {
        let h = fx.load(cranelift_codegen::ir::types::I16, q[0]);
        let h = fx.b.ins().uextend(I64, h);
        let v = fx.f16_to_f32(h);
        fx.store(v, q[1]);
    });
}

impl Panel {
    /// Rows `i0 .. i0 + rows` of `c`: blocks of vectors (four for a single row, two for a
    /// panel, to stay within the 16 registers of x86-64), single vectors, then scalars.
    fn rows(
        &self,
        fx: &mut Fx,
        i0: Value,
        rows: usize,
        n: usize,
        vec_ok: bool,
        init: &dyn Fn(&mut Fx, Value) -> Value,
    ) {
        let starts: Vec<Value> = (0..rows)
            .map(|r| {
                let i = fx.add_imm(i0, r as i64);
                init(fx, i)
            })
            .collect();
        let mut arow = fx.addr(self.a.base, i0, self.a.row);
        let mut a = self.a;
        if let (true, Some(buf)) = (a.half && vec_ok, self.widen) {
            // binary16 rows widened once per panel, not once per use
            for r in 0..rows as i64 {
                let src = fx.add_imm(arow, r * a.row);
                let dst = fx.add_imm(buf, r * self.k as i64 * 4);
                widen_row(fx, src, a.col, dst, self.k as i64);
            }
            (arow, a) = (buf, Mat::f32(buf, self.k as i64 * 4, 4));
        }
        let crow = fx.addr(self.c.base, i0, self.c.row);
        let mut j = 0;
        if let (true, Some(slot)) = (vec_ok && !a.half, self.wide) {
            j = self.wide(fx, &a, &starts, (arow, crow), slot, n);
        }
        if vec_ok {
            let units = if rows == 1 { 4 } else { 2 };
            for u in [units, 1] {
                let count = (n - j) / (4 * u);
                self.block(fx, &a, F4, &starts, (arow, crow), u, count, j);
                j += count * 4 * u;
            }
        }
        self.block(fx, &a, F32, &starts, (arow, crow), 1, n - j, j);
    }

    /// The panel's whole blocks of eight columns on the 256-bit kernels (widest blocks
    /// first); returns the columns done.
    fn wide(
        &self,
        fx: &mut Fx,
        a: &Mat,
        starts: &[Value],
        (arow, crow): (Value, Value),
        slot: Value,
        n: usize,
    ) -> usize {
        let rows = starts.len();
        for (r, &s) in starts.iter().enumerate() {
            let at = fx.add_imm(slot, 4 * r as i64);
            fx.store(s, at);
        }
        let clamp = match self.post {
            Some(UnaryOp::Relu) => Clamp::Relu,
            Some(UnaryOp::Clip { min, max }) => {
                for (i, bound) in [min, max].into_iter().enumerate() {
                    let v = fx.f(F32, bound);
                    let at = fx.add_imm(slot, 4 * (rows + i) as i64);
                    fx.store(v, at);
                }
                Clamp::Range
            }
            _ => Clamp::None,
        };
        let i32_of = |v: i64| i32::try_from(v).ok();
        let (Some(a_row), Some(a_col), Some(b_row), Some(c_row)) =
            (i32_of(a.row), i32_of(a.col), i32_of(self.b.row), i32_of(self.c.row))
        else {
            return 0;
        };
        let widths: &[usize] = match (rows, self.b.half) {
            (1, false) => &[8, 4, 2, 1],
            (1, true) => &[4, 2, 1],
            _ => &[3, 2, 1],
        };
        let mut j = 0;
        for &vecs in widths {
            let p = Product {
                rows,
                vecs,
                k: self.k,
                a_row,
                a_col,
                b_row,
                b_half: self.b.half,
                c_row,
                clamp,
            };
            let count = (n - j) / (8 * vecs);
            if count == 0 || !p.fits() {
                continue;
            }
            if !self.call_blocks(fx, &p, (arow, crow, slot), j, count) {
                return j;
            }
            j += count * 8 * vecs;
        }
        if j < n && n >= 8 && self.wide_tail(fx, a, (arow, crow), slot, (rows, n), clamp) {
            return n;
        }
        j
    }

    /// The last `n % 8` columns as one more block of eight ending at column `n`: the
    /// columns it shares with the blocks before are computed again from the same operands
    /// in the same order, so they are rewritten with their own bits (and an activation the
    /// kernel does not apply is applied once more to fresh sums, not twice).
    #[allow(clippy::too_many_arguments)]
    fn wide_tail(
        &self,
        fx: &mut Fx,
        a: &Mat,
        (arow, crow): (Value, Value),
        slot: Value,
        (rows, n): (usize, usize),
        clamp: Clamp,
    ) -> bool {
        let p = Product {
            rows,
            vecs: 1,
            k: self.k,
            a_row: a.row as i32,
            a_col: a.col as i32,
            b_row: self.b.row as i32,
            b_half: self.b.half,
            c_row: self.c.row as i32,
            clamp,
        };
        if !p.fits() {
            return false;
        }
        self.call_blocks(fx, &p, (arow, crow, slot), n - 8, 1)
    }

    /// Calls kernel `p` on `count` blocks from column `j`, then applies an activation the
    /// kernel does not (its clamp is `None`) over what it stored; false without a sink.
    fn call_blocks(
        &self,
        fx: &mut Fx,
        p: &Product,
        (arow, crow, slot): (Value, Value, Value),
        j: usize,
        count: usize,
    ) -> bool {
        let bp = fx.add_imm(self.b.base, j as i64 * self.b.col);
        let cp = fx.add_imm(crow, 4 * j as i64);
        let blocks = fx.i(count as i64);
        if !fx.call_code(&p.code(), &[arow, bp, cp, slot, blocks]) {
            return false;
        }
        if let (Clamp::None, Some(op)) = (p.clamp, self.post) {
            let quads = (count * 2 * p.vecs) as i64;
            for r in 0..p.rows as i64 {
                let row = fx.add_imm(cp, r * self.c.row);
                fx.for_ptrs(quads, &[(row, 16)], &mut |fx, q| {
                    let v = fx.load(F4, q[0]);
                    let v = super::elementwise::unary_op(fx, F4, op, v);
                    fx.store(v, q[0]);
                });
            }
        }
        true
    }

    /// `count` steps of `units` vectors of type `ty` across the panel's rows, from column `j0`.
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        fx: &mut Fx,
        a: &Mat,
        ty: Type,
        starts: &[Value],
        (arow, crow): (Value, Value),
        units: usize,
        count: usize,
        j0: usize,
    ) {
        let (b, c) = (&self.b, &self.c);
        let lanes = ty.lane_count() as i64;
        let width = units as i64 * lanes;
        let b0 = fx.add_imm(b.base, j0 as i64 * b.col);
        let c0 = fx.add_imm(crow, j0 as i64 * c.col);
        fx.for_ptrs(
            count as i64,
            &[(b0, width * b.col), (c0, width * c.col)],
            &mut |fx, pp| {
                let (bcol, ccol) = (pp[0], pp[1]);
                let accs: Vec<Vec<_>> = starts
                    .iter()
                    .map(|&s| {
                        let s = fx.splat(ty, s);
                        (0..units)
                            .map(|_| {
                                let v = fx.b.declare_var(ty);
                                fx.b.def_var(v, s);
                                v
                            })
                            .collect()
                    })
                    .collect();
                let step = |fx: &mut Fx, aa: Value, brow: Value| {
                    let bv: Vec<Value> = (0..units)
                        .map(|u| {
                            let ba = fx.add_imm(brow, u as i64 * lanes * b.col);
                            load_el(fx, b, ty, ba)
                        })
                        .collect();
                    for (r, row) in accs.iter().enumerate() {
                        let ra = fx.add_imm(aa, r as i64 * a.row);
                        let av = if a.half {
                            load_el(fx, a, F32, ra)
                        } else {
                            fx.load_ro(F32, ra)
                        };
                        let av = fx.splat(ty, av);
                        for (&acc, &bv) in row.iter().zip(&bv) {
                            let cur = fx.b.use_var(acc);
                            let sum = if self.t.fma {
                                fx.b.ins().fma(av, bv, cur)
                            } else {
                                let pr = fx.mul(av, bv);
                                fx.add(cur, pr)
                            };
                            fx.b.def_var(acc, sum);
                        }
                    }
                };
                fx.for_ptrs(self.k as i64, &[(arow, a.col), (bcol, b.row)], &mut |fx, pp| {
                    step(fx, pp[0], pp[1])
                });
                for (r, row) in accs.iter().enumerate() {
                    for (u, &acc) in row.iter().enumerate() {
                        let v = fx.b.use_var(acc);
                        let v = match self.post {
                            Some(op) => super::elementwise::unary_op(fx, ty, op, v),
                            None => v,
                        };
                        let ca = fx.add_imm(ccol, r as i64 * c.row + u as i64 * lanes * c.col);
                        fx.store(v, ca);
                    }
                }
            },
        );
    }
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
    if let Some(d) = Depthwise::of(g, n, c) {
        return d.scratch();
    }
    let ws = &g.value(node.inputs[1]).ty.shape;
    let gm = geo(&g.value(node.inputs[0]).ty.shape, &g.value(node.outputs[0]).ty.shape, c);
    let cg = ws[1] as i64;
    let k = (cg * gm.kh * gm.kw) as usize;
    let widen = match g.value(node.inputs[1]).ty.dtype.scalar {
        kiln_ir::Scalar::F16 => widen_bytes(k),
        _ => 0,
    };
    if pointwise(c) {
        return widen;
    }
    im2col_bytes(&gm, cg) + widen
}

/// Bytes of the im2col band.
fn im2col_bytes(gm: &Geo, cg: i64) -> usize {
    (cg * gm.kh * gm.kw * tile_rows(gm, cg) * gm.ow * 4) as usize
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
        return super::dwconv::depthwise(fx, g, n, c, &d, a, t);
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
            // binary16 weights are widened a panel at a time after the im2col band
            let widen = half.then(|| {
                let band = if pw { 0 } else { im2col_bytes(&gm, cg) };
                fx.add_imm(a.scratch, band as i64)
            });
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
                    widen,
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
                    widen,
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
                            // unit stride: four at a time, then the rest
                            let (sp, dp, rest) = if gm.sw == 1 && fx.simd {
                                let quads = fx.b.ins().ushr_imm_u(body_n, 2);
                                fx.for_ptrs_v(quads, &[(sp, 16), (dp, 16)], &mut |fx, q| {
                                    let v = fx.load(F4, q[0]);
                                    fx.store(v, q[1]);
                                });
                                let done = fx.b.ins().ishl_imm_u(quads, 4);
                                let (sp, dp) = (fx.b.ins().iadd(sp, done), fx.b.ins().iadd(dp, done));
                                (sp, dp, fx.b.ins().band_imm_u(body_n, 3))
                            } else if gm.sw == 2 && fx.simd {
                                stride2_quads(fx, sp, dp, body_n)
                            } else {
                                (sp, dp, body_n)
                            };
                            fx.for_ptrs_v(rest, &[(sp, gm.sw * 4), (dp, 4)], &mut |fx, q| {
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

/// Every other f32 from `sp` into `count` contiguous ones at `dp`, four at a time (two
/// vector loads, the even lanes of both); returns where the scalar rest starts and how
/// many it copies. The last element a quad reads is at most the last one needed, so
/// `(count - 1) / 4` quads never read past the row.
fn stride2_quads(fx: &mut Fx, sp: Value, dp: Value, count: Value) -> (Value, Value, Value) {
    use cranelift_codegen::ir::types::I8X16;
    let lanes = cranelift_codegen::ir::MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
    let mask: Vec<u8> = [0u8, 2, 4, 6]
        .iter()
        .flat_map(|&f| (0..4).map(move |b| 4 * f + b))
        .collect();
    let mask = fx.b.func.dfg.immediates.push(mask.as_slice().into());
    let less = fx.b.ins().iadd_imm_s(count, -1);
    let quads = fx.b.ins().sshr_imm_s(less, 2);
    let zero = fx.i(0);
    let some = fx.b.ins().icmp_imm_s(IntCC::SignedGreaterThan, count, 0);
    let quads = fx.b.ins().select(some, quads, zero);
    fx.for_ptrs_v(quads, &[(sp, 32), (dp, 16)], &mut |fx, q| {
        let v0 = fx.load(F4, q[0]);
        let a16 = fx.add_imm(q[0], 16);
        let v1 = fx.load(F4, a16);
        let (b0, b1) = (
            fx.b.ins().bitcast(I8X16, lanes, v0),
            fx.b.ins().bitcast(I8X16, lanes, v1),
        );
        let even = fx.b.ins().shuffle(b0, b1, mask);
        let even = fx.b.ins().bitcast(F4, lanes, even);
        fx.store(even, q[1]);
    });
    let (sb, db) = (fx.b.ins().ishl_imm_u(quads, 5), fx.b.ins().ishl_imm_u(quads, 4));
    let (sp, dp) = (fx.b.ins().iadd(sp, sb), fx.b.ins().iadd(dp, db));
    let four = fx.b.ins().ishl_imm_u(quads, 2);
    (sp, dp, fx.b.ins().isub(count, four))
}

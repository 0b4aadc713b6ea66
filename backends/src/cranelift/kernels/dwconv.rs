//! Float depthwise convolution (one input channel per output channel, any kernel, stride,
//! dilation and padding) computed channels-last: in planar layout a small plane (KWS's are
//! 25 x 5) gives vectors little to run along, while the channels of one position are as
//! many as the layer is wide. The kernel transposes the input into a zero-bordered
//! `[row][column][channel]` copy and the weights into `[tap][channel]`, runs each block of
//! four channels over every output position with the tap weights held in registers (every
//! tap one fixed offset from the position), and transposes the `[position][channel]` result
//! back. Each sum is the bias, then the taps in (row, column) order, padding taps adding
//! zeros, as im2col and the evaluator do; with `fma` each tap rounds once. Binary16 weights
//! are widened once per call.

use super::super::fx::Fx;
use super::nest::F4;
use super::{Args, Target};
use cranelift_codegen::ir::types::{F32, I8X16, I32, I32X4};
use cranelift_codegen::ir::{Endianness, InstBuilder, MemFlagsData, Type, Value};
use kiln_ir::op::{Conv, Window};
use kiln_ir::{Graph, NodeId, Scalar};

/// The geometry both channels-last depthwise kernels (float here, int8 in `qdw`) work in:
/// the window's plane and the zero-bordered input copy, `hp` rows of `wp` columns with the
/// input at (`top`, `left`), from which every tap of a position is one fixed offset.
pub(crate) struct ChannelsLast {
    pub n: i64,
    pub c: i64,
    pub h: i64,
    pub w: i64,
    pub oh: i64,
    pub ow: i64,
    pub kh: i64,
    pub kw: i64,
    pub sh: i64,
    pub sw: i64,
    pub dh: i64,
    pub dw: i64,
    pub hp: i64,
    pub wp: i64,
    pub top: i64,
    pub left: i64,
}

impl ChannelsLast {
    /// For a 2-D `[N, C, H, W]` input `xs` giving `out` through `window`. A plane one
    /// column wide that the window walks only down (`[C][H][1]`, a 1-D convolution over
    /// time) is taken as the single row `[C][1][H]` it is in memory, so the kernels' loops
    /// over columns get the length instead of one.
    pub fn new(xs: &[usize], out: &[usize], window: &Window) -> ChannelsLast {
        let mut p = window.plane(xs, out);
        if p.w == 1 && p.ow == 1 && p.kw == 1 && p.pw == 0 && p.h > 1 {
            std::mem::swap(&mut p.h, &mut p.w);
            std::mem::swap(&mut p.oh, &mut p.ow);
            std::mem::swap(&mut p.kh, &mut p.kw);
            std::mem::swap(&mut p.sh, &mut p.sw);
            std::mem::swap(&mut p.dh, &mut p.dw);
            std::mem::swap(&mut p.ph, &mut p.pw);
        }
        let u = |v: usize| v as i64;
        let (top, left) = (u(p.ph), u(p.pw));
        ChannelsLast {
            n: u(xs[0]),
            c: u(xs[1]),
            h: u(p.h),
            w: u(p.w),
            oh: u(p.oh),
            ow: u(p.ow),
            kh: u(p.kh),
            kw: u(p.kw),
            sh: u(p.sh),
            sw: u(p.sw),
            dh: u(p.dh),
            dw: u(p.dw),
            hp: (top + u(p.h)).max(u((p.oh - 1) * p.sh + (p.kh - 1) * p.dh + 1)),
            wp: (left + u(p.w)).max(u((p.ow - 1) * p.sw + (p.kw - 1) * p.dw + 1)),
            top,
            left,
        }
    }

    /// Whether the copy has a border to fill (padding, or rows/columns past the input).
    pub fn bordered(&self) -> bool {
        self.top > 0 || self.left > 0 || self.hp > self.h + self.top || self.wp > self.w + self.left
    }
}

/// A float depthwise convolution the kernel takes.
pub(crate) struct Depthwise {
    g: ChannelsLast,
    /// binary16 weights (`--quantize fp16`), widened once per call before the transpose.
    half: bool,
}

impl std::ops::Deref for Depthwise {
    type Target = ChannelsLast;
    fn deref(&self) -> &ChannelsLast {
        &self.g
    }
}

/// Weight taps kept in registers across the positions; more are reloaded per position.
const TAPS_IN_REGISTERS: i64 = 12;

impl Depthwise {
    /// The 2-D, f32, multiplier-1 depthwise convolutions.
    pub fn of(g: &Graph, n: NodeId, c: &Conv) -> Option<Depthwise> {
        let node = g.node(n);
        let (xs, w) = (&g.value(node.inputs[0]).ty.shape, &g.value(node.inputs[1]).ty);
        let out = &g.value(node.outputs[0]).ty.shape;
        let f32s = [node.inputs[0], node.outputs[0]]
            .iter()
            .chain(&node.inputs[2..])
            .all(|&v| g.value(v).ty.dtype.scalar == Scalar::F32);
        let half = match w.dtype.scalar {
            Scalar::F32 => false,
            Scalar::F16 => true,
            _ => return None,
        };
        if xs.len() != 4 || !f32s || c.group != xs[1] || w.shape[0] != xs[1] || c.group < 2 {
            return None;
        }
        Some(Depthwise {
            g: ChannelsLast::new(xs, out, &c.window),
            half,
        })
    }

    fn padded(&self) -> i64 {
        (self.hp * self.wp * self.c * 4 + 15) / 16 * 16
    }

    fn weights(&self) -> i64 {
        (self.kh * self.kw * self.c * 4 + 15) / 16 * 16
    }

    /// Arena bytes: the bordered input, the transposed weights, the channels-last output
    /// and, for binary16 weights, the widened ones.
    pub fn scratch(&self) -> usize {
        let widened = if self.half { self.weights() } else { 0 };
        (self.padded() + self.weights() + self.oh * self.ow * self.c * 4 + widened) as usize
    }
}

pub(crate) fn depthwise(fx: &mut Fx, g: &Graph, n: NodeId, c: &Conv, d: &Depthwise, a: &Args, t: Target) {
    let has_bias = g.node(n).inputs.len() > 2;
    let xpad = a.scratch;
    let wt = fx.add_imm(a.scratch, d.padded());
    let yt = fx.add_imm(wt, d.weights());
    let (cc, hw, p) = (d.c, d.h * d.w, d.oh * d.ow);
    // weights [C][KH*KW] -> [KH*KW][C], once (binary16 ones widened first, after the output)
    let weights = if d.half {
        let wide = fx.add_imm(yt, p * cc * 4);
        super::gemm::widen_row(fx, a.ins[1], 2, wide, cc * d.kh * d.kw);
        wide
    } else {
        a.ins[1]
    };
    transpose(fx, t.simd, weights, d.kh * d.kw * 4, wt, cc * 4, cc, d.kh * d.kw);
    if d.bordered() {
        fill_zero(fx, t.simd, xpad, d.padded());
    }
    fx.for_n(d.n, &mut |fx, b| {
        let x = fx.addr(a.ins[0], b, cc * hw * 4);
        let y = fx.addr(a.outs[0], b, cc * p * 4);
        // each input row [C][W] -> bordered row [W][C]
        let first = fx.add_imm(xpad, (d.top * d.wp + d.left) * cc * 4);
        fx.for_ptrs(d.h, &[(x, d.w * 4), (first, d.wp * cc * 4)], &mut |fx, r| {
            transpose(fx, t.simd, r[0], hw * 4, r[1], cc * 4, cc, d.w);
        });
        let vectors = if t.simd { cc / 4 } else { 0 };
        channels(fx, d, c, a, t, has_bias, (xpad, wt, yt), F4, vectors, 0);
        channels(
            fx,
            d,
            c,
            a,
            t,
            has_bias,
            (xpad, wt, yt),
            F32,
            cc - 4 * vectors,
            4 * vectors,
        );
        // [P][C] -> [C][P]
        transpose(fx, t.simd, yt, cc * 4, y, p * 4, p, cc);
    });
}

/// `count` blocks of `ty` lanes of channels from channel `c0`, each over every output
/// position: the bias, then each tap's input times its weight.
#[allow(clippy::too_many_arguments)]
fn channels(
    fx: &mut Fx,
    d: &Depthwise,
    c: &Conv,
    a: &Args,
    t: Target,
    has_bias: bool,
    (xpad, wt, yt): (Value, Value, Value),
    ty: Type,
    count: i64,
    c0: i64,
) {
    let lanes = ty.lane_count() as i64;
    let cs = d.c * 4;
    let taps: Vec<(i64, i64)> = (0..d.kh * d.kw)
        .map(|i| ((i / d.kw * d.dh * d.wp + i % d.kw * d.dw) * cs, i * cs))
        .collect();
    let x0 = fx.add_imm(xpad, c0 * 4);
    let w0 = fx.add_imm(wt, c0 * 4);
    let y0 = fx.add_imm(yt, c0 * 4);
    let mut ptrs = vec![(x0, 4 * lanes), (w0, 4 * lanes), (y0, 4 * lanes)];
    if has_bias {
        let b0 = fx.add_imm(a.ins[2], c0 * 4);
        ptrs.push((b0, 4 * lanes));
    }
    fx.for_ptrs(count, &ptrs, &mut |fx, q| {
        let (xc, wc, yc) = (q[0], q[1], q[2]);
        let bias = if has_bias { fx.load(ty, q[3]) } else { fx.f(ty, 0.0) };
        let held = taps.len() as i64 <= TAPS_IN_REGISTERS;
        let weights: Vec<Value> = if held {
            taps.iter()
                .map(|&(_, wo)| {
                    let wa = fx.add_imm(wc, wo);
                    fx.load(ty, wa)
                })
                .collect()
        } else {
            vec![]
        };
        fx.for_ptrs(d.oh, &[(xc, d.sh * d.wp * cs), (yc, d.ow * cs)], &mut |fx, r| {
            fx.for_ptrs(d.ow, &[(r[0], d.sw * cs), (r[1], cs)], &mut |fx, q| {
                let mut s = bias;
                for (i, &(xo, wo)) in taps.iter().enumerate() {
                    let xa = fx.add_imm(q[0], xo);
                    let xv = fx.load(ty, xa);
                    let wv = if held {
                        weights[i]
                    } else {
                        let wa = fx.add_imm(wc, wo);
                        fx.load(ty, wa)
                    };
                    s = if t.fma {
                        fx.b.ins().fma(xv, wv, s)
                    } else {
                        let pr = fx.mul(xv, wv);
                        fx.add(s, pr)
                    };
                }
                let s = match c.fused {
                    Some(op) => super::elementwise::unary_op(fx, ty, op, s),
                    None => s,
                };
                fx.store(s, q[1]);
            });
        });
    });
}

/// Zeroes `bytes` (a multiple of 16) at `dst`.
fn fill_zero(fx: &mut Fx, simd: bool, dst: Value, bytes: i64) {
    let step = if simd { 16 } else { 4 };
    let z = fx.b.ins().iconst(I32, 0);
    let z = if simd { fx.b.ins().splat(I32X4, z) } else { z };
    fx.for_ptrs(bytes / step, &[(dst, step)], &mut |fx, q| fx.store(z, q[0]));
}

/// `dst[j][i] = src[i][j]` for 32-bit elements, `rows` x `cols` of `src`; rows are
/// `src_row` and `dst_row` bytes apart. Blocks of 4 x 4 go through registers.
#[allow(clippy::too_many_arguments)]
pub(crate) fn transpose(
    fx: &mut Fx,
    simd: bool,
    src: Value,
    src_row: i64,
    dst: Value,
    dst_row: i64,
    rows: i64,
    cols: i64,
) {
    let copy = |fx: &mut Fx, s: Value, d: Value| {
        let v = fx.load(I32, s);
        fx.store(v, d);
    };
    let (rb, cb) = if simd { (rows / 4, cols / 4) } else { (0, 0) };
    fx.for_ptrs(rb, &[(src, 4 * src_row), (dst, 16)], &mut |fx, r| {
        fx.for_ptrs(cb, &[(r[0], 16), (r[1], 4 * dst_row)], &mut |fx, q| {
            let v: Vec<Value> = (0..4)
                .map(|i| {
                    let sa = fx.add_imm(q[0], i * src_row);
                    fx.load(I32X4, sa)
                })
                .collect();
            let out = transpose4(fx, [v[0], v[1], v[2], v[3]]);
            for (i, o) in out.into_iter().enumerate() {
                let da = fx.add_imm(q[1], i as i64 * dst_row);
                fx.store(o, da);
            }
        });
        // the columns past the last whole block, four rows each
        let (s, d) = (fx.add_imm(r[0], 16 * cb), fx.add_imm(r[1], 4 * cb * dst_row));
        fx.for_ptrs(cols - 4 * cb, &[(s, 4), (d, dst_row)], &mut |fx, q| {
            for i in 0..4 {
                let (sa, da) = (fx.add_imm(q[0], i * src_row), fx.add_imm(q[1], 4 * i));
                copy(fx, sa, da);
            }
        });
    });
    // the rows past the last whole block
    let (s, d) = (fx.add_imm(src, 4 * rb * src_row), fx.add_imm(dst, 16 * rb));
    fx.for_ptrs(rows - 4 * rb, &[(s, src_row), (d, 4)], &mut |fx, r| {
        fx.for_ptrs(cols, &[(r[0], 4), (r[1], dst_row)], &mut |fx, q| copy(fx, q[0], q[1]));
    });
}

/// The 4 x 4 transpose of four vectors of 32-bit lanes (lane j of vector i becomes lane i
/// of vector j), by unpacks.
pub(crate) fn transpose4(fx: &mut Fx, v: [Value; 4]) -> [Value; 4] {
    let lo01 = shuffle(fx, v[0], v[1], [0, 4, 1, 5]);
    let hi01 = shuffle(fx, v[0], v[1], [2, 6, 3, 7]);
    let lo23 = shuffle(fx, v[2], v[3], [0, 4, 1, 5]);
    let hi23 = shuffle(fx, v[2], v[3], [2, 6, 3, 7]);
    [
        shuffle(fx, lo01, lo23, [0, 1, 4, 5]),
        shuffle(fx, lo01, lo23, [2, 3, 6, 7]),
        shuffle(fx, hi01, hi23, [0, 1, 4, 5]),
        shuffle(fx, hi01, hi23, [2, 3, 6, 7]),
    ]
}

/// Lanes `idx` (0-3 from `a`, 4-7 from `b`) of two 32-bit vectors.
fn shuffle(fx: &mut Fx, a: Value, b: Value, idx: [u8; 4]) -> Value {
    let le = MemFlagsData::new().with_endianness(Endianness::Little);
    let mask: Vec<u8> = idx.iter().flat_map(|&l| (0..4).map(move |k| 4 * l + k)).collect();
    let mask = fx.b.func.dfg.immediates.push(mask.as_slice().into());
    let (a8, b8) = (fx.b.ins().bitcast(I8X16, le, a), fx.b.ins().bitcast(I8X16, le, b));
    let s = fx.b.ins().shuffle(a8, b8, mask);
    fx.b.ins().bitcast(I32X4, le, s)
}

//! Int8 depthwise convolution channels-last on the target's 4-way byte dot product (any
//! kernel, stride, dilation and padding). Planar, a depthwise layer has one small plane per
//! channel and nothing wide to vectorize; channels-last, sixteen channels are one vector and
//! every tap of a position one fixed offset. Per batch item the input is transposed into a
//! `[row][col][16 channels]` copy bordered with the zero point (x86 VNNI: every byte biased
//! by 128 into the unsigned operand `vpdpbusd` takes); then per position and block of
//! sixteen channels, taps in groups of four are interleaved by two rounds of unpacks into
//! four-bytes-per-channel lanes and summed by one dot product per four channels against
//! weights packed the same way at compile time (`tables`). The i32 sums start from
//! `bias - zp * sum(w)` (or `(zp + 128) * sum(w)`), so padding taps add nothing net; they
//! are transposed back four positions by four channels in registers and rescaled as the
//! other kernels do. Integer sums: bit-exact in any order.

use super::super::fx::Fx;
use super::Args;
use super::dot::{Dot, dot4};
use super::dwconv::{self, ChannelsLast};
use super::quant::{RESCALE_RECORD, Stage, finish_fit4_rec, fits_i32, store_bytes4};
use cranelift_codegen::ir::types::{F32X4, I8, I8X16, I32, I32X4, I64};
use cranelift_codegen::ir::{Endianness, InstBuilder, MemFlagsData, StackSlotData, StackSlotKind, Value};
use kiln_ir::op::QLinear;
use kiln_ir::{Graph, NodeId, Op, Scalar};

/// An int8 depthwise convolution this kernel takes.
pub(crate) struct QDw {
    g: ChannelsLast,
    /// Channels rounded up to whole vectors of sixteen.
    c16: i64,
    taps: i64,
}

impl std::ops::Deref for QDw {
    type Target = ChannelsLast;
    fn deref(&self) -> &ChannelsLast {
        &self.g
    }
}

fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

fn le() -> MemFlagsData {
    MemFlagsData::new().with_endianness(Endianness::Little)
}

impl QDw {
    /// Static int8 in and out, 8-bit constant weights (and constant bias), one input
    /// channel per output channel, 2-D.
    pub fn of(g: &Graph, n: NodeId) -> Option<QDw> {
        let node = g.node(n);
        let scalar = |v: kiln_ir::ValueId| g.value(v).ty.dtype.scalar;
        let (window, group, io_ok) = match &node.op {
            Op::QConv { window, group, q } => (
                window,
                group,
                q.weight_bits == 8 && scalar(node.inputs[0]) == Scalar::I8 && scalar(node.outputs[0]) == Scalar::I8,
            ),
            // hybrid: the f32 input quantized at run time, f32 out, no bias input
            Op::DynConv { window, group, .. } => (
                window,
                group,
                node.inputs.len() == 2
                    && scalar(node.inputs[1]) == Scalar::I8
                    && kiln_ir::analysis::packed_weight_bits(g, node.inputs[1]).is_none(),
            ),
            _ => return None,
        };
        let (xs, ws) = (&g.value(node.inputs[0]).ty.shape, &g.value(node.inputs[1]).ty.shape);
        let out = &g.value(node.outputs[0]).ty.shape;
        let ok = xs.len() == 4
            && *group >= 2
            && *group == xs[1]
            && ws[0] == xs[1]
            && io_ok
            && g.const_value(node.inputs[1]).is_some()
            && node.inputs.get(2).is_none_or(|&b| g.const_value(b).is_some());
        if !ok {
            return None;
        }
        Some(QDw {
            g: ChannelsLast::new(xs, out, window),
            c16: xs[1].next_multiple_of(16) as i64,
            taps: window.kernel.iter().product::<usize>() as i64,
        })
    }

    fn groups(&self) -> i64 {
        (self.taps + 3) / 4
    }

    fn padded(&self) -> i64 {
        self.hp * self.wp * self.c16
    }

    /// Arena bytes: the bordered channels-last input, then the i32 sums `[position][c16]`.
    pub fn scratch(&self) -> usize {
        (self.padded() + 4 * self.oh * self.ow * self.c16) as usize
    }
}

/// Compile-time tables, appended to the QConv's `aux` (indices 6, 7, 8; 9 holds the
/// channels' `quant::rescale_records`): the weights as
/// `[c16 / 16][tap group][4][4 channels x 4 taps]` bytes (zeros past the last channel or
/// tap), and the sums' start `bias - zp * sum(w)` and `bias - (zp + 128) * sum(w)` per
/// channel (zeros past the last).
pub(crate) fn tables(g: &Graph, n: NodeId, d: &QDw) -> Vec<Vec<u8>> {
    let node = g.node(n);
    let zp = match &node.op {
        Op::QConv { q, .. } => q.input_zp,
        _ => 0,
    };
    let w = g
        .const_value(node.inputs[1])
        .expect("checked by `QDw::of`")
        .to_i64_vec();
    let bias = node
        .inputs
        .get(2)
        .map(|&b| g.const_value(b).expect("checked").to_i64_vec());
    let (c, k) = (d.c as usize, d.taps as usize);
    let mut packed = Vec::with_capacity((d.c16 * d.groups() * 16) as usize);
    for cb in 0..d.c16 as usize / 16 {
        for gr in 0..d.groups() as usize {
            for ch in 0..16 {
                for t in 0..4 {
                    let (cc, tap) = (cb * 16 + ch, gr * 4 + t);
                    packed.push(if cc < c && tap < k {
                        w[cc * k + tap] as i8 as u8
                    } else {
                        0
                    });
                }
            }
        }
    }
    let start = |extra: i32| -> Vec<u8> {
        (0..d.c16 as usize)
            .flat_map(|cc| {
                let v = if cc < c {
                    let sum: i64 = w[cc * k..][..k].iter().sum();
                    let b = bias.as_ref().map_or(0, |b| b[cc]);
                    (b as i32).wrapping_sub((zp + extra).wrapping_mul(sum as i32))
                } else {
                    0
                };
                v.to_le_bytes()
            })
            .collect()
    };
    if !matches!(node.op, Op::QConv { .. }) {
        // hybrid: the zero point is known at run time only; the start is `-zp * sum(w)`
        // from the weight sums (`start(0)` with no bias and zero point 0 is `0`; so give
        // the sums themselves, negated by the kernel)
        let sums: Vec<u8> = (0..d.c16 as usize)
            .flat_map(|cc| {
                let v: i64 = if cc < c { w[cc * k..][..k].iter().sum() } else { 0 };
                (v as i32).to_le_bytes()
            })
            .collect();
        return vec![packed, sums];
    }
    vec![packed, start(0), start(128)]
}

/// The weights as [`super::wide::DepthwiseRow`] reads them (x86-64 with AVX2): per block
/// of sixteen channels and pair of taps (the last padded with a zero tap) 64 bytes, each
/// 32-bit lane one channel's two halfword weights; channels 0-3 | 8-11 in the first 32,
/// 4-7 | 12-15 in the next, as halfword unpacks leave the activations.
pub(crate) fn wide_weights(g: &Graph, n: NodeId, d: &QDw) -> Vec<u8> {
    let w = g
        .const_value(g.node(n).inputs[1])
        .expect("checked by `QDw::of`")
        .to_i64_vec();
    let (c, k) = (d.c as usize, d.taps as usize);
    let mut out = Vec::new();
    for cb in 0..d.c16 as usize / 16 {
        for tp in 0..k.div_ceil(2) {
            for half in 0..2 {
                for lane in 0..8 {
                    let ch = cb * 16 + lane / 4 * 8 + half * 4 + lane % 4;
                    for t in [2 * tp, 2 * tp + 1] {
                        let v = if ch < c && t < k { w[ch * k + t] as i8 as i16 } else { 0 };
                        out.extend(v.to_le_bytes());
                    }
                }
            }
        }
    }
    out
}

/// Where the sums start: a compile-time table per channel, or (hybrid) `-(zp [+ 128]) *
/// sum(w)` from the weight sums and the run-time zero point.
#[derive(Clone, Copy)]
enum Start {
    Table(Value),
    Sums { sums: Value, zp: Value },
}

pub(crate) fn qconv(fx: &mut Fx, g: &Graph, n: NodeId, q: &QLinear, d: &QDw, a: &Args, dot: Dot) {
    let st = Stage::Static {
        q,
        mult: a.aux[2],
        shift: a.aux[3],
        zsum: a.aux[4],
        fits: fits_i32(g, n, q),
    };
    let start = if dot == Dot::UnsignedBySigned {
        a.aux[8]
    } else {
        a.aux[7]
    };
    // the 256-bit kernels' weights and finish records, when the target has them
    // (`kernels::aux_data`)
    let wide = a
        .aux
        .get(10)
        .copied()
        .filter(|_| dot == Dot::Pairs && fx.code.is_some());
    let finish = a.aux.get(11).copied().filter(|_| wide.is_some()).map(|r| {
        let f = super::wide::Finish {
            tflite: q.numerics == kiln_ir::op::Numerics::Tflite,
            row: (d.oh * d.ow) as i32,
        };
        (r, f)
    });
    run(
        fx,
        d,
        &st,
        dot,
        (a.aux[6], Start::Table(start), a.aux[9]),
        a,
        (wide, finish),
    );
}

/// The records of the 256-bit finish ([`super::wide::DepthwiseFinish`]), with zero starts
/// (the sums start from the bias already), where it applies: a static convolution whose
/// vector rescale provably fits i32 and whose outputs stay in the int8 range.
pub(crate) fn finish_table(g: &Graph, n: NodeId) -> Option<Vec<u8>> {
    let Op::QConv { q, .. } = &g.node(n).op else {
        return None;
    };
    let c = g.value(g.node(n).outputs[0]).ty.shape[1];
    (q.act_min >= -128 && q.act_max <= 127 && fits_i32(g, n, q)).then(|| super::quant::finish_records(q, &vec![0; c]))
}

/// The hybrid (`DynConv`) form: `a.ins[0]` is the input already quantized with stage `st`
/// (`Stage::Dynamic`); `aux` 4 and 5 are this kernel's packed weights and weight sums.
pub(crate) fn dyn_qconv(fx: &mut Fx, d: &QDw, st: Stage, a: &Args, dot: Dot) {
    let Stage::Dynamic { zp, .. } = st else { unreachable!() };
    let wide = a.aux.get(6).copied().filter(|_| dot == Dot::Pairs && fx.code.is_some());
    run(
        fx,
        d,
        &st,
        dot,
        (a.aux[4], Start::Sums { sums: a.aux[5], zp }, a.aux[4]),
        a,
        (wide, None),
    );
}

#[allow(clippy::too_many_arguments)]
fn run(
    fx: &mut Fx,
    d: &QDw,
    st: &Stage,
    dot: Dot,
    (weights, start, records): (Value, Start, Value),
    a: &Args,
    (wide, wide_finish): (Option<Value>, Option<(Value, super::wide::Finish)>),
) {
    let flip: i64 = if dot == Dot::UnsignedBySigned { -128 } else { 0 };
    let (xpad, sums) = (a.scratch, fx.add_imm(a.scratch, d.padded()));
    let (hw, p) = (d.h * d.w, d.oh * d.ow);
    let es = st.elem();
    fx.for_n(d.n, &mut |fx, b| {
        let x = fx.addr(a.ins[0], b, d.c * hw);
        let y = fx.addr(a.outs[0], b, d.c * p * es);
        if d.bordered() {
            let pad = st.zp(fx);
            let pad = fx.b.ins().bxor_imm_s(pad, flip);
            let pad = fx.b.ins().ireduce(I8, pad);
            let pad = fx.b.ins().splat(I8X16, pad);
            border(fx, d, xpad, pad);
        }
        to_channels_last(fx, d, x, xpad, flip);
        match (wide, start) {
            _ if d.ow < 1 || d.taps < 1 => sum_positions(fx, d, dot, weights, start, xpad, sums),
            (Some(w), Start::Table(t)) => sum_positions_wide(fx, d, w, t, xpad, sums),
            (Some(w), Start::Sums { sums: ws, zp }) => {
                let t = starts_of(fx, d, ws, zp);
                sum_positions_wide(fx, d, w, t, xpad, sums)
            }
            _ => sum_positions(fx, d, dot, weights, start, xpad, sums),
        }
        finish(fx, d, st, (sums, records, wide_finish), y);
    });
}

/// The border of the `[Hp][Wp][C16]` copy set to `pad` (sixteen bytes): the rows above
/// and below the input's, and the columns left and right of it in each of its rows.
fn border(fx: &mut Fx, d: &QDw, xpad: Value, pad: Value) {
    let row = d.wp * d.c16;
    let fill = |fx: &mut Fx, at: Value, bytes: i64| {
        fx.for_ptrs(bytes / 16, &[(at, 16)], &mut |fx, q| fx.store(pad, q[0]));
    };
    fill(fx, xpad, d.top * row);
    let below = fx.add_imm(xpad, (d.top + d.h) * row);
    fill(fx, below, (d.hp - d.top - d.h) * row);
    let (left, right) = (d.left * d.c16, (d.wp - d.left - d.w) * d.c16);
    if left > 0 || right > 0 {
        let first = fx.add_imm(xpad, d.top * row);
        fx.for_ptrs(d.h, &[(first, row)], &mut |fx, r| {
            fill(fx, r[0], left);
            let after = fx.add_imm(r[0], (d.left + d.w) * d.c16);
            fill(fx, after, right);
        });
    }
}

/// `x` `[C][H][W]` into the bordered `[Hp][Wp][C16]` copy, each byte xor `flip`: four
/// channels by four columns per 4x4 byte transpose, the rest byte by byte.
fn to_channels_last(fx: &mut Fx, d: &QDw, x: Value, xpad: Value, flip: i64) {
    let hw = d.h * d.w;
    let mask: Vec<u8> = (0..16u8).map(|k| (k % 4) * 4 + k / 4).collect();
    let mask = fx.b.func.dfg.immediates.push(mask.as_slice().into());
    let bias = fx.b.ins().iconst(I8, flip);
    let bias = fx.b.ins().splat(I8X16, bias);
    let (c4, w4) = (d.c / 4, d.w / 4);
    let byte = |fx: &mut Fx, s: Value, t: Value| {
        let v = fx.b.ins().load(I8, flags(), s, 0);
        let v = fx.b.ins().bxor_imm_s(v, flip);
        fx.b.ins().store(flags(), v, t, 0);
    };
    let first = fx.add_imm(xpad, (d.top * d.wp + d.left) * d.c16);
    fx.for_ptrs(d.h, &[(x, d.w), (first, d.wp * d.c16)], &mut |fx, r| {
        fx.for_ptrs(c4, &[(r[0], 4 * hw), (r[1], 4)], &mut |fx, cq| {
            fx.for_ptrs(w4, &[(cq[0], 4), (cq[1], 4 * d.c16)], &mut |fx, q| {
                let words: Vec<Value> = (0..4)
                    .map(|i| fx.b.ins().load(I32, flags(), q[0], (i * hw) as i32))
                    .collect();
                let v = fx.b.ins().scalar_to_vector(I32X4, words[0]);
                let v = (1..4).fold(v, |v, i| fx.b.ins().insertlane(v, words[i], i as u8));
                let bytes = fx.b.ins().bitcast(I8X16, le(), v);
                let t = fx.b.ins().shuffle(bytes, bytes, mask);
                let t = if flip != 0 { fx.b.ins().bxor(t, bias) } else { t };
                let t = fx.b.ins().bitcast(I32X4, le(), t);
                for j in 0..4 {
                    let e = fx.b.ins().extractlane(t, j as u8);
                    fx.b.ins().store(flags(), e, q[1], (j * d.c16) as i32);
                }
            });
            // the columns past the whole blocks of four, these four channels
            let (s, t) = (fx.add_imm(cq[0], 4 * w4), fx.add_imm(cq[1], 4 * w4 * d.c16));
            fx.for_ptrs(d.w - 4 * w4, &[(s, 1), (t, d.c16)], &mut |fx, q| {
                for i in 0..4 {
                    let (si, ti) = (fx.add_imm(q[0], i * hw), fx.add_imm(q[1], i));
                    byte(fx, si, ti);
                }
            });
        });
        // the channels past the whole blocks of four, every column
        let (s, t) = (fx.add_imm(r[0], 4 * c4 * hw), fx.add_imm(r[1], 4 * c4));
        fx.for_ptrs(d.c - 4 * c4, &[(s, hw), (t, 1)], &mut |fx, cq| {
            fx.for_ptrs(d.w, &[(cq[0], 1), (cq[1], d.c16)], &mut |fx, q| byte(fx, q[0], q[1]));
        });
    });
}

/// Per block of sixteen channels and output position, the four i32 vectors of sums.
#[allow(clippy::too_many_arguments)]
fn sum_positions(fx: &mut Fx, d: &QDw, dot: Dot, weights: Value, start: Start, xpad: Value, sums: Value) {
    let cs = d.c16;
    let offs: Vec<i64> = (0..d.taps)
        .map(|t| (t / d.kw * d.dh * d.wp + t % d.kw * d.dw) * cs)
        .collect();
    let groups = d.groups();
    // byte masks: interleave bytes of two vectors (low, high halves), then halfwords
    let mask = |fx: &mut Fx, half: u8, wide: u8| {
        let m: Vec<u8> = (0..16u8)
            .map(|k| {
                let (lane, part) = (k / (2 * wide), k % (2 * wide));
                let src = if part < wide { 0 } else { 16 };
                src + 8 * half + lane * wide + part % wide
            })
            .collect();
        fx.b.func.dfg.immediates.push(m.as_slice().into())
    };
    let (lo8, hi8, lo16, hi16) = (mask(fx, 0, 1), mask(fx, 1, 1), mask(fx, 0, 2), mask(fx, 1, 2));
    let zero = fx.b.ins().iconst(I8, 0);
    let zero = fx.b.ins().splat(I8X16, zero);
    // hybrid: the sums start at -(zp [+ 128]) * sum(w)
    let (table, neg_zp) = match start {
        Start::Table(t) => (t, None),
        Start::Sums { sums, zp } => {
            let z = fx.b.ins().iadd_imm_s(zp, -flip_of(dot));
            let z = fx.b.ins().ineg(z);
            (sums, Some(fx.b.ins().splat(I32X4, z)))
        }
    };
    fx.for_ptrs(
        cs / 16,
        &[(xpad, 16), (sums, 64), (weights, groups * 64), (table, 64)],
        &mut |fx, cb| {
            let (wb, sb) = (cb[2], cb[3]);
            let init: Vec<Value> = (0..4)
                .map(|j| {
                    let v = fx.b.ins().load(I32X4, flags(), sb, 16 * j);
                    match neg_zp {
                        Some(z) => fx.b.ins().imul(v, z),
                        None => v,
                    }
                })
                .collect();
            fx.for_ptrs(
                d.oh,
                &[(cb[0], d.sh * d.wp * cs), (cb[1], 4 * d.ow * cs)],
                &mut |fx, r| {
                    fx.for_ptrs(d.ow, &[(r[0], d.sw * cs), (r[1], 4 * cs)], &mut |fx, q| {
                        let mut acc = init.clone();
                        for gr in 0..groups {
                            let t: Vec<Value> = (0..4)
                                .map(|i| match offs.get((4 * gr + i) as usize) {
                                    Some(&o) => fx.b.ins().load(I8X16, flags(), q[0], o as i32),
                                    None => zero,
                                })
                                .collect();
                            let a = fx.b.ins().shuffle(t[0], t[1], lo8);
                            let b = fx.b.ins().shuffle(t[0], t[1], hi8);
                            let c = fx.b.ins().shuffle(t[2], t[3], lo8);
                            let e = fx.b.ins().shuffle(t[2], t[3], hi8);
                            let lanes = [
                                fx.b.ins().shuffle(a, c, lo16),
                                fx.b.ins().shuffle(a, c, hi16),
                                fx.b.ins().shuffle(b, e, lo16),
                                fx.b.ins().shuffle(b, e, hi16),
                            ];
                            for (j, v) in lanes.into_iter().enumerate() {
                                let w = fx.b.ins().load(I8X16, flags(), wb, (64 * gr + 16 * j as i64) as i32);
                                acc[j] = dot4_lanes(fx, dot, v, w, acc[j]);
                            }
                        }
                        for (j, v) in acc.into_iter().enumerate() {
                            fx.b.ins().store(flags(), v, q[1], 16 * j as i32);
                        }
                    });
                },
            );
        },
    );
}

/// The hybrid sums' starts `-zp * sum(w)` per channel (of `c16`) in a stack table, for the
/// 256-bit kernel (halfword pairs: no unsigned bias).
fn starts_of(fx: &mut Fx, d: &QDw, wsums: Value, zp: Value) -> Value {
    let data = StackSlotData::new(StackSlotKind::ExplicitSlot, 4 * d.c16 as u32, 5);
    let slot = fx.b.create_sized_stack_slot(data);
    let table = fx.b.ins().stack_addr(I64, slot, 0);
    let z = fx.b.ins().ineg(zp);
    let z = fx.b.ins().splat(I32X4, z);
    fx.for_ptrs(d.c16 / 4, &[(wsums, 16), (table, 16)], &mut |fx, q| {
        let v = fx.b.ins().load(I32X4, flags(), q[0], 0);
        let v = fx.b.ins().imul(v, z);
        fx.b.ins().store(flags(), v, q[1], 0);
    });
    table
}

/// [`sum_positions`] on the 256-bit kernel: one call per block of sixteen channels and
/// output row, weights from `wide` ([`wide_weights`]), starts from `table`.
fn sum_positions_wide(fx: &mut Fx, d: &QDw, wide: Value, table: Value, xpad: Value, sums: Value) {
    let cs = d.c16;
    let mut taps: Vec<i32> = (0..d.taps)
        .map(|t| ((t / d.kw * d.dh * d.wp + t % d.kw * d.dw) * cs) as i32)
        .collect();
    if taps.len() % 2 == 1 {
        taps.push(taps[0]);
    }
    let pairs = taps.len() as i64 / 2;
    let code = super::wide::DepthwiseRow {
        taps,
        cols: d.ow as usize,
        x_step: (d.sw * cs) as i32,
        sum_step: (4 * cs) as i32,
    }
    .code();
    fx.for_ptrs(
        cs / 16,
        &[(xpad, 16), (sums, 64), (wide, 64 * pairs), (table, 64)],
        &mut |fx, cb| {
            let rows = [(cb[0], d.sh * d.wp * cs), (cb[1], 4 * d.ow * cs)];
            fx.for_ptrs(d.oh, &rows, &mut |fx, r| {
                fx.call_code(&code, &[r[0], cb[2], r[1], cb[3]]);
            });
        },
    );
}

/// The byte bias of the activations for dot product `dot` (-128 for unsigned ones).
fn flip_of(dot: Dot) -> i64 {
    if dot == Dot::UnsignedBySigned { -128 } else { 0 }
}

/// `acc +` per 32-bit lane the four byte products of `x` and `w` (each lane its own
/// weights): the dot product where the target has one, else halfword pairs.
fn dot4_lanes(fx: &mut Fx, dot: Dot, x: Value, w: Value, acc: Value) -> Value {
    if dot != Dot::Pairs {
        return dot4(fx, dot, x, w, acc);
    }
    let b = &mut fx.b;
    let (xl, xh) = (b.ins().swiden_low(x), b.ins().swiden_high(x));
    let (wl, wh) = (b.ins().swiden_low(w), b.ins().swiden_high(w));
    let lo = fx.madd_i16(xl, wl);
    let hi = fx.madd_i16(xh, wh);
    let s = fx.b.ins().iadd_pairwise(lo, hi);
    fx.b.ins().iadd(s, acc)
}

/// The sums `[position][c16]` rescaled into `y` `[C][P]`: eight positions by four channels
/// at a time by the 256-bit kernel where given (`wide`), then four by four transposed in
/// registers and finished four at a time where the sums provably fit, the rest one by one.
fn finish(
    fx: &mut Fx,
    d: &QDw,
    st: &Stage,
    (sums, records, wide): (Value, Value, Option<(Value, super::wide::Finish)>),
    y: Value,
) {
    let p = d.oh * d.ow;
    let es = st.elem();
    let vector = matches!(st, Stage::Static { fits: true, .. } | Stage::Dynamic { .. });
    let p8 = if wide.is_some() && vector { p / 8 * 8 } else { 0 };
    let (c4, p4) = if vector { (d.c / 4, (p - p8) / 4) } else { (0, 0) };
    let one = |fx: &mut Fx, chan: (Value, Value), s: Value, t: Value| {
        let v = fx.b.ins().load(I32, flags(), s, 0);
        st.store(fx, v, chan, t, 0);
    };
    fx.for_n(c4, &mut |fx, cq| {
        let c0 = fx.mul_imm(cq, 4);
        let chans: Vec<(Value, Value)> = (0..4)
            .map(|j| {
                let ch = fx.add_imm(c0, j);
                st.channel(fx, ch)
            })
            .collect();
        let s0 = fx.addr(sums, c0, 4);
        let y0 = fx.addr(y, c0, p * es);
        let rec = fx.addr(records, c0, RESCALE_RECORD);
        if let (Some((frec, f)), true) = (wide, p8 > 0) {
            let code = super::wide::DepthwiseFinish {
                blocks: (p8 / 8) as usize,
                pos_step: (4 * d.c16) as i32,
                finish: f,
            }
            .code();
            let r = fx.addr(frec, c0, super::wide::finish_record::SIZE as i64);
            fx.call_code(&code, &[s0, s0, y0, r]);
        }
        let (s0, y0) = (fx.add_imm(s0, 4 * p8 * d.c16), fx.add_imm(y0, p8 * es));
        fx.for_ptrs(p4, &[(s0, 16 * d.c16), (y0, 4 * es)], &mut |fx, pq| {
            let v: Vec<Value> = (0..4)
                .map(|i| fx.b.ins().load(I32X4, flags(), pq[0], (4 * i * d.c16) as i32))
                .collect();
            let rows = dwconv::transpose4(fx, [v[0], v[1], v[2], v[3]]);
            for (j, r) in rows.into_iter().enumerate() {
                let off = (j as i64 * p * es) as i32;
                match *st {
                    Stage::Static { q, .. } => {
                        let rj = fx.add_imm(rec, j as i64 * RESCALE_RECORD);
                        let out = finish_fit4_rec(fx, q, r, rj);
                        store_bytes4(fx, out, pq[1], off, 4);
                    }
                    Stage::Dynamic { .. } => {
                        let f = fx.b.ins().fcvt_from_sint(F32X4, r);
                        let s = fx.b.ins().splat(F32X4, chans[j].0);
                        let f = fx.b.ins().fmul(f, s);
                        fx.b.ins().store(flags(), f, pq[1], off);
                    }
                }
            }
        });
        // the positions past the whole blocks of four
        let (s, t) = (fx.add_imm(s0, 16 * p4 * d.c16), fx.add_imm(y0, 4 * p4 * es));
        fx.for_ptrs(p - p8 - 4 * p4, &[(s, 4 * d.c16), (t, es)], &mut |fx, pq| {
            for (j, &chan) in chans.iter().enumerate() {
                let (sj, tj) = (fx.add_imm(pq[0], 4 * j as i64), fx.add_imm(pq[1], j as i64 * p * es));
                one(fx, chan, sj, tj);
            }
        });
    });
    // the channels past the whole blocks of four (all of them without the vector path)
    fx.for_n(d.c - 4 * c4, &mut |fx, r| {
        let ch = fx.add_imm(r, 4 * c4);
        let chan = st.channel(fx, ch);
        let s0 = fx.addr(sums, ch, 4);
        let y0 = fx.addr(y, ch, p * es);
        fx.for_ptrs(p, &[(s0, 4 * d.c16), (y0, es)], &mut |fx, pq| {
            one(fx, chan, pq[0], pq[1])
        });
    });
}

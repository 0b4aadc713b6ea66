//! Int8 one-group convolutions on the CPU's 4-way byte dot product (pointwise directly,
//! others on their im2col rows), or without one on halfword pair products: x86 `vpdpbusd`
//! (AVX-VNNI or AVX512-VNNI) and AArch64 `sdot` (FEAT_DotProd). CLIF has no dot opcode;
//! Cranelift folds the exact widening tree of [`dot4`] into the one instruction when the
//! ISA flags allow it, so the arithmetic is the evaluator's bit for bit either way.
//!
//! Eight positions at a time, the planar activations are interleaved into a small scratch
//! buffer, four input channels per 32-bit lane and four positions per vector (x86: biased
//! by 128 into unsigned bytes, the operand `vpdpbusd` takes unsigned; the bias comes back
//! out through the per-channel table `(zp + 128) * sum(w)`). Then each block of four output
//! channels keeps eight vector sums over them: per four input channels, two vector loads,
//! and per output channel one broadcast weight word and two dot products (32 products).

use super::super::fx::Fx;
use super::Args;
use super::quant::Stage;
use cranelift_codegen::ir::types::{I8X16, I32, I32X4, I64};
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, StackSlotData, StackSlotKind, Value};
use kiln_ir::op::{QLinear, Window};
use kiln_ir::{Graph, NodeId, Op, Scalar};

/// Which dot product the target has (`Pairs` on any other x86-64 or AArch64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dot {
    /// Unsigned activations by signed weights (x86 VNNI).
    UnsignedBySigned,
    /// Signed by signed (AArch64 `sdot`).
    Signed,
    /// No byte dot product: signed bytes widened to halfwords, pairs summed by a
    /// `pmaddwd`-shaped product and the pairs of pairs by a pairwise add (any 128-bit SIMD).
    Pairs,
}

impl Dot {
    /// The dot product the named CPU features give, if any.
    pub fn of(arch: target_lexicon::Architecture, features: &[&str]) -> Option<Dot> {
        let has = |f| features.contains(&f);
        match arch {
            target_lexicon::Architecture::X86_64
                if (has("avx") && has("avxvnni")) || (has("avx512vl") && has("avx512vnni")) =>
            {
                Some(Dot::UnsignedBySigned)
            }
            target_lexicon::Architecture::Aarch64(_) if has("dotprod") => Some(Dot::Signed),
            target_lexicon::Architecture::X86_64 | target_lexicon::Architecture::Aarch64(_) => Some(Dot::Pairs),
            _ => None,
        }
    }
}

fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// The product an int8 convolution this kernel takes reduces to: `c` rows (input channels
/// times taps) of `p` positions against `m` output channels; `im2col` when the rows are
/// gathered first (a spatial window). Static int8 with 8-bit constant weights, one group,
/// rows a multiple of four, at least four positions.
struct Dims {
    c: i64,
    p: i64,
    m: i64,
    im2col: Option<i64>,
}

fn dims(g: &Graph, n: NodeId) -> Option<Dims> {
    let node = g.node(n);
    let (window, group, io_ok) = match &node.op {
        Op::QConv { window, group, q } => (
            window,
            group,
            q.weight_bits == 8
                && g.value(node.inputs[0]).ty.dtype.scalar == Scalar::I8
                && g.value(node.outputs[0]).ty.dtype.scalar == Scalar::I8,
        ),
        // hybrid: the f32 input is quantized to int8 at run time, the output is f32
        Op::DynConv { window, group, .. } => (
            window,
            group,
            kiln_ir::analysis::packed_weight_bits(g, node.inputs[1]).is_none()
                && g.value(node.inputs[1]).ty.dtype.scalar == Scalar::I8,
        ),
        _ => return None,
    };
    let xs = &g.value(node.inputs[0]).ty.shape;
    let taps: usize = window.kernel.iter().product();
    let p: usize = g.value(node.outputs[0]).ty.shape[2..].iter().product();
    let c = xs[1] * taps;
    let direct = taps == 1
        && window.strides.iter().all(|&s| s == 1)
        && window.pads.iter().all(|&v| v == 0)
        && xs[2..].iter().product::<usize>() == p;
    // im2col rows are padded to whole words (their weights with zeros, `padded_rows`);
    // a direct product reads the input itself, so its channels must be whole words
    let c4 = c.next_multiple_of(4);
    let ok = *group == 1 && io_ok && g.const_value(node.inputs[1]).is_some() && (!direct || c == c4) && p >= 4;
    ok.then_some(Dims {
        c: c4 as i64,
        p: p as i64,
        m: g.value(node.inputs[1]).ty.shape[0] as i64,
        im2col: (!direct).then_some(((c4 * p) as i64 + 15) / 16 * 16),
    })
}

/// For a convolution this kernel takes, its weight rows as the kernel on `dot` reads them
/// when they are not the weights themselves (an `aux` table, index 6): zero-padded to a
/// multiple of four bytes; for `Pairs` widened to halfwords (once here rather than per
/// product at run time) and blocked as [`super::pairs::sums`] reads them.
pub(crate) fn weight_rows(g: &Graph, n: NodeId, dot: Option<Dot>) -> Option<Vec<u8>> {
    let d = dims(g, n)?;
    let w = g.const_value(g.node(n).inputs[1])?.to_i64_vec();
    let row = w.len() / d.m.max(1) as usize;
    if dot == Some(Dot::Pairs) {
        let (m, c) = (d.m as usize, d.c as usize);
        return Some(match windowed(g, n, dot) {
            Some(win) => super::pairs::block_weights(m, win.rows() as usize, &|o, i| {
                win.source_row(i).map(|k| w[o * row + k])
            }),
            None => super::pairs::block_weights(m, c, &|o, i| (i < row).then(|| w[o * row + i])),
        });
    }
    if row == d.c as usize {
        return None;
    }
    let mut out = vec![0u8; d.m as usize * d.c as usize];
    for (o, r) in w.chunks(row).enumerate() {
        for (i, &v) in r.iter().enumerate() {
            out[o * d.c as usize + i] = v as i8 as u8;
        }
    }
    Some(out)
}

/// A spatial convolution this kernel reads in place from a bordered copy of its input
/// rather than from im2col rows (halfword pairs only; see [`super::pairs::Windowed`]).
pub(crate) fn windowed(g: &Graph, n: NodeId, dot: Option<Dot>) -> Option<super::pairs::Windowed> {
    let node = g.node(n);
    let window = match &node.op {
        Op::QConv { window, .. } | Op::DynConv { window, .. } => window,
        _ => return None,
    };
    if dot != Some(Dot::Pairs) || dims(g, n)?.im2col.is_none() {
        return None;
    }
    let (xs, out) = (&g.value(node.inputs[0]).ty.shape, &g.value(node.outputs[0]).ty.shape);
    super::pairs::Windowed::of(window, xs, out)
}

/// The 256-bit kernel for one block of eight positions on halfword pairs, if the
/// convolution takes it (`d` is `Pairs` and the target has AVX2): per block of four
/// output channels, the sums stored, or finished into int8 outputs where
/// [`finish_starts`] gives the sums' starts.
fn wide_sums(g: &Graph, n: NodeId, d: Dot) -> Option<super::wide::PairSums> {
    let dims = dims(g, n)?;
    let rows = windowed(g, n, Some(d)).map_or(dims.c, |w| w.rows());
    let finish = finish_starts(g, n).map(|_| super::wide::Finish {
        tflite: matches!(&g.node(n).op, Op::QConv { q, .. } if q.numerics == kiln_ir::op::Numerics::Tflite),
        row: dims.p as i32,
    });
    let w = super::wide::PairSums {
        rows: rows as usize,
        blocks: (dims.m as usize).div_ceil(4),
        finish,
    };
    (d == Dot::Pairs && rows >= 4 && w.out_bytes() <= WIDE_SUMS_BYTES).then_some(w)
}

/// Per output channel, `bias - zp * sum(w)`: where the 256-bit kernel finishes a static
/// convolution's sums itself (constant bias, whole blocks of four channels, a vector
/// rescale that provably fits i32 and outputs in the int8 range).
pub(crate) fn finish_starts(g: &Graph, n: NodeId) -> Option<Vec<i32>> {
    let node = g.node(n);
    let Op::QConv { q, .. } = &node.op else {
        return None;
    };
    let m = dims(g, n)?.m as usize;
    let in_range = q.act_min >= -128 && q.act_max <= 127;
    if !m.is_multiple_of(4) || !in_range || !super::quant::fits_i32(g, n, q) {
        return None;
    }
    let bias = match node.inputs.get(2) {
        Some(&b) => g.const_value(b)?.to_i64_vec(),
        None => vec![0; m],
    };
    let w = g.const_value(node.inputs[1])?.to_i64_vec();
    let per = w.len() / m;
    Some(
        (0..m)
            .map(|o| {
                let sum = w[o * per..(o + 1) * per]
                    .iter()
                    .fold(0i32, |a, &v| a.wrapping_add(v as i32));
                (bias[o] as i32).wrapping_sub(q.input_zp.wrapping_mul(sum))
            })
            .collect(),
    )
}

/// Whether node `n` runs here when the target has a dot product.
pub(crate) fn applies(g: &Graph, n: NodeId) -> bool {
    dims(g, n).is_some()
}

/// Scratch bytes on dot product `dot`: the im2col rows if any, then eight interleaved
/// positions (as halfwords for `Pairs`).
pub(crate) fn scratch(g: &Graph, n: NodeId, dot: Dot) -> usize {
    if let Some(w) = windowed(g, n, Some(dot)) {
        return (w.copy_bytes() + 16 * w.rows()) as usize;
    }
    let per = if dot == Dot::Pairs { 16 } else { 8 };
    dims(g, n).map_or(0, |d| (d.im2col.unwrap_or(0) + per * d.c) as usize)
}

/// `acc + (per 32-bit lane) the sum of the four byte products of x and w`, exactly, as the
/// tree Cranelift folds into `vpdpbusd` (x unsigned) or `sdot`.
pub(crate) fn dot4(fx: &mut Fx, d: Dot, x: Value, w: Value, acc: Value) -> Value {
    if d == Dot::Pairs {
        // w holds one channel's four weights in every lane, so its low half serves both
        let w16 = fx.b.ins().swiden_low(w);
        let (xl, xh) = (fx.b.ins().swiden_low(x), fx.b.ins().swiden_high(x));
        let sums = [fx.madd_i16(xl, w16), fx.madd_i16(xh, w16)];
        let s = fx.b.ins().iadd_pairwise(sums[0], sums[1]);
        return fx.b.ins().iadd(s, acc);
    }
    let b = &mut fx.b;
    let (wl, wh) = (b.ins().swiden_low(w), b.ins().swiden_high(w));
    let (xl, xh) = match d {
        Dot::UnsignedBySigned => (b.ins().uwiden_low(x), b.ins().uwiden_high(x)),
        _ => (b.ins().swiden_low(x), b.ins().swiden_high(x)),
    };
    let lo = b.ins().imul(wl, xl);
    let hi = b.ins().imul(wh, xh);
    let (l0, l1) = (b.ins().swiden_low(lo), b.ins().swiden_high(lo));
    let (h0, h1) = (b.ins().swiden_low(hi), b.ins().swiden_high(hi));
    let pl = b.ins().iadd_pairwise(l0, l1);
    let ph = b.ins().iadd_pairwise(h0, h1);
    let s = b.ins().iadd_pairwise(pl, ph);
    b.ins().iadd(s, acc)
}

/// The interleave of the `valid` (<= 8) positions from `x0` of all `c` rows (of `p` bytes)
/// into `dst`: per four rows 32 bytes, each 4-byte lane the four rows'
/// bytes at one position (biased by 128 for `UnsignedBySigned`). A full block loads a word
/// per row and half; a partial one loads bytes (a word could read past the last row).
fn interleave8(fx: &mut Fx, d: Dot, x0: Value, dst: Value, (c, p): (i64, i64), valid: i64) {
    let lanes = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
    // output byte 4j + i = input byte 4i + j (a 4x4 byte transpose)
    let mask: Vec<u8> = (0..16u8).map(|k| (k % 4) * 4 + k / 4).collect();
    let mask = fx.b.func.dfg.immediates.push(mask.as_slice().into());
    let bias = fx.b.ins().iconst(cranelift_codegen::ir::types::I8, -128i64);
    let bias = fx.b.ins().splat(I8X16, bias);
    fx.for_ptrs(c / 4, &[(x0, 4 * p), (dst, 32)], &mut |fx, r| {
        for h in 0..2i64 {
            let n = (valid - 4 * h).clamp(0, 4);
            let words = [0, 1, 2, 3].map(|i| {
                let off = (i * p + 4 * h) as i32;
                if n == 4 {
                    return fx.b.ins().load(I32, flags(), r[0], off);
                }
                let mut w = fx.b.ins().iconst(I32, 0);
                for j in 0..n {
                    let byte = fx.b.ins().uload8(I32, flags(), r[0], off + j as i32);
                    let sh = fx.b.ins().ishl_imm_u(byte, 8 * j);
                    w = fx.b.ins().bor(w, sh);
                }
                w
            });
            let v = fx.b.ins().scalar_to_vector(I32X4, words[0]);
            let v = fx.b.ins().insertlane(v, words[1], 1);
            let v = fx.b.ins().insertlane(v, words[2], 2);
            let v = fx.b.ins().insertlane(v, words[3], 3);
            let bytes = fx.b.ins().bitcast(I8X16, lanes, v);
            let t = fx.b.ins().shuffle(bytes, bytes, mask);
            let t = match d {
                Dot::UnsignedBySigned => fx.b.ins().bxor(t, bias),
                Dot::Signed | Dot::Pairs => t,
            };
            fx.b.ins().store(flags(), t, r[1], (16 * h) as i32);
        }
    });
}

/// An int8 convolution with output stage `q` on dot product `d`. `aux` holds the
/// requantization tables (2, 3) and the zero-point term (4: `zp * sum(w)`, 5: `(zp + 128)
/// * sum(w)`), as `quant::aux` builds them.
pub(crate) fn qconv(fx: &mut Fx, g: &Graph, n: NodeId, window: &Window, q: &QLinear, a: &Args, d: Dot) {
    // with AVX2, the 256-bit kernel's finish records come last (`finishes_wide`)
    let finish = (fx.code.is_some() && finishes_wide(g, n, d)).then(|| a.aux[a.aux.len() - 1]);
    let aux = &a.aux[..a.aux.len() - finish.is_some() as usize];
    let zsum = match d {
        Dot::UnsignedBySigned => aux[5],
        Dot::Signed | Dot::Pairs => aux[4],
    };
    let st = Stage::Static {
        q,
        mult: aux[2],
        shift: aux[3],
        zsum,
        fits: super::quant::fits_i32(g, n, q),
    };
    // the weight rows as this kernel reads them if they differ from the weights, then the
    // rescale records (`quant::aux`)
    let weights = if aux.len() > 7 { aux[6] } else { a.ins[1] };
    conv(fx, g, n, window, st, (weights, aux.last().copied(), finish), a, d);
}

/// Whether the 256-bit kernel finishes node `n`'s sums itself on dot product `d` (then
/// its records are the last table, [`finish_table`]).
pub(crate) fn finishes_wide(g: &Graph, n: NodeId, d: Dot) -> bool {
    wide_sums(g, n, d).is_some_and(|w| w.finish.is_some())
}

/// The records [`super::wide::Finish`] reads for node `n`, one per output channel.
pub(crate) fn finish_table(g: &Graph, n: NodeId) -> Vec<u8> {
    let Op::QConv { q, .. } = &g.node(n).op else {
        unreachable!("checked by `finishes_wide`")
    };
    let starts = finish_starts(g, n).expect("checked by `finishes_wide`");
    super::quant::finish_records(q, &starts)
}

/// `zp * sum(w)` of channel `ch` as the dot product `d` needs it: with `(zp + 128)` for
/// activations biased to unsigned (a static stage's table is chosen by its caller).
fn zero_term(fx: &mut Fx, st: &Stage, d: Dot, ch: Value) -> Value {
    match *st {
        Stage::Dynamic { zp, wsum, .. } if d == Dot::UnsignedBySigned => {
            let wa = fx.addr(wsum, ch, 4);
            let w = fx.load(I32, wa);
            let z = fx.b.ins().iadd_imm_s(zp, 128);
            fx.b.ins().imul(w, z)
        }
        _ => st.zsum(fx, ch),
    }
}

/// A hybrid convolution (`DynConv`) on dot product `d`, its input already quantized into
/// `a.ins[0]` with stage `st`; `weights` as for [`qconv`] (`aux` 4 when padded).
pub(crate) fn dyn_qconv(fx: &mut Fx, g: &Graph, n: NodeId, window: &Window, st: Stage, a: &Args, d: Dot) {
    let weights = if a.aux.len() > 4 { a.aux[4] } else { a.ins[1] };
    conv(fx, g, n, window, st, (weights, None, None), a, d);
}

/// The convolution of [`qconv`] with any output stage; `records` the rescale records of a
/// static stage (`quant::rescale_records`), if any, and `finish` the 256-bit kernel's
/// ([`finish_table`]) where it finishes the sums itself.
#[allow(clippy::too_many_arguments)]
fn conv(
    fx: &mut Fx,
    g: &Graph,
    n: NodeId,
    window: &Window,
    st: Stage,
    (weights, records, finish): (Value, Option<Value>, Option<Value>),
    a: &Args,
    d: Dot,
) {
    let Dims { c, p, m, im2col } = dims(g, n).expect("checked by `applies`");
    let win = windowed(g, n, Some(d));
    // product rows: the window's (channel, tap) rows when read in place
    let c = win.map_or(c, |w| w.rows());
    let node = g.node(n);
    let batch = g.value(node.inputs[0]).ty.shape[0] as i64;
    let has_bias = matches!(node.op, Op::QConv { .. }) && node.inputs.len() > 2;
    let lanes = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
    let es = st.elem();
    let inter = fx.add_imm(a.scratch, win.map_or(im2col.unwrap_or(0), |w| w.copy_bytes()));
    // with AVX2, each block of positions' pair sums come from one 256-bit kernel call into
    // a stack buffer (bounded: the widest layers fall back to the 128-bit loop)
    // (the whole blocks of eight positions finished by it too, with `finish`)
    let wide = wide_sums(g, n, d).filter(|_| fx.code.is_some()).map(|w| {
        let data = StackSlotData::new(StackSlotKind::ExplicitSlot, w.out_bytes() as u32, 5);
        let slot = fx.b.create_sized_stack_slot(data);
        (w, fx.b.ins().stack_addr(I64, slot, 0))
    });
    fx.for_n(batch, &mut |fx, b| {
        let x = match (win, im2col) {
            (Some(w), _) => {
                let xb = fx.addr(a.ins[0], b, w.ci * (w.plane.h * w.plane.w) as i64);
                let zp = st.zp(fx);
                w.border(fx, xb, a.scratch, zp);
                a.scratch
            }
            (None, Some(_)) => super::quant::im2col(fx, g, n, window, st, a, b),
            (None, None) => fx.addr(a.ins[0], b, c * p),
        };
        let y = fx.addr(a.outs[0], b, m * p * es);
        // `k` output channels from `oc0`, positions from `pos` (`valid` of the block's 8).
        let block = |fx: &mut Fx, oc0: Value, k: i64, pos: Value, valid: i64| {
            let ocs: Vec<Value> = (0..k).map(|i| fx.add_imm(oc0, i)).collect();
            let vars: Vec<[cranelift_frontend::Variable; 2]> = ocs
                .iter()
                .map(|&oc| {
                    let init = if has_bias {
                        let ba = fx.addr(a.ins[2], oc, 4);
                        fx.load(I32, ba)
                    } else {
                        fx.b.ins().iconst(I32, 0)
                    };
                    let s = fx.b.ins().splat(I32X4, init);
                    [0, 1].map(|_| {
                        let v = fx.b.declare_var(I32X4);
                        fx.b.def_var(v, s);
                        v
                    })
                })
                .collect();
            if let Some((_, sums)) = wide {
                let at = fx.addr(sums, oc0, 32);
                for (i, v) in vars.iter().enumerate() {
                    for (h, &var) in v.iter().enumerate() {
                        let s = fx.b.ins().load(I32X4, flags(), at, (32 * i + 16 * h) as i32);
                        let cur = fx.b.use_var(var);
                        let nv = fx.b.ins().iadd(cur, s);
                        fx.b.def_var(var, nv);
                    }
                }
            } else if d == Dot::Pairs {
                let w0 = fx.addr(weights, oc0, 2 * c);
                super::pairs::sums(fx, inter, w0, c, &vars);
            } else {
                let w0 = fx.addr(weights, oc0, c);
                fx.for_ptrs(c / 4, &[(inter, 32), (w0, 4)], &mut |fx, r| {
                    let x0 = fx.b.ins().load(I8X16, flags(), r[0], 0);
                    let x1 = fx.b.ins().load(I8X16, flags(), r[0], 16);
                    for (i, v) in vars.iter().enumerate() {
                        // read-only weights: a pure load, broadcast straight from memory
                        let wa = fx.add_imm(r[1], i as i64 * c);
                        let w = fx.load_ro(I32, wa);
                        let w = fx.b.ins().splat(I32X4, w);
                        let w = fx.b.ins().bitcast(I8X16, lanes, w);
                        for (h, xv) in [x0, x1].into_iter().enumerate() {
                            let cur = fx.b.use_var(v[h]);
                            let nv = dot4(fx, d, xv, w, cur);
                            fx.b.def_var(v[h], nv);
                        }
                    }
                });
            }
            for (i, v) in vars.iter().enumerate() {
                let zs = zero_term(fx, &st, d, ocs[i]);
                let row = fx.addr(y, ocs[i], p * es);
                let yp = fx.addr(row, pos, es);
                let zs4 = fx.b.ins().splat(I32X4, zs);
                // the channel's rescale: from its record where the vector path runs
                let fin = match (records, st) {
                    (Some(r), Stage::Static { q, fits: true, .. }) => {
                        Finish::Record(q, fx.addr(r, ocs[i], super::quant::RESCALE_RECORD))
                    }
                    _ => Finish::Channel(st.channel(fx, ocs[i])),
                };
                for (h, &var) in v.iter().enumerate() {
                    let n = (valid - 4 * h as i64).min(4);
                    if n <= 0 {
                        break;
                    }
                    let acc = fx.b.use_var(var);
                    let acc = fx.b.ins().isub(acc, zs4);
                    store4(fx, &st, acc, &fin, yp, 4 * h as i32, n);
                }
            }
        };
        // Per eight positions: interleave them, then every block of output channels. In
        // place (`win`), `at` is where the window of the first position starts in the copy.
        let positions = |fx: &mut Fx, pos: Value, at: Value, valid: i64| {
            match (win, d) {
                (Some(w), _) => w.interleave(fx, at, inter, valid),
                (None, Dot::Pairs) => {
                    let x0 = fx.addr(x, pos, 1);
                    super::pairs::interleave8(fx, x0, inter, (c, p), valid)
                }
                (None, _) => {
                    let x0 = fx.addr(x, pos, 1);
                    interleave8(fx, d, x0, inter, (c, p), valid)
                }
            }
            if let Some((w, sums)) = wide {
                if let (Some(records), 8, Some(_)) = (finish, valid, w.finish) {
                    let yp = fx.addr(y, pos, 1);
                    fx.call_code(&w.code(), &[inter, weights, yp, records]);
                    return;
                }
                let w = super::wide::PairSums { finish: None, ..w };
                fx.call_code(&w.code(), &[inter, weights, sums]);
            }
            fx.for_n(m / 4, &mut |fx, ob| {
                let oc0 = fx.mul_imm(ob, 4);
                block(fx, oc0, 4, pos, valid);
            });
            if m % 4 != 0 {
                let oc0 = fx.i(m / 4 * 4);
                block(fx, oc0, m % 4, pos, valid);
            }
        };
        if let Some(w) = win {
            // per output row, blocks of eight columns (the last partial)
            let (oh, ow) = (w.plane.oh as i64, w.plane.ow as i64);
            let (sh, sw) = (w.plane.sh as i64, w.plane.sw as i64);
            fx.for_n(oh, &mut |fx, oy| {
                let row = fx.mul_imm(oy, ow);
                let src = fx.addr(x, oy, sh * w.wp);
                fx.for_n(ow / 8, &mut |fx, cb| {
                    let col = fx.mul_imm(cb, 8);
                    let pos = fx.b.ins().iadd(row, col);
                    let at = fx.addr(src, col, sw);
                    positions(fx, pos, at, 8);
                });
                if ow % 8 != 0 {
                    let pos = fx.add_imm(row, ow / 8 * 8);
                    let at = fx.add_imm(src, ow / 8 * 8 * sw);
                    positions(fx, pos, at, ow % 8);
                }
            });
            return;
        }
        fx.for_n(p / 8, &mut |fx, pb| {
            let pos = fx.mul_imm(pb, 8);
            positions(fx, pos, x, 8);
        });
        if p % 8 != 0 {
            let pos = fx.i(p / 8 * 8);
            positions(fx, pos, x, p % 8);
        }
    });
}

/// The largest stack buffer of pair sums per block of positions (512 output channels).
const WIDE_SUMS_BYTES: usize = 16 * 1024;

/// How one channel's sums are finished: four lanes at a time from its rescale record (a
/// static stage whose sums provably fit), or with its constants from the stage.
enum Finish<'a> {
    Record(&'a QLinear, Value),
    Channel((Value, Value)),
}

/// The first `valid` (1..=4) lanes of the sums `acc` of one channel finished as `fin` says
/// and stored from `yp + off` (in output elements of four): int8 four at a time from a
/// record, f32 (hybrid) four at a time, else one by one.
fn store4(fx: &mut Fx, st: &Stage, acc: Value, fin: &Finish, yp: Value, off: i32, valid: i64) {
    match (fin, st) {
        (&Finish::Record(q, rec), _) => {
            let r = super::quant::finish_fit4_rec(fx, q, acc, rec);
            super::quant::store_bytes4(fx, r, yp, off, valid);
        }
        (&Finish::Channel(chan), Stage::Dynamic { .. }) => {
            use cranelift_codegen::ir::types::F32X4;
            let f = fx.b.ins().fcvt_from_sint(F32X4, acc);
            let s = fx.b.ins().splat(F32X4, chan.0);
            let y = fx.b.ins().fmul(f, s);
            if valid == 4 {
                fx.b.ins().store(flags(), y, yp, 4 * off);
                return;
            }
            for j in 0..valid {
                let e = fx.b.ins().extractlane(y, j as u8);
                fx.b.ins().store(flags(), e, yp, 4 * (off + j as i32));
            }
        }
        (&Finish::Channel(chan), Stage::Static { .. }) => {
            for j in 0..valid {
                let e = fx.b.ins().extractlane(acc, j as u8);
                st.store(fx, e, chan, yp, off + j as i32);
            }
        }
    }
}

/// Whether int8 product `n` runs on [`qmatmul`]: static int8 with 8-bit constant weights and
/// a depth that is whole vectors of sixteen.
pub(crate) fn matmul_applies(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    let Op::QMatMul { q } = &node.op else {
        return false;
    };
    let ws = &g.value(node.inputs[1]).ty.shape;
    q.weight_bits == 8
        && ws.len() == 2
        && ws[0].is_multiple_of(16)
        && g.value(node.inputs[0]).ty.dtype.scalar == Scalar::I8
        && g.value(node.outputs[0]).ty.dtype.scalar == Scalar::I8
        && g.const_value(node.inputs[1]).is_some()
}

/// An int8 product `[rows, k] x [k, n]` over the weight columns (`aux` 2, `[n, k]`): four
/// outputs at a time share each sixteen activations; per output one weight vector and one
/// dot product (or, as `Pairs`, two `pmaddwd`-shaped products) per sixteen. `aux`: the
/// requantization tables (0, 1), the zero-point terms (3: `zp * sum(w)`, 4: `(zp + 128) *
/// sum(w)`).
pub(crate) fn qmatmul(fx: &mut Fx, g: &Graph, n: NodeId, q: &QLinear, a: &Args, d: Dot) {
    let node = g.node(n);
    let k = g.value(node.inputs[1]).ty.shape[0] as i64;
    let zsum = match d {
        Dot::UnsignedBySigned => a.aux[4],
        Dot::Signed | Dot::Pairs => a.aux[3],
    };
    let st = Stage::Static {
        q,
        mult: a.aux[0],
        shift: a.aux[1],
        zsum,
        fits: super::quant::fits_i32(g, n, q),
    };
    product(fx, g, n, a, d, a.aux[2], &|fx, r| (fx.addr(a.ins[0], r, k), st));
}

/// Whether hybrid product `n` runs on [`dyn_qmatmul`]: one scale per column (no blocks) and
/// a depth that is whole vectors of sixteen.
pub(crate) fn dyn_matmul_applies(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    let ws = &g.value(node.inputs[1]).ty.shape;
    matches!(node.op, Op::DynMatMul { block: 0, .. })
        && ws.len() == 2
        && ws[0].is_multiple_of(16)
        && g.const_value(node.inputs[1]).is_some()
}

/// A hybrid product (`DynMatMul`): each row of the f32 input quantized into the scratch on
/// its own, then [`product`] with the run-time stage. `aux`: the weight scales (0), the
/// columns `[n, k]` (1), the weight sums (2).
pub(crate) fn dyn_qmatmul(fx: &mut Fx, g: &Graph, n: NodeId, a: &Args, d: Dot) {
    let node = g.node(n);
    let k = g.value(node.inputs[1]).ty.shape[0] as i64;
    let per_channel = matches!(&node.op, Op::DynMatMul { weight_scales, .. } if weight_scales.len() > 1);
    product(fx, g, n, a, d, a.aux[1], &|fx, r| {
        let x = fx.addr(a.ins[0], r, k * 4);
        let (sx, zp) = super::quant::dyn_quantize(fx, x, a.scratch, k);
        let st = Stage::Dynamic {
            sx,
            zp,
            scales: a.aux[0],
            per_channel,
            wsum: a.aux[2],
        };
        (a.scratch, st)
    });
}

/// The body of [`qmatmul`] over the weight columns `wt` (`[n, k]`); `row` gives each input
/// row's int8 activations and output stage.
#[allow(clippy::type_complexity)]
fn product<'a>(
    fx: &mut Fx,
    g: &Graph,
    n: NodeId,
    a: &Args,
    d: Dot,
    wt: Value,
    row: &dyn Fn(&mut Fx, Value) -> (Value, Stage<'a>),
) {
    let node = g.node(n);
    let ws = &g.value(node.inputs[1]).ty.shape;
    let (k, nn) = (ws[0] as i64, ws[1] as i64);
    let rows = g.value(node.outputs[0]).ty.numel() as i64 / nn.max(1);
    let has_bias = node.inputs.len() > 2;
    let bias = fx.b.ins().iconst(cranelift_codegen::ir::types::I8, -128i64);
    let bias = fx.b.ins().splat(I8X16, bias);
    // with AVX2: the partial sums of up to DENSE_CHUNK blocks of four outputs per kernel call
    let wide = (d == Dot::Pairs && fx.code.is_some() && nn >= 4 && k >= 16).then(|| {
        let data = StackSlotData::new(StackSlotKind::ExplicitSlot, 128 * DENSE_CHUNK as u32, 5);
        let slot = fx.b.create_sized_stack_slot(data);
        fx.b.ins().stack_addr(I64, slot, 0)
    });
    fx.for_n(rows, &mut |fx, r| {
        let (xrow, st) = row(fx, r);
        let yrow = fx.addr(a.outs[0], r, nn * st.elem());
        // `cnt` outputs from `j0`; with `sums`, four whose partial sums the wide kernel left there
        let outputs = |fx: &mut Fx, j0: Value, cnt: i64, sums: Option<Value>| {
            let vars: Vec<cranelift_frontend::Variable> = (0..cnt)
                .map(|i| {
                    let v = fx.b.declare_var(I32X4);
                    let z = match sums {
                        Some(s) => {
                            let lo = fx.b.ins().load(I32X4, flags(), s, 32 * i as i32);
                            let hi = fx.b.ins().load(I32X4, flags(), s, 32 * i as i32 + 16);
                            fx.b.ins().iadd(lo, hi)
                        }
                        None => {
                            let z = fx.b.ins().iconst(I32, 0);
                            fx.b.ins().splat(I32X4, z)
                        }
                    };
                    fx.b.def_var(v, z);
                    v
                })
                .collect();
            let w0 = fx.addr(wt, j0, k);
            let steps = if sums.is_some() { 0 } else { k / 16 };
            fx.for_ptrs(steps, &[(xrow, 16), (w0, 16)], &mut |fx, p| {
                let x = fx.b.ins().load(I8X16, flags(), p[0], 0);
                let x = match d {
                    Dot::UnsignedBySigned => fx.b.ins().bxor(x, bias),
                    _ => x,
                };
                let xs = (d == Dot::Pairs).then(|| (fx.b.ins().swiden_low(x), fx.b.ins().swiden_high(x)));
                for (i, &var) in vars.iter().enumerate() {
                    // bytes, widened here: a dense layer reads each weight once per call,
                    // so halfword columns would only double the memory traffic
                    let w = fx.b.ins().load(I8X16, flags(), p[1], (i as i64 * k) as i32);
                    let cur = fx.b.use_var(var);
                    let nv = match xs {
                        Some((xl, xh)) => {
                            let (wl, wh) = (fx.b.ins().swiden_low(w), fx.b.ins().swiden_high(w));
                            let mut s = cur;
                            for (x16, w16) in [(xl, wl), (xh, wh)] {
                                let pair = fx.madd_i16(x16, w16);
                                s = fx.b.ins().iadd(s, pair);
                            }
                            s
                        }
                        None => dot4(fx, d, x, w, cur),
                    };
                    fx.b.def_var(var, nv);
                }
            });
            if cnt == 4 && vector_finish(&st) {
                finish_columns4(fx, &st, &vars, a.ins.get(2).filter(|_| has_bias), j0, yrow);
                return;
            }
            for (i, &var) in vars.iter().enumerate() {
                let j = fx.add_imm(j0, i as i64);
                let v = fx.b.use_var(var);
                let mut s = if has_bias {
                    let ba = fx.addr(a.ins[2], j, 4);
                    fx.load(I32, ba)
                } else {
                    fx.b.ins().iconst(I32, 0)
                };
                for lane in 0..4u8 {
                    let e = fx.b.ins().extractlane(v, lane);
                    s = fx.b.ins().iadd(s, e);
                }
                let zs = zero_term(fx, &st, d, j);
                let s = fx.b.ins().isub(s, zs);
                let chan = st.channel(fx, j);
                let ya = fx.addr(yrow, j, st.elem());
                st.store(fx, s, chan, ya, 0);
            }
        };
        let blocks = nn / 4;
        match wide {
            Some(slot) => {
                // `cnt` blocks from block `b0`: one kernel call, then their finishes
                let chunk = |fx: &mut Fx, b0: Value, cnt: i64| {
                    let code = super::wide::PairDense {
                        k: k as usize,
                        blocks: cnt as usize,
                    }
                    .code();
                    let w = fx.addr(wt, b0, 4 * k);
                    fx.call_code(&code, &[xrow, w, slot]);
                    fx.for_n(cnt, &mut |fx, i| {
                        let jb = fx.b.ins().iadd(b0, i);
                        let j0 = fx.mul_imm(jb, 4);
                        let s = fx.addr(slot, i, 128);
                        outputs(fx, j0, 4, Some(s));
                    });
                };
                let whole = blocks / DENSE_CHUNK;
                fx.for_n(whole, &mut |fx, c| {
                    let b0 = fx.mul_imm(c, DENSE_CHUNK);
                    chunk(fx, b0, DENSE_CHUNK);
                });
                if blocks % DENSE_CHUNK != 0 {
                    let b0 = fx.i(whole * DENSE_CHUNK);
                    chunk(fx, b0, blocks % DENSE_CHUNK);
                }
            }
            None => fx.for_n(blocks, &mut |fx, jb| {
                let j0 = fx.mul_imm(jb, 4);
                outputs(fx, j0, 4, None);
            }),
        }
        if nn % 4 != 0 {
            let j0 = fx.i(nn / 4 * 4);
            outputs(fx, j0, nn % 4, None);
        }
    });
}

/// Blocks of four outputs per call of the 256-bit dense kernel (4 KiB of partial sums).
const DENSE_CHUNK: i64 = 32;

/// Whether four outputs of a product can be finished as one vector: static int8 whose
/// rescaled sums provably fit and whose rescale is one for all outputs (per tensor).
fn vector_finish(st: &Stage) -> bool {
    matches!(st, Stage::Static { q, fits: true, .. } if q.requant.len() == 1)
}

/// Four outputs from `j0` finished together: the four vector sums reduced across lanes by
/// a 4x4 transpose and three adds, plus the bias and less the zero-point terms (vector
/// loads), rescaled as one vector and stored as four bytes.
fn finish_columns4(
    fx: &mut Fx,
    st: &Stage,
    vars: &[cranelift_frontend::Variable],
    bias: Option<&Value>,
    j0: Value,
    yrow: Value,
) {
    // the zero-point terms as the stage's dot product needs them (`qmatmul` chose the table)
    let Stage::Static { q, zsum: zterm, .. } = *st else {
        unreachable!("`vector_finish` admits static stages only")
    };
    let v = [0, 1, 2, 3].map(|i| fx.b.use_var(vars[i]));
    let t = super::dwconv::transpose4(fx, v);
    let s01 = fx.b.ins().iadd(t[0], t[1]);
    let s23 = fx.b.ins().iadd(t[2], t[3]);
    let mut s = fx.b.ins().iadd(s01, s23);
    if let Some(&b) = bias {
        let ba = fx.addr(b, j0, 4);
        let bv = fx.b.ins().load(I32X4, flags(), ba, 0);
        s = fx.b.ins().iadd(s, bv);
    }
    let za = fx.addr(zterm, j0, 4);
    let zv = fx.b.ins().load(I32X4, flags(), za, 0);
    s = fx.b.ins().isub(s, zv);
    let zero = fx.i(0);
    let chan = st.channel(fx, zero);
    let r = super::quant::finish_fit4(fx, q, s, chan.0, chan.1);
    let ya = fx.addr(yrow, j0, 1);
    super::quant::store_bytes4(fx, r, ya, 0, 4);
}

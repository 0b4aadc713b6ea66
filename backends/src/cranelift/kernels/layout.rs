//! Data movement for every element type: each op is an affine copy (a loop nest over the
//! output with the source addressed by strides), except Gather (indices read at run time)
//! and non-constant Pad modes (a compile-time index table).

use super::super::fx::Fx;
use super::nest::{Opnd, nest};
use super::{Args, bcast_strides, strides};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{I8, I16, I32, I32X4, I64};
use cranelift_codegen::ir::{InstBuilder, Type, Value};
use kiln_ir::op::{PadMode, SliceAxis};
use kiln_ir::{Graph, NodeId, Scalar};

/// Element bytes, the integer type that moves one element, and the vector type that moves
/// four (when the target has vectors).
fn elem(fx: &Fx, g: &Graph, n: NodeId) -> (i64, Type, Option<Type>) {
    let s = g.value(g.node(n).outputs[0]).ty.dtype.scalar;
    match s.size() {
        1 => (1, I8, None),
        2 => (2, I16, None),
        4 => (4, I32, fx.simd.then_some(I32X4)),
        _ => (8, I64, None),
    }
}

fn dims(shape: &[usize]) -> Vec<i64> {
    shape.iter().map(|&d| d as i64).collect()
}

/// Copies `src` (walked by `ops[1]`) to `dst` (`ops[0]`) over `d`.
fn copy_nest(fx: &mut Fx, d: &[i64], ops: &[Opnd], it: Type, lanes: Option<Type>) {
    nest(fx, d, ops, it, lanes, &mut |fx, ty, p, bc| {
        let v = if bc[1] && ty != it {
            let s = fx.load(it, p[1]);
            fx.b.ins().splat(ty, s)
        } else {
            fx.load(ty, p[1])
        };
        fx.store(v, p[0]);
    });
}

pub(crate) fn copy(fx: &mut Fx, g: &Graph, n: NodeId, a: &Args) {
    let (b, it, lanes) = elem(fx, g, n);
    let shape = &g.value(g.node(n).outputs[0]).ty.shape;
    let total = shape.iter().product::<usize>() as i64;
    copy_nest(
        fx,
        &[total],
        &[Opnd::new(a.outs[0], vec![1], b), Opnd::new(a.ins[0], vec![1], b)],
        it,
        lanes,
    );
}

pub(crate) fn transpose(fx: &mut Fx, g: &Graph, n: NodeId, perm: &[usize], a: &Args) {
    let (b, it, lanes) = elem(fx, g, n);
    let ins = &g.value(g.node(n).inputs[0]).ty.shape;
    match (fx.simd, b, deinterleaved(ins, perm)) {
        (true, 1, Some(shape @ (_, p, 2..=4))) if p >= 16 => return deinterleave(fx, a.ins[0], a.outs[0], shape),
        (true, 1, Some(shape @ (_, 4.., 16..))) => return transpose_blocks(fx, a.ins[0], a.outs[0], shape),
        _ => {}
    }
    let out = &g.value(g.node(n).outputs[0]).ty.shape;
    let ist = strides(ins);
    let src: Vec<i64> = perm.iter().map(|&p| ist[p]).collect();
    copy_nest(
        fx,
        &dims(out),
        &[Opnd::new(a.outs[0], strides(out), b), Opnd::new(a.ins[0], src, b)],
        it,
        lanes,
    );
}

/// `(A, P, C)` where `perm` moves the last axis of `ins` in front of the run of axes
/// before it: `[A][P][C]` -> `[A][C][P]` (channels-last to planar).
fn deinterleaved(ins: &[usize], perm: &[usize]) -> Option<(i64, i64, i64)> {
    let r = ins.len();
    let j = perm.iter().position(|&p| p == r - 1)?;
    let moved: Vec<usize> = (0..j).chain([r - 1]).chain(j..r - 1).collect();
    let (a, p, c) = (
        ins[..j].iter().product::<usize>() as i64,
        ins[j..r - 1].iter().product::<usize>() as i64,
        ins[r - 1] as i64,
    );
    (perm == moved).then_some((a, p, c))
}

/// The byte transpose [`deinterleaved`] describes for at least sixteen channels and four
/// positions: blocks of four positions by sixteen channels transposed by two rounds of
/// byte and halfword unpacks, each channel's four bytes stored as one word. A last partial
/// block of either overlaps the one before it (a copy: the bytes written twice are equal).
fn transpose_blocks(fx: &mut Fx, src: Value, dst: Value, (a, p, c): (i64, i64, i64)) {
    use cranelift_codegen::ir::types::I8X16;
    let flags = cranelift_codegen::ir::MemFlagsData::new().with_notrap();
    let le = cranelift_codegen::ir::MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
    let mut mask = |m: Vec<u8>| fx.b.func.dfg.immediates.push(m.as_slice().into());
    let lo8 = mask((0..16).map(|i| (i / 2 + 16 * (i % 2)) as u8).collect());
    let hi8 = mask((0..16).map(|i| (8 + i / 2 + 16 * (i % 2)) as u8).collect());
    let lo16 = mask((0..16).map(|i| (i / 4 * 2 + i % 2 + 16 * (i / 2 % 2)) as u8).collect());
    let hi16 = mask(
        (0..16)
            .map(|i| (8 + i / 4 * 2 + i % 2 + 16 * (i / 2 % 2)) as u8)
            .collect(),
    );
    // four positions from `x` (channel block start) into their channels' rows from `y`
    let block = |fx: &mut Fx, x: Value, y: Value| {
        let v: Vec<Value> = (0..4)
            .map(|i| fx.b.ins().load(I8X16, flags, x, (i * c) as i32))
            .collect();
        let t = [
            fx.b.ins().shuffle(v[0], v[1], lo8),
            fx.b.ins().shuffle(v[0], v[1], hi8),
            fx.b.ins().shuffle(v[2], v[3], lo8),
            fx.b.ins().shuffle(v[2], v[3], hi8),
        ];
        let u = [
            fx.b.ins().shuffle(t[0], t[2], lo16),
            fx.b.ins().shuffle(t[0], t[2], hi16),
            fx.b.ins().shuffle(t[1], t[3], lo16),
            fx.b.ins().shuffle(t[1], t[3], hi16),
        ];
        for (j, &uj) in u.iter().enumerate() {
            let w = fx.b.ins().bitcast(I32X4, le, uj);
            for l in 0..4 {
                let e = fx.b.ins().extractlane(w, l as u8);
                fx.b.ins().store(flags, e, y, ((4 * j as i64 + l) * p) as i32);
            }
        }
    };
    // per four positions, the channel blocks (the last one moved back to end at `c`)
    let row = |fx: &mut Fx, x: Value, y: Value| {
        fx.for_ptrs(c / 16, &[(x, 16), (y, 16 * p)], &mut |fx, q| block(fx, q[0], q[1]));
        if c % 16 != 0 {
            let (xs, ys) = (fx.add_imm(x, c - 16), fx.add_imm(y, (c - 16) * p));
            block(fx, xs, ys);
        }
    };
    fx.for_ptrs(a, &[(src, p * c), (dst, c * p)], &mut |fx, o| {
        fx.for_ptrs(p / 4, &[(o[0], 4 * c), (o[1], 4)], &mut |fx, q| row(fx, q[0], q[1]));
        if p % 4 != 0 {
            let (xs, ys) = (fx.add_imm(o[0], (p - 4) * c), fx.add_imm(o[1], p - 4));
            row(fx, xs, ys);
        }
    });
}

/// The byte transpose [`deinterleaved`] describes: per sixteen positions, `C` vector loads,
/// and per channel the bytes of each load that belong to it gathered by a constant
/// `swizzle` (lanes of other channels zeroed) and merged; the last `P % 16` positions one
/// byte at a time.
fn deinterleave(fx: &mut Fx, src: Value, dst: Value, (a, p, c): (i64, i64, i64)) {
    use cranelift_codegen::ir::ConstantData;
    use cranelift_codegen::ir::types::I8X16;
    // masks[ch][k]: for output byte i of channel `ch`, its lane in load `k` (else 0x80)
    let masks: Vec<Vec<Option<Value>>> = (0..c)
        .map(|ch| {
            (0..c)
                .map(|k| {
                    let lanes: Vec<u8> = (0..16)
                        .map(|i| {
                            let at = i * c + ch;
                            if at / 16 == k { (at % 16) as u8 } else { 0x80 }
                        })
                        .collect();
                    lanes.iter().any(|&l| l != 0x80).then(|| {
                        let k = fx.b.func.dfg.constants.insert(ConstantData::from(lanes));
                        fx.b.ins().vconst(I8X16, k)
                    })
                })
                .collect()
        })
        .collect();
    let flags = cranelift_codegen::ir::MemFlagsData::new().with_notrap();
    fx.for_ptrs(a, &[(src, p * c), (dst, c * p)], &mut |fx, o| {
        fx.for_ptrs(p / 16, &[(o[0], 16 * c), (o[1], 16)], &mut |fx, q| {
            let v: Vec<Value> = (0..c)
                .map(|k| fx.b.ins().load(I8X16, flags, q[0], (16 * k) as i32))
                .collect();
            for (ch, row) in masks.iter().enumerate() {
                let parts: Vec<Value> = row
                    .iter()
                    .zip(&v)
                    .filter_map(|(m, &x)| m.map(|m| fx.b.ins().swizzle(x, m)))
                    .collect();
                let t = parts[1..].iter().fold(parts[0], |t, &u| fx.b.ins().bor(t, u));
                fx.b.ins().store(flags, t, q[1], (ch as i64 * p) as i32);
            }
        });
        let done = p / 16 * 16;
        let (s, t) = (fx.add_imm(o[0], done * c), fx.add_imm(o[1], done));
        fx.for_ptrs(p - done, &[(s, c), (t, 1)], &mut |fx, q| {
            for ch in 0..c {
                let v = fx.b.ins().load(I8, flags, q[0], ch as i32);
                fx.b.ins().store(flags, v, q[1], (ch * p) as i32);
            }
        });
    });
}

pub(crate) fn slice(fx: &mut Fx, g: &Graph, n: NodeId, axes: &[SliceAxis], a: &Args) {
    let (b, it, lanes) = elem(fx, g, n);
    let ins = &g.value(g.node(n).inputs[0]).ty.shape;
    let out = &g.value(g.node(n).outputs[0]).ty.shape;
    let ist = strides(ins);
    let mut src = Opnd::new(a.ins[0], axes.iter().zip(&ist).map(|(s, &st)| s.step * st).collect(), b);
    src.offset = axes.iter().zip(&ist).map(|(s, &st)| s.start * st).sum();
    copy_nest(fx, &dims(out), &[Opnd::new(a.outs[0], strides(out), b), src], it, lanes);
}

pub(crate) fn expand(fx: &mut Fx, g: &Graph, n: NodeId, a: &Args) {
    let (b, it, lanes) = elem(fx, g, n);
    let ins = &g.value(g.node(n).inputs[0]).ty.shape;
    let out = &g.value(g.node(n).outputs[0]).ty.shape;
    copy_nest(
        fx,
        &dims(out),
        &[
            Opnd::new(a.outs[0], strides(out), b),
            Opnd::new(a.ins[0], bcast_strides(ins, out), b),
        ],
        it,
        lanes,
    );
}

pub(crate) fn tile(fx: &mut Fx, g: &Graph, n: NodeId, reps: &[usize], a: &Args) {
    let (b, it, lanes) = elem(fx, g, n);
    let ins = &g.value(g.node(n).inputs[0]).ty.shape;
    let out = &g.value(g.node(n).outputs[0]).ty.shape;
    let (ist, ost) = (strides(ins), strides(out));
    // Each axis splits into (repeat, index): out = r * n + j.
    let mut d = Vec::new();
    let (mut so, mut si) = (Vec::new(), Vec::new());
    for i in 0..ins.len() {
        d.extend([reps[i] as i64, ins[i] as i64]);
        so.extend([ins[i] as i64 * ost[i], ost[i]]);
        si.extend([0, ist[i]]);
    }
    copy_nest(
        fx,
        &d,
        &[Opnd::new(a.outs[0], so, b), Opnd::new(a.ins[0], si, b)],
        it,
        lanes,
    );
}

pub(crate) fn concat(fx: &mut Fx, g: &Graph, n: NodeId, axis: usize, a: &Args) {
    let (b, it, lanes) = elem(fx, g, n);
    let out = &g.value(g.node(n).outputs[0]).ty.shape;
    let ost = strides(out);
    let mut at = 0i64;
    for (k, &v) in g.node(n).inputs.iter().enumerate() {
        let ins = &g.value(v).ty.shape;
        let mut dst = Opnd::new(a.outs[0], ost.clone(), b);
        dst.offset = at * ost[axis];
        copy_nest(fx, &dims(ins), &[dst, Opnd::new(a.ins[k], strides(ins), b)], it, lanes);
        at += ins[axis] as i64;
    }
}

pub(crate) fn split(fx: &mut Fx, g: &Graph, n: NodeId, axis: usize, a: &Args) {
    let (b, it, lanes) = elem(fx, g, n);
    let ins = &g.value(g.node(n).inputs[0]).ty.shape;
    let ist = strides(ins);
    let mut at = 0i64;
    for (k, &v) in g.node(n).outputs.iter().enumerate() {
        let out = &g.value(v).ty.shape;
        let mut src = Opnd::new(a.ins[0], ist.clone(), b);
        src.offset = at * ist[axis];
        copy_nest(fx, &dims(out), &[Opnd::new(a.outs[k], strides(out), b), src], it, lanes);
        at += out[axis] as i64;
    }
}

/// Gather along `axis`; indices are read at run time, wrapped if negative and clamped into
/// range so a bad index can never read outside the tensor.
pub(crate) fn gather(fx: &mut Fx, g: &Graph, n: NodeId, axis: usize, a: &Args) {
    let (b, it, lanes) = elem(fx, g, n);
    let node = g.node(n);
    let ins = &g.value(node.inputs[0]).ty.shape;
    let idx_ty = &g.value(node.inputs[1]).ty;
    let count = idx_ty.numel() as i64;
    let ibytes = idx_ty.dtype.scalar.size() as i64;
    let dim = ins[axis] as i64;
    let outer: i64 = ins[..axis].iter().product::<usize>() as i64;
    let inner: i64 = ins[axis + 1..].iter().product::<usize>() as i64;
    fx.for_n(outer, &mut |fx, o| {
        fx.for_n(count, &mut |fx, p| {
            let ia = fx.addr(a.ins[1], p, ibytes);
            let raw = match idx_ty.dtype.scalar {
                Scalar::I64 | Scalar::U64 => fx.load(I64, ia),
                Scalar::I32 => {
                    let v = fx.load(I32, ia);
                    fx.b.ins().sextend(I64, v)
                }
                _ => {
                    let v = fx.load(I32, ia);
                    fx.b.ins().uextend(I64, v)
                }
            };
            let wrapped = fx.b.ins().iadd_imm_s(raw, dim);
            let neg = fx.b.ins().icmp_imm_s(IntCC::SignedLessThan, raw, 0);
            let idx = fx.b.ins().select(neg, wrapped, raw);
            let zero = fx.i(0);
            let hi = fx.i(dim - 1);
            let idx = fx.b.ins().smax(idx, zero);
            let idx = fx.b.ins().smin(idx, hi);
            let row = fx.mul_imm(o, dim);
            let row = fx.b.ins().iadd(row, idx);
            let src = fx.addr(a.ins[0], row, inner * b);
            let orow = fx.mul_imm(o, count);
            let orow = fx.b.ins().iadd(orow, p);
            let dst = fx.addr(a.outs[0], orow, inner * b);
            copy_nest(
                fx,
                &[inner],
                &[Opnd::new(dst, vec![1], b), Opnd::new(src, vec![1], b)],
                it,
                lanes,
            );
        });
    });
}

/// Source offset of every output element of a non-constant Pad (`u32::MAX`: none).
pub(crate) fn pad_table(g: &Graph, n: NodeId) -> Vec<Vec<u8>> {
    let node = g.node(n);
    let kiln_ir::Op::Pad { mode, pads } = &node.op else {
        unreachable!()
    };
    let ins = &g.value(node.inputs[0]).ty.shape;
    let out = &g.value(node.outputs[0]).ty.shape;
    let ist = strides(ins);
    let r = ins.len();
    let mut table = Vec::new();
    let total: usize = out.iter().product();
    for flat in 0..total {
        let mut rem = flat;
        let mut off = 0i64;
        for d in (0..r).rev() {
            let i = (rem % out[d]) as i64 - pads[d];
            rem /= out[d];
            let len = ins[d] as i64;
            let src = match mode {
                PadMode::Edge => i.clamp(0, len - 1),
                PadMode::Wrap => i.rem_euclid(len),
                _ => {
                    let p = 2 * (len - 1).max(1);
                    let m = i.rem_euclid(p);
                    if len == 1 {
                        0
                    } else if m < len {
                        m
                    } else {
                        p - m
                    }
                }
            };
            off += src * ist[d];
        }
        table.extend((off as u32).to_le_bytes());
    }
    vec![table]
}

pub(crate) fn pad(fx: &mut Fx, g: &Graph, n: NodeId, mode: PadMode, pads: &[i64], a: &Args) {
    let (b, it, lanes) = elem(fx, g, n);
    let node = g.node(n);
    let ins = &g.value(node.inputs[0]).ty.shape;
    let out = &g.value(node.outputs[0]).ty.shape;
    let total: i64 = out.iter().product::<usize>() as i64;
    if mode != PadMode::Constant {
        fx.for_n(total, &mut |fx, i| {
            let ta = fx.addr(a.aux[0], i, 4);
            let src = fx.load(I32, ta);
            let src = fx.b.ins().uextend(I64, src);
            let sa = fx.addr(a.ins[0], src, b);
            let v = fx.load(it, sa);
            let da = fx.addr(a.outs[0], i, b);
            fx.store(v, da);
        });
        return;
    }
    // Fill with the pad value, then copy the (possibly cropped) input into place.
    let fill = match node.inputs.get(1) {
        Some(_) => fx.load(it, a.ins[1]),
        None => fx.b.ins().iconst(it, 0),
    };
    fx.for_n(total, &mut |fx, i| {
        let da = fx.addr(a.outs[0], i, b);
        fx.store(fill, da);
    });
    let r = ins.len();
    let (ist, ost) = (strides(ins), strides(out));
    let mut d = Vec::with_capacity(r);
    let mut src = Opnd::new(a.ins[0], ist.clone(), b);
    let mut dst = Opnd::new(a.outs[0], ost.clone(), b);
    for i in 0..r {
        let (before, after) = (pads[i], pads[i + r]);
        let skip = (-before).max(0);
        let len = ins[i] as i64 - skip - (-after).max(0);
        d.push(len.max(0));
        src.offset += skip * ist[i];
        dst.offset += before.max(0) * ost[i];
    }
    copy_nest(fx, &d, &[dst, src], it, lanes);
}

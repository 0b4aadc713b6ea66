//! The int8 convolution of [`super::dot`] on a CPU without a byte dot product (x86-64
//! without VNNI, AArch64 without `dotprod`): halfword pair products (`pmaddwd`, `smull` +
//! pairwise add), each summing two input channels of one position into a 32-bit lane.
//!
//! Both operands are widened before the loop that multiplies them: the weights at compile
//! time (halfword rows, [`super::dot::weight_rows`]), the activations once per block of
//! eight positions for all output channels. So each eight products cost one pair product
//! and one add, with no widening, shuffle or horizontal add in the inner loop.

use super::super::fx::Fx;
use cranelift_codegen::ir::types::{I8X16, I16X8, I64, I64X2};
use cranelift_codegen::ir::{Endianness, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::Variable;

fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

fn lanes() -> MemFlagsData {
    MemFlagsData::new().with_endianness(Endianness::Little)
}

/// The `valid` (<= 8) positions from `x0` of all `c` rows (of `p` bytes, `c` a multiple of
/// four) into `dst` as halfword pairs: per two rows 32 bytes, lane `j` of the first 16 the
/// two rows' values at position `j`, of the next 16 at position `4 + j`. A full block
/// loads eight bytes per row; a partial one loads bytes (eight could read past the end).
pub(crate) fn interleave8(fx: &mut Fx, x0: Value, dst: Value, (c, p): (i64, i64), valid: i64) {
    // bytes of the two rows alternating: a0 b0 a1 b1 ... a7 b7
    let mask: Vec<u8> = (0..16u8).map(|k| if k % 2 == 0 { k / 2 } else { 16 + k / 2 }).collect();
    let mask = fx.b.func.dfg.immediates.push(mask.as_slice().into());
    fx.for_ptrs(c / 2, &[(x0, 2 * p), (dst, 32)], &mut |fx, r| {
        let rows = [0, 1].map(|j| {
            let off = (j * p) as i32;
            let q = if valid == 8 {
                fx.b.ins().load(I64, flags(), r[0], off)
            } else {
                let mut q = fx.b.ins().iconst(I64, 0);
                for k in 0..valid {
                    let byte = fx.b.ins().uload8(I64, flags(), r[0], off + k as i32);
                    let sh = fx.b.ins().ishl_imm_u(byte, 8 * k);
                    q = fx.b.ins().bor(q, sh);
                }
                q
            };
            let v = fx.b.ins().scalar_to_vector(I64X2, q);
            fx.b.ins().bitcast(I8X16, lanes(), v)
        });
        let t = fx.b.ins().shuffle(rows[0], rows[1], mask);
        let lo = fx.b.ins().swiden_low(t);
        let hi = fx.b.ins().swiden_high(t);
        fx.b.ins().store(flags(), lo, r[1], 0);
        fx.b.ins().store(flags(), hi, r[1], 16);
    });
}

/// The weights `w` (`m` rows of `row` values) as [`sums`] reads them: per block of four
/// output channels (the last zero-padded) and per four of the `c` rows (zero-padded from
/// `row`), 32 bytes: for each two rows, the four channels' halfword pairs.
pub(crate) fn block_weights(w: &[i64], row: usize, m: usize, c: usize) -> Vec<u8> {
    let at = |o: usize, i: usize| {
        if o < m && i < row {
            w[o * row + i] as i8 as i16
        } else {
            0
        }
    };
    let mut out = Vec::with_capacity(m.div_ceil(4) * 8 * c);
    for ob in 0..m.div_ceil(4) {
        for s in 0..c / 4 {
            for pair in 0..2 {
                for o in 4 * ob..4 * ob + 4 {
                    for i in [4 * s + 2 * pair, 4 * s + 2 * pair + 1] {
                        out.extend(at(o, i).to_le_bytes());
                    }
                }
            }
        }
    }
    out
}

/// Adds to `vars` (per output channel of a block of at most four, the sums of positions
/// 0-3 and 4-7) the products of the `c` interleaved rows at `inter` with the block's
/// weights from `w0` ([`block_weights`]). Per two rows: two activation vectors and one
/// weight vector, each channel's pair broadcast from it by a lane shuffle, and per
/// channel two pair products.
pub(crate) fn sums(fx: &mut Fx, inter: Value, w0: Value, c: i64, vars: &[[Variable; 2]]) {
    let lane_masks: Vec<_> = (0..4u8)
        .map(|i| {
            let m: Vec<u8> = (0..16u8).map(|k| 4 * i + k % 4).collect();
            fx.b.func.dfg.immediates.push(m.as_slice().into())
        })
        .collect();
    fx.for_ptrs(c / 4, &[(inter, 64), (w0, 32)], &mut |fx, r| {
        // one row pair at a time keeps 8 sums, 2 activation and 1 weight vector live
        for pair in 0..2 {
            let xs = [0, 1].map(|h| fx.b.ins().load(I16X8, flags(), r[0], 32 * pair + 16 * h));
            let wv = fx.b.ins().load(I8X16, flags(), r[1], 16 * pair);
            for (i, v) in vars.iter().enumerate() {
                let w = fx.b.ins().shuffle(wv, wv, lane_masks[i]);
                let w = fx.b.ins().bitcast(I16X8, lanes(), w);
                for (h, &var) in v.iter().enumerate() {
                    let prod = fx.madd_i16(xs[h], w);
                    let cur = fx.b.use_var(var);
                    let nv = fx.b.ins().iadd(cur, prod);
                    fx.b.def_var(var, nv);
                }
            }
        }
    });
}

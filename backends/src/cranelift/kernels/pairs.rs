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

/// The shuffle mask taking the low eight bytes of two vectors alternately: a0 b0 a1 b1 ...
fn alternate(fx: &mut Fx) -> cranelift_codegen::ir::Immediate {
    let mask: Vec<u8> = (0..16u8).map(|k| if k % 2 == 0 { k / 2 } else { 16 + k / 2 }).collect();
    fx.b.func.dfg.immediates.push(mask.as_slice().into())
}

/// The `valid` (< 8) bytes at `p + off`, `step` apart, in the low bytes of a vector (the
/// rest zero): a partial block, where eight bytes at once could read past the end.
fn bytes8(fx: &mut Fx, p: Value, off: i32, step: i64, valid: i64) -> Value {
    let mut q = fx.b.ins().iconst(I64, 0);
    for k in 0..valid {
        let byte = fx.b.ins().uload8(I64, flags(), p, off + (k * step) as i32);
        let sh = fx.b.ins().ishl_imm_u(byte, 8 * k);
        q = fx.b.ins().bor(q, sh);
    }
    let v = fx.b.ins().scalar_to_vector(I64X2, q);
    fx.b.ins().bitcast(I8X16, lanes(), v)
}

/// Two rows of eight positions (low bytes of `rows`) as halfword pairs into `dst + off`:
/// positions 0-3 in the first 16 bytes, 4-7 in the next.
fn store_pairs(fx: &mut Fx, rows: [Value; 2], mask: cranelift_codegen::ir::Immediate, dst: Value, off: i32) {
    let t = fx.b.ins().shuffle(rows[0], rows[1], mask);
    let lo = fx.b.ins().swiden_low(t);
    let hi = fx.b.ins().swiden_high(t);
    fx.b.ins().store(flags(), lo, dst, off);
    fx.b.ins().store(flags(), hi, dst, off + 16);
}

/// The `valid` (<= 8) positions from `x0` of all `c` rows (of `p` bytes, `c` a multiple of
/// four) into `dst` as halfword pairs: per two rows 32 bytes, lane `j` of the first 16 the
/// two rows' values at position `j`, of the next 16 at position `4 + j`. A full block
/// loads eight bytes per row; a partial one loads bytes (eight could read past the end).
pub(crate) fn interleave8(fx: &mut Fx, x0: Value, dst: Value, (c, p): (i64, i64), valid: i64) {
    let mask = alternate(fx);
    fx.for_ptrs(c / 2, &[(x0, 2 * p), (dst, 32)], &mut |fx, r| {
        let rows = [0, 1].map(|j| {
            let off = (j * p) as i32;
            if valid < 8 {
                return bytes8(fx, r[0], off, 1, valid);
            }
            let q = fx.b.ins().load(I64, flags(), r[0], off);
            let v = fx.b.ins().scalar_to_vector(I64X2, q);
            fx.b.ins().bitcast(I8X16, lanes(), v)
        });
        store_pairs(fx, rows, mask, r[1], 0);
    });
}

/// The weights as [`sums`] reads them, `at(o, i)` the weight of output channel `o` (of
/// `m`) at product row `i` (of `c`, a multiple of four; `None` for padding): per block of
/// four output channels (the last zero-padded) and per four rows, 32 bytes: for each two
/// rows, the four channels' halfword pairs.
pub(crate) fn block_weights(m: usize, c: usize, at: &dyn Fn(usize, usize) -> Option<i64>) -> Vec<u8> {
    let at = |o: usize, i: usize| {
        if o < m {
            at(o, i).map_or(0, |v| v as i8 as i16)
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

/// A spatial convolution the pair kernel reads straight from a copy of its input bordered
/// with the zero point, instead of from im2col rows: per output row and block of eight
/// columns, each (channel, tap) row is eight bytes at a fixed offset of the copy (stride 1)
/// or every other of sixteen (stride 2). The copy is `ci` planes of `hp x wp` bytes, a
/// small fraction of the `ci * taps * positions` bytes im2col writes and reads back.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Windowed {
    pub plane: kiln_runtime::kernels::Plane,
    pub ci: i64,
    /// Taps per channel, and rounded up to whole pairs.
    pub kk: i64,
    pub kkp: i64,
    /// The bordered plane: the rows and columns the window reads.
    pub hp: i64,
    pub wp: i64,
}

impl Windowed {
    /// For a 1-D or 2-D window over `[N, ci, (H,) W]` giving `out`, when blocks of eight
    /// columns fit the output rows and the column stride is 1 or 2.
    pub(crate) fn of(window: &kiln_ir::op::Window, xs: &[usize], out: &[usize]) -> Option<Windowed> {
        let pl = window.plane(xs, out);
        if pl.ow < 8 || !(1..=2).contains(&pl.sw) || xs.len() > 4 {
            return None;
        }
        let kk = (pl.kh * pl.kw) as i64;
        Some(Windowed {
            plane: pl,
            ci: xs[1] as i64,
            kk,
            kkp: (kk + 1) / 2 * 2,
            hp: ((pl.oh - 1) * pl.sh + (pl.kh - 1) * pl.dh + 1) as i64,
            wp: ((pl.ow - 1) * pl.sw + (pl.kw - 1) * pl.dw + 1) as i64,
        })
    }

    /// Product rows: (channel, tap) with taps padded to pairs, then to a multiple of four.
    pub(crate) fn rows(&self) -> i64 {
        (self.ci * self.kkp + 3) / 4 * 4
    }

    /// Scratch bytes of the bordered copy (16 more for the stride-2 loads past its end).
    pub(crate) fn copy_bytes(&self) -> i64 {
        (self.ci * self.hp * self.wp + 31) / 16 * 16
    }

    /// Byte offset of tap `t` (of `kk`) from the window's first element in the copy; a
    /// padding tap reads tap 0 (its weights are zero).
    fn tap(&self, t: i64) -> i64 {
        let t = if t < self.kk { t } else { 0 };
        let kw = self.plane.kw as i64;
        (t / kw) * self.plane.dh as i64 * self.wp + (t % kw) * self.plane.dw as i64
    }

    /// The weight of product row `i` (`[ci][kkp]`) in the original rows of `row` values
    /// (`[ci][kk]`), or `None` for padding.
    pub(crate) fn source_row(&self, i: usize) -> Option<usize> {
        let (c, t) = (i as i64 / self.kkp, i as i64 % self.kkp);
        (c < self.ci && t < self.kk).then_some((c * self.kk + t) as usize)
    }

    /// Fills the copy at `dst` with the zero point `zp` and copies the input planes from
    /// `x` into it.
    pub(crate) fn border(&self, fx: &mut Fx, x: Value, dst: Value, zp: Value) {
        let pl = &self.plane;
        super::quant::fill_bytes(fx, dst, self.ci * self.hp * self.wp, zp);
        let (h, w) = (pl.h as i64, pl.w as i64);
        let rows = h.min(self.hp - pl.ph as i64).max(0);
        let cols = w.min(self.wp - pl.pw as i64).max(0);
        let first = fx.add_imm(dst, pl.ph as i64 * self.wp + pl.pw as i64);
        fx.for_ptrs(self.ci, &[(x, h * w), (first, self.hp * self.wp)], &mut |fx, c| {
            fx.for_ptrs(rows, &[(c[0], w), (c[1], self.wp)], &mut |fx, r| {
                super::quant::copy_bytes(fx, r[0], r[1], cols)
            });
        });
    }

    /// The interleave of [`interleave8`] for the `valid` (<= 8) output columns whose
    /// window starts at `x0` in the copy, every (channel, tap) row read in place.
    pub(crate) fn interleave(&self, fx: &mut Fx, x0: Value, dst: Value, valid: i64) {
        let mask = alternate(fx);
        let even: Vec<u8> = (0..16u8).map(|k| 2 * (k % 8)).collect();
        let even = fx.b.func.dfg.immediates.push(even.as_slice().into());
        let sw = self.plane.sw as i64;
        let pairs = self.kkp / 2;
        fx.for_ptrs(self.ci, &[(x0, self.hp * self.wp), (dst, 32 * pairs)], &mut |fx, r| {
            for pair in 0..pairs {
                let rows = [2 * pair, 2 * pair + 1].map(|t| {
                    let off = self.tap(t) as i32;
                    if valid < 8 {
                        return bytes8(fx, r[0], off, sw, valid);
                    }
                    if sw == 1 {
                        let q = fx.b.ins().load(I64, flags(), r[0], off);
                        let v = fx.b.ins().scalar_to_vector(I64X2, q);
                        return fx.b.ins().bitcast(I8X16, lanes(), v);
                    }
                    // stride 2: the even bytes of sixteen
                    let v = fx.b.ins().load(I8X16, flags(), r[0], off);
                    fx.b.ins().shuffle(v, v, even)
                });
                store_pairs(fx, rows, mask, r[1], (32 * pair) as i32);
            }
        });
        // the rows past the last whole pair of pairs: zero (their weights are zero too)
        if self.rows() > self.ci * self.kkp {
            let z = fx.b.ins().iconst(I64, 0);
            let z = fx.b.ins().splat(I64X2, z);
            let z = fx.b.ins().bitcast(I16X8, lanes(), z);
            let off = (16 * self.ci * self.kkp) as i32;
            fx.b.ins().store(flags(), z, dst, off);
            fx.b.ins().store(flags(), z, dst, off + 16);
        }
    }
}

//! 256-bit float matrix-product micro-kernels for x86-64 with AVX2 and FMA, as machine
//! code ([`super::super::x64`]), called from the Cranelift kernels. Cranelift's 128-bit
//! vectors cap a product at half of an AVX2 core's multiply-adds per cycle; these reach
//! the other half. Only the full blocks of columns come here; [`super::gemm`] keeps the
//! ragged edges.
//!
//! One call computes `blocks` blocks of `rows x 8*vecs` outputs: per block the sums start
//! from the rows' initial values, add `a[r][p] * b[p][j]` in `p` order with one rounding
//! per multiply-add (the float tolerance allows it: same order as the 128-bit kernel with
//! `fma`), are clamped when asked, and are stored.

use super::super::x64::{Asm, Gpr, R8, R9, R10, R11, RCX, RDI, RDX, RSI, Rm, Ymm};

/// The clamp applied before storing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Clamp {
    None,
    /// `max(0, x)`, NaN kept.
    Relu,
    /// `min(hi, max(lo, x))`, NaN kept; `lo` and `hi` follow the rows' initial values.
    Range,
}

/// The shape of one micro-kernel; everything but the addresses is baked into its code.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Product {
    /// Output rows per block (rows of `a`), 1 ..= 4 (or up to 8 single-vector rows).
    pub rows: usize,
    /// Vectors of eight columns per row and block.
    pub vecs: usize,
    /// Depth: terms per sum (at least 1).
    pub k: usize,
    /// Bytes from one row of `a` to the next, and from one `p` to the next (f32 elements).
    pub a_row: i32,
    pub a_col: i32,
    /// Bytes from one row of `b` to the next; its columns are contiguous.
    pub b_row: i32,
    /// `b` holds binary16 values (widened exactly as loaded) instead of f32.
    pub b_half: bool,
    /// Bytes from one row of the output to the next; its columns are contiguous f32.
    pub c_row: i32,
    pub clamp: Clamp,
}

/// Argument registers (System V): `a` at row 0 and `p` 0, `b` at `p` 0 and the first
/// column, `c` at row 0 and the first column, the rows' initial values (then `lo`, `hi`),
/// and the number of blocks (at least 1).
const A: Gpr = RDI;
const B: Gpr = RSI;
const C: Gpr = RDX;
const INIT: Gpr = RCX;
const BLOCKS: Gpr = R8;
/// Loop cursors.
const AP: Gpr = R9;
const BP: Gpr = R10;
const KP: Gpr = R11;

/// The multiplier broadcast from `a`; after the loop, the clamp's upper bound. The lower
/// bound takes a register `b` no longer needs then.
const BCAST: Ymm = Ymm(15);
const LO: Ymm = Ymm(14);

impl Product {
    /// Whether `b`'s vectors are loaded into registers (several rows share them, or they
    /// need widening) rather than read by each multiply-add.
    fn b_in_regs(&self) -> bool {
        self.rows > 1 || self.b_half
    }

    /// Whether the accumulators, `b`'s registers and the broadcast fit the 16 registers.
    pub fn fits(&self) -> bool {
        let (accs, b) = (self.rows * self.vecs, if self.b_in_regs() { self.vecs } else { 0 });
        self.rows >= 1 && self.vecs >= 1 && self.k >= 1 && accs + b < 16 && accs <= LO.0 as usize
    }

    /// Bytes of `b` (and of the output) one block covers.
    pub fn b_step(&self) -> i32 {
        (self.vecs * 8) as i32 * if self.b_half { 2 } else { 4 }
    }

    fn acc(&self, r: usize, u: usize) -> Ymm {
        Ymm((r * self.vecs + u) as u8)
    }

    fn breg(&self, u: usize) -> Ymm {
        Ymm((self.rows * self.vecs + u) as u8)
    }

    /// The machine code: a loop over blocks around a loop over `p`.
    pub fn code(&self) -> Vec<u8> {
        assert!(self.fits(), "{self:?}");
        let mut a = Asm::default();
        let block = a.here();
        for r in 0..self.rows {
            a.broadcast(self.acc(r, 0), INIT, 4 * r as i32);
            for u in 1..self.vecs {
                a.mov(self.acc(r, u), self.acc(r, 0));
            }
        }
        a.mov_gpr(AP, A);
        a.mov_gpr(BP, B);
        a.set(KP, self.k as u32);
        let step = a.here();
        self.step(&mut a);
        a.add(AP, self.a_col);
        a.add(BP, self.b_row);
        a.dec(KP);
        a.loop_back(step);
        self.clamp(&mut a);
        for r in 0..self.rows {
            for u in 0..self.vecs {
                a.store(C, r as i32 * self.c_row + 32 * u as i32, self.acc(r, u));
            }
        }
        a.add(B, self.b_step());
        a.add(C, (self.vecs * 32) as i32);
        a.dec(BLOCKS);
        a.loop_back(block);
        a.ret();
        a.code
    }

    /// One `p`: `b`'s row loaded (or widened) once, each row's `a` broadcast once.
    fn step(&self, a: &mut Asm) {
        let regs = self.b_in_regs();
        for u in (0..self.vecs).filter(|_| regs) {
            if self.b_half {
                a.widen_halves(self.breg(u), BP, 16 * u as i32);
            } else {
                a.load(self.breg(u), BP, 32 * u as i32);
            }
        }
        for r in 0..self.rows {
            a.broadcast(BCAST, AP, r as i32 * self.a_row);
            for u in 0..self.vecs {
                let y = if regs {
                    Rm::Y(self.breg(u))
                } else {
                    Rm::M(BP, 32 * u as i32)
                };
                a.fma(self.acc(r, u), BCAST, y);
            }
        }
    }

    /// The bound is the first operand, so a NaN sum passes through as the IR's `fmax` and
    /// `fmin` keep it.
    fn clamp(&self, a: &mut Asm) {
        let accs = (0..self.rows).flat_map(|r| (0..self.vecs).map(move |u| (r, u)));
        match self.clamp {
            Clamp::None => {}
            Clamp::Relu => {
                a.zero(BCAST);
                for (r, u) in accs {
                    a.max(self.acc(r, u), BCAST, self.acc(r, u));
                }
            }
            Clamp::Range => {
                a.broadcast(LO, INIT, 4 * self.rows as i32);
                a.broadcast(BCAST, INIT, 4 * self.rows as i32 + 4);
                for (r, u) in accs {
                    a.max(self.acc(r, u), LO, self.acc(r, u));
                    a.min(self.acc(r, u), BCAST, self.acc(r, u));
                }
            }
        }
    }
}

/// The int8 convolution's halfword pair products ([`super::pairs::sums`]) on 256-bit
/// vectors: for one block of eight interleaved positions, every block of four output
/// channels' 32-bit sums (exact integers, so the same bits as the 128-bit kernel), stored
/// as they are or, with `finish`, rescaled into int8 outputs ([`Finish`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PairSums {
    /// Product rows (a multiple of four): the interleave holds `rows / 2` row pairs of 32
    /// bytes, a channel block's weights `rows / 4` groups of 32 ([`super::pairs::block_weights`]).
    pub rows: usize,
    /// Blocks of four output channels.
    pub blocks: usize,
    pub finish: Option<Finish>,
}

/// How [`PairSums`] finishes its sums into int8 outputs: per channel, its [`finish_record`]
/// record's bias added, rescaled exactly as `quant::rescale4` does (64-bit products of even
/// and odd lanes, shifted logically from a biased sum), TFLite's rounding divide where
/// asked, the zero point added, clamped, and the eight bytes of each channel stored.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Finish {
    /// TFLite's numerics: the rounding divide by `2^e2` after the first rescale.
    pub tflite: bool,
    /// Bytes from one output channel's row to the next.
    pub row: i32,
}

/// The byte offsets in one channel's [`Finish`] record (64 bytes): the i32 start of its
/// sums (`bias - zp * sum(w)`), the rescale's `m` (i32), `k` (i64), `e` (shift count), `c`
/// (i32), TFLite's mask, the count `e2` and `mask >> 1` (i32), then the output zero point
/// and clamp bounds (i32).
pub(crate) mod finish_record {
    pub const BIAS: usize = 0;
    pub const M: usize = 4;
    pub const K: usize = 8;
    /// a count read as the low quadword of 16 bytes (`C` and `MASK` share them)
    pub const E: usize = 16;
    pub const C: usize = 24;
    pub const MASK: usize = 28;
    /// a count read as the low quadword of 16 bytes (`HALF` to `LO` share them)
    pub const E2: usize = 32;
    pub const HALF: usize = 40;
    pub const ZP: usize = 44;
    pub const LO: usize = 48;
    pub const HI: usize = 52;
    pub const SIZE: usize = 64;
}

impl PairSums {
    /// Bytes of sums one call writes (without `finish`): per block and channel, eight
    /// positions.
    pub fn out_bytes(&self) -> usize {
        self.blocks * 4 * 32
    }

    /// Arguments: the interleave (`rdi`), the first block's weights (`rsi`, the blocks
    /// contiguous), and where the sums go (`rdx`, per block and channel 32 bytes); with
    /// `finish`, where the first channel's eight outputs go (`rdx`) and its record (`rcx`).
    pub fn code(&self) -> Vec<u8> {
        assert!(
            self.rows >= 4 && self.rows.is_multiple_of(4) && self.blocks >= 1,
            "{self:?}"
        );
        let x = |pair: usize| Ymm(4 + pair as u8);
        let step = |a: &mut Asm| {
            for pair in 0..2 {
                a.load_int(x(pair), BP, 32 * pair as i32);
            }
            for pair in 0..2 {
                for (o, acc) in ACC4.into_iter().enumerate() {
                    // each product's own broadcast and temporary registers, so none waits on another
                    let (w, t) = (Ymm(6 + (4 * pair + o) as u8 % 8), Ymm(14 + (o % 2) as u8));
                    a.broadcast_int(w, AP, (16 * pair + 4 * o) as i32);
                    a.madd_pairs(t, x(pair), Rm::Y(w));
                    a.add_int(acc, acc, Rm::Y(t));
                }
            }
            a.add(BP, 64);
            a.add(AP, 32);
        };
        match self.finish {
            None => four_output_blocks(self.blocks, self.rows / 4, 0, &step, &store_sums),
            Some(f) => four_output_blocks(self.blocks, self.rows / 4, 0, &step, &|a| {
                f.code(a);
                a.add(RDX, 4 * f.row);
                a.add(RCX, 4 * finish_record::SIZE as i32);
            }),
        }
    }
}

impl Finish {
    /// The four accumulators (ymm0-3: four channels, eight positions each) finished with
    /// the records from `rcx` and stored from `rdx`.
    fn code(&self, a: &mut Asm) {
        use finish_record as at;
        let rec = |j: usize, off: usize| (j * at::SIZE + off) as i32;
        for (j, y) in ACC4.into_iter().enumerate() {
            let (e, o, t) = (Ymm(4 + 3 * j as u8), Ymm(5 + 3 * j as u8), Ymm(6 + 3 * j as u8));
            a.broadcast_int(t, RCX, rec(j, at::BIAS));
            a.add_int(y, y, Rm::Y(t));
            // the even lanes' and (shifted down) the odd lanes' 64-bit products
            a.broadcast_int(t, RCX, rec(j, at::M));
            a.shift_q(o, y, 32, false);
            a.mul_even(e, y, Rm::Y(t));
            a.mul_even(o, o, Rm::Y(t));
            a.broadcast_q(t, RCX, rec(j, at::K));
            for v in [e, o] {
                a.add_q(v, v, Rm::Y(t));
                a.shr_q_by(v, v, RCX, rec(j, at::E));
            }
            // the low words back in their lanes, less `c`
            a.shift_q(o, o, 32, true);
            a.blend_d(y, e, o, 0xaa);
            a.broadcast_int(t, RCX, rec(j, at::C));
            a.sub_int(y, y, Rm::Y(t));
            if self.tflite {
                // (v >> e2) + ((v & mask) > (mask >> 1) + [v < 0])
                a.sar_d_by(e, y, RCX, rec(j, at::E2));
                a.broadcast_int(t, RCX, rec(j, at::MASK));
                a.and_int(o, y, t);
                a.sar_d(y, y, 31);
                a.broadcast_int(t, RCX, rec(j, at::HALF));
                a.sub_int(t, t, Rm::Y(y));
                a.greater_d(o, o, t);
                a.sub_int(y, e, Rm::Y(o));
            }
            a.broadcast_int(t, RCX, rec(j, at::ZP));
            a.add_int(y, y, Rm::Y(t));
            a.broadcast_int(t, RCX, rec(j, at::LO));
            a.max_min_d(y, y, t, false);
            a.broadcast_int(t, RCX, rec(j, at::HI));
            a.max_min_d(y, y, t, true);
        }
        // bytes: per half [c0 p0-3, c1 p0-3, c2 p0-3, c3 p0-3] (positions 4-7 in the high
        // half), then each channel's eight as one quadword
        let (w01, w23, lo, hi, c01, c23) = (Ymm(4), Ymm(5), Ymm(4), Ymm(6), Ymm(7), Ymm(8));
        a.pack(w01, ACC4[0], ACC4[1], false);
        a.pack(w23, ACC4[2], ACC4[3], false);
        a.pack(lo, w01, w23, true);
        a.high_half(hi, lo);
        a.unpack_d(c01, lo, hi, false, false);
        a.unpack_d(c23, lo, hi, true, false);
        a.store_q(RDX, 0, c01, false);
        a.store_q(RDX, self.row, c01, true);
        a.store_q(RDX, 2 * self.row, c23, false);
        a.store_q(RDX, 3 * self.row, c23, true);
    }
}

/// The int8 depthwise convolution's finish ([`super::qdw`]) on 256-bit vectors: per block
/// of eight positions, four channels' sums (`[position][channel]`, already started from
/// `bias - zp * sum(w)`) transposed in registers and finished as [`Finish`] does.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DepthwiseFinish {
    /// Blocks of eight positions per call.
    pub blocks: usize,
    /// Bytes from one position's sums to the next.
    pub pos_step: i32,
    pub finish: Finish,
}

impl DepthwiseFinish {
    /// Arguments: the first position's sums of the first channel (`rdi`; `rsi` unused),
    /// its first output (`rdx`) and its record (`rcx`, with a zero start).
    pub fn code(&self) -> Vec<u8> {
        assert!(self.blocks >= 1, "{self:?}");
        let mut a = Asm::default();
        a.set(BLOCKS, self.blocks as u32);
        let top = a.here();
        // ymm i: [position i | position i + 4], channels 0-3 each
        for (i, y) in ACC4.into_iter().enumerate() {
            a.load_half(y, RDI, i as i32 * self.pos_step);
            a.insert_high(y, y, RDI, (i + 4) as i32 * self.pos_step);
        }
        let t = [Ymm(4), Ymm(5), Ymm(6), Ymm(7)];
        a.unpack_d(t[0], ACC4[0], ACC4[1], false, true);
        a.unpack_d(t[1], ACC4[0], ACC4[1], true, true);
        a.unpack_d(t[2], ACC4[2], ACC4[3], false, true);
        a.unpack_d(t[3], ACC4[2], ACC4[3], true, true);
        // ymm j: channel j, positions 0-3 | 4-7
        a.unpack_q(ACC4[0], t[0], t[2], false);
        a.unpack_q(ACC4[1], t[0], t[2], true);
        a.unpack_q(ACC4[2], t[1], t[3], false);
        a.unpack_q(ACC4[3], t[1], t[3], true);
        self.finish.code(&mut a);
        a.add(RDI, 8 * self.pos_step);
        a.add(RDX, 8);
        a.dec(BLOCKS);
        a.loop_back(top);
        a.ret();
        a.code
    }
}

/// The four accumulators (ymm0-3) stored 32 bytes apart from `rdx`, which moves on by 128.
fn store_sums(a: &mut Asm) {
    for (o, acc) in ACC4.into_iter().enumerate() {
        a.store_int(RDX, 32 * o as i32, acc);
    }
    a.add(RDX, 128);
}

/// Blocks of four i32 accumulators (ymm0-3) as the int8 pair kernels share them: per block
/// (`rsi` walks the weights in `AP`, `blocks` of them) the sums start at zero, `step` runs
/// `steps` times over the activations from `rdi` (in `BP`), the weights cursor moves on by
/// `skip` bytes, and `end` takes the four sums.
fn four_output_blocks(
    blocks: usize,
    steps: usize,
    skip: i32,
    step: &dyn Fn(&mut Asm),
    end: &dyn Fn(&mut Asm),
) -> Vec<u8> {
    let mut a = Asm::default();
    a.mov_gpr(AP, RSI);
    a.set(BLOCKS, blocks as u32);
    let block = a.here();
    for acc in ACC4 {
        a.zero_int(acc);
    }
    a.mov_gpr(BP, RDI);
    a.set(KP, steps as u32);
    let top = a.here();
    step(&mut a);
    a.dec(KP);
    a.loop_back(top);
    if skip != 0 {
        a.add(AP, skip);
    }
    end(&mut a);
    a.dec(BLOCKS);
    a.loop_back(block);
    a.ret();
    a.code
}

const ACC4: [Ymm; 4] = [Ymm(0), Ymm(1), Ymm(2), Ymm(3)];

/// The int8 depthwise convolution's sums ([`super::qdw`]) on 256-bit vectors: per output
/// position sixteen channels, taps in pairs. Each tap's sixteen bytes are sign-extended to
/// halfwords, two taps interleaved into (tap, tap) pairs per channel and multiplied with
/// [`super::qdw::wide_weights`] by `vpmaddwd`; the sums start from the channels' table.
/// Exact integers, so the same bits as the 128-bit kernel.
#[derive(Clone, Debug)]
pub(crate) struct DepthwiseRow {
    /// Byte offset of each tap from the window's first byte, padded to whole pairs (a
    /// padding tap reads tap 0; its weight is zero).
    pub taps: Vec<i32>,
    /// Output columns per call, and the bytes between the windows of two columns and
    /// between the sums of two positions.
    pub cols: usize,
    pub x_step: i32,
    pub sum_step: i32,
}

impl DepthwiseRow {
    /// Arguments: the window of the row's first column (`rdi`), the channel block's
    /// weights (`rsi`, 64 bytes per tap pair), its sums' first position (`rdx`, 64 bytes
    /// of i32 per position) and its sixteen starts (`rcx`).
    pub fn code(&self) -> Vec<u8> {
        assert!(
            self.cols >= 1 && !self.taps.is_empty() && self.taps.len().is_multiple_of(2),
            "{self:?}"
        );
        let (lo, hi) = (Ymm(0), Ymm(1));
        let mut a = Asm::default();
        a.set(BLOCKS, self.cols as u32);
        let col = a.here();
        a.zero_int(lo);
        a.zero_int(hi);
        for (tp, pair) in self.taps.chunks(2).enumerate() {
            // alternate register sets so consecutive pairs do not share a register
            let r = |i: u8| Ymm(2 + 4 * (tp % 2) as u8 + i);
            a.widen_bytes(r(0), RDI, pair[0]);
            a.widen_bytes(r(1), RDI, pair[1]);
            a.unpack_words(r(2), r(0), r(1), false);
            a.unpack_words(r(3), r(0), r(1), true);
            a.madd_pairs(r(2), r(2), Rm::M(RSI, 64 * tp as i32));
            a.madd_pairs(r(3), r(3), Rm::M(RSI, 64 * tp as i32 + 32));
            a.add_int(lo, lo, Rm::Y(r(2)));
            a.add_int(hi, hi, Rm::Y(r(3)));
        }
        // `lo` holds channels 0-3 | 8-11, `hi` 4-7 | 12-15: back into channel order
        let (first, second) = (Ymm(10), Ymm(11));
        a.pick_halves(first, lo, hi, 0x20);
        a.pick_halves(second, lo, hi, 0x31);
        a.add_int(first, first, Rm::M(RCX, 0));
        a.add_int(second, second, Rm::M(RCX, 32));
        a.store_int(RDX, 0, first);
        a.store_int(RDX, 32, second);
        a.add(RDI, self.x_step);
        a.add(RDX, self.sum_step);
        a.dec(BLOCKS);
        a.loop_back(col);
        a.ret();
        a.code
    }
}

/// The int8 dense product's sums ([`super::dot`]'s `product`, halfword pairs) on 256-bit
/// vectors: for one input row, four outputs at a time, sixteen activations and each
/// output's sixteen weights sign-extended to halfwords and multiplied by `vpmaddwd`. Each
/// output's eight partial sums are stored as they are (32 bytes); the caller adds them up.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PairDense {
    /// Depth, a multiple of sixteen: the bytes of the row and of each weight column.
    pub k: usize,
    /// Blocks of four outputs, their columns contiguous (`[n, k]` bytes).
    pub blocks: usize,
}

impl PairDense {
    /// Arguments: the activations (`rdi`), the first block's weight columns (`rsi`), where
    /// the partial sums go (`rdx`).
    pub fn code(&self) -> Vec<u8> {
        assert!(
            self.k >= 16 && self.k.is_multiple_of(16) && self.blocks >= 1,
            "{self:?}"
        );
        let k = self.k as i32;
        let x = Ymm(4);
        // after a block's loop the weights cursor is past its first column: on to the next block's
        let step = |a: &mut Asm| {
            a.widen_bytes(x, BP, 0);
            for (o, acc) in ACC4.into_iter().enumerate() {
                let w = Ymm(5 + o as u8);
                a.widen_bytes(w, AP, o as i32 * k);
                a.madd_pairs(w, w, Rm::Y(x));
                a.add_int(acc, acc, Rm::Y(w));
            }
            a.add(BP, 16);
            a.add(AP, 16);
        };
        four_output_blocks(self.blocks, self.k / 16, 3 * k, &step, &store_sums)
    }
}

//! The few x86-64 instructions Kiln encodes itself: 256-bit AVX2/FMA for the float
//! matrix-product micro-kernels (Cranelift 0.135 emits 128-bit vectors only, which caps a
//! product at half of what an AVX2 core does per cycle), plus the integer moves, adds and
//! backward branches of their loops. Vector instructions take the shortest VEX form; memory operands are `[base + disp]` only. The encodings follow the Intel SDM
//! (volume 2); `tests` checks them against bytes an assembler gives.

/// A general-purpose register, numbered as the encoding does (rax 0 ... r15 15).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Gpr(pub u8);

pub(crate) const RCX: Gpr = Gpr(1);
pub(crate) const RDX: Gpr = Gpr(2);
pub(crate) const RSI: Gpr = Gpr(6);
pub(crate) const RDI: Gpr = Gpr(7);
pub(crate) const R8: Gpr = Gpr(8);
pub(crate) const R9: Gpr = Gpr(9);
pub(crate) const R10: Gpr = Gpr(10);
pub(crate) const R11: Gpr = Gpr(11);

/// A 256-bit vector register, ymm0 ... ymm15.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Ymm(pub u8);

/// A register or memory operand (the ModRM `r/m` field).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Rm {
    Y(Ymm),
    /// `[base + disp]`
    M(Gpr, i32),
}

/// Machine code being written, start to end.
#[derive(Default)]
pub(crate) struct Asm {
    pub code: Vec<u8>,
}

/// VEX opcode maps and implied prefixes.
const MAP_0F: u8 = 1;
const MAP_0F38: u8 = 2;
const MAP_0F3A: u8 = 3;
const PP_NONE: u8 = 0;
const PP_66: u8 = 1;
const PP_F3: u8 = 2;

impl Asm {
    /// Where the next instruction starts (a branch target).
    pub fn here(&self) -> usize {
        self.code.len()
    }

    /// A VEX.256.W0 instruction `opcode` with ModRM `reg`, second source `src` (the `vvvv`
    /// field, unused when `None`) and operand `rm`.
    fn vex(&mut self, map: u8, pp: u8, opcode: u8, reg: u8, src: Option<Ymm>, rm: Rm) {
        self.vex_lw(map, pp, opcode, reg, src, rm, (true, false));
    }

    /// [`Asm::vex`] with the vector length (`wide`: 256 bits, else 128) and `W` bit given:
    /// the two-byte prefix where it can express them.
    #[allow(clippy::too_many_arguments)]
    fn vex_lw(&mut self, map: u8, pp: u8, opcode: u8, reg: u8, src: Option<Ymm>, rm: Rm, (wide, w): (bool, bool)) {
        let b = match rm {
            Rm::Y(y) => y.0 >> 3,
            Rm::M(g, _) => g.0 >> 3,
        };
        let r = reg >> 3;
        let v = src.map_or(0, |y| y.0);
        let tail = ((!v & 0xf) << 3) | ((wide as u8) << 2) | pp;
        if map == MAP_0F && b == 0 && !w {
            // the two-byte form: no B extension, map 0F, W0
            self.code.extend([0xc5, ((r ^ 1) << 7) | tail, opcode]);
        } else {
            self.code.extend([
                0xc4,
                ((r ^ 1) << 7) | (1 << 6) | ((b ^ 1) << 5) | map,
                ((w as u8) << 7) | tail,
                opcode,
            ]);
        }
        self.modrm(reg, rm);
    }

    fn modrm(&mut self, reg: u8, rm: Rm) {
        match rm {
            Rm::Y(y) => self.code.push(0xc0 | ((reg & 7) << 3) | (y.0 & 7)),
            Rm::M(base, disp) => {
                let low = base.0 & 7;
                let mode = if disp == 0 && low != 5 {
                    0
                } else if i8::try_from(disp).is_ok() {
                    1
                } else {
                    2
                };
                self.code.push((mode << 6) | ((reg & 7) << 3) | low);
                if low == 4 {
                    self.code.push(0x24); // SIB: base only
                }
                match mode {
                    1 => self.code.push(disp as i8 as u8),
                    2 => self.code.extend(disp.to_le_bytes()),
                    _ => {}
                }
            }
        }
    }

    /// `vmovups dst, [base + disp]`
    pub fn load(&mut self, dst: Ymm, base: Gpr, disp: i32) {
        self.vex(MAP_0F, PP_NONE, 0x10, dst.0, None, Rm::M(base, disp));
    }

    /// `vmovups [base + disp], src`
    pub fn store(&mut self, base: Gpr, disp: i32, src: Ymm) {
        self.vex(MAP_0F, PP_NONE, 0x11, src.0, None, Rm::M(base, disp));
    }

    /// `vmovaps dst, src`
    pub fn mov(&mut self, dst: Ymm, src: Ymm) {
        self.vex(MAP_0F, PP_NONE, 0x28, dst.0, None, Rm::Y(src));
    }

    /// `vbroadcastss dst, dword [base + disp]`
    pub fn broadcast(&mut self, dst: Ymm, base: Gpr, disp: i32) {
        self.vex(MAP_0F38, PP_66, 0x18, dst.0, None, Rm::M(base, disp));
    }

    /// `vcvtph2ps dst, [base + disp]`: eight binary16 values widened exactly.
    pub fn widen_halves(&mut self, dst: Ymm, base: Gpr, disp: i32) {
        self.vex(MAP_0F38, PP_66, 0x13, dst.0, None, Rm::M(base, disp));
    }

    /// `vfmadd231ps acc, x, y`: `acc = x * y + acc`, rounded once.
    pub fn fma(&mut self, acc: Ymm, x: Ymm, y: Rm) {
        self.vex(MAP_0F38, PP_66, 0xb8, acc.0, Some(x), y);
    }

    /// `vmaxps dst, x, y`: where either is NaN (or both are zeros), `y`.
    pub fn max(&mut self, dst: Ymm, x: Ymm, y: Ymm) {
        self.vex(MAP_0F, PP_NONE, 0x5f, dst.0, Some(x), Rm::Y(y));
    }

    /// `vminps dst, x, y`: where either is NaN (or both are zeros), `y`.
    pub fn min(&mut self, dst: Ymm, x: Ymm, y: Ymm) {
        self.vex(MAP_0F, PP_NONE, 0x5d, dst.0, Some(x), Rm::Y(y));
    }

    /// `vmovdqu dst, [base + disp]`
    pub fn load_int(&mut self, dst: Ymm, base: Gpr, disp: i32) {
        self.vex(MAP_0F, PP_F3, 0x6f, dst.0, None, Rm::M(base, disp));
    }

    /// `vmovdqu [base + disp], src`
    pub fn store_int(&mut self, base: Gpr, disp: i32, src: Ymm) {
        self.vex(MAP_0F, PP_F3, 0x7f, src.0, None, Rm::M(base, disp));
    }

    /// `vpbroadcastd dst, dword [base + disp]`
    pub fn broadcast_int(&mut self, dst: Ymm, base: Gpr, disp: i32) {
        self.vex(MAP_0F38, PP_66, 0x58, dst.0, None, Rm::M(base, disp));
    }

    /// `vpmaddwd dst, x, y`: per 32-bit lane, the sum of the two signed halfword products.
    pub fn madd_pairs(&mut self, dst: Ymm, x: Ymm, y: Rm) {
        self.vex(MAP_0F, PP_66, 0xf5, dst.0, Some(x), y);
    }

    /// `vpaddd dst, x, y` (wrapping 32-bit lanes)
    pub fn add_int(&mut self, dst: Ymm, x: Ymm, y: Rm) {
        self.vex(MAP_0F, PP_66, 0xfe, dst.0, Some(x), y);
    }

    /// `vpmovsxbw dst, [base + disp]`: sixteen bytes sign-extended to halfwords.
    pub fn widen_bytes(&mut self, dst: Ymm, base: Gpr, disp: i32) {
        self.vex(MAP_0F38, PP_66, 0x20, dst.0, None, Rm::M(base, disp));
    }

    /// `vpunpcklwd dst, x, y` / `vpunpckhwd` (`high`): per 128-bit half, the low (high)
    /// four halfwords of `x` and `y` alternately.
    pub fn unpack_words(&mut self, dst: Ymm, x: Ymm, y: Ymm, high: bool) {
        self.vex(MAP_0F, PP_66, if high { 0x69 } else { 0x61 }, dst.0, Some(x), Rm::Y(y));
    }

    /// `vperm2i128 dst, x, y, sel`: each 128-bit half of `dst` picked by two bits of
    /// `sel` (0, 1: `x`'s low and high halves; 2, 3: `y`'s).
    pub fn pick_halves(&mut self, dst: Ymm, x: Ymm, y: Ymm, sel: u8) {
        self.vex(MAP_0F3A, PP_66, 0x46, dst.0, Some(x), Rm::Y(y));
        self.code.push(sel);
    }

    /// `vpbroadcastq dst, qword [base + disp]`
    pub fn broadcast_q(&mut self, dst: Ymm, base: Gpr, disp: i32) {
        self.vex(MAP_0F38, PP_66, 0x59, dst.0, None, Rm::M(base, disp));
    }

    /// `vpsubd dst, x, y` (wrapping 32-bit lanes)
    pub fn sub_int(&mut self, dst: Ymm, x: Ymm, y: Rm) {
        self.vex(MAP_0F, PP_66, 0xfa, dst.0, Some(x), y);
    }

    /// `vpaddq dst, x, y` (wrapping 64-bit lanes)
    pub fn add_q(&mut self, dst: Ymm, x: Ymm, y: Rm) {
        self.vex(MAP_0F, PP_66, 0xd4, dst.0, Some(x), y);
    }

    /// `vpmuldq dst, x, y`: the signed 64-bit products of the even 32-bit lanes.
    pub fn mul_even(&mut self, dst: Ymm, x: Ymm, y: Rm) {
        self.vex(MAP_0F38, PP_66, 0x28, dst.0, Some(x), y);
    }

    /// `vpsrlq dst, src, imm` / `vpsllq` (`left`): 64-bit lanes shifted logically.
    pub fn shift_q(&mut self, dst: Ymm, src: Ymm, imm: u8, left: bool) {
        self.vex(MAP_0F, PP_66, 0x73, if left { 6 } else { 2 }, Some(dst), Rm::Y(src));
        self.code.push(imm);
    }

    /// `vpsrlq dst, x, xmmword [base + disp]`: 64-bit lanes shifted right logically by the
    /// count in the operand's low quadword.
    pub fn shr_q_by(&mut self, dst: Ymm, x: Ymm, base: Gpr, disp: i32) {
        self.vex(MAP_0F, PP_66, 0xd3, dst.0, Some(x), Rm::M(base, disp));
    }

    /// `vpsrad dst, src, imm`: 32-bit lanes shifted right arithmetically.
    pub fn sar_d(&mut self, dst: Ymm, src: Ymm, imm: u8) {
        self.vex(MAP_0F, PP_66, 0x72, 4, Some(dst), Rm::Y(src));
        self.code.push(imm);
    }

    /// `vpsrad dst, x, xmmword [base + disp]`: by the count in the operand's low quadword.
    pub fn sar_d_by(&mut self, dst: Ymm, x: Ymm, base: Gpr, disp: i32) {
        self.vex(MAP_0F, PP_66, 0xe2, dst.0, Some(x), Rm::M(base, disp));
    }

    /// `vpblendd dst, x, y, sel`: 32-bit lane `i` from `y` where bit `i` of `sel` is set.
    pub fn blend_d(&mut self, dst: Ymm, x: Ymm, y: Ymm, sel: u8) {
        self.vex(MAP_0F3A, PP_66, 0x02, dst.0, Some(x), Rm::Y(y));
        self.code.push(sel);
    }

    /// `vpand dst, x, y`
    pub fn and_int(&mut self, dst: Ymm, x: Ymm, y: Ymm) {
        self.vex(MAP_0F, PP_66, 0xdb, dst.0, Some(x), Rm::Y(y));
    }

    /// `vpcmpgtd dst, x, y`: all ones in the 32-bit lanes where `x > y` (signed).
    pub fn greater_d(&mut self, dst: Ymm, x: Ymm, y: Ymm) {
        self.vex(MAP_0F, PP_66, 0x66, dst.0, Some(x), Rm::Y(y));
    }

    /// `vpmaxsd dst, x, y` / `vpminsd` (`min`): signed 32-bit lanes.
    pub fn max_min_d(&mut self, dst: Ymm, x: Ymm, y: Ymm, min: bool) {
        self.vex(MAP_0F38, PP_66, if min { 0x39 } else { 0x3d }, dst.0, Some(x), Rm::Y(y));
    }

    /// `vpackssdw dst, x, y` / `vpacksswb` (`bytes`): per 128-bit half, `x`'s lanes then
    /// `y`'s narrowed with signed saturation.
    pub fn pack(&mut self, dst: Ymm, x: Ymm, y: Ymm, bytes: bool) {
        self.vex(MAP_0F, PP_66, if bytes { 0x63 } else { 0x6b }, dst.0, Some(x), Rm::Y(y));
    }

    /// `vextracti128 dst_xmm, src, 1`: the high 128 bits of `src` (the low half of `dst`).
    pub fn high_half(&mut self, dst: Ymm, src: Ymm) {
        self.vex(MAP_0F3A, PP_66, 0x39, src.0, None, Rm::Y(dst));
        self.code.push(1);
    }

    /// `vpunpckldq dst, x, y` / `vpunpckhdq` (`high`): per 128-bit half (only the low one
    /// unless `wide`), the low (high) two 32-bit lanes of `x` and `y` alternately.
    pub fn unpack_d(&mut self, dst: Ymm, x: Ymm, y: Ymm, high: bool, wide: bool) {
        let op = if high { 0x6a } else { 0x62 };
        self.vex_lw(MAP_0F, PP_66, op, dst.0, Some(x), Rm::Y(y), (wide, false));
    }

    /// `vpunpcklqdq dst, x, y` / `vpunpckhqdq` (`high`): per 128-bit half, the low (high)
    /// 64-bit lane of `x`, then of `y`.
    pub fn unpack_q(&mut self, dst: Ymm, x: Ymm, y: Ymm, high: bool) {
        self.vex(MAP_0F, PP_66, if high { 0x6d } else { 0x6c }, dst.0, Some(x), Rm::Y(y));
    }

    /// `vmovdqu dst_xmm, [base + disp]`: sixteen bytes into the low half (the high one
    /// cleared).
    pub fn load_half(&mut self, dst: Ymm, base: Gpr, disp: i32) {
        self.vex_lw(MAP_0F, PP_F3, 0x6f, dst.0, None, Rm::M(base, disp), (false, false));
    }

    /// `vinserti128 dst, x, [base + disp], 1`: `x` with its high half loaded.
    pub fn insert_high(&mut self, dst: Ymm, x: Ymm, base: Gpr, disp: i32) {
        self.vex(MAP_0F3A, PP_66, 0x38, dst.0, Some(x), Rm::M(base, disp));
        self.code.push(1);
    }

    /// `vmovq qword [base + disp], src_xmm` / `vpextrq ..., 1` (`high`): one 64-bit lane.
    pub fn store_q(&mut self, base: Gpr, disp: i32, src: Ymm, high: bool) {
        if high {
            self.vex_lw(MAP_0F3A, PP_66, 0x16, src.0, None, Rm::M(base, disp), (false, true));
            self.code.push(1);
        } else {
            self.vex_lw(MAP_0F, PP_66, 0xd6, src.0, None, Rm::M(base, disp), (false, false));
        }
    }

    /// `vpxor dst, dst, dst`: all zero bits (integer domain).
    pub fn zero_int(&mut self, dst: Ymm) {
        self.vex(MAP_0F, PP_66, 0xef, dst.0, Some(dst), Rm::Y(dst));
    }

    /// `vxorps dst, dst, dst`: all zero bits.
    pub fn zero(&mut self, dst: Ymm) {
        self.vex(MAP_0F, PP_NONE, 0x57, dst.0, Some(dst), Rm::Y(dst));
    }

    /// `mov dst, src` (64-bit)
    pub fn mov_gpr(&mut self, dst: Gpr, src: Gpr) {
        self.code.extend([0x48 | ((src.0 >> 3) << 2) | (dst.0 >> 3), 0x89]);
        self.code.push(0xc0 | ((src.0 & 7) << 3) | (dst.0 & 7));
    }

    /// `mov dst32, imm` (zero-extended to 64 bits)
    pub fn set(&mut self, dst: Gpr, imm: u32) {
        if dst.0 >= 8 {
            self.code.push(0x41);
        }
        self.code.push(0xb8 + (dst.0 & 7));
        self.code.extend(imm.to_le_bytes());
    }

    /// `add dst, imm` (64-bit)
    pub fn add(&mut self, dst: Gpr, imm: i32) {
        self.code.push(0x48 | (dst.0 >> 3));
        if let Ok(b) = i8::try_from(imm) {
            self.code.extend([0x83, 0xc0 | (dst.0 & 7), b as u8]);
        } else {
            self.code.extend([0x81, 0xc0 | (dst.0 & 7)]);
            self.code.extend(imm.to_le_bytes());
        }
    }

    /// `dec dst` (64-bit); sets ZF for [`Asm::loop_back`].
    pub fn dec(&mut self, dst: Gpr) {
        self.code.extend([0x48 | (dst.0 >> 3), 0xff, 0xc8 | (dst.0 & 7)]);
    }

    /// `jnz target`, a branch back to an earlier [`Asm::here`].
    pub fn loop_back(&mut self, target: usize) {
        let short = target as i64 - (self.here() as i64 + 2);
        if let Ok(d) = i8::try_from(short) {
            self.code.extend([0x75, d as u8]);
        } else {
            let d = target as i64 - (self.here() as i64 + 6);
            self.code.extend([0x0f, 0x85]);
            self.code.extend((d as i32).to_le_bytes());
        }
    }

    /// `vzeroupper; ret`: leaves no dirty upper halves for SSE code after it.
    pub fn ret(&mut self) {
        self.code.extend([0xc5, 0xf8, 0x77, 0xc3]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(f: impl FnOnce(&mut Asm)) -> Vec<u8> {
        let mut a = Asm::default();
        f(&mut a);
        a.code
    }

    /// Expected bytes from GNU as 2.40 (`.intel_syntax noprefix`), written out once.
    #[test]
    fn encodings_match_an_assembler() {
        let y = Ymm;
        let cases: Vec<(Vec<u8>, &[u8], &str)> = vec![
            (
                bytes(|a| a.load(y(12), R10, 32)),
                &[0xc4, 0x41, 0x7c, 0x10, 0x62, 0x20],
                "vmovups ymm12,[r10+32]",
            ),
            (
                bytes(|a| a.load(y(0), RSI, 0)),
                &[0xc5, 0xfc, 0x10, 0x06],
                "vmovups ymm0,[rsi]",
            ),
            (
                bytes(|a| a.store(RDX, 0x1f0, y(11))),
                &[0xc5, 0x7c, 0x11, 0x9a, 0xf0, 0x01, 0, 0],
                "vmovups [rdx+0x1f0],ymm11",
            ),
            (
                bytes(|a| a.broadcast(y(15), R9, 0x300)),
                &[0xc4, 0x42, 0x7d, 0x18, 0xb9, 0, 3, 0, 0],
                "vbroadcastss ymm15,[r9+0x300]",
            ),
            (
                bytes(|a| a.fma(y(3), y(15), Rm::Y(y(13)))),
                &[0xc4, 0xc2, 0x05, 0xb8, 0xdd],
                "vfmadd231ps ymm3,ymm15,ymm13",
            ),
            (
                bytes(|a| a.fma(y(9), y(15), Rm::M(R10, 64))),
                &[0xc4, 0x42, 0x05, 0xb8, 0x4a, 0x40],
                "vfmadd231ps ymm9,ymm15,[r10+64]",
            ),
            (
                bytes(|a| a.widen_halves(y(13), R10, 16)),
                &[0xc4, 0x42, 0x7d, 0x13, 0x6a, 0x10],
                "vcvtph2ps ymm13,[r10+16]",
            ),
            (
                bytes(|a| a.max(y(2), y(15), y(2))),
                &[0xc5, 0x84, 0x5f, 0xd2],
                "vmaxps ymm2,ymm15,ymm2",
            ),
            (
                bytes(|a| a.min(y(8), y(14), y(8))),
                &[0xc4, 0x41, 0x0c, 0x5d, 0xc0],
                "vminps ymm8,ymm14,ymm8",
            ),
            (
                bytes(|a| a.mov(y(1), y(0))),
                &[0xc5, 0xfc, 0x28, 0xc8],
                "vmovaps ymm1,ymm0",
            ),
            (
                bytes(|a| a.zero(y(15))),
                &[0xc4, 0x41, 0x04, 0x57, 0xff],
                "vxorps ymm15,ymm15,ymm15",
            ),
            (bytes(|a| a.mov_gpr(R9, RDI)), &[0x49, 0x89, 0xf9], "mov r9,rdi"),
            (
                bytes(|a| a.set(R11, 640)),
                &[0x41, 0xbb, 0x80, 0x02, 0, 0],
                "mov r11d,640",
            ),
            (
                bytes(|a| a.add(R10, 512)),
                &[0x49, 0x81, 0xc2, 0, 2, 0, 0],
                "add r10,512",
            ),
            (bytes(|a| a.add(RSI, 96)), &[0x48, 0x83, 0xc6, 0x60], "add rsi,96"),
            (bytes(|a| a.dec(R8)), &[0x49, 0xff, 0xc8], "dec r8"),
            (
                bytes(|a| a.broadcast(y(0), RCX, 4)),
                &[0xc4, 0xe2, 0x7d, 0x18, 0x41, 0x04],
                "vbroadcastss ymm0,[rcx+4]",
            ),
            (
                bytes(|a| a.load(y(5), Gpr(12), 8)),
                &[0xc4, 0xc1, 0x7c, 0x10, 0x6c, 0x24, 0x08],
                "vmovups ymm5,[r12+8]",
            ),
            (
                bytes(|a| a.load(y(5), Gpr(13), 0)),
                &[0xc4, 0xc1, 0x7c, 0x10, 0x6d, 0x00],
                "vmovups ymm5,[r13]",
            ),
            (
                bytes(|a| a.broadcast_int(y(6), R9, 20)),
                &[0xc4, 0xc2, 0x7d, 0x58, 0x71, 0x14],
                "vpbroadcastd ymm6,[r9+20]",
            ),
            (
                bytes(|a| a.broadcast_int(y(13), R9, 0)),
                &[0xc4, 0x42, 0x7d, 0x58, 0x29],
                "vpbroadcastd ymm13,[r9]",
            ),
            (
                bytes(|a| a.madd_pairs(y(14), y(4), Rm::Y(y(6)))),
                &[0xc5, 0x5d, 0xf5, 0xf6],
                "vpmaddwd ymm14,ymm4,ymm6",
            ),
            (
                bytes(|a| a.madd_pairs(y(15), y(5), Rm::Y(y(13)))),
                &[0xc4, 0x41, 0x55, 0xf5, 0xfd],
                "vpmaddwd ymm15,ymm5,ymm13",
            ),
            (
                bytes(|a| a.add_int(y(0), y(0), Rm::Y(y(14)))),
                &[0xc4, 0xc1, 0x7d, 0xfe, 0xc6],
                "vpaddd ymm0,ymm0,ymm14",
            ),
            (
                bytes(|a| a.add_int(y(3), y(3), Rm::Y(y(15)))),
                &[0xc4, 0xc1, 0x65, 0xfe, 0xdf],
                "vpaddd ymm3,ymm3,ymm15",
            ),
            (
                bytes(|a| a.zero_int(y(2))),
                &[0xc5, 0xed, 0xef, 0xd2],
                "vpxor ymm2,ymm2,ymm2",
            ),
            (
                bytes(|a| a.load_int(y(4), R10, 32)),
                &[0xc4, 0xc1, 0x7e, 0x6f, 0x62, 0x20],
                "vmovdqu ymm4,[r10+32]",
            ),
            (
                bytes(|a| a.store_int(RDX, 96, y(3))),
                &[0xc5, 0xfe, 0x7f, 0x5a, 0x60],
                "vmovdqu [rdx+96],ymm3",
            ),
            (
                bytes(|a| a.broadcast_q(y(9), RCX, 8)),
                &[0xc4, 0x62, 0x7d, 0x59, 0x49, 0x08],
                "vpbroadcastq ymm9,[rcx+8]",
            ),
            (
                bytes(|a| a.sub_int(y(0), y(0), Rm::Y(y(12)))),
                &[0xc4, 0xc1, 0x7d, 0xfa, 0xc4],
                "vpsubd ymm0,ymm0,ymm12",
            ),
            (
                bytes(|a| a.add_q(y(4), y(4), Rm::Y(y(13)))),
                &[0xc4, 0xc1, 0x5d, 0xd4, 0xe5],
                "vpaddq ymm4,ymm4,ymm13",
            ),
            (
                bytes(|a| a.mul_even(y(10), y(1), Rm::Y(y(15)))),
                &[0xc4, 0x42, 0x75, 0x28, 0xd7],
                "vpmuldq ymm10,ymm1,ymm15",
            ),
            (
                bytes(|a| a.shift_q(y(5), y(1), 32, false)),
                &[0xc5, 0xd5, 0x73, 0xd1, 0x20],
                "vpsrlq ymm5,ymm1,32",
            ),
            (
                bytes(|a| a.shift_q(y(11), y(12), 32, true)),
                &[0xc4, 0xc1, 0x25, 0x73, 0xf4, 0x20],
                "vpsllq ymm11,ymm12,32",
            ),
            (
                bytes(|a| a.shr_q_by(y(4), y(4), RCX, 16)),
                &[0xc5, 0xdd, 0xd3, 0x61, 0x10],
                "vpsrlq ymm4,ymm4,[rcx+16]",
            ),
            (
                bytes(|a| a.sar_d(y(8), y(2), 31)),
                &[0xc5, 0xbd, 0x72, 0xe2, 0x1f],
                "vpsrad ymm8,ymm2,31",
            ),
            (
                bytes(|a| a.sar_d_by(y(4), y(3), RCX, 32)),
                &[0xc5, 0xe5, 0xe2, 0x61, 0x20],
                "vpsrad ymm4,ymm3,[rcx+32]",
            ),
            (
                bytes(|a| a.blend_d(y(0), y(4), y(5), 0xaa)),
                &[0xc4, 0xe3, 0x5d, 0x02, 0xc5, 0xaa],
                "vpblendd ymm0,ymm4,ymm5,0xaa",
            ),
            (
                bytes(|a| a.and_int(y(5), y(0), y(6))),
                &[0xc5, 0xfd, 0xdb, 0xee],
                "vpand ymm5,ymm0,ymm6",
            ),
            (
                bytes(|a| a.greater_d(y(5), y(5), y(6))),
                &[0xc5, 0xd5, 0x66, 0xee],
                "vpcmpgtd ymm5,ymm5,ymm6",
            ),
            (
                bytes(|a| a.max_min_d(y(0), y(0), y(6), false)),
                &[0xc4, 0xe2, 0x7d, 0x3d, 0xc6],
                "vpmaxsd ymm0,ymm0,ymm6",
            ),
            (
                bytes(|a| a.max_min_d(y(3), y(3), y(14), true)),
                &[0xc4, 0xc2, 0x65, 0x39, 0xde],
                "vpminsd ymm3,ymm3,ymm14",
            ),
            (
                bytes(|a| a.pack(y(4), y(0), y(1), false)),
                &[0xc5, 0xfd, 0x6b, 0xe1],
                "vpackssdw ymm4,ymm0,ymm1",
            ),
            (
                bytes(|a| a.pack(y(4), y(4), y(5), true)),
                &[0xc5, 0xdd, 0x63, 0xe5],
                "vpacksswb ymm4,ymm4,ymm5",
            ),
            (
                bytes(|a| a.high_half(y(5), y(4))),
                &[0xc4, 0xe3, 0x7d, 0x39, 0xe5, 0x01],
                "vextracti128 xmm5,ymm4,1",
            ),
            (
                bytes(|a| a.unpack_d(y(6), y(4), y(5), false, false)),
                &[0xc5, 0xd9, 0x62, 0xf5],
                "vpunpckldq xmm6,xmm4,xmm5",
            ),
            (
                bytes(|a| a.unpack_d(y(7), y(4), y(5), true, false)),
                &[0xc5, 0xd9, 0x6a, 0xfd],
                "vpunpckhdq xmm7,xmm4,xmm5",
            ),
            (
                bytes(|a| a.unpack_d(y(4), y(0), y(1), false, true)),
                &[0xc5, 0xfd, 0x62, 0xe1],
                "vpunpckldq ymm4,ymm0,ymm1",
            ),
            (
                bytes(|a| a.unpack_d(y(5), y(2), y(3), true, true)),
                &[0xc5, 0xed, 0x6a, 0xeb],
                "vpunpckhdq ymm5,ymm2,ymm3",
            ),
            (
                bytes(|a| a.unpack_q(y(0), y(4), y(5), false)),
                &[0xc5, 0xdd, 0x6c, 0xc5],
                "vpunpcklqdq ymm0,ymm4,ymm5",
            ),
            (
                bytes(|a| a.unpack_q(y(3), y(6), y(7), true)),
                &[0xc5, 0xcd, 0x6d, 0xdf],
                "vpunpckhqdq ymm3,ymm6,ymm7",
            ),
            (
                bytes(|a| a.load_half(y(0), RDI, 64)),
                &[0xc5, 0xfa, 0x6f, 0x47, 0x40],
                "vmovdqu xmm0,[rdi+64]",
            ),
            (
                bytes(|a| a.load_half(y(10), RDI, 0)),
                &[0xc5, 0x7a, 0x6f, 0x17],
                "vmovdqu xmm10,[rdi]",
            ),
            (
                bytes(|a| a.insert_high(y(0), y(0), RDI, 1024)),
                &[0xc4, 0xe3, 0x7d, 0x38, 0x87, 0, 4, 0, 0, 1],
                "vinserti128 ymm0,ymm0,[rdi+1024],1",
            ),
            (
                bytes(|a| a.insert_high(y(3), y(3), R9, 4096)),
                &[0xc4, 0xc3, 0x65, 0x38, 0x99, 0, 0x10, 0, 0, 1],
                "vinserti128 ymm3,ymm3,[r9+4096],1",
            ),
            (
                bytes(|a| a.store_q(RDX, 0, y(6), false)),
                &[0xc5, 0xf9, 0xd6, 0x32],
                "vmovq [rdx],xmm6",
            ),
            (
                bytes(|a| a.store_q(RDX, 200, y(6), true)),
                &[0xc4, 0xe3, 0xf9, 0x16, 0xb2, 0xc8, 0, 0, 0, 1],
                "vpextrq [rdx+200],xmm6,1",
            ),
            (
                bytes(|a| a.store_q(R8, 1000, y(7), false)),
                &[0xc4, 0xc1, 0x79, 0xd6, 0xb8, 0xe8, 0x03, 0, 0],
                "vmovq [r8+1000],xmm7",
            ),
        ];
        for (got, want, text) in cases {
            assert_eq!(got, want, "{text}");
        }
        let mut a = Asm::default();
        let top = a.here();
        a.dec(R11);
        a.loop_back(top);
        assert_eq!(a.code, [0x49, 0xff, 0xcb, 0x75, 0xfb]);
        let mut a = Asm::default();
        let top = a.here();
        a.code.resize(200, 0x90);
        a.loop_back(top);
        assert_eq!(a.code[200..], [0x0f, 0x85, 0x32, 0xff, 0xff, 0xff]);
    }
}

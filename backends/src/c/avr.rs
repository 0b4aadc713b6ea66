//! Int8 products on 8-bit AVR, shaped for its instruction set (layouts in
//! `crate::pack::avr_product`): weights streamed by post-increment loads (`LPM Z+` from
//! flash, `LD` from a stack row for convolutions), each product one `MULS` into 16 bits,
//! sums in the 16 or 24 bits the range analysis allows (two products added in 16 bits
//! first where no weight is -128), constant loop bounds, no library call in the inner loop.
//!
//! Convolutions gather, per output row, the input rows it reads into a zero-point-padded
//! buffer (the scratch), so every tap is in range and, with the zero point folded into the
//! bias, a padded tap adds `zp * w - zp * w = 0` as the evaluator's skipped tap does.
//!
//! The rescale avoids 64-bit arithmetic when every channel's shift is at most -2 (t = 31 -
//! shift >= 33): the high word of `acc * m'` from twelve 8-bit multiplies (`kiln_mulhi24`),
//! with m' the multiplier shifted so that the rounding point falls on a byte
//! ([`byte_aligned`]), which is floor((acc * m + 2^(t-1)) / 2^t) because flooring in steps
//! is exact. Sums below a per-channel threshold, computed
//! here exactly, clamp to the bottom without a multiply (after a ReLU, most of them).
//! Elsewhere the C helpers of `int` finish the sum.

use super::int::{requant, rom_table};
use crate::pack::AvrProduct;
use kiln_ir::op::QLinear;
use kiln_ir::{Graph, NodeId, Op};
use std::fmt::Write;

fn shape(g: &Graph, v: kiln_ir::ValueId) -> &[usize] {
    &g.value(v).ty.shape
}

/// The multiply-add helpers: `kiln_mac<acc>_<mem>` adds products of int8 activations at
/// `*x` and weights at `*w` (flash `f` or RAM `r`) to a 16-bit sum or, `2` for a pair added
/// in 16 bits first, a 24-bit one, advancing both pointers; `kiln_mac4` takes two 4-bit
/// weights from one flash byte (the even tap in the low nibble). With `MUL` (every ATmega)
/// they are inline assembly; the portable forms are the same sums modulo the width.
pub const PRELUDE: &str = r#"#if defined(__AVR_HAVE_MUL__) && defined(__INT24_MAX__)
#define KILN_AVR_MUL 1
#define KILN_AI static inline __attribute__((always_inline))
/* sign-extends the 16-bit t1:t0 (carry from the byte below pending) into a 24-bit top byte */
#define KILN_TOP24(t, c) "sbrc " t ", 7\n\tdec " c "\n\tclr __zero_reg__\n\tadc " c ", __zero_reg__\n\t"
#define KILN_MACS(sfx, ldw)                                                                \
KILN_AI void kiln_mac16_##sfx(int16_t *a, const int8_t **x, const int8_t **w) {            \
    uint8_t p, q;                                                                          \
    __asm__("ld %1, X+\n\t" ldw " %2, Z+\n\tmuls %1, %2\n\tadd %A0, r0\n\tadc %B0, r1\n\t" \
            "clr __zero_reg__"                                                             \
            : "+r"(*a), "=&d"(p), "=&d"(q), "+x"(*x), "+z"(*w) : : "r0");                  \
}                                                                                          \
KILN_AI void kiln_mac24_##sfx(kiln_acc24 *a, const int8_t **x, const int8_t **w) {         \
    uint8_t p, q;                                                                          \
    __asm__("ld %1, X+\n\t" ldw " %2, Z+\n\tmuls %1, %2\n\tadd %A0, r0\n\tadc %B0, r1\n\t" \
            KILN_TOP24("r1", "%C0")                                                        \
            : "+r"(*a), "=&d"(p), "=&d"(q), "+x"(*x), "+z"(*w) : : "r0");                  \
}                                                                                          \
KILN_AI void kiln_mac2_##sfx(kiln_acc24 *a, const int8_t **x, const int8_t **w) {          \
    uint8_t p, q;                                                                          \
    int16_t t;                                                                             \
    __asm__("ld %1, X+\n\t" ldw " %2, Z+\n\tmuls %1, %2\n\tmovw %3, r0\n\t"                \
            "ld %1, X+\n\t" ldw " %2, Z+\n\tmuls %1, %2\n\tadd %A3, r0\n\tadc %B3, r1\n\t" \
            "add %A0, %A3\n\tadc %B0, %B3\n\t" KILN_TOP24("%B3", "%C0")                    \
            : "+r"(*a), "=&d"(p), "=&d"(q), "=&r"(t), "+x"(*x), "+z"(*w) : : "r0");        \
}
KILN_MACS(f, "lpm")
KILN_MACS(r, "ld")
/* a group of taps at fixed offsets `d` (0..63) from the activation pointer in Z, weights
   from a RAM row at X+: `KILN_G<n>` adds n products in 16 bits, then into a 24-bit sum
   (the kernel proves the group's 16-bit sum cannot overflow); `KILN_H<n>` into a 16-bit
   sum */
#define KILN_T0(d) "ldd %1, Z+" #d "\n\tld %2, X+\n\tmuls %1, %2\n\tmovw %3, r0\n\t"
#define KILN_TN(d) "ldd %1, Z+" #d "\n\tld %2, X+\n\tmuls %1, %2\n\tadd %A3, r0\n\tadc %B3, r1\n\t"
#define KILN_GRP(a, x, w, taps, top)                                                       \
    do {                                                                                   \
        uint8_t p_, q_;                                                                    \
        int16_t t_;                                                                        \
        __asm__(taps "add %A0, %A3\n\tadc %B0, %B3\n\t" top                              \
                : "+r"(a), "=&d"(p_), "=&d"(q_), "=&r"(t_), "+x"(w) : "z"(x) : "r0");      \
    } while (0)
#define KILN_G1(a, x, w, d0) KILN_GRP(a, x, w, KILN_T0(d0), KILN_TOP24("%B3", "%C0"))
#define KILN_G2(a, x, w, d0, d1) KILN_GRP(a, x, w, KILN_T0(d0) KILN_TN(d1), KILN_TOP24("%B3", "%C0"))
#define KILN_G3(a, x, w, d0, d1, d2) KILN_GRP(a, x, w, KILN_T0(d0) KILN_TN(d1) KILN_TN(d2), KILN_TOP24("%B3", "%C0"))
#define KILN_G4(a, x, w, d0, d1, d2, d3) \
    KILN_GRP(a, x, w, KILN_T0(d0) KILN_TN(d1) KILN_TN(d2) KILN_TN(d3), KILN_TOP24("%B3", "%C0"))
#define KILN_H1(a, x, w, d0) KILN_GRP(a, x, w, KILN_T0(d0), "clr __zero_reg__\n\t")
#define KILN_H2(a, x, w, d0, d1) KILN_GRP(a, x, w, KILN_T0(d0) KILN_TN(d1), "clr __zero_reg__\n\t")
#define KILN_H3(a, x, w, d0, d1, d2) KILN_GRP(a, x, w, KILN_T0(d0) KILN_TN(d1) KILN_TN(d2), "clr __zero_reg__\n\t")
#define KILN_H4(a, x, w, d0, d1, d2, d3) \
    KILN_GRP(a, x, w, KILN_T0(d0) KILN_TN(d1) KILN_TN(d2) KILN_TN(d3), "clr __zero_reg__\n\t")
/* two 4-bit weights from one flash byte; `top` is empty for a 16-bit sum */
#define KILN_MAC4(name, acc_t, top)                                                         \
KILN_AI void name(acc_t *a, const int8_t **x, const uint8_t **w) {                          \
    uint8_t p, q, r;                                                                        \
    int16_t t;                                                                              \
    __asm__("lpm %2, Z+\n\tmov %3, %2\n\tandi %2, 15\n\tsbrc %2, 3\n\tori %2, 240\n\t"      \
            "swap %3\n\tandi %3, 15\n\tsbrc %3, 3\n\tori %3, 240\n\t"                       \
            "ld %1, X+\n\tmuls %1, %2\n\tmovw %4, r0\n\tld %1, X+\n\tmuls %1, %3\n\t"       \
            "add %A4, r0\n\tadc %B4, r1\n\tadd %A0, %A4\n\tadc %B0, %B4\n\t" top             \
            "clr __zero_reg__"                                                              \
            : "+r"(*a), "=&d"(p), "=&d"(q), "=&d"(r), "=&r"(t), "+x"(*x), "+z"(*w) : : "r0"); \
}
KILN_MAC4(kiln_mac4_16, int16_t, "")
KILN_MAC4(kiln_mac4_24, kiln_acc24, "sbrc %B4, 7\n\tdec %C0\n\tclr __zero_reg__\n\tadc %C0, __zero_reg__\n\t")
/* floor(x * m / 2^32) for a 24-bit x and m read as unsigned: the unsigned product of x's
   bytes and m's column by column (each 16-bit product into bytes k and k+1, its carry into
   k+2, which until its own column holds only carries), less m * 2^24 when x is negative */
KILN_AI int32_t kiln_mulhi24(kiln_acc24 x, int32_t m) {
    kiln_acc24 h;
    uint8_t c1, c2, c3, z;
    __asm__("clr %1\n\tclr %2\n\tclr %3\n\tclr %A0\n\tclr %B0\n\tclr %C0\n\tclr %4\n\t"
            "mul %A5, %A6\n\tmov %1, r1\n\t"
            "mul %A5, %B6\n\tadd %1, r0\n\tadc %2, r1\n\tadc %3, %4\n\t"
            "mul %B5, %A6\n\tadd %1, r0\n\tadc %2, r1\n\tadc %3, %4\n\t"
            "mul %A5, %C6\n\tadd %2, r0\n\tadc %3, r1\n\tadc %A0, %4\n\t"
            "mul %B5, %B6\n\tadd %2, r0\n\tadc %3, r1\n\tadc %A0, %4\n\t"
            "mul %C5, %A6\n\tadd %2, r0\n\tadc %3, r1\n\tadc %A0, %4\n\t"
            "mul %A5, %D6\n\tadd %3, r0\n\tadc %A0, r1\n\tadc %B0, %4\n\t"
            "mul %B5, %C6\n\tadd %3, r0\n\tadc %A0, r1\n\tadc %B0, %4\n\t"
            "mul %C5, %B6\n\tadd %3, r0\n\tadc %A0, r1\n\tadc %B0, %4\n\t"
            "mul %B5, %D6\n\tadd %A0, r0\n\tadc %B0, r1\n\tadc %C0, %4\n\t"
            "mul %C5, %C6\n\tadd %A0, r0\n\tadc %B0, r1\n\tadc %C0, %4\n\t"
            "mul %C5, %D6\n\tadd %B0, r0\n\tadc %C0, r1\n\t"
            "sbrs %C5, 7\n\trjmp 1f\n\t"
            "sub %3, %A6\n\tsbc %A0, %B6\n\tsbc %B0, %C6\n\tsbc %C0, %D6\n"
            "1:\tclr __zero_reg__"
            : "=&r"(h), "=&r"(c1), "=&r"(c2), "=&r"(c3), "=&r"(z)
            : "r"(x), "r"(m)
            : "r0");
    return h;
}
#else
#define KILN_AI static inline
#define KILN_MACS(sfx, rd)                                                                 \
KILN_AI void kiln_mac16_##sfx(int16_t *a, const int8_t **x, const int8_t **w) {            \
    int16_t p = (int16_t)(*(*x)++ * rd((*w)++));                                           \
    *a = (int16_t)(uint16_t)((uint16_t)*a + (uint16_t)p);                                  \
}                                                                                          \
KILN_AI void kiln_mac24_##sfx(kiln_acc24 *a, const int8_t **x, const int8_t **w) {         \
    int16_t p = (int16_t)(*(*x)++ * rd((*w)++));                                           \
    *a = (kiln_acc24)(int32_t)((uint32_t)(int32_t)*a + (uint32_t)(int32_t)p);              \
}                                                                                          \
KILN_AI void kiln_mac2_##sfx(kiln_acc24 *a, const int8_t **x, const int8_t **w) {          \
    kiln_mac24_##sfx(a, x, w);                                                             \
    kiln_mac24_##sfx(a, x, w);                                                             \
}
#define kiln_ram_i8(p) (*(p))
KILN_MACS(f, kiln_rom_i8)
KILN_MACS(r, kiln_ram_i8)
KILN_AI void kiln_tap24(kiln_acc24 *a, const int8_t *x, const int8_t **w) {
    int16_t p = (int16_t)(*x * *(*w)++);
    *a = (kiln_acc24)(int32_t)((uint32_t)(int32_t)*a + (uint32_t)(int32_t)p);
}
KILN_AI void kiln_tap16(int16_t *a, const int8_t *x, const int8_t **w) {
    int16_t p = (int16_t)(*x * *(*w)++);
    *a = (int16_t)(uint16_t)((uint16_t)*a + (uint16_t)p);
}
#define KILN_G1(a, x, w, d0) kiln_tap24(&(a), (x) + (d0), &(w))
#define KILN_G2(a, x, w, d0, d1) do { KILN_G1(a, x, w, d0); KILN_G1(a, x, w, d1); } while (0)
#define KILN_G3(a, x, w, d0, d1, d2) do { KILN_G2(a, x, w, d0, d1); KILN_G1(a, x, w, d2); } while (0)
#define KILN_G4(a, x, w, d0, d1, d2, d3) do { KILN_G2(a, x, w, d0, d1); KILN_G2(a, x, w, d2, d3); } while (0)
#define KILN_H1(a, x, w, d0) kiln_tap16(&(a), (x) + (d0), &(w))
#define KILN_H2(a, x, w, d0, d1) do { KILN_H1(a, x, w, d0); KILN_H1(a, x, w, d1); } while (0)
#define KILN_H3(a, x, w, d0, d1, d2) do { KILN_H2(a, x, w, d0, d1); KILN_H1(a, x, w, d2); } while (0)
#define KILN_H4(a, x, w, d0, d1, d2, d3) do { KILN_H2(a, x, w, d0, d1); KILN_H2(a, x, w, d2, d3); } while (0)
KILN_AI int8_t kiln_nib(uint8_t b) { return (int8_t)(((b & 15) ^ 8) - 8); }
KILN_AI void kiln_mac4_16(int16_t *a, const int8_t **x, const uint8_t **w) {
    uint8_t b = kiln_rom_u8((*w)++);
    int16_t p = (int16_t)((*x)[0] * kiln_nib(b) + (*x)[1] * kiln_nib((uint8_t)(b >> 4)));
    *x += 2;
    *a = (int16_t)(uint16_t)((uint16_t)*a + (uint16_t)p);
}
KILN_AI void kiln_mac4_24(kiln_acc24 *a, const int8_t **x, const uint8_t **w) {
    uint8_t b = kiln_rom_u8((*w)++);
    int16_t p = (int16_t)((*x)[0] * kiln_nib(b) + (*x)[1] * kiln_nib((uint8_t)(b >> 4)));
    *x += 2;
    *a = (kiln_acc24)(int32_t)((uint32_t)(int32_t)*a + (uint32_t)(int32_t)p);
}
KILN_AI int32_t kiln_mulhi24(kiln_acc24 x, int32_t m) { return (int32_t)(((int64_t)x * (uint32_t)m) >> 32); }
#endif
/* the int8 result of sum `a` for one channel: `lo` the smallest sum above the bottom clamp,
   `m` the multiplier and `k` the shift that put the rounding point at bit 8 of the high
   word (see `c::avr`), [min, max] the clamp less the zero point `zp` */
KILN_AI int8_t kiln_avr_out(kiln_acc24 a, kiln_acc24 lo, uint32_t m, int8_t k, int16_t min, int16_t max, int8_t zp) {
    int32_t h, r;
    if (a < lo) return (int8_t)(min + zp);
    h = kiln_mulhi24(a, (int32_t)m);
    if (k > 0) h = (int32_t)((uint32_t)h << k);
    else if (k < 0) h >>= -k;
    r = (h + 128) >> 8;
    return (int8_t)((r < min ? min : (r > max ? max : (int16_t)r)) + zp);
}
"#;

/// Whether the rescale of `q` has the fast form: ONNX Runtime's rounding, positive
/// multipliers, shifts at most -2, an int8 output.
fn fast_rescale(q: &QLinear) -> bool {
    q.numerics == kiln_ir::op::Numerics::Onnx
        && q.requant.iter().all(|r| r.multiplier > 0 && r.shift <= -2)
        && q.act_min >= -128
        && q.act_max <= 127
}

/// The multiplier and left shift `k` for `kiln_avr_out`, which rounds at bit 8 of
/// h = floor(acc * m' / 2^32): with s = -1 - shift, the rescale floor((acc * m + 2^(31+s)) /
/// 2^(32+s)) is floor((h * 2^k + 2^7) / 2^8) for k = 8 - s (flooring in steps; a negative k
/// shifts right). Doubling m while it fits 32 unsigned bits lowers k by one, so most
/// layers (shifts -8 and -9) need no shift at run time.
fn byte_aligned(m: i32, shift: i32) -> (u32, i32) {
    let (mut m, mut k) = (m as u32, 8 - (-1 - shift));
    while k > 0 && m < 1 << 31 {
        m <<= 1;
        k -= 1;
    }
    (m, k)
}

/// The smallest sum whose rescale lies above the bottom clamp (`act_min - zp`), within the
/// sum's `bits`: below it the output is `act_min`.
fn bottom_threshold(q: &QLinear, r: &kiln_runtime::Requant, bits: u32) -> i64 {
    let v = i128::from(q.act_min - q.output_zp) + 1;
    let t = 31 - r.shift;
    // R(x) >= v  <=>  x * m + 2^(t-1) >= v * 2^t
    let num = v * (1i128 << t) - (1i128 << (t - 1));
    let m = i128::from(r.multiplier);
    let x = num.div_euclid(m) + i128::from(num.rem_euclid(m) != 0);
    let lim = 1i128 << (bits - 1);
    x.clamp(-lim, lim - 1) as i64
}

/// The per-channel tables of the rescale: a statement loading channel `ch`'s constants into
/// locals (hoisted out of the loop over its outputs) and the expression finishing sum `acc`
/// (C source); with a slow rescale no statement and the `int` expression.
fn finish(out: &mut String, q: &QLinear, p: &AvrProduct, ch: &str) -> (String, String) {
    if !fast_rescale(q) {
        // the sums fit 24 bits (`avr_product`), well below 2^30
        return (String::new(), requant(out, q, ch, false, true));
    }
    let rq = &q.requant;
    let aligned: Vec<(u32, i32)> = rq.iter().map(|r| byte_aligned(r.multiplier, r.shift)).collect();
    rom_table(out, "uint32_t", "mult", aligned.iter().map(|a| format!("{}u", a.0)));
    rom_table(
        out,
        "int32_t",
        "lo",
        rq.iter().map(|r| bottom_threshold(q, r, p.acc_bits)),
    );
    let c = if rq.len() == 1 { "0" } else { ch };
    // one shift for every channel (most layers): a constant, its branches folded away
    let shift = if aligned.iter().all(|a| a.1 == aligned[0].1) {
        format!("int8_t s_c = {};", aligned[0].1)
    } else {
        rom_table(out, "int8_t", "sh", aligned.iter().map(|a| a.1));
        format!("int8_t s_c = (int8_t)kiln_rom_u8(&sh[{c}]);")
    };
    (
        format!(
            "kiln_acc24 lo_c = (kiln_acc24)kiln_rom_i32(&lo[{c}]);\nuint32_t m_c = (uint32_t)kiln_rom_i32(&mult[{c}]);\n{shift}"
        ),
        format!(
            "kiln_avr_out(acc, lo_c, m_c, s_c, {}, {}, {})",
            q.act_min - q.output_zp,
            q.act_max - q.output_zp,
            q.output_zp
        ),
    )
}

/// `stmt` (lines) indented by `indent`.
fn indented(stmt: &str, indent: &str) -> String {
    stmt.lines().map(|l| format!("{indent}{l}\n")).collect()
}

/// Loop counter type for `n` iterations.
fn counter(n: usize) -> &'static str {
    if n <= 255 { "uint8_t" } else { "uint16_t" }
}

/// Statements adding `taps` products of `x` and `w` (`mem` `f`lash or `r`am) to `acc`:
/// a constant-bound loop of up to eight taps a pass, then the rest.
fn macs(out: &mut String, p: &AvrProduct, taps: usize, mem: char, indent: &str) {
    let packed = p.weight_bits == 4 && mem == 'f';
    let (step, call) = match (packed, p.acc_bits <= 16, p.pairs) {
        (true, true, _) => (2, "kiln_mac4_16(&acc, &x, &w);".to_string()),
        (true, false, _) => (2, "kiln_mac4_24(&acc, &x, &w);".to_string()),
        (false, true, _) => (1, format!("kiln_mac16_{mem}(&acc, &x, &w);")),
        (false, false, true) => (2, format!("kiln_mac2_{mem}(&acc, &x, &w);")),
        (false, false, false) => (1, format!("kiln_mac24_{mem}(&acc, &x, &w);")),
    };
    let units = taps / step;
    let per = (8 / step).min(units.max(1));
    let body = |k: usize| vec![call.as_str(); k].join(" ");
    if units >= 2 * per {
        let _ = writeln!(
            out,
            "{indent}for ({} u = 0; u < {}; ++u) {{ {} }}",
            counter(units / per),
            units / per,
            body(per)
        );
    }
    let rest = if units >= 2 * per { units % per } else { units };
    if rest > 0 {
        let _ = writeln!(out, "{indent}{}", body(rest));
    }
    if taps % step == 1 {
        // the odd last tap: an int8 weight, or the low nibble of the row's last byte
        let single = if p.acc_bits <= 16 { "kiln_mac16" } else { "kiln_mac24" };
        if packed {
            let _ = writeln!(
                out,
                "{indent}{{ int8_t wl = (int8_t)(((kiln_rom_u8(w++) & 15) ^ 8) - 8); const int8_t *wp = &wl; {single}_r(&acc, &x, &wp); }}"
            );
        } else {
            let _ = writeln!(out, "{indent}{single}_{mem}(&acc, &x, &w);");
        }
    }
}

/// The sum's C type.
fn acc_type(p: &AvrProduct) -> &'static str {
    if p.acc_bits <= 16 { "int16_t" } else { "kiln_acc24" }
}

/// Where the folded bias of channel `ch` comes from: the node's bias constant (stored
/// folded, `pack::avr_const_values`) or a kernel table when the node has none.
fn bias(out: &mut String, g: &Graph, n: NodeId, ch: &str) -> String {
    if g.node(n).inputs.len() > 2 {
        return format!("kiln_rom_i32(&x2[{ch}])");
    }
    let b = crate::pack::avr_bias(g, n).unwrap_or_default();
    rom_table(out, "int32_t", "bias", b.into_iter());
    format!("kiln_rom_i32(&bias[{ch}])")
}

/// An int8 matrix product `[rows, K] x [K, N]`: per output, its weight row streamed from
/// flash against the activations.
pub fn dense(out: &mut String, g: &Graph, n: NodeId, q: &QLinear, p: &AvrProduct) {
    let node = g.node(n);
    let nn = shape(g, node.inputs[1])[1];
    let rows = g.value(node.outputs[0]).ty.numel() / nn.max(1);
    let (load, fin) = finish(out, q, p, "j");
    let b = bias(out, g, n, "j");
    let (acc_t, w_t) = (acc_type(p), if p.weight_bits == 4 { "uint8_t" } else { "int8_t" });
    let _ = writeln!(
        out,
        "    for ({} r = 0; r < {rows}; ++r) {{\n        const {w_t} *w = x1;\n        for ({} j = 0; j < {nn}; ++j) {{\n            const int8_t *x = x0 + r * {};\n            {acc_t} acc = ({acc_t}){b};",
        counter(rows),
        counter(nn),
        p.taps
    );
    macs(out, p, p.taps, 'f', "            ");
    out.push_str(&indented(&load, "            "));
    let _ = writeln!(out, "            y0[r * {nn} + j] = {fin};\n        }}\n    }}");
}

/// Scratch bytes of an AVR convolution: the zero-point-padded input rows of one output row.
pub fn conv_scratch(g: &Graph, n: NodeId) -> usize {
    let node = g.node(n);
    let Op::QConv { window, .. } = &node.op else {
        return 0;
    };
    let xs = shape(g, node.inputs[0]);
    let ge = window.plane(xs, shape(g, node.outputs[0]));
    xs[1] * ge.kh * crate::pack::plane_dims(&ge).1
}

/// An int8 convolution, one register sum per output: for each output row the input rows it
/// reads gathered into the padded scratch, then per output channel its weight row copied
/// (4-bit: unpacked) to the stack and per output the taps streamed, `kw` at a time along a
/// buffer row.
pub fn conv(out: &mut String, g: &Graph, n: NodeId, q: &QLinear, group: usize, p: &AvrProduct) {
    let node = g.node(n);
    let Op::QConv { window, .. } = &node.op else {
        return;
    };
    let xs = shape(g, node.inputs[0]).to_vec();
    let m = shape(g, node.inputs[1])[0];
    let ge = window.plane(&xs, shape(g, node.outputs[0]));
    let (ci, wp) = (xs[1], crate::pack::plane_dims(&ge).1);
    let (cg, mg) = (ci / group, m / group);
    let (load, fin) = finish(out, q, p, "oc");
    let b = bias(out, g, n, "oc");
    let zp = q.input_zp;
    let acc_t = acc_type(p);
    let _ = writeln!(
        out,
        "    int8_t *buf = (int8_t *)(void *)s;\n    int8_t wr[{}];\n    for ({} bt = 0; bt < {}; ++bt)\n    for ({} oy = 0; oy < {}; ++oy) {{",
        p.taps,
        counter(xs[0]),
        xs[0],
        counter(ge.oh),
        ge.oh
    );
    // gather: row (c, ky) of the buffer is input row oy * sh + ky * dh - ph of channel c
    let _ = writeln!(
        out,
        "        for ({} r = 0; r < {}; ++r) {{\n            int8_t *d = buf + r * {wp};\n            int16_t iy = (int16_t)(oy * {} + r % {} * {}) - {};\n            {} i;\n            for (i = 0; i < {wp}; ++i) d[i] = {zp};\n            if (iy >= 0 && iy < {}) memcpy(d + {}, x0 + ((bt * {ci} + r / {}) * {} + iy) * {}, {});\n        }}",
        counter(ci * ge.kh),
        ci * ge.kh,
        ge.sh,
        ge.kh,
        ge.dh,
        ge.ph,
        counter(wp),
        ge.h,
        ge.pw,
        ge.kh,
        ge.h,
        ge.w,
        ge.w.min(wp - ge.pw),
    );
    let _ = writeln!(out, "        for ({} oc = 0; oc < {m}; ++oc) {{", counter(m));
    if p.weight_bits == 4 {
        let _ = writeln!(
            out,
            "            const uint8_t *wsrc = x1 + oc * {};\n            for ({} i = 0; i < {}; ++i) {{ uint8_t v = kiln_rom_u8(&wsrc[i >> 1]); wr[i] = (int8_t)((((i & 1) ? v >> 4 : v & 15) ^ 8) - 8); }}",
            p.row_bytes,
            counter(p.taps),
            p.taps
        );
    } else {
        let _ = writeln!(
            out,
            "            const int8_t *wsrc = x1 + oc * {};\n            for ({} i = 0; i < {}; ++i) wr[i] = kiln_rom_i8(&wsrc[i]);",
            p.taps,
            counter(p.taps),
            p.taps
        );
    }
    out.push_str(&indented(&load, "            "));
    // running pointers: the first tap of the next output, the next output
    let _ = writeln!(
        out,
        "            {acc_t} acc0 = ({acc_t}){b};\n            const int8_t *xs = buf + oc / {mg} * {};\n            int8_t *yo = y0 + ((bt * {m} + oc) * {} + oy) * {};\n            for ({} ox = 0; ox < {}; ++ox) {{\n                const int8_t *w = wr;\n                const int8_t *x = xs;\n                {acc_t} acc = acc0;",
        cg * ge.kh * wp,
        ge.oh,
        ge.ow,
        counter(ge.ow),
        ge.ow,
    );
    let rows = cg * ge.kh;
    let ram = AvrProduct { weight_bits: 8, ..*p };
    let step = format!("x += {};", wp - ge.kw);
    let offsets: Vec<usize> = (0..rows).flat_map(|r| (0..ge.kw).map(move |k| r * wp + k)).collect();
    if rows * ge.kw <= 16 && offsets.last().is_some_and(|&d| d <= 63) {
        // every tap at a fixed offset (`LDD Z+d`), grouped as the weights allow
        let macro_ = if p.acc_bits <= 16 { "KILN_H" } else { "KILN_G" };
        let groups = tap_groups(g, n, p);
        let mut at = 0;
        for len in groups {
            let d: Vec<String> = offsets[at..at + len].iter().map(|d| d.to_string()).collect();
            let _ = writeln!(out, "                {macro_}{len}(acc, x, w, {});", d.join(", "));
            at += len;
        }
    } else if rows * ge.kw <= 16 {
        // a small kernel unrolled: no row counter
        for r in 0..rows {
            macs(out, &ram, ge.kw, 'r', "                ");
            if r + 1 < rows {
                let _ = writeln!(out, "                {step}");
            }
        }
    } else {
        let _ = writeln!(out, "                for ({} r = 0; r < {rows}; ++r) {{", counter(rows));
        macs(out, &ram, ge.kw, 'r', "                    ");
        let _ = writeln!(out, "                    {step}\n                }}");
    }
    let _ = writeln!(
        out,
        "                *yo++ = {fin};\n                xs += {};\n            }}\n        }}\n    }}",
        ge.sw
    );
}

/// How the taps of a convolution's weight row split into groups (in order, up to four):
/// a 24-bit sum takes each group's products as one 16-bit sum, so a group may hold only
/// taps whose weights, for every output channel, have |w| adding up to at most 255 (with
/// activations in [-128, 127] the group's sum then lies within ±32,640); a 16-bit sum takes
/// any four at a time.
fn tap_groups(g: &Graph, n: NodeId, p: &AvrProduct) -> Vec<usize> {
    let w = g
        .const_value(g.node(n).inputs[1])
        .map(|t| t.to_i64_vec())
        .unwrap_or_default();
    let fits = |from: usize, to: usize| {
        p.acc_bits <= 16
            || w.chunks(p.taps)
                .all(|row| row[from..to].iter().map(|v| v.abs()).sum::<i64>() <= 255)
    };
    let mut groups = Vec::new();
    let mut at = 0;
    while at < p.taps {
        let mut len = 1;
        while len < 4 && at + len < p.taps && fits(at, at + len + 1) {
            len += 1;
        }
        groups.push(len);
        at += len;
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_runtime::{Requant, multiply_by_quantized_multiplier as mbqm};
    use std::sync::Arc;

    /// `kiln_avr_out`'s arithmetic in Rust: the high word, the shift, the byte rounding.
    fn fast(x: i32, m: u32, k: i32) -> i32 {
        let h = ((i64::from(x) * i64::from(m)) >> 32) as i32;
        let h = if k >= 0 { h << k } else { h >> -k };
        (h + 128) >> 8
    }

    #[test]
    fn the_byte_aligned_rescale_is_the_evaluators_and_thresholds_split_exactly() {
        let mut s = 0x9e37_79b9u32;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s
        };
        for shift in -20..=-2 {
            for _ in 0..50 {
                let r = Requant {
                    multiplier: (1 << 30) | (next() >> 2) as i32,
                    shift,
                };
                let (m, k) = byte_aligned(r.multiplier, r.shift);
                for _ in 0..200 {
                    let x = (next() >> 8) as i32 - (1 << 23);
                    assert_eq!(fast(x, m, k), mbqm(x, r), "x {x} {r:?}");
                }
                // the bottom threshold: the first sum whose rescale clears act_min - zp
                let q = QLinear {
                    input_zp: 0,
                    output_scale: 1.0,
                    output_zp: -128,
                    requant: Arc::from(vec![r]),
                    act_min: -128,
                    act_max: 127,
                    weight_bits: 8,
                    numerics: Default::default(),
                };
                let t = bottom_threshold(&q, &r, 24) as i32;
                if t > -(1 << 23) && t < (1 << 23) - 1 {
                    assert!(mbqm(t - 1, r) <= 0 && mbqm(t, r) >= 1, "t {t} {r:?}");
                }
            }
        }
    }

    /// A 1x3 int8 convolution over one channel with two output channels of weights `w`.
    fn conv(w: [[i8; 3]; 2]) -> (Graph, NodeId) {
        use kiln_ir::dtype::{DType, QParams, Scalar, TensorType};
        use kiln_ir::op::Window;
        let q8 = |shape: Vec<usize>| TensorType {
            shape,
            dtype: DType::quantized(
                Scalar::I8,
                QParams::PerTensor {
                    scale: 1.0,
                    zero_point: 0,
                },
            ),
        };
        let mut g = Graph::new("t");
        let x = g.add_input("x", q8(vec![1, 1, 1, 8]));
        let wv = g.add_const("w", kiln_ir::Tensor::from_vec(vec![2, 1, 1, 3], w.concat()));
        let q = QLinear {
            input_zp: 0,
            output_scale: 1.0,
            output_zp: 0,
            requant: Arc::from(vec![Requant {
                multiplier: 1 << 30,
                shift: -8,
            }]),
            act_min: -128,
            act_max: 127,
            weight_bits: 8,
            numerics: Default::default(),
        };
        let window = Window {
            kernel: vec![1, 3],
            strides: vec![1, 1],
            dilations: vec![1, 1],
            pads: vec![0, 0, 0, 0],
        };
        let op = Op::QConv { window, group: 1, q };
        let (n, _) = g.add_node_typed("c", op, vec![x, wv], vec![("y".into(), q8(vec![1, 2, 1, 6]))]);
        (g, n)
    }

    #[test]
    fn tap_groups_add_in_16_bits_only_what_cannot_overflow() {
        let groups = |w| {
            let (g, n) = conv(w);
            let p = crate::pack::avr_product(&g, n).expect("an AVR convolution");
            (p.acc_bits, tap_groups(&g, n, &p))
        };
        // small weights: the whole sum fits 16 bits (3 * 30 * 128), taps four at a time
        assert_eq!(groups([[10, -20, 30], [1, 2, 3]]), (16, vec![3]));
        // 127 + 127 = 254 fits (a pair reaches 128 * 254 = 32,512); a third would not
        assert_eq!(groups([[127, 127, 127], [0, 0, 0]]), (24, vec![2, 1]));
        // the second channel decides too: -128 and -128 could reach 32,768
        assert_eq!(groups([[1, 1, 1], [-128, -128, 5]]), (24, vec![1, 2]));
    }
}

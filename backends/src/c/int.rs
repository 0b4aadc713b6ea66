//! Integer kernels for quantized graphs. Each one prints, step for step, the arithmetic of
//! `kiln_runtime` that the evaluator runs (the prelude below is that crate's functions in
//! C), so the bytes match. Per-channel rescale factors and lookup tables are `KILN_ROM`
//! arrays, which on AVR stay in flash and are read with `kiln_rom_*`.
//!
//! C assumptions beyond C99 (true of every GCC target): two's-complement integers, an
//! arithmetic right shift of negative values, modular conversion to narrower signed types.
//! Products of an int8 (less its zero point, within ±255) and an int8 weight fit in 16 bits:
//! `kiln_mul8` forms them in `int16_t` on AVR, which multiplies those far faster than 32-bit
//! values, and in `int32_t` elsewhere (16-bit casts cost Cortex-M extra instructions).

use super::elementwise::broadcast2;
use super::shape;
use super::writer::{f32_lit, indent, input_col, input_row};
use kiln_ir::op::{Numerics, Plane as Geom, PoolKind, QLinear, Window};
use kiln_ir::{Graph, NodeId, Op, Scalar};
use std::fmt::Write;

pub const PRELUDE: &str = r#"
#ifndef KILN_ROM
#define KILN_ROM
#define kiln_rom_i32(p) (*(p))
#define kiln_rom_i8(p) (*(p))
#define kiln_rom_u8(p) (*(p))
#define kiln_rom_i16(p) (*(p))
#define kiln_rom_f32(p) (*(p))
#endif
#define kiln_mul16(x, w) ((int64_t)(x) * (int64_t)(w))
static inline int32_t kiln_ld_w4(const uint8_t *p, int32_t i) {
    int32_t b = kiln_rom_u8(&p[i >> 1]), n = (i & 1) ? b >> 4 : b & 15;
    return (n ^ 8) - 8;
}
static inline int32_t kiln_ld_w2(const uint8_t *p, int32_t i) {
    int32_t n = (kiln_rom_u8(&p[i >> 2]) >> ((i & 3) * 2)) & 3;
    return (n ^ 2) - 2;
}
#ifndef kiln_mul8
#define kiln_mul8(x, w) ((int32_t)(x) * (int32_t)(w))
#endif
#if defined(__AVR__) && defined(__INT24_MAX__)
typedef __int24 kiln_acc24;
#else
typedef int32_t kiln_acc24;
#endif
static inline int32_t kiln_mbqm(int32_t x, int32_t m, int32_t shift) {
    int32_t t = 31 - shift;
    int64_t p = ((int64_t)x * m + ((int64_t)1 << (t - 1))) >> t;
    return p < INT32_MIN ? INT32_MIN : (p > INT32_MAX ? INT32_MAX : (int32_t)p);
}
/* kiln_mbqm for -31 <= shift <= -2, in 32 bits: the rounding bit 2^(t-1) is a multiple
   of 2^32, so the low word of the product cannot change the result, and no saturation is
   needed (|result| < 2^30). One long multiply, an add and a shift. */
static inline int32_t kiln_mbqm_hi(int32_t x, int32_t m, int32_t shift) {
    int32_t s = -1 - shift, hi = (int32_t)(((int64_t)x * m) >> 32);
    return (hi + (1 << (s - 1))) >> s;
}
static inline int32_t kiln_clamp(int32_t v, int32_t lo, int32_t hi) { return v < lo ? lo : (v > hi ? hi : v); }
static inline int64_t kiln_mbqm64(int64_t x, int32_t m, int32_t shift) {
    int64_t m16 = m < 0x7FFF0000 ? ((int64_t)m + ((int64_t)1 << 15)) >> 16 : 0x7FFF;
    int32_t total = 15 - shift;
    return (int64_t)((uint64_t)x * (uint64_t)m16 + ((uint64_t)1 << (total - 1))) >> total;
}
static inline int32_t kiln_clamp64(int64_t v, int32_t lo, int32_t hi) { return v < lo ? lo : (v > hi ? hi : (int32_t)v); }
static inline int64_t kiln_exp16(const int32_t *hi, const int32_t *lo, int32_t d) {
    return ((int64_t)kiln_rom_i32(&hi[d >> 8]) * kiln_rom_i32(&lo[d & 255]) + ((int64_t)1 << 29)) >> 30;
}
static inline int64_t kiln_shift64(int64_t t, int32_t shift) {
    int32_t e = 31 - shift;
    return (t + ((int64_t)1 << (e - 1))) >> e;
}
static inline int32_t kiln_round_even(float y) {
    int32_t t;
    float f;
    if (y != y) return 0;
    if (y > 1.0e9f) y = 1.0e9f;
    else if (y < -1.0e9f) y = -1.0e9f;
    t = (int32_t)y;
    f = y - (float)t;
    if (f > 0.5f || (f == 0.5f && (t & 1))) return t + 1;
    return f < -0.5f || (f == -0.5f && (t & 1)) ? t - 1 : t;
}
/* TFLite's two-step rescale (kiln_runtime::multiply_by_quantized_multiplier_tflite): the
   doubling high multiply, rounded half up, then a divide by 2^-shift rounded half away */
static inline int32_t kiln_mbqm_tfl(int32_t x, int32_t m, int32_t shift) {
    int32_t xs = shift > 0 ? (int32_t)((uint32_t)x << shift) : x, e = shift > 0 ? 0 : -shift, v;
    if (xs == INT32_MIN && m == INT32_MIN) v = INT32_MAX;
    else v = (int32_t)(((int64_t)xs * m + ((int64_t)1 << 30)) >> 31);
    return e == 0 ? v : (int32_t)(((int64_t)v + ((int64_t)1 << (e - 1)) - (v < 0)) >> e);
}
/* kiln_mbqm_tfl for |x| < 2^30 and a right shift e = -shift >= 1: no saturation, and the
   rounding divide stays in 32 bits */
static inline int32_t kiln_mbqm_tfl_r(int32_t x, int32_t m, int32_t e) {
    int32_t v = (int32_t)(((int64_t)x * m + ((int64_t)1 << 30)) >> 31);
    return (v + (1 << (e - 1)) - (int32_t)((uint32_t)v >> 31)) >> e;
}
/* TFLite's integer average: half away from zero */
static inline int32_t kiln_rounded_avg_away(int32_t s, int32_t n) { return s > 0 ? (s + n / 2) / n : (s - n / 2) / n; }
static inline int32_t kiln_rounded_avg(int32_t s, int32_t n) {
    int32_t q = s / n, r = s % n;
    int32_t r2 = 2 * (r < 0 ? -r : r);
    if (r2 > n || (r2 == n && (q & 1))) q += s < 0 ? -1 : 1;
    return q;
}
static inline void kiln_dyn_quantize(const float *x, int8_t *q, int32_t n, float *scale, int32_t *zp) {
    float lo = 0.0f, hi = 0.0f, s;
    int32_t i, z = 0;
    for (i = 0; i < n; ++i) {
        if (x[i] < lo) lo = x[i];
        if (x[i] > hi) hi = x[i];
    }
    s = (hi - lo) / 255.0f;
    if (s > 0.0f && s - s == 0.0f) z = kiln_clamp(kiln_round_even(-128.0f - lo / s), -128, 127);
    else s = 1.0f;
    for (i = 0; i < n; ++i) q[i] = (int8_t)kiln_clamp(kiln_round_even(x[i] / s) + z, -128, 127);
    *scale = s;
    *zp = z;
}
static inline float kiln_dyn_rescale(int32_t acc, float sx, float sw) { return (float)acc * (sx * sw); }
"#;

/// Whether this module compiles node `n` (`None`: not an integer node).
pub fn supported(g: &Graph, n: NodeId) -> Option<bool> {
    let node = g.node(n);
    let rank = shape(g, node.inputs[0]).len();
    let i8_in = g.value(node.inputs[0]).ty.dtype.scalar == Scalar::I8;
    let int_in = i8_in || g.value(node.inputs[0]).ty.dtype.scalar == Scalar::I16;
    Some(match &node.op {
        Op::Quantize { to, .. } => matches!(to, Scalar::I8 | Scalar::U8 | Scalar::I16),
        Op::Dequantize { .. } => matches!(
            g.value(node.inputs[0]).ty.dtype.scalar,
            Scalar::I8 | Scalar::U8 | Scalar::I16
        ),
        Op::QConv { .. } | Op::DynConv { .. } => matches!(rank, 3 | 4),
        Op::DynMatMul { .. } => true,
        Op::QMatMul { .. } | Op::QAdd(_) | Op::QMul(_) | Op::Lut { .. } | Op::QSoftmax { .. } => true,
        Op::QPRelu(_) => true,
        Op::QBlockMatMul { .. } | Op::QSoftmax16 { .. } => true,
        Op::Lut16 { .. } | Op::Requant { .. } => true,
        Op::Pool(p) if int_in => {
            matches!(rank, 3 | 4)
                && !matches!(
                    p.kind,
                    PoolKind::Lp { .. }
                        | PoolKind::Avg {
                            count_include_pad: true
                        }
                )
        }
        Op::GlobalPool(k) if int_in => matches!(rank, 3 | 4) && !matches!(k, PoolKind::Lp { .. }),
        // float pools, and every float op: `float_supported` decides
        Op::Pool(_) | Op::GlobalPool(_) => return None,
        Op::Identity
        | Op::Unary(_)
        | Op::Binary(_)
        | Op::Where
        | Op::Cast { .. }
        | Op::Conv(_)
        | Op::ConvTranspose(_)
        | Op::Gemm { .. }
        | Op::MatMul
        | Op::BatchNorm { .. }
        | Op::InstanceNorm { .. }
        | Op::LayerNorm { .. }
        | Op::Lrn { .. }
        | Op::Softmax { .. }
        | Op::LogSoftmax { .. }
        | Op::Hardmax { .. }
        | Op::Reshape { .. }
        | Op::Transpose { .. }
        | Op::Concat { .. }
        | Op::Split { .. }
        | Op::Slice { .. }
        | Op::Pad { .. }
        | Op::Gather { .. }
        | Op::GatherElements { .. }
        | Op::GatherNd { .. }
        | Op::ScatterElements { .. }
        | Op::ScatterNd { .. }
        | Op::Expand { .. }
        | Op::Tile { .. }
        | Op::Reduce { .. }
        | Op::ArgMax { .. }
        | Op::ArgMin { .. }
        | Op::CumSum { .. }
        | Op::OneHot { .. }
        | Op::Trilu { .. }
        | Op::Einsum { .. }
        | Op::Rnn(_)
        | Op::Resize(_)
        | Op::TopK { .. }
        // ONNX's dynamic quantization ops (folded into DynConv/DynMatMul before code is made)
        | Op::DynamicQuantize
        | Op::IntConv { .. }
        | Op::IntMatMul => return None,
    })
}

fn geom(xs: &[usize], os: &[usize], w: &Window) -> Geom {
    w.plane(xs, os)
}

/// What an integer convolution reads and how it finishes: the int8 input array, its zero
/// point and the expression of the result from the accumulator `acc` (C source).
struct Stage {
    x: &'static str,
    zp: String,
    fin: String,
    /// 16x8: int16 input, int64 sums.
    wide: bool,
    /// Every partial sum provably fits 24 bits (`kiln_ir::accumulate`): register sums may be
    /// `kiln_acc24`, a 3-byte integer on AVR and `int32_t` elsewhere.
    acc24: bool,
}

impl Stage {
    /// C types of the sums and the input elements, and the product macro.
    fn types(&self) -> (&'static str, &'static str, &'static str) {
        if self.wide {
            ("int64_t", "int16_t", "kiln_mul16")
        } else if self.acc24 {
            ("kiln_acc24", "int8_t", "kiln_mul8")
        } else {
            ("int32_t", "int8_t", "kiln_mul8")
        }
    }
}

/// Whether every sum of integer node `n` is below 2^30 in size (`kiln_ir::accumulate`).
pub(super) fn small_sums(g: &Graph, n: NodeId) -> bool {
    kiln_ir::accumulate::node_range(g, n).is_some_and(|r| r.min >= -(1 << 30) && r.max < 1 << 30)
}

/// Whether every partial sum of integer node `n` fits 24 bits.
fn fits_24(g: &Graph, n: NodeId) -> bool {
    kiln_ir::accumulate::node_range(g, n).is_some_and(|r| r.bits() <= 24)
}

/// Static int8: the node's input, a constant zero point, the fixed-point rescale.
fn static_stage(out: &mut String, q: &QLinear, ch: &str, wide: bool, acc24: bool, small: bool) -> Stage {
    Stage {
        x: "x0",
        zp: q.input_zp.to_string(),
        fin: requant(out, q, ch, wide, small),
        wide,
        acc24: acc24 && !wide,
    }
}

/// Hybrid: `x0` quantized as one tensor into the scratch after `skip` bytes (`xq`, with
/// `sx` and `zp`), and the float rescale by the per-channel weight scale.
fn dyn_stage(out: &mut String, g: &Graph, n: NodeId, scales: &[f32], ch: &str, skip: usize) -> Stage {
    let numel = g.value(g.node(n).inputs[0]).ty.numel();
    let ws = scales_table(out, scales);
    let _ = writeln!(
        out,
        "    int8_t *xq = (int8_t *)(void *)s + {skip};\n    float sx;\n    int32_t zp;\n    kiln_dyn_quantize(x0, xq, {numel}, &sx, &zp);"
    );
    let c = if scales.len() == 1 { "0" } else { ch };
    Stage {
        x: "xq",
        zp: "zp".into(),
        fin: format!("kiln_dyn_rescale(acc, sx, kiln_rom_f32(&{ws}[{c}]))"),
        wide: false,
        acc24: false,
    }
}

fn scales_table(out: &mut String, scales: &[f32]) -> &'static str {
    let v: Vec<String> = scales.iter().map(|&x| f32_lit(x)).collect();
    let _ = writeln!(
        out,
        "    static const KILN_ROM float ws[{}] = {{{}}};",
        v.len(),
        v.join(", ")
    );
    "ws"
}

/// A kernel-local constant table `name` of C type `ty` (in flash on AVR).
pub(super) fn rom_table<T: std::fmt::Display>(out: &mut String, ty: &str, name: &str, vals: impl Iterator<Item = T>) {
    let v: Vec<String> = vals.map(|x| x.to_string()).collect();
    let _ = writeln!(
        out,
        "    static const KILN_ROM {ty} {name}[{}] = {{{}}};",
        v.len(),
        v.join(", ")
    );
}

/// The rescale tables of a kernel and the C expression that finishes an accumulator `acc`
/// for output channel `ch`.
/// `small`: every sum is proven below 2^30 in size ([`small_sums`]), which TFLite's rescale
/// can use.
pub(super) fn requant(out: &mut String, q: &QLinear, ch: &str, wide: bool, small: bool) -> String {
    rom_table(out, "int32_t", "mult", q.requant.iter().map(|r| r.multiplier));
    let c = if q.requant.len() == 1 {
        "0".to_string()
    } else {
        ch.to_string()
    };
    if !wide && small && q.numerics == Numerics::Tflite && q.requant.iter().all(|r| r.shift <= -1) {
        rom_table(out, "int8_t", "rsh", q.requant.iter().map(|r| -r.shift));
        return format!(
            "(int8_t)(kiln_clamp(kiln_mbqm_tfl_r(acc, kiln_rom_i32(&mult[{c}]), kiln_rom_i8(&rsh[{c}])), {}, {}) + {})",
            q.act_min - q.output_zp,
            q.act_max - q.output_zp,
            q.output_zp
        );
    }
    rom_table(out, "int32_t", "shift", q.requant.iter().map(|r| r.shift));
    if wide {
        return format!(
            "(int16_t)kiln_clamp64(kiln_mbqm64(acc, kiln_rom_i32(&mult[{c}]), kiln_rom_i32(&shift[{c}])) + {}, {}, {})",
            q.output_zp, q.act_min, q.act_max
        );
    }
    // clamped before the zero point is added (`clamp(r + zp)` without a signed overflow
    // where the rescale saturated)
    let helper = match q.numerics {
        Numerics::Onnx => mbqm(q.requant.iter().map(|r| r.shift)),
        Numerics::Tflite => "kiln_mbqm_tfl",
    };
    format!(
        "(int8_t)(kiln_clamp({helper}(acc, kiln_rom_i32(&mult[{c}]), kiln_rom_i32(&shift[{c}])), {}, {}) + {})",
        q.act_min - q.output_zp,
        q.act_max - q.output_zp,
        q.output_zp
    )
}

/// TFLite's 16x8 fully connected output stage for the sum `acc` of column `j`: saturated
/// to i32, then the 32-bit single-rounding rescale.
fn requant_fc16(out: &mut String, q: &QLinear) -> String {
    rom_table(out, "int32_t", "mult", q.requant.iter().map(|r| r.multiplier));
    rom_table(out, "int32_t", "shift", q.requant.iter().map(|r| r.shift));
    let c = if q.requant.len() == 1 { "0" } else { "j" };
    format!(
        "(int16_t)(kiln_clamp(kiln_mbqm(kiln_clamp64(acc, INT32_MIN, INT32_MAX), kiln_rom_i32(&mult[{c}]), kiln_rom_i32(&shift[{c}])), {}, {}) + {})",
        q.act_min - q.output_zp,
        q.act_max - q.output_zp,
        q.output_zp
    )
}

/// `kiln_mbqm(x, m, shift)` with constant `m` and `shift`, in the cheapest exact form: the
/// 32-bit helper, or for a power-of-two multiplier 2^k a rounding shift of `x` itself
/// ((x * 2^k + 2^(t-1)) >> t is (x + 2^(t-1-k)) >> (t-k), t = 31 - shift, and fits int32).
/// `x_bits`, when known, bounds |x| below 2^x_bits, which lets that shift stay in 32 bits.
fn rescale_const(x: &str, m: i32, shift: i32, x_bits: Option<u32>) -> String {
    let t = 31 - i64::from(shift);
    if m > 0 && (m as u32).is_power_of_two() {
        let k = i64::from(m.trailing_zeros());
        let (e, f) = (t - 1 - k, t - k);
        if e >= 0 && x_bits.is_some_and(|b| b <= 29) && e <= 29 {
            return format!("((({x}) + (1 << {e})) >> {f})");
        }
        if e >= 0 && f <= 62 {
            return format!(
                "(int32_t)(((int64_t)({x}) + ((int64_t)1 << {})) >> {})",
                t - 1 - k,
                t - k
            );
        }
    }
    format!("{}({x}, {m}, {shift})", mbqm([shift].into_iter()))
}

/// [`rescale_const`] in the rounding of `numerics`.
fn rescale_of(numerics: Numerics, x: &str, m: i32, shift: i32, x_bits: Option<u32>) -> String {
    match numerics {
        Numerics::Onnx => rescale_const(x, m, shift, x_bits),
        Numerics::Tflite => format!("kiln_mbqm_tfl({x}, {m}, {shift})"),
    }
}

/// The rescale helper that is exact for every one of `shifts`: the 32-bit form when all lie
/// in -31..=-2 (almost every layer: multipliers below one half), else the 64-bit one.
fn mbqm(mut shifts: impl Iterator<Item = i32>) -> &'static str {
    if shifts.all(|s| (-31..=-2).contains(&s)) {
        "kiln_mbqm_hi"
    } else {
        "kiln_mbqm"
    }
}

/// Prints the body of integer node `n`.
pub fn kernel(out: &mut String, g: &Graph, n: NodeId, cortex_m: bool, avr: bool) {
    match &g.node(n).op {
        Op::QMatMul { .. }
        | Op::QBlockMatMul { .. }
        | Op::DynMatMul { .. }
        | Op::QConv { .. }
        | Op::DynConv { .. }
        | Op::Pool(_)
        | Op::GlobalPool(_) => products(out, g, n, cortex_m, avr),
        _ => elementwise(out, g, n, cortex_m),
    }
}

/// Quantize, Dequantize, Requant, the tables, QAdd/QMul/QPRelu and the softmaxes.
fn elementwise(out: &mut String, g: &Graph, n: NodeId, cortex_m: bool) {
    let node = g.node(n);
    let o0 = shape(g, node.outputs[0]).to_vec();
    let total: usize = o0.iter().product();
    match &node.op {
        Op::Quantize { scale, zero_point, to } => {
            let (t, lo, hi) = match to {
                Scalar::I16 => ("int16_t", -32768, 32767),
                Scalar::U8 => ("uint8_t", 0, 255),
                _ => ("int8_t", -128, 127),
            };
            let _ = writeln!(
                out,
                "    for (int32_t i = 0; i < {total}; ++i) y0[i] = ({t})kiln_clamp(kiln_round_even(x0[i] / {}) + {zero_point}, {lo}, {hi});",
                f32_lit(*scale)
            );
        }
        Op::Dequantize { scale, zero_point } => {
            let _ = writeln!(
                out,
                "    for (int32_t i = 0; i < {total}; ++i) y0[i] = (float)((int32_t)x0[i] - {zero_point}) * {};",
                f32_lit(*scale)
            );
        }
        Op::Requant {
            to,
            input_zp,
            requant,
            zero_point,
            ..
        } => {
            let (t, lo, hi) = if *to == Scalar::I16 {
                ("int16_t", -32768, 32767)
            } else {
                ("int8_t", -128, 127)
            };
            let _ = writeln!(
                out,
                "    for (int32_t i = 0; i < {total}; ++i) y0[i] = ({t})kiln_clamp({}((int32_t)x0[i] - {input_zp}, {}, {}) + {zero_point}, {lo}, {hi});",
                mbqm([requant.shift].into_iter()),
                requant.multiplier,
                requant.shift
            );
        }
        Op::Lut16 { table, .. } => {
            let t: Vec<String> = table.iter().map(|v| v.to_string()).collect();
            let _ = writeln!(
                out,
                "    static const KILN_ROM int16_t table[{}] = {{{}}};",
                table.len(),
                t.join(", ")
            );
            let _ = writeln!(
                out,
                "    for (int32_t i = 0; i < {total}; ++i) {{\n        int32_t u = (int32_t)x0[i] + 32768, j = u >> 7, f = u & 127;\n        int32_t b = kiln_rom_i16(&table[j]), d = (kiln_rom_i16(&table[j + 1]) - b) * f;\n        y0[i] = (int16_t)(b + ((d + 64) >> 7));\n    }}"
            );
        }
        Op::Lut { table, .. } => {
            let t: Vec<String> = table.iter().map(|v| v.to_string()).collect();
            let _ = writeln!(
                out,
                "    static const KILN_ROM int8_t table[256] = {{{}}};",
                t.join(", ")
            );
            let _ = writeln!(
                out,
                "    for (int32_t i = 0; i < {total}; ++i) y0[i] = kiln_rom_i8(&table[(int32_t)x0[i] + 128]);"
            );
        }
        Op::QAdd(a) => {
            let (ra, rb, ro) = (a.a, a.b, a.out);
            let (t, ls) = if wide_input(g, n) {
                ("int16_t", kiln_runtime::ADD_LEFT_SHIFT_16)
            } else {
                ("int8_t", kiln_runtime::ADD_LEFT_SHIFT)
            };
            // int8 inputs less their zero points stay within 9 bits before the shift
            let bits = (t == "int8_t").then_some(9 + ls as u32);
            let nm = a.numerics;
            // SSAT only where the rescale cannot come near the i32 bounds (a multiplier
            // below one half); else clamped before the zero point is added
            let sat8 = cortex_m && t == "int8_t" && a.act_min <= -128 && a.act_max >= 127 && ro.shift < 0;
            let finish = |x: String| {
                if sat8 {
                    format!("KILN_SAT8({x} + {})", a.output_zp)
                } else {
                    format!(
                        "(kiln_clamp({x}, {}, {}) + {})",
                        a.act_min - a.output_zp,
                        a.act_max - a.output_zp,
                        a.output_zp
                    )
                }
            };
            broadcast2(out, g, n, &|o| {
                format!(
                    "int32_t a = {};\nint32_t b = {};\ny0[{}] = ({t}){};",
                    rescale_of(
                        nm,
                        &format!("(int32_t)((uint32_t)((int32_t)x0[{}] - {}) << {ls})", o[1], a.a_zp),
                        ra.multiplier,
                        ra.shift,
                        bits
                    ),
                    rescale_of(
                        nm,
                        &format!("(int32_t)((uint32_t)((int32_t)x1[{}] - {}) << {ls})", o[2], a.b_zp),
                        rb.multiplier,
                        rb.shift,
                        bits
                    ),
                    o[0],
                    finish(rescale_of(nm, "a + b", ro.multiplier, ro.shift, None)),
                )
            });
        }
        Op::QSoftmax { axis, exp_table } => {
            let len = o0[*axis];
            let inner: usize = o0[axis + 1..].iter().product();
            let outer: usize = o0[..*axis].iter().product();
            let t: Vec<String> = exp_table.iter().map(|v| v.to_string()).collect();
            let _ = writeln!(
                out,
                "    static const KILN_ROM int32_t table[256] = {{{}}};",
                t.join(", ")
            );
            let _ = writeln!(
                out,
                "    for (int32_t o = 0; o < {outer}; ++o)\n    for (int32_t i = 0; i < {inner}; ++i) {{\n        int32_t k, m = -128;\n        int64_t sum = 0;"
            );
            let at = format!("(o * {len} + k) * {inner} + i");
            let _ = writeln!(
                out,
                "        for (k = 0; k < {len}; ++k) if (x0[{at}] > m) m = x0[{at}];\n        for (k = 0; k < {len}; ++k) sum += kiln_rom_i32(&table[m - x0[{at}]]);"
            );
            let _ = writeln!(
                out,
                "        for (k = 0; k < {len}; ++k) {{\n            int64_t q = ((int64_t)kiln_rom_i32(&table[m - x0[{at}]]) * 512 + sum) / (2 * sum);\n            y0[{at}] = (int8_t)(q - 128 > 127 ? 127 : q - 128);\n        }}\n    }}"
            );
        }
        Op::QSoftmax16 { axis, exp_hi, exp_lo } => {
            let len = o0[*axis];
            let inner: usize = o0[axis + 1..].iter().product();
            let outer: usize = o0[..*axis].iter().product();
            for (name, t) in [("hi", exp_hi), ("lo", exp_lo)] {
                let t: Vec<String> = t.iter().map(|v| v.to_string()).collect();
                let _ = writeln!(
                    out,
                    "    static const KILN_ROM int32_t {name}[256] = {{{}}};",
                    t.join(", ")
                );
            }
            let at = format!("(o * {len} + k) * {inner} + i");
            let e = format!("kiln_exp16(hi, lo, m - (int32_t)x0[{at}])");
            let _ = writeln!(
                out,
                "    for (int32_t o = 0; o < {outer}; ++o)\n    for (int32_t i = 0; i < {inner}; ++i) {{\n        int32_t k, m = -32768;\n        int64_t sum = 0;\n        for (k = 0; k < {len}; ++k) if (x0[{at}] > m) m = x0[{at}];\n        for (k = 0; k < {len}; ++k) sum += {e};\n        for (k = 0; k < {len}; ++k) {{\n            int64_t q = ({e} * 65536 + sum) / (2 * sum);\n            y0[{at}] = (int16_t)(q > 32767 ? 32767 : q);\n        }}\n    }}"
            );
        }
        Op::QMul(m) => {
            // int8, or the int16 of 16x8 layers (zero points 0: the product fits int32_t)
            let t = if wide_input(g, n) { "int16_t" } else { "int8_t" };
            broadcast2(out, g, n, &|o| {
                format!(
                    "int32_t p = ((int32_t)x0[{}] - {}) * ((int32_t)x1[{}] - {});\ny0[{}] = ({t})(kiln_clamp({}, {}, {}) + {});",
                    o[1],
                    m.a_zp,
                    o[2],
                    m.b_zp,
                    o[0],
                    match m.numerics {
                        Numerics::Onnx => format!("kiln_mbqm(p, {}, {})", m.requant.multiplier, m.requant.shift),
                        Numerics::Tflite => format!("kiln_mbqm_tfl(p, {}, {})", m.requant.multiplier, m.requant.shift),
                    },
                    m.act_min - m.output_zp,
                    m.act_max - m.output_zp,
                    m.output_zp
                )
            });
        }
        Op::QPRelu(p) => {
            let f = match p.numerics {
                Numerics::Onnx => "kiln_mbqm",
                Numerics::Tflite => "kiln_mbqm_tfl",
            };
            let (id, al) = (p.identity, p.alpha);
            broadcast2(out, g, n, &|o| {
                format!(
                    "int32_t d = (int32_t)x0[{}] - {}, r;\nif (d >= 0) r = {f}(d, {}, {});\nelse r = {f}(d * ((int32_t)x1[{}] - {}), {}, {});\ny0[{}] = (int8_t)(kiln_clamp(r, {}, {}) + {});",
                    o[1],
                    p.input_zp,
                    id.multiplier,
                    id.shift,
                    o[2],
                    p.alpha_zp,
                    al.multiplier,
                    al.shift,
                    o[0],
                    -128 - p.output_zp,
                    127 - p.output_zp,
                    p.output_zp
                )
            });
        }
        _ => unreachable!("`kernel` routes only its ops here"),
    }
}

/// The integer and hybrid products and the integer pools.
fn products(out: &mut String, g: &Graph, n: NodeId, cortex_m: bool, avr: bool) {
    let node = g.node(n);
    let o0 = shape(g, node.outputs[0]).to_vec();
    let total: usize = o0.iter().product();
    match &node.op {
        Op::QMatMul { q } => {
            let ws = shape(g, node.inputs[1]);
            let (k, nn) = (ws[0], ws[1]);
            let rows = total / nn.max(1);
            let wide = wide_input(g, n);
            if avr && let Some(p) = crate::pack::avr_product(g, n) {
                return super::avr::dense(out, g, n, q, &p);
            }
            if cortex_m && crate::pack::packed_dense(g, n) {
                let fin = super::mcu::requant(out, q, "oc", small_sums(g, n));
                return super::mcu::dense(out, g, n, &fin);
            }
            let fin = if wide && q.numerics == Numerics::Tflite {
                requant_fc16(out, q)
            } else {
                requant(out, q, "j", wide, small_sums(g, n))
            };
            let (acc_t, mul) = if wide {
                ("int64_t", "kiln_mul16")
            } else if fits_24(g, n) {
                ("kiln_acc24", "kiln_mul8")
            } else {
                ("int32_t", "kiln_mul8")
            };
            let bias = if node.inputs.len() > 2 { "x2[j]" } else { "0" };
            let _ = writeln!(
                out,
                "    for (int32_t r = 0; r < {rows}; ++r)\n    for (int32_t j = 0; j < {nn}; ++j) {{\n        {acc_t} acc = {bias};\n        for (int32_t k = 0; k < {k}; ++k) acc += {mul}((int32_t)x0[r * {k} + k] - {}, x1[k * {nn} + j]);\n        y0[r * {nn} + j] = {fin};\n    }}",
                q.input_zp
            );
        }
        Op::QBlockMatMul { q, block } => {
            let ws = shape(g, node.inputs[1]);
            let (k, nn) = (ws[0], ws[1]);
            let rows = total / nn.max(1);
            let m: Vec<String> = q.requant.iter().map(|r| r.multiplier.to_string()).collect();
            let sh: Vec<String> = q.requant[..nn].iter().map(|r| r.shift.to_string()).collect();
            let _ = writeln!(
                out,
                "    static const KILN_ROM int32_t mult[{}] = {{{}}};\n    static const KILN_ROM int32_t shift[{nn}] = {{{}}};",
                m.len(),
                m.join(", "),
                sh.join(", ")
            );
            let bias = if node.inputs.len() > 2 { "x2[j]" } else { "0" };
            let blocks = k.div_ceil(*block);
            let end = if k % block == 0 {
                format!("b * {block} + {block}")
            } else {
                format!("b < {} ? b * {block} + {block} : {k}", blocks - 1)
            };
            // per column: the bias plus each block's sum times its multiplier, shifted once
            let _ = writeln!(
                out,
                "    for (int32_t r = 0; r < {rows}; ++r)\n    for (int32_t j = 0; j < {nn}; ++j) {{\n        int64_t t = {bias};\n        for (int32_t b = 0; b < {blocks}; ++b) {{\n            int32_t acc = 0;\n            int32_t k1 = {end};\n            for (int32_t k = b * {block}; k < k1; ++k) acc += kiln_mul8((int32_t)x0[r * {k} + k] - {}, x1[k * {nn} + j]);\n            t += (int64_t)acc * kiln_rom_i32(&mult[b * {nn} + j]);\n        }}\n        y0[r * {nn} + j] = (int8_t)kiln_clamp64(kiln_shift64(t, kiln_rom_i32(&shift[j])) + {}, {}, {});\n    }}",
                q.input_zp, q.output_zp, q.act_min, q.act_max
            );
        }
        Op::DynMatMul {
            weight_scales, block, ..
        } => {
            let ws = shape(g, node.inputs[1]);
            let (k, nn) = (ws[0], ws[1]);
            let rows = total / nn.max(1);
            let t = scales_table(out, weight_scales);
            let c = if weight_scales.len() == 1 { "0" } else { "j" };
            let _ = writeln!(
                out,
                "    int8_t *xq = (int8_t *)(void *)s;\n    for (int32_t r = 0; r < {rows}; ++r) {{\n        float sx;\n        int32_t zp;\n        kiln_dyn_quantize(x0 + r * {k}, xq, {k}, &sx, &zp);"
            );
            if *block == 0 {
                let _ = writeln!(
                    out,
                    "        for (int32_t j = 0; j < {nn}; ++j) {{\n            int32_t acc = 0;\n            for (int32_t k = 0; k < {k}; ++k) acc += kiln_mul8((int32_t)xq[k] - zp, x1[k * {nn} + j]);\n            y0[r * {nn} + j] = kiln_dyn_rescale(acc, sx, kiln_rom_f32(&{t}[{c}]));\n        }}\n    }}"
                );
            } else {
                // each block rescaled with its own scale, the floats added in block order
                let blocks = k.div_ceil(*block);
                let end = if k % block == 0 {
                    format!("b * {block} + {block}")
                } else {
                    format!("b < {} ? b * {block} + {block} : {k}", blocks - 1)
                };
                let _ = writeln!(
                    out,
                    "        for (int32_t j = 0; j < {nn}; ++j) {{\n            float v = 0.0f;\n            for (int32_t b = 0; b < {blocks}; ++b) {{\n                int32_t acc = 0;\n                int32_t k1 = {end};\n                for (int32_t k = b * {block}; k < k1; ++k) acc += kiln_mul8((int32_t)xq[k] - zp, x1[k * {nn} + j]);\n                v += kiln_dyn_rescale(acc, sx, kiln_rom_f32(&{t}[b * {nn} + j]));\n            }}\n            y0[r * {nn} + j] = v;\n        }}\n    }}"
                );
            }
        }
        Op::QConv { window, group, q } => {
            if avr && let Some(p) = crate::pack::avr_product(g, n) {
                return super::avr::conv(out, g, n, q, *group, &p);
            }
            let skip = qconv_scratch(g, n);
            if cortex_m && let Some(k) = super::mcu::conv_kind(g, n) {
                let fin = super::mcu::requant(out, q, "oc", small_sums(g, n));
                return match k {
                    super::mcu::ConvKind::Patch => super::mcu::patch_conv(out, g, n, window, q, &fin),
                    super::mcu::ConvKind::Plane => super::mcu::plane_conv(out, g, n, window, q, &fin),
                };
            }
            let st = static_stage(out, q, "oc", wide_input(g, n), fits_24(g, n), small_sums(g, n));
            conv(out, g, n, window, *group, &st, skip);
        }
        Op::DynConv {
            window,
            group,
            weight_scales,
        } => {
            let skip = acc_bytes(g, n, window, *group);
            let st = dyn_stage(out, g, n, weight_scales, "oc", skip);
            conv(out, g, n, window, *group, &st, skip);
        }
        Op::Pool(p) => pool(out, g, n, &p.window, p.kind == PoolKind::Max, p.numerics),
        Op::GlobalPool(k) => {
            let xs = shape(g, node.inputs[0]);
            let sp = &xs[2..];
            let w = Window {
                kernel: sp.to_vec(),
                strides: vec![1; sp.len()],
                dilations: vec![1; sp.len()],
                pads: vec![0; 2 * sp.len()],
            };
            pool(out, g, n, &w, *k == PoolKind::Max, Numerics::Onnx);
        }
        _ => unreachable!("`kernel` routes only its ops here"),
    }
}

/// An integer convolution (static or hybrid, per `st`): pointwise, accumulator-stationary or
/// one register sum per output.
fn conv(out: &mut String, g: &Graph, n: NodeId, window: &Window, group: usize, st: &Stage, acc_bytes: usize) {
    let node = g.node(n);
    let o0 = shape(g, node.outputs[0]).to_vec();
    let bias = if node.inputs.len() > 2 { "x2[oc]" } else { "0" };
    let (x, zp) = (st.x, &st.zp);
    let (acc_t, x_t, mul) = st.types();
    if pointwise(window, group) {
        // A 1x1 convolution over every position: a matrix product, one register sum
        // per output, no bounds to test.
        let xs = shape(g, node.inputs[0]).to_vec();
        let m = shape(g, node.inputs[1])[0];
        let ci = xs[1];
        let pos: usize = xs[2..].iter().product();
        let _ = writeln!(
            out,
            "    for (int32_t b = 0; b < {}; ++b)\n    for (int32_t oc = 0; oc < {m}; ++oc)\n    for (int32_t p = 0; p < {pos}; ++p) {{\n        const {x_t} *x = {x} + b * {} + p;\n        {acc_t} acc = {bias};",
            xs[0],
            ci * pos
        );
        let _ = writeln!(
            out,
            "        for (int32_t c = 0; c < {ci}; ++c) acc += {mul}((int32_t)x[c * {pos}] - {zp}, x1[oc * {ci} + c]);\n        y0[(b * {m} + oc) * {pos} + p] = {};\n    }}",
            st.fin
        );
        return;
    }
    if acc_bytes > 0 {
        return qconv(out, g, n, window, group, st);
    }
    let xs = shape(g, node.inputs[0]).to_vec();
    let ws = shape(g, node.inputs[1]).to_vec();
    let ge = geom(&xs, &o0, window);
    let (m, ci) = (ws[0], xs[1]);
    let (cg, mg) = (ci / group, m / group);
    let Geom {
        h, w, oh, ow, kh, kw, ..
    } = ge;
    let _ = writeln!(
        out,
        "    for (int32_t b = 0; b < {}; ++b)\n    for (int32_t oc = 0; oc < {m}; ++oc)\n    for (int32_t oy = 0; oy < {oh}; ++oy)\n    for (int32_t ox = 0; ox < {ow}; ++ox) {{",
        xs[0]
    );
    let _ = writeln!(
        out,
        "        {acc_t} acc = {bias};\n        for (int32_t c = 0; c < {cg}; ++c)\n        for (int32_t ky = 0; ky < {kh}; ++ky)\n        for (int32_t kx = 0; kx < {kw}; ++kx) {{"
    );
    out.push_str(&indent(&input_row(&ge), 3));
    out.push_str(&indent(&input_col(&ge), 3));
    let _ = writeln!(
        out,
        "            acc += {mul}((int32_t){x}[((b * {ci} + oc / {mg} * {cg} + c) * {h} + iy) * {w} + ix] - {zp}, x1[((oc * {cg} + c) * {kh} + ky) * {kw} + kx]);\n        }}"
    );
    let _ = writeln!(
        out,
        "        y0[((b * {m} + oc) * {oh} + oy) * {ow} + ox] = {};\n    }}",
        st.fin
    );
}

/// Convolutions with a spatial kernel over several input channels run accumulator-stationary
/// (`qconv`); pointwise and depthwise ones keep one sum in a register per output, which
/// measured fewer instructions on Cortex-M4 (KWS: 30.4 M against 32.8 M; ResNet-8 the other
/// way: 141 M against 272 M).
fn accumulate_rows(g: &Graph, n: NodeId, window: &Window, group: usize) -> bool {
    if pointwise(window, group) {
        return false;
    }
    let node = g.node(n);
    let cg = shape(g, node.inputs[0])[1] / group;
    let kk: usize = window.kernel.iter().product();
    kk > 1 && cg > 1
}

/// One group, 1x1 kernel, stride 1, no padding.
fn pointwise(window: &Window, group: usize) -> bool {
    group == 1
        && window.kernel.iter().all(|&k| k == 1)
        && window.strides.iter().all(|&s| s == 1)
        && window.pads.iter().all(|&p| p == 0)
}

/// Scratch bytes of an integer convolution: one i32 accumulator per output position when it
/// runs accumulator-stationary; for a hybrid one, then the quantized input.
pub fn qconv_scratch(g: &Graph, n: NodeId) -> usize {
    let node = g.node(n);
    match &node.op {
        Op::QConv { window, group, .. } => acc_bytes(g, n, window, *group),
        Op::DynConv { window, group, .. } => acc_bytes(g, n, window, *group) + g.value(node.inputs[0]).ty.numel(),
        Op::DynMatMul { .. } => shape(g, node.inputs[1])[0],
        _ => 0,
    }
}

/// Whether an integer product reads int16 (16x8, int64 sums).
fn wide_input(g: &Graph, n: NodeId) -> bool {
    g.value(g.node(n).inputs[0]).ty.dtype.scalar == Scalar::I16
}

fn acc_bytes(g: &Graph, n: NodeId, window: &Window, group: usize) -> usize {
    let sum = if wide_input(g, n) { 8 } else { 4 };
    if accumulate_rows(g, n, window, group) {
        sum * shape(g, g.node(n).outputs[0])[2..].iter().product::<usize>()
    } else {
        0
    }
}

/// Integer convolution, accumulator-stationary: per output channel a row of i32 sums (the
/// scratch buffer), and per input channel and kernel tap one pass over exactly the output
/// positions that tap reaches (ranges computed here), so the inner loops test nothing.
fn qconv(out: &mut String, g: &Graph, n: NodeId, window: &Window, group: usize, st: &Stage) {
    let node = g.node(n);
    let xs = shape(g, node.inputs[0]).to_vec();
    let ws = shape(g, node.inputs[1]).to_vec();
    let o0 = shape(g, node.outputs[0]).to_vec();
    let ge = geom(&xs, &o0, window);
    let (m, ci) = (ws[0], xs[1]);
    let (cg, mg) = (ci / group, m / group);
    let (hw, ohw, kk) = (ge.h * ge.w, ge.oh * ge.ow, ge.kh * ge.kw);
    let bias = if node.inputs.len() > 2 { "x2[oc]" } else { "0" };
    let x = st.x;
    let (_, x_t, _) = st.types();
    // the scratch row is planned at 4 (8) bytes a sum
    let acc_t = if st.wide { "int64_t" } else { "int32_t" };
    let _ = writeln!(out, "    {acc_t} *acc = ({acc_t} *)(void *)s;");
    let _ = writeln!(
        out,
        "    for (int32_t b = 0; b < {}; ++b)\n    for (int32_t oc = 0; oc < {m}; ++oc) {{\n        const {x_t} *xb = {x} + (b * {ci} + oc / {mg} * {cg}) * {hw};\n        for (int32_t p = 0; p < {ohw}; ++p) acc[p] = {bias};",
        xs[0]
    );
    let _ = writeln!(
        out,
        "        for (int32_t c = 0; c < {cg}; ++c) {{\n            const {x_t} *xp = xb + c * {hw};"
    );
    for kh in 0..ge.kh {
        for kw in 0..ge.kw {
            let (oy0, oy1) = ge.rows_reached(kh);
            let (ox0, ox1) = ge.cols_reached(kw);
            if oy1 <= oy0 || ox1 <= ox0 {
                continue;
            }
            let (ry, rx) = ((kh * ge.dh) as i64 - ge.ph as i64, (kw * ge.dw) as i64 - ge.pw as i64);
            let _ = writeln!(
                out,
                "            {{\n                int32_t w = x1[(oc * {cg} + c) * {kk} + {}], zw = w * {};",
                kh * ge.kw + kw,
                st.zp
            );
            let _ = writeln!(
                out,
                "                for (int32_t oy = {oy0}; oy < {oy1}; ++oy)\n                for (int32_t ox = {ox0}; ox < {ox1}; ++ox) acc[oy * {} + ox] += (int32_t)xp[(oy * {} + {ry}) * {} + ox * {} + {rx}] * w - zw;\n            }}",
                ge.ow, ge.sh, ge.w, ge.sw
            );
        }
    }
    let _ = writeln!(out, "        }}");
    let _ = writeln!(
        out,
        "        for (int32_t p = 0; p < {ohw}; ++p) {{\n            {acc_t} acc_p = acc[p];\n            y0[(b * {m} + oc) * {ohw} + p] = {};\n        }}\n    }}",
        st.fin.replace("(acc,", "(acc_p,")
    );
}

fn pool(out: &mut String, g: &Graph, n: NodeId, window: &Window, max: bool, numerics: Numerics) {
    let node = g.node(n);
    let xs = shape(g, node.inputs[0]).to_vec();
    let o0 = shape(g, node.outputs[0]).to_vec();
    let Geom {
        h,
        w,
        oh,
        ow,
        kh,
        kw,
        sh,
        sw,
        dh,
        dw,
        ph,
        pw,
    } = geom(&xs, &o0, window);
    let planes = xs[0] * xs[1];
    let int8 = g.value(node.inputs[0]).ty.dtype.scalar == Scalar::I8;
    if max && int8 && ph == 0 && pw == 0 && (oh - 1) * sh + (kh - 1) * dh < h && (ow - 1) * sw + (kw - 1) * dw < w {
        // int8 max without padding: every tap in range, byte counters (8-bit parts)
        let ct = |n: usize| if n <= 255 { "uint8_t" } else { "uint16_t" };
        let _ = writeln!(
            out,
            "    int8_t *y = y0;\n    for ({} c = 0; c < {planes}; ++c)\n    for ({} oy = 0; oy < {oh}; ++oy) {{\n        const int8_t *row = x0 + ((uint16_t)c * {h} + (uint16_t)oy * {sh}) * {w};\n        for ({} ox = 0; ox < {ow}; ++ox) {{\n            const int8_t *p = row + (uint16_t)ox * {sw};\n            int8_t m = p[0];",
            ct(planes),
            ct(oh),
            ct(ow)
        );
        for ky in 0..kh {
            for kx in 0..kw {
                if ky + kx > 0 {
                    let _ = writeln!(
                        out,
                        "            if (p[{}] > m) m = p[{}];",
                        ky * dh * w + kx * dw,
                        ky * dh * w + kx * dw
                    );
                }
            }
        }
        let _ = writeln!(out, "            *y++ = m;\n        }}\n    }}");
        return;
    }
    let (t, lo, hi) = if g.value(node.inputs[0]).ty.dtype.scalar == Scalar::I16 {
        ("int16_t", -32768, 32767)
    } else {
        ("int8_t", -128, 127)
    };
    let _ = writeln!(
        out,
        "    for (int32_t c = 0; c < {planes}; ++c)\n    for (int32_t oy = 0; oy < {oh}; ++oy)\n    for (int32_t ox = 0; ox < {ow}; ++ox) {{\n        int32_t acc = {}, cnt = 0;",
        if max { lo } else { 0 }
    );
    let _ = writeln!(
        out,
        "        for (int32_t ky = 0; ky < {kh}; ++ky)\n        for (int32_t kx = 0; kx < {kw}; ++kx) {{\n            int32_t iy = oy * {sh} + ky * {dh} - {ph}, ix = ox * {sw} + kx * {dw} - {pw}, v;\n            if (iy < 0 || iy >= {h} || ix < 0 || ix >= {w}) continue;"
    );
    let step = if max { "if (v > acc) acc = v;" } else { "acc += v;" };
    let _ = writeln!(
        out,
        "            v = x0[(c * {h} + iy) * {w} + ix];\n            {step}\n            ++cnt;\n        }}"
    );
    let res = if max {
        "acc".to_string()
    } else {
        let avg = match numerics {
            Numerics::Onnx => "kiln_rounded_avg",
            Numerics::Tflite => "kiln_rounded_avg_away",
        };
        format!("(cnt == 0 ? 0 : kiln_clamp({avg}(acc, cnt), {lo}, {hi}))")
    };
    let _ = writeln!(out, "        y0[(c * {oh} + oy) * {ow} + ox] = ({t}){res};\n    }}");
}

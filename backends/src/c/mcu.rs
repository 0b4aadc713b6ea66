//! Int8 kernels for 32-bit microcontrollers (Cortex-M): the planar layout the graph already
//! has, with the work shaped for the part instead of the general loop nest. On Armv7E-M /
//! Armv8-M with the DSP extension (`KILN_DSP`, chosen by the preprocessor) the sums run on
//! `SMLAD` (two 16-bit products per instruction); elsewhere a plain loop reads the same
//! constants. Integer sums in any order are the same bytes as the evaluator's.
//!
//! - One-group convolutions, pointwise included (`patch_conv`): per pair of output
//!   positions the taps less the input zero point are gathered once into int16 patches on
//!   the stack, then each pair of output channels takes a 2x2 block of sums, both patches'
//!   pairs reused for both channels. Weights are stored with each group of four taps as
//!   `[w0 w2 w1 w3]`, so one load and two `SXTB16` give the pairs `(w0, w1)`, `(w2, w3)`
//!   that meet the patch's; rows are padded to whole groups (at most three zero bytes per
//!   output channel).
//! - One input channel per group, depthwise above all (`plane_conv`): each input plane is
//!   copied into a zero-point-padded stack buffer, the zero point moves into the starting
//!   sum, every tap is a fixed offset; rows of three unit-stride taps take two outputs at a
//!   time from one word of the plane.
//! - Dense products (`dense`): four activations as two int16 pairs (`SXTAB16` subtracts the
//!   zero point), shared by four columns whose weights are stored pairwise.
//! - Rescale (`requant`): `((hi32(acc * m) >> r) + 1) >> 1` with a byte table of `r`, and
//!   `SSAT` for the int8 clamp.
//!
//! The weights' order is decided once here (`const_values`) and used both by the constant
//! emitter and by the kernels. Arenas do not change: buffers are on the stack, bounded by
//! `MAX_PLANE` and `MAX_PATCH`.

use super::int::rom_table;
use super::shape;
use crate::pack::{dense_cols, packed_patch, padded_taps, plane_conv_fits, plane_dims};
use kiln_ir::op::{QLinear, Window};
use kiln_ir::{Graph, NodeId};
use std::fmt::Write;

/// Helpers for the DSP kernels, defined only where the DSP extension exists (GNU C inline
/// assembly for the rotated extends, which GCC 12's `arm_acle.h` cannot express).
pub const PRELUDE: &str = r#"
#include <string.h>
#if defined(__GNUC__)
#define KILN_KERNEL __attribute__((noinline)) static void
#define KILN_WORDS __attribute__((aligned(4)))
#else
#define KILN_KERNEL static void
#define KILN_WORDS
#endif
#if defined(__ARM_FEATURE_DSP) && defined(__GNUC__) && !defined(__ARM_BIG_ENDIAN)
#include <arm_acle.h>
#define KILN_DSP 1
#define KILN_SAT8(v) __ssat((v), 8)
#define KILN_LDRD(a, b, p) __asm__("ldrd %0, %1, [%2], #8" : "=r"(a), "=r"(b), "+r"(p))
static inline int32_t kiln_ld32(const void *p) { int32_t v; memcpy(&v, p, 4); return v; }
static inline int32_t kiln_ld16(const void *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline int32_t kiln_sxtb16_r8(int32_t x) {
    int32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}
static inline int32_t kiln_sxtab16_r8(int32_t a, int32_t x) {
    int32_t r;
    __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(a), "r"(x));
    return r;
}
#else
#define KILN_SAT8(v) kiln_clamp((v), -128, 127)
#endif
"#;

/// The finishing expression for sum `acc` of channel `ch`, from a template written for
/// `acc` and `oc`.
fn finish(fin: &str, acc: &str, ch: &str) -> String {
    fin.replace("(acc,", &format!("({acc},"))
        .replace("(acc)", &format!("({acc})"))
        .replace("[oc]", &format!("[{ch}]"))
}

/// Which of this module's kernels runs an int8 convolution.
pub enum ConvKind {
    Patch,
    Plane,
}

pub fn conv_kind(g: &Graph, n: NodeId) -> Option<ConvKind> {
    if packed_patch(g, n) {
        Some(ConvKind::Patch)
    } else if plane_conv_fits(g, n) {
        Some(ConvKind::Plane)
    } else {
        None
    }
}

/// The rescale tables and the finishing expression of sum `acc` for channel `ch` (int8
/// output). When every shift lies in -31..=-2 the table holds `r = -2 - shift` as bytes and
/// the rescale is `((hi32(acc * m) >> r) + 1) >> 1`: the same floor((acc*m + 2^(t-1)) / 2^t)
/// with t = 31 - shift, since flooring in steps is exact. With the DSP extension the clamp
/// to the full int8 range is one `SSAT`.
pub fn requant(out: &mut String, q: &QLinear, ch: &str, small: bool) -> String {
    if q.numerics == kiln_ir::op::Numerics::Tflite {
        // TFLite's two-step rescale: the generic helpers
        return super::int::requant(out, q, ch, false, small);
    }
    let c = if q.requant.len() == 1 { "0" } else { ch };
    rom_table(out, "int32_t", "mult", q.requant.iter().map(|r| r.multiplier));
    let scaled = if q.requant.iter().all(|r| (-31..=-2).contains(&r.shift)) {
        rom_table(out, "int8_t", "rsh", q.requant.iter().map(|r| -2 - r.shift));
        format!("((((int32_t)(((int64_t)(acc) * kiln_rom_i32(&mult[{c}])) >> 32) >> kiln_rom_i8(&rsh[{c}])) + 1) >> 1)")
    } else {
        // the general rescale may saturate: clamped before the zero point is added
        rom_table(out, "int32_t", "shift", q.requant.iter().map(|r| r.shift));
        let (lo, hi) = (q.act_min.max(-128), q.act_max.min(127));
        return format!(
            "(int8_t)(kiln_clamp(kiln_mbqm(acc, kiln_rom_i32(&mult[{c}]), kiln_rom_i32(&shift[{c}])), {}, {}) + ({}))",
            lo - q.output_zp,
            hi - q.output_zp,
            q.output_zp
        );
    };
    let v = format!("{scaled} + ({})", q.output_zp);
    if q.act_min <= -128 && q.act_max >= 127 {
        format!("(int8_t)KILN_SAT8({v})")
    } else {
        format!("(int8_t)kiln_clamp({v}, {}, {})", q.act_min, q.act_max)
    }
}

/// One input channel per group: per group the padded plane, then per output channel of the
/// group the taps at fixed offsets, weights in registers when there are few of them.
pub fn plane_conv(out: &mut String, g: &Graph, n: NodeId, window: &Window, q: &QLinear, fin: &str) {
    let node = g.node(n);
    let xs = shape(g, node.inputs[0]).to_vec();
    let m = shape(g, node.inputs[1])[0];
    let o0 = shape(g, node.outputs[0]).to_vec();
    let ge = window.plane(&xs, &o0);
    let (ph, pw) = plane_dims(&ge);
    let (groups, mg, kk) = (xs[1], m / xs[1], ge.kh * ge.kw);
    let zp = q.input_zp;
    // Rows and columns of the input that land inside the plane.
    let rows = ge.h.min(ph.saturating_sub(ge.ph));
    let cols = ge.w.min(pw.saturating_sub(ge.pw));
    let bias = if node.inputs.len() > 2 { "x2[oc]" } else { "0" };
    let _ = writeln!(out, "    int8_t pl[{}];", ph * pw);
    let _ = writeln!(
        out,
        "    for (int32_t b = 0; b < {}; ++b)\n    for (int32_t gi = 0; gi < {groups}; ++gi) {{\n        const int8_t *xp = x0 + (b * {groups} + gi) * {};\n        memset(pl, {zp}, sizeof pl);\n        for (int32_t iy = 0; iy < {rows}; ++iy) memcpy(pl + (iy + {}) * {pw} + {}, xp + iy * {}, {cols});",
        xs[0],
        ge.h * ge.w,
        ge.ph,
        ge.pw,
        ge.w
    );
    let offs: Vec<usize> = (0..ge.kh)
        .flat_map(|ky| (0..ge.kw).map(move |kx| ky * ge.dh * pw + kx * ge.dw))
        .collect();
    let in_regs = kk <= 9;
    let _ = writeln!(
        out,
        "        for (int32_t oc = gi * {mg}; oc < gi * {mg} + {mg}; ++oc) {{\n            const int8_t *w = x1 + oc * {kk};\n            int32_t s0 = {bias};"
    );
    if in_regs {
        let decl: Vec<String> = (0..kk).map(|i| format!("w{i} = w[{i}]")).collect();
        let _ = writeln!(out, "            int32_t {};", decl.join(", "));
        let zs: Vec<String> = (0..kk).map(|i| format!("w{i}")).collect();
        let _ = writeln!(out, "            s0 -= {zp} * ({});", zs.join(" + "));
    } else {
        let _ = writeln!(
            out,
            "            for (int32_t i = 0; i < {kk}; ++i) s0 -= {zp} * (int32_t)w[i];"
        );
    }
    let taps: Vec<String> = offs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            if in_regs {
                format!("q[{o}] * w{i}")
            } else {
                format!("q[{o}] * w[{i}]")
            }
        })
        .collect();
    // Rows of three unit-stride taps, two outputs at a time: one word of the plane gives
    // (x0, x2) and (x1, x3); SMLAD with (w0, w2) plus one halfword multiply each.
    let dsp3 = in_regs && ge.kw == 3 && ge.dw == 1 && ge.sw == 1 && ge.ow >= 2;
    let first_ox = if dsp3 {
        let pairs: Vec<String> = (0..ge.kh)
            .map(|ky| {
                format!(
                    "a{ky} = (int32_t)(((uint32_t)w{} & 0xffffu) | ((uint32_t)w{} << 16))",
                    3 * ky,
                    3 * ky + 2
                )
            })
            .collect();
        let rows: Vec<String> = (0..ge.kh)
            .map(|ky| {
                format!(
                    "{{ int32_t v = kiln_ld32(q + {}), e = __sxtb16(v), f = kiln_sxtb16_r8(v);\n                    s = __smlabb(f, w{}, __smlad(e, a{ky}, s)); t = __smlatb(e, w{}, __smlad(f, a{ky}, t)); }}",
                    ky * ge.dh * pw,
                    3 * ky + 1,
                    3 * ky + 1
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "#if KILN_DSP\n            const int32_t {};\n            for (int32_t oy = 0; oy < {}; ++oy) {{\n                int8_t *y = y0 + ((b * {m} + oc) * {} + oy) * {};\n                for (int32_t ox = 0; ox + 2 <= {}; ox += 2) {{\n                    const int8_t *q = pl + oy * {} + ox;\n                    int32_t s = s0, t = s0;\n                    {}\n                    y[ox] = {};\n                    y[ox + 1] = {};\n                }}\n            }}\n            const int32_t first = {} & ~1;\n#else\n            const int32_t first = 0;\n#endif",
            pairs.join(", "),
            ge.oh,
            ge.oh,
            ge.ow,
            ge.ow,
            ge.sh * pw,
            rows.join("\n                    "),
            finish(fin, "s", "oc"),
            finish(fin, "t", "oc"),
            ge.ow
        );
        "first"
    } else {
        "0"
    };
    let _ = writeln!(
        out,
        "            for (int32_t oy = 0; oy < {}; ++oy)\n            for (int32_t ox = {first_ox}; ox < {}; ++ox) {{\n                const int8_t *q = pl + oy * {} + ox * {};\n                int32_t acc = s0 + {};\n                y0[((b * {m} + oc) * {} + oy) * {} + ox] = {fin};\n            }}\n        }}\n    }}",
        ge.oh,
        ge.ow,
        ge.sh * pw,
        ge.sw,
        taps.join("\n                    + "),
        ge.oh,
        ge.ow
    );
}

/// A one-group convolution, patch-stationary: per pair of output positions (row-major, so
/// a pair may span two rows)
/// the taps less the zero point (0 where the window leaves the input) gathered once as int16
/// patches, without bounds tests when the window lies inside; then per pair of output
/// channels a 2x2 block of dot products (`SMLAD`, two weights per `SXTB16`).
pub fn patch_conv(out: &mut String, g: &Graph, n: NodeId, window: &Window, q: &QLinear, fin: &str) {
    let node = g.node(n);
    let xs = shape(g, node.inputs[0]).to_vec();
    let ws = shape(g, node.inputs[1]).to_vec();
    let o0 = shape(g, node.outputs[0]).to_vec();
    let ge = window.plane(&xs, &o0);
    let (m, ci) = (ws[0], xs[1]);
    // Weight rows and patches are padded to a multiple of four taps (zeros), so every dot
    // product is whole SMLAD steps.
    let taps: usize = ws[1..].iter().product();
    let kk = padded_taps(taps);
    let ks = kk;
    let zp = q.input_zp;
    let has_bias = node.inputs.len() > 2;
    let bias = |o: &str| if has_bias { format!("x2[{o}]") } else { "0".into() };
    // The patch of position `ox + j` into `t`.
    // The taps of one window row: with the DSP extension, a unit-dilation row's first two
    // taps come from one halfword load, both less the zero point in one SXTAB16 and stored
    // as one word.
    let scalar_row = |t0: usize, r: &str| -> String {
        (0..ge.kw)
            .map(|kx| format!("t[{}] = (int16_t)({r}[{}] - {zp});", t0 + kx, kx * ge.dw))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let dsp_row = |t0: usize, r: &str| -> String {
        let rest: String = (2..ge.kw)
            .map(|kx| format!(" t[{}] = (int16_t)({r}[{kx}] - {zp});", t0 + kx))
            .collect();
        format!("{{ int32_t h = kiln_ld16({r}), v = __sxtab16(kzp, h | (h << 8)); memcpy(t + {t0}, &v, 4);{rest} }}")
    };
    let rows_of = |row: &dyn Fn(usize, &str) -> String| -> String {
        (0..ge.kh)
            .map(|ky| {
                let r = format!("(r + {})", ky * ge.dh * ge.w);
                row(ky * ge.kw, &r)
            })
            .collect::<Vec<_>>()
            .join("\n                    ")
    };
    let row = if ge.kw >= 2 && ge.dw == 1 {
        format!(
            "#if KILN_DSP\n                    {}\n#else\n                    {}\n#endif",
            rows_of(&dsp_row),
            rows_of(&scalar_row)
        )
    } else {
        format!("                    {}", rows_of(&scalar_row))
    };
    let build = format!(
        r#"        for (int32_t j = 0; j <= two; ++j) {{
            int16_t *t = pt + j * {ks};
            int32_t oy = (q + j) / {ow}, ox = (q + j) % {ow};
            int32_t iy0 = oy * {sh} - {ph}, ix0 = ox * {sw} - {pw};
            if (iy0 >= 0 && iy0 + {ylast} < {h} && ix0 >= 0 && ix0 + {xlast} < {w}) {{
                const int8_t *xr = x0 + ((b * {ci}) * {h} + iy0) * {w} + ix0;
                for (int32_t c = 0; c < {ci}; ++c, t += {khw}) {{
                    const int8_t *r = xr + c * {hw};
{row}
                }}
            }} else {{
                for (int32_t c = 0; c < {ci}; ++c)
                for (int32_t ky = 0; ky < {kh}; ++ky) {{
                    int32_t iy = iy0 + ky * {dh}, base = ((b * {ci} + c) * {h} + iy) * {w};
                    for (int32_t kx = 0; kx < {kw}; ++kx) {{
                        int32_t ix = ix0 + kx * {dw};
                        *t++ = (int16_t)(iy < 0 || iy >= {h} || ix < 0 || ix >= {w} ? 0 : (int32_t)x0[base + ix] - {zp});
                    }}
                }}
            }}
        }}"#,
        ow = ge.ow,
        sh = ge.sh,
        ph = ge.ph,
        sw = ge.sw,
        pw = ge.pw,
        ylast = (ge.kh - 1) * ge.dh,
        xlast = (ge.kw - 1) * ge.dw,
        h = ge.h,
        w = ge.w,
        kh = ge.kh,
        kw = ge.kw,
        dh = ge.dh,
        dw = ge.dw,
        hw = ge.h * ge.w,
        khw = ge.kh * ge.kw,
        row = row,
    );
    // 2 positions x 2 output channels: both patches' pairs stay in registers for both.
    let step = "{ int32_t pa = kiln_ld32(p), pb = kiln_ld32(p + 2), qa = kiln_ld32(p + KS), qb = kiln_ld32(p + KS + 2);\n                int32_t wv = kiln_ld32(w), a = __sxtb16(wv), c = kiln_sxtb16_r8(wv);\n                s00 = __smlad(pa, a, s00); s00 = __smlad(pb, c, s00); s10 = __smlad(qa, a, s10); s10 = __smlad(qb, c, s10);\n                wv = kiln_ld32(w + KK); a = __sxtb16(wv); c = kiln_sxtb16_r8(wv);\n                s01 = __smlad(pa, a, s01); s01 = __smlad(pb, c, s01); s11 = __smlad(qa, a, s11); s11 = __smlad(qb, c, s11);\n                p += 4; w += 4; }"
        .replace("KS", &ks.to_string())
        .replace("KK", &kk.to_string());
    // A loop even when short: fully unrolled, GCC hoists every patch load out of the
    // channel loop and spills them all.
    let steps = if (kk / 4).is_multiple_of(2) {
        format!(
            "for (int32_t k = 0; k < {}; ++k) {{\n                {step}\n                {step}\n            }}",
            kk / 8
        )
    } else {
        format!("for (int32_t k = 0; k < {}; ++k) {step}", kk / 4)
    };
    let ohw = ge.oh * ge.ow;
    let _ = writeln!(out, "    int16_t pt[{}];", 2 * ks);
    if ge.kw >= 2 && ge.dw == 1 {
        let lanes = ((zp.wrapping_neg() as u32) & 0xffff) * 0x10001;
        let _ = writeln!(
            out,
            "#if KILN_DSP\n    const int32_t kzp = (int32_t){lanes:#x}u;\n#endif"
        );
    }
    if taps < kk {
        let _ = writeln!(
            out,
            "    for (int32_t i = {taps}; i < {kk}; ++i) pt[i] = pt[{ks} + i] = 0;"
        );
    }
    let _ = writeln!(
        out,
        "    for (int32_t b = 0; b < {}; ++b)\n    for (int32_t q = 0; q < {ohw}; q += 2) {{\n        int32_t two = q + 1 < {ohw};\n        int8_t *y = y0 + b * {} + q;\n{build}",
        xs[0],
        m * ohw,
    );
    let _ = writeln!(
        out,
        "#if KILN_DSP\n        int32_t o = 0;\n        if (two) for (; o + 2 <= {m}; o += 2) {{\n            const int16_t *p = pt;\n            const int8_t *w = x1 + o * {kk};\n            int32_t s00 = {}, s01 = {}, s10 = s00, s11 = s01;\n                {steps}\n            y[o * {ohw}] = {};\n            y[o * {ohw} + 1] = {};\n            y[(o + 1) * {ohw}] = {};\n            y[(o + 1) * {ohw} + 1] = {};\n        }}",
        bias("o"),
        bias("o + 1"),
        finish(fin, "s00", "o"),
        finish(fin, "s10", "o"),
        finish(fin, "s01", "o + 1"),
        finish(fin, "s11", "o + 1"),
    );
    // Whatever the blocks left: an odd last column or an odd last channel.
    let _ = writeln!(
        out,
        "        for (int32_t oc = o; oc < {m}; ++oc)\n        for (int32_t j = 0; j <= two; ++j) {{\n            const int16_t *p = pt + j * {ks};\n            const int8_t *w = x1 + oc * {kk};\n            int32_t acc = {};\n            for (int32_t k = 0; k < {}; ++k) {{\n                int32_t wv = kiln_ld32(w);\n                acc = __smlad(kiln_ld32(p), __sxtb16(wv), acc);\n                acc = __smlad(kiln_ld32(p + 2), kiln_sxtb16_r8(wv), acc);\n                p += 4; w += 4;\n            }}\n            y[oc * {ohw} + j] = {fin};\n        }}",
        bias("oc"),
        kk / 4,
    );
    let _ = writeln!(
        out,
        "#else\n        for (int32_t oc = 0; oc < {m}; ++oc)\n        for (int32_t j = 0; j <= two; ++j) {{\n            const int16_t *p = pt + j * {ks};\n            const int8_t *w = x1 + oc * {kk};\n            int32_t acc = {};\n            for (int32_t i = 0; i < {kk}; i += 4) acc += p[i] * w[i] + p[i + 1] * w[i + 2] + p[i + 2] * w[i + 1] + p[i + 3] * w[i + 3];\n            y[oc * {ohw} + j] = {fin};\n        }}\n#endif\n    }}",
        bias("oc"),
    );
}

/// An int8 matrix product over dense-ordered weights: per row and group of columns, each
/// four activations less the zero point as two int16 pairs (`SXTAB16`), shared by every
/// column of the group; per column pair one `LDRD` with write-back (two weight words),
/// two `SXTB16`s per word and `SMLAD`s. Eight rows per loop step when they divide the depth.
/// The plain loop reads the same weights through the permuted index.
pub fn dense(out: &mut String, g: &Graph, n: NodeId, fin: &str) {
    let node = g.node(n);
    let ws = shape(g, node.inputs[1]);
    let (kk, nn) = (ws[0], ws[1]);
    let cols = dense_cols(nn);
    let rows = g.value(node.outputs[0]).ty.numel() / nn.max(1);
    let bias = |j: &str| {
        if node.inputs.len() > 2 {
            format!("x2[{j}]")
        } else {
            "0".into()
        }
    };
    let zp = crate::pack::dense_zero_point(g, n);
    let lanes = ((zp.wrapping_neg() as u32) & 0xffff) * 0x10001;
    let sums: Vec<String> = (0..cols)
        .map(|c| format!("s{c} = {}", bias(&format!("j + {c}"))))
        .collect();
    let kzp = if zp == 0 {
        String::new()
    } else {
        format!("    const int32_t kzp = (int32_t){lanes:#x}u;\n")
    };
    let quad = |v: &str| {
        let pairs: Vec<String> = (0..cols / 2)
            .map(|h| {
                let (a, b) = (2 * h, 2 * h + 1);
                format!(
                    "KILN_LDRD(wa, wb, w);\n            s{a} = __smlad(xa, __sxtb16(wa), s{a}); s{b} = __smlad(xa, kiln_sxtb16_r8(wa), s{b});\n            s{a} = __smlad(xb, __sxtb16(wb), s{a}); s{b} = __smlad(xb, kiln_sxtb16_r8(wb), s{b});"
                )
            })
            .collect();
        let unpack = if zp == 0 {
            format!("xa = __sxtb16({v}); xb = kiln_sxtb16_r8({v});")
        } else {
            format!("xa = __sxtab16(kzp, {v}); xb = kiln_sxtab16_r8(kzp, {v});")
        };
        format!("{unpack}\n            {}", pairs.join("\n            "))
    };
    let step = if kk.is_multiple_of(8) {
        format!(
            "int32_t v = kiln_ld32(x), u = kiln_ld32(x + 4), xa, xb, wa, wb;\n            {}\n            {}\n            x += 8;",
            quad("v"),
            quad("u")
        )
    } else {
        format!(
            "int32_t v = kiln_ld32(x), xa, xb, wa, wb;\n            {}\n            x += 4;",
            quad("v")
        )
    };
    let stores: Vec<String> = (0..cols)
        .map(|c| {
            format!(
                "y0[r * {nn} + j + {c}] = {};",
                finish(fin, &format!("s{c}"), &format!("j + {c}"))
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "#if KILN_DSP\n{kzp}    for (int32_t r = 0; r < {rows}; ++r)\n    for (int32_t j = 0; j < {nn}; j += {cols}) {{\n        const int8_t *x = x0 + r * {kk}, *xe = x + {kk}, *w = x1 + j * {kk};\n        int32_t {};\n        do {{\n            {step}\n        }} while (x != xe);\n        {}\n    }}\n#else",
        sums.join(", "),
        stores.join("\n        ")
    );
    let _ = writeln!(
        out,
        "    for (int32_t r = 0; r < {rows}; ++r)\n    for (int32_t j = 0; j < {nn}; ++j) {{\n        const int8_t *w = x1 + j / {cols} * {} + j % {cols} / 2 * 8 + (j & 1);\n        int32_t acc = {};\n        const int8_t *x = x0 + r * {kk};\n        for (int32_t k = 0; k < {kk}; k += 4, x += 4, w += {})\n            acc += (x[0] - {zp}) * w[0] + (x[1] - {zp}) * w[4] + (x[2] - {zp}) * w[2] + (x[3] - {zp}) * w[6];\n        y0[r * {nn} + j] = {};\n    }}\n#endif",
        cols * kk,
        bias("j"),
        4 * cols,
        finish(fin, "acc", "j")
    );
}

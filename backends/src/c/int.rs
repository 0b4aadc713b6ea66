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

use super::writer::f32_lit;
use super::{broadcast2, shape};
use kiln_ir::op::{Plane as Geom, PoolKind, QLinear, Window};
use kiln_ir::{Graph, NodeId, Op, Scalar};
use std::fmt::Write;

pub const PRELUDE: &str = r#"
#ifndef KILN_ROM
#define KILN_ROM
#define kiln_rom_i32(p) (*(p))
#define kiln_rom_i8(p) (*(p))
#endif
#ifndef kiln_mul8
#define kiln_mul8(x, w) ((int32_t)(x) * (int32_t)(w))
#endif
static inline int32_t kiln_srdhm(int32_t a, int32_t b) {
    int64_t ab, nudge;
    if (a == INT32_MIN && b == INT32_MIN) return INT32_MAX;
    ab = (int64_t)a * (int64_t)b;
    nudge = ab >= 0 ? ((int64_t)1 << 30) : (1 - ((int64_t)1 << 30));
    return (int32_t)((ab + nudge) / ((int64_t)1 << 31));
}
static inline int32_t kiln_rdbp(int32_t x, int32_t e) {
    int32_t mask = (int32_t)(((int64_t)1 << e) - 1);
    int32_t rem = x & mask, thr = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> e) + (rem > thr ? 1 : 0);
}
static inline int32_t kiln_mbqm(int32_t x, int32_t m, int32_t shift) {
    int32_t left = shift > 0 ? shift : 0, right = shift > 0 ? 0 : -shift;
    return kiln_rdbp(kiln_srdhm((int32_t)((uint32_t)x << left), m), right);
}
static inline int32_t kiln_clamp(int32_t v, int32_t lo, int32_t hi) { return v < lo ? lo : (v > hi ? hi : v); }
static inline int32_t kiln_round_away(float y) {
    int32_t t;
    float f;
    if (y != y) return 0;
    if (y > 1.0e9f) y = 1.0e9f;
    else if (y < -1.0e9f) y = -1.0e9f;
    t = (int32_t)y;
    f = y - (float)t;
    return f >= 0.5f ? t + 1 : (f <= -0.5f ? t - 1 : t);
}
static inline int32_t kiln_rounded_avg(int32_t s, int32_t n) { return s > 0 ? (s + n / 2) / n : (s - n / 2) / n; }
"#;

/// Whether this module compiles node `n` (`None`: not an integer node).
pub fn supported(g: &Graph, n: NodeId) -> Option<bool> {
    let node = g.node(n);
    let rank = shape(g, node.inputs[0]).len();
    let i8_in = g.value(node.inputs[0]).ty.dtype.scalar == Scalar::I8;
    Some(match &node.op {
        Op::Quantize { to, .. } => *to == Scalar::I8,
        Op::Dequantize { .. } => i8_in,
        Op::QConv { .. } => matches!(rank, 3 | 4),
        Op::QMatMul { .. } | Op::QAdd(_) | Op::QMul(_) | Op::Lut { .. } | Op::QSoftmax { .. } => true,
        Op::Pool(p) if i8_in => {
            matches!(rank, 3 | 4)
                && !matches!(
                    p.kind,
                    PoolKind::Lp { .. }
                        | PoolKind::Avg {
                            count_include_pad: true
                        }
                )
        }
        Op::GlobalPool(k) if i8_in => matches!(rank, 3 | 4) && !matches!(k, PoolKind::Lp { .. }),
        _ => return None,
    })
}

fn geom(xs: &[usize], os: &[usize], w: &Window) -> Geom {
    w.plane(xs, os)
}

/// The rescale tables of a kernel and the C expression that finishes an accumulator `acc`
/// for output channel `ch`.
fn requant(out: &mut String, q: &QLinear, ch: &str) -> String {
    let m: Vec<String> = q.requant.iter().map(|r| r.multiplier.to_string()).collect();
    let s: Vec<String> = q.requant.iter().map(|r| r.shift.to_string()).collect();
    let _ = writeln!(
        out,
        "    static const KILN_ROM int32_t mult[{}] = {{{}}};",
        m.len(),
        m.join(", ")
    );
    let _ = writeln!(
        out,
        "    static const KILN_ROM int32_t shift[{}] = {{{}}};",
        s.len(),
        s.join(", ")
    );
    let c = if q.requant.len() == 1 {
        "0".to_string()
    } else {
        ch.to_string()
    };
    format!(
        "(int8_t)kiln_clamp(kiln_mbqm(acc, kiln_rom_i32(&mult[{c}]), kiln_rom_i32(&shift[{c}])) + {}, {}, {})",
        q.output_zp, q.act_min, q.act_max
    )
}

/// Prints the body of integer node `n`.
pub fn kernel(out: &mut String, g: &Graph, n: NodeId) {
    let node = g.node(n);
    let o0 = shape(g, node.outputs[0]).to_vec();
    let total: usize = o0.iter().product();
    match &node.op {
        Op::Quantize { scale, zero_point, .. } => {
            let _ = writeln!(
                out,
                "    for (int32_t i = 0; i < {total}; ++i) y0[i] = (int8_t)kiln_clamp(kiln_round_away(x0[i] / {}) + {zero_point}, -128, 127);",
                f32_lit(*scale).unwrap_or_else(|| "1.0f".into())
            );
        }
        Op::Dequantize { scale, zero_point } => {
            let _ = writeln!(
                out,
                "    for (int32_t i = 0; i < {total}; ++i) y0[i] = (float)((int32_t)x0[i] - {zero_point}) * {};",
                f32_lit(*scale).unwrap_or_else(|| "1.0f".into())
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
            broadcast2(out, g, n, &|o| {
                format!(
                    "int32_t a = kiln_mbqm((int32_t)((uint32_t)((int32_t)x0[{}] - {}) << {ls}), {}, {});\nint32_t b = kiln_mbqm((int32_t)((uint32_t)((int32_t)x1[{}] - {}) << {ls}), {}, {});\ny0[{}] = (int8_t)kiln_clamp(kiln_mbqm(a + b, {}, {}) + {}, {}, {});",
                    o[1],
                    a.a_zp,
                    ra.multiplier,
                    ra.shift,
                    o[2],
                    a.b_zp,
                    rb.multiplier,
                    rb.shift,
                    o[0],
                    ro.multiplier,
                    ro.shift,
                    a.output_zp,
                    a.act_min,
                    a.act_max,
                    ls = kiln_runtime::ADD_LEFT_SHIFT
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
        Op::QMul(m) => {
            broadcast2(out, g, n, &|o| {
                format!(
                    "int32_t p = ((int32_t)x0[{}] - {}) * ((int32_t)x1[{}] - {});\ny0[{}] = (int8_t)kiln_clamp(kiln_mbqm(p, {}, {}) + {}, {}, {});",
                    o[1],
                    m.a_zp,
                    o[2],
                    m.b_zp,
                    o[0],
                    m.requant.multiplier,
                    m.requant.shift,
                    m.output_zp,
                    m.act_min,
                    m.act_max
                )
            });
        }
        Op::QMatMul { q } => {
            let ws = shape(g, node.inputs[1]);
            let (k, nn) = (ws[0], ws[1]);
            let rows = total / nn.max(1);
            let fin = requant(out, q, "j");
            let bias = if node.inputs.len() > 2 { "x2[j]" } else { "0" };
            let _ = writeln!(
                out,
                "    for (int32_t r = 0; r < {rows}; ++r)\n    for (int32_t j = 0; j < {nn}; ++j) {{\n        int32_t acc = {bias};\n        for (int32_t k = 0; k < {k}; ++k) acc += kiln_mul8((int32_t)x0[r * {k} + k] - {}, x1[k * {nn} + j]);\n        y0[r * {nn} + j] = {fin};\n    }}",
                q.input_zp
            );
        }
        Op::QConv { window, group, q } if pointwise(window, *group) => {
            // A 1x1 convolution over every position: a matrix product, one register sum
            // per output, no bounds to test.
            let xs = shape(g, node.inputs[0]).to_vec();
            let m = shape(g, node.inputs[1])[0];
            let ci = xs[1];
            let pos: usize = xs[2..].iter().product();
            let fin = requant(out, q, "oc");
            let bias = if node.inputs.len() > 2 { "x2[oc]" } else { "0" };
            let _ = writeln!(
                out,
                "    for (int32_t b = 0; b < {}; ++b)\n    for (int32_t oc = 0; oc < {m}; ++oc)\n    for (int32_t p = 0; p < {pos}; ++p) {{\n        const int8_t *x = x0 + b * {} + p;\n        int32_t acc = {bias};",
                xs[0],
                ci * pos
            );
            let _ = writeln!(
                out,
                "        for (int32_t c = 0; c < {ci}; ++c) acc += kiln_mul8((int32_t)x[c * {pos}] - {}, x1[oc * {ci} + c]);\n        y0[(b * {m} + oc) * {pos} + p] = {fin};\n    }}",
                q.input_zp
            );
        }
        Op::QConv { window, group, q } if accumulate_rows(g, n, window, *group) => qconv(out, g, n, window, *group, q),
        Op::QConv { window, group, q } => {
            let xs = shape(g, node.inputs[0]).to_vec();
            let ws = shape(g, node.inputs[1]).to_vec();
            let ge = geom(&xs, &o0, window);
            let (m, ci) = (ws[0], xs[1]);
            let (cg, mg) = (ci / group, m / group);
            let fin = requant(out, q, "oc");
            let bias = if node.inputs.len() > 2 { "x2[oc]" } else { "0" };
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
            } = ge;
            let _ = writeln!(
                out,
                "    for (int32_t b = 0; b < {}; ++b)\n    for (int32_t oc = 0; oc < {m}; ++oc)\n    for (int32_t oy = 0; oy < {oh}; ++oy)\n    for (int32_t ox = 0; ox < {ow}; ++ox) {{",
                xs[0]
            );
            let _ = writeln!(
                out,
                "        int32_t acc = {bias};\n        for (int32_t c = 0; c < {cg}; ++c)\n        for (int32_t ky = 0; ky < {kh}; ++ky)\n        for (int32_t kx = 0; kx < {kw}; ++kx) {{"
            );
            let _ = writeln!(
                out,
                "            int32_t iy = oy * {sh} + ky * {dh} - {ph}, ix = ox * {sw} + kx * {dw} - {pw};\n            if (iy < 0 || iy >= {h} || ix < 0 || ix >= {w}) continue;"
            );
            let _ = writeln!(
                out,
                "            acc += kiln_mul8((int32_t)x0[((b * {ci} + oc / {mg} * {cg} + c) * {h} + iy) * {w} + ix] - {}, x1[((oc * {cg} + c) * {kh} + ky) * {kw} + kx]);\n        }}",
                q.input_zp
            );
            let _ = writeln!(
                out,
                "        y0[((b * {m} + oc) * {oh} + oy) * {ow} + ox] = {fin};\n    }}"
            );
        }
        Op::Pool(p) => pool(out, g, n, &p.window, p.kind == PoolKind::Max),
        Op::GlobalPool(k) => {
            let xs = shape(g, node.inputs[0]);
            let sp = &xs[2..];
            let w = Window {
                kernel: sp.to_vec(),
                strides: vec![1; sp.len()],
                dilations: vec![1; sp.len()],
                pads: vec![0; 2 * sp.len()],
            };
            pool(out, g, n, &w, *k == PoolKind::Max);
        }
        _ => unreachable!("integer kernel for a node `supported` refused"),
    }
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
/// runs accumulator-stationary.
pub fn qconv_scratch(g: &Graph, n: NodeId) -> usize {
    match &g.node(n).op {
        Op::QConv { window, group, .. } if accumulate_rows(g, n, window, *group) => {
            4 * shape(g, g.node(n).outputs[0])[2..].iter().product::<usize>()
        }
        _ => 0,
    }
}

/// Integer convolution, accumulator-stationary: per output channel a row of i32 sums (the
/// scratch buffer), and per input channel and kernel tap one pass over exactly the output
/// positions that tap reaches (ranges computed here), so the inner loops test nothing.
fn qconv(out: &mut String, g: &Graph, n: NodeId, window: &Window, group: usize, q: &QLinear) {
    let node = g.node(n);
    let xs = shape(g, node.inputs[0]).to_vec();
    let ws = shape(g, node.inputs[1]).to_vec();
    let o0 = shape(g, node.outputs[0]).to_vec();
    let ge = geom(&xs, &o0, window);
    let (m, ci) = (ws[0], xs[1]);
    let (cg, mg) = (ci / group, m / group);
    let (hw, ohw, kk) = (ge.h * ge.w, ge.oh * ge.ow, ge.kh * ge.kw);
    let fin = requant(out, q, "oc");
    let bias = if node.inputs.len() > 2 { "x2[oc]" } else { "0" };
    let _ = writeln!(out, "    int32_t *acc = (int32_t *)(void *)s;");
    let _ = writeln!(
        out,
        "    for (int32_t b = 0; b < {}; ++b)\n    for (int32_t oc = 0; oc < {m}; ++oc) {{\n        const int8_t *xb = x0 + (b * {ci} + oc / {mg} * {cg}) * {hw};\n        for (int32_t p = 0; p < {ohw}; ++p) acc[p] = {bias};",
        xs[0]
    );
    let _ = writeln!(
        out,
        "        for (int32_t c = 0; c < {cg}; ++c) {{\n            const int8_t *xp = xb + c * {hw};"
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
                q.input_zp
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
        "        for (int32_t p = 0; p < {ohw}; ++p) {{\n            int32_t acc_p = acc[p];\n            y0[(b * {m} + oc) * {ohw} + p] = {};\n        }}\n    }}",
        fin.replace("kiln_mbqm(acc,", "kiln_mbqm(acc_p,")
    );
}

fn pool(out: &mut String, g: &Graph, n: NodeId, window: &Window, max: bool) {
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
    let _ = writeln!(
        out,
        "    for (int32_t c = 0; c < {planes}; ++c)\n    for (int32_t oy = 0; oy < {oh}; ++oy)\n    for (int32_t ox = 0; ox < {ow}; ++ox) {{\n        int32_t acc = {}, cnt = 0;",
        if max { "-128" } else { "0" }
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
        "acc"
    } else {
        "(cnt == 0 ? 0 : kiln_clamp(kiln_rounded_avg(acc, cnt), -128, 127))"
    };
    let _ = writeln!(out, "        y0[(c * {oh} + oy) * {ow} + ox] = (int8_t){res};\n    }}");
}

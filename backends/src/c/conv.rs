//! Float convolution in C, in two loop orders that add in the same order (bias, then the
//! taps by input channel, kernel row, kernel column, as the evaluator does), so both give
//! the evaluator's bits:
//! - per output, a register accumulator over the taps: the fewest memory accesses, for
//!   Cortex-M and AVR;
//! - for hosts, per output channel, the whole output plane set to the bias, then each tap
//!   added to a run of outputs: the innermost loop is over independent, contiguous outputs
//!   with compile-time bounds and `restrict` pointers, which `-O3` vectorizes. With unit
//!   strides the input is first copied into a zero-bordered plane in scratch, rows `Wp`
//!   wide, so every tap is one offset and one run over all `OH * Wp` positions (the columns
//!   past `OW` are computed and dropped; padding taps add zeros, as im2col does); a 1x1
//!   unit-stride convolution runs over the plane directly; other strides go a row at a time.

use super::writer::{indent, input_col, input_row};
use super::{shape, unary_expr};
use kiln_ir::op::{Conv, Plane};
use kiln_ir::{Graph, NodeId};
use std::fmt::Write;

/// The zero-bordered layout of a unit-stride convolution on a host: rows `wp` wide, `hp`
/// of them per channel, and floats after the last plane the last taps read past it.
struct Bordered {
    hp: usize,
    wp: usize,
    tail: usize,
}

fn bordered(gm: &Plane, pointwise: bool) -> Option<Bordered> {
    if gm.sh != 1 || gm.sw != 1 || pointwise {
        return None;
    }
    Some(Bordered {
        hp: (gm.ph + gm.h).max(gm.oh + (gm.kh - 1) * gm.dh),
        wp: (gm.pw + gm.w).max(gm.ow + (gm.kw - 1) * gm.dw),
        tail: (gm.kw - 1) * gm.dw,
    })
}

fn flat(gm: &Plane) -> bool {
    gm.kh == 1 && gm.kw == 1 && gm.sh == 1 && gm.sw == 1 && gm.ph == 0 && gm.pw == 0 && gm.oh * gm.ow == gm.h * gm.w
}

/// Scratch bytes of a float convolution on a host: the bordered input of one group and one
/// output plane `wp` wide.
pub(super) fn scratch_bytes(g: &Graph, n: NodeId, c: &Conv) -> usize {
    let node = g.node(n);
    let (xs, ws, os) = (
        shape(g, node.inputs[0]),
        shape(g, node.inputs[1]),
        shape(g, node.outputs[0]),
    );
    if !matches!(xs.len(), 3 | 4) {
        return 0;
    }
    let gm = c.window.plane(xs, os);
    bordered(&gm, flat(&gm)).map_or(0, |b| 4 * (ws[1] * b.hp * b.wp + b.tail + gm.oh * b.wp))
}

pub(super) fn conv(out: &mut String, g: &Graph, n: NodeId, c: &Conv, host: bool) {
    let node = g.node(n);
    let (xs, ws, os) = (
        shape(g, node.inputs[0]),
        shape(g, node.inputs[1]),
        shape(g, node.outputs[0]),
    );
    let gm = c.window.plane(xs, os);
    let (nb, ci, m, cg) = (xs[0], xs[1], ws[0], ws[1]);
    let mg = m / c.group;
    let bias = if node.inputs.len() > 2 { "x2[oc]" } else { "0.0f" };
    let _ = writeln!(out, "    for (int32_t b = 0; b < {nb}; ++b)");
    let _ = writeln!(out, "    for (int32_t oc = 0; oc < {m}; ++oc) {{");
    let _ = writeln!(out, "        int32_t g0 = (oc / {mg}) * {cg};");
    if let (true, Some(bd)) = (host, bordered(&gm, flat(&gm))) {
        planes(out, &gm, &bd, c, (ci, m, cg), bias);
    } else if host {
        rows(out, &gm, c, (ci, m, cg), bias);
    } else {
        per_output(out, &gm, c, (ci, m, cg), bias);
    }
}

/// One register accumulator per output.
fn per_output(out: &mut String, gm: &Plane, c: &Conv, (ci, m, cg): (usize, usize, usize), bias: &str) {
    let Plane {
        h,
        w: wd,
        oh,
        ow,
        kh,
        kw,
        ..
    } = *gm;
    let v = c.fused.map(|u| unary_expr(u, "acc")).unwrap_or_else(|| "acc".into());
    let _ = writeln!(
        out,
        "        for (int32_t oy = 0; oy < {oh}; ++oy)\n        for (int32_t ox = 0; ox < {ow}; ++ox) {{"
    );
    let _ = writeln!(out, "            float acc = {bias};");
    let _ = writeln!(
        out,
        "            for (int32_t c = 0; c < {cg}; ++c)\n            for (int32_t ky = 0; ky < {kh}; ++ky) {{"
    );
    out.push_str(&indent(&input_row(gm), 4));
    let _ = writeln!(out, "                for (int32_t kx = 0; kx < {kw}; ++kx) {{");
    out.push_str(&indent(&input_col(gm), 5));
    let _ = writeln!(
        out,
        "                    acc = acc + x1[((oc * {cg} + c) * {kh} + ky) * {kw} + kx] * x0[((b * {ci} + g0 + c) * {h} + iy) * {wd} + ix];"
    );
    let _ = writeln!(out, "                }}\n            }}");
    let _ = writeln!(
        out,
        "            y0[((b * {m} + oc) * {oh} + oy) * {ow} + ox] = {v};\n        }}\n    }}"
    );
}

/// The output plane as the accumulator, one tap at a time over runs of outputs.
fn rows(out: &mut String, gm: &Plane, c: &Conv, (ci, m, cg): (usize, usize, usize), bias: &str) {
    let Plane {
        h,
        w: wd,
        oh,
        ow,
        kh,
        kw,
        sw,
        dw,
        pw,
        ..
    } = *gm;
    let p = oh * ow;
    let _ = writeln!(out, "        float *restrict yo = y0 + (b * {m} + oc) * {p};");
    let _ = writeln!(out, "        for (int32_t i = 0; i < {p}; ++i) yo[i] = {bias};");
    let _ = writeln!(
        out,
        "        for (int32_t c = 0; c < {cg}; ++c) {{\n            const float *restrict xc = x0 + (b * {ci} + g0 + c) * {};",
        h * wd
    );
    if flat(gm) {
        let _ = writeln!(
            out,
            "            const float wv = x1[oc * {cg} + c];\n            for (int32_t i = 0; i < {p}; ++i) yo[i] = yo[i] + wv * xc[i];"
        );
    } else {
        let _ = writeln!(out, "            for (int32_t ky = 0; ky < {kh}; ++ky)");
        let _ = writeln!(out, "            for (int32_t oy = 0; oy < {oh}; ++oy) {{");
        out.push_str(&indent(&input_row(gm), 4));
        let _ = writeln!(
            out,
            "                const float *restrict xr = xc + iy * {wd};\n                float *restrict yr = yo + oy * {ow};"
        );
        // per kernel column, the output columns whose tap lands inside the input
        for kx in 0..kw {
            let off = (kx * dw) as i64 - pw as i64;
            let (lo, end) = gm.cols_reached(kx);
            if end <= lo {
                continue;
            }
            let _ = writeln!(
                out,
                "                {{\n                    const float wv = x1[((oc * {cg} + c) * {kh} + ky) * {kw} + {kx}];\n                    for (int32_t ox = {lo}; ox < {end}; ++ox) yr[ox] = yr[ox] + wv * xr[ox * {sw} + ({off})];\n                }}"
            );
        }
        let _ = writeln!(out, "            }}");
    }
    let _ = writeln!(out, "        }}");
    if let Some(u) = c.fused {
        let _ = writeln!(
            out,
            "        for (int32_t i = 0; i < {p}; ++i) {{ float acc = yo[i]; yo[i] = {}; }}",
            unary_expr(u, "acc")
        );
    }
    let _ = writeln!(out, "    }}");
}

/// Unit strides: the group's input copied into the bordered planes (`s`), then per output
/// channel one run over all `OH * Wp` positions per tap, and the `OW` valid columns of each
/// row out. The copy is made once per group, when its first output channel comes up.
fn planes(out: &mut String, gm: &Plane, bd: &Bordered, c: &Conv, (ci, m, cg): (usize, usize, usize), bias: &str) {
    let Plane {
        h,
        w: wd,
        oh,
        ow,
        kh,
        kw,
        dh,
        dw,
        ph,
        pw,
        ..
    } = *gm;
    let Bordered { hp, wp, tail } = *bd;
    let (plane, xp_len, run) = (hp * wp, cg * hp * wp + tail, oh * wp);
    let mg = m / c.group;
    let _ = writeln!(
        out,
        "        float *restrict xp = s;
        float *restrict yp = s + {xp_len};"
    );
    let _ = writeln!(out, "        if (oc % {mg} == 0) {{");
    let _ = writeln!(out, "            for (int32_t i = 0; i < {xp_len}; ++i) xp[i] = 0.0f;");
    let _ = writeln!(
        out,
        "            for (int32_t c = 0; c < {cg}; ++c)\n            for (int32_t iy = 0; iy < {h}; ++iy)\n            for (int32_t ix = 0; ix < {wd}; ++ix)"
    );
    let _ = writeln!(
        out,
        "                xp[(c * {hp} + iy + {ph}) * {wp} + ix + {pw}] = x0[((b * {ci} + g0 + c) * {h} + iy) * {wd} + ix];\n        }}"
    );
    let _ = writeln!(out, "        for (int32_t i = 0; i < {run}; ++i) yp[i] = {bias};");
    let _ = writeln!(
        out,
        "        for (int32_t c = 0; c < {cg}; ++c)\n        for (int32_t ky = 0; ky < {kh}; ++ky)\n        for (int32_t kx = 0; kx < {kw}; ++kx) {{"
    );
    let _ = writeln!(
        out,
        "            const float wv = x1[((oc * {cg} + c) * {kh} + ky) * {kw} + kx];\n            const float *restrict xs = xp + c * {plane} + ky * {} + kx * {dw};",
        dh * wp
    );
    let _ = writeln!(
        out,
        "            for (int32_t i = 0; i < {run}; ++i) yp[i] = yp[i] + wv * xs[i];\n        }}"
    );
    let v = c.fused.map(|u| unary_expr(u, "acc")).unwrap_or_else(|| "acc".into());
    let _ = writeln!(
        out,
        "        for (int32_t oy = 0; oy < {oh}; ++oy)\n        for (int32_t ox = 0; ox < {ow}; ++ox) {{\n            float acc = yp[oy * {wp} + ox];\n            y0[((b * {m} + oc) * {oh} + oy) * {ow} + ox] = {v};\n        }}\n    }}"
    );
}

/// ConvTranspose (any number of spatial axes): the output set to the bias, then each input
/// element scattered through each tap, in the evaluator's order (input channel, tap, output
/// channel, input position), so every output receives its terms in the same sequence.
pub(super) fn conv_transpose(out: &mut String, g: &Graph, n: NodeId, c: &kiln_ir::op::ConvTranspose) {
    let node = g.node(n);
    let (xs, ws, os) = (
        shape(g, node.inputs[0]),
        shape(g, node.inputs[1]),
        shape(g, node.outputs[0]),
    );
    let r = xs.len() - 2;
    let (nb, ci, grp) = (xs[0], xs[1], c.group);
    let (cg, mg) = (ci / grp, ws[1]);
    let m = mg * grp;
    let (pin, pout, k) = (
        xs[2..].iter().product::<usize>(),
        os[2..].iter().product::<usize>(),
        c.window.kernel.iter().product::<usize>(),
    );
    let st = |d: &[usize]| kiln_ir::tensor::strides(d);
    let (ist, ost, kst) = (st(&xs[2..]), st(&os[2..]), st(&c.window.kernel));
    let init = if node.inputs.len() > 2 {
        format!("x2[(i / {pout}) % {m}]")
    } else {
        "0.0f".into()
    };
    let _ = writeln!(
        out,
        "    for (int32_t i = 0; i < {}; ++i) y0[i] = {init};",
        nb * m * pout
    );
    let _ = writeln!(
        out,
        "    for (int32_t b = 0; b < {nb}; ++b)\n    for (int32_t ch = 0; ch < {ci}; ++ch)"
    );
    let sum = |v: &str, s: &[usize]| (0..r).map(|d| format!(" + {v}{d} * {}", s[d])).collect::<String>();
    for (d, &kd) in c.window.kernel.iter().enumerate() {
        let _ = writeln!(out, "    for (int32_t k{d} = 0; k{d} < {kd}; ++k{d})");
    }
    let _ = writeln!(out, "    for (int32_t mm = 0; mm < {mg}; ++mm) {{");
    let _ = writeln!(
        out,
        "        float wgt = x1[(ch * {mg} + mm) * {k} + 0{}];\n        int32_t yo = (b * {m} + (ch / {cg}) * {mg} + mm) * {pout}, xo = (b * {ci} + ch) * {pin};",
        sum("k", &kst)
    );
    for (d, &id) in xs[2..].iter().enumerate() {
        let _ = writeln!(out, "        for (int32_t i{d} = 0; i{d} < {id}; ++i{d}) {{");
    }
    let w = &c.window;
    let pos: Vec<String> = (0..r)
        .map(|d| {
            format!(
                "p{d} = i{d} * {} + k{d} * {} - {}",
                w.strides[d], w.dilations[d], w.pads[d]
            )
        })
        .collect();
    let outside: Vec<String> = (0..r).map(|d| format!("p{d} < 0 || p{d} >= {}", os[2 + d])).collect();
    let _ = writeln!(
        out,
        "            int32_t {};\n            if ({}) continue;\n            y0[yo + 0{}] = y0[yo + 0{}] + x0[xo + 0{}] * wgt;",
        pos.join(", "),
        outside.join(" || "),
        sum("p", &ost),
        sum("p", &ost),
        sum("i", &ist)
    );
    for _ in 0..r {
        let _ = writeln!(out, "        }}");
    }
    let _ = writeln!(out, "    }}");
}

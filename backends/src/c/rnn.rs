//! Recurrent layers (f32): RNN, GRU (both reset forms) and LSTM (peepholes, coupled
//! gates), every direction, layout, clip and activation, as the evaluator's loop in C:
//! per direction and batch row, the gate vectors W·x and R·h in index order, then the
//! ONNX update. Scratch (`s`) holds h, c, the two gate vectors and three GRU temporaries.

use super::shape;
use super::writer::f32_lit;
use crate::{Lowering, need};
use kiln_ir::op::{Activation, Rnn, RnnDirection, RnnKind};
use kiln_ir::{Graph, NodeId};
use std::fmt::Write;

/// Scratch floats per hidden unit (see the module doc).
pub(super) const SCRATCH_PER_UNIT: usize = 13;

/// The C expression of activation `a` on the variable `x`, if it has one.
fn act(a: Activation, x: &str) -> Option<String> {
    match a {
        Activation::Affine(al, be) => Some(format!("({} * {x} + {})", f32_lit(al), f32_lit(be))),
        Activation::ScaledTanh(al, be) => Some(format!("({} * kiln_tanhf({} * {x}))", f32_lit(al), f32_lit(be))),
        a => super::elementwise::unary_expr(a.unary()?, x),
    }
}

pub(super) fn rnn(out: &mut String, g: &Graph, n: NodeId, r: &Rnn) -> Lowering {
    need(super::f32_io(g, n), "float32 only")?;
    need(
        r.activations.iter().all(|&a| act(a, "v").is_some()),
        "an activation without a C form",
    )?;
    let xs = shape(g, g.node(n).inputs[0]);
    let (seq, batch, isz) = if r.batch_major {
        (xs[1], xs[0], xs[2])
    } else {
        (xs[0], xs[1], xs[2])
    };
    let h = r.hidden;
    let dirs = r.direction.count();
    let gates = match r.kind {
        RnnKind::Rnn => 1,
        RnnKind::Gru { .. } => 3,
        RnnKind::Lstm { .. } => 4,
    };
    let lstm = matches!(r.kind, RnnKind::Lstm { .. });
    let peepholes = lstm && g.node(n).inputs.len() > 6;
    let _ = writeln!(
        out,
        "    float *hs = s, *cs = s + {h}, *gx = s + {}, *gh = s + {}, *hn = s + {}, *rh = s + {}, *tmp = s + {};\n    (void)cs; (void)hn; (void)rh; (void)tmp;",
        2 * h,
        6 * h,
        10 * h,
        11 * h,
        12 * h
    );
    let per_dir = r.activations.len() / dirs;
    for d in 0..dirs {
        let acts = &r.activations[d * per_dir..(d + 1) * per_dir];
        let f = |i: usize, x: &str| act(acts[i], x).expect("checked above");
        let reverse = r.direction == RnnDirection::Reverse || (r.direction == RnnDirection::Bidirectional && d == 1);
        let st = if r.batch_major {
            format!("(b * {dirs} + {d}) * {h}")
        } else {
            format!("({d} * {batch} + b) * {h}")
        };
        let _ = writeln!(out, "    for (int32_t b = 0; b < {batch}; ++b) {{");
        let init_c = if lstm {
            format!(" cs[j] = x5[{st} + j];")
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "        for (int32_t j = 0; j < {h}; ++j) {{ hs[j] = x4[{st} + j];{init_c} }}"
        );
        let _ = writeln!(out, "        for (int32_t step = 0; step < {seq}; ++step) {{");
        let t = if reverse {
            format!("{} - step", seq - 1)
        } else {
            "step".into()
        };
        let _ = writeln!(out, "            int32_t t = {t};");
        let xo = if r.batch_major {
            format!("(b * {seq} + t) * {isz}")
        } else {
            format!("(t * {batch} + b) * {isz}")
        };
        let (w0, r0) = (d * gates * h * isz, d * gates * h * h);
        let _ = writeln!(
            out,
            "            for (int32_t j = 0; j < {}; ++j) {{\n                float a = 0.0f, c = 0.0f;\n                for (int32_t k = 0; k < {isz}; ++k) a = a + x1[{w0} + j * {isz} + k] * x0[{xo} + k];\n                for (int32_t k = 0; k < {h}; ++k) c = c + x2[{r0} + j * {h} + k] * hs[k];\n                gx[j] = a;\n                gh[j] = c;\n            }}",
            gates * h
        );
        let (wb, rb) = (d * 2 * gates * h, d * 2 * gates * h + gates * h);
        let clip = |e: String| match r.clip {
            Some(c) => format!("kiln_minf(kiln_maxf({e}, {}), {})", f32_lit(-c), f32_lit(c)),
            None => e,
        };
        let pre = |gate: usize| {
            let o = gate * h;
            format!("gx[{o} + j] + gh[{o} + j] + x3[{} + j] + x3[{} + j]", wb + o, rb + o)
        };
        let body = match r.kind {
            RnnKind::Rnn => format!(
                "            for (int32_t j = 0; j < {h}; ++j) {{\n                float p = {};\n                hs[j] = {};\n            }}\n",
                clip(pre(0)),
                f(0, "p")
            ),
            RnnKind::Lstm { input_forget } => lstm_step(h, d, &pre, &clip, &f, input_forget, peepholes),
            RnnKind::Gru { linear_before_reset } => gru_step(h, r0, (wb, rb), &pre, &clip, &f, linear_before_reset),
        };
        out.push_str(&body);
        let yo = if r.batch_major {
            format!("((b * {seq} + t) * {dirs} + {d}) * {h}")
        } else {
            format!("((t * {dirs} + {d}) * {batch} + b) * {h}")
        };
        let _ = writeln!(
            out,
            "            for (int32_t j = 0; j < {h}; ++j) y0[{yo} + j] = hs[j];\n        }}"
        );
        let keep_c = if lstm {
            format!(" y2[{st} + j] = cs[j];")
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "        for (int32_t j = 0; j < {h}; ++j) {{ y1[{st} + j] = hs[j];{keep_c} }}\n    }}"
        );
    }
    Ok(())
}

fn lstm_step(
    h: usize,
    d: usize,
    pre: &dyn Fn(usize) -> String,
    clip: &dyn Fn(String) -> String,
    f: &dyn Fn(usize, &str) -> String,
    input_forget: bool,
    peepholes: bool,
) -> String {
    // peephole weights P (input, output, forget) times the cell state; zero without them
    let peep = |k: usize, c: &str| {
        if peepholes {
            format!("x6[{} + j] * {c}", d * 3 * h + k * h)
        } else {
            format!("0.0f * {c}")
        }
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "            for (int32_t j = 0; j < {h}; ++j) {{\n                float c_old = cs[j], c_new, ip, fp, cp, op, ig, fg, cg, og;"
    );
    let _ = writeln!(
        s,
        "                ip = {};\n                ig = {};",
        clip(format!("{} + {}", pre(0), peep(0, "c_old"))),
        f(0, "ip")
    );
    if input_forget {
        let _ = writeln!(s, "                fp = 0.0f;\n                fg = 1.0f - ig;");
    } else {
        let _ = writeln!(
            s,
            "                fp = {};\n                fg = {};",
            clip(format!("{} + {}", pre(2), peep(2, "c_old"))),
            f(0, "fp")
        );
    }
    let _ = writeln!(
        s,
        "                cp = {};\n                cg = {};",
        clip(pre(3)),
        f(1, "cp")
    );
    let _ = writeln!(
        s,
        "                c_new = fg * c_old + ig * cg;\n                cs[j] = c_new;\n                (void)fp;"
    );
    let _ = writeln!(
        s,
        "                op = {};\n                og = {};",
        clip(format!("{} + {}", pre(1), peep(1, "c_new"))),
        f(0, "op")
    );
    let _ = writeln!(s, "                hs[j] = og * {};\n            }}", f(2, "c_new"));
    s
}

fn gru_step(
    h: usize,
    r0: usize,
    (wb, rb): (usize, usize),
    pre: &dyn Fn(usize) -> String,
    clip: &dyn Fn(String) -> String,
    f: &dyn Fn(usize, &str) -> String,
    linear_before_reset: bool,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "            for (int32_t j = 0; j < {h}; ++j) {{\n                float rp = {}, rg = {};",
        clip(pre(1)),
        f(0, "rp")
    );
    if linear_before_reset {
        let _ = writeln!(
            s,
            "                float np = {};\n                hn[j] = {};\n            }}",
            clip(format!(
                "gx[{0} + j] + rg * (gh[{0} + j] + x3[{1} + j]) + x3[{2} + j]",
                2 * h,
                rb + 2 * h,
                wb + 2 * h
            )),
            f(1, "np")
        );
    } else {
        // (r . h) times the candidate rows of R, which needs every r first
        let _ = writeln!(s, "                rh[j] = rg * hs[j];\n            }}");
        let _ = writeln!(
            s,
            "            for (int32_t j = 0; j < {h}; ++j) {{\n                float a = 0.0f;\n                for (int32_t k = 0; k < {h}; ++k) a = a + x2[{} + j * {h} + k] * rh[k];\n                tmp[j] = a;\n            }}",
            r0 + 2 * h * h
        );
        let _ = writeln!(
            s,
            "            for (int32_t j = 0; j < {h}; ++j) {{\n                float np = {};\n                hn[j] = {};\n            }}",
            clip(format!(
                "gx[{} + j] + tmp[j] + x3[{} + j] + x3[{} + j]",
                2 * h,
                rb + 2 * h,
                wb + 2 * h
            )),
            f(1, "np")
        );
    }
    let _ = writeln!(
        s,
        "            for (int32_t j = 0; j < {h}; ++j) {{\n                float zp = {}, z = {};\n                hs[j] = (1.0f - z) * hn[j] + z * hs[j];\n            }}",
        clip(pre(0)),
        f(0, "zp")
    );
    s
}

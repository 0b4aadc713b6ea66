//! Normalizations (f32): layer, batch (inference form), instance and local response.
//! Statistics are computed in the evaluator's order: the mean, then the mean of squared
//! deviations, each a sum in index order divided by the count.

use super::shape;
use super::writer::f32_lit;
use crate::{Lowering, need};
use kiln_ir::{Graph, NodeId};
use std::fmt::Write;

fn f32_io(g: &Graph, n: NodeId) -> Lowering {
    need(super::f32_io(g, n), "float32 only")
}

/// Mean and variance of `x[0..inner]` into `mean` and `var` (declared by the caller).
fn moments(out: &mut String, indent: &str, inner: usize) {
    let n = f32_lit(inner as f32);
    let _ = writeln!(
        out,
        "{indent}for (int32_t j = 0; j < {inner}; ++j) mean = mean + x[j];\n{indent}mean = mean / {n};\n{indent}for (int32_t j = 0; j < {inner}; ++j) var = var + (x[j] - mean) * (x[j] - mean);\n{indent}var = var / {n};"
    );
}

pub(super) fn layer_norm(out: &mut String, g: &Graph, n: NodeId, axis: usize, epsilon: f32) -> Lowering {
    f32_io(g, n)?;
    let node = g.node(n);
    let x = shape(g, node.inputs[0]);
    let inner: usize = x[axis..].iter().product();
    // scale and bias spanning exactly the normalized axes
    need(
        node.inputs[1..].iter().all(|&v| g.value(v).ty.numel() == inner),
        "a scale or bias broadcast over more than the normalized axes",
    )?;
    let rows = g.value(node.inputs[0]).ty.numel() / inner.max(1);
    let bias = if node.inputs.len() > 2 { " + x2[j]" } else { "" };
    let _ = writeln!(
        out,
        "    for (int32_t r = 0; r < {rows}; ++r) {{\n        const float *x = x0 + r * {inner};\n        float *y = y0 + r * {inner};\n        float mean = 0.0f, var = 0.0f, inv;"
    );
    moments(out, "        ", inner);
    let _ = writeln!(
        out,
        "        inv = 1.0f / sqrtf(var + {});\n        for (int32_t j = 0; j < {inner}; ++j) y[j] = (x[j] - mean) * inv * x1[j]{bias};\n    }}",
        f32_lit(epsilon)
    );
    Ok(())
}

pub(super) fn instance_norm(out: &mut String, g: &Graph, n: NodeId, epsilon: f32) -> Lowering {
    f32_io(g, n)?;
    let s = shape(g, g.node(n).inputs[0]);
    let (c, inner) = (s[1], s[2..].iter().product::<usize>());
    let _ = writeln!(
        out,
        "    for (int32_t p = 0; p < {}; ++p) {{\n        const float *x = x0 + p * {inner};\n        float *y = y0 + p * {inner};\n        float mean = 0.0f, var = 0.0f, a;\n        int32_t ch = p % {c};",
        s[0] * c
    );
    moments(out, "        ", inner);
    let _ = writeln!(
        out,
        "        a = x1[ch] / sqrtf(var + {});\n        for (int32_t j = 0; j < {inner}; ++j) y[j] = (x[j] - mean) * a + x2[ch];\n    }}",
        f32_lit(epsilon)
    );
    Ok(())
}

pub(super) fn batch_norm(out: &mut String, g: &Graph, n: NodeId, epsilon: f32) -> Lowering {
    f32_io(g, n)?;
    let s = shape(g, g.node(n).inputs[0]);
    need(s.len() >= 2, "a batch norm without channels")?;
    let (nb, c, inner) = (s[0], s[1], s[2..].iter().product::<usize>());
    let _ = writeln!(out, "    for (int32_t ch = 0; ch < {c}; ++ch) {{");
    let _ = writeln!(
        out,
        "        float k = x1[ch] / sqrtf(x4[ch] + {});\n        float s = x2[ch] - x3[ch] * k;",
        f32_lit(epsilon)
    );
    let _ = writeln!(
        out,
        "        for (int32_t b = 0; b < {nb}; ++b)\n            for (int32_t i = 0; i < {inner}; ++i) y0[(b * {c} + ch) * {inner} + i] = x0[(b * {c} + ch) * {inner} + i] * k + s;\n    }}"
    );
    Ok(())
}

/// Local response normalization across channels.
pub(super) fn lrn(out: &mut String, g: &Graph, n: NodeId, size: usize, alpha: f32, beta: f32, bias: f32) -> Lowering {
    f32_io(g, n)?;
    need(size > 0, "an empty LRN window")?;
    let s = shape(g, g.node(n).inputs[0]);
    let (c, inner) = (s[1], s[2..].iter().product::<usize>());
    let (lo, hi) = ((size - 1) / 2, size - 1 - (size - 1) / 2);
    let scale = f32_lit((alpha as f64 / size as f64) as f32);
    let _ = writeln!(
        out,
        "    for (int32_t b = 0; b < {}; ++b)\n    for (int32_t ch = 0; ch < {c}; ++ch)\n    for (int32_t i = 0; i < {inner}; ++i) {{",
        s[0]
    );
    let _ = writeln!(
        out,
        "        int32_t from = ch < {lo} ? 0 : ch - {lo}, to = ch + {hi} > {} ? {} : ch + {hi};\n        float sq = 0.0f;",
        c - 1,
        c - 1
    );
    let _ = writeln!(
        out,
        "        for (int32_t cc = from; cc <= to; ++cc) {{ float v = x0[(b * {c} + cc) * {inner} + i]; sq = sq + v * v; }}"
    );
    let _ = writeln!(
        out,
        "        y0[(b * {c} + ch) * {inner} + i] = x0[(b * {c} + ch) * {inner} + i] / powf({} + {scale} * sq, {});\n    }}",
        f32_lit(bias),
        f32_lit(beta)
    );
    Ok(())
}

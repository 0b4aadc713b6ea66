//! Lowerings that move elements without arithmetic (bar the combining scatters): copies,
//! transposes, slices, concatenation, gathers and scatters, padding, tiling, one-hot.
//! They work on every element type, binary16 included as raw bits, except that a
//! binary16 constant operand is refused (`flash_reads` widens those to `float`). Indices
//! out of range are clamped (the evaluator refuses them), so no read leaves its array.

use super::writer::nest;
use super::{half_weight, shape};
use crate::shapes::{bcast, strides};
use crate::{Lowering, need};
use kiln_ir::op::{PadMode, ScatterReduction};
use kiln_ir::{Graph, NodeId, Scalar};
use std::fmt::Write;

fn scalar(g: &Graph, v: kiln_ir::ValueId) -> Scalar {
    g.value(v).ty.dtype.scalar
}

fn no_half_const(g: &Graph, n: NodeId) -> Lowering {
    need(!half_weight(g, n), "a binary16 constant operand")
}

/// `int64_t j` from index expression `e`, wrapped once if negative and clamped to `[0, dim)`.
fn clamp_index(e: &str, dim: usize) -> String {
    format!(
        "int64_t j = (int64_t){e};\nif (j < 0) j += {dim};\nif (j < 0) j = 0;\nif (j > {0}) j = {0};",
        dim.saturating_sub(1)
    )
}

pub(super) fn copy(out: &mut String, g: &Graph, n: NodeId) -> Lowering {
    no_half_const(g, n)?;
    let total = g.value(g.node(n).outputs[0]).ty.numel();
    let _ = writeln!(out, "    for (int32_t i = 0; i < {total}; ++i) y0[i] = x0[i];");
    Ok(())
}

pub(super) fn transpose(out: &mut String, g: &Graph, n: NodeId, perm: &[usize]) -> Lowering {
    no_half_const(g, n)?;
    let node = g.node(n);
    let o0 = shape(g, node.outputs[0]).to_vec();
    let ist = strides(shape(g, node.inputs[0]));
    let src: Vec<i64> = perm.iter().map(|&p| ist[p]).collect();
    nest(out, 1, &o0, &[strides(&o0), src], &|o| {
        format!("y0[{}] = x0[{}];", o[0], o[1])
    });
    Ok(())
}

pub(super) fn slice(out: &mut String, g: &Graph, n: NodeId, axes: &[kiln_ir::op::SliceAxis]) -> Lowering {
    no_half_const(g, n)?;
    let node = g.node(n);
    let o0 = shape(g, node.outputs[0]).to_vec();
    let ist = strides(shape(g, node.inputs[0]));
    let st: Vec<i64> = axes.iter().zip(&ist).map(|(a, &s)| a.step * s).collect();
    let base: i64 = axes.iter().zip(&ist).map(|(a, &s)| a.start * s).sum();
    nest(out, 1, &o0, &[strides(&o0), st], &|o| {
        format!("y0[{}] = x0[{base} + {}];", o[0], o[1])
    });
    Ok(())
}

pub(super) fn expand(out: &mut String, g: &Graph, n: NodeId) -> Lowering {
    no_half_const(g, n)?;
    let node = g.node(n);
    let o0 = shape(g, node.outputs[0]).to_vec();
    let src = bcast(shape(g, node.inputs[0]), &o0);
    nest(out, 1, &o0, &[strides(&o0), src], &|o| {
        format!("y0[{}] = x0[{}];", o[0], o[1])
    });
    Ok(())
}

pub(super) fn tile(out: &mut String, g: &Graph, n: NodeId) -> Lowering {
    no_half_const(g, n)?;
    let node = g.node(n);
    let (xs, o0) = (shape(g, node.inputs[0]).to_vec(), shape(g, node.outputs[0]).to_vec());
    let ist = strides(&xs);
    let src: Vec<String> = (0..xs.len())
        .map(|d| format!("(i{d} % {}) * {}", xs[d], ist[d]))
        .collect();
    let src = if src.is_empty() {
        "0".to_string()
    } else {
        src.join(" + ")
    };
    nest(out, 1, &o0, &[strides(&o0)], &|o| format!("y0[{}] = x0[{src}];", o[0]));
    Ok(())
}

pub(super) fn concat(out: &mut String, g: &Graph, n: NodeId, axis: usize) -> Lowering {
    no_half_const(g, n)?;
    let node = g.node(n);
    let ost = strides(shape(g, node.outputs[0]));
    let mut at = 0i64;
    for (i, &v) in node.inputs.iter().enumerate() {
        let s = shape(g, v).to_vec();
        let base = at * ost[axis];
        nest(out, 1, &s, &[ost.clone(), strides(&s)], &|o| {
            format!("y0[{base} + {}] = x{i}[{}];", o[0], o[1])
        });
        at += s[axis] as i64;
    }
    Ok(())
}

pub(super) fn split(out: &mut String, g: &Graph, n: NodeId, axis: usize) -> Lowering {
    no_half_const(g, n)?;
    let node = g.node(n);
    let ist = strides(shape(g, node.inputs[0]));
    let mut at = 0i64;
    for (i, &v) in node.outputs.iter().enumerate() {
        let s = shape(g, v).to_vec();
        let base = at * ist[axis];
        nest(out, 1, &s, &[strides(&s), ist.clone()], &|o| {
            format!("y{i}[{}] = x0[{base} + {}];", o[0], o[1])
        });
        at += s[axis] as i64;
    }
    Ok(())
}

pub(super) fn gather(out: &mut String, g: &Graph, n: NodeId, axis: usize) -> Lowering {
    no_half_const(g, n)?;
    let node = g.node(n);
    let s = shape(g, node.inputs[0]);
    let (outer, dim, inner) = (
        s[..axis].iter().product::<usize>(),
        s[axis],
        s[axis + 1..].iter().product::<usize>(),
    );
    let count = g.value(node.inputs[1]).ty.numel();
    let _ = writeln!(
        out,
        "    for (int32_t o = 0; o < {outer}; ++o)\n        for (int32_t p = 0; p < {count}; ++p) {{"
    );
    for line in clamp_index("x1[p]", dim).lines() {
        let _ = writeln!(out, "            {line}");
    }
    let _ = writeln!(
        out,
        "            for (int32_t q = 0; q < {inner}; ++q) y0[(o * {count} + p) * {inner} + q] = x0[(o * {dim} + (int32_t)j) * {inner} + q];\n        }}"
    );
    Ok(())
}

pub(super) fn gather_elements(out: &mut String, g: &Graph, n: NodeId, axis: usize) -> Lowering {
    no_half_const(g, n)?;
    let node = g.node(n);
    let o0 = shape(g, node.outputs[0]).to_vec();
    let xs = shape(g, node.inputs[0]).to_vec();
    let mut xst = strides(&xs);
    let step = xst[axis];
    xst[axis] = 0;
    nest(out, 1, &o0, &[strides(&o0), xst], &|o| {
        format!(
            "{}\ny0[{}] = x0[{} + (int32_t)j * {step}];",
            clamp_index(&format!("x1[{}]", o[0]), xs[axis]),
            o[0],
            o[1]
        )
    });
    Ok(())
}

/// Adds to `off` the offset index tuple `t` (`last` clamped entries of `x1`) names along
/// axes of extents `dims` and strides `st`.
fn tuple_offset(out: &mut String, last: usize, dims: &[usize], st: &[i64]) {
    for j in 0..last {
        let _ = writeln!(out, "        {{");
        for line in clamp_index(&format!("x1[t * {last} + {j}]"), dims[j]).lines() {
            let _ = writeln!(out, "            {line}");
        }
        let _ = writeln!(out, "            off += j * {};\n        }}", st[j]);
    }
}

/// GatherND: each index tuple (after `batch_dims` leading batch axes) picks a slice of
/// `inner` elements.
pub(super) fn gather_nd(out: &mut String, g: &Graph, n: NodeId, batch_dims: usize) -> Lowering {
    no_half_const(g, n)?;
    let node = g.node(n);
    let (xs, is) = (shape(g, node.inputs[0]).to_vec(), shape(g, node.inputs[1]).to_vec());
    let last = *is.last().unwrap_or(&0);
    let xst = strides(&xs);
    let inner: usize = xs[batch_dims + last..].iter().product();
    let tuples = g.value(node.inputs[1]).ty.numel() / last.max(1);
    let per_batch: usize = is[batch_dims..is.len() - 1].iter().product::<usize>().max(1);
    let _ = writeln!(out, "    for (int32_t t = 0; t < {tuples}; ++t) {{");
    let _ = writeln!(out, "        int64_t off = 0, rem = t / {per_batch};");
    for d in (0..batch_dims).rev() {
        let _ = writeln!(out, "        off += (rem % {}) * {}; rem /= {};", xs[d], xst[d], xs[d]);
    }
    tuple_offset(out, last, &xs[batch_dims..], &xst[batch_dims..]);
    let _ = writeln!(
        out,
        "        (void)rem;\n        for (int32_t q = 0; q < {inner}; ++q) y0[t * {inner} + q] = x0[off + q];\n    }}"
    );
    Ok(())
}

/// The update of `y0[at]` by `u` under `red` (the evaluator's: sums and products in f64).
fn combine(red: ScatterReduction, s: Scalar) -> Lowering {
    need(
        red == ScatterReduction::None || s != Scalar::Bool,
        "a combining scatter on bool",
    )?;
    need(
        s != Scalar::F16 || red == ScatterReduction::None,
        "a combining scatter on binary16",
    )
}

fn update(red: ScatterReduction, s: Scalar, at: &str, u: &str) -> String {
    let t = crate::header::c_type(s);
    let via = |op: &str| super::elementwise::from_f64(s, &format!("(double){at} {op} (double){u}"));
    match red {
        ScatterReduction::None => format!("{at} = {u};"),
        ScatterReduction::Add => format!("{at} = {};", via("+")),
        ScatterReduction::Mul => format!("{at} = {};", via("*")),
        ScatterReduction::Max => format!("{{ {t} v = {u}; if (v > {at}) {at} = v; }}"),
        ScatterReduction::Min => format!("{{ {t} v = {u}; if (v < {at}) {at} = v; }}"),
    }
}

pub(super) fn scatter_elements(out: &mut String, g: &Graph, n: NodeId, axis: usize, red: ScatterReduction) -> Lowering {
    no_half_const(g, n)?;
    let node = g.node(n);
    let s = scalar(g, node.inputs[0]);
    combine(red, s)?;
    let (xs, is) = (shape(g, node.inputs[0]).to_vec(), shape(g, node.inputs[1]).to_vec());
    let total = g.value(node.inputs[0]).ty.numel();
    let _ = writeln!(out, "    for (int32_t i = 0; i < {total}; ++i) y0[i] = x0[i];");
    let mut yst = strides(&xs);
    let step = yst[axis];
    yst[axis] = 0;
    let body = update(red, s, "y0[{Y} + (int32_t)j * {S}]", "x2[{U}]");
    nest(out, 1, &is, &[strides(&is), yst], &|o| {
        format!(
            "{}\n{}",
            clamp_index(&format!("x1[{}]", o[0]), xs[axis]),
            body.replace("{Y}", &o[1])
                .replace("{S}", &step.to_string())
                .replace("{U}", &o[0])
        )
    });
    Ok(())
}

pub(super) fn scatter_nd(out: &mut String, g: &Graph, n: NodeId, red: ScatterReduction) -> Lowering {
    no_half_const(g, n)?;
    let node = g.node(n);
    let s = scalar(g, node.inputs[0]);
    combine(red, s)?;
    let (xs, is) = (shape(g, node.inputs[0]).to_vec(), shape(g, node.inputs[1]).to_vec());
    let last = *is.last().unwrap_or(&0);
    let xst = strides(&xs);
    let tuples = g.value(node.inputs[1]).ty.numel() / last.max(1);
    let per = g.value(node.inputs[2]).ty.numel() / tuples.max(1);
    let total = g.value(node.inputs[0]).ty.numel();
    let _ = writeln!(out, "    for (int32_t i = 0; i < {total}; ++i) y0[i] = x0[i];");
    let _ = writeln!(
        out,
        "    for (int32_t t = 0; t < {tuples}; ++t) {{\n        int64_t off = 0;"
    );
    tuple_offset(out, last, &xs, &xst);
    let body = update(red, s, "y0[off + q]", &format!("x2[t * {per} + q]"));
    let _ = writeln!(out, "        for (int32_t q = 0; q < {per}; ++q) {body}\n    }}");
    Ok(())
}

pub(super) fn one_hot(out: &mut String, g: &Graph, n: NodeId, axis: usize, depth: usize) -> Lowering {
    no_half_const(g, n)?;
    let node = g.node(n);
    need(scalar(g, node.inputs[0]) != Scalar::F16, "binary16 indices")?;
    let is = shape(g, node.inputs[0]);
    let outer: usize = is[..axis].iter().product();
    let inner: usize = is[axis..].iter().product();
    let _ = writeln!(
        out,
        "    for (int32_t o = 0; o < {outer}; ++o)\n    for (int32_t d = 0; d < {depth}; ++d)\n    for (int32_t i = 0; i < {inner}; ++i) {{"
    );
    let _ = writeln!(
        out,
        "        int64_t v = (int64_t)x0[o * {inner} + i];\n        if (v < 0) v += {depth};\n        y0[(o * {depth} + d) * {inner} + i] = x1[v == d ? 1 : 0];\n    }}"
    );
    Ok(())
}

pub(super) fn trilu(out: &mut String, g: &Graph, n: NodeId, upper: bool, k: i64) -> Lowering {
    no_half_const(g, n)?;
    let s = shape(g, g.node(n).inputs[0]);
    let r = s.len();
    let (rows, cols) = (s[r - 2], s[r - 1]);
    let total = g.value(g.node(n).outputs[0]).ty.numel();
    if total == 0 {
        return Ok(());
    }
    let keep = if upper {
        format!("j - i >= {k}")
    } else {
        format!("j - i <= {k}")
    };
    let _ = writeln!(
        out,
        "    for (int32_t n = 0; n < {total}; ++n) {{\n        int64_t i = (n / {cols}) % {rows}, j = n % {cols};\n        y0[n] = ({keep}) ? x0[n] : 0;\n    }}"
    );
    Ok(())
}

pub(super) fn pad(out: &mut String, g: &Graph, n: NodeId, mode: PadMode, pads: &[i64]) -> Lowering {
    no_half_const(g, n)?;
    let node = g.node(n);
    let xs = shape(g, node.inputs[0]).to_vec();
    let os = shape(g, node.outputs[0]).to_vec();
    need(
        mode == PadMode::Constant || xs.iter().all(|&d| d > 0),
        "edge, wrap or reflect padding of an empty axis",
    )?;
    let ist = strides(&xs);
    let fill = if node.inputs.len() > 1 { "x1[0]" } else { "0" };
    let mut body = String::from("int32_t inside = 1, off = 0, s;\n");
    for d in 0..xs.len() {
        let len = xs[d] as i64;
        let _ = writeln!(body, "s = i{d} - {};", pads[d]);
        match mode {
            PadMode::Constant => {
                let _ = writeln!(body, "if (s < 0 || s >= {len}) inside = 0;");
            }
            PadMode::Edge => {
                let _ = write!(body, "if (s < 0) s = 0;\nif (s >= {len}) s = {};\n", len - 1);
            }
            PadMode::Wrap => {
                let _ = writeln!(body, "s = ((s % {len}) + {len}) % {len};");
            }
            PadMode::Reflect => {
                let p = 2 * (len - 1).max(1);
                let _ = write!(body, "s = ((s % {p}) + {p}) % {p};\nif (s >= {len}) s = {p} - s;\n");
            }
        }
        let _ = writeln!(body, "off += (inside ? s : 0) * {};", ist[d]);
    }
    let _ = write!(body, "y0[{{O}}] = inside ? x0[off] : {fill};");
    nest(out, 1, &os, &[strides(&os)], &|o| body.replace("{O}", &o[0]));
    Ok(())
}

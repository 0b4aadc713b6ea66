//! Lowerings that combine along axes: the Reduce family, softmax and its kin, arg-max/min,
//! global pooling, cumulative sums and top-k. Float reductions accumulate in the element
//! type in index order (the evaluator sums in f64: within the stated float bound).

use super::writer::{f32_lit, nest};
use super::{half_weight, shape};
use crate::header;
use crate::shapes::strides;
use crate::{Lowering, Refusal, need};
use kiln_ir::op::{PoolKind, ReduceKind};
use kiln_ir::{Graph, NodeId, Scalar};
use std::fmt::Write;

fn in_scalar(g: &Graph, n: NodeId) -> Scalar {
    g.value(g.node(n).inputs[0]).ty.dtype.scalar
}

fn f32_io(g: &Graph, n: NodeId) -> Lowering {
    need(super::f32_io(g, n), "float32 only")
}

/// Renames a nest's loop variables `i*` to `r*` so it can sit inside another nest.
fn inner_vars(txt: &str) -> String {
    (0..8).fold(txt.to_string(), |t, d| t.replace(&format!("i{d}"), &format!("r{d}")))
}

/// The extreme values of an integer or bool type, as C constants (`lowest`, `highest`).
fn int_bounds(s: Scalar) -> (&'static str, &'static str) {
    match s {
        Scalar::I8 => ("INT8_MIN", "INT8_MAX"),
        Scalar::I16 => ("INT16_MIN", "INT16_MAX"),
        Scalar::I32 => ("INT32_MIN", "INT32_MAX"),
        Scalar::I64 => ("INT64_MIN", "INT64_MAX"),
        Scalar::U8 | Scalar::Bool => ("0", "UINT8_MAX"),
        Scalar::U16 => ("0", "UINT16_MAX"),
        Scalar::U32 => ("0", "UINT32_MAX"),
        _ => ("0", "UINT64_MAX"),
    }
}

/// Accumulator type, initial value, step and final expression of a reduction, or why not.
fn reduction(kind: ReduceKind, s: Scalar, count: usize) -> Result<(String, String, String, String), Refusal> {
    if matches!(s, Scalar::F32 | Scalar::F64) {
        let (t, f) = if s == Scalar::F32 {
            ("float", "f")
        } else {
            ("double", "")
        };
        let lit = |v: f32| if s == Scalar::F32 { f32_lit(v) } else { format!("{v:?}") };
        let init = match kind {
            ReduceKind::Max | ReduceKind::LogSumExp => format!("-{} / 0.0", lit(1.0)),
            ReduceKind::Min => format!("{} / 0.0", lit(1.0)),
            ReduceKind::Prod => lit(1.0),
            _ => lit(0.0),
        };
        let step = match kind {
            ReduceKind::Max | ReduceKind::LogSumExp => "acc = (v > acc || v != v) ? v : acc;".into(),
            ReduceKind::Min => "acc = (v < acc || v != v) ? v : acc;".into(),
            ReduceKind::Prod => "acc = acc * v;".into(),
            ReduceKind::L1 => "acc = acc + (v < 0 ? -v : v);".into(),
            ReduceKind::L2 | ReduceKind::SumSquare => "acc = acc + v * v;".into(),
            _ => "acc = acc + v;".to_string(),
        };
        let fin = match kind {
            ReduceKind::Mean => format!("acc / {}", lit(count as f32)),
            ReduceKind::L2 => format!("sqrt{f}(acc)"),
            ReduceKind::LogSum => format!("log{f}(acc)"),
            // a second pass: log(sum(exp(v - max))) + max
            ReduceKind::LogSumExp => format!(
                "(acc == acc && acc != {i} && acc != -{i}) ? acc + log{f}(lse) : acc",
                i = format_args!("({} / 0.0)", lit(1.0))
            ),
            _ => "acc".into(),
        };
        return Ok((t.into(), init, step, fin));
    }
    need(s != Scalar::F16, "a binary16 reduction")?;
    let t = header::c_type(s);
    let (lo, hi) = int_bounds(s);
    match kind {
        ReduceKind::Max => Ok((t.into(), lo.into(), "acc = v > acc ? v : acc;".into(), "acc".into())),
        ReduceKind::Min => Ok((t.into(), hi.into(), "acc = v < acc ? v : acc;".into(), "acc".into())),
        _ => Err(Refusal("an integer reduction other than max or min")),
    }
}

pub(super) fn reduce(out: &mut String, g: &Graph, n: NodeId, kind: ReduceKind, axes: &[usize]) -> Lowering {
    need(!half_weight(g, n), "a binary16 constant operand")?;
    let node = g.node(n);
    let s = shape(g, node.inputs[0]).to_vec();
    let st = strides(&s);
    let kept: Vec<usize> = (0..s.len()).filter(|d| !axes.contains(d)).collect();
    let kd: Vec<usize> = kept.iter().map(|&d| s[d]).collect();
    let rd: Vec<usize> = axes.iter().map(|&d| s[d]).collect();
    let count: usize = rd.iter().product();
    let sc = in_scalar(g, n);
    need(
        sc == g.value(node.outputs[0]).ty.dtype.scalar,
        "a reduction changing type",
    )?;
    let (t, init, step, fin) = reduction(kind, sc, count)?;
    let rst: Vec<i64> = axes.iter().map(|&d| st[d]).collect();
    let mut inner = String::new();
    nest(&mut inner, 0, &rd, std::slice::from_ref(&rst), &|o| {
        format!("{t} v = x[{}];\n{step}", o[0])
    });
    let second = if kind == ReduceKind::LogSumExp {
        let exp = if sc == Scalar::F32 { "kiln_expf" } else { "exp" };
        let mut txt = String::new();
        nest(&mut txt, 0, &rd, &[rst], &|o| {
            format!("lse = lse + {exp}(x[{}] - acc);", o[0])
        });
        format!("{t} lse = 0;\n{}", inner_vars(&txt))
    } else {
        String::new()
    };
    let inner = inner_vars(&inner);
    let kst: Vec<i64> = kept.iter().map(|&d| st[d]).collect();
    nest(out, 1, &kd, &[strides(&kd), kst], &|o| {
        format!(
            "const {t} *x = x0 + {};\n{t} acc = {init};\n{inner}{second}y0[{}] = {fin};",
            o[1], o[0]
        )
    });
    Ok(())
}

/// Softmax, LogSoftmax and Hardmax along `axis` (f32).
pub(super) fn softmax(out: &mut String, g: &Graph, n: NodeId, axis: usize, which: &str) -> Lowering {
    if which == "soft" && super::all_half(g, n) {
        return softmax_half(out, g, n, axis);
    }
    f32_io(g, n)?;
    let s = shape(g, g.node(n).inputs[0]);
    let (outer, len, inner) = (
        s[..axis].iter().product::<usize>(),
        s[axis],
        s[axis + 1..].iter().product::<usize>(),
    );
    let _ = writeln!(
        out,
        "    for (int32_t o = 0; o < {outer}; ++o)\n        for (int32_t i = 0; i < {inner}; ++i) {{"
    );
    let _ = writeln!(
        out,
        "            const float *x = x0 + o * {0} + i;\n            float *y = y0 + o * {0} + i;",
        len * inner
    );
    let _ = writeln!(out, "            float mx = -1.0f / 0.0f, sum = 0.0f;");
    let _ = writeln!(
        out,
        "            for (int32_t j = 0; j < {len}; ++j) if (x[j * {inner}] > mx) mx = x[j * {inner}];"
    );
    match which {
        "soft" => {
            let _ = writeln!(
                out,
                "            for (int32_t j = 0; j < {len}; ++j) {{ float e = kiln_expf(x[j * {inner}] - mx); y[j * {inner}] = e; sum = sum + e; }}"
            );
            let _ = writeln!(
                out,
                "            for (int32_t j = 0; j < {len}; ++j) y[j * {inner}] = y[j * {inner}] / sum;"
            );
        }
        "log" => {
            let _ = writeln!(
                out,
                "            for (int32_t j = 0; j < {len}; ++j) sum = sum + kiln_expf(x[j * {inner}] - mx);"
            );
            let _ = writeln!(
                out,
                "            for (int32_t j = 0; j < {len}; ++j) y[j * {inner}] = (x[j * {inner}] - mx) - logf(sum);"
            );
        }
        _ => {
            // one-hot of the first maximum
            let _ = writeln!(
                out,
                "            int32_t at = -1;\n            for (int32_t j = 0; j < {len}; ++j) {{ y[j * {inner}] = 0.0f; if (at < 0 && x[j * {inner}] == mx) at = j; }}\n            if (at >= 0) y[at * {inner}] = 1.0f;\n            (void)sum;"
            );
        }
    }
    let _ = writeln!(out, "        }}");
    Ok(())
}

/// The element type of a numeric (not bool, not binary16) input and the `[outer, len,
/// inner]` split of its shape around `axis`, or why not.
fn along(g: &Graph, n: NodeId, axis: usize, what: &'static str) -> Result<(Scalar, (usize, usize, usize)), Refusal> {
    let sc = in_scalar(g, n);
    need(!matches!(sc, Scalar::F16 | Scalar::Bool), what)?;
    need(!half_weight(g, n), "a binary16 constant operand")?;
    let xs = shape(g, g.node(n).inputs[0]);
    Ok((
        sc,
        (xs[..axis].iter().product(), xs[axis], xs[axis + 1..].iter().product()),
    ))
}

/// Softmax on binary16: widened reads, the float computation (the sum first, each
/// exponential then recomputed, so every output is `e / sum` as the evaluator's) and one
/// rounding per output.
fn softmax_half(out: &mut String, g: &Graph, n: NodeId, axis: usize) -> Lowering {
    let s = shape(g, g.node(n).inputs[0]);
    let (outer, len, inner) = (
        s[..axis].iter().product::<usize>(),
        s[axis],
        s[axis + 1..].iter().product::<usize>(),
    );
    let x = |j: &str| format!("kiln_h2f(x0[o * {} + i + {j} * {inner}])", len * inner);
    let _ = writeln!(
        out,
        "    for (int32_t o = 0; o < {outer}; ++o)\n    for (int32_t i = 0; i < {inner}; ++i) {{\n        float mx = -1.0f / 0.0f, sum = 0.0f;\n        for (int32_t j = 0; j < {len}; ++j) if ({xj} > mx) mx = {xj};\n        for (int32_t j = 0; j < {len}; ++j) sum = sum + kiln_expf({xj} - mx);\n        for (int32_t j = 0; j < {len}; ++j) y0[o * {} + i + j * {inner}] = kiln_d2h((double)(kiln_expf({xj} - mx) / sum));\n    }}",
        len * inner,
        xj = x("j")
    );
    Ok(())
}

/// ArgMax / ArgMin along `axis`: the first (or with `last` the last) extreme; a NaN wins.
pub(super) fn arg(out: &mut String, g: &Graph, n: NodeId, axis: usize, last: bool, max: bool) -> Lowering {
    let (sc, (outer, len, inner)) = along(g, n, axis, "arg-max/min on binary16 or bool")?;
    let t = header::c_type(sc);
    let better = match (max, last) {
        (true, false) => ">",
        (true, true) => ">=",
        (false, false) => "<",
        (false, true) => "<=",
    };
    let nan = if sc.is_float() { " || (v != v && bv == bv)" } else { "" };
    let _ = writeln!(
        out,
        "    for (int32_t o = 0; o < {outer}; ++o)\n    for (int32_t i = 0; i < {inner}; ++i) {{\n        int32_t best = 0;\n        {t} bv = x0[o * {len} * {inner} + i];"
    );
    let _ = writeln!(
        out,
        "        for (int32_t k = 1; k < {len}; ++k) {{\n            {t} v = x0[(o * {len} + k) * {inner} + i];\n            if (v {better} bv{nan}) {{ bv = v; best = k; }}\n        }}\n        y0[o * {inner} + i] = best;\n    }}"
    );
    Ok(())
}

pub(super) fn global_pool(out: &mut String, g: &Graph, n: NodeId, kind: PoolKind) -> Lowering {
    f32_io(g, n)?;
    let s = shape(g, g.node(n).inputs[0]);
    let planes = s[0] * s[1];
    let size: usize = s[2..].iter().product();
    let (init, step, fin) = match kind {
        PoolKind::Max => (
            "-1.0f / 0.0f",
            "acc = (v > acc || v != v) ? v : acc;",
            "acc".to_string(),
        ),
        PoolKind::Avg { .. } => ("0.0f", "acc = acc + v;", format!("acc / {}", f32_lit(size as f32))),
        PoolKind::Lp { p } => (
            "0.0f",
            "acc = acc + kiln_powif(kiln_absf(v), P);",
            format!("powf(acc, 1.0f / {})", f32_lit(p as f32)),
        ),
    };
    let step = step.replace(
        'P',
        &match kind {
            PoolKind::Lp { p } => p.to_string(),
            _ => String::new(),
        },
    );
    let _ = writeln!(
        out,
        "    for (int32_t c = 0; c < {planes}; ++c) {{\n        float acc = {init};\n        for (int32_t i = 0; i < {size}; ++i) {{ float v = x0[c * {size} + i]; {step} }}\n        y0[c] = {fin};\n    }}"
    );
    Ok(())
}

/// CumSum along `axis`, accumulated in f64 and converted per element (the evaluator's).
pub(super) fn cumsum(out: &mut String, g: &Graph, n: NodeId, axis: usize, exclusive: bool, reverse: bool) -> Lowering {
    let (sc, (outer, len, inner)) = along(g, n, axis, "a cumulative sum of binary16 or bool")?;
    let j = if reverse {
        format!("{} - s", len.saturating_sub(1))
    } else {
        "s".into()
    };
    let store = super::elementwise::from_f64(sc, "acc");
    let (before, after) = if exclusive {
        (format!("y0[at] = {store};"), String::new())
    } else {
        (String::new(), format!("y0[at] = {store};"))
    };
    let _ = writeln!(
        out,
        "    for (int32_t o = 0; o < {outer}; ++o)\n    for (int32_t i = 0; i < {inner}; ++i) {{\n        double acc = 0.0;\n        for (int32_t s = 0; s < {len}; ++s) {{\n            int32_t at = (o * {len} + {j}) * {inner} + i;\n            {before}\n            acc = acc + (double)x0[at];\n            {after}\n        }}\n    }}"
    );
    Ok(())
}

/// TopK along `axis`: an insertion into the `k` outputs per line, so equal values keep
/// index order (the evaluator's stable sort); always sorted.
pub(super) fn top_k(out: &mut String, g: &Graph, n: NodeId, axis: usize, k: usize, largest: bool) -> Lowering {
    let (sc, (outer, len, inner)) = along(g, n, axis, "top-k of binary16 or bool")?;
    let t = header::c_type(sc);
    let better = if largest { ">" } else { "<" };
    if k == 0 {
        return Ok(());
    }
    let _ = writeln!(
        out,
        "    for (int32_t o = 0; o < {outer}; ++o)\n    for (int32_t i = 0; i < {inner}; ++i) {{\n        {t} *v = y0 + o * {k} * {inner} + i;\n        int64_t *ix = y1 + o * {k} * {inner} + i;\n        int32_t cnt = 0;"
    );
    let _ = writeln!(
        out,
        "        for (int32_t j = 0; j < {len}; ++j) {{\n            {t} x = x0[(o * {len} + j) * {inner} + i];\n            int32_t p = cnt < {k} ? cnt : {k} - 1;\n            if (cnt == {k} && !(x {better} v[p * {inner}])) continue;\n            if (cnt < {k}) ++cnt;"
    );
    let _ = writeln!(
        out,
        "            while (p > 0 && x {better} v[(p - 1) * {inner}]) {{ v[p * {inner}] = v[(p - 1) * {inner}]; ix[p * {inner}] = ix[(p - 1) * {inner}]; --p; }}\n            v[p * {inner}] = x;\n            ix[p * {inner}] = j;\n        }}\n    }}"
    );
    Ok(())
}

/// The lowest value of an integer or bool type, as a C constant.
pub(super) fn lowest(s: Scalar) -> &'static str {
    int_bounds(s).0
}

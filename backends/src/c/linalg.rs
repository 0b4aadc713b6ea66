//! Gemm and MatMul in C. Each output is `0`, plus the products in `p` order (then Gemm's
//! alpha, beta * C and activation), as the evaluator adds them, in either of two loop
//! orders: a dot product per output (microcontrollers: the sum stays in a register), or
//! for hosts, with `B` walked by rows, each output row accumulated in place one `p` at a
//! time so the innermost loop runs over independent, contiguous outputs and vectorizes.

use super::writer::{f32_lit, nest};
use super::{shape, unary_expr};
use crate::shapes::{bcast, strides};
use kiln_ir::op::UnaryOp;
use kiln_ir::{Graph, NodeId};
use std::fmt::Write;

pub(super) fn gemm(
    out: &mut String,
    g: &Graph,
    n: NodeId,
    (alpha, beta): (f32, f32),
    (trans_a, trans_b): (bool, bool),
    fused: Option<UnaryOp>,
    host: bool,
) {
    let node = g.node(n);
    let o0 = shape(g, node.outputs[0]).to_vec();
    let (m, nn) = (o0[0], o0[1]);
    let ash = shape(g, node.inputs[0]);
    let kk = if trans_a { ash[0] } else { ash[1] };
    let ai = if trans_a {
        format!("p * {m} + i")
    } else {
        format!("i * {kk} + p")
    };
    let bi = if trans_b {
        format!("j * {kk} + p")
    } else {
        format!("p * {nn} + j")
    };
    let mut finish = String::new();
    if alpha != 1.0 {
        let _ = writeln!(finish, "            acc = acc * {};", f32_lit(alpha));
    }
    if node.inputs.len() > 2 {
        let cs = bcast(shape(g, node.inputs[2]), &o0);
        let _ = writeln!(
            finish,
            "            acc = acc + {} * x2[i * {} + j * {}];",
            f32_lit(beta),
            cs[0],
            cs[1]
        );
    }
    let v = fused.map(|u| unary_expr(u, "acc")).unwrap_or_else(|| "acc".into());
    if host && !trans_b {
        let _ = writeln!(
            out,
            "    for (int32_t i = 0; i < {m}; ++i) {{\n        float *restrict yr = y0 + i * {nn};\n        for (int32_t j = 0; j < {nn}; ++j) yr[j] = 0.0f;"
        );
        let _ = writeln!(
            out,
            "        for (int32_t p = 0; p < {kk}; ++p) {{\n            const float a = x0[{ai}];\n            for (int32_t j = 0; j < {nn}; ++j) yr[j] = yr[j] + a * x1[{bi}];\n        }}"
        );
        let _ = write!(
            out,
            "        for (int32_t j = 0; j < {nn}; ++j) {{\n            float acc = yr[j];\n{finish}"
        );
        let _ = writeln!(out, "            yr[j] = {v};\n        }}\n    }}");
        return;
    }
    let _ = writeln!(
        out,
        "    for (int32_t i = 0; i < {m}; ++i)\n        for (int32_t j = 0; j < {nn}; ++j) {{\n            float acc = 0.0f;"
    );
    let _ = writeln!(
        out,
        "            for (int32_t p = 0; p < {kk}; ++p) acc += x0[{ai}] * x1[{bi}];"
    );
    out.push_str(&finish);
    let _ = writeln!(out, "            y0[i * {nn} + j] = {v};\n        }}");
}

/// `half`: binary16 activations, widened as read and each output rounded once (the
/// evaluator computes in f32), in the dot-product order.
pub(super) fn matmul(out: &mut String, g: &Graph, n: NodeId, host: bool, half: bool) {
    let node = g.node(n);
    let (sa, sb) = (shape(g, node.inputs[0]).to_vec(), shape(g, node.inputs[1]).to_vec());
    let a2: Vec<usize> = if sa.len() == 1 { vec![1, sa[0]] } else { sa.clone() };
    let b2: Vec<usize> = if sb.len() == 1 { vec![sb[0], 1] } else { sb.clone() };
    let (m, kk, nn) = (a2[a2.len() - 2], a2[a2.len() - 1], b2[b2.len() - 1]);
    let batch = kiln_ir::shape::broadcast(&a2[..a2.len() - 2], &b2[..b2.len() - 2]).expect("checked");
    let scale = |st: Vec<i64>, s: usize| st.into_iter().map(|x| x * s as i64).collect::<Vec<_>>();
    let bst = [
        scale(strides(&batch), m * nn),
        scale(bcast(&a2[..a2.len() - 2], &batch), m * kk),
        scale(bcast(&b2[..b2.len() - 2], &batch), kk * nn),
    ];
    nest(out, 1, &batch, &bst, &|o| {
        if half {
            format!(
                "for (int32_t i = 0; i < {m}; ++i)\n    for (int32_t j = 0; j < {nn}; ++j) {{\n        float acc = 0.0f;\n        for (int32_t p = 0; p < {kk}; ++p) acc += kiln_h2f(x0[{} + i * {kk} + p]) * kiln_h2f(x1[{} + p * {nn} + j]);\n        y0[{} + i * {nn} + j] = kiln_d2h((double)acc);\n    }}",
                o[1], o[2], o[0]
            )
        } else if host {
            format!(
                "for (int32_t i = 0; i < {m}; ++i) {{\n    float *restrict yr = y0 + {} + i * {nn};\n    for (int32_t j = 0; j < {nn}; ++j) yr[j] = 0.0f;\n    for (int32_t p = 0; p < {kk}; ++p) {{\n        const float a = x0[{} + i * {kk} + p];\n        for (int32_t j = 0; j < {nn}; ++j) yr[j] = yr[j] + a * x1[{} + p * {nn} + j];\n    }}\n}}",
                o[0], o[1], o[2]
            )
        } else {
            format!(
                "for (int32_t i = 0; i < {m}; ++i)\n    for (int32_t j = 0; j < {nn}; ++j) {{\n        float acc = 0.0f;\n        for (int32_t p = 0; p < {kk}; ++p) acc += x0[{} + i * {kk} + p] * x1[{} + p * {nn} + j];\n        y0[{} + i * {nn} + j] = acc;\n    }}",
                o[1], o[2], o[0]
            )
        }
    });
}

/// Einsum as the evaluator computes it: per output element, the sum in double over every
/// value of the contracted labels of the product of one element per input, converted
/// once to the output type.
pub(super) fn einsum(out: &mut String, g: &Graph, n: NodeId, equation: &str) -> crate::Lowering {
    let node = g.node(n);
    crate::need(
        node.inputs
            .iter()
            .chain(&node.outputs)
            .all(|&v| !matches!(g.value(v).ty.dtype.scalar, kiln_ir::Scalar::F16 | kiln_ir::Scalar::Bool)),
        "Einsum on binary16 or bool",
    )?;
    crate::need(!super::half_weight(g, n), "a binary16 constant operand")?;
    let spec = kiln_ir::shape::parse_einsum(equation, node.inputs.len())
        .map_err(|_| crate::Refusal("an Einsum equation shape inference did not check"))?;
    let mut labels: Vec<char> = spec.output.clone();
    let mut size = std::collections::HashMap::new();
    for (l, &v) in spec.inputs.iter().zip(&node.inputs) {
        for (c, &d) in l.iter().zip(shape(g, v)) {
            size.insert(*c, d);
            if !labels.contains(c) {
                labels.push(*c);
            }
        }
    }
    let at = |c: &char| labels.iter().position(|x| x == c).expect("a label of the equation");
    let offset = |terms: Vec<String>| {
        if terms.is_empty() {
            "0".to_string()
        } else {
            terms.join(" + ")
        }
    };
    let loops = |from: usize, to: usize, out: &mut String| {
        for (d, c) in labels.iter().enumerate().take(to).skip(from) {
            let _ = writeln!(out, "    for (int32_t i{d} = 0; i{d} < {}; ++i{d}) {{", size[c]);
        }
    };
    let outs = spec.output.len();
    let ost = crate::shapes::strides(shape(g, node.outputs[0]));
    loops(0, outs, out);
    let _ = writeln!(out, "    double acc = 0.0;");
    loops(outs, labels.len(), out);
    let mut p = String::from("1.0");
    for (i, (l, &v)) in spec.inputs.iter().zip(&node.inputs).enumerate() {
        let st = crate::shapes::strides(shape(g, v));
        let terms: Vec<String> = l.iter().zip(&st).map(|(c, s)| format!("i{} * {s}", at(c))).collect();
        let _ = write!(p, " * (double)x{i}[{}]", offset(terms));
    }
    let _ = writeln!(out, "    acc = acc + {p};");
    out.push_str(&"    }\n".repeat(labels.len() - outs));
    let terms: Vec<String> = (0..outs).map(|d| format!("i{d} * {}", ost[d])).collect();
    let s = g.value(node.outputs[0]).ty.dtype.scalar;
    let _ = writeln!(
        out,
        "    y0[{}] = {};",
        offset(terms),
        super::elementwise::from_f64(s, "acc")
    );
    out.push_str(&"    }\n".repeat(outs));
    Ok(())
}

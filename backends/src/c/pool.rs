//! Float pooling over any number of spatial axes (max also on integer types): per plane
//! and output position a loop over the window's taps, skipping those in the padding.
//! An average divides by the taps inside the input, or with `count_include_pad` by those
//! inside the explicitly padded extent, as the evaluator does.

use super::shape;
use super::writer::f32_lit;
use crate::header;
use crate::shapes::strides;
use crate::{Lowering, need};
use kiln_ir::op::{Pool, PoolKind};
use kiln_ir::{Graph, NodeId, Scalar};
use std::fmt::Write;

pub(super) fn pool(out: &mut String, g: &Graph, n: NodeId, p: &Pool) -> Lowering {
    let node = g.node(n);
    let sc = g.value(node.inputs[0]).ty.dtype.scalar;
    let max = p.kind == PoolKind::Max;
    need(
        sc == Scalar::F32 || (max && !matches!(sc, Scalar::F16 | Scalar::Bool | Scalar::F64)),
        "a pool on this type",
    )?;
    need(!super::half_weight(g, n), "a binary16 constant operand")?;
    let xs = shape(g, node.inputs[0]);
    let os = shape(g, node.outputs[0]);
    let w = &p.window;
    let r = xs.len() - 2;
    let (isp, osp) = (&xs[2..], &os[2..]);
    let (ist, ost) = (strides(isp), strides(osp));
    let (pin, po): (usize, usize) = (isp.iter().product(), osp.iter().product());
    let t = header::c_type(sc);
    let ind = |k: usize| "    ".repeat(k);
    let _ = writeln!(out, "    for (int32_t c = 0; c < {}; ++c) {{", xs[0] * xs[1]);
    for (d, o) in osp.iter().enumerate() {
        let _ = writeln!(out, "{}for (int32_t o{d} = 0; o{d} < {o}; ++o{d}) {{", ind(d + 2));
    }
    let b = ind(r + 2);
    let init = match (p.kind, sc) {
        (PoolKind::Max, Scalar::F32) => "-1.0f / 0.0f".to_string(),
        (PoolKind::Max, s) => format!("({t}){}", super::reduce::lowest(s)),
        _ => "0.0f".into(),
    };
    let _ = writeln!(out, "{b}{t} acc = {init};\n{b}int32_t cnt = 0, cnt_pad = 0;");
    for d in 0..r {
        let _ = writeln!(
            out,
            "{}for (int32_t k{d} = 0; k{d} < {}; ++k{d}) {{",
            ind(r + 2 + d),
            w.kernel[d]
        );
    }
    let bb = ind(2 * r + 2);
    let mut inside_pad = Vec::new();
    let mut inside = Vec::new();
    let mut at = vec!["c * ".to_string() + &pin.to_string()];
    for d in 0..r {
        let _ = writeln!(
            out,
            "{bb}int32_t p{d} = o{d} * {} + k{d} * {} - {};",
            w.strides[d], w.dilations[d], w.pads[d]
        );
        inside_pad.push(format!("p{d} >= -{} && p{d} < {}", w.pads[d], isp[d] + w.pads[d + r]));
        inside.push(format!("p{d} >= 0 && p{d} < {}", isp[d]));
        at.push(format!("p{d} * {}", ist[d]));
    }
    let step = match p.kind {
        PoolKind::Max if sc == Scalar::F32 => "acc = (v > acc || v != v) ? v : acc;".to_string(),
        PoolKind::Max => "acc = v > acc ? v : acc;".to_string(),
        PoolKind::Avg { .. } => "acc = acc + v;".to_string(),
        PoolKind::Lp { p } => format!("acc = acc + kiln_powif(kiln_absf(v), {p});"),
    };
    let _ = writeln!(out, "{bb}if ({}) ++cnt_pad;", inside_pad.join(" && "));
    let _ = writeln!(
        out,
        "{bb}if ({}) {{ {t} v = x0[{}]; {step} ++cnt; }}",
        inside.join(" && "),
        at.join(" + ")
    );
    for d in (0..r).rev() {
        let _ = writeln!(out, "{}}}", ind(r + 2 + d));
    }
    let fin = match p.kind {
        PoolKind::Max => "acc".to_string(),
        PoolKind::Avg { count_include_pad } => {
            let c = if count_include_pad { "cnt_pad" } else { "cnt" };
            format!("acc / (float)({c} > 0 ? {c} : 1)")
        }
        PoolKind::Lp { p } => format!("powf(acc, 1.0f / {})", f32_lit(p as f32)),
    };
    let out_at: Vec<String> = (0..r).map(|d| format!("o{d} * {}", ost[d])).collect();
    let _ = writeln!(
        out,
        "{b}(void)cnt; (void)cnt_pad;\n{b}y0[c * {po} + {}] = {fin};",
        if out_at.is_empty() {
            "0".into()
        } else {
            out_at.join(" + ")
        }
    );
    for d in (0..r + 1).rev() {
        let _ = writeln!(out, "{}}}", ind(d + 1));
    }
    Ok(())
}

//! Resize through per-axis tap tables computed at compile time by the evaluator's own rule
//! (`kiln_ir::eval::resize_taps`, as the other backends): each output sums, in double and
//! in the evaluator's order, the product of one tap weight per axis times the input.

use super::shape;
use super::writer::{f32_lit, nest};
use crate::shapes::strides;
use crate::{Lowering, need};
use kiln_ir::op::Resize;
use kiln_ir::{Graph, NodeId};
use std::fmt::Write;

pub(super) fn resize(out: &mut String, g: &Graph, n: NodeId, rz: &Resize, progmem: bool) -> Lowering {
    need(super::f32_io(g, n), "float32 only")?;
    need(g.node(n).inputs.len() == 1, "run-time scales or sizes")?;
    need(!shape(g, g.node(n).inputs[0]).is_empty(), "a scalar")?;
    // on AVR the tables would be copied into RAM
    need(!progmem, "tap tables on a part without RAM to spare (AVR)")?;
    let node = g.node(n);
    let (xs, os) = (shape(g, node.inputs[0]).to_vec(), shape(g, node.outputs[0]).to_vec());
    let ist = strides(&xs);
    let r = xs.len();
    let mut counts = Vec::with_capacity(r);
    for d in 0..r {
        let taps = kiln_ir::eval::resize_taps(rz, d, xs[d], os[d]);
        let count = taps.iter().flatten().map(|t| t.len()).max().unwrap_or(1).max(1);
        let (mut idx, mut wts) = (Vec::new(), Vec::new());
        for t in &taps {
            for j in 0..count {
                match t.as_ref().map(|t| t.get(j)) {
                    Some(Some(&(i, w))) => {
                        idx.push(i.to_string());
                        wts.push(format!("{w:?}"));
                    }
                    // a missing tap weighs nothing; -1 marks an extrapolated position
                    Some(None) => {
                        idx.push("0".into());
                        wts.push("0.0".into());
                    }
                    None => {
                        idx.push("-1".into());
                        wts.push("0.0".into());
                    }
                }
            }
        }
        super::writer::array(out, "    static const ", "int32_t", &format!("ri{d}"), &idx);
        super::writer::array(out, "    static const ", "double", &format!("rw{d}"), &wts);
        counts.push(count);
    }
    let outside: Vec<String> = (0..r).map(|d| format!("ri{d}[i{d} * {}] < 0", counts[d])).collect();
    let mut taps = String::new();
    let tap = |d: usize| format!("i{d} * {} + k{d}", counts[d]);
    for (d, c) in counts.iter().enumerate() {
        let _ = writeln!(taps, "for (int32_t k{d} = 0; k{d} < {c}; ++k{d}) {{");
    }
    let w: Vec<String> = (0..r).map(|d| format!(" * rw{d}[{}]", tap(d))).collect();
    let off: Vec<String> = (0..r).map(|d| format!("ri{d}[{}] * {}", tap(d), ist[d])).collect();
    let _ = writeln!(
        taps,
        "    double w = 1.0{};\n    if (w != 0.0) acc = acc + w * (double)x0[{}];",
        w.concat(),
        off.join(" + ")
    );
    taps.push_str(&"}\n".repeat(r));
    let extrapolation = f32_lit(rz.extrapolation);
    nest(out, 1, &os, &[strides(&os)], &|o| {
        format!(
            "if ({}) {{\n    y0[{o0}] = {extrapolation};\n}} else {{\n    double acc = 0.0;\n{taps}    y0[{o0}] = (float)acc;\n}}",
            outside.join(" || "),
            o0 = o[0]
        )
    });
    Ok(())
}

//! A stable, line-oriented text form of a graph for dumps (`--print-after`), reviews and
//! pass tests. Nodes print in schedule order; values print as `%name: type`.

use crate::graph::{Graph, ValueDef, ValueId};
use crate::op::Op;
use crate::tensor::Tensor;
use std::fmt::Write;

fn small(t: &Tensor) -> Option<String> {
    (t.numel() <= 8).then(|| {
        let v = t.to_f64_vec();
        let items: Vec<String> = v.iter().map(|x| format!("{x}")).collect();
        format!(" = [{}]", items.join(", "))
    })
}

fn attrs(op: &Op) -> String {
    let d = format!("{op:?}");
    match d.find(['(', '{']) {
        Some(i) if !matches!(op, Op::Unary(_) | Op::Binary(_)) => d[i..].to_string(),
        _ => match op {
            Op::Unary(u) => {
                let s = format!("{u:?}");
                s.find('{').map(|i| s[i..].to_string()).unwrap_or_default()
            }
            Op::Binary(b) => {
                let s = format!("{b:?}");
                s.find('{').map(|i| s[i..].to_string()).unwrap_or_default()
            }
            _ => String::new(),
        },
    }
}

/// Renders `g`; errors only on a cyclic graph.
pub fn dump(g: &Graph) -> crate::Result<String> {
    let mut s = String::new();
    let name = |v: ValueId| format!("%{}", g.value(v).name);
    let _ = writeln!(s, "graph {} {{", g.name);
    for &v in g.inputs() {
        let _ = writeln!(s, "  in {}: {}", name(v), g.value(v).ty);
    }
    let order = g.topo_order()?;
    let mut consts: Vec<ValueId> = Vec::new();
    for &n in &order {
        for &v in &g.node(n).inputs {
            if matches!(g.value(v).def, ValueDef::Const(_)) && !consts.contains(&v) {
                consts.push(v);
            }
        }
    }
    for &v in g.outputs() {
        if matches!(g.value(v).def, ValueDef::Const(_)) && !consts.contains(&v) {
            consts.push(v);
        }
    }
    for v in consts {
        let t = g.const_value(v).expect("const");
        let _ = writeln!(
            s,
            "  const {}: {}{}",
            name(v),
            g.value(v).ty,
            small(t).unwrap_or_default()
        );
    }
    for n in order {
        let node = g.node(n);
        let outs: Vec<String> = node
            .outputs
            .iter()
            .map(|&o| format!("{}: {}", name(o), g.value(o).ty))
            .collect();
        let ins: Vec<String> = node.inputs.iter().map(|&i| name(i)).collect();
        let _ = writeln!(
            s,
            "  {} = {}({}){}  # {}",
            outs.join(", "),
            node.op.name(),
            ins.join(", "),
            attrs(&node.op),
            node.name
        );
    }
    let outs: Vec<String> = g.outputs().iter().map(|&v| name(v)).collect();
    let _ = writeln!(s, "  out {}", outs.join(", "));
    s.push_str("}\n");
    Ok(s)
}

//! Removes Identity nodes (Identity, inference-mode Dropout, single-input Sum/Max/Min) by
//! rewiring their consumers to the input. The output keeps its name, so graph outputs keep
//! the names users see. Kept on purpose: an Identity that copies a graph input or a constant
//! straight to a graph output (a backend needs a node to write the output buffer).
//! A Reshape of a Reshape reads the first one's input instead (only the last shape
//! matters), so chains of them, which layout changes at import leave, cost one copy.

use kiln_ir::{Graph, IrError, NodeId, Op, ValueDef};

pub fn run(g: &mut Graph) -> Result<bool, IrError> {
    let mut changed = false;
    for n in g.topo_order()? {
        if let Op::Reshape { .. } = g.node(n).op
            && let Some(p) = g.producer(g.node(n).inputs[0])
            && let Op::Reshape { .. } = g.node(p).op
        {
            let source = g.node(p).inputs[0];
            g.set_input(n, 0, source);
            changed = true;
        }
        if !is_noop(g, n) {
            continue;
        }
        let (x, y) = (g.node(n).inputs[0], g.node(n).outputs[0]);
        let x_is_source = !matches!(g.value(x).def, ValueDef::Node(..));
        if g.is_output(y) && (x_is_source || g.is_output(x)) {
            continue;
        }
        let name = g.value(y).name.clone();
        let y_is_output = g.is_output(y);
        g.replace_uses(y, x);
        g.remove_node(n);
        if y_is_output {
            g.rename(x, &name);
        }
        changed = true;
    }
    Ok(changed)
}

/// Whether node `n` produces exactly its (first) input.
fn is_noop(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    if node.outputs.len() != 1 || node.inputs.is_empty() {
        return false;
    }
    let (x, y) = (&g.value(node.inputs[0]).ty, &g.value(node.outputs[0]).ty);
    if x != y {
        return false;
    }
    match &node.op {
        Op::Identity | Op::Reshape { .. } | Op::Expand { .. } | Op::Cast { .. } => true,
        Op::Transpose { perm } => perm.iter().enumerate().all(|(i, &p)| i == p),
        Op::Pad { pads, .. } => pads.iter().all(|&p| p == 0),
        Op::Slice { axes } => axes.iter().all(|a| a.start == 0 && a.step == 1),
        Op::Tile { repeats } => repeats.iter().all(|&r| r == 1),
        Op::Concat { .. } => node.inputs.len() == 1,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::run;
    use crate::passes::check_rewrite;

    #[test]
    fn a_reshape_of_a_reshape_reads_the_first_input() {
        check_rewrite(
            run,
            "graph g {
  in %a: f32[1,4,1,1]
  %b: f32[1,1,1,4] = Reshape(%a) {shape=[1,1,1,4]}  # b
  %c: f32[1,4] = Reshape(%b) {shape=[1,4]}  # c
  %d: f32[1,1,1,4] = Relu(%b)  # d
  out %c, %d
}
",
            "graph g {
  in %a: f32[1,4,1,1]
  %b: f32[1,1,1,4] = Reshape(%a) {shape=[1,1,1,4]}  # b
  %c: f32[1,4] = Reshape(%a) {shape=[1,4]}  # c
  %d: f32[1,1,1,4] = Relu(%b)  # d
  out %c, %d
}
",
        );
    }
}

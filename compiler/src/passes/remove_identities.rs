//! Removes Identity nodes (Identity, inference-mode Dropout, single-input Sum/Max/Min) by
//! rewiring their consumers to the input. The output keeps its name, so graph outputs keep
//! the names users see. Kept on purpose: an Identity that copies a graph input or a constant
//! straight to a graph output (a backend needs a node to write the output buffer).

use kiln_ir::{Graph, IrError, Op, ValueDef};

pub fn run(g: &mut Graph) -> Result<bool, IrError> {
    let mut changed = false;
    for n in g.topo_order()? {
        if g.node(n).op != Op::Identity {
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

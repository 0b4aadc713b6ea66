//! Removes nodes none of whose outputs reach a graph output.

use kiln_ir::{Graph, IrError};

pub fn run(g: &mut Graph) -> Result<bool, IrError> {
    let mut changed = false;
    for n in g.topo_order()?.into_iter().rev() {
        let dead = g
            .node(n)
            .outputs
            .iter()
            .all(|&v| !g.is_output(v) && g.consumers(v).is_empty());
        if dead {
            g.remove_node(n);
            changed = true;
        }
    }
    Ok(changed)
}

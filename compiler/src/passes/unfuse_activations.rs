//! Takes an activation other than ReLU/Clip back out of the Conv or Gemm it was fused into,
//! as a node of its own: the quantizer folds ReLU and Clip into an integer product's clamp,
//! but any other function needs the product's own output range (calibrated on its value)
//! and an int8 table after it. The inverse of `fuse_activations` for those functions.

use kiln_ir::op::UnaryOp;
use kiln_ir::{Graph, IrError, Op};

pub fn run(g: &mut Graph) -> Result<bool, IrError> {
    let mut changed = false;
    for n in g.topo_order()? {
        let u = match g.op_mut(n) {
            Op::Conv(c) => c.fused.filter(|u| !matches!(u, UnaryOp::Relu | UnaryOp::Clip { .. })),
            Op::Gemm { fused, .. } => fused.filter(|u| !matches!(u, UnaryOp::Relu | UnaryOp::Clip { .. })),
            _ => None,
        };
        let Some(u) = u else { continue };
        match g.op_mut(n) {
            Op::Conv(c) => c.fused = None,
            Op::Gemm { fused, .. } => *fused = None,
            _ => unreachable!("matched above"),
        }
        let y = g.node(n).outputs[0];
        let (name, ty) = (g.value(y).name.clone(), g.value(y).ty.clone());
        let readers = g.consumers(y);
        let act_name = format!("{}:act", g.node(n).name);
        let (_, outs) = g.add_node_typed(&act_name, Op::Unary(u), vec![y], vec![(format!("{name}:act"), ty)]);
        let a = outs[0];
        for r in readers {
            let slots: Vec<usize> = (g.node(r).inputs.iter().enumerate())
                .filter(|(_, v)| **v == y)
                .map(|(i, _)| i)
                .collect();
            for s in slots {
                g.set_input(r, s, a);
            }
        }
        let outputs: Vec<_> = g.outputs().iter().map(|&o| if o == y { a } else { o }).collect();
        g.set_outputs(outputs);
        g.rename(y, &format!("{name}:pre"));
        g.rename(a, &name);
        changed = true;
    }
    Ok(changed)
}

//! Writes LayerNormalization and InstanceNormalization out as the ops they are made of,
//! before int8 calibration: `d = x - mean(x)`, `y = d / sqrt(mean(d * d) + eps) * scale +
//! bias`, the means over the normalised axes. Each of those has an integer form (see
//! `lower_sub_div`, which runs after this), so the normalisation becomes integer with a
//! calibrated range at every step instead of a float island.

use kiln_ir::op::{BinaryOp, ReduceKind, UnaryOp};
use kiln_ir::{Graph, IrError, NodeId, Op, Scalar, Tensor, TensorType, ValueId};

pub fn run(g: &mut Graph) -> Result<bool, IrError> {
    let mut changed = false;
    for n in g.topo_order()? {
        let node = g.node(n).clone();
        let x = node.inputs[0];
        let shape = g.value(x).ty.shape.clone();
        let (axes, eps, per_channel) = match node.op {
            Op::LayerNorm { axis, epsilon } => ((axis..shape.len()).collect::<Vec<_>>(), epsilon, false),
            Op::InstanceNorm { epsilon } if shape.len() >= 3 => ((2..shape.len()).collect(), epsilon, true),
            _ => continue,
        };
        let f32s = (node.inputs.iter().chain(&node.outputs)).all(|&v| g.value(v).ty.dtype.scalar == Scalar::F32);
        if !f32s || node.outputs.len() != 1 {
            continue;
        }
        let mut e = Expander {
            g,
            n,
            base: node.name.clone(),
        };
        let kept: Vec<usize> = (0..shape.len())
            .map(|a| if axes.contains(&a) { 1 } else { shape[a] })
            .collect();
        let mean = e.node("mean", reduce(&axes), vec![x], &kept);
        let d = e.node("centred", Op::Binary(BinaryOp::Sub), vec![x, mean], &shape);
        let d2 = e.node("squared", Op::Binary(BinaryOp::Mul), vec![d, d], &shape);
        let var = e.node("variance", reduce(&axes), vec![d2], &kept);
        let eps = e.constant("epsilon", Tensor::from_vec(vec![], vec![eps]));
        let ve = e.node("variance_eps", Op::Binary(BinaryOp::Add), vec![var, eps], &kept);
        let std = e.node("std", Op::Unary(UnaryOp::Sqrt), vec![ve], &kept);
        let mut y = e.node("normalised", Op::Binary(BinaryOp::Div), vec![d, std], &shape);
        // InstanceNorm's scale and bias are per channel: shaped to broadcast over NC*
        let mut channel = vec![1; shape.len().saturating_sub(1)];
        for (slot, (what, op)) in [("scaled", BinaryOp::Mul), ("shifted", BinaryOp::Add)]
            .into_iter()
            .enumerate()
        {
            let Some(&p) = node.inputs.get(slot + 1) else { break };
            let p = match e.g.const_value(p) {
                Some(c) if per_channel => {
                    channel[0] = c.numel();
                    let t = (**c).clone().reshaped(channel.clone());
                    e.constant(what, t)
                }
                _ => p,
            };
            y = e.node(what, Op::Binary(op), vec![y, p], &shape);
        }
        let out = node.outputs[0];
        for r in e.g.consumers(out) {
            for s in 0..e.g.node(r).inputs.len() {
                if e.g.node(r).inputs[s] == out {
                    e.g.set_input(r, s, y);
                }
            }
        }
        let outputs: Vec<ValueId> = e.g.outputs().iter().map(|&o| if o == out { y } else { o }).collect();
        e.g.set_outputs(outputs);
        let name = e.g.value(out).name.clone();
        e.g.rename(out, &format!("{name}:unused"));
        e.g.rename(y, &name);
        changed = true;
    }
    if changed {
        super::eliminate_dead_nodes::run(g)?;
    }
    Ok(changed)
}

fn reduce(axes: &[usize]) -> Op {
    Op::Reduce {
        kind: ReduceKind::Mean,
        axes: axes.to_vec(),
        keep_dims: true,
    }
}

/// Adds the ops of one normalisation, named after it.
struct Expander<'a> {
    g: &'a mut Graph,
    n: NodeId,
    base: String,
}

impl Expander<'_> {
    fn node(&mut self, what: &str, op: Op, inputs: Vec<ValueId>, shape: &[usize]) -> ValueId {
        let ty = TensorType::new(
            self.g.value(self.g.node(self.n).inputs[0]).ty.dtype.clone(),
            shape.to_vec(),
        );
        let name = format!("{}:{what}", self.base);
        self.g.add_node_typed(&name, op, inputs, vec![(name.clone(), ty)]).1[0]
    }

    fn constant(&mut self, what: &str, t: Tensor) -> ValueId {
        self.g.add_const(&format!("{}:{what}", self.base), t)
    }
}

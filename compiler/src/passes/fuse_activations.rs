//! Folds an activation into the Conv or Gemm that feeds it, so a backend applies it to each
//! result before storing instead of making another pass over memory. Same arithmetic, one
//! op fewer. Not fused: producers read by anything else, or already carrying an activation.

use kiln_ir::op::UnaryOp;
use kiln_ir::{Graph, IrError, Op, ValueDef};

fn is_activation(u: UnaryOp) -> bool {
    use UnaryOp::*;
    matches!(
        u,
        Relu | LeakyRelu { .. }
            | Clip { .. }
            | HardSigmoid { .. }
            | HardSwish
            | Sigmoid
            | Tanh
            | Elu { .. }
            | Selu { .. }
            | Softplus
            | Gelu { .. }
            | Mish
    )
}

pub fn run(g: &mut Graph) -> Result<bool, IrError> {
    run_where(g, |_| true)
}

/// [`run`] for the activations `keep` accepts (the integer import fuses only ReLU and Clip,
/// which become a product's clamp; any other keeps the model's own parameters around it).
pub fn run_where(g: &mut Graph, keep: impl Fn(UnaryOp) -> bool) -> Result<bool, IrError> {
    let mut changed = false;
    for n in g.topo_order()? {
        if !g.contains_node(n) {
            continue;
        }
        let Op::Unary(u) = g.node(n).op else { continue };
        let x = g.node(n).inputs[0];
        let Some(p) = g.producer(x) else { continue };
        if !is_activation(u)
            || !keep(u)
            || g.consumers(x).len() != 1
            || g.is_output(x)
            || !matches!(g.value(x).def, ValueDef::Node(..))
        {
            continue;
        }
        let slot = match g.op_mut(p) {
            Op::Conv(c) if c.fused.is_none() => &mut c.fused,
            Op::Gemm { fused, .. } if fused.is_none() => fused,
            _ => continue,
        };
        *slot = Some(u);
        let y = g.node(n).outputs[0];
        let name = g.value(y).name.clone();
        g.replace_uses(y, x);
        g.remove_node(n);
        g.rename(x, &name);
        changed = true;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::run;
    use crate::passes::check_rewrite;

    #[test]
    fn an_activation_folds_into_its_only_reader() {
        check_rewrite(
            run,
            "graph g {
  in %x: f32[1,4]
  in %w: f32[4,2]
  %y: f32[1,2] = Gemm(%x, %w) {alpha=1 beta=1 trans_a=false trans_b=false}  # fc
  %z: f32[1,2] = Clip(%y) {min=0 max=6}  # relu6
  out %z
}
",
            "graph g {
  in %x: f32[1,4]
  in %w: f32[4,2]
  %z: f32[1,2] = Gemm(%x, %w) {alpha=1 beta=1 trans_a=false trans_b=false fused=Clip { min: 0.0, max: 6.0 }}  # fc
  out %z
}
",
        );
    }

    #[test]
    fn a_product_read_twice_keeps_its_activation_apart() {
        let text = "graph g {
  in %x: f32[1,4]
  in %w: f32[4,2]
  %y: f32[1,2] = Gemm(%x, %w) {alpha=1 beta=1 trans_a=false trans_b=false}  # fc
  %z: f32[1,2] = Relu(%y)  # relu
  out %z, %y
}
";
        check_rewrite(run, text, text);
    }
}

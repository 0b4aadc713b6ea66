//! Rewrites Sub and Div into Add and Mul before int8 calibration: `a - b` becomes
//! `a + (-b)` and `a / b` becomes `a * (1 / b)`, with the negation and reciprocal as ops of
//! their own (or folded into a constant operand). Integer Add and Mul exist and a one-input
//! function is an int8 table, so the calibrated ranges of `-b` and `1 / b` are all the
//! integer graph needs; a normalisation's `x - mean` and `x / sqrt(var + eps)` no longer
//! leave a float island. A constant scalar operand is left alone: the quantizer turns such
//! a node into one table, which is exact.

use kiln_ir::op::{BinaryOp, UnaryOp};
use kiln_ir::{Graph, IrError, Op, Scalar, Tensor};

pub fn run(g: &mut Graph) -> Result<bool, IrError> {
    let mut changed = false;
    for n in g.topo_order()? {
        let Op::Binary(b @ (BinaryOp::Sub | BinaryOp::Div)) = g.node(n).op else {
            continue;
        };
        let node = g.node(n).clone();
        let f32s = (node.inputs.iter().chain(&node.outputs)).all(|&v| g.value(v).ty.dtype.scalar == Scalar::F32);
        let scalar = |i: usize| g.const_value(node.inputs[i]).is_some_and(|c| c.numel() == 1);
        let both = node.inputs.iter().all(|&v| g.const_value(v).is_some());
        if !f32s || both || scalar(0) || scalar(1) {
            continue;
        }
        let (into, unary, f): (_, _, fn(f32) -> f32) = match b {
            BinaryOp::Sub => (BinaryOp::Add, UnaryOp::Neg, |x| -x),
            _ => (BinaryOp::Mul, UnaryOp::Reciprocal, |x| 1.0 / x),
        };
        let rhs = node.inputs[1];
        let name = format!("{}:{}", g.value(rhs).name, unary.name().to_lowercase());
        let v = match g.const_value(rhs) {
            // a zero divisor has no finite reciprocal: the division stays as it is
            Some(c) if b == BinaryOp::Div && c.to_f32_vec().contains(&0.0) => continue,
            Some(c) => {
                let t = Tensor::from_vec(c.shape.clone(), c.to_f32_vec().into_iter().map(f).collect());
                g.add_const(&name, t)
            }
            None => {
                let ty = g.value(rhs).ty.clone();
                let node_name = format!("{}:{}", node.name, unary.name().to_lowercase());
                g.add_node_typed(&node_name, Op::Unary(unary), vec![rhs], vec![(name, ty)])
                    .1[0]
            }
        };
        g.set_input(n, 1, v);
        *g.op_mut(n) = Op::Binary(into);
        changed = true;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::run;
    use crate::passes::check_rewrite;

    #[test]
    fn sub_and_div_become_add_and_mul() {
        check_rewrite(
            run,
            "graph g {
  in %a: f32[2,3]
  in %b: f32[3]
  const %c: f32[3] = [2, 4, 0.5]
  %d: f32[2,3] = Sub(%a, %b)  # sub
  %e: f32[2,3] = Div(%d, %c)  # div
  out %e
}
",
            "graph g {
  in %a: f32[2,3]
  in %b: f32[3]
  const %c:reciprocal: f32[3] = [0.5, 0.25, 2]
  %b:neg: f32[3] = Neg(%b)  # sub:neg
  %d: f32[2,3] = Add(%a, %b:neg)  # sub
  %e: f32[2,3] = Mul(%d, %c:reciprocal)  # div
  out %e
}
",
        );
    }
}

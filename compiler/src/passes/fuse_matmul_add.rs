//! Turns `Add(MatMul(x, W), b)` with a constant 2-D `W` and a constant per-output bias into
//! one `Gemm(x, W, b)`, the form TensorFlow exports as two ops. Same float arithmetic (the
//! product, then one add per element); one op and one intermediate tensor fewer, and the
//! quantizer can then keep the bias in int32 instead of rounding the product to int8 first.
//! Not fused: inputs of rank other than 2, a product read by anything else, a bias that
//! broadcasts over more than the last axis.

use kiln_ir::op::BinaryOp;
use kiln_ir::{Graph, IrError, Op, ValueDef, ValueId};

pub fn run(g: &mut Graph) -> Result<bool, IrError> {
    Ok(!run_where(g, |_| true)?.is_empty())
}

/// Fuses where `allow(product)` holds; returns each fused `(sum, product)` pair (the Gemm
/// takes over the product's value, so a caller can move what it knew about the sum).
pub fn run_where(g: &mut Graph, allow: impl Fn(ValueId) -> bool) -> Result<Vec<(ValueId, ValueId)>, IrError> {
    let mut fused = Vec::new();
    for n in g.topo_order()? {
        if !g.contains_node(n) || g.node(n).op != Op::Binary(BinaryOp::Add) {
            continue;
        }
        let (a, b) = (g.node(n).inputs[0], g.node(n).inputs[1]);
        // The product may be either operand of the Add.
        let (prod, bias) = if g.const_value(b).is_some() { (a, b) } else { (b, a) };
        let Some(p) = g.producer(prod) else { continue };
        if g.node(p).op != Op::MatMul
            || !allow(prod)
            || g.consumers(prod).len() != 1
            || g.is_output(prod)
            || !matches!(g.value(prod).def, ValueDef::Node(..))
        {
            continue;
        }
        let (x, w) = (g.node(p).inputs[0], g.node(p).inputs[1]);
        let (Some(wt), Some(bt)) = (g.const_value(w), g.const_value(bias)) else {
            continue;
        };
        let ns = g.value(x).ty.shape.len();
        if ns != 2 || wt.shape.len() != 2 || g.value(x).ty.dtype.scalar != g.value(bias).ty.dtype.scalar {
            continue;
        }
        let cols = wt.shape[1];
        let bias_ok = bt.numel() == cols && bt.shape.iter().rev().skip(1).all(|&d| d == 1);
        if !bias_ok || g.value(g.node(n).outputs[0]).ty.shape != g.value(prod).ty.shape {
            continue;
        }
        let b1 = bt.as_ref().clone().reshaped(vec![cols]);
        let name = format!("{}:bias", g.value(bias).name);
        let bv = g.add_const(&g.fresh_name(&name), b1);
        let y = g.node(n).outputs[0];
        let yname = g.value(y).name.clone();
        *g.op_mut(p) = Op::Gemm {
            alpha: 1.0,
            beta: 1.0,
            trans_a: false,
            trans_b: false,
            fused: None,
        };
        g.push_input(p, bv);
        g.replace_uses(y, prod);
        g.remove_node(n);
        g.rename(prod, &yname);
        fused.push((y, prod));
    }
    Ok(fused)
}

//! Folds an inference BatchNormalization into the Conv or Gemm that feeds it, when that
//! producer has constant weights and no other reader: `y = a * (W x + b) + c` becomes
//! `(a W) x + (a b + c)` with `a = scale / sqrt(var + eps)` and `c = bias - mean * a`.
//! Not fused (left as BatchNorm): producers read by other nodes, non-constant parameters,
//! ConvTranspose producers.

use kiln_ir::{Graph, IrError, NodeId, Op, Scalar, Tensor, ValueDef};

pub fn run(g: &mut Graph) -> Result<bool, IrError> {
    let mut changed = false;
    for n in g.topo_order()? {
        if g.contains_node(n) && matches!(g.node(n).op, Op::BatchNorm { .. }) {
            changed |= fuse(g, n)?;
        }
    }
    Ok(changed)
}

/// Per-channel `(a, c)` of a BatchNorm with constant parameters.
fn affine(g: &Graph, bn: NodeId) -> Option<(Vec<f64>, Vec<f64>)> {
    let Op::BatchNorm { epsilon } = g.node(bn).op else {
        return None;
    };
    let p: Vec<Vec<f64>> = g.node(bn).inputs[1..]
        .iter()
        .map(|&v| g.const_value(v).map(|t| t.to_f64_vec()))
        .collect::<Option<_>>()?;
    let a: Vec<f64> = p[0]
        .iter()
        .zip(&p[3])
        .map(|(s, v)| s / (v + epsilon as f64).sqrt())
        .collect();
    let c: Vec<f64> = a.iter().zip(&p[1]).zip(&p[2]).map(|((a, b), m)| b - m * a).collect();
    Some((a, c))
}

fn float_const(like: &Tensor, shape: Vec<usize>, v: Vec<f64>) -> Tensor {
    Tensor::new(shape, kiln_ir::Data::F64(v).cast(like.data.scalar()))
}

fn fuse(g: &mut Graph, bn: NodeId) -> Result<bool, IrError> {
    let x = g.node(bn).inputs[0];
    let Some(p) = g.producer(x) else { return Ok(false) };
    if g.consumers(x).len() != 1 || g.is_output(x) || !matches!(g.value(x).def, ValueDef::Node(..)) {
        return Ok(false);
    }
    let Some((a, c)) = affine(g, bn) else { return Ok(false) };
    let pnode = g.node(p).clone();
    if !matches!(pnode.op, Op::Conv(_) | Op::Gemm { .. }) {
        return Ok(false);
    }
    let Some(w) = g.const_value(pnode.inputs[1]).cloned() else {
        return Ok(false);
    };
    if !matches!(w.data.scalar(), Scalar::F32 | Scalar::F64) {
        return Ok(false);
    }
    let bias = match pnode.inputs.get(2) {
        Some(&b) => match g.const_value(b) {
            Some(t) => Some(t.clone()),
            None => return Ok(false),
        },
        None => None,
    };
    let m = a.len();
    let wv = w.to_f64_vec();
    let (new_w, new_b, bias_shape) = match &pnode.op {
        Op::Conv(_) if w.shape[0] == m => {
            let per = wv.len() / m;
            let nw: Vec<f64> = wv.iter().enumerate().map(|(i, &x)| x * a[i / per]).collect();
            let b = bias.map(|t| t.to_f64_vec()).unwrap_or_else(|| vec![0.0; m]);
            let nb: Vec<f64> = (0..m).map(|i| b[i] * a[i] + c[i]).collect();
            (nw, nb, vec![m])
        }
        Op::Gemm { trans_b, beta, .. } if g.value(x).ty.shape.len() == 2 && g.value(x).ty.shape[1] == m => {
            let cols = |i: usize| if *trans_b { i / w.shape[1] } else { i % w.shape[1] };
            let nw: Vec<f64> = wv.iter().enumerate().map(|(i, &x)| x * a[cols(i)]).collect();
            let (cv, cshape) = match &bias {
                Some(t) => {
                    // C broadcast to [rows, m]: scale each column.
                    let full = kiln_ir::shape::broadcast(&t.shape, &[1, m]).unwrap_or_else(|| vec![1, m]);
                    let e = kiln_ir::eval::eval_node(
                        &Op::Expand { shape: full.clone() },
                        &[t],
                        &[kiln_ir::TensorType::new(t.data.scalar(), full.clone())],
                    )?;
                    (e[0].to_f64_vec(), full)
                }
                None => (vec![0.0; m], vec![m]),
            };
            let nb: Vec<f64> = cv
                .iter()
                .enumerate()
                .map(|(i, &v)| v * *beta as f64 * a[i % m] + c[i % m])
                .collect();
            (nw, nb, cshape)
        }
        _ => return Ok(false),
    };
    let wname = format!("{}/fused_w", pnode.name);
    let bname = format!("{}/fused_b", pnode.name);
    let wc = g.add_const(&wname, float_const(&w, w.shape.clone(), new_w));
    let bc = g.add_const(&bname, float_const(&w, bias_shape, new_b));
    g.set_input(p, 1, wc);
    if pnode.inputs.len() > 2 {
        g.set_input(p, 2, bc);
    } else {
        g.push_input(p, bc);
    }
    if let Op::Gemm { beta, .. } = g.op_mut(p) {
        *beta = 1.0;
    }
    let y = g.node(bn).outputs[0];
    let name = g.value(y).name.clone();
    g.replace_uses(y, x);
    g.remove_node(bn);
    g.rename(x, &name);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::run;
    use crate::passes::check_rewrite;

    #[test]
    fn a_batch_norm_folds_into_the_convolution_before_it() {
        check_rewrite(
            run,
            "graph g {
  in %x: f32[1,2,3,3]
  const %w: f32[2,1,1,1] = [1, 2]
  const %s: f32[2] = [2, 1]
  const %b: f32[2] = [1, -1]
  const %m: f32[2] = [0, 3]
  const %v: f32[2] = [1, 4]
  %c: f32[1,2,3,3] = Conv(%x, %w) {kernel=[1,1] strides=[1,1] dilations=[1,1] pads=[0,0,0,0] group=2}  # conv
  %y: f32[1,2,3,3] = BatchNorm(%c, %s, %b, %m, %v) {epsilon=0}  # bn
  out %y
}
",
            // per channel k = scale / sqrt(var): w * k, and bias - mean * k
            "graph g {
  in %x: f32[1,2,3,3]
  const %conv/fused_w: f32[2,1,1,1] = [2, 1]
  const %conv/fused_b: f32[2] = [1, -2.5]
  %y: f32[1,2,3,3] = Conv(%x, %conv/fused_w, %conv/fused_b) {kernel=[1,1] strides=[1,1] dilations=[1,1] pads=[0,0,0,0] group=2}  # conv
  out %y
}
",
        );
    }
}

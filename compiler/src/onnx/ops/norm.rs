//! Normalizations and the softmax family.

use crate::onnx::proto::NodeProto;
use crate::onnx::{Attrs, Ctx, ImportError};
use kiln_ir::op::{BinaryOp, ReduceKind, UnaryOp};
use kiln_ir::{Op, Tensor, ValueId};

fn only_first_output(cx: &Ctx, n: &NodeProto) -> Result<(), ImportError> {
    if n.output.iter().skip(1).any(|o| !o.is_empty()) {
        return Err(cx.err("only the first output is supported (training/statistics outputs are not)"));
    }
    Ok(())
}

pub fn batch_norm(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let a = Attrs::of(n);
    if a.i("training_mode", 0) != 0 {
        return Err(cx.err("training_mode = 1 is not supported by an inference compiler"));
    }
    only_first_output(cx, n)?;
    let ins = (0..5).map(|i| cx.req(n, i)).collect::<Result<Vec<_>, _>>()?;
    cx.add(
        n,
        Op::BatchNorm {
            epsilon: a.f("epsilon", 1e-5),
        },
        ins,
    )
}

pub fn instance_norm(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let ins = (0..3).map(|i| cx.req(n, i)).collect::<Result<Vec<_>, _>>()?;
    cx.add(
        n,
        Op::InstanceNorm {
            epsilon: Attrs::of(n).f("epsilon", 1e-5),
        },
        ins,
    )
}

pub fn layer_norm(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let a = Attrs::of(n);
    let x = cx.req(n, 0)?;
    let r = cx.rank(x);
    let axis = cx.axis(a.i("axis", -1), r)?;
    let epsilon = a.f("epsilon", 1e-5);
    let mut ins = vec![x, cx.req(n, 1)?];
    ins.extend(cx.input(n, 2));
    let mut outs = cx.add_first(n, Op::LayerNorm { axis, epsilon }, ins)?;
    // The optional Mean and InvStdDev outputs are rebuilt from reductions when asked for.
    if n.output.iter().skip(1).any(|o| !o.is_empty()) {
        let axes: Vec<usize> = (axis..r).collect();
        let mean_op = Op::Reduce {
            kind: ReduceKind::Mean,
            axes,
            keep_dims: true,
        };
        let mean = cx.add_aux("mean", mean_op.clone(), vec![x])?;
        let d = cx.add_aux("centered", Op::Binary(BinaryOp::Sub), vec![x, mean])?;
        let sq = cx.add_aux("squared", Op::Binary(BinaryOp::Mul), vec![d, d])?;
        let var = cx.add_aux("variance", mean_op, vec![sq])?;
        let eps = Tensor::scalar_f32(epsilon).cast(cx.ty(x).dtype.scalar);
        let eps = cx.constant(&format!("{}/epsilon", cx.node_name()), eps);
        let ve = cx.add_aux("variance_eps", Op::Binary(BinaryOp::Add), vec![var, eps])?;
        let sd = cx.add_aux("stddev", Op::Unary(UnaryOp::Sqrt), vec![ve])?;
        let inv = cx.add_aux("inv_stddev", Op::Unary(UnaryOp::Reciprocal), vec![sd])?;
        outs.extend([mean, inv]);
    }
    Ok(outs)
}

pub fn lrn(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let a = Attrs::of(n);
    let size = a.i("size", 0);
    if size <= 0 {
        return Err(cx.err("size must be positive"));
    }
    let x = cx.req(n, 0)?;
    let op = Op::Lrn {
        size: size as usize,
        alpha: a.f("alpha", 1e-4),
        beta: a.f("beta", 0.75),
        bias: a.f("bias", 1.0),
    };
    cx.add(n, op, vec![x])
}

/// Softmax, LogSoftmax, Hardmax. Before opset 13 they normalize over all axes from `axis` on
/// (the input coerced to 2-D); that form lowers to Reshape, a last-axis op, Reshape.
pub fn softmax(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let x = cx.req(n, 0)?;
    let shape = cx.ty(x).shape.clone();
    let legacy = cx.opset < 13;
    let axis = cx.axis(Attrs::of(n).i("axis", if legacy { 1 } else { -1 }), shape.len().max(1))?;
    let make = |axis| match n.op_type.as_str() {
        "Softmax" => Op::Softmax { axis },
        "LogSoftmax" => Op::LogSoftmax { axis },
        _ => Op::Hardmax { axis },
    };
    if !legacy || axis + 1 == shape.len() {
        return cx.add(n, make(axis), vec![x]);
    }
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis..].iter().product();
    let flat = cx.add_aux(
        "flatten",
        Op::Reshape {
            shape: vec![outer, inner],
        },
        vec![x],
    )?;
    let y = cx.add_aux("2d", make(1), vec![flat])?;
    cx.add(n, Op::Reshape { shape }, vec![y])
}

//! Broadcasting binary ops, their variadic forms (lowered to chains) and Where.

use crate::onnx::proto::NodeProto;
use crate::onnx::{Attrs, Ctx, ImportError};
use kiln_ir::op::BinaryOp;
use kiln_ir::{Op, Tensor, ValueId};

pub fn binary(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    use BinaryOp::*;
    let a = Attrs::of(n);
    let op = match n.op_type.as_str() {
        "Add" => Add,
        "Sub" => Sub,
        "Mul" => Mul,
        "Div" => Div,
        "Pow" => Pow,
        "Mod" => Mod {
            fmod: a.i("fmod", 0) != 0,
        },
        "PRelu" => PRelu,
        "Equal" => Equal,
        "Less" => Less,
        "LessOrEqual" => LessOrEqual,
        "Greater" => Greater,
        "GreaterOrEqual" => GreaterOrEqual,
        "And" => And,
        "Or" => Or,
        "Xor" => Xor,
        "BitwiseAnd" => BitwiseAnd,
        "BitwiseOr" => BitwiseOr,
        "BitwiseXor" => BitwiseXor,
        "BitShift" => match a.s("direction", "").as_str() {
            "LEFT" => BitShiftLeft,
            "RIGHT" => BitShiftRight,
            d => return Err(cx.err(format!("direction `{d}` is not LEFT or RIGHT"))),
        },
        _ => return Err(cx.err("not a binary op")),
    };
    let (x, y) = (cx.req(n, 0)?, cx.req(n, 1)?);
    if a.i("broadcast", 0) != 0 && cx.ty(x).shape != cx.ty(y).shape {
        return Err(cx.err("the legacy (opset < 7) `broadcast`/`axis` attributes are not supported"));
    }
    if let Mod { fmod: false } = op
        && cx.ty(x).dtype.scalar.is_float()
    {
        return Err(cx.err("Mod on floats requires fmod = 1"));
    }
    cx.add(n, Op::Binary(op), vec![x, y])
}

/// Sum/Mean/Max/Min of any number of inputs, as a left fold of binary ops.
pub fn variadic(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let op = match n.op_type.as_str() {
        "Sum" | "Mean" => BinaryOp::Add,
        "Max" => BinaryOp::Max,
        _ => BinaryOp::Min,
    };
    let xs = cx.inputs(n);
    let Some((&first, rest)) = xs.split_first() else {
        return Err(cx.err("needs at least one input"));
    };
    let mut acc = first;
    for (i, &x) in rest.iter().enumerate() {
        acc = cx.add_aux(&format!("{}{i}", op.name()), Op::Binary(op), vec![acc, x])?;
    }
    if n.op_type == "Mean" && xs.len() > 1 {
        let s = cx.ty(acc).dtype.scalar;
        let count = Tensor::scalar_f32(xs.len() as f32).cast(s);
        let c = cx.constant(&format!("{}/count", cx.node_name()), count);
        return cx.add(n, Op::Binary(BinaryOp::Div), vec![acc, c]);
    }
    cx.add(n, Op::Identity, vec![acc])
}

pub fn where_(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let (c, x, y) = (cx.req(n, 0)?, cx.req(n, 1)?, cx.req(n, 2)?);
    cx.add(n, Op::Where, vec![c, x, y])
}

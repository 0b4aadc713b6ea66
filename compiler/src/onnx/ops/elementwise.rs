//! One-input elementwise ops: a name-to-`UnaryOp` table plus Clip, whose bounds may be inputs.

use crate::onnx::proto::NodeProto;
use crate::onnx::{Attrs, Ctx, ImportError};
use kiln_ir::op::{BinaryOp, UnaryOp};
use kiln_ir::{Op, Tensor, ValueId};

fn unary_op(n: &NodeProto) -> Option<UnaryOp> {
    use UnaryOp::*;
    let a = Attrs::of(n);
    Some(match n.op_type.as_str() {
        "Abs" => Abs,
        "Acos" => Acos,
        "Acosh" => Acosh,
        "Asin" => Asin,
        "Asinh" => Asinh,
        "Atan" => Atan,
        "Atanh" => Atanh,
        "BitwiseNot" => BitwiseNot,
        "Ceil" => Ceil,
        "Celu" => Celu {
            alpha: a.f("alpha", 1.0),
        },
        "Cos" => Cos,
        "Cosh" => Cosh,
        "Elu" => Elu {
            alpha: a.f("alpha", 1.0),
        },
        "Erf" => Erf,
        "Exp" => Exp,
        "Floor" => Floor,
        "Gelu" => Gelu {
            tanh_approx: a.s("approximate", "none") == "tanh",
        },
        "HardSigmoid" => HardSigmoid {
            alpha: a.f("alpha", 0.2),
            beta: a.f("beta", 0.5),
        },
        "HardSwish" => HardSwish,
        "IsInf" => IsInf {
            positive: a.i("detect_positive", 1) != 0,
            negative: a.i("detect_negative", 1) != 0,
        },
        "IsNaN" => IsNaN,
        "LeakyRelu" => LeakyRelu {
            alpha: a.f("alpha", 0.01),
        },
        "Log" => Log,
        "Mish" => Mish,
        "Neg" => Neg,
        "Not" => Not,
        "Reciprocal" => Reciprocal,
        "Relu" => Relu,
        "Round" => Round,
        "Selu" => Selu {
            alpha: a.f("alpha", 1.673_263_2),
            gamma: a.f("gamma", 1.050_701),
        },
        "Sigmoid" => Sigmoid,
        "Sign" => Sign,
        "Sin" => Sin,
        "Sinh" => Sinh,
        "Softplus" => Softplus,
        "Softsign" => Softsign,
        "Sqrt" => Sqrt,
        "Tan" => Tan,
        "Tanh" => Tanh,
        "ThresholdedRelu" => ThresholdedRelu {
            alpha: a.f("alpha", 1.0),
        },
        _ => return None,
    })
}

pub fn unary(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let op = unary_op(n).ok_or_else(|| cx.err("not an elementwise op"))?;
    if let UnaryOp::Gelu { .. } = op {
        let approx = Attrs::of(n).s("approximate", "none");
        if approx != "none" && approx != "tanh" {
            return Err(cx.err(format!("approximate `{approx}` is not one of none|tanh")));
        }
    }
    let x = cx.req(n, 0)?;
    cx.add(n, Op::Unary(op), vec![x])
}

pub fn clip(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let x = cx.req(n, 0)?;
    let a = Attrs::of(n);
    let scalar = cx.ty(x).dtype.scalar;
    if scalar.is_int() {
        // Integer clip: Max/Min with constants of the input's own type keeps exact semantics.
        let mut v = x;
        for (slot, op, suffix) in [(1, BinaryOp::Max, "min"), (2, BinaryOp::Min, "max")] {
            if let Some(t) = cx.const_input(n, slot)? {
                let c = cx.constant(
                    &format!("{}/{suffix}", cx.node_name()),
                    Tensor::clone(&t).reshaped(vec![]),
                );
                v = cx.add_aux(suffix, Op::Binary(op), vec![v, c])?;
            }
        }
        let out = cx.add(n, Op::Identity, vec![v])?;
        return Ok(out);
    }
    let bound = |cx: &Ctx, slot: usize, attr: &str, default: f32| -> Result<f32, ImportError> {
        if cx.opset < 11 {
            return Ok(a.f(attr, default));
        }
        Ok(match cx.const_input(n, slot)? {
            Some(t) if t.numel() == 1 => t.to_f64_vec()[0] as f32,
            Some(_) => return Err(cx.err(format!("{attr} must be a scalar"))),
            None => default,
        })
    };
    let min = bound(cx, 1, "min", f32::NEG_INFINITY)?;
    let max = bound(cx, 2, "max", f32::INFINITY)?;
    cx.add(n, Op::Unary(UnaryOp::Clip { min, max }), vec![x])
}

//! Reduce* ops; axes come from the attribute (older opsets) or a constant input.

use crate::onnx::proto::NodeProto;
use crate::onnx::{Attrs, Ctx, ImportError};
use kiln_ir::op::ReduceKind;
use kiln_ir::{Op, ValueId};

pub fn reduce(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    use ReduceKind::*;
    let a = Attrs::of(n);
    let kind = match n.op_type.as_str() {
        "ReduceSum" => Sum,
        "ReduceMean" => Mean,
        "ReduceMax" => Max,
        "ReduceMin" => Min,
        "ReduceProd" => Prod,
        "ReduceL1" => L1,
        "ReduceL2" => L2,
        "ReduceLogSum" => LogSum,
        "ReduceLogSumExp" => LogSumExp,
        _ => SumSquare,
    };
    let x = cx.req(n, 0)?;
    let r = cx.rank(x);
    let given = match a.ints("axes") {
        Some(v) => Some(v),
        None => cx.const_ints(n, 1)?,
    };
    let mut axes = given
        .unwrap_or_default()
        .iter()
        .map(|&v| cx.axis(v, r))
        .collect::<Result<Vec<_>, _>>()?;
    axes.sort();
    axes.dedup();
    if axes.is_empty() && a.i("noop_with_empty_axes", 0) != 0 {
        return cx.add(n, Op::Identity, vec![x]);
    }
    if axes.is_empty() {
        axes = (0..r).collect();
    }
    cx.add(
        n,
        Op::Reduce {
            kind,
            axes,
            keep_dims: a.i("keepdims", 1) != 0,
        },
        vec![x],
    )
}

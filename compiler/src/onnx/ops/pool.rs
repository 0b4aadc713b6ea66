//! MaxPool, AveragePool, LpPool and their global forms.

use super::conv::window;
use crate::onnx::proto::NodeProto;
use crate::onnx::{Attrs, Ctx, ImportError};
use kiln_ir::op::{Pool, PoolKind};
use kiln_ir::{Op, ValueId};

fn kind(cx: &Ctx, n: &NodeProto) -> Result<PoolKind, ImportError> {
    let a = Attrs::of(n);
    Ok(match n.op_type.as_str() {
        "MaxPool" | "GlobalMaxPool" => PoolKind::Max,
        "AveragePool" | "GlobalAveragePool" => PoolKind::Avg {
            count_include_pad: a.i("count_include_pad", 0) != 0,
        },
        _ => {
            let p = a.i("p", 2);
            if !(1..=16).contains(&p) {
                return Err(cx.err(format!("p = {p} is not supported")));
            }
            PoolKind::Lp { p: p as u32 }
        }
    })
}

pub fn pool(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let x = cx.req(n, 0)?;
    if n.op_type == "MaxPool" && n.output.len() > 1 && !n.output[1].is_empty() {
        return Err(cx.err("the Indices output of MaxPool is not supported"));
    }
    let op = pool_op(cx, n, x, kind(cx, n)?)?;
    cx.add(n, op, vec![x])
}

/// The pooling of `kind` node `n`'s attributes describe over input `x` (shared with
/// QLinearAveragePool).
pub(super) fn pool_op(cx: &Ctx, n: &NodeProto, x: ValueId, kind: PoolKind) -> Result<Op, ImportError> {
    let a = Attrs::of(n);
    let xs = cx.ty(x).shape.clone();
    if xs.len() < 3 {
        return Err(cx.err(format!("input {} must be N,C,spatial", cx.ty(x))));
    }
    let kernel: Vec<usize> = a
        .ints("kernel_shape")
        .ok_or_else(|| cx.err("kernel_shape is required"))?
        .iter()
        .map(|&k| k.max(0) as usize)
        .collect();
    let w = window(cx, n, &xs[2..], kernel)?;
    Ok(Op::Pool(Pool {
        kind,
        window: w,
        ceil_mode: a.i("ceil_mode", 0) != 0,
        numerics: Default::default(),
    }))
}

pub fn global(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let x = cx.req(n, 0)?;
    let k = kind(cx, n)?;
    cx.add(n, Op::GlobalPool(k), vec![x])
}

//! Indexing ops: gathers, scatters, one-hot, triangles, arg/top-k and cumulative sums.

use crate::onnx::proto::NodeProto;
use crate::onnx::{Attrs, Ctx, ImportError};
use kiln_ir::op::ScatterReduction;
use kiln_ir::{Op, ValueId};

pub fn gather(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let (x, i) = (cx.req(n, 0)?, cx.req(n, 1)?);
    let axis = cx.axis(Attrs::of(n).i("axis", 0), cx.rank(x))?;
    cx.add(n, Op::Gather { axis }, vec![x, i])
}

pub fn gather_elements(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let (x, i) = (cx.req(n, 0)?, cx.req(n, 1)?);
    let axis = cx.axis(Attrs::of(n).i("axis", 0), cx.rank(x))?;
    cx.add(n, Op::GatherElements { axis }, vec![x, i])
}

pub fn gather_nd(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let (x, i) = (cx.req(n, 0)?, cx.req(n, 1)?);
    let b = Attrs::of(n).i("batch_dims", 0).max(0) as usize;
    cx.add(n, Op::GatherNd { batch_dims: b }, vec![x, i])
}

fn reduction(cx: &Ctx, n: &NodeProto) -> Result<ScatterReduction, ImportError> {
    Ok(match Attrs::of(n).s("reduction", "none").as_str() {
        "none" => ScatterReduction::None,
        "add" => ScatterReduction::Add,
        "mul" => ScatterReduction::Mul,
        "max" => ScatterReduction::Max,
        "min" => ScatterReduction::Min,
        r => return Err(cx.err(format!("reduction `{r}` is not supported"))),
    })
}

pub fn scatter_elements(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let reduction = reduction(cx, n)?;
    let (x, i, u) = (cx.req(n, 0)?, cx.req(n, 1)?, cx.req(n, 2)?);
    let axis = cx.axis(Attrs::of(n).i("axis", 0), cx.rank(x))?;
    cx.add(n, Op::ScatterElements { axis, reduction }, vec![x, i, u])
}

pub fn scatter_nd(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let reduction = reduction(cx, n)?;
    let ins = vec![cx.req(n, 0)?, cx.req(n, 1)?, cx.req(n, 2)?];
    cx.add(n, Op::ScatterNd { reduction }, ins)
}

pub fn one_hot(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let (i, v) = (cx.req(n, 0)?, cx.req(n, 2)?);
    let depth = cx.const_input(n, 1)?.ok_or_else(|| cx.err("depth is required"))?;
    let depth = depth
        .to_f64_vec()
        .first()
        .copied()
        .ok_or_else(|| cx.err("depth is empty"))?;
    let depth = cx.dims(&[depth as i64], "depth")?[0];
    let axis = cx.axis(Attrs::of(n).i("axis", -1), cx.rank(i) + 1)?;
    let mut shape: Vec<i64> = cx.ty(i).shape.iter().map(|&d| d as i64).collect();
    shape.push(depth as i64);
    cx.dims(&shape, "one-hot output")?;
    cx.add(n, Op::OneHot { axis, depth }, vec![i, v])
}

pub fn trilu(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let x = cx.req(n, 0)?;
    let k = cx.const_ints(n, 1)?.and_then(|v| v.first().copied()).unwrap_or(0);
    cx.add(
        n,
        Op::Trilu {
            upper: Attrs::of(n).i("upper", 1) != 0,
            k,
        },
        vec![x],
    )
}

pub fn arg(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let a = Attrs::of(n);
    let x = cx.req(n, 0)?;
    let axis = cx.axis(a.i("axis", 0), cx.rank(x))?;
    let (keep_dims, last) = (a.i("keepdims", 1) != 0, a.i("select_last_index", 0) != 0);
    let op = if n.op_type == "ArgMax" {
        Op::ArgMax { axis, keep_dims, last }
    } else {
        Op::ArgMin { axis, keep_dims, last }
    };
    cx.add(n, op, vec![x])
}

pub fn topk(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let a = Attrs::of(n);
    let x = cx.req(n, 0)?;
    let k = if cx.opset < 10 {
        a.i("k", 0)
    } else {
        cx.const_ints(n, 1)?
            .and_then(|v| v.first().copied())
            .ok_or_else(|| cx.err("K is required"))?
    };
    let axis = cx.axis(a.i("axis", -1), cx.rank(x))?;
    if k < 0 {
        return Err(cx.err("K must be non-negative"));
    }
    let op = Op::TopK {
        axis,
        k: k as usize,
        largest: a.i("largest", 1) != 0,
        sorted: a.i("sorted", 1) != 0,
    };
    cx.add(n, op, vec![x])
}

pub fn cumsum(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let a = Attrs::of(n);
    let x = cx.req(n, 0)?;
    let axis = cx
        .const_ints(n, 1)?
        .and_then(|v| v.first().copied())
        .ok_or_else(|| cx.err("axis is required"))?;
    let axis = cx.axis(axis, cx.rank(x))?;
    let op = Op::CumSum {
        axis,
        exclusive: a.i("exclusive", 0) != 0,
        reverse: a.i("reverse", 0) != 0,
    };
    cx.add(n, op, vec![x])
}

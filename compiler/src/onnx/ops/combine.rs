//! Concat, Split, Slice and Pad: their bounds are resolved against static shapes here so the
//! IR carries only concrete per-axis ranges.

use crate::onnx::proto::NodeProto;
use crate::onnx::{Attrs, Ctx, ImportError};
use kiln_ir::op::{PadMode, SliceAxis};
use kiln_ir::{Op, ValueId};

pub fn concat(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let ins = cx.inputs(n);
    let first = *ins.first().ok_or_else(|| cx.err("needs at least one input"))?;
    let axis = cx.axis(Attrs::of(n).i("axis", 0), cx.rank(first))?;
    cx.add(n, Op::Concat { axis }, ins)
}

pub fn split(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let a = Attrs::of(n);
    let x = cx.req(n, 0)?;
    let axis = cx.axis(a.i("axis", 0), cx.rank(x))?;
    let dim = cx.ty(x).shape[axis];
    let given = match a.ints("split") {
        Some(s) => Some(s),
        None => cx.const_ints(n, 1)?,
    };
    let sizes: Vec<usize> = match given {
        Some(s) => cx.dims(&s, "split")?,
        None => {
            let parts = if a.has("num_outputs") {
                a.i("num_outputs", 1) as usize
            } else {
                n.output.len()
            };
            if parts == 0 {
                return Err(cx.err("no outputs"));
            }
            if parts > dim {
                return Err(cx.err(format!("{parts} outputs from an axis of {dim} elements")));
            }
            let chunk = dim.div_ceil(parts);
            (0..parts).map(|i| chunk.min(dim.saturating_sub(i * chunk))).collect()
        }
    };
    if sizes.iter().sum::<usize>() != dim {
        return Err(cx.err(format!("split {sizes:?} does not add up to {dim}")));
    }
    if sizes.len() != n.output.len() {
        return Err(cx.err(format!("{} parts for {} outputs", sizes.len(), n.output.len())));
    }
    cx.add(n, Op::Split { axis, sizes }, vec![x])
}

pub fn slice(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let a = Attrs::of(n);
    let x = cx.req(n, 0)?;
    let shape = cx.ty(x).shape.clone();
    let r = shape.len();
    let (starts, ends, axes, steps) = if cx.opset < 10 {
        (a.ints("starts"), a.ints("ends"), a.ints("axes"), None)
    } else {
        (
            cx.const_ints(n, 1)?,
            cx.const_ints(n, 2)?,
            cx.const_ints(n, 3)?,
            cx.const_ints(n, 4)?,
        )
    };
    let starts = starts.ok_or_else(|| cx.err("starts are required"))?;
    let ends = ends.ok_or_else(|| cx.err("ends are required"))?;
    let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(cx.err("starts, ends, axes and steps differ in length"));
    }
    let mut out: Vec<SliceAxis> = shape.iter().map(|&len| SliceAxis { start: 0, step: 1, len }).collect();
    for i in 0..starts.len() {
        let ax = cx.axis(axes[i], r)?;
        let dim = shape[ax] as i64;
        let step = steps[i];
        if step == 0 {
            return Err(cx.err("step 0"));
        }
        let norm = |v: i64| if v < 0 { v.saturating_add(dim) } else { v };
        out[ax] = SliceAxis::clamped(dim, norm(starts[i]), norm(ends[i]), step);
    }
    cx.add(n, Op::Slice { axes: out }, vec![x])
}

pub fn pad(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let a = Attrs::of(n);
    let x = cx.req(n, 0)?;
    let r = cx.rank(x);
    let mode = match a.s("mode", "constant").as_str() {
        "constant" => PadMode::Constant,
        "reflect" => PadMode::Reflect,
        "edge" => PadMode::Edge,
        "wrap" => PadMode::Wrap,
        m => return Err(cx.err(format!("mode `{m}` is not supported"))),
    };
    let mut ins = vec![x];
    let given = if cx.opset < 11 {
        if a.has("value") {
            let v = kiln_ir::Tensor::scalar_f32(a.f("value", 0.0)).cast(cx.ty(x).dtype.scalar);
            ins.push(cx.constant(&format!("{}/value", cx.node_name()), v));
        }
        a.ints("pads").ok_or_else(|| cx.err("pads are required"))?
    } else {
        if let Some(v) = cx.input(n, 2) {
            cx.const_input(n, 2)?;
            ins.push(v);
        }
        cx.const_ints(n, 1)?.ok_or_else(|| cx.err("pads are required"))?
    };
    let axes = match cx.const_ints(n, 3)? {
        Some(ax) => ax.iter().map(|&v| cx.axis(v, r)).collect::<Result<Vec<_>, _>>()?,
        None => (0..r).collect(),
    };
    if given.len() != 2 * axes.len() {
        return Err(cx.err(format!("{} pads for {} axes", given.len(), axes.len())));
    }
    let mut pads = vec![0i64; 2 * r];
    let k = axes.len();
    for (i, &ax) in axes.iter().enumerate() {
        pads[ax] = given[i];
        pads[ax + r] = given[i + k];
    }
    let out: Vec<i64> = cx
        .ty(x)
        .shape
        .iter()
        .enumerate()
        .map(|(i, &d)| d as i64 + pads[i] + pads[i + r])
        .collect();
    if out.iter().any(|&d| d < 0) {
        return Err(cx.err(format!("pads {pads:?} remove more than {}", cx.ty(x))));
    }
    cx.dims(&out, "pad output")?;
    cx.add(n, Op::Pad { mode, pads }, ins)
}

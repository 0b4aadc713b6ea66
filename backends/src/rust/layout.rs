//! Lowerings that move elements: copies through strides (`k::copy_nd`), gathers, padding,
//! and the index kernels of `k::index` (tiling, one-hot, GatherND, scatters).

use super::kernel::{At, Lowered, list, scalar, split_axis};
use crate::Refusal;
use crate::shapes::{bcast, strides};
use kiln_ir::Scalar;
use kiln_ir::op::{PadMode, ScatterReduction, SliceAxis};

fn shape<'a>(at: &'a At, i: usize) -> &'a [usize] {
    &at.g.value(at.ins[i]).ty.shape
}

fn int_indices(at: &At, i: usize) -> Result<(), Refusal> {
    if matches!(scalar(at.g, at.ins[i]), Scalar::I64 | Scalar::I32) {
        Ok(())
    } else {
        Err(Refusal("indices other than int32 or int64"))
    }
}

pub(super) fn copy() -> Lowered {
    Ok("y0.copy_from_slice(x0);".to_string())
}

fn copy_nd(from_strides: &[i64], base: i64, o0: &[usize]) -> String {
    format!(
        "k::copy_nd(x0, {base}, &{}, y0, 0, &{}, &{});",
        list(from_strides),
        list(&strides(o0)),
        list(o0)
    )
}

pub(super) fn transpose(at: &At, perm: &[usize]) -> Lowered {
    let ist = strides(&at.x0s);
    let st: Vec<i64> = perm.iter().map(|&p| ist[p]).collect();
    Ok(copy_nd(&st, 0, &at.o0))
}

pub(super) fn slice(at: &At, axes: &[SliceAxis]) -> Lowered {
    let ist = strides(&at.x0s);
    let st: Vec<i64> = axes.iter().zip(&ist).map(|(a, &s)| a.step * s).collect();
    let base: i64 = axes.iter().zip(&ist).map(|(a, &s)| a.start * s).sum();
    Ok(copy_nd(&st, base, &at.o0))
}

pub(super) fn expand(at: &At) -> Lowered {
    Ok(copy_nd(&bcast(&at.x0s, &at.o0), 0, &at.o0))
}

pub(super) fn concat(at: &At, axis: usize) -> Lowered {
    let ost = strides(&at.o0);
    let mut at_axis = 0i64;
    let mut s = String::new();
    for i in 0..at.ins.len() {
        let xs = shape(at, i);
        s.push_str(&format!(
            "k::copy_nd(x{i}, 0, &{}, y0, {}, &{}, &{});\n",
            list(&strides(xs)),
            at_axis * ost[axis],
            list(&ost),
            list(xs)
        ));
        at_axis += xs[axis] as i64;
    }
    Ok(s)
}

pub(super) fn split(at: &At, axis: usize) -> Lowered {
    let ist = strides(&at.x0s);
    let mut at_axis = 0i64;
    let mut s = String::new();
    for (k, &v) in at.g.node(at.n).outputs.iter().enumerate() {
        let ys = &at.g.value(v).ty.shape;
        s.push_str(&format!(
            "k::copy_nd(x0, {}, &{}, y{k}, 0, &{}, &{});\n",
            at_axis * ist[axis],
            list(&ist),
            list(&strides(ys)),
            list(ys)
        ));
        at_axis += ys[axis] as i64;
    }
    Ok(s)
}

pub(super) fn gather(at: &At, axis: usize) -> Lowered {
    int_indices(at, 1)?;
    let (outer, len, inner) = split_axis(&at.x0s, axis);
    Ok(format!("k::gather(x0, x1, {outer}, {len}, {inner}, y0);"))
}

pub(super) fn gather_elements(at: &At, axis: usize) -> Lowered {
    int_indices(at, 1)?;
    Ok(format!(
        "k::gather_elements(x0, &{}, x1, &{}, {axis}, {}, y0);",
        list(&strides(&at.x0s)),
        list(shape(at, 1)),
        at.x0s[axis]
    ))
}

pub(super) fn pad(at: &At, mode: PadMode, pads: &[i64]) -> Lowered {
    let r = at.x0s.len();
    let fill = if at.ins.len() > 1 && at.g.value(at.ins[1]).ty.numel() > 0 {
        "x1[0]"
    } else if matches!(scalar(at.g, at.ins[0]), Scalar::F32 | Scalar::F64) {
        "0.0"
    } else {
        "0"
    };
    let mode = match mode {
        PadMode::Constant => "Constant",
        PadMode::Reflect => "Reflect",
        PadMode::Edge => "Edge",
        PadMode::Wrap => "Wrap",
    };
    Ok(format!(
        "k::pad(x0, &{}, y0, &{}, &{}, k::PadMode::{mode}, {fill});",
        list(&at.x0s),
        list(&at.o0),
        list(&pads[..r])
    ))
}

pub(super) fn trilu(at: &At, upper: bool, k: i64) -> Lowered {
    let r = at.x0s.len();
    if r < 2 {
        return Err(Refusal("Trilu on fewer than two axes"));
    }
    Ok(format!(
        "k::trilu(x0, y0, {}, {}, {upper}, {k});",
        at.x0s[r - 2],
        at.x0s[r - 1]
    ))
}

pub(super) fn tile(at: &At) -> Lowered {
    Ok(format!(
        "k::index::tile(x0, &{}, y0, &{});",
        list(&at.x0s),
        list(&at.o0)
    ))
}

pub(super) fn one_hot(at: &At, axis: usize, depth: usize) -> Lowered {
    if scalar(at.g, at.ins[0]) == Scalar::F16 {
        return Err(Refusal("binary16 indices"));
    }
    let outer: usize = at.x0s[..axis].iter().product();
    let inner: usize = at.x0s[axis..].iter().product();
    Ok(format!("k::index::one_hot(x0, x1, y0, {outer}, {depth}, {inner});"))
}

pub(super) fn gather_nd(at: &At, batch_dims: usize) -> Lowered {
    int_indices(at, 1)?;
    let is = shape(at, 1);
    let last = *is.last().unwrap_or(&0);
    let per_batch: usize = is[batch_dims..is.len() - 1].iter().product::<usize>().max(1);
    Ok(format!(
        "k::index::gather_nd(x0, &{}, x1, {last}, {batch_dims}, {per_batch}, y0);",
        list(&at.x0s)
    ))
}

fn combine(at: &At, red: ScatterReduction) -> Result<&'static str, Refusal> {
    if red != ScatterReduction::None && matches!(scalar(at.g, at.ins[0]), Scalar::Bool | Scalar::F16) {
        return Err(Refusal("a combining scatter on bool or binary16"));
    }
    Ok(match red {
        ScatterReduction::None => "Replace",
        ScatterReduction::Add => "Add",
        ScatterReduction::Mul => "Mul",
        ScatterReduction::Max => "Max",
        ScatterReduction::Min => "Min",
    })
}

pub(super) fn scatter_elements(at: &At, axis: usize, red: ScatterReduction) -> Lowered {
    int_indices(at, 1)?;
    let c = combine(at, red)?;
    Ok(format!(
        "k::index::scatter_elements(x0, &{}, (x1, &{}), x2, {axis}, k::index::Combine::{c}, y0);",
        list(&at.x0s),
        list(shape(at, 1))
    ))
}

pub(super) fn scatter_nd(at: &At, red: ScatterReduction) -> Lowered {
    int_indices(at, 1)?;
    let c = combine(at, red)?;
    let last = *shape(at, 1).last().unwrap_or(&0);
    Ok(format!(
        "k::index::scatter_nd(x0, &{}, x1, {last}, x2, k::index::Combine::{c}, y0);",
        list(&at.x0s)
    ))
}

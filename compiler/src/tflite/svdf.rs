//! SVDF (a rank-factored fully connected layer over a window of past frames) as plain IR:
//! the state `[batch, filters * memory]` shifts one frame left, the newest column is
//! `weights_feature · x`, each filter's memory is weighted by `weights_time` and summed, and
//! each unit sums `rank` filters. The state is an extra input and output (`Lower::state`).

use super::lower::{Layout, Lower, Result};
use super::ops::{activation, opt, product};
use super::schema::Operator;
use kiln_ir::op::{BinaryOp, ReduceKind, SliceAxis};
use kiln_ir::{Op, Tensor};

/// `[batch, input, filters, memory, rank]` of an SVDF, checked against each other.
fn dims(cx: &Lower, op: &Operator) -> Result<[usize; 5]> {
    let (x, wf, wt, st) = (cx.req(op, 0)?, cx.req(op, 1)?, cx.req(op, 2)?, cx.req(op, 4)?);
    if cx.act(x).is_some() {
        return Err(cx.err("integer SVDF is not supported yet"));
    }
    let rank = opt(op, 0, 1i32)?;
    let (xs, fs, ts) = (cx.shape(x), cx.shape(wf), cx.shape(wt));
    let (&[b, n_in], &[f, f_in], &[f_t, m]) = (&xs[..], &fs[..], &ts[..]) else {
        return Err(cx.err(format!(
            "shapes {xs:?}, {fs:?}, {ts:?} are not [batch, in], [filters, in], [filters, memory]"
        )));
    };
    if rank <= 0 || f_in != n_in || f_t != f || m == 0 || !f.is_multiple_of(rank as usize) {
        return Err(cx.err(format!(
            "rank {rank} with features {fs:?} and time weights {ts:?} do not fit {xs:?}"
        )));
    }
    if cx.shape(st) != [b, f * m] {
        return Err(cx.err(format!(
            "state `{}` is {:?}, [{b}, {}] expected",
            cx.def(st).name,
            cx.shape(st),
            f * m
        )));
    }
    Ok([b, n_in, f, m, rank as usize])
}

pub fn svdf(cx: &mut Lower, op: &Operator) -> Result<()> {
    let [b, n_in, f, m, rank] = dims(cx, op)?;
    let (x, wf, wt, st, out) = (
        cx.req(op, 0)?,
        cx.req(op, 1)?,
        cx.req(op, 2)?,
        cx.req(op, 4)?,
        cx.output(op, 0)?,
    );
    let units = f / rank;
    let name = cx.node.clone();
    let feature = Tensor::from_vec(vec![n_in, f], transposed(&cx.constant(wf, None)?.to_f32_vec(), f, n_in));
    let feature = cx.graph.add_const(&format!("{name}/feature"), feature);
    let time = Tensor::from_vec(vec![f, m], cx.constant(wt, None)?.to_f32_vec());
    let time = cx.graph.add_const(&format!("{name}/time"), time);

    let xv = cx.float(x, Layout::Nhwc)?;
    let newest = cx.emit("feature", product(), vec![xv, feature])?;
    let newest = cx.emit("newest", Op::Reshape { shape: vec![b, f, 1] }, vec![newest])?;
    let state = cx.state(st)?;
    let window = if m == 1 {
        newest
    } else {
        let past = cx.emit("past", Op::Reshape { shape: vec![b, f, m] }, vec![state])?;
        let keep = [
            SliceAxis {
                start: 0,
                step: 1,
                len: b,
            },
            SliceAxis {
                start: 0,
                step: 1,
                len: f,
            },
            SliceAxis {
                start: 1,
                step: 1,
                len: m - 1,
            },
        ];
        let shifted = cx.emit("shifted", Op::Slice { axes: keep.to_vec() }, vec![past])?;
        cx.emit("window", Op::Concat { axis: 2 }, vec![shifted, newest])?
    };
    let weighted = cx.emit("weighted", Op::Binary(BinaryOp::Mul), vec![window, time])?;
    let sum = |axes| Op::Reduce {
        kind: ReduceKind::Sum,
        axes,
        keep_dims: false,
    };
    let filters = cx.emit("filters", sum(vec![2]), vec![weighted])?;
    let grouped = cx.emit(
        "grouped",
        Op::Reshape {
            shape: vec![b, units, rank],
        },
        vec![filters],
    )?;
    let mut y = cx.emit("units", sum(vec![2]), vec![grouped])?;
    if let Some(bias) = cx.input(op, 3) {
        let bv = cx.value(bias, Layout::Nhwc)?;
        y = cx.emit("biased", Op::Binary(BinaryOp::Add), vec![y, bv])?;
    }
    let y = activation(cx, y, opt(op, 1, 0u8)?)?;
    let next = cx.emit("next", Op::Reshape { shape: vec![b, f * m] }, vec![window])?;
    cx.next_state(st, next)?;
    cx.define(out, y, Layout::Nhwc)
}

fn transposed(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols)
        .flat_map(|c| (0..rows).map(move |r| v[r * cols + c]))
        .collect()
}

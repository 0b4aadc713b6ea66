//! UNIDIRECTIONAL_SEQUENCE_LSTM as the IR's LSTM. TFLite's gates are ONNX's (peepholes on
//! the input and forget gates from the previous cell, on the output gate from the new one),
//! so only the weight layout changes: TFLite keeps one tensor per gate, the IR one stack in
//! ONNX's order (input, output, forget, cell). CIFG couples the gates the other way round
//! from ONNX (TFLite computes the forget gate and takes `i = 1 - f`, ONNX computes the input
//! gate and takes `f = 1 - i`); since `1 - sigmoid(z) = sigmoid(-z)`, the IR's input gate gets
//! the forget gate's weights, bias and peephole negated, and `1 - i` is then TFLite's `f`.
//! TFLite's state tensors persist between invocations: here they are an extra input and
//! output each (`Lower::state`), so the caller decides between a fresh and a continued
//! sequence.

use super::lower::{Layout, Lower, Result};
use super::ops::opt;
use super::schema::Operator;
use kiln_ir::op::{Activation, Rnn, RnnDirection, RnnKind};
use kiln_ir::{Op, Tensor};

/// Input slots of the gate tensors, in the IR's gate order (input, output, forget, cell).
const WEIGHTS: [usize; 4] = [1, 4, 2, 3];
const RECURRENT: [usize; 4] = [5, 8, 6, 7];
const BIASES: [usize; 4] = [12, 15, 13, 14];
/// Peepholes in the IR's order (input, output, forget).
const PEEPHOLES: [usize; 3] = [9, 11, 10];

/// The gate activation of the options, after refusing what the IR's LSTM cannot do.
fn check(cx: &Lower, op: &Operator) -> Result<Activation> {
    if cx.act(cx.req(op, 0)?).is_some() {
        return Err(cx.err("integer LSTMs (TFLite's 8x8->16 scheme) are not supported yet"));
    }
    if (16..24).any(|i| cx.input(op, i).is_some() && !matches!(i, 18 | 19)) {
        return Err(cx.err("projection and layer normalization are not supported"));
    }
    if opt(op, 1, 0f32)? != 0.0 || opt(op, 2, 0f32)? != 0.0 {
        return Err(cx.err("cell and projection clipping are not supported"));
    }
    Ok(match opt(op, 0, 4u8)? {
        0 => Activation::Affine(1.0, 0.0),
        1 => Activation::Relu,
        4 => Activation::Tanh,
        other => return Err(cx.err(format!("activation {other} is not supported in an LSTM"))),
    })
}

/// The gate constants stacked in the IR's order: W, R, B (input biases, then zeros for the
/// recurrent ones) and, when the model has any, the peepholes. With CIFG the input slot
/// holds the forget gate negated (see the module doc).
struct Stacked {
    w: Vec<f32>,
    r: Vec<f32>,
    b: Vec<f32>,
    p: Option<Vec<f32>>,
}

fn stacked(cx: &Lower, op: &Operator, n_cell: usize, n_in: usize, cifg: bool) -> Result<Stacked> {
    // the forget gate's weights are in the file, so the zeros made for absent gates are no
    // larger than data the file holds
    cx.constant(cx.req(op, 2)?, None)?;
    // one constant per gate, zeros for an absent peephole
    let gate = |slot: usize, shape: &[usize]| -> Result<Vec<f32>> {
        let n: usize = shape.iter().product();
        let Some(t) = cx.input(op, slot) else {
            return Ok(vec![0.0; n]);
        };
        let v = cx.constant(t, None)?.to_f32_vec();
        if v.len() != n {
            return Err(cx.err(format!("input {slot} has {} values, {shape:?} expected", v.len())));
        }
        Ok(v)
    };
    let stack = |slots: &[usize], shape: &[usize]| -> Result<Vec<f32>> {
        let mut v = slots
            .iter()
            .map(|&s| gate(s, shape))
            .collect::<Result<Vec<_>>>()?
            .concat();
        if cifg {
            let n: usize = shape.iter().product();
            v[..n].iter_mut().for_each(|x| *x = -*x);
        }
        Ok(v)
    };
    let slots = |s: [usize; 4]| if cifg { [s[2], s[1], s[2], s[3]] } else { s };
    let mut b = stack(&slots(BIASES), &[n_cell])?;
    b.extend(vec![0.0; 4 * n_cell]);
    let p = match PEEPHOLES.iter().any(|&s| cx.input(op, s).is_some()) {
        false => None,
        true if cifg => Some(stack(&[PEEPHOLES[2], PEEPHOLES[1], PEEPHOLES[2]], &[n_cell])?),
        true => Some(stack(&PEEPHOLES, &[n_cell])?),
    };
    Ok(Stacked {
        w: stack(&slots(WEIGHTS), &[n_cell, n_in])?,
        r: stack(&slots(RECURRENT), &[n_cell, n_cell])?,
        b,
        p,
    })
}

pub fn lstm(cx: &mut Lower, op: &Operator) -> Result<()> {
    let g = check(cx, op)?;
    let (x, out, time_major) = (cx.req(op, 0)?, cx.output(op, 0)?, opt(op, 3, 0u8)? != 0);
    let xs = cx.shape(x);
    let [a, b, n_in] = xs[..] else {
        return Err(cx.err(format!("input {xs:?} is not [batch, time, features]")));
    };
    let batch = if time_major { b } else { a };
    let n_cell = cx.shape(cx.req(op, 2)?).first().copied().unwrap_or(0);
    let cifg = cx.input(op, 1).is_none();
    let k = stacked(cx, op, n_cell, n_in, cifg)?;
    let name = cx.node.clone();
    let konst = |cx: &mut Lower, what: &str, shape: Vec<usize>, v: Vec<f32>| {
        cx.graph
            .add_const(&format!("{name}/{what}"), Tensor::from_vec(shape, v))
    };
    let state = if time_major {
        vec![1, batch, n_cell]
    } else {
        vec![batch, 1, n_cell]
    };
    let (h_state, c_state) = (cx.req(op, 18)?, cx.req(op, 19)?);
    for t in [h_state, c_state] {
        if cx.shape(t) != [batch, n_cell] {
            return Err(cx.err(format!(
                "state `{}` is {:?}, [{batch}, {n_cell}] expected",
                cx.def(t).name,
                cx.shape(t)
            )));
        }
    }
    let xv = cx.float(x, Layout::Nhwc)?;
    let (h0, c0) = (cx.state(h_state)?, cx.state(c_state)?);
    let h0 = cx.emit("initial_h", Op::Reshape { shape: state.clone() }, vec![h0])?;
    let c0 = cx.emit("initial_c", Op::Reshape { shape: state }, vec![c0])?;
    let mut ins = vec![
        xv,
        konst(cx, "W", vec![1, 4 * n_cell, n_in], k.w),
        konst(cx, "R", vec![1, 4 * n_cell, n_cell], k.r),
        konst(cx, "B", vec![1, 8 * n_cell], k.b),
        h0,
        c0,
    ];
    if let Some(p) = k.p {
        ins.push(konst(cx, "P", vec![1, 3 * n_cell], p));
    }
    let rnn = Rnn {
        kind: RnnKind::Lstm { input_forget: cifg },
        hidden: n_cell,
        direction: RnnDirection::Forward,
        activations: vec![Activation::Sigmoid, g, g],
        clip: None,
        batch_major: !time_major,
    };
    let y = cx.emit("lstm", Op::Rnn(rnn), ins)?;
    let outs = cx
        .graph
        .producer(y)
        .map(|n| cx.graph.node(n).outputs.clone())
        .unwrap_or_default();
    let [_, h_last, c_last] = outs[..] else {
        return Err(cx.err("the LSTM has no final states"));
    };
    for (t, v, what) in [(h_state, h_last, "next_h"), (c_state, c_last, "next_c")] {
        let v = cx.emit(
            what,
            Op::Reshape {
                shape: vec![batch, n_cell],
            },
            vec![v],
        )?;
        cx.next_state(t, v)?;
    }
    let y = cx.emit("sequence", Op::Reshape { shape: cx.shape(out) }, vec![y])?;
    cx.define(out, y, Layout::Nhwc)
}

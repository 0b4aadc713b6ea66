//! RNN, GRU and LSTM. Missing optional inputs (bias, initial states) become zero constants
//! so the IR op always has the same inputs.

use crate::onnx::proto::NodeProto;
use crate::onnx::{Attrs, Ctx, ImportError};
use kiln_ir::op::{Activation, Rnn, RnnDirection, RnnKind};
use kiln_ir::{Op, Tensor, TensorType, ValueId};

fn activation(
    cx: &Ctx,
    name: &str,
    alpha: &mut impl Iterator<Item = f32>,
    beta: &mut impl Iterator<Item = f32>,
) -> Result<Activation, ImportError> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "sigmoid" => Activation::Sigmoid,
        "tanh" => Activation::Tanh,
        "relu" => Activation::Relu,
        "leakyrelu" => Activation::LeakyRelu(alpha.next().unwrap_or(0.01)),
        "hardsigmoid" => Activation::HardSigmoid(alpha.next().unwrap_or(0.2), beta.next().unwrap_or(0.5)),
        "affine" => Activation::Affine(alpha.next().unwrap_or(1.0), beta.next().unwrap_or(0.0)),
        "scaledtanh" => Activation::ScaledTanh(alpha.next().unwrap_or(1.0), beta.next().unwrap_or(1.0)),
        "thresholdedrelu" => Activation::ThresholdedRelu(alpha.next().unwrap_or(1.0)),
        "elu" => Activation::Elu(alpha.next().unwrap_or(1.0)),
        "softsign" => Activation::Softsign,
        "softplus" => Activation::Softplus,
        other => return Err(cx.err(format!("activation `{other}` is not supported"))),
    })
}

pub fn rnn(cx: &mut Ctx, n: &NodeProto) -> Result<Vec<ValueId>, ImportError> {
    let a = Attrs::of(n);
    let (kind, gates, defaults): (RnnKind, usize, &[&str]) = match n.op_type.as_str() {
        "LSTM" => (
            RnnKind::Lstm {
                input_forget: a.i("input_forget", 0) != 0,
            },
            4,
            &["Sigmoid", "Tanh", "Tanh"],
        ),
        "GRU" => (
            RnnKind::Gru {
                linear_before_reset: a.i("linear_before_reset", 0) != 0,
            },
            3,
            &["Sigmoid", "Tanh"],
        ),
        _ => (RnnKind::Rnn, 1, &["Tanh"]),
    };
    let direction = match a.s("direction", "forward").as_str() {
        "forward" => RnnDirection::Forward,
        "reverse" => RnnDirection::Reverse,
        "bidirectional" => RnnDirection::Bidirectional,
        d => return Err(cx.err(format!("direction `{d}` is not supported"))),
    };
    let hidden = a.i("hidden_size", 0);
    if hidden <= 0 {
        return Err(cx.err("hidden_size is required"));
    }
    let h = hidden as usize;
    let dirs = direction.count();
    let names: Vec<String> = match a.strings("activations") {
        Some(v) => v,
        None => (0..dirs).flat_map(|_| defaults.iter().map(|s| s.to_string())).collect(),
    };
    if names.len() != defaults.len() * dirs {
        return Err(cx.err(format!(
            "{} activations given, {} expected",
            names.len(),
            defaults.len() * dirs
        )));
    }
    let (alphas, betas) = (
        a.floats("activation_alpha").unwrap_or_default(),
        a.floats("activation_beta").unwrap_or_default(),
    );
    let (mut al, mut be) = (alphas.into_iter(), betas.into_iter());
    let activations = names
        .iter()
        .map(|s| activation(cx, s, &mut al, &mut be))
        .collect::<Result<Vec<_>, _>>()?;
    let batch_major = a.i("layout", 0) != 0;
    let clip = a.get("clip").map(|c| c.f);

    let x = cx.req(n, 0)?;
    let xt = cx.ty(x).clone();
    if xt.shape.len() != 3 {
        return Err(cx.err(format!("X must be 3-D, got {xt}")));
    }
    // hidden_size sizes the states allocated below: it must agree with the weights first.
    let wt = cx.ty(cx.req(n, 1)?).clone();
    if wt.shape.len() != 3
        || wt.shape[0] != dirs
        || h > wt.shape[1]
        || !wt.shape[1].is_multiple_of(h)
        || wt.shape[1] / h > 4
    {
        return Err(cx.err(format!("hidden_size {hidden} does not match W {wt}")));
    }
    let (seq, batch) = if batch_major {
        (xt.shape[1], xt.shape[0])
    } else {
        (xt.shape[0], xt.shape[1])
    };
    if let Some(lens) = cx.const_ints(n, 4)?
        && lens.iter().any(|&l| l != seq as i64)
    {
        return Err(cx.err(format!(
            "sequence_lens {lens:?} shorter than the sequence ({seq}) are not supported"
        )));
    }
    let scalar = xt.dtype.scalar;
    let zeros = |cx: &mut Ctx, what: &str, shape: Vec<usize>| {
        let t = Tensor::zeros(&TensorType::new(scalar, shape));
        cx.constant(&format!("{}/{what}", cx.node_name()), t)
    };
    let state = if batch_major {
        vec![batch, dirs, h]
    } else {
        vec![dirs, batch, h]
    };
    let w = cx.req(n, 1)?;
    let r = cx.req(n, 2)?;
    let b = match cx.input(n, 3) {
        Some(b) => b,
        None => zeros(cx, "B", vec![dirs, 2 * gates * h]),
    };
    let h0 = match cx.input(n, 5) {
        Some(v) => v,
        None => zeros(cx, "initial_h", state.clone()),
    };
    let mut ins = vec![x, w, r, b, h0];
    if let RnnKind::Lstm { .. } = kind {
        ins.push(match cx.input(n, 6) {
            Some(v) => v,
            None => zeros(cx, "initial_c", state.clone()),
        });
        if let Some(p) = cx.input(n, 7) {
            ins.push(p);
        }
    }
    let op = Rnn {
        kind,
        hidden: h,
        direction,
        activations,
        clip,
        batch_major,
    };
    cx.add(n, Op::Rnn(op), ins)
}

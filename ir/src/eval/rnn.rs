//! RNN, GRU and LSTM with ONNX gate orders (LSTM: i, o, f, c; GRU: z, r, h), every
//! direction mode, clipping, peepholes and both layouts.

use super::{Flt, elementwise::unary_f, lit, sl};
use crate::error::Result;
use crate::op::{Activation, Rnn, RnnDirection, RnnKind, UnaryOp};
use crate::tensor::Tensor;

fn act<T: Flt>(a: Activation, x: T) -> T {
    let f = |v: f32| -> T { lit(v as f64) };
    match a {
        Activation::Sigmoid => unary_f(UnaryOp::Sigmoid, x),
        Activation::Tanh => x.tanh(),
        Activation::Relu => x.max(T::zero()),
        Activation::LeakyRelu(al) => unary_f(UnaryOp::LeakyRelu { alpha: al }, x),
        Activation::HardSigmoid(al, be) => unary_f(UnaryOp::HardSigmoid { alpha: al, beta: be }, x),
        Activation::Affine(al, be) => f(al) * x + f(be),
        Activation::ScaledTanh(al, be) => f(al) * (f(be) * x).tanh(),
        Activation::ThresholdedRelu(al) => unary_f(UnaryOp::ThresholdedRelu { alpha: al }, x),
        Activation::Elu(al) => unary_f(UnaryOp::Elu { alpha: al }, x),
        Activation::Softsign => unary_f(UnaryOp::Softsign, x),
        Activation::Softplus => unary_f(UnaryOp::Softplus, x),
    }
}

/// `out[j] = sum_k m[j][k] * v[k]` for row-major `m` of `rows x v.len()`.
fn matvec<T: Flt>(m: &[T], v: &[T], rows: usize, out: &mut [T]) {
    let k = v.len();
    for j in 0..rows {
        out[j] = m[j * k..(j + 1) * k].iter().zip(v).map(|(&a, &b)| a * b).sum();
    }
}

pub(crate) fn rnn<T: Flt>(r: &Rnn, x: &[&Tensor]) -> Result<Vec<Tensor>> {
    let xt = x[0];
    let (seq, batch, isz) = if r.batch_major {
        (xt.shape[1], xt.shape[0], xt.shape[2])
    } else {
        (xt.shape[0], xt.shape[1], xt.shape[2])
    };
    let h = r.hidden;
    let dirs = r.direction.count();
    let gates = match r.kind {
        RnnKind::Rnn => 1,
        RnnKind::Gru { .. } => 3,
        RnnKind::Lstm { .. } => 4,
    };
    let lstm = matches!(r.kind, RnnKind::Lstm { .. });
    let (xv, w, rr, b): (&[T], &[T], &[T], &[T]) = (sl(xt), sl(x[1]), sl(x[2]), sl(x[3]));
    let h0: &[T] = sl(x[4]);
    let c0: Option<&[T]> = if lstm { Some(sl(x[5])) } else { None };
    let peep: Option<&[T]> = if lstm && x.len() > 6 { Some(sl(x[6])) } else { None };
    let per_dir = r.activations.len() / dirs;
    let clip = |v: T| match r.clip {
        Some(c) => v.max(lit(-c as f64)).min(lit(c as f64)),
        None => v,
    };
    // Y in [seq, dirs, batch, h]; states in [dirs, batch, h]; layout fixed up at the end.
    let mut y = vec![T::zero(); seq * dirs * batch * h];
    let mut yh = vec![T::zero(); dirs * batch * h];
    let mut yc = vec![T::zero(); dirs * batch * h];
    let state_at = |d: usize, bi: usize| {
        if r.batch_major {
            (bi * dirs + d) * h
        } else {
            (d * batch + bi) * h
        }
    };
    for d in 0..dirs {
        let reverse = r.direction == RnnDirection::Reverse || (r.direction == RnnDirection::Bidirectional && d == 1);
        let acts = &r.activations[d * per_dir..(d + 1) * per_dir];
        let wd = &w[d * gates * h * isz..][..gates * h * isz];
        let rd = &rr[d * gates * h * h..][..gates * h * h];
        let wb = &b[d * 2 * gates * h..][..gates * h];
        let rb = &b[d * 2 * gates * h + gates * h..][..gates * h];
        for bi in 0..batch {
            let mut hs = h0[state_at(d, bi)..][..h].to_vec();
            let mut cs = c0.map(|c| c[state_at(d, bi)..][..h].to_vec()).unwrap_or_default();
            let mut gx = vec![T::zero(); gates * h];
            let mut gh = vec![T::zero(); gates * h];
            for s in 0..seq {
                let t = if reverse { seq - 1 - s } else { s };
                let xo = if r.batch_major {
                    (bi * seq + t) * isz
                } else {
                    (t * batch + bi) * isz
                };
                matvec(wd, &xv[xo..xo + isz], gates * h, &mut gx);
                matvec(rd, &hs, gates * h, &mut gh);
                match r.kind {
                    RnnKind::Rnn => {
                        for j in 0..h {
                            hs[j] = act(acts[0], clip(gx[j] + gh[j] + wb[j] + rb[j]));
                        }
                    }
                    RnnKind::Lstm { input_forget } => {
                        let (pi, po, pf) = match peep {
                            Some(p) => (
                                &p[d * 3 * h..][..h],
                                &p[d * 3 * h + h..][..h],
                                &p[d * 3 * h + 2 * h..][..h],
                            ),
                            None => (&[][..], &[][..], &[][..]),
                        };
                        let pv = |p: &[T], j: usize| p.get(j).copied().unwrap_or(T::zero());
                        for j in 0..h {
                            let pre = |g: usize| gx[g * h + j] + gh[g * h + j] + wb[g * h + j] + rb[g * h + j];
                            let i = act(acts[0], clip(pre(0) + pv(pi, j) * cs[j]));
                            let f = if input_forget {
                                T::one() - i
                            } else {
                                act(acts[0], clip(pre(2) + pv(pf, j) * cs[j]))
                            };
                            let c = act(acts[1], clip(pre(3)));
                            cs[j] = f * cs[j] + i * c;
                            let o = act(acts[0], clip(pre(1) + pv(po, j) * cs[j]));
                            hs[j] = o * act(acts[2], cs[j]);
                        }
                    }
                    RnnKind::Gru { linear_before_reset } => {
                        let mut hn = vec![T::zero(); h];
                        if !linear_before_reset {
                            // (r . H) R_h^T needs r first.
                            let rg: Vec<T> = (0..h)
                                .map(|j| act(acts[0], clip(gx[h + j] + gh[h + j] + wb[h + j] + rb[h + j])))
                                .collect();
                            let rh: Vec<T> = rg.iter().zip(&hs).map(|(&a, &b)| a * b).collect();
                            let mut tmp = vec![T::zero(); h];
                            matvec(&rd[2 * h * h..], &rh, h, &mut tmp);
                            for j in 0..h {
                                hn[j] = act(acts[1], clip(gx[2 * h + j] + tmp[j] + rb[2 * h + j] + wb[2 * h + j]));
                            }
                        } else {
                            for j in 0..h {
                                let rg = act(acts[0], clip(gx[h + j] + gh[h + j] + wb[h + j] + rb[h + j]));
                                hn[j] = act(
                                    acts[1],
                                    clip(gx[2 * h + j] + rg * (gh[2 * h + j] + rb[2 * h + j]) + wb[2 * h + j]),
                                );
                            }
                        }
                        for j in 0..h {
                            let z = act(acts[0], clip(gx[j] + gh[j] + wb[j] + rb[j]));
                            hs[j] = (T::one() - z) * hn[j] + z * hs[j];
                        }
                    }
                }
                let yo = if r.batch_major {
                    ((bi * seq + t) * dirs + d) * h
                } else {
                    ((t * dirs + d) * batch + bi) * h
                };
                y[yo..yo + h].copy_from_slice(&hs);
            }
            yh[state_at(d, bi)..][..h].copy_from_slice(&hs);
            if lstm {
                yc[state_at(d, bi)..][..h].copy_from_slice(&cs);
            }
        }
    }
    let (yshape, sshape) = if r.batch_major {
        (vec![batch, seq, dirs, h], vec![batch, dirs, h])
    } else {
        (vec![seq, dirs, batch, h], vec![dirs, batch, h])
    };
    let mut out = vec![Tensor::from_vec(yshape, y), Tensor::from_vec(sshape.clone(), yh)];
    if lstm {
        out.push(Tensor::from_vec(sshape, yc));
    }
    Ok(out)
}

//! RNN, GRU (both reset forms) and LSTM (peepholes, coupled gates) in the evaluator's
//! order: per direction and batch row, the gate vectors `W·x` and `R·h` summed in index
//! order, then the ONNX update. Activations come from the generator as functions, one
//! slice of `f, g[, h]` per direction.

use super::math;

/// The recurrence and its gate count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Rnn,
    Gru { linear_before_reset: bool },
    Lstm { input_forget: bool },
}

impl Kind {
    fn gates(self) -> usize {
        match self {
            Kind::Rnn => 1,
            Kind::Gru { .. } => 3,
            Kind::Lstm { .. } => 4,
        }
    }
}

/// Shape and options of a recurrent layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rnn {
    pub kind: Kind,
    pub seq: usize,
    pub batch: usize,
    pub input: usize,
    pub hidden: usize,
    /// 1 (forward or, with `reverse`, backward) or 2 (bidirectional).
    pub dirs: usize,
    pub reverse: bool,
    /// `layout = 1`: X and Y batch-major.
    pub batch_major: bool,
    pub clip: Option<f32>,
}

/// Scratch floats per hidden unit: h, c, the two gate vectors and three GRU temporaries.
pub const SCRATCH_PER_UNIT: usize = 13;

/// The inputs in ONNX order: X, W, R, B, initial H, and for an LSTM initial C and the
/// optional peepholes.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    pub x: &'a [f32],
    pub w: &'a [f32],
    pub r: &'a [f32],
    pub b: &'a [f32],
    pub h0: &'a [f32],
    pub c0: &'a [f32],
    pub peepholes: Option<&'a [f32]>,
}

/// Activation functions, `f, g[, h]` per direction.
pub type Act = fn(f32) -> f32;

/// `out[j] = sum_k m[j][k] * v[k]`, summed in order from zero.
fn matvec(m: &[f32], v: &[f32], out: &mut [f32]) {
    let k = v.len();
    for (o, row) in out.iter_mut().zip(m.chunks_exact(k.max(1))) {
        let mut acc = 0.0f32;
        for (&a, &b) in row.iter().zip(v) {
            acc += a * b;
        }
        *o = acc;
    }
}

/// The outputs, each optional: Y, Y_h and (LSTM) Y_c.
pub struct Outputs<'a> {
    pub y: Option<&'a mut [f32]>,
    pub yh: Option<&'a mut [f32]>,
    pub yc: Option<&'a mut [f32]>,
}

/// Runs the layer; `scratch` holds [`SCRATCH_PER_UNIT`] `* hidden` floats.
// the gate vectors, states and weights are indexed in step by unit `j`
#[allow(clippy::needless_range_loop)]
pub fn run(io: &Inputs, out: Outputs, acts: &[Act], scratch: &mut [f32], p: &Rnn) {
    let Outputs { mut y, mut yh, mut yc } = out;
    let (h, isz, seq, batch, dirs, gates) = (p.hidden, p.input, p.seq, p.batch, p.dirs, p.kind.gates());
    let (hs, rest) = scratch.split_at_mut(h);
    let (cs, rest) = rest.split_at_mut(h);
    let (gx, rest) = rest.split_at_mut(4 * h);
    let (gh, rest) = rest.split_at_mut(4 * h);
    let (tmp, rest) = rest.split_at_mut(h);
    let (rh, rest) = rest.split_at_mut(h);
    let hn = &mut rest[..h];
    let clip = |v: f32| match p.clip {
        Some(c) => math::min(math::max(v, -c), c),
        None => v,
    };
    let state_at = |d: usize, bi: usize| {
        if p.batch_major {
            (bi * dirs + d) * h
        } else {
            (d * batch + bi) * h
        }
    };
    let per_dir = acts.len() / dirs;
    for d in 0..dirs {
        let act = &acts[d * per_dir..(d + 1) * per_dir];
        let reverse = p.reverse || d == 1;
        let wd = &io.w[d * gates * h * isz..][..gates * h * isz];
        let rd = &io.r[d * gates * h * h..][..gates * h * h];
        let wb = &io.b[d * 2 * gates * h..][..gates * h];
        let rb = &io.b[d * 2 * gates * h + gates * h..][..gates * h];
        let peep = io.peepholes.map(|v| &v[d * 3 * h..][..3 * h]);
        for bi in 0..batch {
            hs.copy_from_slice(&io.h0[state_at(d, bi)..][..h]);
            if matches!(p.kind, Kind::Lstm { .. }) {
                cs.copy_from_slice(&io.c0[state_at(d, bi)..][..h]);
            }
            for s in 0..seq {
                let t = if reverse { seq - 1 - s } else { s };
                let xo = if p.batch_major {
                    (bi * seq + t) * isz
                } else {
                    (t * batch + bi) * isz
                };
                matvec(wd, &io.x[xo..xo + isz], &mut gx[..gates * h]);
                matvec(rd, hs, &mut gh[..gates * h]);
                let pre = |g: usize, j: usize| gx[g * h + j] + gh[g * h + j] + wb[g * h + j] + rb[g * h + j];
                match p.kind {
                    Kind::Rnn => {
                        for j in 0..h {
                            hs[j] = act[0](clip(pre(0, j)));
                        }
                    }
                    Kind::Lstm { input_forget } => {
                        let pv = |k: usize, j: usize| peep.map_or(0.0, |v| v[k * h + j]);
                        for j in 0..h {
                            let i = act[0](clip(pre(0, j) + pv(0, j) * cs[j]));
                            let f = if input_forget {
                                1.0 - i
                            } else {
                                act[0](clip(pre(2, j) + pv(2, j) * cs[j]))
                            };
                            let c = act[1](clip(pre(3, j)));
                            cs[j] = f * cs[j] + i * c;
                            let o = act[0](clip(pre(1, j) + pv(1, j) * cs[j]));
                            hs[j] = o * act[2](cs[j]);
                        }
                    }
                    Kind::Gru { linear_before_reset } => {
                        if linear_before_reset {
                            for j in 0..h {
                                let r = act[0](clip(pre(1, j)));
                                hn[j] = act[1](clip(
                                    gx[2 * h + j] + r * (gh[2 * h + j] + rb[2 * h + j]) + wb[2 * h + j],
                                ));
                            }
                        } else {
                            // (r . h) times the candidate rows of R needs every r first
                            for j in 0..h {
                                rh[j] = act[0](clip(pre(1, j))) * hs[j];
                            }
                            matvec(&rd[2 * h * h..], rh, tmp);
                            for j in 0..h {
                                hn[j] = act[1](clip(gx[2 * h + j] + tmp[j] + rb[2 * h + j] + wb[2 * h + j]));
                            }
                        }
                        for j in 0..h {
                            let z = act[0](clip(pre(0, j)));
                            hs[j] = (1.0 - z) * hn[j] + z * hs[j];
                        }
                    }
                }
                if let Some(y) = y.as_deref_mut() {
                    let yo = if p.batch_major {
                        ((bi * seq + t) * dirs + d) * h
                    } else {
                        ((t * dirs + d) * batch + bi) * h
                    };
                    y[yo..yo + h].copy_from_slice(hs);
                }
            }
            if let Some(yh) = yh.as_deref_mut() {
                yh[state_at(d, bi)..][..h].copy_from_slice(hs);
            }
            if let Some(yc) = yc.as_deref_mut() {
                yc[state_at(d, bi)..][..h].copy_from_slice(cs);
            }
        }
    }
}

//! LSTM with the default activations (sigmoid, tanh, tanh), in the evaluator's order: per
//! direction and batch row, the gate vectors `W·x` and `R·h`, then the ONNX update.

use super::math;

/// Shape and options of an LSTM.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lstm {
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

/// The inputs of an LSTM: X, W, R, B, initial H, initial C (ONNX order).
#[derive(Clone, Copy, Debug)]
pub struct LstmInputs<'a> {
    pub x: &'a [f32],
    pub w: &'a [f32],
    pub r: &'a [f32],
    pub b: &'a [f32],
    pub h0: &'a [f32],
    pub c0: &'a [f32],
}

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

/// Runs the LSTM; `scratch` holds `10 * hidden` floats. Y, Y_h and Y_c are each optional.
pub fn lstm(
    io: &LstmInputs,
    mut y: Option<&mut [f32]>,
    mut yh: Option<&mut [f32]>,
    mut yc: Option<&mut [f32]>,
    scratch: &mut [f32],
    p: &Lstm,
) {
    let (h, isz, seq, batch, dirs) = (p.hidden, p.input, p.seq, p.batch, p.dirs);
    let (hs, rest) = scratch.split_at_mut(h);
    let (cs, rest) = rest.split_at_mut(h);
    let (gx, rest) = rest.split_at_mut(4 * h);
    let gh = &mut rest[..4 * h];
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
    for d in 0..dirs {
        let reverse = p.reverse || d == 1;
        let wd = &io.w[d * 4 * h * isz..][..4 * h * isz];
        let rd = &io.r[d * 4 * h * h..][..4 * h * h];
        let wb = &io.b[d * 8 * h..][..4 * h];
        let rb = &io.b[d * 8 * h + 4 * h..][..4 * h];
        for bi in 0..batch {
            hs.copy_from_slice(&io.h0[state_at(d, bi)..][..h]);
            cs.copy_from_slice(&io.c0[state_at(d, bi)..][..h]);
            for s in 0..seq {
                let t = if reverse { seq - 1 - s } else { s };
                let xo = if p.batch_major {
                    (bi * seq + t) * isz
                } else {
                    (t * batch + bi) * isz
                };
                matvec(wd, &io.x[xo..xo + isz], gx);
                matvec(rd, hs, gh);
                for j in 0..h {
                    let pre = |g: usize| gx[g * h + j] + gh[g * h + j] + wb[g * h + j] + rb[g * h + j];
                    let i = math::sigmoid(clip(pre(0)));
                    let f = math::sigmoid(clip(pre(2)));
                    let c = math::tanh(clip(pre(3)));
                    cs[j] = f * cs[j] + i * c;
                    let o = math::sigmoid(clip(pre(1)));
                    hs[j] = o * math::tanh(cs[j]);
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

//! Resize: each axis gets a list of (input index, weight) taps per output index, and the
//! output is the separable sum over the tap product. Nearest, linear and cubic differ only
//! in how taps are chosen.

use super::for_each_index;
use crate::error::Result;
use crate::op::{CoordMode, NearestMode, Resize, ResizeMode};
use crate::tensor::{Data, Tensor, strides};

/// Maps an output coordinate to the input coordinate system.
fn source_coord(rz: &Resize, axis: usize, x: usize, len_in: usize, len_out: usize) -> f64 {
    let s = rz.scales[axis] as f64;
    let x = x as f64;
    let (li, lo) = (len_in as f64, len_out as f64);
    match rz.coord {
        CoordMode::HalfPixel => (x + 0.5) / s - 0.5,
        CoordMode::HalfPixelSymmetric => {
            let adj = lo / (s * li);
            let center = li / 2.0;
            center * (1.0 - adj) + (x + 0.5) / s - 0.5
        }
        CoordMode::PytorchHalfPixel => {
            if len_out > 1 {
                (x + 0.5) / s - 0.5
            } else {
                0.0
            }
        }
        CoordMode::AlignCorners => {
            // ONNX measures the resized length here as `scale * length`, not the floored size.
            let lo = s * li;
            if len_out == 1 { 0.0 } else { x * (li - 1.0) / (lo - 1.0) }
        }
        CoordMode::Asymmetric => x / s,
        CoordMode::TfCropAndResize => {
            let r = rz.roi.len() / 2;
            let (a, b) = (rz.roi[axis] as f64, rz.roi[r + axis] as f64);
            if len_out > 1 {
                a * (li - 1.0) + x * (b - a) * (li - 1.0) / (lo - 1.0)
            } else {
                0.5 * (a + b) * (li - 1.0)
            }
        }
    }
}

fn cubic_coeffs(t: f64, a: f64) -> [f64; 4] {
    let c = |x: f64| {
        let x = x.abs();
        if x <= 1.0 {
            ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
        } else {
            0.0
        }
    };
    [c(t + 1.0), c(t), c(1.0 - t), c(2.0 - t)]
}

/// Taps per output index of one axis; `None` = extrapolated (tf_crop_and_resize outside).
/// Backends build their tables from this, so they interpolate exactly as the evaluator.
pub fn taps(rz: &Resize, axis: usize, len_in: usize, len_out: usize) -> Vec<Option<Vec<(usize, f64)>>> {
    let clampi = |i: i64| i.clamp(0, len_in as i64 - 1) as usize;
    (0..len_out)
        .map(|o| {
            let x = source_coord(rz, axis, o, len_in, len_out);
            if rz.coord == CoordMode::TfCropAndResize && (x < 0.0 || x > (len_in - 1) as f64) {
                return None;
            }
            Some(match rz.mode {
                ResizeMode::Nearest(m) => {
                    let i = match m {
                        NearestMode::RoundPreferFloor => {
                            if x.fract() == 0.5 {
                                x.floor()
                            } else {
                                x.round()
                            }
                        }
                        NearestMode::RoundPreferCeil => x.round(),
                        NearestMode::Floor => x.floor(),
                        NearestMode::Ceil => x.ceil(),
                    };
                    vec![(clampi(i as i64), 1.0)]
                }
                ResizeMode::Linear => {
                    let x = x.clamp(0.0, (len_in - 1) as f64);
                    let f = x.floor();
                    let t = x - f;
                    vec![(clampi(f as i64), 1.0 - t), (clampi(f as i64 + 1), t)]
                }
                ResizeMode::Cubic => {
                    let f = x.floor();
                    let t = x - f;
                    let w = cubic_coeffs(t, rz.cubic_a as f64);
                    let mut v: Vec<(i64, f64)> = (0..4).map(|k| (f as i64 - 1 + k as i64, w[k as usize])).collect();
                    if rz.exclude_outside {
                        v.iter_mut()
                            .filter(|(i, _)| *i < 0 || *i >= len_in as i64)
                            .for_each(|p| p.1 = 0.0);
                        let s: f64 = v.iter().map(|p| p.1).sum();
                        v.iter_mut().for_each(|p| p.1 /= s);
                    }
                    v.into_iter().map(|(i, w)| (clampi(i), w)).collect()
                }
            })
        })
        .collect()
}

pub(crate) fn resize(rz: &Resize, x: &Tensor, out: &[usize]) -> Result<Tensor> {
    let r = x.shape.len();
    let per_axis: Vec<_> = (0..r).map(|d| taps(rz, d, x.shape[d], out[d])).collect();
    let st = strides(&x.shape);
    let xv = x.to_f64_vec();
    let mut y = Vec::with_capacity(out.iter().product());
    for_each_index(out, |o| {
        let sel: Option<Vec<&Vec<(usize, f64)>>> = (0..r).map(|d| per_axis[d][o[d]].as_ref()).collect();
        let Some(sel) = sel else {
            y.push(rz.extrapolation as f64);
            return;
        };
        let counts: Vec<usize> = sel.iter().map(|t| t.len()).collect();
        let mut acc = 0.0;
        for_each_index(&counts, |k| {
            let mut w = 1.0;
            let mut off = 0;
            for d in 0..r {
                let (i, wt) = sel[d][k[d]];
                w *= wt;
                off += i * st[d];
            }
            if w != 0.0 {
                acc += w * xv[off];
            }
        });
        y.push(acc);
    });
    let data = Data::F64(y);
    let data = if x.data.scalar().is_float() {
        data.cast(x.data.scalar())
    } else {
        // Integer images: round to nearest like ONNX Runtime.
        let Data::F64(v) = data else { unreachable!() };
        Data::F64(v.into_iter().map(|a| a.round()).collect()).cast(x.data.scalar())
    };
    Ok(Tensor::new(out.to_vec(), data))
}

//! Calibration: run the float graph on sample inputs and record, for every value a node
//! produces, the range a quantized type must cover. Ranges are running min/max, so memory is
//! bounded by the number of values, not samples; the samples themselves are read one file
//! per graph input and sliced one sample at a time.
//!
//! Data layout (the layout of `../shared/models/*/calib/`): a directory with one
//! `input_K.npy` per graph input K, samples stacked on axis 0, each sample shaped like the
//! graph input with its leading batch dimension of 1 removed. A sample with a NaN or an
//! infinity is refused (a silently infinite range would give a useless scale).

use super::QuantError;
use kiln_ir::{Graph, Scalar, Tensor, ValueId};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Observed range of each value, by value id of the float graph.
#[derive(Clone, Debug, Default)]
pub struct Ranges {
    pub by_value: HashMap<ValueId, (f32, f32)>,
    pub samples: usize,
}

impl Ranges {
    fn observe(&mut self, v: ValueId, t: &Tensor) {
        if t.data.scalar() != Scalar::F32 {
            return;
        }
        let (mut lo, mut hi) = self
            .by_value
            .get(&v)
            .copied()
            .unwrap_or((f32::INFINITY, f32::NEG_INFINITY));
        for &x in t.as_slice::<f32>().expect("f32") {
            if x.is_finite() {
                lo = lo.min(x);
                hi = hi.max(x);
            }
        }
        self.by_value.insert(v, (lo, hi));
    }
}

/// The calibration set: one stacked tensor per graph input.
pub struct CalibrationSet {
    pub inputs: Vec<Tensor>,
    pub samples: usize,
}

impl CalibrationSet {
    /// Loads `dir/input_K.npy` for every graph input and checks it against the graph.
    pub fn load(g: &Graph, dir: &Path) -> Result<CalibrationSet, QuantError> {
        if !dir.is_dir() {
            return Err(QuantError::Calibration {
                path: dir.to_path_buf(),
                msg: "not a directory".into(),
            });
        }
        let mut inputs = Vec::new();
        let mut samples = None;
        for (k, &v) in g.inputs().iter().enumerate() {
            let path: PathBuf = dir.join(format!("input_{k}.npy"));
            let bad = |msg: String| QuantError::Calibration {
                path: path.clone(),
                msg,
            };
            if !path.exists() {
                return Err(bad(format!(
                    "missing: the model has {} input(s), each needs input_K.npy with samples stacked on axis 0",
                    g.inputs().len()
                )));
            }
            let t = crate::npy::read(&path).map_err(|e| bad(e.to_string()))?;
            let want = &g.value(v).ty;
            if t.data.scalar() != want.dtype.scalar {
                return Err(bad(format!(
                    "element type {}, input `{}` is {}",
                    t.data.scalar(),
                    g.value(v).name,
                    want.dtype.scalar
                )));
            }
            let per_sample: &[usize] = if want.shape.first() == Some(&1) {
                &want.shape[1..]
            } else {
                &want.shape
            };
            if t.shape.len() != per_sample.len() + 1 || t.shape[1..] != *per_sample {
                return Err(bad(format!(
                    "shape {:?}: expected [samples, {}] for input `{}` {}",
                    t.shape,
                    per_sample.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "),
                    g.value(v).name,
                    want
                )));
            }
            if t.shape[0] == 0 {
                return Err(bad("holds no samples".into()));
            }
            if let Some(s) = samples
                && s != t.shape[0]
            {
                return Err(bad(format!("{} samples, input_0.npy has {s}", t.shape[0])));
            }
            samples = Some(t.shape[0]);
            if want.dtype.scalar == Scalar::F32 {
                let per: usize = per_sample.iter().product();
                if let Some(i) = t.as_slice::<f32>().expect("f32").iter().position(|x| !x.is_finite()) {
                    return Err(bad(format!("sample {} holds a NaN or infinity", i / per.max(1))));
                }
            }
            inputs.push(t);
        }
        Ok(CalibrationSet {
            inputs,
            samples: samples.unwrap_or(0),
        })
    }

    /// Sample `i` of every input, shaped like the graph inputs.
    pub fn sample(&self, g: &Graph, i: usize) -> Vec<Tensor> {
        self.inputs
            .iter()
            .zip(g.inputs())
            .map(|(t, &v)| {
                let shape = g.value(v).ty.shape.clone();
                let per: usize = shape.iter().product();
                let idx: Vec<usize> = (i * per..(i + 1) * per).collect();
                Tensor::new(shape, t.data.gather(&idx))
            })
            .collect()
    }
}

/// Runs every sample through the evaluator and records value ranges; `progress` is called
/// after each sample with (done, total).
pub fn calibrate(
    g: &Graph,
    set: &CalibrationSet,
    mut progress: impl FnMut(usize, usize),
) -> Result<Ranges, QuantError> {
    let mut r = Ranges::default();
    for i in 0..set.samples {
        let inputs = set.sample(g, i);
        for (&v, t) in g.inputs().iter().zip(&inputs) {
            r.observe(v, t);
        }
        kiln_ir::eval::run_observed(g, &inputs, |v, t| r.observe(v, t)).map_err(QuantError::Eval)?;
        r.samples += 1;
        progress(i + 1, set.samples);
    }
    Ok(r)
}

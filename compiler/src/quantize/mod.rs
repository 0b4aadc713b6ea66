//! Full-integer post-training quantization: calibrate ranges on sample data, then rewrite the
//! float graph into integer ops (`quantize_static`). The integer arithmetic itself is defined
//! in `kiln_runtime` and evaluated by `kiln_ir::eval`, so a quantized graph is an ordinary
//! graph every backend compiles.

mod cache;
pub mod calibrate;
pub mod quantize_static;
pub mod report;

use kiln_ir::{Graph, IrError};
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum QuantError {
    #[error("calibration data {}: {msg}", path.display())]
    Calibration { path: PathBuf, msg: String },
    #[error("calibration run failed: {0}")]
    Eval(IrError),
    #[error("value `{0}` was never computed during calibration, so it has no range")]
    NoRange(String),
    #[error("node `{0}`: the {1} rescale factor is out of range (a scale is zero, huge or not finite)")]
    Scale(String, String),
    #[error(transparent)]
    Ir(IrError),
    #[error("internal: {0}")]
    Internal(String),
}

#[derive(Clone, Debug, Default)]
pub struct QuantOptions {
    /// Node names or op types (case-insensitive) to leave in float.
    pub keep_float: Vec<String>,
    /// How each activation's range is chosen (default: the 99.999th percentile; on the
    /// shipped models it has the lowest mean error of min-max, percentiles 99.9/99.99/
    /// 99.999, MSE and entropy, and beats ONNX Runtime's min-max on all of them).
    pub method: Option<calibrate::Method>,
    /// Reuse calibration results stored here when model, data and method are unchanged;
    /// otherwise calibrate and store them.
    pub cache: Option<PathBuf>,
}

/// The result of quantizing a model.
pub struct Quantized {
    pub graph: Graph,
    /// Nodes left in float, and why.
    pub notes: Vec<String>,
    pub samples: usize,
}

/// Calibrates `g` on the data in `dir` and returns the integer graph.
pub fn quantize_int8(
    g: &Graph,
    dir: &Path,
    opts: &QuantOptions,
    progress: impl FnMut(usize, usize),
) -> Result<Quantized, QuantError> {
    let set = calibrate::CalibrationSet::load(g, dir)?;
    let method = opts.method.unwrap_or(calibrate::Method::Percentile(99.999));
    let key = cache::key(g, &set, method);
    let cached = match &opts.cache {
        Some(p) => cache::load(p, g, &key)?,
        None => None,
    };
    let ranges = match cached {
        Some(r) => r,
        None => {
            let r = calibrate::calibrate(g, &set, method, progress)?;
            if let Some(p) = &opts.cache {
                cache::store(p, g, &key, method, &r)?;
            }
            r
        }
    };
    let q = quantize_static::run(g, &ranges, opts)?;
    Ok(Quantized {
        graph: q.graph,
        notes: q.notes,
        samples: ranges.samples,
    })
}

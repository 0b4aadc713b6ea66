//! Full-integer post-training quantization: calibrate ranges on sample data, then rewrite the
//! float graph into integer ops (`quantize_static`). The integer arithmetic itself is defined
//! in `kiln_runtime` and evaluated by `kiln_ir::eval`, so a quantized graph is an ordinary
//! graph every backend compiles.

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
    let ranges = calibrate::calibrate(g, &set, progress)?;
    let q = quantize_static::run(g, &ranges, opts)?;
    Ok(Quantized {
        graph: q.graph,
        notes: q.notes,
        samples: ranges.samples,
    })
}

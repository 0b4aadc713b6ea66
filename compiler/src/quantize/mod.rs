//! Full-integer post-training quantization: calibrate ranges on sample data, then rewrite the
//! float graph into integer ops (`quantize_static`). The integer arithmetic itself is defined
//! in `kiln_runtime` and evaluated by `kiln_ir::eval`, so a quantized graph is an ordinary
//! graph every backend compiles.

pub mod bias_correction;
pub mod budget;
mod cache;
pub mod calibrate;
pub mod dynamic;
pub mod equalize;
pub mod fp16;
pub mod qdq;
pub mod quantize_static;
pub mod refine;
pub mod report;
pub mod rounding;
mod tflite_tables;

use kiln_ir::op::Numerics;
use kiln_ir::{Graph, IrError, Op};
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
    #[error("--keep-float/--int16 `{0}`: no node has this name or op type")]
    NoSuchNode(String),
    #[error(
        "the model carries no quantization of its own (no QuantizeLinear/DequantizeLinear, QLinear ops or DynamicQuantizeLinear); quantize it with calibration data instead"
    )]
    NotQuantized,
    #[error("value `{0}` is quantized to {1} bits by the model; no other width is known for it")]
    Width(String, u8),
    #[error("--accuracy-budget {0} dB cannot be met: the best mix reaches {1:.1} dB output SQNR")]
    Budget(f64, f64),
    #[error("--strict-integer: parts of the model cannot be integer:\n  {0}")]
    NotInteger(String),
}

#[derive(Clone, Debug, Default)]
pub struct QuantOptions {
    /// Node names or op types (case-insensitive) to leave in float.
    pub keep_float: Vec<String>,
    /// How each activation's range is chosen; `None` (the default) tries each method and
    /// keeps the one whose int8 outputs best match the float model on the calibration data.
    pub method: Option<calibrate::Method>,
    /// Reuse calibration results stored here when model, data and method are unchanged;
    /// otherwise calibrate and store them.
    pub cache: Option<PathBuf>,
    /// One weight scale per tensor instead of per output channel.
    pub per_tensor_weights: bool,
    /// Node names or op types (case-insensitive; `all` for every one) whose products run
    /// 16x8: int16 activations (symmetric), int8 weights, int64 sums.
    pub int16: Vec<String>,
    /// Refuse to leave any part of a model that carries its own quantization in float.
    pub strict_integer: bool,
    /// Width of Conv/Gemm/MatMul weights (8, 4 or 2 bits; `None`: 8), stored packed.
    pub weight_bits: Option<u8>,
    /// Per-node weight widths (node name, bits), over `weight_bits` (set by the budget search).
    pub weight_bits_of: Vec<(String, u8)>,
    /// Mixed precision by budget: the lowest end-to-end output SQNR (dB, against float on the
    /// calibration data) allowed; each Conv/Gemm/MatMul then gets the smallest of int4,
    /// int8, int16 activations or float that keeps the model above it.
    pub accuracy_budget: Option<f64>,
    /// Whose integer arithmetic the build reproduces (`kiln_ir::op::Numerics`): `None` is
    /// ONNX Runtime's; callers pick TFLite's for models of that origin
    /// ([`qdq::origin_numerics`]).
    pub numerics: Option<Numerics>,
    /// Scale the channels of each activation that feeds a depthwise convolution alone to a
    /// common range (`equalize`; `refine` for the choice).
    pub equalize: refine::Refine,
    /// Move each product's bias so that its channel means match float on the calibration
    /// data (`bias_correction`).
    pub bias_correction: refine::Refine,
    /// Round each product's weights to the steps that minimize its output error on the
    /// calibration data rather than to the nearest (`rounding`). `None`: on below 8-bit
    /// weights, where it lowered the held-out error of every model measured, off at 8 bits.
    pub weight_rounding: Option<refine::Refine>,
    /// Told how the long steps (calibration, the method and precision searches, the
    /// refinement trials) advance.
    pub progress: Progress,
}

/// A progress callback: `(step, done, total)`, `total` 0 when not known in advance.
#[derive(Clone, Default)]
pub struct Progress(Option<std::sync::Arc<ProgressFn>>);

type ProgressFn = dyn Fn(&str, usize, usize) + Send + Sync;

impl Progress {
    pub fn new(f: impl Fn(&str, usize, usize) + Send + Sync + 'static) -> Progress {
        Progress(Some(std::sync::Arc::new(f)))
    }

    pub fn report(&self, step: &str, done: usize, total: usize) {
        if let Some(f) = &self.0 {
            f(step, done, total);
        }
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Progress(on)"
        } else {
            "Progress(off)"
        })
    }
}

/// Sets the rounding of every integer convolution, Add and average pool of `g` to `n`.
/// Products (fully connected layers) keep `Onnx`'s single rounding: TFLite's reference
/// fully connected kernel gives those bytes.
pub fn set_numerics(g: &mut Graph, n: Numerics) {
    for id in g.node_ids().collect::<Vec<_>>() {
        let int_in = g.value(g.node(id).inputs[0]).ty.dtype.scalar.is_int();
        let int16_in = g.value(g.node(id).inputs[0]).ty.dtype.scalar == kiln_ir::Scalar::I16;
        match g.op_mut(id) {
            Op::QConv { q, .. } => q.numerics = n,
            // TFLite's int8 fully connected rounds as ONNX Runtime; its 16x8 one has a rule of
            // its own, which TFLite numerics select
            Op::QMatMul { q } if int16_in => q.numerics = n,
            Op::QAdd(a) => a.numerics = n,
            Op::QMul(m) => m.numerics = n,
            Op::QPRelu(p) => p.numerics = n,
            Op::Pool(p) if int_in => p.numerics = n,
            _ => {}
        }
    }
}

/// The result of quantizing a model.
pub struct Quantized {
    pub graph: Graph,
    /// Nodes left in float, and why.
    pub notes: Vec<String>,
    pub samples: usize,
    /// The calibration method used (the one `auto` chose, if it chose); `None` when the
    /// model's own parameters were used.
    pub method: Option<calibrate::Method>,
}

/// Calibrates `g` on the data in `dir` and returns the integer graph.
pub fn quantize_int8(
    g: &Graph,
    dir: &Path,
    opts: &QuantOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<Quantized, QuantError> {
    quantize_static::check_keep_float(g, opts)?;
    let progress = |done, total| {
        progress(done, total);
        opts.progress.report("calibrating", done, total);
    };
    // activations other than ReLU/Clip become ops of their own (int8 tables after the
    // integer products), so the products need not stay float; Sub and Div become Add and
    // Mul, which have integer forms, after recurrent layers and normalisations are written
    // out as such ops
    let mut unfused = g.clone();
    use crate::passes::{expand_normalizations, lower_sub_div, unfuse_activations, unroll_rnn};
    for pass in [
        unfuse_activations::run,
        unroll_rnn::run,
        expand_normalizations::run,
        lower_sub_div::run,
    ] {
        if pass(&mut unfused).map_err(QuantError::Ir)? {
            kiln_ir::verify::verify(&unfused).map_err(QuantError::Ir)?;
        }
    }
    // The products of unrolled recurrent layers run 16x8: their state is fed back step after
    // step (and call after call through a model's state ports), where int8 rounding piles up.
    let mut opts = opts.clone();
    let names: std::collections::HashSet<&str> = g.node_ids().map(|n| g.node(n).name.as_str()).collect();
    opts.int16.extend(
        (unfused.node_ids())
            .map(|n| unfused.node(n))
            .filter(|node| matches!(node.op, Op::Gemm { .. }) && !names.contains(node.name.as_str()))
            .map(|node| node.name.clone()),
    );
    let opts = &opts;
    let set = calibrate::CalibrationSet::load(&unfused, dir)?;
    let g = &unfused;
    let key = cache::key(g, &set, opts.method);
    let cached = match &opts.cache {
        Some(p) => cache::load(p, g, &key)?,
        None => None,
    };
    let (ranges, method) = match cached {
        Some(r) => r,
        None => {
            let (r, m) = match opts.method {
                Some(m) => (calibrate::calibrate(g, &set, m, progress)?, m),
                None => auto(g, &set, opts, progress)?,
            };
            if let Some(p) = &opts.cache {
                cache::store(p, g, &key, m, &r)?;
            }
            (r, m)
        }
    };
    let refined = refine::decide(g, &set, method, opts)?;
    let equalized;
    let (g, ranges) = if refined.on.equalize {
        let picks = set.spread(g, set.samples);
        let samples: Vec<Vec<kiln_ir::Tensor>> = picks.iter().map(|&i| set.sample(g, i)).collect();
        equalized = equalize::equalized(g, &samples).map_err(QuantError::Ir)?.0;
        let r = calibrate::calibrate(&equalized, &set, method, |_, _| {})?;
        (&equalized, r)
    } else {
        (g, ranges)
    };
    let (mut q, choice) = match opts.accuracy_budget {
        Some(db) => {
            let b = budget::search(g, &set, &ranges, opts, db)?;
            let summary = format!("budget: output SQNR {:.1} dB against float (budget {db} dB)", b.sqnr);
            (b.quantized, Some((b.choices, summary)))
        }
        None => (quantize_static::run(g, &ranges, opts)?, None),
    };
    if refined.on.rounding || refined.on.bias_correction {
        let samples: Vec<Vec<kiln_ir::Tensor>> = set
            .spread(g, AUTO_SAMPLES)
            .into_iter()
            .map(|i| set.sample(g, i))
            .collect();
        refine::finish(g, &mut q.graph, &samples, refined.on)?;
    }
    let mut notes = q.notes;
    notes.extend(refined.notes);
    if let Some((c, summary)) = choice {
        notes.extend(c.iter().map(|c| format!("budget: {c}")));
        notes.push(summary);
    }
    if opts.method.is_none() {
        notes.push(format!("calibration method chosen: {method}"));
    }
    Ok(Quantized {
        graph: q.graph,
        notes,
        samples: ranges.samples,
        method: Some(method),
    })
}

/// The mean absolute difference of `q`'s float outputs on `samples` from `want`.
fn mean_abs_error(
    q: &Graph,
    samples: &[Vec<kiln_ir::Tensor>],
    want: &[Vec<kiln_ir::Tensor>],
) -> Result<f64, QuantError> {
    let (sum, count, _) = abs_errors(q, samples, want)?;
    Ok(sum / count.max(1) as f64)
}

/// The sum, count and largest of the absolute differences of `q`'s float outputs on
/// `samples` from `want`.
fn abs_errors(
    q: &Graph,
    samples: &[Vec<kiln_ir::Tensor>],
    want: &[Vec<kiln_ir::Tensor>],
) -> Result<(f64, usize, f64), QuantError> {
    let (mut sum, mut count, mut max) = (0f64, 0usize, 0f64);
    for (x, w) in samples.iter().zip(want) {
        let got = kiln_ir::eval::run(q, x).map_err(QuantError::Eval)?;
        for (a, b) in got.iter().zip(w) {
            if b.data.scalar().is_float() {
                for (p, q) in a.to_f64_vec().iter().zip(b.to_f64_vec()) {
                    sum += (p - q).abs();
                    max = max.max((p - q).abs());
                    count += 1;
                }
            }
        }
    }
    Ok((sum, count, max))
}

/// Methods `auto` tries, in order of preference on a tie.
const CANDIDATES: [calibrate::Method; 5] = [
    calibrate::Method::MinMax,
    calibrate::Method::Percentile(99.999),
    calibrate::Method::Percentile(99.99),
    calibrate::Method::Mse,
    calibrate::Method::Entropy,
];

/// Samples `auto` scores each method on (spread evenly over the set).
const AUTO_SAMPLES: usize = 128;

/// The default: calibrate once (with histograms), quantize with every candidate method, and
/// keep the one whose int8 model's outputs are closest to the float model's (mean absolute
/// error) on the calibration samples. No method wins on every model; this picks per model.
fn auto(
    g: &Graph,
    set: &calibrate::CalibrationSet,
    opts: &QuantOptions,
    progress: impl FnMut(usize, usize),
) -> Result<(calibrate::Ranges, calibrate::Method), QuantError> {
    let seen = calibrate::observe(g, set, true, progress)?;
    let picks = set.spread(g, AUTO_SAMPLES);
    let samples: Vec<Vec<kiln_ir::Tensor>> = picks.iter().map(|&i| set.sample(g, i)).collect();
    let want: Vec<Vec<kiln_ir::Tensor>> = samples
        .iter()
        .map(|x| kiln_ir::eval::run(g, x))
        .collect::<Result<_, _>>()
        .map_err(QuantError::Eval)?;
    let mut best: Option<(f64, calibrate::Ranges, calibrate::Method)> = None;
    for (i, m) in CANDIDATES.into_iter().enumerate() {
        opts.progress
            .report("choosing the calibration method", i, CANDIDATES.len());
        let ranges = seen.ranges(g, m);
        let q = quantize_static::run(g, &ranges, opts)?;
        let score = mean_abs_error(&q.graph, &samples, &want)?;
        if best.as_ref().is_none_or(|b| score < b.0) {
            best = Some((score, ranges, m));
        }
        opts.progress
            .report("choosing the calibration method", i + 1, CANDIDATES.len());
    }
    let (_, r, m) = best.expect("candidates");
    Ok((r, m))
}

/// What a build does to a loaded model's numbers. The command line and `kiln::Build` both
/// go through [`apply`], so a mode means the same thing in both.
#[derive(Clone, Debug)]
pub enum Mode {
    /// The float arithmetic the model's ops define (for a quantized model, the float
    /// simulation of its QuantizeLinear/DequantizeLinear).
    Float,
    /// Float16 weights, f32 arithmetic.
    Fp16,
    /// Hybrid int8: int8 weights (a quantized model's own where they have a hybrid form),
    /// activations quantized at run time.
    Dynamic,
    /// Integer code with the parameters of a model that carries its own quantization;
    /// `calibration` gives ranges to values it leaves unquantized.
    Model { calibration: Option<PathBuf> },
    /// Full integer from calibration data.
    Int8 { calibration: PathBuf },
}

impl Mode {
    /// The default for a model: its own quantization when it has one, else float.
    pub fn default_for(g: &Graph) -> Mode {
        if qdq::is_quantized(g) {
            Mode::Model { calibration: None }
        } else {
            Mode::Float
        }
    }
}

/// A graph after [`apply`], with what the caller should tell the user.
pub struct Applied {
    pub graph: Graph,
    pub notes: Vec<String>,
}

/// Rewrites `g` (written by `producer`) for `mode` with `opts`; `progress` as in
/// [`quantize_int8`]. With `Mode::Model` and no numerics in `opts`, the model's origin picks
/// them (with a note).
pub fn apply(
    g: &Graph,
    producer: &str,
    mode: &Mode,
    opts: &QuantOptions,
    progress: impl FnMut(usize, usize),
) -> Result<Applied, QuantError> {
    let mut notes = Vec::new();
    let graph = match mode {
        Mode::Float => g.clone(),
        Mode::Fp16 => {
            let q = fp16::to_fp16(g).map_err(QuantError::Ir)?;
            notes.extend(q.notes);
            notes.push(format!("float16 weights: {} -> {} bytes", q.bytes_f32, q.bytes_f16));
            q.graph
        }
        Mode::Dynamic => {
            quantize_static::check_keep_float(g, opts)?;
            let q = dynamic::to_dynamic(g, &opts.keep_float).map_err(QuantError::Ir)?;
            notes.extend(q.notes);
            notes.push(format!(
                "int8 weights: {} -> {} bytes (with their f32 scales, per channel or per block)",
                q.bytes_f32, q.bytes_int8
            ));
            q.graph
        }
        Mode::Model { calibration } => {
            let mut opts = opts.clone();
            if opts.numerics.is_none()
                && let Some(n) = qdq::origin_numerics(producer)
            {
                let origin = if producer == crate::tflite::PRODUCER {
                    "the model is a TFLite file".to_string()
                } else {
                    format!("the model was written by {producer}")
                };
                notes.push(format!(
                    "integer numerics: {} ({origin}; --numerics onnx gives ONNX Runtime's)",
                    n.name()
                ));
                opts.numerics = Some(n);
            }
            let q = qdq::quantize_model(g, calibration.as_deref(), &opts)?;
            notes.extend(q.notes);
            q.graph
        }
        Mode::Int8 { calibration } => {
            let q = quantize_int8(g, calibration, opts, progress)?;
            notes.extend(q.notes);
            notes.push(format!("calibrated on {} sample(s)", q.samples));
            q.graph
        }
    };
    // every rewrite hands the backends a verified graph
    if !matches!(mode, Mode::Float) {
        kiln_ir::verify::verify(&graph).map_err(QuantError::Ir)?;
    }
    Ok(Applied { graph, notes })
}

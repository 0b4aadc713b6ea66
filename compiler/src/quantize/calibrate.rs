//! Calibration: run the float graph on sample inputs and record, for every value a node
//! produces, the range a quantized type must cover. Ranges are running min/max, so memory is
//! bounded by the number of values, not samples; the samples themselves are read one file
//! per graph input and sliced one sample at a time.
//!
//! Data layouts, for graph input K (a sample is shaped like the graph input, its leading
//! batch dimension of 1 removed):
//! - a directory with `input_K.npy`, samples stacked on axis 0;
//! - an `.npz` archive (`np.savez`, compressed or not) with arrays `input_K` (or the
//!   positional `arr_K`), stacked the same way;
//! - a directory of per-sample subdirectories (sorted by name), each with `input_K.npy`
//!   holding one sample (batch dimension optional), e.g. the `test_data_set_N` folders.
//!
//! A sample with a NaN or an infinity is refused (a silently infinite range would give a
//! useless scale).

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

/// Where one graph input's samples are: a stacked `.npy` file read one sample at a time
/// (so a data set of any size costs one sample of memory), or in memory (an `.npz`
/// archive, per-sample folders, a subset).
enum Source {
    File {
        file: std::sync::Mutex<std::fs::File>,
        /// Byte offset of sample 0 and the element type.
        offset: u64,
        scalar: Scalar,
    },
    Memory(Tensor),
}

/// The calibration set: where each graph input's samples are, and how many there are.
pub struct CalibrationSet {
    sources: Vec<Source>,
    pub samples: usize,
}

/// One graph input's samples, stacked, with the file they come from.
struct Stacked {
    path: PathBuf,
    source: Source,
    shape: Vec<usize>,
    scalar: Scalar,
}

impl Stacked {
    fn memory(path: PathBuf, t: Tensor) -> Stacked {
        let (shape, scalar) = (t.shape.clone(), t.data.scalar());
        Stacked {
            path,
            source: Source::Memory(t),
            shape,
            scalar,
        }
    }
}

/// A stacked `.npy` file opened for reading samples in place, when it is little-endian and
/// C-ordered (else `None`: read it whole).
fn open_stacked(path: &Path) -> Result<Option<Stacked>, String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    f.read_exact(&mut head)
        .map_err(|_| "not a .npy file (too short)".to_string())?;
    if &head[..6] != b"\x93NUMPY" {
        return Err("not a .npy file".into());
    }
    let offset = match head[6] {
        1 => 10 + u16::from_le_bytes([head[8], head[9]]) as u64,
        _ => 12 + u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as u64,
    };
    let npy = crate::npy::read_header(path).map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let Some((shape, scalar)) = npy else { return Ok(None) };
    let n: Option<u64> = shape
        .iter()
        .try_fold(scalar.size() as u64, |a, &d| a.checked_mul(d as u64));
    if n.is_none_or(|n| offset.checked_add(n).is_none_or(|end| end > len)) {
        return Err(format!("shape {shape:?} needs more data than the file holds"));
    }
    let file = std::sync::Mutex::new(f);
    Ok(Some(Stacked {
        path: path.to_path_buf(),
        source: Source::File { file, offset, scalar },
        shape,
        scalar,
    }))
}

impl CalibrationSet {
    /// Loads `dir/input_K.npy` for every graph input and checks it against the graph.
    pub fn load(g: &Graph, dir: &Path) -> Result<CalibrationSet, QuantError> {
        let bad_dir = |msg: &str| QuantError::Calibration {
            path: dir.to_path_buf(),
            msg: msg.to_string(),
        };
        // Each input's samples (stacked) with the file they come from.
        let stacked: Vec<Stacked> =
            if dir.is_file() && dir.extension().is_some_and(|e| e == "npz") {
                let arrays = crate::npy::read_npz(dir).map_err(|e| bad_dir(&e.to_string()))?;
                (0..g.inputs().len())
                    .map(|k| {
                        let named = [format!("input_{k}"), format!("arr_{k}")];
                        (arrays.iter().find(|(n, _)| named.contains(n)))
                            .map(|(n, t)| Stacked::memory(dir.join(n), t.clone()))
                            .ok_or_else(|| bad_dir(&format!("no array `input_{k}` (or `arr_{k}`) in the archive")))
                    })
                    .collect::<Result<_, _>>()?
            } else if dir.is_dir() && dir.join("input_0.npy").exists() {
                (0..g.inputs().len())
                .map(|k| {
                    let path = dir.join(format!("input_{k}.npy"));
                    let bad = |msg: String| QuantError::Calibration { path: path.clone(), msg };
                    if !path.exists() {
                        return Err(bad(format!(
                            "missing: the model has {} input(s), each needs input_K.npy with samples stacked on axis 0",
                            g.inputs().len()
                        )));
                    }
                    match open_stacked(&path).map_err(bad)? {
                        Some(s) => Ok(s),
                        None => {
                            let t = crate::npy::read(&path).map_err(|e| bad(e.to_string()))?;
                            Ok(Stacked::memory(path.clone(), t))
                        }
                    }
                })
                .collect::<Result<_, _>>()?
            } else if dir.is_dir() {
                (per_sample_dirs(g, dir)?.into_iter())
                    .map(|(p, t)| Stacked::memory(p, t))
                    .collect()
            } else {
                return Err(bad_dir("not a directory or an .npz file"));
            };
        let mut sources = Vec::new();
        let mut samples = None;
        for (
            Stacked {
                path,
                source,
                shape,
                scalar,
            },
            &v,
        ) in stacked.into_iter().zip(g.inputs())
        {
            let bad = |msg: String| QuantError::Calibration {
                path: path.clone(),
                msg,
            };
            let want = &g.value(v).ty;
            if scalar != want.dtype.scalar {
                return Err(bad(format!(
                    "element type {scalar}, input `{}` is {}",
                    g.value(v).name,
                    want.dtype.scalar
                )));
            }
            let per_sample = per_sample_shape(&want.shape);
            if shape.len() != per_sample.len() + 1 || shape[1..] != *per_sample {
                return Err(bad(format!(
                    "shape {shape:?}: expected [samples, {}] for input `{}` {}",
                    per_sample.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "),
                    g.value(v).name,
                    want
                )));
            }
            if shape[0] == 0 {
                return Err(bad("holds no samples".into()));
            }
            if let Some(s) = samples
                && s != shape[0]
            {
                return Err(bad(format!("{} samples, the first input has {s}", shape[0])));
            }
            samples = Some(shape[0]);
            sources.push(source);
        }
        let set = CalibrationSet {
            sources,
            samples: samples.unwrap_or(0),
        };
        // a NaN or infinity anywhere is refused up front (one sample in memory at a time)
        for i in 0..set.samples {
            for (k, t) in set.sample(g, i).iter().enumerate() {
                if t.data.scalar() == Scalar::F32 && t.as_slice::<f32>().expect("f32").iter().any(|x| !x.is_finite()) {
                    return Err(QuantError::Calibration {
                        path: dir.join(format!("input_{k}")),
                        msg: format!("sample {i} holds a NaN or infinity"),
                    });
                }
            }
        }
        Ok(set)
    }

    /// The samples at `picks`, as a set of their own (in memory).
    pub fn subset(&self, g: &Graph, picks: &[usize]) -> CalibrationSet {
        let sources = (g.inputs().iter().enumerate())
            .map(|(k, &v)| {
                let mut shape = g.value(v).ty.shape.clone();
                let bytes: Vec<u8> = picks
                    .iter()
                    .flat_map(|&i| self.input(g, k, i).data.to_le_bytes())
                    .collect();
                let data = kiln_ir::Data::from_le_bytes(g.value(v).ty.dtype.scalar, &bytes).expect("whole elements");
                if let Some(d) = shape.first_mut() {
                    *d *= picks.len();
                }
                Source::Memory(Tensor::new(shape, data))
            })
            .collect();
        CalibrationSet {
            sources,
            samples: picks.len(),
        }
    }

    /// Up to `max` sample indices spread evenly over the set, fewer when their inputs would
    /// take more than [`HELD_BYTES`]: what the searches and refinements hold in memory at
    /// once, so a set of large samples costs a bounded amount however many it has.
    pub fn spread(&self, g: &Graph, max: usize) -> Vec<usize> {
        let per: usize = g.inputs().iter().map(|&v| g.value(v).ty.bytes()).sum();
        let n = self.samples.min(max).min((HELD_BYTES / per.max(1)).max(1));
        (0..n).map(|i| i * self.samples / n).collect()
    }

    /// Sample `i` of every input, shaped like the graph inputs.
    pub fn sample(&self, g: &Graph, i: usize) -> Vec<Tensor> {
        (0..g.inputs().len()).map(|k| self.input(g, k, i)).collect()
    }

    /// Sample `i` of input `k`. A read error of a file checked at load (it changed since)
    /// gives zeros, which calibration then sees as such; the file's length was checked.
    fn input(&self, g: &Graph, k: usize, i: usize) -> Tensor {
        let ty = &g.value(g.inputs()[k]).ty;
        let per = ty.numel();
        match &self.sources[k] {
            Source::Memory(t) => {
                let idx: Vec<usize> = (i * per..(i + 1) * per).collect();
                Tensor::new(ty.shape.clone(), t.data.gather(&idx))
            }
            Source::File { file, offset, scalar } => {
                use std::io::{Read, Seek, SeekFrom};
                let n = per * scalar.size();
                let mut bytes = vec![0u8; n];
                let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
                let at = offset + (i * n) as u64;
                let _ = f.seek(SeekFrom::Start(at)).and_then(|_| f.read_exact(&mut bytes));
                let data = kiln_ir::Data::from_le_bytes(*scalar, &bytes).expect("whole elements");
                Tensor::new(ty.shape.clone(), data)
            }
        }
    }
}

/// Input bytes of the samples a search or refinement holds at once (see
/// [`CalibrationSet::spread`]).
pub const HELD_BYTES: usize = 64 << 20;

/// How a tensor's quantization range is chosen from what calibration saw.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// The observed minimum and maximum.
    MinMax,
    /// Clip each tail at this percentile of the observed values (e.g. 99.99).
    Percentile(f64),
    /// The range whose int8 rendering of the histogram loses the least information (KL
    /// divergence, as TensorRT's entropy calibrator). KL over a signed distribution clips
    /// its tails far too hard (measured: 3 dB on the KWS input), so, as TensorRT's
    /// calibrator is meant for non-negative activations, signed tensors use `Mse`; so do
    /// tensors with fewer than 16384 observed values, whose histograms are too sparse for
    /// KL to mean anything (measured: the 8-unit bottleneck of the AD autoencoder fell to
    /// -6 dB).
    Entropy,
    /// The range with the least expected squared error: clipping error outside plus
    /// rounding error (step²/12) inside.
    Mse,
}

impl Method {
    /// Parses the `Display` form.
    pub fn parse(s: &str) -> Option<Method> {
        match s {
            "minmax" => Some(Method::MinMax),
            "entropy" => Some(Method::Entropy),
            "mse" => Some(Method::Mse),
            _ => s.strip_prefix("percentile:")?.parse().ok().map(Method::Percentile),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::MinMax => write!(f, "minmax"),
            Method::Percentile(p) => write!(f, "percentile:{p}"),
            Method::Entropy => write!(f, "entropy"),
            Method::Mse => write!(f, "mse"),
        }
    }
}

/// Histogram bins per value for the histogram methods.
const BINS: usize = 8192;

struct Hist {
    lo: f32,
    hi: f32,
    counts: Vec<u64>,
}

impl Hist {
    fn add(&mut self, t: &Tensor) {
        let w = (self.hi - self.lo) as f64;
        if w <= 0.0 {
            return;
        }
        for &x in t.as_slice::<f32>().expect("f32") {
            if x.is_finite() {
                let b = ((x - self.lo) as f64 / w * BINS as f64) as usize;
                self.counts[b.min(BINS - 1)] += 1;
            }
        }
    }

    fn center(&self, b: usize) -> f64 {
        self.lo as f64 + (b as f64 + 0.5) * (self.hi - self.lo) as f64 / BINS as f64
    }
}

/// A sample's shape: the graph input's without its leading batch dimension of 1.
fn per_sample_shape(shape: &[usize]) -> &[usize] {
    if shape.first() == Some(&1) { &shape[1..] } else { shape }
}

/// One subdirectory per sample (sorted by name), each with `input_K.npy` shaped like graph
/// input K (with or without its batch dimension of 1), stacked here.
fn per_sample_dirs(g: &Graph, dir: &Path) -> Result<Vec<(PathBuf, Tensor)>, QuantError> {
    let bad = |path: &Path, msg: String| QuantError::Calibration {
        path: path.to_path_buf(),
        msg,
    };
    let mut subs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| bad(dir, e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    subs.sort();
    if subs.is_empty() {
        return Err(bad(
            dir,
            "empty: expected input_K.npy (samples on axis 0), one subdirectory per sample, or an .npz file".into(),
        ));
    }
    let mut out = Vec::new();
    for (k, &v) in g.inputs().iter().enumerate() {
        let per = per_sample_shape(&g.value(v).ty.shape).to_vec();
        let mut parts = Vec::new();
        for s in &subs {
            let path = s.join(format!("input_{k}.npy"));
            let t = crate::npy::read(&path).map_err(|e| bad(&path, e.to_string()))?;
            let dims = if t.shape.first() == Some(&1) && t.shape.len() == per.len() + 1 {
                &t.shape[1..]
            } else {
                &t.shape[..]
            };
            if dims != per.as_slice() {
                return Err(bad(
                    &path,
                    format!("shape {:?}: expected one sample of {:?}", t.shape, per),
                ));
            }
            parts.push(t);
        }
        let scalar = parts[0].data.scalar();
        if let Some(p) = parts.iter().position(|t| t.data.scalar() != scalar) {
            return Err(bad(
                &subs[p].join(format!("input_{k}.npy")),
                "element type differs from the first sample's".into(),
            ));
        }
        let bytes: Vec<u8> = parts.iter().flat_map(|t| t.data.to_le_bytes()).collect();
        let data = kiln_ir::Data::from_le_bytes(scalar, &bytes).expect("whole elements");
        let mut shape = vec![parts.len()];
        shape.extend(&per);
        out.push((dir.join(format!("*/input_{k}.npy")), Tensor::new(shape, data)));
    }
    Ok(out)
}

/// Runs every sample through the evaluator and records value ranges, chosen by `method`
/// (min-max needs one pass over the data, the histogram methods two); `progress` is called
/// after each sample run with (done, total).
pub fn calibrate(
    g: &Graph,
    set: &CalibrationSet,
    method: Method,
    progress: impl FnMut(usize, usize),
) -> Result<Ranges, QuantError> {
    Ok(observe(g, set, method != Method::MinMax, progress)?.ranges(g, method))
}

/// What calibration saw: every value's observed range and, for the histogram methods, its
/// histogram over that range. Ranges for any method derive from it without another pass.
pub struct Observed {
    minmax: Ranges,
    hists: HashMap<ValueId, Hist>,
}

/// One pass over the data for min-max, two when histograms are wanted.
pub fn observe(
    g: &Graph,
    set: &CalibrationSet,
    histograms: bool,
    mut progress: impl FnMut(usize, usize),
) -> Result<Observed, QuantError> {
    let passes = if histograms { 2 } else { 1 };
    let total = set.samples * passes;
    let mut r = Ranges::default();
    for i in 0..set.samples {
        let inputs = set.sample(g, i);
        for (&v, t) in g.inputs().iter().zip(&inputs) {
            r.observe(v, t);
        }
        kiln_ir::eval::run_observed(g, &inputs, |v, t| r.observe(v, t)).map_err(QuantError::Eval)?;
        r.samples += 1;
        progress(i + 1, total);
    }
    if !histograms {
        return Ok(Observed {
            minmax: r,
            hists: HashMap::new(),
        });
    }
    let mut hists: HashMap<ValueId, Hist> = r
        .by_value
        .iter()
        .map(|(&v, &(lo, hi))| {
            (
                v,
                Hist {
                    lo,
                    hi,
                    counts: vec![0; BINS],
                },
            )
        })
        .collect();
    for i in 0..set.samples {
        let inputs = set.sample(g, i);
        for (&v, t) in g.inputs().iter().zip(&inputs) {
            if let Some(h) = hists.get_mut(&v) {
                h.add(t);
            }
        }
        kiln_ir::eval::run_observed(g, &inputs, |v, t| {
            if let Some(h) = hists.get_mut(&v)
                && t.data.scalar() == Scalar::F32
            {
                h.add(t);
            }
        })
        .map_err(QuantError::Eval)?;
        progress(set.samples + i + 1, total);
    }
    Ok(Observed { minmax: r, hists })
}

impl Observed {
    /// The ranges `method` chooses (min-max without histograms).
    pub fn ranges(&self, g: &Graph, method: Method) -> Ranges {
        let mut r = self.minmax.clone();
        // Graph outputs keep their whole observed range: clipping what the user reads is a
        // wrong answer, not noise.
        for (v, h) in &self.hists {
            if !g.outputs().contains(v) {
                r.by_value.insert(*v, choose(h, method));
            }
        }
        r
    }
}

/// Candidate ranges shrink the observed one toward zero in 1/128 steps, down to 1/16 of it
/// (1/8 for entropy, whose histogram must keep several bins per int8 step to see rounding).
fn choose(h: &Hist, method: Method) -> (f32, f32) {
    let (lo, hi) = (h.lo.min(0.0) as f64, h.hi.max(0.0) as f64);
    if hi - lo <= 0.0 || method == Method::MinMax {
        return (h.lo, h.hi);
    }
    let total: u64 = h.counts.iter().sum();
    if let Method::Percentile(p) = method {
        let tail = ((1.0 - p / 100.0) * total as f64).max(0.0);
        let (mut acc, mut a) = (0u64, 0usize);
        while a < BINS - 1 && ((acc + h.counts[a]) as f64) <= tail {
            acc += h.counts[a];
            a += 1;
        }
        let (mut acc, mut b) = (0u64, BINS - 1);
        while b > a && ((acc + h.counts[b]) as f64) <= tail {
            acc += h.counts[b];
            b -= 1;
        }
        let step = (h.hi - h.lo) as f64 / BINS as f64;
        let l = if h.lo < 0.0 {
            h.lo as f64 + a as f64 * step
        } else {
            h.lo as f64
        };
        let u = if h.hi > 0.0 {
            h.lo as f64 + (b + 1) as f64 * step
        } else {
            h.hi as f64
        };
        return (l as f32, u as f32);
    }
    let method = if method == Method::Entropy && (h.lo < 0.0 || total < 16384) {
        Method::Mse
    } else {
        method
    };
    let cost = |l: f64, u: f64| match method {
        Method::Mse => mse(h, l, u),
        _ => kl(h, l, u),
    };
    let smallest = if method == Method::Entropy { 16 } else { 8 };
    // The upper end first with the lower one fixed, then the lower end: outliers are often
    // on one side only.
    let mut best = (cost(lo, hi), lo, hi);
    for t in (smallest..128).rev() {
        let u = hi * t as f64 / 128.0;
        let c = cost(lo, u);
        if c < best.0 {
            best = (c, lo, u);
        }
    }
    let u = best.2;
    for t in (smallest..128).rev() {
        let l = lo * t as f64 / 128.0;
        let c = cost(l, u);
        if c < best.0 {
            best = (c, l, u);
        }
    }
    (best.1 as f32, best.2 as f32)
}

/// Expected squared error of int8 over `[l, u]` for the histogram's values.
fn mse(h: &Hist, l: f64, u: f64) -> f64 {
    let step = (u - l) / 255.0;
    let round = step * step / 12.0;
    h.counts
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(b, &c)| {
            let x = h.center(b);
            let e = if x < l {
                (l - x) * (l - x)
            } else if x > u {
                (x - u) * (x - u)
            } else {
                round
            };
            c as f64 * e
        })
        .sum()
}

/// KL divergence between the histogram clipped to `[l, u]` (outliers folded into the edge
/// bins) and its int8 rendering: the bins inside the range (outliers not folded in, so
/// clipping costs) merged into 256 levels, each level's mass spread evenly over the
/// non-empty bins it covers (TensorRT's entropy calibration, for an asymmetric range).
fn kl(h: &Hist, l: f64, u: f64) -> f64 {
    let w = (h.hi - h.lo) as f64 / BINS as f64;
    let first = (((l - h.lo as f64) / w).floor().max(0.0) as usize).min(BINS - 1);
    let last = (((u - h.lo as f64) / w).ceil() as usize).clamp(first + 1, BINS);
    let mut inside: Vec<f64> = h.counts[first..last].iter().map(|&c| c as f64).collect();
    // Zero is exact in int8 (it is the zero point), so the bin holding it, a spike after
    // every ReLU, costs nothing and would otherwise favour ever narrower ranges.
    let zero = ((0.0 - h.lo as f64) / w).floor();
    if zero >= first as f64 && zero < last as f64 {
        inside[zero as usize - first] = 0.0;
    }
    let mut p = inside.clone();
    let below: u64 = h.counts[..first].iter().sum();
    let above: u64 = h.counts[last..].iter().sum();
    p[0] += below as f64;
    *p.last_mut().expect("non-empty") += above as f64;
    if p.iter().all(|&x| x == 0.0) {
        return 0.0;
    }
    let n = p.len();
    let levels = 256.min(n);
    let mut q = vec![0f64; n];
    for lv in 0..levels {
        let (a, b) = (lv * n / levels, ((lv + 1) * n / levels).max(lv * n / levels + 1));
        let mass: f64 = inside[a..b].iter().sum();
        let nz = p[a..b].iter().filter(|&&x| x > 0.0).count();
        if nz > 0 {
            for i in a..b {
                if p[i] > 0.0 {
                    q[i] = mass / nz as f64;
                }
            }
        }
    }
    let (sp, sq): (f64, f64) = (p.iter().sum(), q.iter().sum());
    p.iter()
        .zip(&q)
        .filter(|(a, _)| **a > 0.0)
        .map(|(&a, &b)| {
            let (a, b) = (a / sp, (b / sq).max(1e-12));
            a * (a / b).ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[f32]) -> Hist {
        let lo = values.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut h = Hist {
            lo,
            hi,
            counts: vec![0; BINS],
        };
        h.add(&Tensor::from_vec(vec![values.len()], values.to_vec()));
        h
    }

    #[test]
    fn uniform_data_keeps_its_range_and_outliers_get_clipped() {
        let uniform: Vec<f32> = (0..100_000).map(|i| i as f32 / 100_000.0).collect();
        for m in [Method::Mse, Method::Entropy, Method::Percentile(99.99)] {
            let (_, u) = choose(&hist(&uniform), m);
            assert!(u > 0.95, "{m}: uniform [0,1) clipped at {u}");
        }
        // A bell of 100k values within about ±1, plus one outlier at 50.
        let mut bell: Vec<f32> = (0..100_000)
            .map(|i| {
                let t = (i as f32 + 0.5) / 100_000.0;
                (t - 0.5) * 2.0 * (1.0 - (t - 0.5).abs())
            })
            .collect();
        bell.push(50.0);
        let relu: Vec<f32> = bell.iter().map(|x| x.abs()).collect();
        for (m, data) in [(Method::Entropy, &relu), (Method::Percentile(99.99), &bell)] {
            let (_, u) = choose(&hist(data), m);
            assert!(u < 10.0, "{m}: outlier kept, range up to {u}");
            assert!(u > 0.4, "{m}: clipped into the bulk at {u}");
        }
        // One outlier costs more clipped than the rounding noise it adds to 100k values,
        // so MSE keeps it; its choice is never worse than the full range.
        let h = hist(&bell);
        let (l, u) = choose(&h, Method::Mse);
        assert!(mse(&h, l as f64, u as f64) <= mse(&h, h.lo.min(0.0) as f64, h.hi as f64));
        assert_eq!(choose(&hist(&bell), Method::MinMax).1, 50.0);
    }
}

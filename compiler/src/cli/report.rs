//! `kiln report`: a quantized build against the float model. The figures are gathered once
//! and written as text or as one JSON document (`--json`, docs/json.md).

use super::args::*;
use anyhow::{Context, Result};
use kiln::PipelineOptions;
use kiln::quantize::calibrate::CalibrationSet;
use kiln_ir::{Graph, Tensor, analysis};
use serde_json::json;
use std::io::Write;
use std::path::Path;

/// End-to-end agreement of the build with float on a data set.
#[derive(Default)]
struct EndToEnd {
    samples: usize,
    max_abs: f64,
    mean_abs: f64,
    /// Top-1 agreements (a classifier: the float output comes from a Softmax).
    agree: Option<usize>,
    /// Float and quantized accuracy against `labels.npy`.
    accuracy: Option<(f64, f64)>,
}

fn argmax(v: &[f64]) -> usize {
    (v.iter().enumerate())
        .fold((0, f64::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
        .0
}

fn end_to_end(float: &Graph, q: &Graph, set: &CalibrationSet, labels: Option<&[i64]>) -> Result<EndToEnd> {
    let classifier =
        (float.producer(float.outputs()[0])).is_some_and(|n| matches!(float.node(n).op, kiln_ir::Op::Softmax { .. }));
    let (mut agree, mut right_f, mut right_q, mut sum_abs, mut count) = (0, 0, 0, 0f64, 0usize);
    let mut e = EndToEnd {
        samples: set.samples,
        ..Default::default()
    };
    for i in 0..set.samples {
        super::progress::report("comparing with float", i + 1, set.samples);
        let x = set.sample(float, i);
        let f = kiln_ir::eval::run(float, &x)?[0].to_f64_vec();
        let qv = kiln_ir::eval::run(q, &x)?[0].to_f64_vec();
        let (af, aq) = (argmax(&f), argmax(&qv));
        agree += (af == aq) as usize;
        if let Some(l) = labels {
            right_f += (af as i64 == l[i]) as usize;
            right_q += (aq as i64 == l[i]) as usize;
        }
        for (a, b) in qv.iter().zip(&f) {
            e.max_abs = e.max_abs.max((a - b).abs());
            sum_abs += (a - b).abs();
            count += 1;
        }
    }
    let n = set.samples.max(1) as f64;
    e.mean_abs = sum_abs / count.max(1) as f64;
    e.agree = classifier.then_some(agree);
    e.accuracy = labels.map(|_| (right_f as f64 / n, right_q as f64 / n));
    Ok(e)
}

/// `shapes` plus pins for the symbolic dimensions of inputs the calibration data shows
/// (`DIR/input_K.npy`, samples on axis 0: a symbolic batch dimension becomes 1, the others
/// the array's), with a note per dimension.
fn shapes_from_data(path: &Path, shapes: &ShapeArgs, dir: &Path) -> Result<ShapeArgs> {
    let mut out = shapes.clone();
    let pinned =
        |name: &str| (shapes.input_shape.iter().chain(&shapes.bind)).any(|s| s.split('=').next() == Some(name));
    let declared = kiln::declared_inputs(path)?;
    let open = declared
        .iter()
        .filter(|(name, _)| !shapes.bind.iter().any(|s| s.split('=').next() == Some(name)));
    for (k, (name, dims)) in open.enumerate() {
        let file = dir.join(format!("input_{k}.npy"));
        if pinned(name) || dims.iter().all(|d| d.is_ok()) || !file.exists() {
            continue;
        }
        let shape = kiln::npy::read_shape(&file)?;
        if shape.len() != dims.len() {
            continue; // the calibration loader names the mismatch
        }
        let mut pins = Vec::new();
        for (i, (d, &n)) in dims.iter().zip(&shape).enumerate() {
            let n = if i == 0 { 1 } else { n };
            if let Err(param) = d {
                eprintln!(
                    "note: input `{name}`: dimension {i} (`{param}`) is {n}, from {}",
                    file.display()
                );
            }
            pins.push(d.as_ref().map_or(n, |&v| v).to_string());
        }
        out.input_shape.push(format!("{name}={}", pins.join(",")));
    }
    Ok(out)
}

pub(crate) fn report(
    path: &Path,
    shapes: &ShapeArgs,
    quant: &QuantArgs,
    eval: Option<&Path>,
    json: bool,
) -> Result<()> {
    let mut quant = quant.clone();
    if matches!(quant.quantize, None | Some(QuantMode::None)) {
        quant.quantize = Some(QuantMode::Int8);
    }
    let calib_dir = quant.calibrate.clone().context("report needs --calibrate DIR")?;
    let shapes = &shapes_from_data(path, shapes, &calib_dir)?;
    let float = load(path, shapes, &PipelineOptions::default())?.graph;
    // Data-free modes use the data only to measure.
    let mut build = quant.clone();
    if matches!(quant.quantize, Some(QuantMode::Fp16 | QuantMode::Dynamic)) {
        build.calibrate = None;
    }
    let q = load_quantized(path, shapes, &build)?.graph;
    let mix = kiln::quantize::report::precision_mix(&q);
    let mode = match quant.quantize {
        Some(QuantMode::Fp16) => "float16",
        Some(QuantMode::Dynamic) => "hybrid int8",
        // a build that is not plain int8 (4-bit weights, 16x8 layers, float ones) says so
        _ if mix.split(", ").any(|p| !p.ends_with(" int8")) => "quantized",
        _ => "int8",
    };
    let calib = CalibrationSet::load(&float, &calib_dir)?;
    let samples: Vec<Vec<Tensor>> = (calib.spread(&float, 32).into_iter())
        .map(|i| calib.sample(&float, i))
        .collect();
    let sqnr = kiln::quantize::report::layer_sqnr(&float, &q, &samples)?;
    let (wf, wq) = (analysis::constant_bytes(&float), analysis::constant_bytes(&q));
    let (set, what) = match eval {
        Some(d) => (CalibrationSet::load(&float, d)?, d.display().to_string()),
        None => (calib, "the calibration data".to_string()),
    };
    let labels = (eval.map(|d| d.join("labels.npy")).filter(|p| p.exists()))
        .map(|p| kiln::npy::read(&p).map(|t| t.to_i64_vec()))
        .transpose()?;
    let e = end_to_end(&float, &q, &set, labels.as_deref());
    super::progress::done();
    let e = e?;
    let mut out = std::io::stdout().lock();
    if json {
        let precision = kiln::quantize::report::precisions(&q);
        let doc = json!({
            "command": "report",
            "model": path.display().to_string(),
            "mode": mode,
            "products": precision.iter().map(|(n, p)| json!({"node": n, "precision": p})).collect::<Vec<_>>(),
            "sqnr_samples": samples.len(),
            "layers": sqnr.iter().map(|(n, db)| json!({"value": n, "sqnr_db": db})).collect::<Vec<_>>(),
            "weights": {"float_bytes": wf, "quantized_bytes": wq},
            "end_to_end": {
                "data": what, "samples": e.samples, "max_abs_error": e.max_abs, "mean_abs_error": e.mean_abs,
                "top1_agreement": e.agree, "accuracy_float": e.accuracy.map(|a| a.0), "accuracy_quantized": e.accuracy.map(|a| a.1),
            },
        });
        writeln!(out, "{doc:#}")?;
        return Ok(());
    }
    writeln!(out, "products: {mix}")?;
    writeln!(
        out,
        "per-layer SQNR of the {mode} value against the float one ({} calibration samples):",
        samples.len()
    )?;
    for (name, db) in &sqnr {
        writeln!(out, "  {db:7.1} dB  {name}")?;
    }
    writeln!(
        out,
        "weights: float {wf} bytes, {mode} {wq} bytes ({:.2}x smaller)",
        wf as f64 / wq.max(1) as f64
    )?;
    let n = e.samples;
    writeln!(
        out,
        "end to end on {what} ({n} samples): max abs error {:.4}, mean abs error {:.5}",
        e.max_abs, e.mean_abs
    )?;
    if let Some(agree) = e.agree {
        let pct = 100.0 * agree as f64 / n.max(1) as f64;
        writeln!(out, "  top-1 agreement with float: {agree}/{n} ({pct:.1}%)")?;
    }
    if let Some((f, q)) = e.accuracy {
        writeln!(out, "  accuracy: float {:.2}%, {mode} {:.2}%", 100.0 * f, 100.0 * q)?;
    }
    Ok(())
}

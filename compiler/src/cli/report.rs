//! `kiln report`: a quantized build against the float model.

use super::args::*;
use anyhow::{Context, Result};
use kiln::PipelineOptions;
use kiln_ir::analysis;
use std::io::Write;
use std::path::Path;

pub(crate) fn report(path: &Path, shapes: &ShapeArgs, quant: &QuantArgs, eval: Option<&Path>) -> Result<()> {
    use kiln::quantize::calibrate::CalibrationSet;
    let mut quant = quant.clone();
    if matches!(quant.quantize, None | Some(QuantMode::None)) {
        quant.quantize = Some(QuantMode::Int8);
    }
    let float = load(path, shapes, &PipelineOptions::default())?.graph;
    let mode = match quant.quantize {
        Some(QuantMode::Fp16) => "float16",
        Some(QuantMode::Dynamic) => "hybrid int8",
        _ => "int8",
    };
    // Data-free modes use the data only to measure.
    let mut build = quant.clone();
    if matches!(quant.quantize, Some(QuantMode::Fp16 | QuantMode::Dynamic)) {
        build.calibrate = None;
    }
    let int8 = load_quantized(path, shapes, &build)?.graph;
    let mix = kiln::quantize::report::precision_mix(&int8);
    // a build that is not plain int8 (4-bit weights, 16x8 layers, float ones) says so
    let mode = if mode == "int8" && mix.split(", ").any(|p| !p.ends_with(" int8")) {
        "quantized"
    } else {
        mode
    };
    writeln!(std::io::stdout(), "products: {mix}")?;
    let calib = CalibrationSet::load(
        &float,
        quant.calibrate.as_deref().context("report needs --calibrate DIR")?,
    )?;
    let pick = |set: &CalibrationSet, max: usize| -> Vec<Vec<kiln_ir::Tensor>> {
        let n = set.samples.min(max);
        (0..n).map(|i| set.sample(&float, i * set.samples / n)).collect()
    };
    let samples = pick(&calib, 32);
    writeln!(
        std::io::stdout(),
        "per-layer SQNR of the {mode} value against the float one ({} calibration samples):",
        samples.len()
    )?;
    for (name, db) in kiln::quantize::report::layer_sqnr(&float, &int8, &samples)? {
        writeln!(std::io::stdout(), "  {db:7.1} dB  {name}")?;
    }
    let (wf, wq) = (analysis::constant_bytes(&float), analysis::constant_bytes(&int8));
    writeln!(
        std::io::stdout(),
        "weights: float {wf} bytes, {mode} {wq} bytes ({:.2}x smaller)",
        wf as f64 / wq.max(1) as f64
    )?;
    let (set, what) = match eval {
        Some(d) => (CalibrationSet::load(&float, d)?, d.display().to_string()),
        None => (calib, "the calibration data".to_string()),
    };
    let labels = eval
        .map(|d| d.join("labels.npy"))
        .filter(|p| p.exists())
        .map(|p| kiln::npy::read(&p).map(|t| t.to_i64_vec()))
        .transpose()?;
    let classifier = float
        .producer(float.outputs()[0])
        .is_some_and(|n| matches!(float.node(n).op, kiln_ir::Op::Softmax { .. }));
    let argmax = |v: &[f64]| {
        v.iter()
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
            .0
    };
    let (mut agree, mut right_f, mut right_q, mut max_abs, mut sum_abs, mut count) = (0, 0, 0, 0f64, 0f64, 0usize);
    for i in 0..set.samples {
        let x = set.sample(&float, i);
        let f = kiln_ir::eval::run(&float, &x)?[0].to_f64_vec();
        let q = kiln_ir::eval::run(&int8, &x)?[0].to_f64_vec();
        let (af, aq) = (argmax(&f), argmax(&q));
        agree += (af == aq) as usize;
        if let Some(l) = &labels {
            right_f += (af as i64 == l[i]) as usize;
            right_q += (aq as i64 == l[i]) as usize;
        }
        for (a, b) in q.iter().zip(&f) {
            max_abs = max_abs.max((a - b).abs());
            sum_abs += (a - b).abs();
            count += 1;
        }
    }
    let n = set.samples;
    writeln!(
        std::io::stdout(),
        "end to end on {what} ({n} samples): max abs error {max_abs:.4}, mean abs error {:.5}",
        sum_abs / count.max(1) as f64
    )?;
    if classifier {
        writeln!(
            std::io::stdout(),
            "  top-1 agreement with float: {agree}/{n} ({:.1}%)",
            100.0 * agree as f64 / n as f64
        )?;
    }
    if labels.is_some() {
        writeln!(
            std::io::stdout(),
            "  accuracy: float {:.2}%, {mode} {:.2}%",
            100.0 * right_f as f64 / n as f64,
            100.0 * right_q as f64 / n as f64
        )?;
    }
    Ok(())
}

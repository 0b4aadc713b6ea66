//! `kiln eval` and `kiln bench`: running a model.

use super::args::*;
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};

pub(crate) fn eval(
    path: &Path,
    shapes: &ShapeArgs,
    quant: &QuantArgs,
    inputs: &[PathBuf],
    outputs: &[PathBuf],
) -> Result<()> {
    let shapes = &shapes_from_inputs(path, shapes, inputs)?;
    let m = load_quantized(path, shapes, quant)?;
    let g = &m.graph;
    if inputs.len() != g.inputs().len() {
        bail!(
            "the model has {} inputs, {} --input given",
            g.inputs().len(),
            inputs.len()
        );
    }
    if outputs.len() != g.outputs().len() {
        bail!(
            "the model has {} outputs, {} --output given",
            g.outputs().len(),
            outputs.len()
        );
    }
    let mut ts = Vec::new();
    for (i, (p, &v)) in inputs.iter().zip(g.inputs()).enumerate() {
        let t = kiln::npy::read(p)?;
        let want = &g.value(v).ty;
        if t.shape != want.shape || t.data.scalar() != want.dtype.scalar {
            bail!(
                "{}: input {i} (`{}`) must be {want}, the file holds {}",
                p.display(),
                g.value(v).name,
                t.ty()
            );
        }
        ts.push(t);
    }
    let outs = kiln_ir::eval::run(g, &ts)?;
    for (p, t) in outputs.iter().zip(&outs) {
        kiln::npy::write(p, t)?;
    }
    Ok(())
}

/// `shapes` plus, for each input the model declares with symbolic dimensions and the
/// command line does not pin, the shape of the array given for it (a note per bound
/// dimension). Fixed dimensions must agree; the import checks that.
pub(crate) fn shapes_from_inputs(path: &Path, shapes: &ShapeArgs, inputs: &[PathBuf]) -> Result<ShapeArgs> {
    let mut out = shapes.clone();
    let pinned: Vec<&str> = shapes
        .input_shape
        .iter()
        .filter_map(|s| s.split_once('=').map(|p| p.0))
        .collect();
    let bound: Vec<&str> = shapes
        .bind
        .iter()
        .filter_map(|s| s.split_once('=').map(|p| p.0))
        .collect();
    let declared = kiln::declared_inputs(path)?;
    let open = declared.iter().filter(|(name, _)| !bound.contains(&name.as_str()));
    for ((name, dims), file) in open.zip(inputs) {
        if pinned.contains(&name.as_str()) || dims.iter().all(|d| d.is_ok()) {
            continue;
        }
        let shape = kiln::npy::read_shape(file)?;
        if shape.len() != dims.len() {
            continue; // the import names the mismatch
        }
        for (i, (d, &n)) in dims.iter().zip(&shape).enumerate() {
            if let Err(param) = d {
                eprintln!(
                    "note: input `{name}`: dimension {i} (`{param}`) is {n}, from {}",
                    file.display()
                );
            }
        }
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        out.input_shape.push(format!("{name}={}", dims.join(",")));
    }
    Ok(out)
}

/// A deterministic input for `ty`: uniform in [-1, 1) for floats, zeros otherwise.
pub(crate) fn synthetic(ty: &kiln_ir::TensorType) -> kiln_ir::Tensor {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let n = ty.numel();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let t = kiln_ir::Tensor::from_vec(ty.shape.clone(), v);
    if ty.dtype.scalar.is_float() {
        t.cast(ty.dtype.scalar)
    } else {
        kiln_ir::Tensor::zeros(ty)
    }
}

pub(crate) fn bench(path: &Path, shapes: &ShapeArgs, quant: &QuantArgs, args: &BenchArgs) -> Result<()> {
    if args.target.is_none() && (args.per_layer || args.int_io) {
        bail!("--per-layer and --int-io measure on a simulated part: give --target PART");
    }
    let shapes = &shapes_from_inputs(path, shapes, &args.inputs)?;
    let m = load_quantized(path, shapes, quant)?;
    let g = &m.graph;
    let ts: Vec<kiln_ir::Tensor> = if args.inputs.is_empty() {
        g.inputs().iter().map(|&v| synthetic(&g.value(v).ty)).collect()
    } else {
        (args.inputs.iter())
            .map(|p| kiln::npy::read(p))
            .collect::<Result<_, _>>()?
    };
    if let Some(part) = &args.target {
        return super::onchip::bench(path, g, &ts, part, args);
    }
    let mut flags = kiln::bench::BuildFlags {
        cpu: args.target_cpu.clone(),
        ..Default::default()
    };
    if let Some(c) = &args.cflags {
        flags.cflags = c.split_whitespace().map(str::to_string).collect();
    }
    let runs = args.runs as usize;
    let (what, t) = match args.emit {
        BenchEmit::Eval => ("evaluator".to_string(), kiln::bench::bench_eval(g, &ts, runs)?),
        emit @ (BenchEmit::Object | BenchEmit::C) => {
            // A fresh private folder with an unpredictable name, removed however this ends.
            let work = tempfile::Builder::new()
                .prefix("kiln-bench-")
                .tempdir()
                .context("cannot create a temporary build folder")?;
            let (what, e) = match emit {
                BenchEmit::C => (
                    format!("C source (cc {})", flags.cflags.join(" ")),
                    kiln::compile::Emit::C,
                ),
                _ => (
                    format!(
                        "native object (--target-cpu {})",
                        flags.cpu.as_deref().unwrap_or("default")
                    ),
                    kiln::compile::Emit::Object,
                ),
            };
            let r = kiln::bench::bench_compiled(g, &ts, runs, work.path(), e, &flags);
            (what, r.map_err(anyhow::Error::msg)?)
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let doc = serde_json::json!({
            "command": "bench",
            "model": path.display().to_string(),
            "what": what,
            "runs": t.runs,
            "median_us": t.median_us,
            "min_us": t.min_us,
        });
        writeln!(out, "{doc:#}")?;
        return Ok(());
    }
    writeln!(
        out,
        "{}: {what}, {} runs: median {:.1} us, min {:.1} us per inference",
        path.display(),
        t.runs,
        t.median_us,
        t.min_us
    )?;
    Ok(())
}

//! `kiln bench --target PART`: the model on a simulated microcontroller, through
//! `kiln::onchip` (the code the repository's MCU benchmark measures with).

use super::args::BenchArgs;
use anyhow::{Context, Result, bail};
use kiln::onchip::{self, ModelCode, Part, RunOptions, Tools};
use kiln_ir::{Graph, Tensor};
use std::io::Write;
use std::path::Path;

pub(crate) fn bench(path: &Path, g: &Graph, inputs: &[Tensor], part: &str, args: &BenchArgs) -> Result<()> {
    let part = Part::parse(part)?;
    if args.target_cpu.is_some() || args.cflags.is_some() || !matches!(args.emit, super::args::BenchEmit::Eval) {
        bail!(
            "--target measures the C backend built with the part's own compiler: drop --emit, --target-cpu and --cflags"
        );
    }
    Tools::check(part)?;
    let want = kiln_ir::eval::run(g, inputs)?;
    let (inputs, want) = if args.int_io {
        onchip::int_ports(g, inputs)?
            .context("--int-io needs a model with an integer boundary (int8 or int16 inputs and outputs)")?
    } else {
        (inputs.to_vec(), want)
    };
    // A fresh private folder with an unpredictable name, removed however this ends.
    let work = tempfile::Builder::new()
        .prefix("kiln-bench-")
        .tempdir()
        .context("cannot create a temporary build folder")?;
    let tools = Tools::build(&[part], &work.path().join("tools"))?;
    let opts = RunOptions {
        int: args.int_io,
        per_layer: args.per_layer,
    };
    let mut m = onchip::run(part, g, &inputs, &ModelCode::C, opts, &tools, &work.path().join("run"))?;
    if !args.per_layer {
        m.layers.clear(); // AVR builds measure them anyway
    }
    let agreement =
        onchip::agree(&m.outputs, &want).map_err(|e| anyhow::anyhow!("on {} the model's {e}", part.name()))?;
    let entry = if args.int_io { "model_run_int" } else { "model_run" };
    let mut out = std::io::stdout().lock();
    if args.json {
        let layers: Vec<serde_json::Value> = (m.layers.iter())
            .map(|l| serde_json::json!({"kernel": l.kernel, "node": l.node, "op": l.op, "cost": l.cost}))
            .collect();
        let doc = serde_json::json!({
            "command": "bench",
            "model": path.display().to_string(),
            "target": part.name(),
            "simulator": part.simulator(),
            "entry": entry,
            "unit": part.unit(),
            "per_inference": m.cost,
            "outputs": {
                "exact": agreement.exact,
                "max_abs_diff": agreement.max_abs,
                "of_range": agreement.of_range,
                "tolerance": onchip::FLOAT_TOLERANCE,
            },
            "flash": {"program": m.flash, "model_code": m.model_code, "model_constants": m.model_constants},
            "arena": m.arena,
            "static_ram": m.ram,
            "peak_stack": m.stack,
            "layers": layers,
        });
        writeln!(out, "{doc:#}")?;
        return Ok(());
    }
    let time = if part.is_avr() {
        format!(" ({:.2} ms at 16 MHz)", m.cost as f64 / 16e3)
    } else {
        String::new()
    };
    writeln!(
        out,
        "{}: {} ({}), {entry}: {} {} per inference{time}",
        path.display(),
        part.name(),
        part.simulator(),
        m.cost,
        part.unit()
    )?;
    let check = if agreement.exact {
        "outputs equal the evaluator's bit for bit".to_string()
    } else {
        format!(
            "outputs within {:.1e} of the evaluator's, relative to the output's range (max |diff| {:.3e})",
            agreement.of_range, agreement.max_abs
        )
    };
    writeln!(out, "  {check}")?;
    writeln!(
        out,
        "  flash: model code {} B + constants {} B (whole program {} B); arena {} B; static RAM {} B; peak stack {} B",
        m.model_code, m.model_constants, m.flash, m.arena, m.ram, m.stack
    )?;
    if !m.layers.is_empty() {
        writeln!(
            out,
            "  {:>4}  {:<36} {:<18} {:>12} {:>6}",
            "k",
            "node",
            "op",
            part.unit(),
            "share"
        )?;
        let total: u64 = m.layers.iter().map(|l| l.cost).sum::<u64>().max(1);
        for l in &m.layers {
            let name: String = l.node.chars().take(36).collect();
            writeln!(
                out,
                "  {:>4}  {:<36} {:<18} {:>12} {:>5.1}%",
                l.kernel,
                name,
                l.op,
                l.cost,
                100.0 * l.cost as f64 / total as f64
            )?;
        }
    } else if args.per_layer {
        writeln!(out, "  (no kernel was marked: the model has no kernel calls)")?;
    }
    Ok(())
}

//! `kiln compile` and `kiln ops`.

use super::args::*;
use anyhow::Result;
use std::io::Write;
use std::path::Path;

#[allow(clippy::too_many_arguments)]
pub(crate) fn compile(
    path: &Path,
    shapes: &ShapeArgs,
    quant: &QuantArgs,
    emit: EmitArg,
    target: &str,
    target_cpu: Option<&str>,
    prefix: Option<&str>,
    out_dir: &Path,
    clif: bool,
) -> Result<()> {
    use kiln::compile::{self, CompileOptions, Emit};
    if target_cpu.is_some() && emit != EmitArg::Object {
        anyhow::bail!(
            "--target-cpu applies to native objects (--emit object); give C and Rust source's compiler its own CPU flags"
        );
    }
    let target = compile::parse_target(target)?.with_cpu(target_cpu);
    let prefix = prefix
        .map(String::from)
        .unwrap_or_else(|| compile::default_prefix(path));
    let start = std::time::Instant::now();
    let m = load_quantized(path, shapes, quant)?;
    let source = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = compile::compile(
        &m.graph,
        &CompileOptions {
            emit: match emit {
                EmitArg::Object => Emit::Object,
                EmitArg::C => Emit::C,
                EmitArg::Rust => Emit::RustSource,
            },
            target: target.clone(),
            prefix: prefix.clone(),
        },
        &source,
    )?;
    if clif {
        out.files
            .push((format!("{prefix}.clif"), out.clif.clone().into_bytes()));
    }
    compile::write_files(out_dir, &out.files, &m.files)?;
    let r = &out.report;
    writeln!(
        std::io::stdout(),
        "{prefix}: {} kernels for {target}; arena {} bytes (lower bound {}); {} {} bytes; {:.0} ms",
        r.kernels,
        r.arena_size,
        r.arena_lower_bound,
        match emit {
            EmitArg::C => "C source",
            EmitArg::Rust => "Rust source",
            EmitArg::Object => "object",
        },
        r.object_bytes,
        start.elapsed().as_secs_f64() * 1e3
    )?;
    let widths = compile::accumulator_widths(&m.graph);
    if !widths.is_empty() {
        // by name for a few short-named layers, else counted per width
        let list: Vec<String> = if widths.len() <= 8 && widths.iter().all(|(n, _)| n.len() <= 40) {
            widths.iter().map(|(n, b)| format!("`{n}` {b}")).collect()
        } else {
            let mut per: std::collections::BTreeMap<u32, usize> = Default::default();
            for (_, b) in &widths {
                *per.entry(*b).or_default() += 1;
            }
            per.iter().map(|(b, k)| format!("{b} x{k}")).collect()
        };
        writeln!(
            std::io::stdout(),
            "accumulator bits (proven to hold every sum): {}",
            list.join(", ")
        )?;
    }
    Ok(())
}

/// `kiln ops`: the supported ONNX operators and TFLite builtins.
pub(crate) fn ops(markdown: bool) -> Result<()> {
    let mut o = std::io::stdout().lock();
    if markdown {
        write!(o, "{}{}", kiln::onnx::ops::markdown(), kiln::tflite::markdown())?;
        return Ok(());
    }
    for op in kiln::onnx::ops::REGISTRY {
        writeln!(o, "{}", op.op_type)?;
    }
    for (_, name, _) in kiln::tflite::BUILTINS {
        writeln!(o, "tflite:{name}")?;
    }
    Ok(())
}

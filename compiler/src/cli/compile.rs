//! `kiln compile` and `kiln ops`.

use super::args::*;
use anyhow::Result;
use serde_json::json;
use std::io::Write;
use std::path::Path;

pub(crate) fn compile(path: &Path, shapes: &ShapeArgs, quant: &QuantArgs, args: &CompileArgs) -> Result<()> {
    use kiln::compile::{self, CompileOptions, Emit};
    let emit = args.emit;
    if args.target_cpu.is_some() && emit != EmitArg::Object {
        anyhow::bail!(
            "--target-cpu applies to native objects (--emit object); give C and Rust source's compiler its own CPU flags"
        );
    }
    if args.static_arena && emit != EmitArg::C {
        anyhow::bail!(
            "--static-arena is for C source (--emit c); objects and Rust source take the arena from the caller"
        );
    }
    let target = compile::parse_target(&args.target)?.with_cpu(args.target_cpu.as_deref());
    let prefix = (args.prefix.clone()).unwrap_or_else(|| compile::default_prefix(path));
    let start = std::time::Instant::now();
    let m = load_quantized(path, shapes, quant)?;
    let source = (path.file_name())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let opts = CompileOptions {
        emit: match emit {
            EmitArg::Object => Emit::Object,
            EmitArg::C => Emit::C,
            EmitArg::Rust => Emit::RustSource,
        },
        target: target.clone(),
        prefix: prefix.clone(),
        static_arena: args.static_arena,
    };
    let mut out = compile::compile(&m.graph, &opts, &source)?;
    if args.clif {
        (out.files).push((format!("{prefix}.clif"), out.clif.clone().into_bytes()));
    }
    compile::write_files(&args.out_dir, &out.files, &m.files)?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let r = &out.report;
    let widths = compile::accumulator_widths(&m.graph);
    let what = match emit {
        EmitArg::C => "C source",
        EmitArg::Rust => "Rust source",
        EmitArg::Object => "object",
    };
    let mut o = std::io::stdout().lock();
    if args.json {
        let precision = kiln::quantize::report::precisions(&m.graph);
        let doc = json!({
            "command": "compile",
            "model": path.display().to_string(),
            "prefix": prefix,
            "target": target.to_string(),
            "emit": what,
            "kernels": r.kernels,
            "arena_bytes": r.arena_size,
            "arena_lower_bound": r.arena_lower_bound,
            "output_bytes": r.object_bytes,
            "constant_bytes": kiln_ir::analysis::constant_bytes(&m.graph),
            "compile_ms": ms,
            "files": out.files.iter().map(|(f, b)| json!({"name": f, "bytes": b.len()})).collect::<Vec<_>>(),
            "products": precision.iter().map(|(n, p)| json!({"node": n, "precision": p})).collect::<Vec<_>>(),
            "accumulator_bits": widths.iter().map(|(n, b)| json!({"node": n, "bits": b})).collect::<Vec<_>>(),
        });
        writeln!(o, "{doc:#}")?;
        return Ok(());
    }
    writeln!(
        o,
        "{prefix}: {} kernels for {target}; arena {} bytes (lower bound {}); {what} {} bytes; {ms:.0} ms",
        r.kernels, r.arena_size, r.arena_lower_bound, r.object_bytes,
    )?;
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
        writeln!(o, "accumulator bits (proven to hold every sum): {}", list.join(", "))?;
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

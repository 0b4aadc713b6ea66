//! `kiln inspect`: what a model is, per layer. The figures are gathered once and then
//! written as text or as one JSON document (`--json`, docs/json.md).

use super::args::*;
use anyhow::{Context, Result, bail};
use kiln::PipelineOptions;
use kiln::onnx::proto::ModelProto;
use kiln_ir::{Graph, ValueDef, analysis};
use prost::Message;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

pub(crate) fn human(n: u64) -> String {
    match n {
        n if n >= 10_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 10_000 => format!("{:.1}k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// What the file itself says, before import.
struct FileSummary {
    format: &'static str,
    bytes: usize,
    /// Producer and opsets (ONNX) or schema and description (TFLite), as one line.
    about: String,
    /// Node or operator counts by the file's own op names.
    ops: Vec<(String, usize)>,
    extra: Value,
}

fn onnx_summary(path: &Path, bytes: &[u8]) -> Result<FileSummary> {
    let proto = ModelProto::decode(bytes).with_context(|| format!("{} is not a valid ONNX model", path.display()))?;
    let g = (proto.graph.as_ref()).with_context(|| format!("{} has no graph", path.display()))?;
    let opsets: Vec<(String, i64)> = (proto.opset_import.iter())
        .map(|o| {
            let domain = if o.domain.is_empty() { "ai.onnx" } else { &o.domain };
            (domain.to_string(), o.version)
        })
        .collect();
    let list: Vec<String> = opsets.iter().map(|(d, v)| format!("{d}:{v}")).collect();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for n in &g.node {
        *counts.entry(n.op_type.clone()).or_default() += 1;
    }
    Ok(FileSummary {
        format: "onnx",
        bytes: bytes.len(),
        about: format!(
            "producer {} {}, opsets {}",
            proto.producer_name,
            proto.producer_version,
            list.join(" ")
        ),
        ops: counts.into_iter().collect(),
        extra: json!({
            "producer": proto.producer_name,
            "producer_version": proto.producer_version,
            "opsets": opsets.iter().map(|(d, v)| json!({"domain": d, "version": v})).collect::<Vec<_>>(),
        }),
    })
}

fn file_summary(path: &Path, bytes: &[u8]) -> Result<FileSummary> {
    if !kiln::tflite::is_tflite(bytes) {
        return onnx_summary(path, bytes);
    }
    let (about, ops) = kiln::tflite::summary(bytes)
        .map_err(|e| anyhow::anyhow!("{} is not a valid TFLite model: {e}", path.display()))?;
    Ok(FileSummary {
        format: "tflite",
        bytes: bytes.len(),
        about,
        ops,
        extra: json!({}),
    })
}

/// One node of the imported graph.
#[derive(Clone, PartialEq)]
struct Row {
    node: String,
    op: &'static str,
    output: String,
    macs: u64,
    params: u64,
    param_bytes: u64,
    act_bytes: u64,
}

fn rows(g: &Graph) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for n in g.topo_order()? {
        let node = g.node(n);
        let consts: Vec<_> = node.inputs.iter().filter(|&&v| g.const_value(v).is_some()).collect();
        rows.push(Row {
            node: node.name.clone(),
            op: node.op.name(),
            output: g.value(node.outputs[0]).ty.to_string(),
            macs: analysis::macs(g, n),
            params: consts.iter().map(|&&v| g.value(v).ty.numel() as u64).sum(),
            param_bytes: consts.iter().map(|&&v| g.value(v).ty.bytes() as u64).sum(),
            act_bytes: node.outputs.iter().map(|&o| g.value(o).ty.bytes() as u64).sum(),
        });
    }
    Ok(rows)
}

/// A model with symbolic input dimensions: the symbols (`input`, dimension, name) and the
/// rows of two imports with different values pinned for them. A figure both give alike
/// does not depend on the symbols; the others are unknown until pinned.
struct Probe {
    symbols: Vec<(String, usize, String)>,
    a: Vec<Row>,
    b: Vec<Row>,
}

fn probe(path: &Path, shapes: &ShapeArgs) -> Option<Probe> {
    let declared = kiln::declared_inputs(path).ok()?;
    let pinned = |n: &str| (shapes.input_shape.iter().chain(&shapes.bind)).any(|s| s.split('=').next() == Some(n));
    let mut symbols = Vec::new();
    let (mut a, mut b) = (shapes.clone(), shapes.clone());
    for (name, dims) in declared.iter().filter(|(n, _)| !pinned(n)) {
        if dims.iter().skip(1).all(|d| d.is_ok()) {
            continue; // a symbolic batch dimension alone is set to 1 by the import
        }
        let (mut da, mut db) = (Vec::new(), Vec::new());
        for (i, d) in dims.iter().enumerate() {
            let (x, y) = match d {
                Ok(v) => (*v, *v),
                Err(_) if i == 0 => (1, 1),
                Err(p) => {
                    // distinct sizes per symbol, multiples of 32 for strided networks
                    let k = symbols.len();
                    symbols.push((name.clone(), i, p.clone()));
                    (64 + 32 * k, 96 + 32 * k)
                }
            };
            da.push(x.to_string());
            db.push(y.to_string());
        }
        a.input_shape.push(format!("{name}={}", da.join(",")));
        b.input_shape.push(format!("{name}={}", db.join(",")));
    }
    if symbols.is_empty() {
        return None;
    }
    let rows_of = |s: &ShapeArgs| -> Option<Vec<Row>> {
        let m = kiln::load(path, &import_options(s).ok()?, &PipelineOptions::default(), |_, _| {}).ok()?;
        rows(&m.graph).ok()
    };
    let (a, b) = (rows_of(&a)?, rows_of(&b)?);
    let same_graph = a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| x.node == y.node && x.op == y.op);
    same_graph.then_some(Probe { symbols, a, b })
}

/// The inputs as the file declares them, symbolic dimensions by name.
fn declared(path: &Path, out: &mut dyn Write) -> Result<()> {
    for (name, dims) in kiln::declared_inputs(path).unwrap_or_default() {
        let d: Vec<String> = (dims.iter())
            .map(|d| d.as_ref().map_or_else(|p| p.clone(), |v| v.to_string()))
            .collect();
        writeln!(out, "input     {name}: [{}] (as declared)", d.join(","))?;
    }
    Ok(())
}

/// What `inspect` can say of a model whose input dimensions are symbolic.
fn inspect_symbolic(path: &Path, file: &FileSummary, p: &Probe, json: bool, out: &mut dyn Write) -> Result<()> {
    let known = |x: u64, y: u64| (x == y).then_some(x);
    let dims = |x: &str, y: &str| -> String {
        // `f32[1,16,32,48]` and `f32[1,16,48,64]`: `f32[1,16,?,?]`
        match (x.split_once('['), y.split_once('[')) {
            (Some((t, dx)), Some((_, dy))) => {
                let (dx, dy): (Vec<&str>, Vec<&str>) = (
                    dx.trim_end_matches(']').split(',').collect(),
                    dy.trim_end_matches(']').split(',').collect(),
                );
                let d: Vec<&str> = dx.iter().zip(&dy).map(|(a, b)| if a == b { *a } else { "?" }).collect();
                if dx.len() == dy.len() {
                    format!("{t}[{}]", d.join(","))
                } else {
                    format!("{t}[?]")
                }
            }
            _ if x == y => x.to_string(),
            _ => "?".into(),
        }
    };
    let names: Vec<String> = p
        .symbols
        .iter()
        .map(|s| format!("`{}` (input `{}` dimension {})", s.2, s.0, s.1))
        .collect();
    if json {
        let layers: Vec<Value> = (p.a.iter().zip(&p.b).enumerate())
            .map(|(i, (x, y))| json!({
                "index": i, "node": x.node, "op": x.op, "output": dims(&x.output, &y.output),
                "macs": known(x.macs, y.macs), "params": known(x.params, y.params),
                "param_bytes": known(x.param_bytes, y.param_bytes), "activation_bytes": known(x.act_bytes, y.act_bytes),
            }))
            .collect();
        let doc = json!({
            "command": "inspect",
            "model": path.display().to_string(),
            "file": {"format": file.format, "bytes": file.bytes, "about": file.about, "details": file.extra},
            "symbolic": p.symbols.iter().map(|s| json!({"input": s.0, "dimension": s.1, "name": s.2})).collect::<Vec<_>>(),
            "layers": layers,
        });
        writeln!(out, "{doc:#}")?;
        return Ok(());
    }
    writeln!(
        out,
        "symbolic  {}: figures that depend on them show `?`; pin them with --input-shape for the rest",
        names.join(", ")
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:>4}  {:<36} {:<18} {:<28} {:>10} {:>10} {:>10}",
        "#", "node", "op", "output", "MACs", "params", "act bytes"
    )?;
    let show = |v: Option<u64>, f: fn(u64) -> String| v.map_or("?".to_string(), f);
    for (i, (x, y)) in p.a.iter().zip(&p.b).enumerate() {
        let name: String = x.node.chars().take(36).collect();
        writeln!(
            out,
            "{:>4}  {:<36} {:<18} {:<28} {:>10} {:>10} {:>10}",
            i,
            name,
            x.op,
            dims(&x.output, &y.output),
            show(known(x.macs, y.macs), human),
            show(known(x.params, y.params), human),
            show(known(x.act_bytes, y.act_bytes), |v| v.to_string())
        )?;
    }
    Ok(())
}

pub(crate) fn inspect(path: &Path, shapes: &ShapeArgs, json: bool) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = file_summary(path, &bytes)?;
    let mut out = std::io::stdout().lock();
    let head = |out: &mut dyn Write| -> Result<()> {
        writeln!(
            out,
            "model     {} ({} bytes, {})",
            path.display(),
            file.bytes,
            file.about
        )?;
        let total: usize = file.ops.iter().map(|c| c.1).sum();
        let list: Vec<String> = file.ops.iter().map(|(k, v)| format!("{k} x{v}")).collect();
        let (label, unit) = if file.format == "tflite" {
            ("tflite ops", "operators")
        } else {
            ("onnx ops ", "nodes")
        };
        writeln!(out, "{label} {total} {unit}: {}", list.join(", "))?;
        Ok(())
    };
    let model = match load(path, shapes, &PipelineOptions::default()) {
        Ok(m) => m,
        Err(e) => {
            if let Some(p) = probe(path, shapes) {
                if !json {
                    head(&mut out)?;
                    declared(path, &mut out)?;
                }
                return inspect_symbolic(path, &file, &p, json, &mut out);
            }
            if json {
                bail!(e)
            }
            head(&mut out)?;
            declared(path, &mut out)?;
            writeln!(out, "unsupported / errors:")?;
            bail!(e)
        }
    };
    let g = &model.graph;
    let rows = rows(g)?;
    let mut by_op: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for r in &rows {
        let e = by_op.entry(r.op).or_default();
        e.0 += 1;
        e.1 += r.macs;
    }
    let macs: u64 = rows.iter().map(|r| r.macs).sum();
    let act_total: u64 = rows.iter().map(|r| r.act_bytes).sum();
    let act_max = rows.iter().map(|r| r.act_bytes).max().unwrap_or(0);
    let params = analysis::parameter_count(g);
    let param_bytes: usize = (0..g.num_values())
        .map(kiln_ir::ValueId::from_index)
        .filter(|&v| matches!(g.value(v).def, ValueDef::Const(_)) && !g.consumers(v).is_empty())
        .map(|v| g.value(v).ty.bytes())
        .sum();
    let port = |v: kiln_ir::ValueId| json!({"name": g.value(v).name, "type": g.value(v).ty.to_string()});
    if json {
        let doc = json!({
            "command": "inspect",
            "model": path.display().to_string(),
            "file": {"format": file.format, "bytes": file.bytes, "about": file.about,
                     "ops": file.ops.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
                     "details": file.extra},
            "inputs": g.inputs().iter().map(|&v| port(v)).collect::<Vec<_>>(),
            "outputs": g.outputs().iter().map(|&v| port(v)).collect::<Vec<_>>(),
            "layers": rows.iter().enumerate().map(|(i, r)| json!({
                "index": i, "node": r.node, "op": r.op, "output": r.output, "macs": r.macs,
                "params": r.params, "param_bytes": r.param_bytes, "activation_bytes": r.act_bytes,
            })).collect::<Vec<_>>(),
            "ops": by_op.iter().map(|(k, (c, m))| (k.to_string(), json!({"count": c, "macs": m}))).collect::<serde_json::Map<_, _>>(),
            "totals": {"nodes": g.node_count(), "macs": macs, "params": params, "param_bytes": param_bytes,
                       "activation_bytes": act_total, "largest_activation_bytes": act_max},
        });
        writeln!(out, "{doc:#}")?;
        return Ok(());
    }
    head(&mut out)?;
    for &v in g.inputs() {
        writeln!(out, "input     {}: {}", g.value(v).name, g.value(v).ty)?;
    }
    for &v in g.outputs() {
        writeln!(out, "output    {}: {}", g.value(v).name, g.value(v).ty)?;
    }
    writeln!(out)?;
    let line = |out: &mut dyn Write, c: [&str; 7]| {
        writeln!(
            out,
            "{:>4}  {:<36} {:<18} {:<28} {:>10} {:>10} {:>10}",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6]
        )
    };
    line(&mut out, ["#", "node", "op", "output", "MACs", "params", "act bytes"])?;
    for (i, r) in rows.iter().enumerate() {
        let name: String = r.node.chars().take(36).collect();
        let (i, macs, params, act) = (i.to_string(), human(r.macs), human(r.params), r.act_bytes.to_string());
        line(&mut out, [&i, &name, r.op, &r.output, &macs, &params, &act])?;
    }
    writeln!(out)?;
    let list: Vec<String> = (by_op.iter())
        .map(|(k, (c, m))| match m {
            0 => format!("{k} x{c}"),
            m => format!("{k} x{c} ({} MACs)", human(*m)),
        })
        .collect();
    writeln!(out, "ir ops    {} nodes: {}", g.node_count(), list.join(", "))?;
    writeln!(out, "MACs      {macs} total")?;
    writeln!(out, "params    {params} ({param_bytes} bytes)")?;
    writeln!(
        out,
        "activations {act_total} bytes in all node outputs, largest {act_max} bytes"
    )?;
    writeln!(out, "unsupported ops: none")?;
    Ok(())
}

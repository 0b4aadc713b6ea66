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
        Err(e) if json => bail!(e),
        Err(e) => {
            head(&mut out)?;
            // what the file declares, symbolic dimensions by name, when the import stops
            for (name, dims) in kiln::declared_inputs(path).unwrap_or_default() {
                let d: Vec<String> = (dims.iter())
                    .map(|d| d.as_ref().map_or_else(|p| p.clone(), |v| v.to_string()))
                    .collect();
                writeln!(out, "input     {name}: [{}] (as declared)", d.join(","))?;
            }
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

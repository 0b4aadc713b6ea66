//! `kiln inspect`: what a model is, per layer.

use super::args::*;
use anyhow::{Context, Result, bail};
use kiln::PipelineOptions;
use kiln::onnx::proto::ModelProto;
use kiln_ir::{Graph, ValueDef, analysis};
use prost::Message;
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

/// The ONNX file's own figures: producer, opsets and node counts.
pub(crate) fn inspect_onnx_header(path: &Path, bytes: &[u8]) -> Result<()> {
    let proto = ModelProto::decode(bytes).with_context(|| format!("{} is not a valid ONNX model", path.display()))?;
    let g = proto
        .graph
        .as_ref()
        .with_context(|| format!("{} has no graph", path.display()))?;
    let opsets: Vec<String> = proto
        .opset_import
        .iter()
        .map(|o| {
            format!(
                "{}:{}",
                if o.domain.is_empty() { "ai.onnx" } else { &o.domain },
                o.version
            )
        })
        .collect();
    writeln!(
        std::io::stdout(),
        "model     {} ({} bytes, producer {} {}, opsets {})",
        path.display(),
        bytes.len(),
        proto.producer_name,
        proto.producer_version,
        opsets.join(" ")
    )?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &g.node {
        *counts.entry(&n.op_type).or_default() += 1;
    }
    let list: Vec<String> = counts.iter().map(|(k, v)| format!("{k} x{v}")).collect();
    writeln!(
        std::io::stdout(),
        "onnx ops  {} nodes: {}",
        g.node.len(),
        list.join(", ")
    )?;
    Ok(())
}

pub(crate) fn inspect(path: &Path, shapes: &ShapeArgs) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if kiln::tflite::is_tflite(&bytes) {
        let (head, counts) = kiln::tflite::summary(&bytes)
            .map_err(|e| anyhow::anyhow!("{} is not a valid TFLite model: {e}", path.display()))?;
        writeln!(
            std::io::stdout(),
            "model     {} ({} bytes, {head})",
            path.display(),
            bytes.len()
        )?;
        let total: usize = counts.iter().map(|c| c.1).sum();
        let list: Vec<String> = counts.iter().map(|(k, v)| format!("{k} x{v}")).collect();
        writeln!(std::io::stdout(), "tflite ops {total} operators: {}", list.join(", "))?;
    } else {
        inspect_onnx_header(path, &bytes)?;
    }
    let model = match load(path, shapes, &PipelineOptions::default()) {
        Ok(m) => m,
        Err(e) => {
            // what the file declares, symbolic dimensions by name, when the import stops
            for (name, dims) in kiln::declared_inputs(path).unwrap_or_default() {
                let d: Vec<String> = (dims.iter())
                    .map(|d| d.as_ref().map_or_else(|p| p.clone(), |v| v.to_string()))
                    .collect();
                writeln!(std::io::stdout(), "input     {name}: [{}] (as declared)", d.join(","))?;
            }
            writeln!(std::io::stdout(), "unsupported / errors:")?;
            bail!(e)
        }
    };
    let gr = &model.graph;
    for &v in gr.inputs() {
        writeln!(std::io::stdout(), "input     {}: {}", gr.value(v).name, gr.value(v).ty)?;
    }
    for &v in gr.outputs() {
        writeln!(std::io::stdout(), "output    {}: {}", gr.value(v).name, gr.value(v).ty)?;
    }
    layer_table(gr)?;
    writeln!(std::io::stdout(), "unsupported ops: none")?;
    Ok(())
}

pub(crate) fn layer_table(g: &Graph) -> Result<()> {
    writeln!(std::io::stdout())?;
    writeln!(
        std::io::stdout(),
        "{:>4}  {:<36} {:<18} {:<28} {:>10} {:>10} {:>10}",
        "#",
        "node",
        "op",
        "output",
        "MACs",
        "params",
        "act bytes"
    )?;
    let mut total_macs = 0u64;
    let mut act_total = 0u64;
    let mut act_max = 0u64;
    let mut by_op: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for (i, n) in g.topo_order()?.into_iter().enumerate() {
        let node = g.node(n);
        let macs = analysis::macs(g, n);
        let params: usize = node
            .inputs
            .iter()
            .filter_map(|&v| g.const_value(v))
            .map(|t| t.numel())
            .sum();
        let act: u64 = node.outputs.iter().map(|&o| g.value(o).ty.bytes() as u64).sum();
        total_macs += macs;
        act_total += act;
        act_max = act_max.max(act);
        let e = by_op.entry(node.op.name()).or_default();
        e.0 += 1;
        e.1 += macs;
        let out = g.value(node.outputs[0]).ty.to_string();
        let name: String = node.name.chars().take(36).collect();
        writeln!(
            std::io::stdout(),
            "{:>4}  {:<36} {:<18} {:<28} {:>10} {:>10} {:>10}",
            i,
            name,
            node.op.name(),
            out,
            human(macs),
            human(params as u64),
            act
        )?;
    }
    let params = analysis::parameter_count(g);
    let param_bytes: usize = (0..g.num_values())
        .map(kiln_ir::ValueId::from_index)
        .filter(|&v| matches!(g.value(v).def, ValueDef::Const(_)) && !g.consumers(v).is_empty())
        .map(|v| g.value(v).ty.bytes())
        .sum();
    writeln!(std::io::stdout())?;
    let list: Vec<String> = by_op
        .iter()
        .map(|(k, (c, m))| {
            if *m > 0 {
                format!("{k} x{c} ({} MACs)", human(*m))
            } else {
                format!("{k} x{c}")
            }
        })
        .collect();
    writeln!(
        std::io::stdout(),
        "ir ops    {} nodes: {}",
        g.node_count(),
        list.join(", ")
    )?;
    writeln!(std::io::stdout(), "MACs      {total_macs} total")?;
    writeln!(std::io::stdout(), "params    {params} ({param_bytes} bytes)")?;
    writeln!(
        std::io::stdout(),
        "activations {act_total} bytes in all node outputs, largest {act_max} bytes"
    )?;
    Ok(())
}

//! Integer code from a model that carries its own quantization (QDQ from quantization-aware
//! training or `quantize_static`, and QOperator ops, which the importer expands into the
//! same form). Instead of calibrating, the model's `Quantize -> Dequantize` pairs are read as
//! the exact parameters of the value they wrap and removed; the float graph that remains is
//! rewritten by `quantize_static` with those parameters pinned. Weights and biases arrive as
//! float constants that record their integer grid (see the importer), so the integer ops use
//! the model's own integers and scales.

use super::calibrate::{self, Ranges};
use super::quantize_static::{self, Q};
use super::{QuantError, QuantOptions, Quantized};
use crate::passes;
use kiln_ir::op::{Numerics, UnaryOp};
use kiln_ir::{Graph, Op, Scalar, Tensor, ValueId};
use std::collections::HashMap;
use std::path::Path;

/// A float graph with the model's quantization steps turned into pinned parameters.
pub struct Stripped {
    pub graph: Graph,
    pub pins: HashMap<ValueId, Q>,
    /// Quantization steps that could not be read as parameters, and why.
    pub notes: Vec<String>,
}

/// Points every use of `old` (graph outputs too) at `new`; a graph output keeps its name.
fn replace_value(g: &mut Graph, old: ValueId, new: ValueId) {
    let name = g.value(old).name.clone();
    let out = g.is_output(old);
    g.replace_uses(old, new);
    if out {
        g.rename(new, &name);
    }
}

/// Whether `g` has quantization steps of its own (a QDQ or QOperator model, or ONNX
/// Runtime's dynamic quantization).
pub fn is_quantized(g: &Graph) -> bool {
    g.node_ids().any(|n| {
        matches!(
            g.node(n).op,
            Op::Quantize { .. } | Op::Dequantize { .. } | Op::DynamicQuantize
        )
    })
}

/// One dynamically quantized product as ONNX Runtime writes it: `DynamicQuantizeLinear(x)`
/// feeding `ConvInteger`/`MatMulInteger` with constant weights, the i32 result cast to f32
/// and multiplied by `x_scale * w_scale`.
struct DynamicProduct {
    x: ValueId,
    weights: Vec<i32>,
    shape: Vec<usize>,
    scales: Vec<f32>,
    op: Op,
    /// The product's f32 output (the final Mul's).
    out: ValueId,
    nodes: Vec<kiln_ir::NodeId>,
}

fn dynamic_product(g: &Graph, n: kiln_ir::NodeId) -> Option<DynamicProduct> {
    let node = g.node(n);
    if !matches!(node.op, Op::IntConv { .. } | Op::IntMatMul) {
        return None;
    }
    let d = g.producer(node.inputs[0])?;
    if g.node(d).op != Op::DynamicQuantize || node.inputs.get(2).is_some_and(|&z| z != g.node(d).outputs[2]) {
        return None;
    }
    let (x, scale) = (g.node(d).inputs[0], g.node(d).outputs[1]);
    let w = g.const_value(node.inputs[1])?;
    let wz: Vec<i64> = match node.inputs.get(3) {
        Some(&z) => g.const_value(z)?.to_i64_vec(),
        None => vec![0],
    };
    let [cast] = g.consumers(node.outputs[0])[..] else {
        return None;
    };
    if g.node(cast).op != (Op::Cast { to: Scalar::F32 }) {
        return None;
    }
    let [mul] = g.consumers(g.node(cast).outputs[0])[..] else {
        return None;
    };
    let mn = g.node(mul);
    if mn.op != Op::Binary(kiln_ir::op::BinaryOp::Mul) {
        return None;
    }
    let other = mn.inputs.iter().copied().find(|&v| v != g.node(cast).outputs[0])?;
    let sm = g.producer(other)?;
    let smn = g.node(sm);
    if smn.op != Op::Binary(kiln_ir::op::BinaryOp::Mul) || !smn.inputs.contains(&scale) {
        return None;
    }
    let ws = smn.inputs.iter().copied().find(|&v| v != scale)?;
    let scales = g.const_value(ws)?.to_f32_vec();
    let (channels, channel_of): (usize, Box<dyn Fn(usize) -> usize>) = match &node.op {
        Op::IntConv { .. } => {
            let per = w.numel() / w.shape[0].max(1);
            (w.shape[0], Box::new(move |i| i / per))
        }
        _ => {
            let cols = *w.shape.last()?;
            (cols, Box::new(move |i| i % cols))
        }
    };
    if (scales.len() != 1 && scales.len() != channels) || (wz.len() != 1 && wz.len() != channels) {
        return None;
    }
    let weights = (w.to_i64_vec().iter().enumerate())
        .map(|(i, &v)| (v - wz[if wz.len() == 1 { 0 } else { channel_of(i) }]) as i32)
        .collect();
    let op = match &node.op {
        Op::IntConv { window, group } => Op::DynConv {
            window: window.clone(),
            group: *group,
            weight_scales: scales.clone().into(),
        },
        _ => Op::DynMatMul {
            weight_scales: scales.clone().into(),
            block: 0,
            weight_bits: 8,
        },
    };
    Some(DynamicProduct {
        x,
        weights,
        shape: w.shape.clone(),
        scales,
        op,
        out: mn.outputs[0],
        nodes: vec![mul, cast, n],
    })
}

/// Folds each dynamically quantized product into Kiln's hybrid op with the model's own
/// weights and scales: exactly when the weights are symmetric int8 (the hybrid op's rule is
/// `DynamicQuantizeLinear`'s, shifted to int8, and it rescales as `Cast * (x_scale *
/// w_scale)` does), else as the float product of the dequantized weights, which the hybrid
/// rewrite then quantizes symmetric (noted). Returns the names of the latter.
fn fold_dynamic(g: &mut Graph, notes: &mut Vec<String>) -> Result<Vec<String>, QuantError> {
    let mut float = Vec::new();
    for n in g.topo_order().map_err(QuantError::Ir)? {
        if !g.contains_node(n) {
            continue;
        }
        let Some(p) = dynamic_product(g, n) else { continue };
        let name = g.node(n).name.clone();
        let rows: usize = g.value(p.x).ty.shape.iter().rev().skip(1).product();
        let int8 = p.weights.iter().all(|&v| (-128..=127).contains(&v));
        // the hybrid product quantizes each row on its own, ONNX the whole tensor at once
        let exact = int8 && (matches!(p.op, Op::DynConv { .. }) || rows == 1);
        let (op, w) = if exact {
            let w: Vec<i8> = p.weights.iter().map(|&v| v as i8).collect();
            (p.op.clone(), Tensor::from_vec(p.shape.clone(), w))
        } else {
            let channels = p.scales.len();
            let per = p.weights.len() / channels.max(1);
            let cols = *p.shape.last().unwrap_or(&1);
            let wf: Vec<f32> = (p.weights.iter().enumerate())
                .map(|(i, &v)| {
                    let c = match (&p.op, channels) {
                        (_, 1) => 0,
                        (Op::DynConv { .. }, _) => i / per,
                        _ => i % cols,
                    };
                    v as f32 * p.scales[c]
                })
                .collect();
            let op = match &p.op {
                Op::DynConv { window, group, .. } => Op::Conv(kiln_ir::op::Conv {
                    window: window.clone(),
                    group: *group,
                    fused: None,
                }),
                _ => Op::MatMul,
            };
            notes.push(format!(
                "node `{name}`: its weights are not symmetric int8, so Kiln's hybrid rule quantizes them again"
            ));
            float.push(name.clone());
            (op, Tensor::from_vec(p.shape.clone(), wf))
        };
        let wv = g.add_const(&g.fresh_name(&format!("{name}:weight")), w);
        let tmp = g.fresh_name(&format!("{}:folded", g.value(p.out).name));
        let y = g.add_node(&name, op, vec![p.x, wv], &[&tmp]).map_err(QuantError::Ir)?.1[0];
        replace_value(g, p.out, y);
        for m in p.nodes {
            g.remove_node(m);
        }
    }
    passes::eliminate_dead_nodes::run(g).map_err(QuantError::Ir)?;
    for n in g.node_ids().collect::<Vec<_>>() {
        let node = g.node(n);
        if matches!(node.op, Op::DynamicQuantize | Op::IntConv { .. } | Op::IntMatMul) {
            notes.push(format!(
                "node `{}` ({}) is not in the form ONNX Runtime's dynamic quantization writes; no backend compiles it",
                node.name,
                node.op.name()
            ));
        }
    }
    Ok(float)
}

/// The parameters a `Quantize` to `to` stands for, in Kiln's terms: uint8 becomes int8
/// with the zero point moved by 128 (the same grid); int16 must be symmetric (16x8).
fn params(to: Scalar, scale: f32, zero_point: i32) -> Result<Q, String> {
    match to {
        Scalar::I8 => Ok(Q::new(scale, zero_point, 8)),
        Scalar::U8 => Ok(Q::new(scale, zero_point - 128, 8)),
        Scalar::I16 if zero_point == 0 => Ok(Q::new(scale, 0, 16)),
        Scalar::I16 => Err(format!(
            "int16 with zero point {zero_point} (Kiln's int16 is symmetric)"
        )),
        other => Err(format!("{other} is not an activation type Kiln computes in")),
    }
}

/// Ops that only move or select elements (max pooling picks one), so they give the same
/// values on integers as on their dequantized floats.
fn commutes_with_quantize(op: &Op) -> bool {
    matches!(
        op,
        Op::Reshape { .. } | Op::Transpose { .. } | Op::Identity | Op::Slice { .. } | Op::Expand { .. }
    ) || matches!(op, Op::Pool(p) if p.kind == kiln_ir::op::PoolKind::Max)
        || matches!(op, Op::GlobalPool(kiln_ir::op::PoolKind::Max))
}

/// Rewrites data-movement ops that run on quantized integers (QOperator models pool and
/// reshape uint8 directly) as `Dequantize -> op -> Quantize` with the same parameters, so
/// every quantization step ends at its `Dequantize` again.
fn sink_quantize(g: &mut Graph) -> Result<(), QuantError> {
    for n in g.topo_order().map_err(QuantError::Ir)? {
        let node = g.node(n).clone();
        if !commutes_with_quantize(&node.op) || node.inputs.len() != 1 || node.outputs.len() != 1 {
            continue;
        }
        let Some(q) = g.producer(node.inputs[0]) else {
            continue;
        };
        let Op::Quantize { to, scale, zero_point } = g.node(q).op else {
            continue;
        };
        let y = node.outputs[0];
        let dname = g.fresh_name(&format!("{}:dequantized", g.value(node.inputs[0]).name));
        let d = g
            .add_node(
                &format!("{}:dequantize", node.name),
                Op::Dequantize { scale, zero_point },
                vec![node.inputs[0]],
                &[&dname],
            )
            .map_err(QuantError::Ir)?
            .1[0];
        let fname = g.fresh_name(&format!("{}:float", g.value(y).name));
        let f = g
            .add_node(&format!("{}:float", node.name), node.op.clone(), vec![d], &[&fname])
            .map_err(QuantError::Ir)?
            .1[0];
        let qname = g.fresh_name(&format!("{}:q", g.value(y).name));
        let yq = g
            .add_node(
                &format!("{}:quantize", node.name),
                Op::Quantize { to, scale, zero_point },
                vec![f],
                &[&qname],
            )
            .map_err(QuantError::Ir)?
            .1[0];
        replace_value(g, y, yq);
        g.remove_node(n);
    }
    crate::passes::eliminate_dead_nodes::run(g).map_err(QuantError::Ir)?;
    Ok(())
}

/// Whether `v` is an int8 (or int16) graph input, or one moved by layout ops (a model taking
/// integers).
fn from_int8_input(g: &Graph, v: ValueId) -> bool {
    if !matches!(g.value(v).ty.dtype.scalar, Scalar::I8 | Scalar::I16 | Scalar::U8) {
        return false;
    }
    match g.producer(v) {
        None => g.inputs().contains(&v),
        Some(n) => commutes_with_quantize(&g.node(n).op) && from_int8_input(g, g.node(n).inputs[0]),
    }
}

/// Removes every `Quantize` whose consumers are all `Dequantize` with its own parameters
/// (the QDQ pair around a value), pinning the value's parameters.
pub fn strip(src: &Graph) -> Result<Stripped, QuantError> {
    let mut g = src.clone();
    sink_quantize(&mut g)?;
    let mut pins: HashMap<ValueId, Q> = HashMap::new();
    let mut notes = Vec::new();
    for n in g.topo_order().map_err(QuantError::Ir)? {
        if !g.contains_node(n) {
            continue;
        }
        let node = g.node(n).clone();
        let Op::Quantize { to, scale, zero_point } = node.op else {
            continue;
        };
        let (x, xq) = (node.inputs[0], node.outputs[0]);
        let deqs = g.consumers(xq);
        // a graph output keeps its Quantize (the model returns integers) but still fixes x
        let paired = (g.is_output(xq) || !deqs.is_empty())
            && deqs.iter().all(|&d| {
                matches!(g.node(d).op, Op::Dequantize { scale: s, zero_point: z } if s == scale && z == zero_point)
            });
        if !paired {
            notes.push(format!(
                "node `{}` (QuantizeLinear) is not followed only by its DequantizeLinear; {}",
                node.name,
                quantize_static::STAYS_FLOAT
            ));
            continue;
        }
        let q = match params(to, scale, zero_point) {
            Ok(q) => q,
            Err(why) => {
                notes.push(format!(
                    "node `{}` (QuantizeLinear): {why}; {}",
                    node.name,
                    quantize_static::STAYS_FLOAT
                ));
                continue;
            }
        };
        if let Some(old) = pins.get(&x)
            && *old != q
        {
            notes.push(format!(
                "value `{}` is quantized twice with different parameters; the first pair is kept",
                g.value(x).name
            ));
            continue;
        }
        pins.insert(x, q);
        for d in deqs {
            let y = g.node(d).outputs[0];
            replace_value(&mut g, y, x);
            g.remove_node(d);
        }
        if !g.is_output(xq) {
            g.remove_node(n);
        }
    }
    for n in g.node_ids().collect::<Vec<_>>() {
        let node = g.node(n);
        let int8_input = from_int8_input(&g, node.inputs[0]);
        if matches!(node.op, Op::Dequantize { .. }) && !int8_input {
            notes.push(format!(
                "node `{}` (DequantizeLinear) of `{}` has no QuantizeLinear before it; {}",
                node.name,
                g.value(node.inputs[0]).name,
                quantize_static::STAYS_FLOAT
            ));
        }
    }
    // An input reshaped or transposed before its first quantization (a layout change the
    // exporter put in front) takes that quantization, so the integer entry point can take
    // the input as it is.
    for &v in g.inputs() {
        let cons = g.consumers(v);
        if let [c] = cons.as_slice()
            && matches!(g.node(*c).op, Op::Reshape { .. } | Op::Transpose { .. })
            && let Some(&p) = pins.get(&g.node(*c).outputs[0])
            && !pins.contains_key(&v)
        {
            pins.insert(v, p);
        }
    }
    Ok(Stripped { graph: g, pins, notes })
}

/// The integer arithmetic a model that carries its own quantization was made for, as far as
/// its producer tells: TFLite's for a `.tflite` file and for a `tf2onnx` conversion (the QDQ
/// models that tool writes come from TFLite's int8 files), otherwise unknown.
pub fn origin_numerics(producer: &str) -> Option<Numerics> {
    matches!(producer, "tf2onnx" | crate::tflite::PRODUCER).then_some(Numerics::Tflite)
}

/// The integer graph of a model quantized by its authors: strip the QDQ pairs, fuse the
/// activations that were separated from their producer by a pair, and rewrite with the
/// pinned parameters. Values the model left unquantized get ranges from calibration data
/// in `calibration` when given (method: `opts.method`, default min-max); without data the
/// ops around them stay float with a note.
pub fn quantize_model(g: &Graph, calibration: Option<&Path>, opts: &QuantOptions) -> Result<Quantized, QuantError> {
    if !is_quantized(g) {
        return Err(QuantError::NotQuantized);
    }
    let mut dyn_notes = Vec::new();
    let mut g = g.clone();
    let refold = fold_dynamic(&mut g, &mut dyn_notes)?;
    if !refold.is_empty() {
        // the products whose weights could not be kept: Kiln's hybrid rewrite, for them only
        let others: Vec<String> = (g.node_ids())
            .map(|n| g.node(n).name.clone())
            .filter(|name| !refold.contains(name))
            .collect();
        g = super::dynamic::to_dynamic(&g, &others).map_err(QuantError::Ir)?.graph;
    }
    let g = &g;
    if !g
        .node_ids()
        .any(|n| matches!(g.node(n).op, Op::Quantize { .. } | Op::Dequantize { .. }))
    {
        // dynamic quantization only: the model's float parts stay float by design
        let products = g
            .node_ids()
            .filter(|&n| matches!(g.node(n).op, Op::DynConv { .. } | Op::DynMatMul { .. }))
            .count();
        dyn_notes.insert(
            0,
            format!("using the model's own dynamic quantization ({products} hybrid products)"),
        );
        return Ok(Quantized {
            graph: g.clone(),
            notes: dyn_notes,
            samples: 0,
            method: None,
        });
    }
    let s = strip(g)?;
    let mut f = s.graph;
    let mut pins = s.pins;
    // A product the model did not quantize, followed by its bias: one Gemm whose int32 bias
    // sits in the accumulator (TFLite exports put MatMul and Add apart this way).
    for (sum, prod) in passes::fuse_matmul_add::run_where(&mut f, |v| !pins.contains_key(&v)).map_err(QuantError::Ir)? {
        if let Some(p) = pins.remove(&sum) {
            pins.insert(prod, p);
        }
    }
    // these passes remove and rewire nodes but keep value ids, so the pins stay valid
    // only ReLU and Clip join a product (as its clamp): any other activation keeps the
    // model's parameters on both sides and becomes an int8 table
    let clamps = |u: UnaryOp| matches!(u, UnaryOp::Relu | UnaryOp::Clip { .. });
    passes::fuse_activations::run_where(&mut f, clamps).map_err(QuantError::Ir)?;
    kiln_ir::verify::verify(&f).map_err(QuantError::Ir)?;
    passes::eliminate_dead_nodes::run(&mut f).map_err(QuantError::Ir)?;
    kiln_ir::verify::verify(&f).map_err(QuantError::Ir)?;
    // A ReLU/Clip the model quantizes after an op it does not (TFLite's Add then ReLU):
    // the op takes the activation's parameters, whose clamp then is exact.
    for n in f.topo_order().map_err(QuantError::Ir)? {
        let node = f.node(n);
        let (x, y) = (node.inputs[0], node.outputs[0]);
        if matches!(node.op, Op::Unary(UnaryOp::Relu | UnaryOp::Clip { .. }))
            && !pins.contains_key(&x)
            && f.consumers(x).len() == 1
            && f.producer(x).is_some()
            && let Some(&p) = pins.get(&y)
        {
            pins.insert(x, p);
        }
    }
    let ranges = match calibration {
        Some(dir) => {
            let set = calibrate::CalibrationSet::load(&f, dir)?;
            let method = opts.method.unwrap_or(calibrate::Method::MinMax);
            calibrate::calibrate(&f, &set, method, |_, _| {})?
        }
        None => Ranges::default(),
    };
    let q = quantize_static::run_pinned(&f, &ranges, &pins, opts)?;
    let mut notes = dyn_notes;
    notes.extend(s.notes);
    notes.extend(q.notes);
    let float: Vec<&String> = notes
        .iter()
        .filter(|n| n.contains(quantize_static::STAYS_FLOAT))
        .collect();
    if opts.strict_integer && !float.is_empty() {
        let list: Vec<&str> = float.iter().map(|s| s.as_str()).collect();
        return Err(QuantError::NotInteger(list.join("\n  ")));
    }
    notes.insert(
        0,
        format!(
            "using the model's own quantization parameters ({} quantized values)",
            pins.len()
        ),
    );
    Ok(Quantized {
        graph: q.graph,
        notes,
        samples: ranges.samples,
        method: None,
    })
}

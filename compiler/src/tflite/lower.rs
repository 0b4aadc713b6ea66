//! The lowering context: TFLite tensors to IR values, with each value's layout and
//! quantization, and the import of the main subgraph.

use super::flatbuf::Malformed;
use super::ops;
use super::schema::{Model, Operator, Quant, SubGraph, TensorDef, ty};
use crate::onnx::{ImportError, ImportOptions, Imported, MAX_ELEMENTS, UnsupportedOp};
use crate::passes::fold_constants;
use half::f16;
use kiln_ir::{Data, Graph, IrError, Op, QParams, Scalar, Tensor, TensorType, ValueId};
use std::collections::HashMap;

pub enum Failure {
    Import(ImportError),
    Malformed(Malformed),
}

impl From<ImportError> for Failure {
    fn from(e: ImportError) -> Failure {
        Failure::Import(e)
    }
}

impl From<Malformed> for Failure {
    fn from(e: Malformed) -> Failure {
        Failure::Malformed(e)
    }
}

pub type Result<T> = std::result::Result<T, Failure>;

/// Where an IR value keeps a rank-4 image tensor: as the file does (`Nhwc`, also used for
/// every other rank) or channels-first, as the IR's convolutions and pools want it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    Nhwc,
    Nchw,
}

pub const TO_NCHW: [usize; 4] = [0, 3, 1, 2];
pub const TO_NHWC: [usize; 4] = [0, 2, 3, 1];

/// The per-tensor parameters of a quantized activation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Act {
    pub scalar: Scalar,
    pub scale: f32,
    pub zero_point: i32,
}

pub struct Lower<'m, 'a> {
    pub model: &'m Model<'a>,
    pub sg: &'m SubGraph<'a>,
    pub graph: Graph,
    /// The IR value of each tensor once defined, integer for a quantized activation.
    slots: Vec<Option<(ValueId, Layout)>>,
    /// Views made of a tensor: in another layout, or dequantized (`true`).
    views: HashMap<(usize, Layout, bool), ValueId>,
    pub notices: Vec<String>,
    /// State tensors (TFLite's variable tensors) with the value each holds after the run.
    states: Vec<(usize, ValueId)>,
    /// The operator being lowered (its first output's name) and its builtin name.
    pub node: String,
    pub op: String,
}

fn scalar_of(code: u8) -> Option<Scalar> {
    Some(match code {
        ty::FLOAT32 => Scalar::F32,
        ty::FLOAT16 => Scalar::F16,
        ty::FLOAT64 => Scalar::F64,
        ty::INT8 => Scalar::I8,
        ty::UINT8 => Scalar::U8,
        ty::INT16 => Scalar::I16,
        ty::UINT16 => Scalar::U16,
        ty::INT32 => Scalar::I32,
        ty::UINT32 => Scalar::U32,
        ty::INT64 => Scalar::I64,
        ty::BOOL => Scalar::Bool,
        _ => return None,
    })
}

/// `data` of a tensor with `shape` permuted by `perm` (row-major, any element type).
pub fn permute<T: Copy>(data: &[T], shape: &[usize], perm: &[usize]) -> Vec<T> {
    let strides = kiln_ir::tensor::strides(shape);
    let out: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let mut v = Vec::with_capacity(data.len());
    let mut idx = vec![0usize; out.len()];
    for _ in 0..data.len() {
        let off: usize = idx.iter().zip(perm).map(|(&i, &p)| i * strides[p]).sum();
        v.push(data[off]);
        for k in (0..idx.len()).rev() {
            idx[k] += 1;
            if idx[k] < out[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    v
}

impl<'m, 'a> Lower<'m, 'a> {
    pub fn err(&self, msg: impl Into<String>) -> Failure {
        Failure::Import(ImportError::Node {
            node: self.node.clone(),
            op_type: self.op.clone(),
            msg: msg.into(),
        })
    }

    fn tensor_error(&self, t: &TensorDef, msg: impl Into<String>) -> Failure {
        Failure::Import(ImportError::BadTensor {
            name: t.name.clone(),
            msg: msg.into(),
        })
    }

    pub fn def(&self, t: usize) -> &'m TensorDef {
        &self.sg.tensors[t]
    }

    pub fn shape(&self, t: usize) -> Vec<usize> {
        self.def(t).shape.iter().map(|&d| d as usize).collect()
    }

    pub fn scalar(&self, t: usize) -> Scalar {
        scalar_of(self.def(t).ty).expect("checked when the tensor was declared")
    }

    /// The bytes of a constant tensor, `None` for a computed one.
    pub fn data(&self, t: usize) -> Option<&'a [u8]> {
        let b = self.model.buffers.get(self.def(t).buffer as usize)?;
        (self.def(t).buffer != 0 && !b.is_empty()).then_some(*b)
    }

    /// The parameters of a quantized activation (computed tensors only).
    pub fn act(&self, t: usize) -> Option<Act> {
        let d = self.def(t);
        let q = d.quant.as_ref()?;
        let scalar = scalar_of(d.ty)?;
        (matches!(scalar, Scalar::I8 | Scalar::U8 | Scalar::I16) && self.data(t).is_none()).then(|| Act {
            scalar,
            scale: q.scales[0],
            zero_point: q.zero_points.first().copied().unwrap_or(0) as i32,
        })
    }

    /// A constant tensor as stored, permuted by `perm` when given: integers with
    /// quantization parameters become float with their grid (the importer's form of a
    /// dequantized weight), everything else keeps its type.
    pub fn constant(&self, t: usize, perm: Option<&[usize]>) -> Result<Tensor> {
        let d = self.def(t);
        let Some(bytes) = self.data(t) else {
            // computed from constants at import (a DEQUANTIZE of float16 or int8 weights)
            return match self.slots[t] {
                Some((v, Layout::Nhwc)) if self.graph.const_value(v).is_some() => {
                    let c = self.graph.const_value(v).expect("checked").as_ref().clone();
                    Ok(match perm {
                        Some(p) => permuted(c, p),
                        None => c,
                    })
                }
                _ => Err(self.err(format!("input `{}` must be a constant", d.name))),
            };
        };
        let scalar = self.scalar(t);
        let data = Data::from_le_bytes(scalar, bytes)
            .filter(|x| x.len() == self.shape(t).iter().product::<usize>())
            .ok_or_else(|| {
                self.tensor_error(
                    d,
                    format!(
                        "its buffer holds {} bytes, its shape {:?} of {scalar}",
                        bytes.len(),
                        d.shape
                    ),
                )
            })?;
        let mut tensor = Tensor::new(self.shape(t), data);
        let mut axis = d.quant.as_ref().map_or(0, |q| q.axis as usize);
        if let Some(p) = perm {
            tensor = permuted(tensor, p);
            axis = p.iter().position(|&i| i == axis).unwrap_or(0);
        }
        match &d.quant {
            Some(q) if scalar.is_int() => Ok(self.dequantized(d, &tensor, q, axis)?),
            _ => Ok(tensor),
        }
    }

    /// `(q - zero_point) * scale` as f32, recording the grid.
    fn dequantized(&self, d: &TensorDef, t: &Tensor, q: &Quant, axis: usize) -> Result<Tensor> {
        let per_tensor = q.scales.len() == 1;
        if !per_tensor && t.shape.get(axis) != Some(&q.scales.len()) {
            return Err(self.tensor_error(
                d,
                format!("{} scales along axis {axis} of {:?}", q.scales.len(), t.shape),
            ));
        }
        if q.scales.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err(self.tensor_error(d, "a scale is not a positive finite number"));
        }
        let zps: Vec<i32> = (0..q.scales.len())
            .map(|i| q.zero_points.get(i).copied().unwrap_or(0) as i32)
            .collect();
        // uint8 grids are kept in int8 terms (zero point shifted by 128), as the ONNX
        // importer keeps them
        let shift = if scalar_of(d.ty) == Some(Scalar::U8) { 128 } else { 0 };
        let grid_zps: Vec<i32> = zps.iter().map(|z| z - shift).collect();
        let grid = if per_tensor {
            QParams::PerTensor {
                scale: q.scales[0],
                zero_point: grid_zps[0],
            }
        } else {
            QParams::PerAxis {
                axis,
                scales: q.scales.clone().into(),
                zero_points: grid_zps.into(),
            }
        };
        let idx = grid.index(&t.shape);
        let v: Vec<f32> = (t.to_i64_vec().iter().zip(&idx))
            .map(|(&x, &k)| (x - zps[k] as i64) as f32 * q.scales[k])
            .collect();
        let mut f = Tensor::from_vec(t.shape.clone(), v);
        f.quant = Some(grid);
        Ok(f)
    }

    /// Adds a node named after the operator (plus `suffix`), folding it when its inputs are
    /// all constant.
    pub fn emit(&mut self, suffix: &str, op: Op, inputs: Vec<ValueId>) -> Result<ValueId> {
        let name = format!("{}/{suffix}", self.node);
        let (id, outs) = self
            .graph
            .add_node(&name, op, inputs, &[name.as_str()])
            .map_err(|e| self.ir_error(e))?;
        let ty = &self.graph.value(outs[0]).ty;
        if ty.numel() > MAX_ELEMENTS {
            return Err(self.err(format!("{ty} exceeds the limit of {MAX_ELEMENTS} elements")));
        }
        fold_constants::fold_node(&mut self.graph, id).map_err(|e| self.ir_error(e))?;
        Ok(outs[0])
    }

    fn ir_error(&self, e: IrError) -> Failure {
        let e = match e {
            IrError::AtNode { source, .. } => *source,
            e => e,
        };
        self.err(e.to_string())
    }

    /// `v` with its axes permuted; a reshape when only unit axes move.
    pub fn permute_value(&mut self, v: ValueId, perm: &[usize]) -> Result<ValueId> {
        let shape = self.graph.value(v).ty.shape.clone();
        let moved: Vec<usize> = perm.iter().copied().filter(|&a| shape[a] != 1).collect();
        if moved.windows(2).all(|w| w[0] < w[1]) {
            let out = perm.iter().map(|&p| shape[p]).collect();
            return self.emit("reshape", Op::Reshape { shape: out }, vec![v]);
        }
        self.emit("transpose", Op::Transpose { perm: perm.to_vec() }, vec![v])
    }

    /// Tensor `t` as stored (integer for a quantized activation) in `layout`.
    pub fn value(&mut self, t: usize, layout: Layout) -> Result<ValueId> {
        let (v, have) = match self.slots[t] {
            Some(s) => s,
            None => {
                let c = self.constant(t, None)?;
                let name = self.def(t).name.clone();
                let v = self.graph.add_const(&name, c);
                self.slots[t] = Some((v, Layout::Nhwc));
                (v, Layout::Nhwc)
            }
        };
        if have == layout || self.shape(t).len() != 4 {
            return Ok(v);
        }
        if let Some(&v) = self.views.get(&(t, layout, false)) {
            return Ok(v);
        }
        let perm = if layout == Layout::Nchw { TO_NCHW } else { TO_NHWC };
        let p = self.permute_value(v, &perm)?;
        self.views.insert((t, layout, false), p);
        Ok(p)
    }

    /// Tensor `t` as float in `layout`: dequantized when it is a quantized activation.
    pub fn float(&mut self, t: usize, layout: Layout) -> Result<ValueId> {
        let v = self.value(t, layout)?;
        let Some(a) = self.act(t) else {
            return Ok(v);
        };
        if let Some(&d) = self.views.get(&(t, layout, true)) {
            return Ok(d);
        }
        let op = Op::Dequantize {
            scale: a.scale,
            zero_point: a.zero_point,
        };
        let d = self.emit(&format!("{}/dequantized", self.def(t).name), op, vec![v])?;
        self.views.insert((t, layout, true), d);
        Ok(d)
    }

    /// The layout tensor `t` is stored in (`Nhwc` until defined).
    pub fn layout(&self, t: usize) -> Layout {
        self.slots[t].map_or(Layout::Nhwc, |s| s.1)
    }

    /// Makes `v` (float, or already integer when `v` is the stored form) tensor `t`'s value:
    /// quantized to the tensor's parameters when it is a quantized activation.
    pub fn define(&mut self, t: usize, v: ValueId, layout: Layout) -> Result<()> {
        let name = self.def(t).name.clone();
        let v = match self.act(t) {
            Some(a) if self.graph.value(v).ty.dtype.scalar == Scalar::F32 => {
                let op = Op::Quantize {
                    to: a.scalar,
                    scale: a.scale,
                    zero_point: a.zero_point,
                };
                let q = self.emit("quantize", op, vec![v])?;
                self.graph.rename(q, &name);
                q
            }
            _ => v,
        };
        let want = self.shape(t);
        let have = &self.graph.value(v).ty.shape;
        let have: Vec<usize> = match layout {
            Layout::Nchw if have.len() == 4 => TO_NHWC.iter().map(|&p| have[p]).collect(),
            _ => have.clone(),
        };
        if have != want {
            return Err(self.err(format!(
                "computes shape {have:?}, the model declares {want:?} for `{name}`"
            )));
        }
        self.slots[t] = Some((v, layout));
        Ok(())
    }

    /// A state tensor (TFLite's variable tensors persist between invocations): a graph input
    /// of its own, made on first use, whose next value the stateful op hands to `next_state`.
    pub fn state(&mut self, t: usize) -> Result<ValueId> {
        if let Some((v, _)) = self.slots[t] {
            return Ok(v);
        }
        let d = self.def(t);
        if !d.variable || self.scalar(t) != Scalar::F32 {
            return Err(self.err(format!("state `{}` must be a float32 variable tensor", d.name)));
        }
        let name = d.name.clone();
        let v = self.graph.add_input(&name, TensorType::new(Scalar::F32, self.shape(t)));
        self.notices.push(format!(
            "state `{name}` is graph input `{name}` and output `{name}/next`: zeros start a sequence, the previous `/next` continues it"
        ));
        self.slots[t] = Some((v, Layout::Nhwc));
        Ok(v)
    }

    /// The value state tensor `t` holds after the run (a graph output named `<state>/next`).
    pub fn next_state(&mut self, t: usize, v: ValueId) -> Result<()> {
        if self.states.iter().any(|s| s.0 == t) {
            return Err(self.err(format!("state `{}` is written twice", self.def(t).name)));
        }
        if self.graph.value(v).ty.shape != self.shape(t) {
            return Err(self.err(format!(
                "the next `{}` has shape {}",
                self.def(t).name,
                self.graph.value(v).ty
            )));
        }
        self.states.push((t, v));
        Ok(())
    }

    /// Input `i` of `op` (its tensor index), `None` when absent or -1.
    pub fn input(&self, op: &Operator, i: usize) -> Option<usize> {
        op.inputs.get(i).and_then(|&t| usize::try_from(t).ok())
    }

    pub fn req(&self, op: &Operator, i: usize) -> Result<usize> {
        self.input(op, i)
            .ok_or_else(|| self.err(format!("input {i} is required")))
    }

    pub fn output(&self, op: &Operator, i: usize) -> Result<usize> {
        op.outputs
            .get(i)
            .and_then(|&t| usize::try_from(t).ok())
            .ok_or_else(|| self.err(format!("output {i} is missing")))
    }
}

/// A constant with its axes permuted by `perm`, its grid's axis following.
fn permuted(t: Tensor, perm: &[usize]) -> Tensor {
    let data = kiln_ir::map_data!(&t.data, v => permute(v, &t.shape, perm));
    let shape = perm.iter().map(|&i| t.shape[i]).collect();
    let mut out = Tensor::new(shape, data);
    out.quant = t.quant.map(|q| match q {
        QParams::PerAxis {
            axis,
            scales,
            zero_points,
        } => QParams::PerAxis {
            axis: perm.iter().position(|&i| i == axis).unwrap_or(0),
            scales,
            zero_points,
        },
        other => other,
    });
    out
}

/// Checks every tensor once (index ranges, types, shapes, element counts) so the lowering
/// can index freely.
fn check_tensors(sg: &SubGraph, model: &Model) -> Result<()> {
    let bad = |t: &TensorDef, msg: String| {
        Failure::Import(ImportError::BadTensor {
            name: t.name.clone(),
            msg,
        })
    };
    for t in &sg.tensors {
        if scalar_of(t.ty).is_none() {
            return Err(bad(t, format!("element type {} is not supported", t.ty)));
        }
        if t.shape.iter().any(|&d| d < 0) {
            return Err(bad(t, format!("shape {:?} has a negative dimension", t.shape)));
        }
        let n = (t.shape.iter()).try_fold(1usize, |a, &d| a.checked_mul(d as usize));
        if n.is_none_or(|n| n > MAX_ELEMENTS) {
            return Err(bad(
                t,
                format!("shape {:?} exceeds the limit of {MAX_ELEMENTS} elements", t.shape),
            ));
        }
        if t.buffer as usize >= model.buffers.len() && t.buffer != 0 {
            return Err(bad(
                t,
                format!("buffer {} is out of range ({} buffers)", t.buffer, model.buffers.len()),
            ));
        }
        if t.sparse {
            return Err(bad(t, "sparse tensors are not supported".into()));
        }
        if let Some(q) = &t.quant {
            if q.zero_points.len() > 1 && q.zero_points.len() != q.scales.len() {
                return Err(bad(
                    t,
                    format!("{} zero points for {} scales", q.zero_points.len(), q.scales.len()),
                ));
            }
            if q.scales.len() > 1 && (q.axis < 0 || q.axis as usize >= t.shape.len()) {
                return Err(bad(
                    t,
                    format!("quantized dimension {} of a rank-{} tensor", q.axis, t.shape.len()),
                ));
            }
        }
    }
    let n = sg.tensors.len() as i64;
    let refs = (sg.inputs.iter().chain(&sg.outputs))
        .chain(sg.operators.iter().flat_map(|o| o.inputs.iter().chain(&o.outputs)));
    if let Some(&i) = refs.into_iter().find(|&&i| i < -1 || i as i64 >= n) {
        return Err(Failure::Malformed(Malformed(format!(
            "tensor index {i} is out of range ({n} tensors)"
        ))));
    }
    Ok(())
}

/// Every operator Kiln cannot lower, all at once.
fn unsupported(model: &Model, sg: &SubGraph) -> Vec<UnsupportedOp> {
    (sg.operators.iter().enumerate())
        .filter_map(|(i, op)| {
            let code = model.opcodes.get(op.opcode as usize);
            let supported = code.is_some_and(|c| ops::supported(c.builtin));
            (!supported).then(|| UnsupportedOp {
                node: operator_name(sg, op, i),
                op_type: match code {
                    Some(c) if c.builtin == 32 => format!("CUSTOM `{}`", c.custom.escape_debug()),
                    Some(c) => super::schema::op_name(c.builtin),
                    None => format!("operator code {} (out of range)", op.opcode),
                },
                domain: super::PRODUCER.into(),
                opset: code.map_or(0, |c| c.version as i64),
            })
        })
        .collect()
}

/// An operator's name in messages: its first output's tensor name, or its position.
fn operator_name(sg: &SubGraph, op: &Operator, i: usize) -> String {
    (op.outputs.first())
        .and_then(|&t| sg.tensors.get(usize::try_from(t).ok()?))
        .map_or_else(|| format!("operator {i}"), |t| t.name.clone())
}

/// Lowers the model's main subgraph.
pub fn lower(model: &Model, name: &str, opts: &ImportOptions) -> Result<Imported> {
    let sg = model
        .subgraphs
        .first()
        .ok_or_else(|| Failure::Malformed(Malformed("the model has no subgraph".into())))?;
    check_tensors(sg, model)?;
    let missing = unsupported(model, sg);
    if !missing.is_empty() {
        return Err(Failure::Import(ImportError::Unsupported(missing)));
    }
    let mut cx = Lower {
        model,
        sg,
        graph: Graph::new(if sg.name.is_empty() { name } else { &sg.name }),
        slots: vec![None; sg.tensors.len()],
        views: HashMap::new(),
        notices: Vec::new(),
        states: Vec::new(),
        node: String::new(),
        op: String::new(),
    };
    add_inputs(&mut cx, opts)?;
    for (i, op) in sg.operators.iter().enumerate() {
        let code = model.opcodes[op.opcode as usize].builtin;
        cx.node = operator_name(sg, op, i);
        cx.op = super::schema::op_name(code);
        for &t in op.inputs.iter().filter(|&&t| t >= 0) {
            let t = t as usize;
            // a variable tensor (a recurrent state) starts at zero, which its reader knows
            if cx.slots[t].is_none() && cx.data(t).is_none() && !cx.def(t).variable {
                return Err(cx.err(format!("reads `{}` before any operator writes it", cx.def(t).name)));
            }
        }
        if let Some(&t) = op.outputs.iter().find(|&&t| t >= 0 && cx.slots[t as usize].is_some()) {
            return Err(cx.err(format!(
                "writes `{}`, which is already defined",
                cx.def(t as usize).name
            )));
        }
        ops::lower(&mut cx, code, op)?;
    }
    for &t in &sg.outputs {
        let t = usize::try_from(t).map_err(|_| Failure::Malformed(Malformed("graph output -1".into())))?;
        if cx.slots[t].is_none() && cx.data(t).is_none() {
            return Err(Failure::Import(ImportError::MissingOutput(cx.def(t).name.clone())));
        }
        let v = cx.value(t, Layout::Nhwc)?;
        if cx.graph.is_output(v) {
            return Err(Failure::Import(ImportError::OutputType {
                name: cx.def(t).name.clone(),
                msg: "is listed more than once".into(),
            }));
        }
        let name = cx.def(t).name.clone();
        cx.graph.rename(v, &name);
        cx.graph.add_output(v);
    }
    for (t, v) in std::mem::take(&mut cx.states) {
        let name = format!("{}/next", cx.def(t).name);
        cx.graph.rename(v, &name);
        cx.graph.add_output(v);
    }
    Ok(Imported {
        graph: cx.graph,
        notices: cx.notices,
        opset: 0,
        files: Vec::new(),
        producer: super::PRODUCER.into(),
    })
}

/// The graph inputs, at the shapes the file records (a dimension the converter left open
/// is taken as recorded, usually 1, with a notice).
fn add_inputs(cx: &mut Lower, opts: &ImportOptions) -> Result<()> {
    // the file fixes every shape, so a pin can only restate it
    for (k, shape) in &opts.input_shapes {
        let t = (cx.sg.inputs.iter()).find(|&&t| t >= 0 && &cx.def(t as usize).name == k);
        let msg = match t {
            None => "no such graph input".to_string(),
            Some(&t) if cx.shape(t as usize) == *shape => continue,
            Some(&t) => format!(
                "the file records shape {:?}; TFLite models are compiled at the shapes they record",
                cx.shape(t as usize)
            ),
        };
        return Err(Failure::Import(ImportError::BadInput { input: k.clone(), msg }));
    }
    if let Some(k) = opts.constant_inputs.keys().next() {
        return Err(Failure::Import(ImportError::BadInput {
            input: k.clone(),
            msg: "--bind is not supported for TFLite models".into(),
        }));
    }
    for &t in &cx.sg.inputs {
        let t = usize::try_from(t).map_err(|_| Failure::Malformed(Malformed("graph input -1".into())))?;
        let d = cx.def(t);
        for (k, &s) in d.signature.iter().enumerate() {
            if s < 0 {
                let n = d.shape.get(k).copied().unwrap_or(1);
                cx.notices.push(format!(
                    "input `{}`: open dimension {k} set to {n}, as the file records",
                    d.name
                ));
            }
        }
        if cx.slots[t].is_some() {
            return Err(Failure::Import(ImportError::BadInput {
                input: d.name.clone(),
                msg: "is listed more than once".into(),
            }));
        }
        let ty = TensorType::new(cx.scalar(t), cx.shape(t));
        let v = cx.graph.add_input(&d.name.clone(), ty);
        cx.slots[t] = Some((v, Layout::Nhwc));
    }
    Ok(())
}

/// Half-precision constants widen to f32 (TFLite's DEQUANTIZE of float16 weights).
pub fn widen_half(t: &Tensor) -> Option<Tensor> {
    let Data::F16(v) = &t.data else {
        return None;
    };
    Some(Tensor::from_vec(
        t.shape.clone(),
        v.iter().map(|h| f16::to_f32(*h)).collect(),
    ))
}

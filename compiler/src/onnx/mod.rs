//! ONNX front end: the only place that knows protobuf. It decodes a model, pins every shape,
//! and turns each node into IR through the op registry (`ops/`). Nodes whose inputs are all
//! constant are folded as they are imported, because many IR attributes (reshape targets,
//! slice bounds, pads) must be static and real exports compute them with Shape/Gather/Concat.

pub mod ops;
pub mod proto;
pub mod tensor;

use crate::passes::fold_constants;
use kiln_ir::{DType, Graph, IrError, Op, Tensor, TensorType, ValueId};
use prost::Message;
use proto::{AttributeProto, ModelProto, NodeProto};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// Upper bound on the elements of any one tensor (weights, activations, folded constants):
/// a 100-byte file must not be able to ask for gigabytes.
pub const MAX_ELEMENTS: usize = 1 << 28;

/// The range of default-domain opsets whose operator forms the importers know.
pub const OLDEST_OPSET: i64 = 7;
pub const NEWEST_OPSET: i64 = 25;

/// A node Kiln cannot import, as reported to the user.
#[derive(Debug, Clone, PartialEq)]
pub struct UnsupportedOp {
    pub node: String,
    pub op_type: String,
    pub domain: String,
    pub opset: i64,
}

impl fmt::Display for UnsupportedOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.domain == crate::tflite::PRODUCER {
            return write!(
                f,
                "operator `{}`: {} (TFLite builtin, version {})",
                self.node, self.op_type, self.opset
            );
        }
        let d = if self.domain.is_empty() {
            "ai.onnx"
        } else {
            &self.domain
        };
        write!(
            f,
            "node `{}`: {} (domain {d}, opset {})",
            self.node, self.op_type, self.opset
        )
    }
}

fn list(ops: &[UnsupportedOp]) -> String {
    ops.iter().map(|o| format!("\n  {o}")).collect()
}

#[derive(Debug, Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid ONNX model: {msg}")]
    Decode { path: PathBuf, msg: String },
    #[error("{path} is not a valid TFLite model: {msg}")]
    Tflite { path: PathBuf, msg: String },
    #[error("{count} unsupported op(s):{list}", count = .0.len(), list = list(.0))]
    Unsupported(Vec<UnsupportedOp>),
    #[error("node `{node}` ({op_type}): {msg}")]
    Node { node: String, op_type: String, msg: String },
    #[error("node `{node}` ({op_type}): input {index} (`{name}`) must be a compile-time constant{hint}", hint = if *.graph_input { "; it is a graph input: bind it with --bind NAME=FILE.npy" } else { "" })]
    NotConstant {
        node: String,
        op_type: String,
        index: usize,
        name: String,
        graph_input: bool,
    },
    #[error("node `{node}` reads `{name}`, which is not a graph input, initializer or node output")]
    MissingInput { node: String, name: String },
    #[error("the graph has a cycle through node `{node}`")]
    Cycle { node: String },
    #[error("input `{input}`: dimension {index} is symbolic (`{param}`); pin it with --input-shape {input}=...")]
    DynamicDim { input: String, index: usize, param: String },
    #[error("input `{input}`: {msg}")]
    BadInput { input: String, msg: String },
    #[error("tensor `{name}`: {msg}")]
    BadTensor { name: String, msg: String },
    #[error("graph output `{name}` {msg}")]
    OutputType { name: String, msg: String },
    #[error("graph output `{0}` is not produced by any node")]
    MissingOutput(String),
    #[error("{0}")]
    Opset(String),
    #[error(transparent)]
    Ir(#[from] IrError),
}

/// How to pin shapes the model leaves open.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Full shapes for named inputs (`--input-shape name=1,3,32,32`).
    pub input_shapes: HashMap<String, Vec<usize>>,
    /// Inputs frozen to a value (`--bind name=file.npy`): they become constants, which lets
    /// shape-like inputs (axes, sizes, pads) fold.
    pub constant_inputs: HashMap<String, Tensor>,
    /// Bytes of constants the import may make beyond the file's own (ConstantOfShape,
    /// Range, folded nodes); `None`: [`MAX_MADE_CONSTANT_BYTES`].
    pub max_made_constant_bytes: Option<usize>,
    /// Read a default-domain opset newer than [`NEWEST_OPSET`] with that opset's meaning
    /// (`--allow-newer-opset`); otherwise such a model is refused, since an op whose
    /// semantics changed would compile to the wrong function without a word.
    pub allow_newer_opset: bool,
}

/// The default budget for constants an import makes itself (`--max-constant-bytes`): a
/// model's own weights do not count, so this only stops a small file from making a huge
/// graph (ConstantOfShape of 2^27 floats, folded again and again).
pub const MAX_MADE_CONSTANT_BYTES: usize = 256 << 20;

/// A successful import with the notices worth telling the user.
pub struct Imported {
    pub graph: Graph,
    pub notices: Vec<String>,
    pub opset: i64,
    /// The model file and every external data file it names: outputs must not replace them.
    pub files: Vec<std::path::PathBuf>,
    /// The tool that wrote the model (`producer_name`), e.g. `tf2onnx`.
    pub producer: String,
}

/// The decoded model file at `path`.
fn read_model(path: &Path) -> Result<ModelProto, ImportError> {
    let bytes = std::fs::read(path).map_err(|source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode(path, &bytes)
}

fn decode(path: &Path, bytes: &[u8]) -> Result<ModelProto, ImportError> {
    ModelProto::decode(bytes).map_err(|e| ImportError::Decode {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

/// Reads and imports a model file.
pub fn load(path: &Path, opts: &ImportOptions) -> Result<Imported, ImportError> {
    let bytes = std::fs::read(path).map_err(|source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    load_bytes(path, &bytes, opts)
}

/// Imports the model file `bytes`, read from `path` (external data is found beside it).
pub fn load_bytes(path: &Path, bytes: &[u8], opts: &ImportOptions) -> Result<Imported, ImportError> {
    let model = decode(path, bytes)?;
    if model.graph.is_none() {
        return Err(ImportError::Decode {
            path: path.to_path_buf(),
            msg: "no graph (is this an ONNX model?)".into(),
        });
    }
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut imported = import_model(&model, &name, path.parent(), opts)?;
    let base = path.parent().unwrap_or(Path::new(""));
    imported.files.push(path.to_path_buf());
    if let Some(g) = &model.graph {
        external_files(g, base, &mut imported.files);
    }
    Ok(imported)
}

/// A graph input as the file declares it: name and dimensions (`Err(name)` for a symbolic
/// one, with its parameter name).
pub type DeclaredInput = (String, Vec<Result<usize, String>>);

/// The graph inputs a model file declares (initializers excluded), in order, without
/// importing it: what `kiln eval` binds symbolic dimensions against.
pub fn declared_inputs(path: &Path) -> Result<Vec<DeclaredInput>, ImportError> {
    use proto::tensor_shape_proto::dimension::Value as D;
    let Some(g) = read_model(path)?.graph else {
        return Ok(Vec::new());
    };
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    Ok((g.input.iter())
        .filter(|vi| !inits.contains(vi.name.as_str()))
        .map(|vi| {
            let dims = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
                Some(proto::type_proto::Value::TensorType(tt)) => (tt.shape.iter().flat_map(|s| &s.dim))
                    .map(|d| match &d.value {
                        Some(D::DimValue(v)) if *v >= 0 => Ok(*v as usize),
                        Some(D::DimParam(p)) => Err(p.clone()),
                        _ => Err("?".into()),
                    })
                    .collect(),
                _ => Vec::new(),
            };
            (vi.name.clone(), dims)
        })
        .collect())
}

/// Files named by external tensors anywhere in `g`: initializers, and tensor attributes of
/// nodes and of their subgraphs.
fn external_files(g: &proto::GraphProto, base: &Path, out: &mut Vec<std::path::PathBuf>) {
    let mut add = |t: &proto::TensorProto| {
        if t.data_location == 1 {
            let loc = t.external_data.iter().find(|e| e.key == "location");
            out.extend(loc.map(|e| base.join(&e.value)));
        }
    };
    g.initializer.iter().for_each(&mut add);
    for a in g.node.iter().flat_map(|n| &n.attribute) {
        a.t.iter().chain(&a.tensors).for_each(&mut add);
    }
    for a in g.node.iter().flat_map(|n| &n.attribute) {
        for sub in a.g.iter().chain(&a.graphs) {
            external_files(sub, base, out);
        }
    }
}

/// The ONNX `default` domain has two spellings.
fn is_default_domain(d: &str) -> bool {
    d.is_empty() || d == "ai.onnx"
}

/// The opset the default-domain nodes are read with must be one Kiln knows: declared (ONNX
/// requires it), not beyond [`NEWEST_OPSET`] unless the caller accepts that.
fn check_opset(model: &ModelProto, opset: i64, default_ops: bool, opts: &ImportOptions) -> Result<(), ImportError> {
    if !default_ops {
        return Ok(());
    }
    if model.opset_import.is_empty() {
        return Err(ImportError::Opset(
            "the model declares no opset (`opset_import` is empty), so its ops have no defined meaning".into(),
        ));
    }
    if opset <= 0 {
        return Err(ImportError::Opset(format!(
            "the model's nodes use the default ONNX domain but `opset_import` gives it no version (or {opset})"
        )));
    }
    if opset > NEWEST_OPSET && !opts.allow_newer_opset {
        return Err(ImportError::Opset(format!(
            "opset {opset} is newer than the newest Kiln knows ({NEWEST_OPSET}); an op whose meaning changed would compile wrongly. Pass --allow-newer-opset to read it with opset-{NEWEST_OPSET} meanings"
        )));
    }
    Ok(())
}

pub fn import_model(
    model: &ModelProto,
    name: &str,
    base_dir: Option<&Path>,
    opts: &ImportOptions,
) -> Result<Imported, ImportError> {
    let g = model.graph.as_ref().expect("checked by caller");
    let opset = model
        .opset_import
        .iter()
        .find(|o| is_default_domain(&o.domain))
        .map(|o| o.version)
        .unwrap_or(if model.opset_import.is_empty() { 1 } else { 0 });
    let default_ops = g.node.iter().any(|n| is_default_domain(&n.domain));
    check_opset(model, opset, default_ops, opts)?;
    let legacy = opset < OLDEST_OPSET && default_ops;
    let mut cx = Ctx {
        graph: Graph::new(if g.name.is_empty() { name } else { &g.name }),
        names: HashMap::new(),
        opset,
        notices: Vec::new(),
        node_name: String::new(),
        op_type: String::new(),
        made: 0,
        max_made: opts.max_made_constant_bytes.unwrap_or(MAX_MADE_CONSTANT_BYTES),
    };

    // Every op Kiln cannot import, all at once, before any work.
    let unsupported: Vec<UnsupportedOp> = g
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| ops::find(&n.op_type, &n.domain).is_none())
        .map(|(i, n)| UnsupportedOp {
            node: node_name(n, i),
            op_type: n.op_type.clone(),
            domain: n.domain.clone(),
            opset: model
                .opset_import
                .iter()
                .find(|o| o.domain == n.domain || (is_default_domain(&n.domain) && is_default_domain(&o.domain)))
                .map(|o| o.version)
                .unwrap_or(0),
        })
        .collect();
    if !unsupported.is_empty() {
        return Err(ImportError::Unsupported(unsupported));
    }
    validate_structure(g)?;

    for init in &g.initializer {
        let t = tensor::convert(init, base_dir)?;
        let v = cx.graph.add_const(&init.name, t);
        cx.names.insert(init.name.clone(), v);
    }
    if let Some(sp) = g.sparse_initializer.first() {
        let n = sp.values.as_ref().map(|v| v.name.clone()).unwrap_or_default();
        return Err(ImportError::BadTensor {
            name: n,
            msg: "sparse initializers are not supported".into(),
        });
    }
    for vi in &g.input {
        if cx.names.contains_key(&vi.name) {
            continue; // an initializer with a default value: a constant for an AOT compiler
        }
        if let Some(t) = opts.constant_inputs.get(&vi.name) {
            let mut o = opts.clone();
            o.input_shapes.insert(vi.name.clone(), t.shape.clone());
            let ty = input_type(vi, &o, &mut Vec::new())?;
            if ty.dtype.scalar != t.data.scalar() {
                return Err(ImportError::BadInput {
                    input: vi.name.clone(),
                    msg: format!(
                        "bound to a {} value, the model declares {}",
                        t.data.scalar(),
                        ty.dtype.scalar
                    ),
                });
            }
            let v = cx.graph.add_const(&vi.name, t.clone());
            cx.names.insert(vi.name.clone(), v);
            continue;
        }
        let ty = input_type(vi, opts, &mut cx.notices)?;
        let v = cx.graph.add_input(&vi.name, ty);
        cx.names.insert(vi.name.clone(), v);
    }
    for k in opts.input_shapes.keys().chain(opts.constant_inputs.keys()) {
        if !g.input.iter().any(|i| &i.name == k) {
            return Err(ImportError::BadInput {
                input: k.clone(),
                msg: "no such graph input".into(),
            });
        }
    }

    let order = schedule(&g.node, &cx.names)?;
    let used: HashSet<&str> = g
        .node
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .chain(g.output.iter().map(|o| o.name.as_str()))
        .collect();
    for i in order {
        let node = &g.node[i];
        cx.node_name = node_name(node, i);
        cx.op_type = node.op_type.clone();
        let spec = ops::find(&node.op_type, &node.domain).expect("checked above");
        let outs = (spec.import)(&mut cx, node)?;
        for (k, out_name) in node.output.iter().enumerate() {
            if out_name.is_empty() {
                continue;
            }
            match outs.get(k) {
                Some(&v) => {
                    cx.names.insert(out_name.clone(), v);
                }
                None if used.contains(out_name.as_str()) => {
                    return Err(cx.err(format!("output {k} (`{out_name}`) is not supported")));
                }
                None => {}
            }
        }
    }
    if legacy {
        cx.notices.push(format!(
            "opset {opset} is older than {OLDEST_OPSET}: ops are read with their opset-{OLDEST_OPSET} meaning, legacy attributes (broadcast, consumed_inputs, ...) are refused"
        ));
    }
    if opset > NEWEST_OPSET {
        cx.notices.push(format!("opset {opset} is newer than the newest Kiln knows ({NEWEST_OPSET}); ops are read with their opset-{NEWEST_OPSET} meaning (--allow-newer-opset)"));
    }
    // Declared types must agree with inference: an error for graph outputs, a notice for
    // value_info (exporters sometimes leave stale intermediate annotations).
    for vi in &g.value_info {
        if let Some(&v) = cx.names.get(&vi.name)
            && let Some(msg) = type_mismatch(vi, &cx.graph.value(v).ty)
        {
            cx.notices
                .push(format!("value_info `{}` {msg}; using the inferred type", vi.name));
        }
    }
    for o in &g.output {
        let v = *cx
            .names
            .get(&o.name)
            .ok_or_else(|| ImportError::MissingOutput(o.name.clone()))?;
        if let Some(msg) = type_mismatch(o, &cx.graph.value(v).ty) {
            return Err(ImportError::OutputType {
                name: o.name.clone(),
                msg,
            });
        }
        cx.graph.add_output(v);
    }
    Ok(Imported {
        graph: cx.graph,
        notices: cx.notices,
        opset,
        files: Vec::new(),
        producer: model.producer_name.clone(),
    })
}

/// Structure every importer relies on, checked once with errors that name the node or
/// output: each node has a named output, graph outputs are named once.
fn validate_structure(g: &proto::GraphProto) -> Result<(), ImportError> {
    for (i, n) in g.node.iter().enumerate() {
        if n.output.iter().all(|o| o.is_empty()) {
            return Err(ImportError::Node {
                node: node_name(n, i),
                op_type: n.op_type.clone(),
                msg: "has no output".into(),
            });
        }
    }
    for (i, n) in g.node.iter().enumerate() {
        for a in &n.attribute {
            if let Some(msg) = attribute_type_error(a) {
                return Err(ImportError::Node {
                    node: node_name(n, i),
                    op_type: n.op_type.clone(),
                    msg,
                });
            }
        }
    }
    // ONNX values are assigned once: a second producer would silently replace the first
    let mut defined: HashSet<&str> = g.input.iter().map(|i| i.name.as_str()).collect();
    defined.extend(g.initializer.iter().map(|t| t.name.as_str()));
    for (i, n) in g.node.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if !defined.insert(o.as_str()) {
                return Err(ImportError::Node {
                    node: node_name(n, i),
                    op_type: n.op_type.clone(),
                    msg: format!("writes `{o}`, which a graph input, initializer or earlier node already defines"),
                });
            }
        }
    }
    let mut seen = HashSet::new();
    for o in &g.output {
        if !seen.insert(o.name.as_str()) {
            return Err(ImportError::OutputType {
                name: o.name.clone(),
                msg: "is listed more than once".into(),
            });
        }
    }
    Ok(())
}

/// Why an attribute Kiln reads by a fixed type has another (an `axis` given as a string
/// would otherwise read as 0). Names whose type differs between operators are not checked.
fn attribute_type_error(a: &proto::AttributeProto) -> Option<String> {
    use proto::AttributeType as T;
    let want = match a.name.as_str() {
        "axis"
        | "group"
        | "keepdims"
        | "transA"
        | "transB"
        | "to"
        | "ceil_mode"
        | "count_include_pad"
        | "select_last_index"
        | "batch_dims"
        | "blocksize"
        | "block_size"
        | "noop_with_empty_axes" => T::Int,
        "kernel_shape" | "strides" | "pads" | "dilations" | "perm" | "output_padding" | "output_shape" => T::Ints,
        "epsilon" | "momentum" => T::Float,
        "auto_pad" | "coordinate_transformation_mode" | "nearest_mode" => T::String,
        _ => return None,
    };
    // The declared type, or for old files without one, the field that holds a value.
    let got = match T::try_from(a.r#type).unwrap_or(T::Undefined) {
        T::Undefined if !a.s.is_empty() => T::String,
        T::Undefined if !a.ints.is_empty() => T::Ints,
        T::Undefined if !a.floats.is_empty() => T::Floats,
        T::Undefined if a.t.is_some() => T::Tensor,
        T::Undefined => return None,
        t => t,
    };
    let name = |t: T| match t {
        T::Int => "an int",
        T::Ints => "a list of ints",
        T::Float => "a float",
        T::String => "a string",
        _ => "another type",
    };
    (got != want).then(|| {
        format!(
            "attribute `{}` must be {}, the model gives {}",
            a.name,
            name(want),
            name(got)
        )
    })
}

/// How a declared tensor type disagrees with the inferred one (symbolic dims match anything).
fn type_mismatch(vi: &proto::ValueInfoProto, ty: &TensorType) -> Option<String> {
    use proto::tensor_shape_proto::dimension::Value as D;
    let Some(proto::type_proto::Value::TensorType(tt)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return None;
    };
    if let Some(s) = tensor::scalar_of(tt.elem_type)
        && s != ty.dtype.scalar
    {
        return Some(format!("is declared {s} but computes {}", ty.dtype.scalar));
    }
    let shape = tt.shape.as_ref()?;
    let fits = shape.dim.len() == ty.shape.len()
        && shape
            .dim
            .iter()
            .zip(&ty.shape)
            .all(|(d, &n)| !matches!(d.value, Some(D::DimValue(v)) if v >= 0 && v as usize != n));
    let declared: Vec<String> = shape
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(D::DimValue(v)) => v.to_string(),
            Some(D::DimParam(p)) => p.clone(),
            None => "?".into(),
        })
        .collect();
    (!fits).then(|| format!("is declared [{}] but computes {ty}", declared.join(",")))
}

fn node_name(n: &NodeProto, i: usize) -> String {
    if n.name.is_empty() {
        format!("{}_{i}", n.op_type)
    } else {
        n.name.clone()
    }
}

/// Node order with every input defined before use (ONNX requires a sorted graph, but
/// exporters get it wrong); a cycle or an undefined input is an error naming the node.
fn schedule(nodes: &[NodeProto], known: &HashMap<String, ValueId>) -> Result<Vec<usize>, ImportError> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            producer.insert(o, i);
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        for inp in n.input.iter().filter(|s| !s.is_empty()) {
            if !producer.contains_key(inp.as_str()) && !known.contains_key(inp) {
                return Err(ImportError::MissingInput {
                    node: node_name(n, i),
                    name: inp.clone(),
                });
            }
        }
    }
    // 0 = unvisited, 1 = on stack, 2 = done; iterative DFS keeps deep graphs off the call stack.
    let mut state = vec![0u8; nodes.len()];
    let mut order = Vec::with_capacity(nodes.len());
    for root in 0..nodes.len() {
        if state[root] != 0 {
            continue;
        }
        let mut stack = vec![(root, 0usize)];
        state[root] = 1;
        while let Some((n, k)) = stack.pop() {
            let deps: Vec<usize> = nodes[n]
                .input
                .iter()
                .filter_map(|s| producer.get(s.as_str()).copied())
                .collect();
            if k < deps.len() {
                stack.push((n, k + 1));
                let d = deps[k];
                match state[d] {
                    0 => {
                        state[d] = 1;
                        stack.push((d, 0));
                    }
                    1 => {
                        return Err(ImportError::Cycle {
                            node: node_name(&nodes[d], d),
                        });
                    }
                    _ => {}
                }
            } else {
                state[n] = 2;
                order.push(n);
            }
        }
    }
    Ok(order)
}

fn input_type(
    vi: &proto::ValueInfoProto,
    opts: &ImportOptions,
    notices: &mut Vec<String>,
) -> Result<TensorType, ImportError> {
    use proto::tensor_shape_proto::dimension::Value as D;
    use proto::type_proto::Value as T;
    let bad = |msg: String| ImportError::BadInput {
        input: vi.name.clone(),
        msg,
    };
    let Some(T::TensorType(tt)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(bad("only tensor inputs are supported".into()));
    };
    let scalar = tensor::scalar_of_unpacked(tt.elem_type).ok_or_else(|| {
        bad(format!(
            "element type {} is not supported",
            proto::data_type::name(tt.elem_type)
        ))
    })?;
    let shape = if let Some(s) = opts.input_shapes.get(&vi.name) {
        if let Some(decl) = &tt.shape
            && decl.dim.len() != s.len()
        {
            return Err(bad(format!(
                "--input-shape gives rank {}, the model declares rank {}",
                s.len(),
                decl.dim.len()
            )));
        }
        if let Some(decl) = &tt.shape {
            for (i, (d, &want)) in decl.dim.iter().zip(s).enumerate() {
                if let Some(D::DimValue(v)) = d.value
                    && v >= 0
                    && v as usize != want
                {
                    return Err(bad(format!(
                        "--input-shape sets dimension {i} to {want}, the model fixes it at {v}"
                    )));
                }
            }
        }
        s.clone()
    } else {
        let decl = tt
            .shape
            .as_ref()
            .ok_or_else(|| bad("has no declared shape; give one with --input-shape".into()))?;
        let mut out = Vec::with_capacity(decl.dim.len());
        for (i, d) in decl.dim.iter().enumerate() {
            match &d.value {
                Some(D::DimValue(v)) if *v >= 0 => out.push(*v as usize),
                other => {
                    // Some exporters write -1 for an unknown dimension: treat it as symbolic.
                    let param = match other {
                        Some(D::DimParam(p)) => p.clone(),
                        Some(D::DimValue(v)) => v.to_string(),
                        None => "?".into(),
                    };
                    if i == 0 {
                        notices.push(format!(
                            "input `{}`: symbolic batch dimension `{param}` set to 1",
                            vi.name
                        ));
                        out.push(1);
                    } else {
                        return Err(ImportError::DynamicDim {
                            input: vi.name.clone(),
                            index: i,
                            param,
                        });
                    }
                }
            }
        }
        out
    };
    tensor::checked_numel(&shape.iter().map(|&d| d as i64).collect::<Vec<_>>(), &vi.name)?;
    Ok(TensorType::new(DType::plain(scalar), shape))
}

/// Import state handed to each op importer.
pub struct Ctx {
    pub graph: Graph,
    names: HashMap<String, ValueId>,
    pub opset: i64,
    pub notices: Vec<String>,
    node_name: String,
    op_type: String,
    /// Bytes of constants made so far, and the budget for them.
    made: usize,
    max_made: usize,
}

impl Ctx {
    /// Counts `bytes` of constants about to be made against the budget, before they are.
    pub fn make(&mut self, bytes: usize) -> Result<(), ImportError> {
        self.made = self.made.saturating_add(bytes);
        if self.made > self.max_made {
            return Err(self.err(format!(
                "the constants this model makes reach {} bytes, over the limit of {} (a model's own weights do not count; raise it with --max-constant-bytes)",
                self.made, self.max_made
            )));
        }
        Ok(())
    }

    /// An error about the node being imported.
    pub fn err(&self, msg: impl Into<String>) -> ImportError {
        ImportError::Node {
            node: self.node_name.clone(),
            op_type: self.op_type.clone(),
            msg: msg.into(),
        }
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Optional input `i` (absent or empty name gives `None`).
    pub fn input(&self, n: &NodeProto, i: usize) -> Option<ValueId> {
        n.input.get(i).filter(|s| !s.is_empty()).map(|s| self.names[s])
    }

    pub fn req(&self, n: &NodeProto, i: usize) -> Result<ValueId, ImportError> {
        self.input(n, i)
            .ok_or_else(|| self.err(format!("input {i} is required")))
    }

    /// All present inputs, in order.
    pub fn inputs(&self, n: &NodeProto) -> Vec<ValueId> {
        (0..n.input.len()).filter_map(|i| self.input(n, i)).collect()
    }

    pub fn ty(&self, v: ValueId) -> &TensorType {
        &self.graph.value(v).ty
    }

    pub fn rank(&self, v: ValueId) -> usize {
        self.ty(v).shape.len()
    }

    /// Value of optional input `i`, which must be a compile-time constant when present.
    pub fn const_input(&self, n: &NodeProto, i: usize) -> Result<Option<Arc<Tensor>>, ImportError> {
        match self.input(n, i) {
            None => Ok(None),
            Some(v) => self
                .graph
                .const_value(v)
                .cloned()
                .map(Some)
                .ok_or_else(|| ImportError::NotConstant {
                    node: self.node_name.clone(),
                    op_type: self.op_type.clone(),
                    index: i,
                    name: self.graph.value(v).name.clone(),
                    graph_input: matches!(self.graph.value(v).def, kiln_ir::ValueDef::Input(_)),
                }),
        }
    }

    /// Integer values of optional constant input `i`.
    pub fn const_ints(&self, n: &NodeProto, i: usize) -> Result<Option<Vec<i64>>, ImportError> {
        Ok(self.const_input(n, i)?.map(|t| t.to_i64_vec()))
    }

    pub fn constant(&mut self, name: &str, t: Tensor) -> ValueId {
        self.graph.add_const(name, t)
    }

    /// Adds the IR node for the ONNX node being imported (its outputs get the ONNX names),
    /// folding it at once if every input is constant.
    pub fn add(&mut self, n: &NodeProto, op: Op, inputs: Vec<ValueId>) -> Result<Vec<ValueId>, ImportError> {
        let names: Vec<&str> = n.output.iter().map(String::as_str).collect();
        let name = self.node_name.clone();
        self.add_named(&name, op, inputs, &names)
    }

    /// Like [`Ctx::add`] for an IR op that makes only the node's first output.
    pub fn add_first(&mut self, n: &NodeProto, op: Op, inputs: Vec<ValueId>) -> Result<Vec<ValueId>, ImportError> {
        let name = self.node_name.clone();
        self.add_named(&name, op, inputs, &[n.output[0].as_str()])
    }

    /// Adds a helper node (for lowerings) named after the current node.
    pub fn add_aux(&mut self, suffix: &str, op: Op, inputs: Vec<ValueId>) -> Result<ValueId, ImportError> {
        let name = format!("{}/{suffix}", self.node_name);
        let outs = self.add_named(&name, op, inputs, &[name.as_str()])?;
        Ok(outs[0])
    }

    /// Adds a helper node with one output named `name` (for lowerings).
    pub fn add_aux_named(&mut self, name: &str, op: Op, inputs: Vec<ValueId>) -> Result<ValueId, ImportError> {
        let outs = self.add_named(name, op, inputs, &[name])?;
        Ok(outs[0])
    }

    fn add_named(
        &mut self,
        name: &str,
        op: Op,
        inputs: Vec<ValueId>,
        outs: &[&str],
    ) -> Result<Vec<ValueId>, ImportError> {
        let op_name = op.name();
        let (id, vals) = self
            .graph
            .add_node(name, op, inputs, outs)
            .map_err(|e| self.node_error(e))?;
        for &v in &vals {
            let ty = &self.graph.value(v).ty;
            if ty
                .shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .is_none_or(|n| n > MAX_ELEMENTS)
            {
                return Err(self.err(format!(
                    "{op_name} output {ty} exceeds the limit of {MAX_ELEMENTS} elements"
                )));
            }
        }
        if let Some(bytes) = fold_constants::fold_bytes(&self.graph, id) {
            self.make(bytes)?;
        }
        fold_constants::fold_node(&mut self.graph, id).map_err(|e| self.node_error(e))?;
        Ok(vals)
    }

    fn node_error(&self, e: IrError) -> ImportError {
        let e = match e {
            IrError::AtNode { source, .. } => *source,
            e => e,
        };
        self.err(e.to_string())
    }

    /// Normalizes a possibly negative axis against `rank`.
    pub fn axis(&self, a: i64, rank: usize) -> Result<usize, ImportError> {
        let r = rank as i64;
        if a < -r || a >= r {
            return Err(self.err(format!("axis {a} is out of range for rank {rank}")));
        }
        Ok(if a < 0 { (a + r) as usize } else { a as usize })
    }

    /// Checks ints used as dimensions (reshape targets, repeats, sizes) before they are used.
    pub fn dims(&self, v: &[i64], what: &str) -> Result<Vec<usize>, ImportError> {
        tensor::checked_numel(v, what).map_err(|e| self.err(e.to_string()))?;
        Ok(v.iter().map(|&d| d as usize).collect())
    }
}

/// Typed access to a node's attributes.
pub struct Attrs<'a>(pub &'a [AttributeProto]);

impl<'a> Attrs<'a> {
    pub fn of(n: &'a NodeProto) -> Self {
        Attrs(&n.attribute)
    }

    pub fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.0.iter().find(|a| a.name == name)
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn i(&self, name: &str, default: i64) -> i64 {
        self.get(name).map(|a| a.i).unwrap_or(default)
    }

    pub fn f(&self, name: &str, default: f32) -> f32 {
        self.get(name).map(|a| a.f).unwrap_or(default)
    }

    pub fn s(&self, name: &str, default: &str) -> String {
        self.get(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
            .unwrap_or_else(|| default.to_string())
    }

    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.get(name).map(|a| a.ints.clone())
    }

    pub fn floats(&self, name: &str) -> Option<Vec<f32>> {
        self.get(name).map(|a| a.floats.clone())
    }

    pub fn strings(&self, name: &str) -> Option<Vec<String>> {
        self.get(name).map(|a| {
            a.strings
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
    }
}

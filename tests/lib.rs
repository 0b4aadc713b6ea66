//! Shared helpers for Kiln's end-to-end tests: locating fixtures, comparing tensors with a
//! stated bound, and building small ONNX models in code for error-path tests.

use kiln::onnx::proto::{
    self, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, ValueInfoProto,
};
use kiln_ir::Tensor;
use std::path::PathBuf;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Largest violation of `|a - b| <= atol + rtol * |b|` as a ratio (<= 1 passes), plus the
/// maximum absolute difference. Integer and bool tensors must match exactly (ratio 0 or inf).
pub fn compare(got: &Tensor, want: &Tensor, rtol: f64, atol: f64) -> Result<(f64, f64), String> {
    if got.shape != want.shape {
        return Err(format!("shape {:?}, expected {:?}", got.shape, want.shape));
    }
    if got.data.scalar() != want.data.scalar() {
        return Err(format!("type {}, expected {}", got.data.scalar(), want.data.scalar()));
    }
    if !want.data.scalar().is_float() {
        return if got.data == want.data {
            Ok((0.0, 0.0))
        } else {
            let (g, w) = (got.to_i64_vec(), want.to_i64_vec());
            let i = g.iter().zip(&w).position(|(a, b)| a != b).unwrap_or(0);
            Err(format!("element {i} is {}, expected {}", g[i], w[i]))
        };
    }
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    let mut worst = 0f64;
    let mut max_abs = 0f64;
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        if a.is_nan() && b.is_nan() || a == b {
            continue;
        }
        let d = (a - b).abs();
        if d.is_nan() {
            return Err(format!("element {i} is {a}, expected {b}"));
        }
        max_abs = max_abs.max(d);
        worst = worst.max(d / (atol + rtol * b.abs()));
    }
    Ok((worst, max_abs))
}

/// Reads a serialized TensorProto (`input_0.pb`).
pub fn read_pb(path: &std::path::Path) -> Result<Tensor, String> {
    use prost::Message;
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let t = TensorProto::decode(bytes.as_slice()).map_err(|e| format!("{}: {e}", path.display()))?;
    kiln::onnx::tensor::convert(&t, None).map_err(|e| e.to_string())
}

// ---- building models in code ----

pub fn attr_i(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: proto::AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: proto::AttributeType::Ints as i32,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

pub fn attr_t(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: proto::AttributeType::Tensor as i32,
        t: Some(t),
        ..Default::default()
    }
}

pub fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute,
        ..Default::default()
    }
}

/// A float tensor value with fixed dims; `None` entries are symbolic.
pub fn value(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    use proto::tensor_shape_proto::{Dimension, dimension::Value as D};
    let dim = dims
        .iter()
        .enumerate()
        .map(|(i, d)| Dimension {
            value: Some(match d {
                Some(v) => D::DimValue(*v),
                None => D::DimParam(format!("d{i}")),
            }),
            denotation: String::new(),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(proto::TypeProto {
            value: Some(proto::type_proto::Value::TensorType(proto::type_proto::Tensor {
                elem_type: proto::data_type::FLOAT,
                shape: Some(proto::TensorShapeProto { dim }),
            })),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

pub fn fixed(name: &str, dims: &[i64]) -> ValueInfoProto {
    value(name, &dims.iter().map(|&d| Some(d)).collect::<Vec<_>>())
}

pub fn tensor(name: &str, shape: &[usize], v: Vec<f32>) -> TensorProto {
    kiln::onnx::tensor::to_proto(name, &Tensor::from_vec(shape.to_vec(), v))
}

pub fn model(
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    inits: Vec<TensorProto>,
    opset: i64,
) -> ModelProto {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        graph: Some(GraphProto {
            node: nodes,
            name: "test".into(),
            initializer: inits,
            input: inputs,
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Writes `m` into a fresh temporary directory and returns the file path.
pub fn write_model(tag: &str, m: &ModelProto) -> PathBuf {
    use prost::Message;
    let dir = std::env::temp_dir().join(format!("kiln-test-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join("model.onnx");
    std::fs::write(&p, m.encode_to_vec()).expect("write model");
    p
}

pub fn f32_tensor(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::from_vec(shape.to_vec(), v)
}

//! Running the `kiln` binary from the tests.
#![allow(dead_code)] // each test file uses some of these

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("kiln runs")
}

/// `kiln ARGS` and `kiln ARGS --json`, both successful: the text and the parsed document.
pub fn text_and_json(args: &[&str]) -> (String, serde_json::Value) {
    let o = kiln(args);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{args:?}: {err}");
    let o = kiln(&[args, &["--json"]].concat());
    let (json, err) = text(&o);
    assert!(o.status.success(), "{args:?} --json: {err}");
    let v = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    (out, v)
}

pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// ONNX models built in code.
pub mod support {
    use kiln::onnx::proto::tensor_shape_proto::dimension::Value as D;
    use kiln::onnx::proto::*;
    use prost::Message;

    /// x -> `op` (node `name`) -> y, both of element type `elem` and dimensions `dims`.
    pub fn one_op_model(op: &str, name: &str, elem: i32, dims: &[D]) -> Vec<u8> {
        let vi = |name: &str| ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: elem,
                    shape: Some(TensorShapeProto {
                        dim: (dims.iter())
                            .map(|v| tensor_shape_proto::Dimension {
                                value: Some(v.clone()),
                                denotation: String::new(),
                            })
                            .collect(),
                    }),
                })),
                denotation: String::new(),
            }),
            doc_string: String::new(),
        };
        let node = NodeProto {
            op_type: op.into(),
            name: name.into(),
            input: vec!["x".into()],
            output: vec!["y".into()],
            ..Default::default()
        };
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 13,
            }],
            graph: Some(GraphProto {
                node: vec![node],
                name: "g".into(),
                input: vec![vi("x")],
                output: vec![vi("y")],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// x: f32[1, 3, h, w] -> Relu -> y (h and w symbolic)
    pub fn symbolic_relu_model() -> Vec<u8> {
        let dims = [
            D::DimValue(1),
            D::DimValue(3),
            D::DimParam("h".into()),
            D::DimParam("w".into()),
        ];
        one_op_model("Relu", "r", data_type::FLOAT, &dims)
    }

    /// x: f64[2,3] -> Softmax -> y: f64[2,3]
    pub fn argmax_model() -> Vec<u8> {
        one_op_model("Softmax", "am", data_type::DOUBLE, &[D::DimValue(2), D::DimValue(3)])
    }
}

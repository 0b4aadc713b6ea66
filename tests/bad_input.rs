//! Malformed and unsupported models: each must give a typed error that names the file,
//! node, tensor or input at fault — never a panic, never a huge allocation.

use kiln::onnx::proto::{StringStringEntryProto, TensorProto};
use kiln::{Error, ImportError, ImportOptions, PipelineOptions};
use kiln_tests::*;
use std::path::Path;

fn load(p: &Path) -> Result<kiln::Model, Error> {
    load_with(p, ImportOptions::default())
}

fn load_with(p: &Path, o: ImportOptions) -> Result<kiln::Model, Error> {
    kiln::load(p, &o, &PipelineOptions::default(), |_, _| {})
}

fn err_text(r: Result<kiln::Model, Error>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn relu_model() -> kiln::onnx::proto::ModelProto {
    model(
        vec![node("Relu", "r", &["x"], &["y"], vec![])],
        vec![fixed("x", &[1, 4])],
        vec![fixed("y", &[1, 4])],
        vec![],
        13,
    )
}

#[test]
fn truncated_file() {
    let src = repo().join("tests/models/mlperf_tiny_kws_dscnn/model.onnx");
    let bytes = std::fs::read(&src).unwrap();
    let p = write_model("truncated", &relu_model());
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = err_text(load(&p));
    assert!(
        e.contains("is not a valid ONNX model") && e.contains("model.onnx"),
        "{e}"
    );
}

#[test]
fn not_onnx_at_all() {
    let p = write_model("text", &relu_model());
    std::fs::write(&p, "this is a text file, not a model\n").unwrap();
    let e = err_text(load(&p));
    assert!(e.contains("is not a valid ONNX model"), "{e}");
}

#[test]
fn missing_file() {
    let e = err_text(load(Path::new("/nonexistent/kiln/model.onnx")));
    assert!(e.contains("cannot read /nonexistent/kiln/model.onnx"), "{e}");
}

#[test]
fn all_unsupported_ops_reported_at_once() {
    let mut foo = node("FooOp", "first_bad", &["x"], &["a"], vec![]);
    foo.domain = "com.example".into();
    let m = model(
        vec![
            foo,
            node("Relu", "ok", &["a"], &["b"], vec![]),
            node("NonZero", "second_bad", &["b"], &["y"], vec![]),
        ],
        vec![fixed("x", &[1, 4])],
        vec![fixed("y", &[1, 4])],
        vec![],
        13,
    );
    match load(&write_model("unsupported", &m)) {
        Err(Error::Import(ImportError::Unsupported(ops))) => {
            assert_eq!(ops.len(), 2);
            assert_eq!(
                (ops[0].node.as_str(), ops[0].op_type.as_str(), ops[0].domain.as_str()),
                ("first_bad", "FooOp", "com.example")
            );
            assert_eq!(
                (ops[1].node.as_str(), ops[1].op_type.as_str(), ops[1].opset),
                ("second_bad", "NonZero", 13)
            );
        }
        other => panic!("expected Unsupported, got {:?}", other.err()),
    }
}

#[test]
fn cyclic_graph() {
    let m = model(
        vec![
            node("Add", "a", &["x", "c"], &["b"], vec![]),
            node("Relu", "r", &["b"], &["c"], vec![]),
        ],
        vec![fixed("x", &[2])],
        vec![fixed("c", &[2])],
        vec![],
        13,
    );
    let e = err_text(load(&write_model("cycle", &m)));
    assert!(e.contains("cycle through node"), "{e}");
}

#[test]
fn missing_initializer() {
    let m = model(
        vec![node("MatMul", "mm", &["x", "w"], &["y"], vec![])],
        vec![fixed("x", &[1, 4])],
        vec![fixed("y", &[1, 4])],
        vec![],
        13,
    );
    let e = err_text(load(&write_model("missing", &m)));
    assert!(e.contains("node `mm` reads `w`"), "{e}");
}

#[test]
fn mismatched_shapes() {
    let m = model(
        vec![node("Add", "bad_add", &["x", "w"], &["y"], vec![])],
        vec![fixed("x", &[2, 3])],
        vec![fixed("y", &[2, 3])],
        vec![tensor("w", &[4, 5], vec![0.0; 20])],
        13,
    );
    let e = err_text(load(&write_model("shapes", &m)));
    assert!(e.contains("bad_add") && e.contains("cannot broadcast"), "{e}");
}

#[test]
fn absurd_initializer_dims_do_not_allocate() {
    let mut t = tensor("huge", &[1], vec![0.0]);
    t.dims = vec![1 << 20, 1 << 20, 1 << 20];
    let m = model(
        vec![node("Add", "a", &["x", "huge"], &["y"], vec![])],
        vec![fixed("x", &[1])],
        vec![fixed("y", &[1])],
        vec![t],
        13,
    );
    let e = err_text(load(&write_model("absurd", &m)));
    assert!(e.contains("tensor `huge`") && e.contains("exceed the limit"), "{e}");
}

#[test]
fn absurd_constant_of_shape_does_not_allocate() {
    let shape = kiln::onnx::tensor::to_proto("s", &kiln_ir::Tensor::from_vec(vec![3], vec![1i64 << 30, 1 << 30, 4]));
    let m = model(
        vec![node("ConstantOfShape", "big", &["s"], &["y"], vec![])],
        vec![],
        vec![fixed("y", &[1])],
        vec![shape],
        13,
    );
    let e = err_text(load(&write_model("cos", &m)));
    assert!(e.contains("big") && e.contains("exceed the limit"), "{e}");
}

/// A 500-byte model whose ConstantOfShape nodes (2^24 floats each, under the per-tensor
/// limit) and the Adds between them would make gigabytes of constants: the import's budget
/// for constants it makes stops it before allocating, naming the node; a raised budget
/// lets a model that needs it through.
#[test]
fn constants_a_model_makes_have_a_budget() {
    let n = 1i64 << 24;
    let shape = kiln::onnx::tensor::to_proto("s", &kiln_ir::Tensor::from_vec(vec![1], vec![n]));
    let mut nodes = Vec::new();
    for i in 0..6 {
        nodes.push(node(
            "ConstantOfShape",
            &format!("c{i}"),
            &["s"],
            &[&format!("c{i}")],
            vec![],
        ));
        let prev = if i == 0 { "x".to_string() } else { format!("a{}", i - 1) };
        nodes.push(node(
            "Add",
            &format!("a{i}"),
            &[&prev, &format!("c{i}")],
            &[&format!("a{i}")],
            vec![],
        ));
    }
    let m = model(nodes, vec![fixed("x", &[n])], vec![fixed("a5", &[n])], vec![shape], 13);
    let p = write_model("made-constants", &m);
    assert!(std::fs::metadata(&p).unwrap().len() < 1000);
    // 4 x 64 MiB of zeros fit the default 256 MiB; the fifth does not
    let e = err_text(load(&p));
    assert!(
        e.contains("`c4`") && e.contains("over the limit of 268435456") && e.contains("--max-constant-bytes"),
        "{e}"
    );
    let opts = ImportOptions {
        max_made_constant_bytes: Some(1 << 30),
        ..Default::default()
    };
    assert!(load_with(&p, opts).is_ok());
}

#[test]
fn data_length_mismatch() {
    let mut t = tensor("w", &[4], vec![1.0; 4]);
    t.raw_data.truncate(6);
    let m = model(
        vec![node("Add", "a", &["x", "w"], &["y"], vec![])],
        vec![fixed("x", &[4])],
        vec![fixed("y", &[4])],
        vec![t],
        13,
    );
    let e = err_text(load(&write_model("rawlen", &m)));
    assert!(e.contains("tensor `w`") && e.contains("holds 6 bytes"), "{e}");
}

#[test]
fn unpinned_dynamic_dim_is_named() {
    let m = model(
        vec![node("Relu", "r", &["x"], &["y"], vec![])],
        vec![value("x", &[Some(1), None])],
        vec![value("y", &[Some(1), None])],
        vec![],
        13,
    );
    let p = write_model("dyn", &m);
    let e = err_text(load(&p));
    assert!(
        e.contains("input `x`: dimension 1 is symbolic (`d1`)") && e.contains("--input-shape"),
        "{e}"
    );
    // Pinned, it imports; a symbolic leading batch dimension defaults to 1 with a notice.
    let mut o = ImportOptions::default();
    o.input_shapes.insert("x".into(), vec![1, 7]);
    let model = load_with(&p, o).expect("pinned model imports");
    assert_eq!(model.graph.value(model.graph.inputs()[0]).ty.shape, vec![1, 7]);
    let m = model_batch();
    let model = load(&write_model("batch", &m)).expect("symbolic batch defaults to 1");
    assert_eq!(model.graph.value(model.graph.inputs()[0]).ty.shape, vec![1, 4]);
    assert!(model.notices.iter().any(|n| n.contains("batch")), "{:?}", model.notices);
}

fn model_batch() -> kiln::onnx::proto::ModelProto {
    model(
        vec![node("Relu", "r", &["x"], &["y"], vec![])],
        vec![value("x", &[None, Some(4)])],
        vec![fixed("y", &[1, 4])],
        vec![],
        13,
    )
}

#[test]
fn bad_input_shape_option() {
    let p = write_model("badshape", &relu_model());
    let mut o = ImportOptions::default();
    o.input_shapes.insert("x".into(), vec![1, 4, 1]);
    let e = err_text(load_with(&p, o));
    assert!(e.contains("input `x`") && e.contains("rank 3"), "{e}");
    let mut o = ImportOptions::default();
    o.input_shapes.insert("nope".into(), vec![1]);
    let e = err_text(load_with(&p, o));
    assert!(e.contains("input `nope`") && e.contains("no such graph input"), "{e}");
}

#[test]
fn external_data_is_read_and_checked() {
    let p = write_model("external", &relu_model());
    let dir = p.parent().unwrap();
    let mut bytes = vec![0u8; 8];
    for v in [1.5f32, -2.0, 3.25, 0.5] {
        bytes.extend(v.to_le_bytes());
    }
    std::fs::write(dir.join("weights.bin"), &bytes).unwrap();
    let ext = |loc: &str| TensorProto {
        name: "w".into(),
        dims: vec![4],
        data_type: kiln::onnx::proto::data_type::FLOAT,
        data_location: 1,
        external_data: vec![
            StringStringEntryProto {
                key: "location".into(),
                value: loc.into(),
            },
            StringStringEntryProto {
                key: "offset".into(),
                value: "8".into(),
            },
            StringStringEntryProto {
                key: "length".into(),
                value: "16".into(),
            },
        ],
        ..Default::default()
    };
    let m = |loc: &str| {
        model(
            vec![node("Add", "a", &["x", "w"], &["y"], vec![])],
            vec![fixed("x", &[4])],
            vec![fixed("y", &[4])],
            vec![ext(loc)],
            13,
        )
    };
    let good = dir.join("good.onnx");
    std::fs::write(&good, prost::Message::encode_to_vec(&m("weights.bin"))).unwrap();
    let model = load(&good).expect("external data loads");
    let x = f32_tensor(&[4], vec![1.0; 4]);
    let y = kiln_ir::eval::run(&model.graph, &[x]).unwrap();
    assert_eq!(y[0].as_slice::<f32>().unwrap(), &[2.5, -1.0, 4.25, 1.5]);
    let bad = dir.join("bad.onnx");
    std::fs::write(&bad, prost::Message::encode_to_vec(&m("missing.bin"))).unwrap();
    let e = err_text(load(&bad));
    assert!(e.contains("tensor `w`") && e.contains("missing.bin"), "{e}");
    std::fs::write(&bad, prost::Message::encode_to_vec(&m("../escape.bin"))).unwrap();
    let e = err_text(load(&bad));
    assert!(e.contains("relative path inside the model's folder"), "{e}");
    // Links are followed only to a regular file inside the folder.
    let link = |name: &str, to: &Path| {
        let l = dir.join(name);
        let _ = std::fs::remove_file(&l);
        std::os::unix::fs::symlink(to, &l).unwrap();
    };
    link("inside.bin", &dir.join("weights.bin"));
    std::fs::write(&good, prost::Message::encode_to_vec(&m("inside.bin"))).unwrap();
    assert!(load(&good).is_ok(), "a link to a file in the folder loads");
    for (name, to) in [("passwd.bin", "/etc/passwd"), ("zero.bin", "/dev/zero")] {
        link(name, Path::new(to));
        std::fs::write(&bad, prost::Message::encode_to_vec(&m(name))).unwrap();
        let e = err_text(load(&bad));
        assert!(e.contains("inside the model's folder") && e.contains(to), "{e}");
    }
    std::fs::create_dir_all(dir.join("sub.bin")).unwrap();
    std::fs::write(&bad, prost::Message::encode_to_vec(&m("sub.bin"))).unwrap();
    let e = err_text(load(&bad));
    assert!(e.contains("sub.bin") && e.contains("not a regular file"), "{e}");
    // The declared length must be what the shape needs; nothing more is read.
    let mut long = m("weights.bin");
    let init = &mut long.graph.as_mut().unwrap().initializer[0];
    init.external_data[2].value = "12".into();
    std::fs::write(&bad, prost::Message::encode_to_vec(&long)).unwrap();
    let e = err_text(load(&bad));
    assert!(e.contains("holds 12 bytes") && e.contains("needs 16"), "{e}");
}

#[test]
fn random_corruption_never_panics() {
    let src = std::fs::read(repo().join("tests/models/mlperf_tiny_kws_dscnn/model.onnx")).unwrap();
    let p = write_model("fuzz", &relu_model());
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut ok, mut errs) = (0, 0);
    for _ in 0..150 {
        let mut b = src.clone();
        for _ in 0..1 + next() % 8 {
            let i = (next() % b.len() as u64) as usize;
            b[i] = next() as u8;
        }
        std::fs::write(&p, &b).unwrap();
        match load(&p) {
            Ok(_) => ok += 1,
            Err(_) => errs += 1,
        }
    }
    assert_eq!(ok + errs, 150);
    println!("corrupted models: {ok} still imported, {errs} rejected with an error");
}

#[test]
fn declared_output_type_must_match() {
    let m = model(
        vec![node("Relu", "r", &["x"], &["y"], vec![])],
        vec![fixed("x", &[1, 4])],
        vec![fixed("y", &[1, 5])],
        vec![],
        13,
    );
    let e = err_text(load(&write_model("outtype", &m)));
    assert!(
        e.contains("graph output `y` is declared [1,5] but computes f32[1,4]"),
        "{e}"
    );
}

#[test]
fn legacy_broadcast_attribute_is_refused() {
    let mut add = node(
        "Add",
        "old_add",
        &["x", "b"],
        &["y"],
        vec![attr_i("broadcast", 1), attr_i("axis", 1)],
    );
    add.domain = String::new();
    let m = model(
        vec![add],
        vec![fixed("x", &[2, 3, 4]), fixed("b", &[3])],
        vec![fixed("y", &[2, 3, 4])],
        vec![],
        6,
    );
    let e = err_text(load(&write_model("legacy", &m)));
    assert!(e.contains("old_add") && e.contains("legacy"), "{e}");
}

#[test]
fn nodes_without_outputs_and_repeated_outputs_are_refused() {
    for op in [
        "Constant",
        "ConstantOfShape",
        "Range",
        "DequantizeLinear",
        "Dropout",
        "LayerNormalization",
        "Shape",
        "Size",
    ] {
        let m = model(
            vec![
                node(op, "outless", &["x"], &[], vec![]),
                node("Relu", "r", &["x"], &["y"], vec![]),
            ],
            vec![fixed("x", &[1, 4])],
            vec![fixed("y", &[1, 4])],
            vec![],
            17,
        );
        let e = err_text(load(&write_model("outless", &m)));
        assert!(e.contains("outless") && e.contains("has no output"), "{op}: {e}");
    }
    let mut m = relu_model();
    let g = m.graph.as_mut().unwrap();
    g.output.push(g.output[0].clone());
    let e = err_text(load(&write_model("dup-out", &m)));
    assert!(e.contains("`y`") && e.contains("more than once"), "{e}");
    // two producers of one value (the second would silently win), or a node writing a
    // graph input's name
    for (first, second) in [("y", "y"), ("x", "y")] {
        let m = model(
            vec![
                node("Relu", "a", &["x"], &[first], vec![]),
                node("Sigmoid", "b", &["x"], &[second], vec![]),
            ],
            vec![fixed("x", &[1, 4])],
            vec![fixed("y", &[1, 4])],
            vec![],
            17,
        );
        let e = err_text(load(&write_model("dup-producer", &m)));
        let culprit = if first == "x" { "`a`" } else { "`b`" };
        assert!(e.contains(culprit) && e.contains("already defines"), "{e}");
    }
}

#[test]
fn range_with_an_empty_start_is_refused() {
    let empty = TensorProto {
        name: "start".into(),
        dims: vec![0],
        data_type: kiln::onnx::proto::data_type::FLOAT,
        ..Default::default()
    };
    let m = model(
        vec![node("Range", "rng", &["start", "limit", "delta"], &["y"], vec![])],
        vec![],
        vec![fixed("y", &[4])],
        vec![empty, tensor("limit", &[], vec![4.0]), tensor("delta", &[], vec![1.0])],
        17,
    );
    let e = err_text(load(&write_model("range-empty", &m)));
    assert!(e.contains("rng"), "{e}");
}

#[test]
fn an_attribute_of_the_wrong_type_is_refused() {
    use kiln::onnx::proto::{AttributeProto, AttributeType};
    let axis = AttributeProto {
        name: "axis".into(),
        r#type: AttributeType::String as i32,
        s: b"abc".to_vec(),
        ..Default::default()
    };
    let m = model(
        vec![node("Concat", "cat", &["x", "x"], &["y"], vec![axis])],
        vec![fixed("x", &[1, 4])],
        vec![fixed("y", &[2, 4])],
        vec![],
        13,
    );
    let e = err_text(load(&write_model("attr-type", &m)));
    assert!(
        e.contains("cat") && e.contains("`axis` must be an int") && e.contains("a string"),
        "{e}"
    );
    // Declared correctly, the same model loads.
    let m = model(
        vec![node("Concat", "cat", &["x", "x"], &["y"], vec![attr_i("axis", 0)])],
        vec![fixed("x", &[1, 4])],
        vec![fixed("y", &[2, 4])],
        vec![],
        13,
    );
    assert!(load(&write_model("attr-type-ok", &m)).is_ok());
}

#[test]
fn an_rnn_hidden_size_that_disagrees_with_its_weights_is_refused() {
    // hidden_size 2^40 with weights for 8: refused before any state is allocated.
    let w = tensor("w", &[1, 24, 4], vec![0.1; 96]);
    let r = tensor("r", &[1, 24, 8], vec![0.1; 192]);
    let m = model(
        vec![node(
            "GRU",
            "gru",
            &["x", "w", "r"],
            &["", "h"],
            vec![attr_i("hidden_size", 1 << 40)],
        )],
        vec![fixed("x", &[2, 1, 4])],
        vec![fixed("h", &[1, 1, 8])],
        vec![w, r],
        14,
    );
    let e = err_text(load(&write_model("gru-huge", &m)));
    assert!(
        e.contains("gru") && e.contains("hidden_size 1099511627776 does not match W"),
        "{e}"
    );
}

#[test]
fn split_into_more_parts_than_the_axis_holds_is_refused() {
    let outs = ["a", "b", "c", "d", "e"];
    let m = model(
        vec![node("Split", "sp", &["x"], &outs, vec![attr_i("axis", 1)])],
        vec![fixed("x", &[1, 2])],
        outs.iter().map(|o| fixed(o, &[1, 1])).collect(),
        vec![],
        13,
    );
    let e = err_text(load(&write_model("split-many", &m)));
    assert!(e.contains("sp") && e.contains("5 outputs from an axis of 2"), "{e}");
}

#[test]
fn opsets_kiln_does_not_know_are_refused() {
    let mut m = relu_model();
    m.opset_import[0].version = kiln::onnx::NEWEST_OPSET + 1;
    let p = write_model("opset_newer", &m);
    let e = err_text(load(&p));
    assert!(
        e.contains(&format!("opset {}", kiln::onnx::NEWEST_OPSET + 1)) && e.contains("--allow-newer-opset"),
        "{e}"
    );
    let opts = ImportOptions {
        allow_newer_opset: true,
        ..Default::default()
    };
    assert!(load_with(&p, opts).is_ok());

    let mut m = relu_model();
    m.opset_import.clear();
    let e = err_text(load(&write_model("opset_missing", &m)));
    assert!(e.contains("declares no opset"), "{e}");

    let mut m = relu_model();
    m.opset_import[0].domain = "com.example".into();
    let e = err_text(load(&write_model("opset_other_domain", &m)));
    assert!(e.contains("gives it no version"), "{e}");
}

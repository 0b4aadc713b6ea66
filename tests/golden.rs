//! Golden snapshots of emitted code for small models, kept in `golden/` and reviewed like
//! code: any codegen change shows up as a diff. After an intended change, re-bless with
//! `cargo insta review` (or `INSTA_UPDATE=always cargo test -p kiln-tests --test golden`).

use kiln::{ImportOptions, PipelineOptions};
use kiln_tests::*;

/// conv 3x3 (pad 1) -> relu -> maxpool 2x2 -> flatten -> gemm (transB) -> softmax
fn small_cnn() -> kiln::onnx::proto::ModelProto {
    let w = tensor("w", &[2, 1, 3, 3], (0..18).map(|i| (i as f32 - 9.0) / 10.0).collect());
    let b = tensor("b", &[2], vec![0.1, -0.1]);
    let fc = tensor("fc", &[3, 8], (0..24).map(|i| (i as f32 - 12.0) / 20.0).collect());
    let fcb = tensor("fcb", &[3], vec![0.0, 0.5, -0.5]);
    model(
        vec![
            node(
                "Conv",
                "conv",
                &["x", "w", "b"],
                &["c"],
                vec![attr_ints("pads", &[1, 1, 1, 1])],
            ),
            node("Relu", "relu", &["c"], &["r"], vec![]),
            node(
                "MaxPool",
                "pool",
                &["r"],
                &["p"],
                vec![attr_ints("kernel_shape", &[2, 2]), attr_ints("strides", &[2, 2])],
            ),
            node("Flatten", "flat", &["p"], &["f"], vec![]),
            node("Gemm", "fc", &["f", "fc", "fcb"], &["g"], vec![attr_i("transB", 1)]),
            node("Softmax", "softmax", &["g"], &["y"], vec![]),
        ],
        vec![fixed("x", &[1, 1, 4, 4])],
        vec![fixed("y", &[1, 3])],
        vec![w, b, fc, fcb],
        13,
    )
}

/// broadcasting Add of a bias row, Sigmoid, then Mul by a scalar
fn small_elementwise() -> kiln::onnx::proto::ModelProto {
    model(
        vec![
            node("Add", "add", &["x", "bias"], &["a"], vec![]),
            node("Sigmoid", "sig", &["a"], &["s"], vec![]),
            node("Mul", "scale", &["s", "k"], &["y"], vec![]),
        ],
        vec![fixed("x", &[2, 6])],
        vec![fixed("y", &[2, 6])],
        vec![
            tensor("bias", &[6], vec![0.5, -0.5, 1.0, -1.0, 2.0, -2.0]),
            tensor("k", &[], vec![3.0]),
        ],
        13,
    )
}

fn clif_of(tag: &str, m: &kiln::onnx::proto::ModelProto) -> String {
    clif_in(tag, m, "float")
}

fn clif_in(tag: &str, m: &kiln::onnx::proto::ModelProto, mode: &str) -> String {
    let p = write_model(tag, m);
    let mut model = kiln::load(&p, &ImportOptions::default(), &PipelineOptions::default(), |_, _| {}).unwrap();
    if mode == "dynamic" {
        model.graph = kiln::quantize::dynamic::to_dynamic(&model.graph, &[]).unwrap().graph;
    }
    let target = kiln::compile::parse_target("x86_64-unknown-linux-gnu").unwrap();
    let opts = kiln::compile::CompileOptions {
        emit: kiln::compile::Emit::Object,
        target,
        prefix: tag.into(),
        static_arena: false,
    };
    kiln::compile::compile(&model.graph, &opts, "model.onnx").unwrap().clif
}

fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path(repo().join("golden"));
    s.set_prepend_module_to_snapshot(false);
    s.set_omit_expression(true);
    s
}

#[test]
fn clif_small_cnn() {
    settings().bind(|| insta::assert_snapshot!("clif_small_cnn", clif_of("cnn", &small_cnn())));
}

#[test]
fn clif_small_elementwise() {
    settings().bind(|| insta::assert_snapshot!("clif_small_elementwise", clif_of("ew", &small_elementwise())));
}

fn files_of(tag: &str, m: &kiln::onnx::proto::ModelProto, emit: kiln::compile::Emit, mode: &str) -> String {
    let p = write_model(tag, m);
    let mut model = kiln::load(&p, &ImportOptions::default(), &PipelineOptions::default(), |_, _| {}).unwrap();
    if mode == "fp16" {
        model.graph = kiln::quantize::fp16::to_fp16(&model.graph).unwrap().graph;
    }
    if mode == "dynamic" {
        model.graph = kiln::quantize::dynamic::to_dynamic(&model.graph, &[]).unwrap().graph;
    }
    if mode == "int8" {
        // 16 deterministic samples spanning [-1, 1)
        let calib = p.parent().unwrap().join(format!("{tag}-calib"));
        std::fs::create_dir_all(&calib).unwrap();
        let x = model.graph.value(model.graph.inputs()[0]).ty.shape.clone();
        let mut shape = vec![16];
        shape.extend_from_slice(&x[1..]);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| ((i * 37) % 101) as f32 / 50.5 - 1.0).collect();
        kiln::npy::write(&calib.join("input_0.npy"), &f32_tensor(&shape, v)).unwrap();
        let opts = kiln::quantize::QuantOptions {
            method: Some(kiln::quantize::calibrate::Method::MinMax),
            ..Default::default()
        };
        model.graph = kiln::quantize::quantize_int8(&model.graph, &calib, &opts, |_, _| {})
            .unwrap()
            .graph;
    }
    let target = kiln::compile::parse_target("x86_64-unknown-linux-gnu").unwrap();
    let opts = kiln::compile::CompileOptions {
        emit,
        target,
        prefix: tag.into(),
        static_arena: false,
    };
    let files = kiln::compile::compile(&model.graph, &opts, "model.onnx").unwrap().files;
    files
        .iter()
        .map(|(name, bytes)| format!("===== {name}\n{}", String::from_utf8_lossy(bytes)))
        .collect()
}

fn c_of(tag: &str, m: &kiln::onnx::proto::ModelProto) -> String {
    files_of(tag, m, kiln::compile::Emit::C, "float")
}

#[test]
fn rust_small_cnn() {
    let text = files_of("cnn", &small_cnn(), kiln::compile::Emit::RustSource, "float");
    settings().bind(|| insta::assert_snapshot!("rust_small_cnn", text));
}

#[test]
fn rust_small_elementwise() {
    let text = files_of("ew", &small_elementwise(), kiln::compile::Emit::RustSource, "float");
    settings().bind(|| insta::assert_snapshot!("rust_small_elementwise", text));
}

#[test]
fn rust_small_cnn_int8() {
    let text = files_of("cnn_q8", &small_cnn(), kiln::compile::Emit::RustSource, "int8");
    settings().bind(|| insta::assert_snapshot!("rust_small_cnn_int8", text));
}

#[test]
fn c_small_cnn() {
    settings().bind(|| insta::assert_snapshot!("c_small_cnn", c_of("cnn", &small_cnn())));
}

#[test]
fn c_small_elementwise() {
    settings().bind(|| insta::assert_snapshot!("c_small_elementwise", c_of("ew", &small_elementwise())));
}

#[test]
fn emission_is_deterministic() {
    let a = clif_of("det1", &small_cnn()).replace("det1", "x");
    let b = clif_of("det2", &small_cnn()).replace("det2", "x");
    assert_eq!(a, b);
}

#[test]
fn c_small_cnn_fp16() {
    let text = files_of("cnn_h", &small_cnn(), kiln::compile::Emit::C, "fp16");
    settings().bind(|| insta::assert_snapshot!("c_small_cnn_fp16", text));
}

#[test]
fn rust_small_cnn_fp16() {
    let text = files_of("cnn_h", &small_cnn(), kiln::compile::Emit::RustSource, "fp16");
    settings().bind(|| insta::assert_snapshot!("rust_small_cnn_fp16", text));
}

#[test]
fn c_small_cnn_dynamic() {
    let text = files_of("cnn_d", &small_cnn(), kiln::compile::Emit::C, "dynamic");
    settings().bind(|| insta::assert_snapshot!("c_small_cnn_dynamic", text));
}

#[test]
fn rust_small_cnn_dynamic() {
    let text = files_of("cnn_d", &small_cnn(), kiln::compile::Emit::RustSource, "dynamic");
    settings().bind(|| insta::assert_snapshot!("rust_small_cnn_dynamic", text));
}

#[test]
fn clif_small_cnn_dynamic() {
    settings().bind(|| insta::assert_snapshot!("clif_small_cnn_dynamic", clif_in("cnn_d", &small_cnn(), "dynamic")));
}

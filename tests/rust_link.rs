//! A Rust program links a compiled model through the generated `<prefix>.rs` bindings
//! (`include!`d, built with `rustc -D warnings`) and reproduces the evaluator's output.

use kiln::{ImportOptions, PipelineOptions};
use kiln_tests::{compare, repo};

#[test]
fn rust_program_links_the_model_through_generated_bindings() {
    let model = repo().join("tests/models/mlperf_tiny_kws_dscnn");
    let m = kiln::load(
        &model.join("model.onnx"),
        &ImportOptions::default(),
        &PipelineOptions::default(),
        |_, _| {},
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("kiln-rust-link-{}", std::process::id()));
    let opts = kiln::compile::CompileOptions {
        emit: kiln::compile::Emit::Object,
        target: kiln::compile::parse_target("host").unwrap(),
        prefix: "kws".into(),
        static_arena: false,
    };
    let out = kiln::compile::compile(&m.graph, &opts, "model.onnx").unwrap();
    kiln::compile::write_files(&dir, &out.files, &[]).unwrap();
    let main = r#"
include!("kws.rs");

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bytes = std::fs::read(&args[1]).expect("input");
    let mut input = [0f32; kws::INPUT0_COUNT];
    for (v, c) in input.iter_mut().zip(bytes.chunks_exact(4)) {
        *v = f32::from_le_bytes(c.try_into().unwrap());
    }
    let mut output = [0f32; kws::OUTPUT0_COUNT];
    let mut arena = Box::new(kws::Arena::new());
    assert_eq!(std::mem::align_of::<kws::Arena>(), kws::ARENA_ALIGN);
    kws::run(&input, &mut output, &mut arena).expect("model runs");
    let out: Vec<u8> = output.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&args[2], out).expect("output");
}
"#;
    std::fs::write(dir.join("main.rs"), main).unwrap();
    let exe = dir.join("app");
    let st = std::process::Command::new("rustc")
        .args(["--edition", "2021", "-D", "warnings", "-O"])
        .arg(dir.join("main.rs"))
        .arg("-L")
        .arg(&dir)
        .args(["-l", "static=kws", "-o"])
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "rustc failed:\n{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let set = model.join("ref/test_data_set_0");
    let input = kiln::npy::read(&set.join("input_0.npy")).unwrap();
    std::fs::write(dir.join("in.bin"), input.data.to_le_bytes()).unwrap();
    let st = std::process::Command::new(&exe)
        .arg(dir.join("in.bin"))
        .arg(dir.join("out.bin"))
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let bytes = std::fs::read(dir.join("out.bin")).unwrap();
    let got = kiln_ir::Tensor::new(
        vec![1, 12],
        kiln_ir::Data::from_le_bytes(kiln_ir::Scalar::F32, &bytes).unwrap(),
    );
    let want = kiln_ir::eval::run(&m.graph, &[input]).unwrap();
    let (worst, _) = compare(&got, &want[0], 1e-5, 1e-6).unwrap();
    assert!(
        worst <= 1.0,
        "Rust-linked output differs from the evaluator ({worst:.2}x the bound)"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The int8 build through the Rust bindings: `run` (float in and out) and `run_int` (on
/// int8 buffers, quantized with the generated SCALE/ZERO_POINT constants) both give the
/// evaluator's bytes.
#[test]
fn rust_program_runs_the_int8_model_both_ways() {
    let model = repo().join("tests/models/mlperf_tiny_kws_dscnn");
    let m = kiln::load(
        &model.join("model.onnx"),
        &ImportOptions::default(),
        &PipelineOptions::default(),
        |_, _| {},
    )
    .unwrap();
    let q = kiln::quantize::quantize_int8(&m.graph, &model.join("calib"), &Default::default(), |_, _| {}).unwrap();
    let g = q.graph;
    let dir = std::env::temp_dir().join(format!("kiln-rust-link-q8-{}", std::process::id()));
    let opts = kiln::compile::CompileOptions {
        emit: kiln::compile::Emit::Object,
        target: kiln::compile::parse_target("host").unwrap(),
        prefix: "kws".into(),
        static_arena: false,
    };
    let out = kiln::compile::compile(&g, &opts, "model.onnx").unwrap();
    kiln::compile::write_files(&dir, &out.files, &[]).unwrap();
    let main = r#"
include!("kws.rs");

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bytes = std::fs::read(&args[1]).expect("input");
    let mut input = [0f32; kws::INPUT0_COUNT];
    for (v, c) in input.iter_mut().zip(bytes.chunks_exact(4)) {
        *v = f32::from_le_bytes(c.try_into().unwrap());
    }
    let mut arena = Box::new(kws::Arena::new());
    let mut output = [0f32; kws::OUTPUT0_COUNT];
    kws::run(&input, &mut output, &mut arena).expect("model runs");
    let out: Vec<u8> = output.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&args[2], out).expect("output");
    let mut qin = [0i8; kws::INPUT0_COUNT];
    for (q, &x) in qin.iter_mut().zip(&input) {
        *q = ((x / kws::INPUT0_SCALE).round() as i32 + kws::INPUT0_ZERO_POINT).clamp(-128, 127) as i8;
    }
    let mut qout = [0i8; kws::OUTPUT0_COUNT];
    kws::run_int(&qin, &mut qout, &mut arena).expect("model runs");
    let q: Vec<u8> = qout.iter().map(|&v| v as u8).collect();
    std::fs::write(&args[3], q).expect("output");
}
"#;
    std::fs::write(dir.join("main.rs"), main).unwrap();
    let exe = dir.join("app");
    let st = std::process::Command::new("rustc")
        .args(["--edition", "2021", "-D", "warnings", "-O"])
        .arg(dir.join("main.rs"))
        .arg("-L")
        .arg(&dir)
        .args(["-l", "static=kws", "-o"])
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "rustc failed:\n{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let input = kiln::npy::read(&model.join("ref/test_data_set_0/input_0.npy")).unwrap();
    std::fs::write(dir.join("in.bin"), input.data.to_le_bytes()).unwrap();
    let st = std::process::Command::new(&exe)
        .arg(dir.join("in.bin"))
        .arg(dir.join("out.bin"))
        .arg(dir.join("qout.bin"))
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let mut seen = std::collections::HashMap::new();
    let want = kiln_ir::eval::run_observed(&g, std::slice::from_ref(&input), |v, t| {
        seen.insert(v, t.clone());
    })
    .unwrap();
    assert_eq!(
        std::fs::read(dir.join("out.bin")).unwrap(),
        want[0].data.to_le_bytes(),
        "run differs"
    );
    let int = kiln_backends::header::int_boundary(&g).unwrap();
    assert_eq!(
        std::fs::read(dir.join("qout.bin")).unwrap(),
        seen[&int.outputs[0].value].data.to_le_bytes(),
        "run_int differs"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

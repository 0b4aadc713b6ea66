//! Models quantized by ONNX Runtime (`scripts/qdq-fixtures/make.py`: `quantize_static` in QDQ
//! form with int8 and with uint8 activations, and in QOperator form, from the repo's models),
//! built with `--quantize int8`, which keeps each model's own scales, zero points and integer
//! weights. Kiln's output is ONNX Runtime's to within `ORT_STEPS` steps of the output's
//! quantization (each fixture prints its figure), and the integer programs give the
//! evaluator's bytes in C, natively and as Rust source.

use kiln::PipelineOptions;
use kiln::quantize::{QuantOptions, qdq};
use kiln_ir::{Graph, Op, Tensor};
use kiln_tests::{bit_exact_on_every_backend_many, case_import_options, model_dirs, ref_input_sets};
use std::path::{Path, PathBuf};

/// Largest difference from ONNX Runtime, in steps of the output's quantization.
const ORT_STEPS: f64 = 1.0;

const VARIANTS: [&str; 3] = ["qdq_s8", "qdq_u8", "qop_u8"];

struct Fixture {
    name: String,
    dir: PathBuf,
    variant: &'static str,
    graph: Graph,
    notes: Vec<String>,
}

fn load(dir: &Path, variant: &str, opts: &QuantOptions) -> Result<(Graph, Vec<String>), String> {
    let path = dir.join("ort").join(format!("{variant}.onnx"));
    let m = kiln::load(&path, &case_import_options(dir), &PipelineOptions::default(), |_, _| {})
        .map_err(|e| e.to_string())?;
    assert!(qdq::is_quantized(&m.graph), "{}: no quantization steps", path.display());
    let q = qdq::quantize_model(&m.graph, None, opts).map_err(|e| e.to_string())?;
    Ok((q.graph, q.notes))
}

fn fixtures() -> Vec<Fixture> {
    let mut out = Vec::new();
    for dir in model_dirs() {
        for variant in VARIANTS {
            if !dir.join("ort").join(format!("{variant}.onnx")).exists() {
                continue;
            }
            let name = format!("{}/{variant}", dir.file_name().unwrap().to_string_lossy());
            let (graph, notes) =
                load(&dir, variant, &QuantOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
            out.push(Fixture {
                name,
                dir: dir.clone(),
                variant,
                graph,
                notes,
            });
        }
    }
    assert!(
        out.len() >= 12,
        "expected the ONNX Runtime fixtures of at least four models"
    );
    out
}

fn sets(f: &Fixture) -> Vec<Vec<Tensor>> {
    ref_input_sets(&f.dir, f.graph.inputs().len())
}

/// The quantization step of graph output 0 (every fixture's output is dequantized int8).
fn output_step(g: &Graph) -> f64 {
    let out = g.outputs()[0];
    match g.producer(out).map(|n| &g.node(n).op) {
        Some(Op::Dequantize { scale, .. }) => *scale as f64,
        other => panic!("output 0 is not dequantized integers but {other:?}"),
    }
}

#[test]
fn agrees_with_onnx_runtime() {
    let mut failures = Vec::new();
    for f in fixtures() {
        let step = output_step(&f.graph);
        let (mut worst, mut differ, mut total) = (0f64, 0usize, 0usize);
        for (k, inputs) in sets(&f).iter().enumerate() {
            let got = kiln_ir::eval::run(&f.graph, inputs).unwrap().remove(0);
            let want_path = f.dir.join("ort").join(format!("{}_out_{k}.npy", f.variant));
            let want = kiln::npy::read(&want_path).unwrap();
            assert_eq!(got.shape, want.shape, "{}", f.name);
            for (a, b) in got.to_f64_vec().iter().zip(want.to_f64_vec()) {
                let steps = (a - b).abs() / step;
                worst = worst.max(steps);
                differ += (steps > 1e-3) as usize;
                total += 1;
            }
        }
        println!(
            "{}: max {worst:.2} steps from ONNX Runtime, {differ} of {total} outputs differ; float parts: {}",
            f.name,
            f.notes.iter().filter(|n| n.contains("stays float")).count()
        );
        if worst > ORT_STEPS + 1e-3 {
            failures.push(format!("{}: {worst:.2} steps", f.name));
        }
    }
    assert!(
        failures.is_empty(),
        "further from ONNX Runtime than {ORT_STEPS} step:\n{}",
        failures.join("\n")
    );
}

#[test]
fn integer_builds_are_bit_exact_on_every_backend() {
    // uint8 and int8 QDQ give the same integer program up to a zero-point shift; build one
    let fixtures: Vec<Fixture> = fixtures().into_iter().filter(|f| f.variant != "qdq_u8").collect();
    let all_sets: Vec<Vec<Vec<Tensor>>> = fixtures.iter().map(sets).collect();
    let tags: Vec<String> = fixtures.iter().map(|f| f.name.replace(['/', '-'], "_")).collect();
    let models: Vec<(&str, &Graph, &[Vec<Tensor>])> = fixtures
        .iter()
        .zip(&tags)
        .zip(&all_sets)
        .map(|((f, t), s)| (t.as_str(), &f.graph, s.as_slice()))
        .collect();
    let dir = std::env::temp_dir().join(format!("kiln-qdq-{}", std::process::id()));
    let failures = bit_exact_on_every_backend_many(&models, &dir);
    assert!(
        failures.is_empty(),
        "not the evaluator's bytes:\n{}",
        failures.join("\n")
    );
}

#[test]
fn uint8_and_int8_activations_give_the_same_numbers() {
    // ONNX Runtime quantized the same model twice, activations uint8 then int8 with the
    // same scales: Kiln shifts uint8 zero points by 128, so both builds must agree exactly.
    let dir = kiln_tests::repo().join("tests/models/mlperf_tiny_kws_dscnn");
    let (s8, _) = load(&dir, "qdq_s8", &QuantOptions::default()).unwrap();
    let (u8_, _) = load(&dir, "qdq_u8", &QuantOptions::default()).unwrap();
    for inputs in ref_input_sets(&dir, 1) {
        let a = kiln_ir::eval::run(&s8, &inputs).unwrap();
        let b = kiln_ir::eval::run(&u8_, &inputs).unwrap();
        assert_eq!(a[0].to_f64_vec(), b[0].to_f64_vec());
    }
}

#[test]
fn strict_integer_names_what_the_model_leaves_in_float() {
    // ONNX Runtime left one BatchNormalization and its Relu in float in this QOperator model
    let dir = kiln_tests::repo().join("tests/models/mlperf_tiny_sww_dscnn");
    let (_, notes) = load(&dir, "qop_u8", &QuantOptions::default()).unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("FusedBatchNormV3") && n.contains("stays float")),
        "{notes:?}"
    );
    let strict = QuantOptions {
        strict_integer: true,
        ..Default::default()
    };
    let err = load(&dir, "qop_u8", &strict).unwrap_err();
    assert!(
        err.contains("--strict-integer") && err.contains("FusedBatchNormV3"),
        "{err}"
    );
    // a model that is integer throughout passes
    let digits = kiln_tests::repo().join("tests/models/digits_cnn");
    load(&digits, "qop_u8", &strict).unwrap();
}

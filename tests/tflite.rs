//! The MLPerf Tiny `.tflite` files (`tests/models/*/source/`), read directly: the int8 ones
//! give TFLite's reference bytes (`ref_int8/`) by default, on every backend, and compile to
//! the same integer program as their ONNX QDQ conversions; the float ones match `ref/`.

use kiln::PipelineOptions;
use kiln::quantize::{Mode, QuantOptions, apply};
use kiln_ir::{Graph, Tensor};
use kiln_tests::{bit_exact_on_every_backend_many, compare_range, int8_sets, repo};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// (model folder, int8 file, float file)
const MODELS: [(&str, &str, Option<&str>); 5] = [
    (
        "mlperf_tiny_ad_fc_autoencoder",
        "ad01_int8.tflite",
        Some("ad01_fp32.tflite"),
    ),
    (
        "mlperf_tiny_ic_resnet8",
        "pretrainedResnet_quant.tflite",
        Some("pretrainedResnet.tflite"),
    ),
    ("mlperf_tiny_kws_dscnn", "kws_ref_model.tflite", None),
    ("mlperf_tiny_sww_dscnn", "str_ww_ref_model.tflite", None),
    (
        "mlperf_tiny_vww_mobilenetv1_025",
        "vww_96_int8.tflite",
        Some("vww_96_float.tflite"),
    ),
];

fn dir(name: &str) -> PathBuf {
    repo().join("tests/models").join(name)
}

fn load(path: &Path) -> kiln::Model {
    kiln::load(path, &Default::default(), &PipelineOptions::default(), |_, _| {})
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The integer program Kiln builds by default from a model that carries its quantization.
fn integer(path: &Path) -> (Graph, Vec<String>) {
    let m = load(path);
    let mode = Mode::default_for(&m.graph);
    assert!(
        matches!(mode, Mode::Model { .. }),
        "{}: not read as quantized",
        path.display()
    );
    let opts = QuantOptions {
        strict_integer: true,
        ..Default::default()
    };
    let a = apply(&m.graph, &m.producer, &mode, &opts, |_, _| {}).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (a.graph, a.notes)
}

#[test]
fn int8_files_give_tflites_reference_bytes() {
    for (name, int8, _) in MODELS {
        let d = dir(name);
        let (g, notes) = integer(&d.join("source").join(int8));
        assert!(
            notes.iter().any(|n| n.contains("integer numerics: tflite")),
            "{name}: {notes:?}"
        );
        let sets = int8_sets(&d, "ref_int8");
        assert!(!sets.is_empty(), "{name}");
        for (k, (x, want)) in sets.iter().enumerate() {
            let got = kiln_ir::eval::run(&g, std::slice::from_ref(x)).unwrap().remove(0);
            assert_eq!(got.shape, want.shape, "{name} set {k}");
            assert_eq!(got.to_i64_vec(), want.to_i64_vec(), "{name} set {k}");
        }
        println!("{name}: {} reference sets, exact", sets.len());
    }
}

/// The ops of a graph, counted by name: the `.tflite` import and the ONNX QDQ conversion of
/// the same model must give the same integer program.
fn histogram(g: &Graph) -> BTreeMap<String, usize> {
    let mut h = BTreeMap::new();
    for n in g.node_ids() {
        *h.entry(g.node(n).op.name().to_string()).or_default() += 1;
    }
    h
}

#[test]
fn int8_files_build_the_same_program_as_their_onnx_conversion() {
    for (name, int8, _) in MODELS {
        let d = dir(name);
        let (from_tflite, _) = integer(&d.join("source").join(int8));
        let (from_onnx, _) = integer(&d.join("model_int8_qdq_tflite.onnx"));
        assert_eq!(histogram(&from_tflite), histogram(&from_onnx), "{name}");
    }
}

#[test]
fn int8_files_are_bit_exact_on_every_backend() {
    let built: Vec<(String, Graph, Vec<Vec<Tensor>>)> = MODELS
        .iter()
        .map(|&(name, int8, _)| {
            let d = dir(name);
            let (g, _) = integer(&d.join("source").join(int8));
            let s = int8_sets(&d, "ref_int8")
                .into_iter()
                .take(3)
                .map(|(x, _)| vec![x])
                .collect();
            (name.to_string(), g, s)
        })
        .collect();
    let models: Vec<(&str, &Graph, &[Vec<Tensor>])> =
        built.iter().map(|(t, g, s)| (t.as_str(), g, s.as_slice())).collect();
    let tmp = std::env::temp_dir().join(format!("kiln-tflite-{}", std::process::id()));
    let failures = bit_exact_on_every_backend_many(&models, &tmp);
    assert!(
        failures.is_empty(),
        "not the evaluator's bytes:\n{}",
        failures.join("\n")
    );
}

/// Float files against the float references (`ref/`, ONNX Runtime on the float model), to
/// 1e-4 of the output's range.
#[test]
fn float_files_match_the_float_references() {
    for (name, _, float) in MODELS {
        let Some(float) = float else { continue };
        let d = dir(name);
        let m = load(&d.join("source").join(float));
        let sets = kiln_tests::ref_input_sets(&d, 1);
        for (k, inputs) in sets.iter().enumerate() {
            let got = kiln_ir::eval::run(&m.graph, inputs).unwrap().remove(0);
            let want = kiln::npy::read(&d.join(format!("ref/test_data_set_{k}/output_0.npy"))).unwrap();
            let (ratio, abs) = compare_range(&got, &want, 1e-4, 0.0).unwrap_or_else(|e| panic!("{name} set {k}: {e}"));
            println!("{name} set {k}: max abs {abs:.2e} ({ratio:.2} of the bound)");
            assert!(
                ratio <= 1.0,
                "{name} set {k}: max abs {abs:.2e} is over 1e-4 of the range"
            );
        }
    }
}

/// The float files compiled natively, to C and to Rust source, against the evaluator (to the
/// native float tolerance, ARCHITECTURE.md "Float tolerance"), on three reference inputs.
#[test]
fn float_files_run_on_every_backend() {
    let mut built = Vec::new();
    for (name, _, float) in MODELS {
        let Some(float) = float else { continue };
        let d = dir(name);
        let m = load(&d.join("source").join(float));
        let sets: Vec<Vec<Tensor>> = kiln_tests::ref_input_sets(&d, 1).into_iter().take(3).collect();
        built.push((name.trim_start_matches("mlperf_tiny_").to_string(), m.graph, sets));
    }
    let tmp = std::env::temp_dir().join(format!("kiln-tflite-float-{}", std::process::id()));
    let list: Vec<(&str, &Graph)> = built.iter().map(|(t, g, _)| (t.as_str(), g)).collect();
    let rust = kiln_tests::build_rust(&list, &tmp.join("rust"), false).unwrap();
    for (k, (tag, g, sets)) in built.iter().enumerate() {
        let c = kiln_tests::build_c(g, "model", &tmp.join(tag).join("c"), &[]).unwrap();
        let native = kiln_tests::build_native(g, "model", &tmp.join(tag).join("n")).unwrap();
        for inputs in sets {
            let want = kiln_ir::eval::run(g, inputs).unwrap();
            for (label, exe) in [("C", &c), ("native", &native), ("Rust", &rust[k])] {
                let got = exe.run(g, inputs).unwrap_or_else(|e| panic!("{tag} {label}: {e}"));
                let (ratio, abs) = compare_range(&got[0], &want[0], kiln_tests::NATIVE_REL, kiln_tests::NATIVE_ABS)
                    .unwrap_or_else(|e| panic!("{tag} {label}: {e}"));
                assert!(ratio <= 1.0, "{tag} {label}: {abs:.2e} from the evaluator");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

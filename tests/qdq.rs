//! Models quantized by ONNX Runtime (`scripts/qdq-fixtures/make.py`: `quantize_static` in QDQ
//! form with int8 and with uint8 activations, and in QOperator form, from the repo's models),
//! built with `--quantize int8`, which keeps each model's own scales, zero points and integer
//! weights. Kiln's output is ONNX Runtime's to within `ORT_STEPS` steps of the output's
//! quantization (each fixture prints its figure), and the integer programs give the
//! evaluator's bytes in C, natively and as Rust source.

use kiln::PipelineOptions;
use kiln::quantize::{QuantOptions, qdq};
use kiln_ir::{Graph, Op, Tensor};
use kiln_tests::{
    bit_exact_on_every_backend_many, case_import_options, digits_accuracy, int8_sets, load_model, model_dirs,
    ref_input_sets,
};
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
    // each official model in both numerics
    let tflite: Vec<(String, Graph, Vec<Vec<Tensor>>)> = TFLITE
        .iter()
        .flat_map(|(name, _)| {
            [None, Some(kiln_ir::op::Numerics::Tflite)].map(|numerics| {
                let (dir, g) = tflite_model_with(name, numerics);
                let sets = int8_sets(&dir, "ref_int8_onnx")
                    .into_iter()
                    .take(3)
                    .map(|(x, _)| vec![x])
                    .collect();
                let tag = if numerics.is_some() {
                    "_tflite_numerics"
                } else {
                    "_tflite"
                };
                (format!("{name}{tag}"), g, sets)
            })
        })
        .collect();
    let mut models = models;
    models.extend(tflite.iter().map(|(t, g, s)| (t.as_str(), g, s.as_slice())));
    let dir = std::env::temp_dir().join(format!("kiln-qdq-{}", std::process::id()));
    let failures = bit_exact_on_every_backend_many(&models, &dir);
    assert!(
        failures.is_empty(),
        "not the evaluator's bytes:\n{}",
        failures.join("\n")
    );
}

/// The official MLPerf Tiny int8 TFLite models converted to ONNX QDQ (int8 in, int8 out),
/// with the largest difference from ONNX Runtime's int8 outputs (`ref_int8_onnx/`) in output
/// steps. ResNet-8's 6: its logits agree exactly, and Kiln's softmax gives the exactly
/// rounded probabilities of them, while ONNX Runtime's fused QLinearSoftmax is 6 steps off
/// (set 2: exact and Kiln 3, -105, -95; ONNX Runtime 2, -108, -89).
const TFLITE: [(&str, f64); 5] = [
    ("mlperf_tiny_ad_fc_autoencoder", 0.0),
    ("mlperf_tiny_ic_resnet8", 6.0),
    ("mlperf_tiny_kws_dscnn", 0.0),
    ("mlperf_tiny_sww_dscnn", 0.0),
    ("mlperf_tiny_vww_mobilenetv1_025", 0.0),
];

/// A model folder's `model_int8_qdq_tflite.onnx`, loaded.
fn tflite_onnx(dir: &Path) -> kiln::Model {
    kiln::load(
        &dir.join("model_int8_qdq_tflite.onnx"),
        &Default::default(),
        &PipelineOptions::default(),
        |_, _| {},
    )
    .unwrap()
}

fn tflite_model(name: &str) -> (PathBuf, Graph) {
    tflite_model_with(name, None)
}

fn tflite_model_with(name: &str, numerics: Option<kiln_ir::op::Numerics>) -> (PathBuf, Graph) {
    let dir = kiln_tests::repo().join("tests/models").join(name);
    let m = tflite_onnx(&dir);
    let strict = QuantOptions {
        strict_integer: true,
        numerics,
        ..Default::default()
    };
    let q = qdq::quantize_model(&m.graph, None, &strict).unwrap_or_else(|e| panic!("{name}: {e}"));
    (dir, q.graph)
}

#[test]
fn tflite_int8_models_agree_with_onnx_runtime() {
    for (name, bound) in TFLITE {
        let (dir, g) = tflite_model(name);
        // integer in, integer out: nothing converts at the boundary
        assert_eq!(g.value(g.inputs()[0]).ty.dtype.scalar, kiln_ir::Scalar::I8, "{name}");
        assert_eq!(g.value(g.outputs()[0]).ty.dtype.scalar, kiln_ir::Scalar::I8, "{name}");
        let steps = |which: &str| {
            int8_sets(&dir, which)
                .iter()
                .map(|(x, want)| {
                    let got = kiln_ir::eval::run(&g, std::slice::from_ref(x))
                        .unwrap()
                        .remove(0)
                        .to_i64_vec();
                    got.iter()
                        .zip(want.to_i64_vec())
                        .map(|(a, b)| (a - b).abs())
                        .max()
                        .unwrap_or(0)
                })
                .max()
                .unwrap_or(0) as f64
        };
        let (ort, tflite) = (steps("ref_int8_onnx"), steps("ref_int8"));
        println!("{name}: max {ort} steps from ONNX Runtime, {tflite} from TFLite's reference kernels");
        assert!(ort <= bound, "{name}: {ort} steps from ONNX Runtime (stated {bound})");
    }
}

/// Built with TFLite's numerics, the official int8 models give TFLite's reference bytes
/// (`ref_int8/`, what TFLite Micro and CMSIS-NN give) on every reference set; the
/// producer (`tf2onnx`) names that origin.
#[test]
fn tflite_numerics_give_tflites_bytes() {
    use kiln_ir::op::Numerics;
    for (name, _) in TFLITE {
        let (dir, g) = tflite_model_with(name, Some(Numerics::Tflite));
        let sets = int8_sets(&dir, "ref_int8");
        assert!(!sets.is_empty(), "{name}");
        for (k, (x, want)) in sets.iter().enumerate() {
            let got = kiln_ir::eval::run(&g, std::slice::from_ref(x)).unwrap().remove(0);
            assert_eq!(got.to_i64_vec(), want.to_i64_vec(), "{name} set {k}");
        }
        let m = tflite_onnx(&dir);
        assert_eq!(
            kiln::quantize::qdq::origin_numerics(&m.producer),
            Some(Numerics::Tflite),
            "{name}"
        );
    }
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

#[test]
fn quantization_aware_training_is_as_accurate_as_post_training_int8() {
    // scripts/train-digits/qat.py fine-tunes the digits CNN with fake quantization and
    // exports QDQ; Kiln builds it with the model's own parameters
    let dir = kiln_tests::repo().join("tests/models/digits_cnn");
    let qat = load_model(&dir.join("qat/model.onnx"));
    let q = qdq::quantize_model(&qat.graph, None, &QuantOptions::default()).unwrap();
    let float = load_model(&dir.join("model.onnx"));
    let ptq =
        kiln::quantize::quantize_int8(&float.graph, &dir.join("calib"), &QuantOptions::default(), |_, _| {}).unwrap();
    let (a_qat, a_ptq) = (digits_accuracy(&q.graph), digits_accuracy(&ptq.graph));
    // ONNX Runtime's accuracy on the exported model, recorded by the script
    let text = std::fs::read_to_string(dir.join("qat/ACCURACY")).unwrap();
    let ort: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("onnxruntime "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    println!("digits held-out accuracy: QAT int8 {a_qat:.4} (ONNX Runtime {ort:.4}), post-training int8 {a_ptq:.4}");
    assert!(a_qat >= a_ptq, "QAT {a_qat} below post-training int8 {a_ptq}");
    assert!(
        (a_qat - ort).abs() < 1e-6,
        "Kiln {a_qat} vs ONNX Runtime {ort} on the same QDQ model"
    );
}

#[test]
fn dynamically_quantized_models_run_as_hybrid_ops() {
    // ONNX Runtime's quantize_dynamic: DynamicQuantizeLinear -> ConvInteger/MatMulInteger ->
    // Cast -> Mul(x_scale * w_scale). With symmetric int8 weights (the autoencoder) Kiln's
    // hybrid ops compute exactly that: ONNX Runtime's outputs to the bit. uint8 weights (ORT's
    // choice for Conv) have a zero point the hybrid ops do not take: Kiln quantizes those
    // products again, symmetric int8, and stays about as close to float as ONNX Runtime.
    for dir in model_dirs() {
        let path = dir.join("ort/dyn.onnx");
        if !path.exists() {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let m = kiln::load(
            &path,
            &case_import_options(&dir),
            &PipelineOptions::default(),
            |_, _| {},
        )
        .unwrap();
        let products = m
            .graph
            .node_ids()
            .filter(|&n| matches!(m.graph.node(n).op, Op::IntConv { .. } | Op::IntMatMul))
            .count();
        let q = qdq::quantize_model(&m.graph, None, &QuantOptions::default()).unwrap();
        let hybrid = q
            .graph
            .node_ids()
            .filter(|&n| matches!(q.graph.node(n).op, Op::DynConv { .. } | Op::DynMatMul { .. }))
            .count();
        assert_eq!(hybrid, products, "{name}: every integer product runs as a hybrid op");
        let requantized = q.notes.iter().any(|n| n.contains("not symmetric int8"));
        let (mut vs_ort, mut ort_vs_float, mut kiln_vs_float) = (0f64, 0f64, 0f64);
        for (k, inputs) in ref_input_sets(&dir, q.graph.inputs().len()).iter().enumerate() {
            let got = kiln_ir::eval::run(&q.graph, inputs).unwrap()[0].to_f64_vec();
            let ort = kiln::npy::read(&dir.join(format!("ort/dyn_out_{k}.npy")))
                .unwrap()
                .to_f64_vec();
            let float = kiln::npy::read(&dir.join(format!("ref/test_data_set_{k}/output_0.npy")))
                .unwrap()
                .to_f64_vec();
            for ((a, b), f) in got.iter().zip(&ort).zip(&float) {
                vs_ort = vs_ort.max((a - b).abs());
                ort_vs_float = ort_vs_float.max((b - f).abs());
                kiln_vs_float = kiln_vs_float.max((a - f).abs());
            }
        }
        println!(
            "{name}: {products} products; max abs Kiln - ORT {vs_ort:.3e}; vs float: Kiln {kiln_vs_float:.3e}, ORT {ort_vs_float:.3e}{}",
            if requantized { " (weights quantized again)" } else { "" }
        );
        if requantized {
            assert!(kiln_vs_float <= 2.0 * ort_vs_float + 1e-6, "{name}");
        } else {
            assert_eq!(vs_ort, 0.0, "{name}: not ONNX Runtime's bits");
        }
    }
}

#[test]
fn four_bit_quantization_aware_training_imports_packed() {
    // qat.py with 4-bit weights exports them as ONNX INT4 tensors: Kiln keeps them 4-bit
    // (packed) and matches ONNX Runtime's accuracy, above post-training 4-bit weights
    let dir = kiln_tests::repo().join("tests/models/digits_cnn");
    let m = load_model(&dir.join("qat4/model.onnx"));
    let q = qdq::quantize_model(&m.graph, None, &QuantOptions::default()).unwrap();
    let widths: Vec<u8> = (q.graph.node_ids())
        .filter_map(|n| match &q.graph.node(n).op {
            Op::QConv { q, .. } | Op::QMatMul { q } => Some(q.weight_bits),
            _ => None,
        })
        .collect();
    assert_eq!(widths, [4, 4]);
    let float = load_model(&dir.join("model.onnx"));
    let opts = QuantOptions {
        weight_bits: Some(4),
        ..Default::default()
    };
    let ptq = kiln::quantize::quantize_int8(&float.graph, &dir.join("calib"), &opts, |_, _| {}).unwrap();
    let (a_qat, a_ptq) = (digits_accuracy(&q.graph), digits_accuracy(&ptq.graph));
    let text = std::fs::read_to_string(dir.join("qat4/ACCURACY")).unwrap();
    let ort: f64 = (text.lines())
        .find_map(|l| l.strip_prefix("onnxruntime "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    let bytes = kiln_ir::analysis::constant_bytes(&q.graph);
    println!(
        "digits, 4-bit weights: QAT {a_qat:.4} (ONNX Runtime {ort:.4}), post-training {a_ptq:.4}; {bytes} bytes of constants"
    );
    assert!(a_qat >= a_ptq, "QAT {a_qat} below post-training {a_ptq}");
    assert!((a_qat - ort).abs() < 1e-6);
}

#[test]
fn int16_activations_from_onnx_runtime_run_16x8() {
    // ONNX Runtime's QDQ with int16 symmetric activations (its com.microsoft Q/DQ): every
    // product runs 16x8 with the model's parameters and the softmax is Kiln's int16 one,
    // rescaled to the model's output parameters: nothing stays float. The output is within 4
    // of ONNX Runtime's output steps (its int16 softmax output, scale 1/32767): Kiln's 16x8
    // rescale is TFLite's, which keeps 16 bits of the multiplier so the int64 product fits,
    // where ONNX Runtime rescales in float (measured 3.0 steps).
    let dir = kiln_tests::repo().join("tests/models/mlperf_tiny_kws_dscnn");
    let (g, notes) = load(&dir, "qdq_s16", &QuantOptions::default()).unwrap();
    let (mut wide, mut products) = (0, 0);
    for n in g.node_ids() {
        if matches!(g.node(n).op, Op::QConv { .. } | Op::QMatMul { .. }) {
            products += 1;
            wide += (g.value(g.node(n).inputs[0]).ty.dtype.scalar == kiln_ir::Scalar::I16) as usize;
        }
    }
    assert_eq!((wide, products), (10, 10));
    assert!(!notes.iter().any(|n| n.contains("float")), "{notes:?}");
    assert!(g.node_ids().any(|n| matches!(g.node(n).op, Op::QSoftmax16 { .. })));
    let mut worst = 0f64;
    for (k, inputs) in ref_input_sets(&dir, 1).iter().enumerate() {
        let got = kiln_ir::eval::run(&g, inputs).unwrap()[0].to_f64_vec();
        let want = kiln::npy::read(&dir.join(format!("ort/qdq_s16_out_{k}.npy")))
            .unwrap()
            .to_f64_vec();
        worst = (got.iter().zip(&want)).fold(worst, |w, (a, b)| w.max((a - b).abs()));
    }
    println!("kws int16 QDQ: max abs difference from ONNX Runtime {worst:.3e}");
    assert!(worst <= 4.0 / 32767.0, "{worst}");
}

#[test]
fn blocked_weights_keep_their_own_scales() {
    // ONNX Runtime's weight-only quantizer on the autoencoder: 4-bit weights in blocks of 32
    // along K, as com.microsoft MatMulNBits (asymmetric) and as blocked int4
    // DequantizeLinear (symmetric). In float Kiln computes ONNX Runtime's product (within
    // FLOAT_REL of the largest output). `--quantize dynamic` keeps the model's integers and
    // block scales: every product becomes a blocked DynMatMul whose weights times their block
    // scales are the model's dequantized weights exactly, and which runs bit-exactly on every
    // backend. ONNX Runtime computes these in f32 (accuracy_level 0), so the difference is
    // Kiln's run-time int8 activations, stated as an SQNR.
    const FLOAT_REL: f64 = 1e-5;
    const MIN_SQNR_DB: f64 = 40.0;
    let dir = model_dirs()
        .into_iter()
        .find(|d| d.ends_with("mlperf_tiny_ad_fc_autoencoder"))
        .expect("the autoencoder");
    let mut built = Vec::new();
    for variant in ["nbits4", "qdq_block4"] {
        let path = dir.join(format!("ort/{variant}.onnx"));
        let m = kiln::load(
            &path,
            &case_import_options(&dir),
            &PipelineOptions::default(),
            |_, _| {},
        )
        .unwrap_or_else(|e| panic!("{variant}: {e}"));
        let q = kiln::quantize::dynamic::to_dynamic(&m.graph, &[]).unwrap();
        assert!(q.notes.is_empty(), "{variant}: {:?}", q.notes);
        let mut products = 0;
        for n in q.graph.node_ids() {
            let node = q.graph.node(n);
            let Op::DynMatMul {
                weight_scales, block, ..
            } = &node.op
            else {
                assert!(
                    !matches!(node.op, Op::MatMul | Op::Gemm { .. }),
                    "{variant}: {} stays float",
                    node.name
                );
                continue;
            };
            products += 1;
            assert_eq!(*block, 32, "{variant}: {}", node.name);
            // the float import's weight for this product, by the product's name
            let f = (m.graph.node_ids())
                .find(|&f| m.graph.node(f).name == node.name)
                .unwrap_or_else(|| panic!("{variant}: no float product {}", node.name));
            let wf = m.graph.const_value(m.graph.node(f).inputs[1]).unwrap().to_f32_vec();
            let w = q.graph.const_value(node.inputs[1]).unwrap();
            let nn = w.shape[1];
            let wi = w.to_i64_vec();
            if variant == "qdq_block4" {
                // the model's int4 values (its negative scales kept), stored packed
                assert!(wi.iter().all(|&v| (-8..=7).contains(&v)), "{variant}: not int4");
                assert!(
                    matches!(node.op, Op::DynMatMul { weight_bits: 4, .. }),
                    "{variant}: not packed"
                );
            }
            for (i, (&v, &f)) in wi.iter().zip(&wf).enumerate() {
                let s = weight_scales[(i / nn) / block * nn + i % nn];
                assert_eq!(v as f32 * s, f, "{variant} {}: weight {i}", node.name);
            }
        }
        assert_eq!(products, 10, "{variant}: the autoencoder's ten products");
        let (mut float_err, mut sig, mut noise, mut peak) = (0f64, 0f64, 0f64, 0f64);
        let sets = ref_input_sets(&dir, 1);
        for (k, inputs) in sets.iter().enumerate() {
            let ort = kiln::npy::read(&dir.join(format!("ort/{variant}_out_{k}.npy")))
                .unwrap()
                .to_f64_vec();
            let float = kiln_ir::eval::run(&m.graph, inputs).unwrap()[0].to_f64_vec();
            let hybrid = kiln_ir::eval::run(&q.graph, inputs).unwrap()[0].to_f64_vec();
            for ((&o, &f), &h) in ort.iter().zip(&float).zip(&hybrid) {
                float_err = float_err.max((f - o).abs());
                peak = peak.max(o.abs());
                sig += o * o;
                noise += (h - o) * (h - o);
            }
        }
        let sqnr = 10.0 * (sig / noise).log10();
        println!(
            "{variant}: float max |Kiln - ORT| {float_err:.2e} (largest output {peak:.1}); hybrid SQNR vs ORT {sqnr:.1} dB; constants {} bytes",
            kiln_ir::analysis::constant_bytes(&q.graph)
        );
        assert!(
            float_err <= FLOAT_REL * peak,
            "{variant}: float differs from ONNX Runtime"
        );
        assert!(sqnr >= MIN_SQNR_DB, "{variant}: hybrid SQNR {sqnr:.1} dB");
        built.push((variant, q.graph, sets));
    }
    // Int8 activations with blocked int8 weights (ONNX Runtime's int8 QDQ autoencoder with
    // each weight re-quantized in blocks of 32 along K): `--quantize int8` folds each product
    // into a QBlockMatMul with the model's integers and block scales, and gives ONNX
    // Runtime's output steps exactly.
    let (graph, notes) = load(&dir, "qdq_s8_block32", &QuantOptions::default()).unwrap();
    let blocked = (graph.node_ids())
        .filter(|&n| matches!(graph.node(n).op, Op::QBlockMatMul { block: 32, .. }))
        .count();
    assert_eq!(blocked, 10, "the ten products: {notes:?}");
    assert!(!notes.iter().any(|n| n.contains("per channel")), "{notes:?}");
    let step = output_step(&graph);
    let sets = ref_input_sets(&dir, 1);
    let mut worst = 0f64;
    for (k, inputs) in sets.iter().enumerate() {
        let got = kiln_ir::eval::run(&graph, inputs).unwrap()[0].to_f64_vec();
        let ort = kiln::npy::read(&dir.join(format!("ort/qdq_s8_block32_out_{k}.npy")))
            .unwrap()
            .to_f64_vec();
        for (a, b) in got.iter().zip(&ort) {
            worst = worst.max(((a - b) / step).abs());
        }
    }
    println!("qdq_s8_block32: {blocked} blocked int8 products; max |Kiln - ORT| {worst:.2} steps");
    assert!(worst <= ORT_STEPS + 1e-3, "{worst} steps from ONNX Runtime");
    built.push(("qdq_s8_block32", graph, sets));
    let models: Vec<(&str, &Graph, &[Vec<Tensor>])> = built.iter().map(|(t, g, s)| (*t, g, s.as_slice())).collect();
    let out = std::env::temp_dir().join(format!("kiln-blocked-{}", std::process::id()));
    let failures = bit_exact_on_every_backend_many(&models, &out);
    assert!(
        failures.is_empty(),
        "not the evaluator's bytes:\n{}",
        failures.join("\n")
    );
}

#[test]
fn block_products_are_bit_exact_at_the_edges() {
    // QBlockMatMul's arithmetic at its corners: extreme inputs, a short last block (K = 9 in
    // blocks of 4), negative multipliers (a model's negative block scales), shifts from -31
    // to 30, i64 biases near the bound, a clamped output, and 4-bit weights stored packed.
    use kiln_ir::op::QLinear;
    use kiln_ir::{DType, Scalar, TensorType};
    let (k, nn, block) = (9usize, 4usize, 4usize);
    let w: Vec<i8> = (0..k * nn).map(|i| ((i * 7 + 3) % 16) as i8 - 8).collect();
    // [blocks, N]: per column one shift (-31, 0, 30, 5); column 2 (shift 30) rounds every
    // odd total at an exact half
    let mults = [
        1 << 30,
        -i32::MAX,
        1,
        1 << 20,
        -(1 << 30),
        12345,
        -1,
        (1 << 21) + 1,
        i32::MAX,
        -7,
        1,
        -(1 << 21),
    ];
    let shifts = [-31, 0, 30, 5];
    let requant: Vec<kiln_runtime::Requant> = (0..mults.len())
        .map(|i| kiln_runtime::Requant {
            multiplier: mults[i],
            shift: shifts[i % nn],
        })
        .collect();
    let q = QLinear {
        input_zp: -3,
        output_scale: 0.5,
        output_zp: 4,
        requant: requant.into(),
        act_min: -100,
        act_max: 127,
        weight_bits: 4,
        numerics: Default::default(),
    };
    let mut g = Graph::new("block_edges");
    let x = g.add_input("x", TensorType::new(DType::plain(Scalar::I8), vec![5, k]));
    let wv = g.add_const("w", Tensor::from_vec(vec![k, nn], w));
    let bias: Vec<i64> = vec![(1 << 61) - 1, -(1 << 61), 1, 123_456_789];
    let bv = g.add_const("b", Tensor::from_vec(vec![nn], bias));
    let (_, y) = g
        .add_node("p", Op::QBlockMatMul { q, block }, vec![x, wv, bv], &[])
        .unwrap();
    g.add_output(y[0]);
    kiln_ir::verify::verify(&g).unwrap();
    assert_eq!(kiln_ir::analysis::packed_weight_bits(&g, wv), Some(4));
    let rows: Vec<i8> = [
        [-128i8; 9],
        [127; 9],
        [0, 1, -1, 64, -64, 127, -128, 5, -3],
        [0, 1, -1, 2, -2, 3, -3, 1, 0],
        [-3, -2, -4, -3, -1, -5, -3, -2, -3],
    ]
    .concat();
    let sets = vec![vec![Tensor::from_vec(vec![5, k], rows)]];
    let dir = std::env::temp_dir().join(format!("kiln-block-edges-{}", std::process::id()));
    let failures = kiln_tests::bit_exact_on_every_backend(&g, &sets, "block_edges", &dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A QDQ model whose convolution is followed by HardSwish (its own parameters on both
/// sides) builds fully integer: the product, then an int8 table, bit-exact everywhere.
#[test]
fn activations_between_a_models_own_parameters_become_tables() {
    use kiln::onnx::tensor::to_proto;
    use kiln_tests::{fixed, model, node, tensor, write_model};
    let sc = |name: &str, v: f32| tensor(name, &[], vec![v]);
    let zp = |name: &str, v: i8| to_proto(name, &Tensor::from_vec(vec![], vec![v]));
    let w: Vec<i8> = (0..12).map(|i| ((i * 37) % 255 - 127) as i8).collect();
    let m = model(
        vec![
            node("QuantizeLinear", "qx", &["x", "sx", "zx"], &["xq"], vec![]),
            node("DequantizeLinear", "dx", &["xq", "sx", "zx"], &["xd"], vec![]),
            node("DequantizeLinear", "dw", &["wq", "sw", "zw"], &["wd"], vec![]),
            node("Conv", "conv", &["xd", "wd"], &["c"], vec![]),
            node("QuantizeLinear", "qc", &["c", "sc", "zc"], &["cq"], vec![]),
            node("DequantizeLinear", "dc", &["cq", "sc", "zc"], &["cd"], vec![]),
            node("HardSwish", "hs", &["cd"], &["h"], vec![]),
            node("QuantizeLinear", "qh", &["h", "sh", "zh"], &["hq"], vec![]),
            node("DequantizeLinear", "dh", &["hq", "sh", "zh"], &["y"], vec![]),
        ],
        vec![fixed("x", &[1, 3, 4, 4])],
        vec![fixed("y", &[1, 4, 4, 4])],
        vec![
            sc("sx", 0.02),
            zp("zx", 0),
            to_proto("wq", &Tensor::from_vec(vec![4, 3, 1, 1], w)),
            sc("sw", 0.01),
            zp("zw", 0),
            sc("sc", 0.03),
            zp("zc", -10),
            sc("sh", 0.02),
            zp("zh", -100),
        ],
        13,
    );
    let path = write_model("qdq-hardswish", &m);
    let g = kiln::load(&path, &Default::default(), &PipelineOptions::default(), |_, _| {})
        .unwrap()
        .graph;
    let strict = QuantOptions {
        strict_integer: true,
        ..Default::default()
    };
    let q = qdq::quantize_model(&g, None, &strict).unwrap_or_else(|e| panic!("{e}"));
    let ops: Vec<&str> = q.graph.node_ids().map(|n| q.graph.node(n).op.name()).collect();
    assert!(ops.contains(&"QConv") && ops.contains(&"Lut"), "{ops:?}");
    let x = Tensor::from_vec(
        vec![1, 3, 4, 4],
        (0..48).map(|i| (i as f32 - 20.0) * 0.05).collect::<Vec<f32>>(),
    );
    let gi = kiln_tests::expose_integers(&q.graph);
    let dir = std::env::temp_dir().join(format!("kiln-qdq-hs-{}", std::process::id()));
    let failures = bit_exact_on_every_backend_many(&[("qdq_hardswish", &gi, &[vec![x]])], &dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

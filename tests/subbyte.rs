//! Sub-8-bit weights (`--weight-bits 4|2`): Conv/Gemm/MatMul weights quantized symmetric per
//! channel to 4 bits (`-7..=7`) or 2 bits (`-1..=1`), activations int8 as usual. C and Rust
//! source store them packed two (four) to a byte and unpack as they read; the arithmetic is
//! the int8 kernels', so every backend gives the evaluator's bytes. Sizes and errors against
//! float are printed per model (the figures of the README).

use kiln::PipelineOptions;
use kiln::quantize::{QuantOptions, quantize_int8};
use kiln_ir::{Graph, Op, Tensor};
use kiln_tests::{bit_exact_on_every_backend_many, case_import_options, digits_accuracy, ref_input_sets, repo};

const MODELS: [&str; 4] = [
    "digits_cnn",
    "mlperf_tiny_ad_fc_autoencoder",
    "mlperf_tiny_ic_resnet8",
    "mlperf_tiny_kws_dscnn",
];

struct Build {
    model: &'static str,
    bits: u8,
    graph: Graph,
}

fn builds() -> (Vec<Graph>, Vec<Build>) {
    let mut floats = Vec::new();
    let mut out = Vec::new();
    for model in MODELS {
        let dir = repo().join("tests/models").join(model);
        let m = kiln::load(
            &dir.join("model.onnx"),
            &case_import_options(&dir),
            &PipelineOptions::default(),
            |_, _| {},
        )
        .unwrap();
        for bits in [8, 4, 2] {
            let opts = QuantOptions {
                weight_bits: Some(bits),
                ..Default::default()
            };
            let q = quantize_int8(&m.graph, &dir.join("calib"), &opts, |_, _| {}).unwrap();
            out.push(Build {
                model,
                bits,
                graph: q.graph,
            });
        }
        floats.push(m.graph);
    }
    (floats, out)
}

fn max_abs_error(float: &Graph, q: &Graph, sets: &[Vec<Tensor>]) -> f64 {
    let mut worst = 0f64;
    for inputs in sets {
        let a = kiln_ir::eval::run(float, inputs).unwrap();
        let b = kiln_ir::eval::run(q, inputs).unwrap();
        for (x, y) in a[0].to_f64_vec().iter().zip(b[0].to_f64_vec()) {
            worst = worst.max((x - y).abs());
        }
    }
    worst
}

#[test]
fn narrow_weights_shrink_and_stay_usable() {
    let (floats, builds) = builds();
    for (m, float) in MODELS.iter().zip(&floats) {
        let dir = repo().join("tests/models").join(m);
        let sets = ref_input_sets(&dir, float.inputs().len());
        let of = |bits: u8| builds.iter().find(|b| b.model == *m && b.bits == bits).unwrap();
        let bytes = |bits: u8| kiln_ir::analysis::constant_bytes(&of(bits).graph);
        let (b8, b4, b2) = (bytes(8), bytes(4), bytes(2));
        let errs: Vec<f64> = [8, 4, 2]
            .iter()
            .map(|&b| max_abs_error(float, &of(b).graph, &sets))
            .collect();
        let acc = if *m == "digits_cnn" {
            let a: Vec<String> = [8, 4, 2]
                .iter()
                .map(|&b| format!("{:.2}%", 100.0 * digits_accuracy(&of(b).graph)))
                .collect();
            format!("; accuracy {}", a.join(" / "))
        } else {
            String::new()
        };
        println!(
            "{m}: constants 8/4/2-bit {b8} / {b4} / {b2} bytes; max abs error vs float {:.4} / {:.4} / {:.4}{acc}",
            errs[0], errs[1], errs[2]
        );
        // weights dominate every model: packing halves (quarters) them
        assert!(
            (b4 as f64) < 0.62 * b8 as f64 && (b2 as f64) < 0.7 * b4 as f64,
            "{m}: {b8} {b4} {b2}"
        );
        // every product is narrow, and its weights stay in range (the verifier checks values)
        for bits in [4u8, 2] {
            let g = &of(bits).graph;
            for n in g.node_ids() {
                if let Op::QConv { q, .. } | Op::QMatMul { q } = &g.node(n).op {
                    assert_eq!(q.weight_bits, bits, "{m}");
                }
            }
            kiln_ir::verify::verify(g).unwrap();
        }
    }
    let digits: Vec<f64> = [4u8, 2]
        .iter()
        .map(|&b| {
            digits_accuracy(
                &builds
                    .iter()
                    .find(|x| x.model == "digits_cnn" && x.bits == b)
                    .unwrap()
                    .graph,
            )
        })
        .collect();
    // 4-bit weights keep the digits CNN useful (97%); ternary weights after training lose
    // much more (74%: they are for layers a budget picks, or quantization-aware training)
    assert!(digits[0] >= 0.95 && digits[1] >= 0.6, "{digits:?}");
}

#[test]
fn packed_weights_are_bit_exact_on_every_backend() {
    let (_, builds) = builds();
    let narrow: Vec<&Build> = builds.iter().filter(|b| b.bits < 8).collect();
    let sets: Vec<Vec<Vec<Tensor>>> = narrow
        .iter()
        .map(|b| {
            let dir = repo().join("tests/models").join(b.model);
            ref_input_sets(&dir, b.graph.inputs().len())
                .into_iter()
                .take(3)
                .collect()
        })
        .collect();
    let tags: Vec<String> = narrow.iter().map(|b| format!("{}_w{}", b.model, b.bits)).collect();
    let models: Vec<(&str, &Graph, &[Vec<Tensor>])> = (0..narrow.len())
        .map(|i| (tags[i].as_str(), &narrow[i].graph, sets[i].as_slice()))
        .collect();
    let dir = std::env::temp_dir().join(format!("kiln-subbyte-{}", std::process::id()));
    let failures = bit_exact_on_every_backend_many(&models, &dir);
    assert!(
        failures.is_empty(),
        "not the evaluator's bytes:\n{}",
        failures.join("\n")
    );
}

/// Output SQNR of `q` against `float` on the budget search's samples (32 spread evenly
/// over the calibration set).
fn output_sqnr(float: &Graph, q: &Graph, dir: &std::path::Path) -> f64 {
    let set = kiln::quantize::calibrate::CalibrationSet::load(float, &dir.join("calib")).unwrap();
    let n = set.samples.min(32);
    let (mut sig, mut noise) = (0f64, 0f64);
    for i in 0..n {
        let x = set.sample(float, i * set.samples / n);
        let a = kiln_ir::eval::run(float, &x).unwrap();
        let b = kiln_ir::eval::run(q, &x).unwrap();
        for (u, v) in a[0].to_f64_vec().iter().zip(b[0].to_f64_vec()) {
            sig += u * u;
            noise += (u - v) * (u - v);
        }
    }
    10.0 * (sig / noise).log10()
}

#[test]
fn an_accuracy_budget_picks_the_smallest_mix_that_meets_it() {
    let dir = repo().join("tests/models/mlperf_tiny_kws_dscnn");
    let m = kiln::load(
        &dir.join("model.onnx"),
        &case_import_options(&dir),
        &PipelineOptions::default(),
        |_, _| {},
    )
    .unwrap();
    let build = |budget: Option<f64>| {
        let opts = QuantOptions {
            accuracy_budget: budget,
            method: Some(kiln::quantize::calibrate::Method::MinMax),
            ..Default::default()
        };
        quantize_int8(&m.graph, &dir.join("calib"), &opts, |_, _| {})
    };
    let int8 = build(None).unwrap();
    let (b8, s8) = (
        kiln_ir::analysis::constant_bytes(&int8.graph),
        output_sqnr(&m.graph, &int8.graph, &dir),
    );
    println!("kws all int8: {b8} bytes of constants, output SQNR {s8:.1} dB");
    for budget in [20.0, 25.0, s8 + 3.0] {
        let q = build(Some(budget)).unwrap();
        let (bytes, sqnr) = (
            kiln_ir::analysis::constant_bytes(&q.graph),
            output_sqnr(&m.graph, &q.graph, &dir),
        );
        let picks: Vec<&String> = q.notes.iter().filter(|n| n.starts_with("budget: node")).collect();
        println!(
            "kws budget {budget:.1} dB: {bytes} bytes, output SQNR {sqnr:.1} dB; {} layers:",
            picks.len()
        );
        for p in &picks {
            println!("  {p}");
        }
        assert!(sqnr >= budget, "budget {budget}: {sqnr} dB");
        assert!(picks.len() == 10, "one choice per Conv/Gemm/MatMul");
        if budget < s8 {
            // below what int8 reaches, some layers narrow to 4-bit weights
            assert!(bytes < b8, "budget {budget}: {bytes} >= {b8}");
            assert!(picks.iter().any(|p| p.contains("4-bit")));
        } else {
            // above it, some layers must widen
            assert!(picks.iter().any(|p| p.contains("16x8") || p.ends_with("float")));
        }
    }
    let err = build(Some(500.0)).err().expect("no mix reaches 500 dB");
    assert!(err.to_string().contains("--accuracy-budget 500"), "{err}");
}

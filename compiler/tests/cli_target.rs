//! `kiln bench --target PART`: the model on a simulated microcontroller. The figures must be
//! the ones `kiln::onchip` (what `tests/mcu.rs` benchmarks with) measures for the same build,
//! the JSON must carry what the text says, and the per-kernel counts must add up. Skipped
//! without the toolchains (`scripts/setup-embedded.sh`) unless `KILN_REQUIRE_MCU` is set.

mod common;
use common::{kiln, repo, text, text_and_json};
use kiln::onchip::{self, ModelCode, Part, RunOptions, Tools};
use serde_json::Value;

fn available(part: Part) -> bool {
    match Tools::check(part) {
        Ok(()) => true,
        Err(e) if std::env::var_os("KILN_REQUIRE_MCU").is_some() => panic!("KILN_REQUIRE_MCU is set: {e}"),
        Err(e) => {
            eprintln!("skipping: {e}");
            false
        }
    }
}

/// The number after `label` in `text` (commas allowed).
fn number_after(text: &str, label: &str) -> u64 {
    let rest = &text[text.find(label).unwrap_or_else(|| panic!("no `{label}` in {text}")) + label.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .filter(|c| c.is_ascii_digit())
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after `{label}` in {text}"))
}

/// Runs `kiln bench ARGS --target PART` as text and as JSON; checks that both carry the
/// same figures and returns the JSON.
fn bench_both(args: &[&str]) -> Value {
    let (out, v) = text_and_json(args);
    let json = v.to_string();
    let unit = v["unit"].as_str().unwrap();
    let cost = v["per_inference"].as_u64().unwrap();
    assert!(out.contains(&format!("{cost} {unit} per inference")), "{out}\n{json}");
    for (label, key) in [
        ("model code", &v["flash"]["model_code"]),
        ("constants", &v["flash"]["model_constants"]),
        ("whole program", &v["flash"]["program"]),
        ("arena", &v["arena"]),
        ("static RAM", &v["static_ram"]),
        ("peak stack", &v["peak_stack"]),
    ] {
        assert_eq!(
            number_after(&out, label),
            key.as_u64().unwrap(),
            "{label}: {out}\n{json}"
        );
    }
    for l in v["layers"].as_array().unwrap() {
        let row = format!("{}  ", l["kernel"]);
        let line = out
            .lines()
            .find(|x| x.trim_start().starts_with(&row))
            .unwrap_or_else(|| panic!("{row}: {out}"));
        assert!(line.contains(&format!(" {} ", l["cost"])), "{line}");
    }
    v
}

/// The per-kernel counts: one per kernel call, named, adding up to most of the inference.
fn check_layers(v: &Value, kernels: usize) {
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), kernels, "{v:#}");
    let sum: u64 = layers.iter().map(|l| l["cost"].as_u64().unwrap()).sum();
    let total = v["per_inference"].as_u64().unwrap();
    assert!(sum <= total && sum * 100 >= total * 90, "layers {sum} of {total}");
    assert!(layers.iter().all(|l| !l["op"].as_str().unwrap().is_empty()), "{v:#}");
}

#[test]
fn bench_on_a_simulated_cortex_m4_equals_the_library_measurement() {
    if !available(Part::CortexM4) {
        return;
    }
    let m = "tests/models/mlperf_tiny_kws_dscnn/model_int8_qdq_tflite.onnx";
    let input = "tests/models/mlperf_tiny_kws_dscnn/ref_int8/test_data_set_0/input_0.npy";
    let v = bench_both(&["bench", m, "--input", input, "--target", "cortex-m4", "--per-layer"]);
    assert_eq!(v["target"], "cortex-m4");
    assert_eq!(v["outputs"]["exact"], true);
    check_layers(&v, 12);
    // The same build through the library, as tests/mcu.rs runs it: the same figures.
    let model = kiln::load(&repo().join(m), &Default::default(), &Default::default(), |_, _| {}).unwrap();
    let mode = kiln::quantize::Mode::default_for(&model.graph);
    let g = kiln::quantize::apply(&model.graph, &model.producer, &mode, &Default::default(), |_, _| {})
        .unwrap()
        .graph;
    let x = kiln::npy::read(&repo().join(input)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tools = Tools::build(&[Part::CortexM4], &dir.path().join("tools")).unwrap();
    let run = onchip::run(
        Part::CortexM4,
        &g,
        &[x],
        &ModelCode::C,
        RunOptions::default(),
        &tools,
        &dir.path().join("run"),
    )
    .unwrap();
    assert_eq!(v["per_inference"].as_u64(), Some(run.cost));
    assert_eq!(v["flash"]["program"].as_u64(), Some(run.flash as u64));
    assert_eq!(v["peak_stack"].as_u64(), Some(run.stack as u64));
    // TFLite's reference bytes, on the part
    let want = kiln::npy::read(&repo().join(input.replace("input_0", "output_0"))).unwrap();
    assert_eq!(run.outputs[0].to_i64_vec(), want.to_i64_vec());
}

#[test]
fn bench_on_a_simulated_atmega328p_equals_the_mcu_benchmark() {
    if !available(Part::Atmega328p) {
        return;
    }
    let d = "tests/models/digits_cnn";
    let (m, calib, input) = (
        format!("{d}/model.onnx"),
        format!("{d}/calib"),
        format!("{d}/ref/test_data_set_0/input_0.npy"),
    );
    let args = [
        "bench",
        &m,
        "--quantize",
        "int8",
        "--calibrate",
        &calib,
        "--input",
        &input,
    ];
    let v = bench_both(&[&args[..], &["--target", "atmega328p", "--int-io", "--per-layer"]].concat());
    assert_eq!(v["unit"], "cycles");
    assert_eq!(v["entry"], "model_run_int");
    assert_eq!(v["outputs"]["exact"], true);
    check_layers(&v, 4);
    // tests/mcu.rs benchmarks this very build (`atmega328p digits_cnn`: cycles, flash, RAM +
    // stack); its committed baseline holds what it measured, exactly.
    let base = std::fs::read_to_string(repo().join("tests/mcu/bench-avr.txt")).unwrap();
    let row: Vec<u64> = (base.lines())
        .find_map(|l| l.strip_prefix("atmega328p digits_cnn "))
        .unwrap()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let cycles = v["per_inference"].as_u64().unwrap();
    assert!(
        cycles * 100 <= row[0] * 105,
        "{cycles} cycles, the benchmark's baseline {}",
        row[0]
    );
    // Float (its 2.5 KB arena does not fit the ATmega328P, so the ATmega2560): within the
    // stated tolerance of the evaluator.
    let o = kiln(&["bench", &m, "--input", &input, "--target", "atmega328p"]);
    assert!(
        text(&o)
            .1
            .contains("does not fit atmega328p: it needs 2560 bytes of RAM"),
        "{}",
        text(&o).1
    );
    let v = bench_both(&["bench", &m, "--input", &input, "--target", "atmega2560"]);
    assert!(v["outputs"]["of_range"].as_f64().unwrap() <= onchip::FLOAT_TOLERANCE);
    assert!(v["layers"].as_array().unwrap().is_empty());
}

#[test]
fn bench_target_errors_are_clear() {
    let m = "tests/models/digits_cnn/model.onnx";
    for (args, want) in [
        (
            vec!["--target", "pdp11"],
            "`pdp11` has no simulator here: give one of cortex-m4",
        ),
        (vec!["--target", "cortex-m4", "--emit", "object"], "drop --emit"),
        (vec!["--per-layer"], "give --target PART"),
        (
            vec!["--target", "cortex-m4", "--int-io"],
            "--int-io needs a model with an integer boundary",
        ),
    ] {
        let o = kiln(&[&["bench", m][..], &args].concat());
        assert!(!o.status.success());
        let err = text(&o).1;
        assert!(
            err.contains(want) || err.contains("is missing: run scripts/setup-embedded.sh"),
            "{args:?}: {err}"
        );
    }
}
